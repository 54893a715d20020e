"""The plugin interface through ``ModelRunner``: per runner and per request, batched, a plugin's
own finish reason, errors that fail only their request, and the built-in ``LogitBias``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

pytestmark = pytest.mark.integration

PROMPTS = ["Once upon a time", "The quick brown fox", "def forward(self, x):"]
GREEDY = dict(temperature=0.0, max_tokens=8, ignore_eos=True)


class BanTokens(Plugin):
    """Masks fixed token ids; records the rows it was called with."""

    name = "ban"

    def __init__(self, banned: list[int], only_prompt: str | None = None) -> None:
        self.banned = banned
        self.only_prompt = only_prompt
        self.calls: list[int] = []

    def applies(self, params: SamplingParams) -> bool:
        return params.max_tokens != 7  # a request with max_tokens=7 opts out

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        self.calls.append(len(rows))
        logits[:, self.banned] = float("-inf")
        return logits

    def stats(self) -> dict[str, float]:
        return {"calls": len(self.calls)}


class FinishAfter(Plugin):
    name = "finish_after"

    def __init__(self, n: int) -> None:
        self.n = n

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        return ["enough" if len(r.output_ids) + 1 >= self.n else None for r in rows]


class Boom(Plugin):
    """Raises for requests whose first prompt token is ``bad``, in the hook ``where``."""

    name = "boom"

    def __init__(self, bad: int, where: str) -> None:
        self.bad, self.where = bad, where

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        if self.where == "logits" and any(r.prompt_ids[0] == self.bad for r in rows):
            raise RuntimeError("no such luck")
        return logits

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        if self.where == "token" and any(r.prompt_ids[0] == self.bad for r in rows):
            raise RuntimeError("no such luck")
        return [None] * len(rows)


@pytest.fixture(scope="module")
def reference(qwen3_dir: Path) -> list[list[int]]:
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        return [o.token_ids for o in runner.generate_outputs(PROMPTS, SamplingParams(**GREEDY))]


def test_runner_plugin_masks_every_request_it_applies_to(
    qwen3_dir: Path, reference: list[list[int]]
) -> None:
    banned = [reference[0][0], reference[1][0]]
    plugin = BanTokens(banned)
    with ModelRunner(qwen3_dir, max_total_tokens=512, plugins=[plugin]) as runner:
        params = [SamplingParams(**GREEDY)] * 2 + [SamplingParams(**{**GREEDY, "max_tokens": 7})]
        outs = runner.generate_outputs(PROMPTS, params)
        stats = runner.get_stats()
    assert not set(banned) & set(outs[0].token_ids + outs[1].token_ids)
    assert outs[0].token_ids != reference[0] and outs[1].token_ids != reference[1]
    assert outs[2].token_ids == reference[2][:7]  # opted out: untouched
    # batched: one call per step with both rows (the prompts prefill together)
    assert plugin.calls[0] == 2 and max(plugin.calls) == 2
    assert stats["ban.calls"] == len(plugin.calls) and stats["ban.errors"] == 0


def test_request_plugin_acts_on_its_request_only(
    qwen3_dir: Path, reference: list[list[int]]
) -> None:
    plugin = BanTokens([reference[1][0]])
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        params = [SamplingParams(**GREEDY), SamplingParams(**GREEDY, plugins=[plugin])]
        outs = runner.generate_outputs(PROMPTS[:2], params)
        stats = runner.get_stats()
    assert outs[0].token_ids == reference[0]
    assert reference[1][0] not in outs[1].token_ids
    assert set(plugin.calls) == {1} and stats["ban.calls"] == len(plugin.calls)


def test_plugin_finishes_with_its_own_reason(qwen3_dir: Path, reference: list[list[int]]) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=512, plugins=[FinishAfter(3)]) as runner:
        out = runner.generate_outputs(PROMPTS[0], SamplingParams(**GREEDY))[0]
        stats = runner.get_stats()
    assert out.finish_reason == "enough" and out.token_ids == reference[0][:3]
    assert stats["finish_after.finished"] == 1


@pytest.mark.parametrize("where", ["logits", "token"])
def test_a_plugin_that_raises_fails_only_its_request(
    qwen3_dir: Path, reference: list[list[int]], where: str
) -> None:
    bad = Tokenizer.from_pretrained(qwen3_dir).encode(PROMPTS[1])[0]
    with ModelRunner(qwen3_dir, max_total_tokens=512, plugins=[Boom(bad, where)]) as runner:
        outs = runner.generate_outputs(PROMPTS, SamplingParams(**GREEDY))
        stats = runner.get_stats()
        assert runner.flush_cache()
        after = runner.get_stats()
    assert outs[1].finish_reason == "error"
    assert outs[1].error == "plugin 'boom' failed: RuntimeError: no such luck"
    assert [outs[0].token_ids, outs[2].token_ids] == [reference[0], reference[2]]
    assert stats["boom.errors"] == 1
    assert after["kv_pages_free"] == after["kv_pages_total"]


def test_logprobs_score_the_model_not_the_plugins(qwen3_dir: Path) -> None:
    params = SamplingParams(**GREEDY, logprobs=1)
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        plain = runner.generate_outputs(PROMPTS[0], params)[0]
        first = plain.token_ids[0]
        biased = runner.generate_outputs(
            PROMPTS[0], SamplingParams(**GREEDY, logprobs=1, logit_bias={first: -100})
        )[0]
    assert biased.token_ids[0] != first
    assert plain.logprobs is not None and biased.logprobs is not None
    assert biased.logprobs[0].top == plain.logprobs[0].top  # same raw distribution


def test_logit_bias_allowed_token_ids_and_bad_words(
    qwen3_dir: Path, reference: list[list[int]]
) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        tok = runner.tokenizer
        target = tok.encode(" time", add_special_tokens=False)[0]
        out = runner.generate_outputs(
            PROMPTS[0], SamplingParams(**GREEDY, logit_bias={str(target): 100})  # type: ignore
        )[0]
        assert out.token_ids == [target] * GREEDY["max_tokens"]
        allowed = sorted(set(reference[1]))[:2]
        out = runner.generate_outputs(
            PROMPTS[0], SamplingParams(**GREEDY, allowed_token_ids=allowed)
        )[0]
        assert set(out.token_ids) <= set(allowed)
        word = tok.decode(reference[2][:2]).strip()
        out = runner.generate_outputs(PROMPTS[2], SamplingParams(**GREEDY, bad_words=[word]))[0]
        assert out.token_ids[:2] != reference[2][:2]
        assert word not in tok.decode(out.token_ids)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(logit_bias={10**6: 1.0}), "logit_bias token ids must be in"),
        (dict(logit_bias={1: 200}), r"logit_bias\[1\] must be a finite number in \[-100, 100\]"),
        (dict(allowed_token_ids=[10**6]), "allowed_token_ids token ids must be in"),
        (dict(allowed_token_ids=[]), "allowed_token_ids must be a non-empty list"),
        (dict(bad_words=[""]), "bad_words must be a list of non-empty strings"),
        (dict(repeat_check_window=8, repeat_block_size=4), "repeat_check_window must be"),
        (dict(entropy_threshold=-1), "entropy_threshold"),
        (dict(regex="a", grammar="b"), "exclusive"),
    ],
)
def test_bad_control_values_fail_alone(qwen3_dir: Path, kwargs: dict, message: str) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        with pytest.raises(ValueError, match=message):
            runner.generate("hello", **kwargs)
        try:
            bad = SamplingParams(**kwargs)
        except ValueError:
            return  # rejected at construction: nothing can reach the engine
        outs = runner.generate_outputs(["hello", "world"], [bad, SamplingParams(**GREEDY)])
        assert outs[0].finish_reason == "error" and outs[1].finish_reason == "length"


def test_plugin_state_is_released(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        engine = runner.engine
        assert engine is not None
        it = runner.generate_stream("hello", logit_bias={3: 1.0}, max_tokens=20)
        next(it)
        assert engine.plugins.active
        it.close()
        runner.generate("hello", logit_bias={3: 1.0}, max_tokens=3)
        assert not engine.plugins.active
        assert not engine.plugins.plugins[0]._rules  # type: ignore[attr-defined]


BUILTIN_TRIGGERS: list[dict[str, object]] = [
    dict(logit_bias={3: 1.0}),
    dict(allowed_token_ids=[1, 2]),
    dict(bad_words=["hello"]),
    dict(repeat_check=True),
    dict(enable_entropy_early_exit=True, entropy_threshold=0.5),
    dict(json_schema={"type": "object"}),
    dict(regex="[a-z]+"),
    dict(grammar='start: "a"'),
]


@pytest.mark.parametrize("fields", BUILTIN_TRIGGERS, ids=lambda f: next(iter(f)))
def test_needs_plugins_agrees_with_every_builtin(
    qwen3_dir: Path, fields: dict[str, object]
) -> None:
    """The engine consults the plugins only for requests whose ``needs_plugins`` is true: a
    field that turns a built-in plugin on must turn it on, and default parameters must not."""
    from vibe_sgl_lite.sampling.builtin import builtin_plugins

    builtins = builtin_plugins(Tokenizer.from_pretrained(qwen3_dir).hf)
    params = SamplingParams(**fields)  # type: ignore[arg-type]
    assert any(p.applies(params) for p in builtins)
    assert params.needs_plugins
    assert not any(p.applies(SamplingParams()) for p in builtins)
    assert not SamplingParams().needs_plugins


def test_default_requests_never_enter_the_plugins(qwen3_dir: Path) -> None:
    """With no plugin field set and none registered, no plugin hook runs (zero cost)."""
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        engine = runner.engine
        assert engine is not None
        calls: list[str] = []
        for hook in ("add_request", "process_logits", "after_token", "release"):
            original = getattr(engine.plugins, hook)

            def spy(*args: object, _hook: str = hook, _original: object = original) -> object:
                calls.append(_hook)
                return _original(*args)  # type: ignore[operator]

            setattr(engine.plugins, hook, spy)
        runner.generate_batch(["hello", "world"], max_tokens=4, use_tqdm=False)
        assert calls == []
        runner.generate("hello", max_tokens=4, logit_bias={3: 1.0})
        assert {"add_request", "process_logits", "after_token", "release"} <= set(calls)
