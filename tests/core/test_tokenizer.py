"""Tokenizer, streaming detokenisation and stop strings, checked against transformers' decode and
against a plain ``str.find`` reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from vibe_sgl_lite.core.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer

pytestmark = pytest.mark.unit

FIXTURE_VOCAB = 384
MULTI_BYTE_TEXTS = ["Café", "日本語", "🙂🚀", "Emoji: 🙂🚀🔥 and 日本語, déjà vu ∑ ≠ ∞."]


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(tokenizer_dir)


def _copy_tokenizer(tokenizer_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(tokenizer_dir, dest))


def _stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    """Feed ``ids`` one at a time; return every ``add`` delta followed by the ``flush``."""
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    assert detok.text == "".join(deltas)
    return deltas


# --- Tokenizer --------------------------------------------------------------------------------


def test_encode_decode_matches_transformers(tok: Tokenizer, tokenizer_dir: Path) -> None:
    reference = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    text = "The quick brown fox: 日本語 🙂"
    ids = tok.encode(text)
    assert ids == reference.encode(text)
    assert tok.decode(ids) == text


def test_encode_adds_no_special_tokens_for_qwen_like_tokenizer(tok: Tokenizer) -> None:
    ids = tok.encode("hello world")
    assert tok.decode(ids, skip_special_tokens=False) == "hello world"
    assert ids == tok.encode("hello world", add_special_tokens=False)


def test_decode_skips_special_tokens_on_request(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>hi<|im_end|>")
    assert ids[0] == tok.hf.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"


def test_vocab_size_counts_added_special_tokens(tok: Tokenizer) -> None:
    assert tok.vocab_size == FIXTURE_VOCAB
    assert tok.encode("<|im_end|>") == [2]
    assert all(tok.decode([i], skip_special_tokens=False) for i in range(tok.vocab_size))


def test_eos_from_tokenizer_only(tok: Tokenizer) -> None:
    assert tok.eos_token_ids == {tok.hf.convert_tokens_to_ids("<|endoftext|>")}


def test_eos_merges_generation_config_list_and_config_int(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    folder = _copy_tokenizer(tokenizer_dir, tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 11}))
    assert Tokenizer.from_pretrained(folder).eos_token_ids == {0, 2, 7, 11}


def test_eos_tolerates_null_in_config(tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = _copy_tokenizer(tokenizer_dir, tmp_path / "model")
    (folder / "config.json").write_text(json.dumps({"eos_token_id": None}))
    assert Tokenizer.from_pretrained(folder).eos_token_ids == {0}


def test_chat_template_renders_with_and_without_generation_prompt(tok: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    history = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    assert tok.apply_chat_template(messages) == history + "<|im_start|>assistant\n"
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == history


def test_missing_chat_template_is_a_clear_error(tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = _copy_tokenizer(tokenizer_dir, tmp_path / "model")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="chat template"):
        Tokenizer.from_pretrained(folder).apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("files", [{}, {"config.json": "{}"}])
def test_folder_without_tokenizer_files_names_the_folder(
    tmp_path: Path, files: dict[str, str]
) -> None:
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content)
    with pytest.raises(ValueError, match="not_a_model"):
        Tokenizer.from_pretrained(folder)


def test_missing_folder_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")


# --- IncrementalDetokenizer -------------------------------------------------------------------


@pytest.mark.parametrize("text", MULTI_BYTE_TEXTS)
def test_multi_byte_characters_arrive_whole(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    deltas = _stream(tok, ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    emitted = ""
    for delta in deltas:
        emitted += delta
        assert text.startswith(emitted)


def test_fixture_splits_characters_across_tokens(tok: Tokenizer) -> None:
    """Guards the test above: the fixture must really split a character over byte tokens."""
    ids = tok.encode("🙂🚀")
    deltas = _stream(tok, ids)
    assert len(ids) > 2
    assert deltas[:-1].count("") == len(ids) - 2
    assert [d for d in deltas if d] == ["🙂", "🚀"]


def test_flush_releases_an_incomplete_character(tok: Tokenizer) -> None:
    first_byte = tok.encode("🙂")[0]
    detok = IncrementalDetokenizer(tok)
    assert detok.add(tok.encode("a")[0]) == "a"
    assert detok.add(first_byte) == ""
    assert detok.flush() == "\ufffd"
    assert detok.text == tok.decode([tok.encode("a")[0], first_byte]) == "a\ufffd"


def test_special_tokens_are_kept_when_not_skipped(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>日本<|im_end|>")
    assert "".join(_stream(tok, ids, skip_special_tokens=False)) == "<|im_start|>日本<|im_end|>"
    assert "".join(_stream(tok, ids)) == "日本"


def test_each_step_decodes_a_short_window(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    longest: list[int] = [0]
    real_decode = tok.decode

    def spy(ids: list[int], skip_special_tokens: bool = True) -> str:
        longest[0] = max(longest[0], len(ids))
        return real_decode(ids, skip_special_tokens)

    monkeypatch.setattr(tok, "decode", spy)
    text = "Once upon a time there was a tiny language model. 日本語 🙂🚀 " * 5
    ids = tok.encode(text)
    assert "".join(_stream(tok, ids)) == text
    assert len(ids) > 100
    assert longest[0] <= 8


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=FIXTURE_VOCAB - 1), max_size=40),
    skip=st.booleans(),
)
def test_deltas_add_up_to_full_decode(tok: Tokenizer, ids: list[int], skip: bool) -> None:
    full = tok.decode(ids, skip_special_tokens=skip)
    deltas = _stream(tok, ids, skip_special_tokens=skip)
    assert "".join(deltas) == full
    if "\ufffd" not in full:
        assert all("\ufffd" not in d for d in deltas)


# --- StopStringMatcher ------------------------------------------------------------------------


def _reference_cut(text: str, stops: list[str]) -> str:
    """Cut before the stop string that *completes* first (then the one that starts first):
    what a stream sees as it grows, so the result cannot depend on how text was split."""
    hits = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    return text[: min(hits)[1]] if hits else text


def _run_matcher(stops: list[str], deltas: list[str]) -> tuple[list[str], bool]:
    matcher = StopStringMatcher(stops)
    pieces: list[str] = []
    stopped = False
    for delta in deltas:
        piece, stopped = matcher.feed(delta)
        pieces.append(piece)
        if stopped:
            break
    pieces.append(matcher.flush())
    return pieces, stopped


def test_stop_split_across_deltas_is_held_back_then_cut() -> None:
    matcher = StopStringMatcher(["</s>"])
    assert matcher.feed("Hello <") == ("Hello ", False)
    assert matcher.feed("/s") == ("", False)
    assert matcher.feed("> more") == ("", True)
    assert matcher.feed("ignored") == ("", True)
    assert matcher.flush() == ""


def test_false_alarm_is_released() -> None:
    matcher = StopStringMatcher(["</s>"])
    assert matcher.feed("a<") == ("a", False)
    assert matcher.feed("/b") == ("</b", False)
    assert matcher.feed("<") == ("", False)
    assert matcher.flush() == "<"


def test_first_completed_stop_wins_and_overlapping_prefixes() -> None:
    # "bc" completes before "abcd" would: the text is cut before "bc".
    assert _run_matcher(["bc", "abcd"], ["xab", "cd"]) == (["x", "a", ""], True)
    assert _run_matcher(["bc", "abcd"], ["xabcd"]) == (["xa", ""], True)
    assert _run_matcher(["bc", "abcd"], ["xab", "ce"]) == (["x", "a", ""], True)
    assert _run_matcher(["aab"], ["a", "a", "a", "b", "z"]) == (["", "", "a", "", ""], True)


def test_no_stops_passes_text_through() -> None:
    assert _run_matcher([], ["ab", "c"]) == (["ab", "c", ""], False)


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc", max_size=30),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
)
def test_stop_matching_is_independent_of_delta_splits(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    pieces, stopped = _run_matcher(stops, deltas)
    expected = _reference_cut(text, stops)
    assert "".join(pieces) == expected
    assert stopped == any(s in text for s in stops)
