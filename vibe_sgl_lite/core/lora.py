"""``AdapterRegistry``: the engine's names for its LoRA adapters.

    load(name, path)     read and check the PEFT folder against the base model (``ValueError``
                         naming the problem, before any request can use it), give it a new uid
    resolve(lora_name)   the ``AdapterRef`` a request runs under; an unknown name is refused
    unload(name)         refused while an unfinished request uses the adapter: those requests
                         would otherwise continue under weights that are gone

The workers hold the weights (``models/lora/manager.py``) and read each adapter's folder the
first time a row names its uid, so loading here touches no worker and needs no message.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vibe_sgl_lite.batch.forward_batch import AdapterRef
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.lora import read_adapter


class UnknownAdapterError(ValueError):
    """A request named an adapter that is not loaded (the server answers 404)."""


class AdapterRegistry:
    """The engine's adapters; without ``enable_lora`` (or ``lora_paths``) it refuses them all."""

    def __init__(self, model_config: ModelConfig, config: EngineConfig) -> None:
        self.model_config, self.max_rank = model_config, config.max_lora_rank
        self.enabled = config.enable_lora
        self.adapters: dict[str, AdapterRef] = {}
        self._next_uid = 1
        for name, path in (config.lora_paths or {}).items():
            self.load(name, path)

    def _require_enabled(self, what: str) -> None:
        if not self.enabled:
            raise ValueError(
                f"{what} given, but LoRA is not enabled (start the engine with lora_paths or "
                "enable_lora=True)"
            )

    def load(self, name: str, path: str | Path) -> AdapterRef:
        """Check and register the adapter in folder ``path`` as ``name``."""
        self._require_enabled(f"load_lora({name!r})")
        if not isinstance(name, str) or not name:
            raise ValueError(f"lora_name must be a non-empty string, got {name!r}")
        if name in self.adapters:
            raise ValueError(f"lora_name {name!r} is already loaded; unload it first")
        path = str(Path(path).resolve())
        read_adapter(path, self.model_config, self.max_rank)
        ref = AdapterRef(self._next_uid, path)
        self._next_uid += 1
        self.adapters[name] = ref
        return ref

    def resolve(self, name: str | None) -> AdapterRef | None:
        """The adapter a request named (``None``: the base model); ``ValueError`` if unknown."""
        if name is None:
            return None
        self._require_enabled(f"lora_name {name!r}")
        ref = self.adapters.get(name)
        if ref is None:
            loaded = ", ".join(sorted(self.adapters)) or "none"
            raise UnknownAdapterError(f"lora_name {name!r} is not loaded (loaded: {loaded})")
        return ref

    def unload(self, name: str, in_use: Iterable[AdapterRef | None]) -> None:
        """Forget ``name``; refused while ``in_use`` (the unfinished requests' adapters) has it."""
        self._require_enabled(f"unload_lora({name!r})")
        ref = self.resolve(name)
        users = sum(1 for r in in_use if r == ref)
        if users:
            raise ValueError(
                f"lora_name {name!r} is used by {users} unfinished request(s); "
                "unload it when they have finished"
            )
        del self.adapters[name]
