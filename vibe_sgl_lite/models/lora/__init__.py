"""LoRA adapters on the base model: PEFT folders in, a per-row adapter in every batch.

``adapter.py`` reads and checks a PEFT folder; ``linear.py`` is the LoRA-aware wrapper of a
projection; ``manager.py`` installs the wrappers and keeps adapters in batch slots (see
``docs/lora.md``).
"""

from vibe_sgl_lite.models.lora.adapter import LoRAAdapter, read_adapter
from vibe_sgl_lite.models.lora.manager import LoRAManager

__all__ = ["LoRAAdapter", "LoRAManager", "read_adapter"]
