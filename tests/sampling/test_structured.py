"""Structured output (``json_schema``, ``regex``, ``grammar``): the ``StructuredOutput`` plugin.

The random-weight fixture model at temperature 1 writes byte soup, so an output that parses is
the constraint's doing; each test of a constraint also shows the same seeds unconstrained do not
parse. The mask itself is checked token by token against an independent llguidance matcher.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import llguidance
import pytest
import torch
from transformers import AutoTokenizer

from tests.sampling.plugin_rows import Row
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.cli import main
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow
from vibe_sgl_lite.sampling.repetition import RepetitionStop
from vibe_sgl_lite.sampling.structured import JSON_DEFAULTS, StructuredOutput, constraint_of

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "n", "ok"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{3,8}( [a-z]{3,8}){2}"
GBNF = """
root     ::= greeting " " name "!"
greeting ::= "hello" | "hi" | "hey"
name     ::= [a-z] [a-z] [a-z]?
"""
LARK = """
start: greeting " " NAME "!"
greeting: "hello" | "hi"
NAME: /[a-z]{2,3}/
"""
SEEDS = range(6)


def schema_ok(text: str) -> bool:
    """``text`` is JSON matching ``SCHEMA`` (checked by hand: no jsonschema dependency)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"name", "n", "ok"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 6
        and type(value["n"]) is int
        and 0 <= value["n"] <= 99
        and isinstance(value["ok"], bool)
    )


CASES: dict[str, tuple[str, Any, Callable[[str], bool]]] = {
    "json_schema": ("json_schema", SCHEMA, schema_ok),
    "regex": ("regex", REGEX, lambda t: re.fullmatch(REGEX, t) is not None),
    "gbnf": ("grammar", GBNF, lambda t: re.fullmatch(r"(hello|hi|hey) [a-z]{2,3}!", t) is not None),
    "lark": ("grammar", LARK, lambda t: re.fullmatch(r"(hello|hi) [a-z]{2,3}!", t) is not None),
}


@pytest.fixture(scope="module")
def runner(qwen3_dir: Path) -> Iterator[ModelRunner]:
    with ModelRunner(qwen3_dir) as r:
        yield r


def structured_plugin(runner: ModelRunner) -> StructuredOutput:
    assert runner.engine is not None
    (plugin,) = [p for p in runner.engine.plugins.plugins if isinstance(p, StructuredOutput)]
    return plugin


def seeded(**kwargs: Any) -> list[SamplingParams]:
    return [SamplingParams(temperature=1.0, seed=s, **kwargs) for s in SEEDS]


# ---- the constraint holds ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_constrained_outputs_always_parse(runner: ModelRunner, case: str) -> None:
    name, spec, ok = CASES[case]
    before = runner.get_stats()
    outputs = runner.generate_outputs(["hi"] * len(SEEDS), seeded(max_tokens=100, **{name: spec}))
    assert [o.finish_reason for o in outputs] == ["stop"] * len(SEEDS)
    assert all(ok(o.text) for o in outputs), [o.text for o in outputs]
    # The same seeds without the constraint: nothing parses, so the constraint did the work.
    free = runner.generate_outputs(["hi"] * len(SEEDS), seeded(max_tokens=40))
    assert not any(ok(o.text) for o in free), [o.text for o in free]

    after = runner.get_stats()
    delta = {k: after[k] - before[k] for k in after if k.startswith("structured_output.")}
    assert delta["structured_output.requests"] == len(SEEDS)
    assert delta["structured_output.compiled"] == len(SEEDS)  # in add_request, not again
    assert delta["structured_output.masked_rows"] == sum(len(o.token_ids) for o in outputs)
    eos_ids = runner.tokenizer.eos_token_ids  # "stop" by the grammar, or by an EOS it allowed
    by_eos = sum(o.token_ids[-1] in eos_ids for o in outputs)
    assert delta["structured_output.finished"] + by_eos == len(SEEDS)
    plugin = structured_plugin(runner)
    assert not plugin._states  # released at the end


def test_greedy_unchanged_by_a_constraint_that_admits_everything(runner: ModelRunner) -> None:
    # `<[*]>` is llguidance's "any token id": unlike the regex `(.|\n)*`, which forbids a byte
    # token that would leave invalid UTF-8 (this model writes those), it admits every sequence.
    prompts = ["hi", "Once upon a time", "ROMEO:", "The quick brown fox"]
    plain = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    anything = SamplingParams(
        temperature=0, max_tokens=12, ignore_eos=True, grammar="start: <[*]>*"
    )
    reference = [o.token_ids for o in runner.generate_outputs(prompts, plain)]
    constrained = runner.generate_outputs(prompts, anything)
    assert [o.token_ids for o in constrained] == reference
    assert [o.finish_reason for o in constrained] == ["length"] * len(prompts)


def test_mask_is_exactly_the_matchers_allowed_tokens(tokenizer_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    eos = hf.eos_token_id
    plugin = StructuredOutput(hf)
    vocab = len(hf) + 13  # a padded embedding: 13 ids the tokenizer does not have
    tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab)
    done = tok.tokenize_str("abc def ghi")  # a complete output: EOS is allowed next
    rows = [
        Row(0, SamplingParams(regex=REGEX)),
        Row(1, SamplingParams(regex=REGEX), output_ids=tok.tokenize_str("abc de")),
        Row(2, SamplingParams(regex=REGEX), output_ids=done),
        Row(3, SamplingParams(regex=REGEX, ignore_eos=True), output_ids=done),
        Row(4, SamplingParams(grammar="start: <[*]>*")),
    ]
    plugin.add_request(0, rows[0].params, vocab)  # the others: compiled (and replayed) on first use
    logits = plugin.process_logits(torch.randn(len(rows), vocab) * 10, rows)
    allowed = [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in logits]

    for row, got in zip(rows, allowed):
        field_name, grammar = constraint_of(row.params)
        reference = llguidance.LLMatcher(tok, grammar)
        assert reference.consume_tokens(row.output_ids)
        expected = {t for t in range(len(hf)) if reference.validate_tokens([t]) == 1}
        if row.params.ignore_eos:
            expected.discard(eos)
        assert got == expected, f"row {row.request_id}"
    assert eos in allowed[2] and eos not in allowed[3] and eos not in allowed[0]
    assert len(allowed[4]) == len(hf)  # everything the tokenizer has, no padded id
    assert plugin.stats() == {"requests": 5, "compiled": 5, "masked_rows": 5}


def test_after_token_stops_when_the_grammar_is_complete(tokenizer_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    plugin = StructuredOutput(hf)
    params = SamplingParams(regex="ab(c|d)")
    plugin.add_request(7, params, len(hf))
    tokens = hf.encode("abc", add_special_tokens=False)
    row = Row(7, params)
    reasons = []
    for token in tokens:
        plugin.process_logits(torch.zeros(1, len(hf)), [row])
        reasons += plugin.after_token([row], [token])
        row.output_ids.append(token)
    assert reasons == [None] * (len(tokens) - 1) + ["stop"]
    with pytest.raises(ValueError, match="not allowed by the request's regex"):
        plugin.after_token([Row(8, SamplingParams(regex="ab(c|d)"))], [tokens[-1]])
    # EOS once the output is complete: the engine's EOS check ends the request (its text is not
    # shown), unless ignore_eos, where the plugin ends it (the grammar admits nothing more).
    done = hf.encode("abc def ghi", add_special_tokens=False)
    eos = hf.eos_token_id
    assert plugin.after_token([Row(9, SamplingParams(regex=REGEX), output_ids=done)], [eos]) == [
        None
    ]
    ignoring = Row(10, SamplingParams(regex=REGEX, ignore_eos=True), output_ids=done)
    assert plugin.after_token([ignoring], [eos]) == ["stop"]
    for request_id in (7, 8, 9, 10):
        plugin.release(request_id)
    assert not plugin._states


def test_a_request_another_plugin_rejects_keeps_no_matcher(runner: ModelRunner) -> None:
    plugin = structured_plugin(runner)
    with pytest.raises(ValueError, match="logit_bias token ids"):
        runner.generate("hi", regex=REGEX, logit_bias={10**7: 1.0})
    with pytest.raises(ValueError, match="repeat_check_window"):
        runner.generate("hi", regex=REGEX, plugins=[RepetitionStop(window=8)])
    assert not plugin._states


def test_json_defaults_are_compact_and_a_schema_can_override_them(tokenizer_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok = llguidance.hf.from_tokenizer(hf)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    flexible = {**schema, "x-guidance": {"whitespace_flexible": True}}

    def accepts(schema: dict[str, Any], text: str) -> bool:
        matcher = llguidance.LLMatcher(tok, constraint_of(SamplingParams(json_schema=schema))[1])
        return matcher.consume_tokens(tok.tokenize_str(text)) and matcher.is_accepting()

    assert JSON_DEFAULTS["whitespace_flexible"] is False
    assert accepts(schema, '{"a": 1}') and not accepts(schema, '{ "a": 1 }')
    assert accepts(flexible, '{ "a": 1 }')


# ---- invalid constraints ------------------------------------------------------------------------

INVALID = [
    ("json_schema", {"type": "frob"}),
    ("json_schema", '{"type": '),  # not JSON
    ("regex", "[a-"),
    ("grammar", "start: ("),  # Lark
    ("grammar", 'root ::= "a'),  # GBNF
    ("grammar", "root ::= missing"),  # GBNF, an undefined rule
]


@pytest.mark.parametrize("name,value", INVALID)
def test_invalid_constraint_raises_naming_the_field(
    runner: ModelRunner, name: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be a valid"):
        runner.generate("hi", max_tokens=5, **{name: value})


def test_bad_constraint_fails_alone_in_a_batch(runner: ModelRunner) -> None:
    bad, good = SamplingParams(regex="[a-", max_tokens=50), seeded(regex=REGEX, max_tokens=50)[0]
    outputs = runner.generate_outputs(["hi", "hi"], [bad, good])
    assert outputs[0].finish_reason == "error"
    assert outputs[0].error is not None and outputs[0].error.startswith("regex must be")
    assert outputs[1].finish_reason == "stop" and re.fullmatch(REGEX, outputs[1].text)


class ForceToken(Plugin):
    """Overrides every earlier mask: only ``token`` can be sampled."""

    name = "force_token"

    def __init__(self, token: int) -> None:
        self.token = token

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        logits.fill_(float("-inf"))
        logits[:, self.token] = 0.0
        return logits


def test_rejected_token_fails_only_its_request(runner: ModelRunner) -> None:
    # The good request comes first in the batch: it has consumed its token when the forced one
    # raises, and PluginSet's row-by-row retry must not feed it that token twice.
    upper_z = runner.tokenizer.encode("Z", add_special_tokens=False)[0]
    good = seeded(regex=REGEX, max_tokens=50)[0]
    forced = SamplingParams(regex=REGEX, max_tokens=50, plugins=[ForceToken(upper_z)])
    before = runner.get_stats()["structured_output.errors"]
    outputs = runner.generate_outputs(["hi", "hi"], [good, forced])
    assert outputs[0].finish_reason == "stop" and re.fullmatch(REGEX, outputs[0].text)
    assert outputs[0].text == runner.generate("hi", regex=REGEX, max_tokens=50, seed=SEEDS[0])
    assert outputs[1].finish_reason == "error" and outputs[1].token_ids == []
    assert outputs[1].error is not None and "structured_output" in outputs[1].error
    assert "regex" in outputs[1].error
    assert runner.get_stats()["structured_output.errors"] == before + 1


# ---- with the rest of the engine ----------------------------------------------------------------


def test_bundled_model_writes_a_speaker_and_a_line() -> None:
    schema = {
        "type": "object",
        "properties": {
            "speaker": {"type": "string", "maxLength": 24},
            "line": {"type": "string", "maxLength": 80},
        },
        "required": ["speaker", "line"],
        "additionalProperties": False,
    }
    with ModelRunner() as runner:
        params = [
            SamplingParams(json_schema=schema, temperature=0.8, seed=s, max_tokens=120)
            for s in (1, 2)
        ]
        outputs = runner.generate_outputs(["ROMEO:", "JULIET:"], params)
    for output in outputs:
        assert output.finish_reason == "stop"
        value = json.loads(output.text)
        assert set(value) == {"speaker", "line"}
        assert all(isinstance(v, str) and v for v in value.values())


def test_stream_equals_generate(runner: ModelRunner) -> None:
    for name, spec, ok in (CASES["json_schema"], CASES["regex"]):
        kwargs = {name: spec, "max_tokens": 100, "seed": 3}
        text = runner.generate("hi", **kwargs)
        pieces = list(runner.generate_stream("hi", **kwargs))
        assert ok(text) and len(pieces) > 1
        assert "".join(pieces) == text


def test_stop_string_cuts_a_constrained_output(runner: ModelRunner) -> None:
    full = runner.generate("hi", regex=REGEX, max_tokens=50, seed=4)
    (output,) = runner.generate_outputs(
        ["hi"], SamplingParams(regex=REGEX, max_tokens=50, seed=4, stop=" ")
    )
    assert output.finish_reason == "stop"
    assert output.text == full.split(" ")[0]


LONG_PROMPT = "Once upon a time there was a tiny language model that lived on a small CPU. " * 2


def test_prefix_cache_hit_keeps_the_constraint(runner: ModelRunner) -> None:
    first, second = seeded(json_schema=SCHEMA, max_tokens=100)[:2]
    runner.generate_outputs([LONG_PROMPT], first)
    (output,) = runner.generate_outputs([LONG_PROMPT], second)
    assert output.num_cached_tokens >= 16 and schema_ok(output.text)


def test_preemption_keeps_the_matcher_in_step(qwen3_dir: Path, runner: ModelRunner) -> None:
    params = seeded(json_schema=SCHEMA, max_tokens=100)
    reference = runner.generate_outputs([LONG_PROMPT] * len(params), params)
    # 8 pages of 16 tokens: one 78-token prompt and its output fit, six at once do not.
    with ModelRunner(qwen3_dir, page_size=16, max_total_tokens=128) as small:
        outputs = small.generate_outputs([LONG_PROMPT] * len(params), params)
        assert small.get_stats()["num_preemptions"] > 0
        assert not structured_plugin(small)._states
    assert all(schema_ok(o.text) and o.finish_reason == "stop" for o in outputs)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in reference]


def test_cli_json_schema(
    qwen3_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    argv = ["generate", "--model", str(qwen3_dir), "hi", "--json-schema", str(schema_file)]
    argv += ["--max-tokens", "60", "--temperature", "1", "--sampling-seed", "1"]
    assert main([*argv, "--max-total-tokens", "256"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("hi") and schema_ok(first_line[len("hi") :])
