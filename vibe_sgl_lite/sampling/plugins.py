"""Generation-control plugins: one hook on the sampled rows of every step, batched.

    Engine.step
      logits [S, V]                       the rows that sample this step
      for each plugin, its rows R (those whose request it applies to):
        logits[R] = plugin.process_logits(logits[R], rows)   mask, bias: tensor ops on [R, V]
      tokens = Sampler.sample(logits)
      for each plugin, its rows R:
        reasons = plugin.after_token(rows, tokens[R])        finish with its own finish_reason
      OutputProcessor.process(req, token, reason)            then stops, length, text

A plugin applies to a request when it was registered on the runner
(``ModelRunner(plugins=[...])``) and its ``applies(params)`` says so, or when the request
carries it (``SamplingParams(plugins=[...])``). A plugin that applies to no row of a step is
not called at all. State a plugin keeps per request lives in the plugin, keyed by
``request_id``; ``release(request_id)`` says the request has ended (finished, aborted or
failed). A plugin that raises fails only the requests it raised on, with
``finish_reason="error"`` and an error naming the plugin.

Writing one (see ``examples/plugin.py``)::

    class BanDigits(Plugin):
        name = "ban_digits"

        def __init__(self, digit_ids: list[int]) -> None:
            self.digit_ids = digit_ids

        def process_logits(self, logits, rows):
            logits[:, self.digit_ids] = float("-inf")
            return logits
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # SamplingParams holds plugins (and needs no torch); this module reads params
    import torch

    from vibe_sgl_lite.sampling.params import SamplingParams


class PluginRow(Protocol):
    """What a plugin sees of one request in one step (the engine passes its ``Request``).

    ``output_ids`` are the tokens generated before this step (in ``after_token``, before the
    token just sampled, which is passed separately).
    """

    @property
    def request_id(self) -> int: ...

    @property
    def params(self) -> SamplingParams: ...

    @property
    def prompt_ids(self) -> list[int]: ...

    @property
    def output_ids(self) -> list[int]: ...


class Plugin:
    """Base class of a generation-control plugin; override only what you need.

    ``name`` labels the plugin in ``get_stats()`` (``"<name>.<counter>"``) and in errors.
    """

    name: str = "plugin"

    def applies(self, params: SamplingParams) -> bool:
        """Whether a runner-level plugin acts on a request with these parameters."""
        return True

    def add_request(self, request_id: int, params: SamplingParams, vocab_size: int) -> None:
        """A request this plugin acts on is about to be queued: check it (``ValueError`` naming
        the field) and set up what the plugin keeps for it (``release`` drops it)."""

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        """``logits: [len(rows), vocab]`` float32 (may be changed in place) -> the same shape."""
        return logits

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        """Per row, a ``finish_reason`` that ends the request with the sampled token, or None."""
        return [None] * len(rows)

    def release(self, request_id: int) -> None:
        """The request has ended: drop whatever was kept for it."""

    def stats(self) -> dict[str, float]:
        """The plugin's own counters (``get_stats()`` shows them as ``"<name>.<key>"``)."""
        return {}


@dataclass
class PluginStep:
    """The outcome of the plugins for one step's sampling rows (index = row)."""

    logits: torch.Tensor
    errors: dict[int, str]


class PluginSet:
    """Dispatches the plugins of one engine: which rows each sees, errors, counters."""

    def __init__(self, plugins: Sequence[Plugin] = ()) -> None:
        names = [p.name for p in plugins]
        duplicate = [n for n, c in Counter(names).items() if c > 1]
        if duplicate:
            raise ValueError(f"plugins must have distinct names, got {duplicate[0]!r} twice")
        self.plugins = list(plugins)
        self._per_request: dict[int, Plugin] = {}  # plugins requests brought, by identity
        # request id -> plugins that act on it; empty: the engine skips every hook below
        self.active: dict[int, list[Plugin]] = {}
        self.finished: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def add_request(self, request_id: int, params: SamplingParams, vocab_size: int) -> None:
        """Let every plugin that will act on the request check and set it up, then track it."""
        active = [p for p in self.plugins if p.applies(params)] + list(params.plugins or [])
        started: list[Plugin] = []
        try:
            for plugin in active:
                plugin.add_request(request_id, params, vocab_size)
                started.append(plugin)
        except Exception:  # the request is not queued: nothing may be kept for it
            for plugin in started:
                plugin.release(request_id)
            raise
        for plugin in params.plugins or []:
            self._per_request.setdefault(id(plugin), plugin)
        if active:
            self.active[request_id] = active

    def release(self, request_id: int) -> None:
        for plugin in self.active.pop(request_id, []):
            plugin.release(request_id)

    def _groups(self, rows: Sequence[PluginRow]) -> list[tuple[Plugin, list[int]]]:
        """Each plugin acting on some row, with the indices of its rows, in registration order."""
        groups: dict[int, tuple[Plugin, list[int]]] = {}
        for i, row in enumerate(rows):
            for plugin in self.active.get(row.request_id, ()):
                groups.setdefault(id(plugin), (plugin, []))[1].append(i)
        return list(groups.values())

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> PluginStep:
        """Apply every plugin to its rows of ``logits [len(rows), V]``; the input is not changed
        (the engine keeps the raw logits for logprobs)."""
        step = PluginStep(logits, {})
        if not self.active:
            return step
        for plugin, idx in self._groups(rows):
            idx = [i for i in idx if i not in step.errors]
            if not idx:
                continue
            if step.logits is logits:
                step.logits = logits.clone()
            try:
                out = plugin.process_logits(step.logits[idx], [rows[i] for i in idx])
                step.logits[idx] = out
            except Exception:
                for i in idx:  # one by one: only the rows the plugin fails on fail
                    try:
                        one = plugin.process_logits(step.logits[i : i + 1].clone(), [rows[i]])
                        step.logits[i : i + 1] = one
                    except Exception as exc:
                        step.errors[i] = self._error(plugin, exc)
        return step

    def after_token(
        self, rows: Sequence[PluginRow], tokens: Sequence[int], errors: dict[int, str]
    ) -> list[str | None]:
        """Each row's finish reason from the plugins (the first plugin to finish it wins);
        rows whose plugin raises go into ``errors``."""
        reasons: list[str | None] = [None] * len(rows)
        if not self.active:
            return reasons
        for plugin, idx in self._groups(rows):
            idx = [i for i in idx if i not in errors]
            if not idx:
                continue
            try:
                found = plugin.after_token([rows[i] for i in idx], [tokens[i] for i in idx])
            except Exception:
                found = []
                for i in idx:
                    try:
                        found += plugin.after_token([rows[i]], [tokens[i]])
                    except Exception as exc:
                        errors[i] = self._error(plugin, exc)
                        found.append(None)
            for i, reason in zip(idx, found):
                if reason is not None and reasons[i] is None:
                    reasons[i] = reason
                    self.finished[plugin.name] += 1
        return reasons

    def _error(self, plugin: Plugin, exc: Exception) -> str:
        self.failed[plugin.name] += 1
        return f"plugin {plugin.name!r} failed: {type(exc).__name__}: {exc}"

    def stats(self) -> dict[str, float]:
        """``"<name>.<counter>"`` for every plugin: its own counters, plus how many requests it
        finished and how many failed in it. Per-request plugins with one name are summed."""
        out: dict[str, float] = {}
        for plugin in [*self.plugins, *self._per_request.values()]:
            for key, value in plugin.stats().items():
                out[f"{plugin.name}.{key}"] = out.get(f"{plugin.name}.{key}", 0) + value
            out[f"{plugin.name}.finished"] = self.finished[plugin.name]
            out[f"{plugin.name}.errors"] = self.failed[plugin.name]
        return out
