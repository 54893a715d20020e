"""What the two training scripts share: AdamW on random windows of one token stream.

``train_tiny.py`` (the bundled model) and ``train_eagle_head.py`` (its EAGLE draft head) train
different things with different losses, but on the same recipe:

    TrainingRecipe       seed, window length, batch, peak lr and schedule, weight decay, clip
    make_optimizer       AdamW, weight decay on matrices only
    lr_at                linear warmup, constant, then cosine down to ``min_lr_ratio``
    random_windows       a batch ``[batch_size, seq_len]`` of windows of the stream
    optimizer_step       lr, gradients, clipping and the update of one step
    fill_paragraph       prose of a model card wrapped at 100 columns

Like the scripts, this is a tool, not the engine (a sibling module, not a package).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class TrainingRecipe:
    """The optimisation settings of a run; each script extends it with what its model needs."""

    seed: int = 0
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0


def make_optimizer(model: torch.nn.Module, cfg: TrainingRecipe) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norm gains and biases only hurts."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def lr_at(step: int, cfg: TrainingRecipe, decay: tuple[int, int] | None) -> float:
    """Linear warmup to ``cfg.lr``, then constant; with ``decay = (begin, end)``, a cosine from
    ``begin`` down to ``min_lr_ratio`` x the peak at ``end``. ``None``: no decay decided yet."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if decay is None or step < decay[0]:
        return cfg.lr
    begin, end = decay
    progress = min(1.0, (step - begin) / max(1, end - begin))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def random_windows(
    stream: torch.Tensor, cfg: TrainingRecipe, generator: torch.Generator
) -> torch.Tensor:
    """``[batch_size, seq_len]`` token ids: windows of ``stream`` at uniform random starts."""
    n = cfg.seq_len
    starts = torch.randint(0, len(stream) - n, (cfg.batch_size,), generator=generator)
    return torch.stack([stream[s : s + n] for s in starts.tolist()])


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    grad_clip: float,
) -> None:
    """One update at learning rate ``lr``, the gradient norm of ``params`` clipped first."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def fill_paragraph(text: str) -> str:
    """``text`` as lines of at most 100 columns, words and hyphenated names kept whole."""
    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)
