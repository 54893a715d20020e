from vibe_sgl_lite.cli import main

raise SystemExit(main())
