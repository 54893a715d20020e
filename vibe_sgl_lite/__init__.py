"""vibe-sgl-lite: a small, readable LLM inference engine."""
