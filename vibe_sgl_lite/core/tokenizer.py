"""Text in, token ids out, and back again, including the streaming parts.

Three pieces live here:

* ``Tokenizer`` wraps a Hugging Face tokenizer loaded from a local model folder (or the one a
  ``.gguf`` file carries) and gathers every id that should end generation.
* ``IncrementalDetokenizer`` turns a growing stream of ids into text deltas without ever emitting
  half of a multi-byte character.
* ``StopStringMatcher`` cuts the text at user-supplied stop strings, even when a stop string is
  split across several deltas, and never shows the user the start of a stop string that later
  completes.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any one of these marks a folder as holding a tokenizer; transformers alone is too lenient
(given only a ``config.json`` it happily builds an empty tokenizer)."""

REPLACEMENT_CHAR = "\ufffd"

TOO_LONG_WARNING = "sequence-length-is-longer-than-the-specified-maximum"
"""The key under which a transformers tokenizer records that it has warned about a text longer
than its ``model_max_length``; it warns only while the key is unset."""


def _read_eos_ids(json_path: Path) -> set[int]:
    """The ``eos_token_id`` of a config file, which models write as null, an int or a list."""
    if not json_path.is_file():
        return set()
    value = json.loads(json_path.read_text()).get("eos_token_id")
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


class Tokenizer:
    """A thin, engine-shaped view of a Hugging Face tokenizer.

    ``encode`` keeps the tokenizer's default ``add_special_tokens=True``: whatever its own
    post-processor adds (nothing for Qwen, a BOS for Llama) is part of what the model was trained
    to see. Chat prompts already carry those tokens in the template's text, so callers encoding a
    templated prompt pass ``add_special_tokens=False``.

    Transformers' warning that a text is longer than the tokenizer's ``model_max_length`` is
    turned off: the engine checks every prompt against its own ``max_model_len`` and refuses a
    long one with an error naming both lengths, while ``model_max_length`` is a separate, often
    stale figure (1024 for the bundled model, whatever ``max_model_len`` says), so the warning
    only misled.
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase, extra_eos_ids: set[int]) -> None:
        self.hf = hf_tokenizer
        hf_tokenizer.deprecation_warnings[TOO_LONG_WARNING] = True  # "already warned"
        self._eos_ids = set(extra_eos_ids)
        if hf_tokenizer.eos_token_id is not None:
            self._eos_ids.add(int(hf_tokenizer.eos_token_id))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load from a local folder or a llama.cpp ``.gguf`` file; never touches the network."""
        from vibe_sgl_lite.models.gguf import is_gguf_file

        if is_gguf_file(path):
            return cls._from_gguf(Path(path))
        folder = Path(path)
        if not folder.is_dir() or not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ValueError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {folder}")
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"could not load a tokenizer from {folder}: {exc}") from exc
        extra = _read_eos_ids(folder / "generation_config.json") | _read_eos_ids(
            folder / "config.json"
        )
        return cls(hf_tokenizer, extra)

    _gguf_tokenizers: dict[tuple[str, int, int], PreTrainedTokenizerBase] = {}
    """The last GGUF tokenizer rebuilt, keyed by ``(path, mtime_ns, size)``; see ``_from_gguf``."""

    @classmethod
    def _from_gguf(cls, file: Path) -> Tokenizer:
        """The tokenizer a GGUF file carries (vocabulary, merges, chat template), rebuilt by
        transformers; the end ids are every eos/eot/eom id the file's metadata names.

        The rebuild parses the whole file again and converts its vocabulary (about 9 s for
        SmolLM2's 49k tokens), so the last file's tokenizer is kept and a second runner on it
        gets a deep copy (0.3 s): a copy, because a tokenizer is mutable (added tokens, warning
        flags). ``mtime_ns`` and size are part of the key, so a rewritten file is read again."""
        from vibe_sgl_lite.models.gguf import eos_token_ids

        eos_ids = eos_token_ids(file)  # first: without the gguf package, our one-line error
        stat = file.stat()
        key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in cls._gguf_tokenizers:
            try:
                hf_tokenizer = AutoTokenizer.from_pretrained(
                    str(file.parent), gguf_file=file.name, local_files_only=True
                )
            except (OSError, ValueError, ImportError) as exc:
                raise ValueError(f"could not load a tokenizer from {file}: {exc}") from exc
            cls._gguf_tokenizers.clear()  # one file's at a time: a vocabulary is megabytes
            cls._gguf_tokenizers[key] = hf_tokenizer
        return cls(copy.deepcopy(cls._gguf_tokenizers[key]), eos_ids)

    @property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends generation: chat models often stop on several (e.g. ``<|im_end|>``
        in ``generation_config.json`` besides the tokenizer's own ``<|endoftext|>``)."""
        return set(self._eos_ids)

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer knows, added special tokens included. The model's embedding table
        may be larger (padded for alignment); those extra rows have no text."""
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def prompt_ids(
        self, prompt: str | Sequence[int], vocab_size: int, max_model_len: int
    ) -> list[int]:
        """A prompt (text, or token ids) as ids the model can run, else ``ValueError`` naming
        what is wrong: empty, an id outside ``[0, vocab_size)``, or no room under
        ``max_model_len`` for one generated token."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            ids = self.encode(prompt)
        elif isinstance(prompt, Sequence) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"prompt token ids must be in [0, {vocab_size}), got {bad[0]}")
        else:
            raise ValueError("prompt must be a string or a list of token ids (ints)")
        if not ids:
            raise ValueError("prompt must not be empty")
        if len(ids) >= max_model_len:
            raise ValueError(
                f"prompt has {len(ids)} tokens; it must be shorter than max_model_len "
                f"({max_model_len}) to leave room for at least one generated token"
            )
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Decode without the legacy "clean-up" of spaces (``" ." -> "."``): it rewrites text
        across token boundaries, so streamed deltas would stop adding up to the full decode."""
        return str(
            self.hf.decode(
                list(ids),
                skip_special_tokens=skip_special_tokens,
                clean_up_tokenization_spaces=False,
            )
        )

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """Render messages with the model's own template, as text (encode it separately).

        ``template_kwargs`` become the template's variables (``enable_thinking=False``...)."""
        if not getattr(self.hf, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; send a plain prompt instead")
        rendered: Any = self.hf.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
        return str(rendered)


class IncrementalDetokenizer:
    """Streams text for a growing list of ids, one token at a time.

    A byte-level token can carry part of a UTF-8 character, so decoding tokens one by one would
    emit U+FFFD garbage. Instead (the technique of vLLM and Hugging Face's ``TextStreamer``) two
    offsets are kept: ``_read`` marks the end of the ids already turned into emitted text, and
    ``_prefix`` marks a few ids before it. Each step decodes ``ids[_prefix:]`` and emits whatever
    extends past the text of ``ids[_prefix:_read]``, but only once it no longer ends in U+FFFD,
    i.e. once the last character is complete. Starting the window a little early gives
    SentencePiece-style decoders the context they need to keep a word's leading space, and
    keeping it short keeps each step O(1) rather than re-decoding the whole sequence.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far (by ``add`` and ``flush``)."""
        return "".join(self._pieces)

    def add(self, token_id: int) -> str:
        """Take one more id and return the newly completed text, possibly ``""``."""
        self._ids.append(token_id)
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._emit(new_text[len(prefix_text) :])

    def flush(self) -> str:
        """Return whatever is still held back, even an incomplete character (as U+FFFD)."""
        prefix_text, new_text = self._decode_window()
        return self._emit(new_text[len(prefix_text) :])

    def _decode_window(self) -> tuple[str, str]:
        window = self._ids[self._prefix :]
        held_from = self._read - self._prefix
        decode = self._tokenizer.decode
        return decode(window[:held_from], self._skip_special), decode(window, self._skip_special)

    def _emit(self, delta: str) -> str:
        self._prefix, self._read = self._read, len(self._ids)
        if delta:
            self._pieces.append(delta)
        return delta


class StopStringMatcher:
    """Cuts streamed text before the first stop string to *complete* (vLLM's behaviour).

    "First to complete" (smallest end, then earliest start) is what a stream can decide as text
    arrives: with stops ``["a", "baa"]`` the text ``"ba..."`` stops at ``"b"`` as soon as the
    ``"a"`` arrives, whether or not ``"baa"`` would have followed.

    Only a short tail of text is ever pending: the longest suffix that could still grow into a
    stop string. Everything before it is safe to show, since no stop string can start there, so
    each ``feed`` costs O(len(delta) + longest stop) no matter how long the text grows.
    """

    def __init__(self, stops: list[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = list(stops)
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add ``delta``; return the text now safe to emit and whether a stop string matched.

        Once stopped, the text after the stop string is dropped and later feeds return
        ``("", True)``.
        """
        if self.stopped:
            return "", True
        text = self._pending + delta
        hits = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return text[: min(hits)[1]], True
        held = self._held_back_length(text)
        self._pending = text[len(text) - held :]
        return text[: len(text) - held], False

    def flush(self) -> str:
        """At the end of the stream the pending tail never became a stop string: release it."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_back_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = max((len(s) for s in self._stops), default=0)
        for length in range(min(len(text), longest - 1), 0, -1):
            suffix = text[-length:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return length
        return 0
