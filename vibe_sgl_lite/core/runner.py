"""``ModelRunner``: the public Python API.

    runner = ModelRunner("path/to/hf-model")
    runner.generate("Once upon a time", max_tokens=50)            -> str
    runner.generate_batch([...], temperature=0)                   -> list[str]
    runner.generate_stream("Explain KV caches:")                  -> Iterator[str]
    runner.stream_deltas("Explain KV caches:", logprobs=2)        -> Iterator[StreamDelta]
    runner.generate_outputs([...], sampling_params)               -> list[GenerationOutput]
    runner.load_lora("sql", "path/to/peft-adapter"); runner.generate(p, lora_name="sql")

Every call enqueues requests into one ``Engine`` and steps it until they finish, so requests of
one call (and of concurrent streams) share every forward pass: continuous batching.

The engine settings are ``EngineConfig``'s fields (``config.py``), passed as keyword arguments;
``inspect.signature(ModelRunner)`` lists them with their defaults.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vibe_sgl_lite.cache.base import PrefixCache
from vibe_sgl_lite.config import FIELDS, EngineConfig
from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.output import GenerationOutput, StreamDelta
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.kernels.sparse import CapturedScores
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin
from vibe_sgl_lite.scheduler import Request, Scheduler

Prompt = str | Sequence[int]


class BatchRequestError(ValueError):
    """Some prompts of a batch were invalid; ``outputs`` holds every result, failed ones too."""

    def __init__(self, message: str, outputs: list[GenerationOutput]) -> None:
        super().__init__(message)
        self.outputs = outputs


def default_model_path() -> Path:
    """The small Shakespeare model shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "tiny-shakespeare"


class ModelRunner:
    """Generation from Python: ``ModelRunner(model_path=None, *, cache=None, scheduler=None,
    **settings)``, where ``settings`` are ``EngineConfig``'s fields (``page_size=16``, ...).

    ``cache``, ``scheduler``, ``attention_backend`` and ``attention_method`` also take objects
    (a ``PrefixCache``, a ``Scheduler`` subclass, an ``AttentionBackend``, an
    ``AttentionMethod`` or a list of one per layer), and ``plugins`` generation-control plugins
    that act on every request they apply to (``sampling/plugins.py``): the research hooks.
    ``capture_attention`` records raw decode attention scores.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cache: PrefixCache | None = None,
        scheduler: Scheduler | None = None,
        plugins: Sequence[Plugin] = (),
        **settings: Any,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        backend: AttentionBackend | None = None
        if not isinstance(settings.get("attention_backend", ""), str):
            backend = settings.pop("attention_backend")
            settings["attention_backend"] = type(backend).__name__
        method = None
        if not isinstance(settings.get("attention_method", ""), str):
            method = settings.pop("attention_method")  # an object, or a list per layer
        if cache is not None:
            settings["enable_prefix_cache"] = True
        self.config = EngineConfig.from_kwargs(**settings)
        self.engine: Engine | None = Engine(
            self.model_path,
            self.config,
            scheduler=scheduler,
            cache=cache,
            attention_backend=backend,
            attention_method=method,
            plugins=plugins,
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ModelRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the model and the KV pool (and stop worker processes); idempotent."""
        if self.engine is not None:
            self.engine.close()
        self.engine = None

    @property
    def is_driver(self) -> bool:
        """Under ``torchrun``, only rank 0 generates; other ranks' runners have served and return."""
        return self.engine is None or self.engine.is_driver

    @property
    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("this ModelRunner is closed")
        return self.engine

    @property
    def tokenizer(self) -> Tokenizer:
        return self._engine.tokenizer

    # ---- generation --------------------------------------------------------------------------

    def generate(self, prompt: Prompt, *, priority: int = 0, **sampling: Any) -> str:
        """Generate a completion of one prompt (a string or token ids); returns its text."""
        params = SamplingParams.from_kwargs(**sampling)
        output = self.generate_outputs([prompt], params, priorities=[priority])[0]
        if output.error is not None:
            raise ValueError(output.error)
        return output.text

    def generate_batch(
        self, prompts: Sequence[Prompt], *, use_tqdm: bool = True, **sampling: Any
    ) -> list[str]:
        """Generate for several prompts batched together; texts in prompt order.

        An invalid prompt fails alone: the others complete, then ``BatchRequestError`` (a
        ``ValueError``) is raised with every output attached.
        """
        outputs = self._run(list(prompts), SamplingParams.from_kwargs(**sampling), use_tqdm)
        self._raise_on_errors(outputs)
        return [o.text for o in outputs]

    def generate_outputs(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        priorities: Sequence[int] | None = None,
        use_tqdm: bool = False,
    ) -> list[GenerationOutput]:
        """Full results (token ids, text, finish reason, cache hits, logprobs) per prompt.

        A prompt that fails validation gets an output with ``finish_reason="error"`` and the
        message in ``error``; the other prompts are unaffected. ``priorities`` (one int per
        prompt, smaller first) matter under ``schedule_policy="priority"``.
        """
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], int))
        batch: list[Prompt] = [prompts] if single else list(prompts)  # type: ignore[list-item,arg-type]
        return self._run(batch, sampling_params, use_tqdm, priorities)

    def generate_stream(self, prompt: Prompt, **sampling: Any) -> Generator[str, None, None]:
        """Yield text pieces as they are produced; their concatenation is ``generate``'s text."""
        with closing(self.stream_deltas(prompt, **sampling)) as deltas:
            for delta in deltas:
                if delta.text:
                    yield delta.text

    def stream_deltas(self, prompt: Prompt, **sampling: Any) -> Generator[StreamDelta, None, None]:
        """``generate_stream`` with the tokens, logprobs and finish reason behind the text.

        One ``StreamDelta`` per engine step that produced something. The prompt is checked when
        the first delta is asked for: a refused prompt raises ``ValueError`` there, before any
        output, so a caller that shows the prompt can wait for that first delta. Closing the
        iterator early aborts the request (its KV pages go back).
        """
        engine = self._engine
        req = engine.add_request(prompt, SamplingParams.from_kwargs(**sampling))
        sent_tokens = sent_logprobs = 0
        try:
            while True:
                num_tokens = req.num_output_tokens
                if req.pending_text or num_tokens > sent_tokens or req.is_finished:
                    finished = req.is_finished
                    delta = StreamDelta(
                        req.take_text(),
                        req.output_ids[sent_tokens:],
                        req.logprobs[sent_logprobs:],
                        req.finish_reason if finished else None,
                        req.error if finished else None,
                    )
                    sent_tokens, sent_logprobs = num_tokens, len(req.logprobs)
                    yield delta
                if req.is_finished:
                    break
                engine.step()
        finally:
            if not req.is_finished:
                engine.abort(req)

    def chat(self, messages: list[dict[str, str]], **sampling: Any) -> str:
        """Apply the model's chat template, then ``generate``."""
        tok = self._engine.tokenizer
        ids = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
        return self.generate(ids, **sampling)

    def _run(
        self,
        prompts: list[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
        use_tqdm: bool,
        priorities: Sequence[int] | None = None,
    ) -> list[GenerationOutput]:
        engine = self._engine
        if priorities is not None and len(priorities) != len(prompts):
            raise ValueError(
                f"priorities must have one entry per prompt ({len(prompts)}), got {len(priorities)}"
            )
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"sampling_params must be one SamplingParams or one per prompt "
                    f"({len(prompts)}), got {len(params_list)}"
                )
        outputs: list[GenerationOutput | None] = [None] * len(prompts)
        live: dict[int, Request] = {}
        for i, (prompt, params) in enumerate(zip(prompts, params_list)):
            try:
                live[i] = engine.add_request(prompt, params, priorities[i] if priorities else 0)
            except ValueError as exc:
                ids = list(prompt) if not isinstance(prompt, str) else []
                outputs[i] = GenerationOutput.failed(ids, str(exc))
        bar = tqdm(total=len(live), disable=not use_tqdm, desc="generate", unit="req")
        try:
            while any(not r.is_finished for r in live.values()):
                finished = engine.step()
                bar.update(sum(1 for r in finished if r in live.values()))
        finally:
            bar.close()
            for req in live.values():
                if not req.is_finished:
                    engine.abort(req)
        for i, req in live.items():
            outputs[i] = engine.outputs.to_output(req)
        return [o for o in outputs if o is not None]

    @staticmethod
    def _raise_on_errors(outputs: list[GenerationOutput]) -> None:
        failed = [(i, o.error) for i, o in enumerate(outputs) if o.finish_reason == "error"]
        if failed:
            detail = "; ".join(f"prompt {i}: {err}" for i, err in failed)
            raise BatchRequestError(f"{len(failed)} prompt(s) failed: {detail}", outputs)

    # ---- scoring -----------------------------------------------------------------------------

    def score(self, prompt: Prompt) -> list[float]:
        """Log-probability of every token of ``prompt`` after the first, given its prefix."""
        return self._engine.score(prompt)

    def perplexity(self, prompt: Prompt) -> float:
        """``exp(mean negative log-likelihood)`` of ``prompt``'s tokens after the first."""
        logprobs = self.score(prompt)
        if not logprobs:
            raise ValueError("perplexity needs a prompt of at least 2 tokens")
        return math.exp(-sum(logprobs) / len(logprobs))

    # ---- LoRA adapters ----------------------------------------------------------------------

    def load_lora(self, name: str, path: str | Path) -> None:
        """Load the PEFT adapter folder ``path`` as ``lora_name=name`` (``docs/lora.md``).

        Needs ``enable_lora=True`` or ``lora_paths`` at construction; a bad folder, a rank above
        ``max_lora_rank`` or an adapter for another base model is a ``ValueError``."""
        self._engine.load_lora(name, path)

    def unload_lora(self, name: str) -> None:
        """Forget adapter ``name``; refused (``ValueError``) while a request still uses it."""
        self._engine.unload_lora(name)

    @property
    def lora_names(self) -> list[str]:
        """The loaded adapters' names, in load order."""
        return list(self._engine.loras.adapters)

    # ---- stats and cache ---------------------------------------------------------------------

    @contextmanager
    def capture_attention(
        self, layers: Sequence[int] | None = None
    ) -> Iterator[list[CapturedScores]]:
        """Record the raw pre-softmax scores of every decode step run inside the block.

        Yields a list that fills as requests decode: one ``CapturedScores`` per request, layer
        and step, with ``request_id``, ``layer`` and ``scores [num_heads, kv_len]`` (``scale *
        q . k`` over the request's whole context, whatever the attention method reads).
        ``layers`` limits it to those layer indices. Prompt (prefill) tokens are not recorded.
        """
        engine = self._engine
        capture = engine.start_capture(layers)
        try:
            yield capture.records
        finally:
            engine.stop_capture()

    def get_stats(self) -> dict[str, float | int]:
        return self._engine.get_stats()

    def flush_cache(self) -> bool:
        """Empty the prefix cache (SGLang's name). Only allowed while no request is running."""
        engine = self._engine
        if engine.has_unfinished():
            raise RuntimeError("flush_cache: requests are still running")
        engine.cache.flush()
        return True


def _signature() -> inspect.Signature:
    """``ModelRunner``'s signature with every ``EngineConfig`` field spelled out, for ``help()``,
    IDEs and ``inspect``; the settings themselves are checked by ``EngineConfig``."""
    params = [
        inspect.Parameter("model_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("cache", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("scheduler", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("plugins", inspect.Parameter.KEYWORD_ONLY, default=()),
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
        for name, f in FIELDS.items()
    ]
    return inspect.Signature(params)


ModelRunner.__signature__ = _signature()  # type: ignore[attr-defined]
