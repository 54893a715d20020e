"""Bad input gets a ValueError that names the field; one bad request never harms the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from vibe_sgl_lite import BatchRequestError, ModelRunner, SamplingParams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runner(qwen3_dir: Path) -> ModelRunner:
    return ModelRunner(qwen3_dir, max_total_tokens=512, max_model_len=64)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-5), "top_k"),
        (dict(min_p=2), "min_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(frequency_penalty=3), "frequency_penalty"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(logprobs=100), "logprobs"),
        (dict(seed=-1), "seed"),
        (dict(stop=[""]), "stop"),
        (dict(temprature=0.5), "temprature"),
    ],
)
def test_invalid_sampling_values(runner: ModelRunner, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        runner.generate("hello", **kwargs)


def test_empty_prompt(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match="prompt must not be empty"):
        runner.generate("")
    with pytest.raises(ValueError, match="prompt must not be empty"):
        runner.generate([])


def test_prompt_longer_than_max_model_len(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        runner.generate(list(range(5, 5 + 64)))


def test_out_of_vocab_token_id(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
        runner.generate([1, 10**6])


def test_prompt_larger_than_the_kv_pool(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=32, page_size=4) as small:
        with pytest.raises(ValueError, match="max_model_len \\(32\\)"):
            small.generate(list(range(5, 45)))


def test_bad_request_in_a_batch_fails_alone(runner: ModelRunner) -> None:
    prompts = ["Once upon a time", "", "ROMEO:", list(range(5, 200))]
    with pytest.raises(BatchRequestError) as info:
        runner.generate_batch(prompts, temperature=0, max_tokens=4, use_tqdm=False)
    outputs = info.value.outputs
    assert [o.finish_reason for o in outputs] == ["length", "error", "length", "error"]
    assert "empty" in (outputs[1].error or "") and "max_model_len" in (outputs[3].error or "")
    assert outputs[0].text == runner.generate("Once upon a time", temperature=0, max_tokens=4)
    stats = runner.get_stats()
    assert stats["kv_pages_free"] == stats["kv_pages_total"]


def test_per_prompt_params_with_one_invalid(runner: ModelRunner) -> None:
    good = SamplingParams(temperature=0, max_tokens=3)
    outs = runner.generate_outputs(["a", "b"], [good, good])
    assert [o.finish_reason for o in outs] == ["length", "length"]
    with pytest.raises(ValueError, match="one per prompt"):
        runner.generate_outputs(["a", "b"], [good])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(page_size=0), "page_size"),
        (dict(max_running_requests=0), "max_running_requests"),
        (dict(schedule_policy="sjf"), "schedule_policy"),
        (dict(kv_cache_dtype="int4"), "kv_cache_dtype"),
        (dict(chunked_prefill_size=-2), "chunked_prefill_size"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_invalid_engine_settings(qwen3_dir: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelRunner(qwen3_dir, **kwargs)
