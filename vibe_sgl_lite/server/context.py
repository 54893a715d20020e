"""What every route reads: the model served (``ServedModel``) and the running ``EngineLoop``.

``create_app`` builds one ``ServerContext`` and keeps it in ``app.state``; a route asks for it
with the ``Context`` dependency, so the routes are plain module-level functions that need no
closure over the app. Generation goes through the context's ``EngineLoop``; the few facts the
routes need besides (the name, the length limit, the tokenizer's texts) are ``ServedModel``'s,
fixed for the engine's life and read-only, so the event loop reads them without a trip through
the engine thread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.server.engine_loop import EngineLoop, Stats
from vibe_sgl_lite.server.responses import APIError


@dataclass(frozen=True)
class ServedModel:
    """The model as the endpoints see it: its name, its length limit and its tokenizer; and,
    for the worker endpoints (``worker_api.py``), where it was loaded from, its vocabulary size
    and the engine's settings as plain JSON values."""

    name: str
    max_model_len: int
    tokenizer: Tokenizer
    model_path: str = ""
    vocab_size: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    lora_name: str | None = None  # the adapter a body's ``model`` chose (``lora.py``)
    reasoning_parser: str | None = None  # ``--reasoning-parser`` (``reasoning.py``)
    tool_call_parser: str | None = None  # ``--tool-call-parser`` (``tool_parsers.py``)

    @classmethod
    def of(cls, engine: Engine, name: str, model_path: str = "") -> ServedModel:
        config = dataclasses.asdict(engine.config)
        settings = {
            k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
            for k, v in config.items()
        }
        vocab = engine.model_config.vocab_size
        return cls(name, engine.max_model_len, engine.tokenizer, model_path, vocab, settings)

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (the logprobs' ``token``)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def prompt_text(self, prompt: str | list[int]) -> str:
        """A prompt as text (``echo``): token ids decoded, the engine having checked them."""
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    def chat_prompt(
        self, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None
    ) -> list[int]:
        """The chat template's prompt, as token ids; ``template_kwargs`` are the request's
        ``chat_template_kwargs``. Raises ``ValueError`` (no template) or jinja2's
        ``TemplateError`` (the template's own ``raise_exception``)."""
        text = self.tokenizer.apply_chat_template(messages, **(template_kwargs or {}))
        return self.tokenizer.encode(text, add_special_tokens=False)


class ServerContext:
    """The served model, and the engine loop once the app's lifespan has started it."""

    def __init__(self, model: ServedModel, adapters: dict[str, str] | None = None) -> None:
        self.model = model
        # The LoRA adapters served besides the base, ``{name: folder}``; changed only by the
        # load/unload routes once the engine thread has done it (``lora.py``).
        self.adapters: dict[str, str] = dict(adapters or {})
        self._loop: EngineLoop | None = None

    def model_for(self, name: str) -> ServedModel:
        """The served model, if ``name`` (a body's ``model``) names it, or the model under the
        LoRA adapter of that name (vLLM's convention); else a 404 naming it."""
        if name in self.adapters:
            return dataclasses.replace(self.model, name=name, lora_name=name)
        if name != self.model.name:
            served = ", ".join(repr(n) for n in [self.model.name, *self.adapters])
            message = f"model {name!r} does not exist; this server serves {served}"
            raise APIError(404, message, "model")
        return self.model

    def start(self, loop: EngineLoop) -> None:
        self._loop = loop

    def engine_loop(self) -> EngineLoop:
        """The loop (also after shutdown); ``LookupError`` before the lifespan started it."""
        if self._loop is None:
            raise LookupError("the engine loop has not started")
        return self._loop

    def stats(self) -> Stats | None:
        """The engine's published statistics; ``None`` before the engine loop started."""
        return None if self._loop is None else self._loop.get_stats()


async def server_context(request: Request) -> ServerContext:
    """The ``Context`` dependency: the context ``create_app`` stored in ``app.state``."""
    context = request.app.state.context
    assert isinstance(context, ServerContext)
    return context


Context = Annotated[ServerContext, Depends(server_context)]
