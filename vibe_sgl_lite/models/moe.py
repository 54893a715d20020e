"""``SparseMoeBlock``: a router and a set of SwiGLU experts, of which each token uses ``top_k``.

    x [T, hidden]
      -> router: gate linear [T, E] -> softmax (float32) -> top-k -> (renormalise)
             topk_ids [T, k], topk_weights [T, k]
      -> forward_local: for each local expert e, the rows routed to it,
             y = down_e(silu(gate_e(x)) * up_e(x)) * weight          one matmul pair per expert
         summed back into their tokens                               [T, hidden]

The experts' weights are *stacked*, one parameter for all of them, so the forward is one gather,
one sort and two matmuls per active expert, with no loop over tokens:

    w13: [num_local_experts, 2 * moe_intermediate, hidden]   gate rows, then up rows
    w2:  [num_local_experts, hidden, moe_intermediate]

Expert parallelism needs only ``expert_start``/``num_local_experts``: a rank holds experts
``expert_start .. expert_start + num_local_experts - 1``, loads only their tensors, and
``forward`` returns just their contribution; summing the partial outputs of all ranks (what
``distributed.tensor_parallel.ExpertParallelMoeBlock`` adds) gives the full result. The router
is small and replicated, so every rank routes every token.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

_PER_EXPERT = re.compile(r"experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


class SparseMoeBlock(nn.Module):
    """Qwen3-MoE's sparse feed-forward: ``forward(x: [T, hidden]) -> [T, hidden]``."""

    def __init__(
        self,
        hidden_size: int,
        moe_intermediate_size: int,
        num_experts: int,
        top_k: int,
        norm_topk_prob: bool,
        *,
        expert_start: int = 0,
        num_local_experts: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok must be in 1..{num_experts}, got {top_k}")
        local = num_experts - expert_start if num_local_experts is None else num_local_experts
        if expert_start < 0 or local < 0 or expert_start + local > num_experts:
            raise ValueError(
                f"local experts {expert_start}..{expert_start + local - 1} "
                f"are not within 0..{num_experts - 1}"
            )
        self.hidden_size, self.intermediate_size = hidden_size, moe_intermediate_size
        self.num_experts, self.top_k, self.norm_topk_prob = num_experts, top_k, norm_topk_prob
        self.expert_start, self.num_local_experts = expert_start, local
        # The router sees every expert, whichever of them this block holds.
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.w13 = nn.Parameter(torch.empty(local, 2 * moe_intermediate_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(local, hidden_size, moe_intermediate_size))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: [T, hidden]`` -> ``topk_ids [T, k]`` (int64), ``topk_weights [T, k]`` (x.dtype).

        The softmax runs in float32 whatever the model dtype, as transformers does, so that
        near-ties between experts break the same way in bf16 as in fp32.
        """
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        topk_weights, topk_ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
        return topk_ids, topk_weights.to(x.dtype)

    def forward_local(
        self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """The weighted sum of the *local* experts' outputs for each token: ``[T, hidden]``.

        ``topk_ids``/``topk_weights: [T, k]`` use global expert ids; assignments to experts this
        block does not hold contribute nothing (another rank adds them).
        """
        flat_ids = topk_ids.reshape(-1) - self.expert_start  # [T * k], local expert ids
        is_local = (flat_ids >= 0) & (flat_ids < self.num_local_experts)
        slots = is_local.nonzero().squeeze(1)  # positions in [T * k] that this block computes
        # Group the assignments by expert: a stable sort keeps tokens in order inside a group.
        order = torch.argsort(flat_ids[slots], stable=True)
        slots = slots[order]
        expert_of = flat_ids[slots]
        tokens = slots // self.top_k  # [N], the token of each assignment
        # The group sizes drive Python slicing: one host sync per layer (on GPU), not per token.
        counts = torch.bincount(expert_of, minlength=self.num_local_experts).tolist()

        xs = x[tokens]  # [N, hidden], rows grouped by expert
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            gate, up = F.linear(xs[start : start + n], self.w13[e]).chunk(2, dim=-1)
            ys[start : start + n] = F.linear(F.silu(gate) * up, self.w2[e])
            start += n
        ys = ys * topk_weights.reshape(-1)[slots].unsqueeze(1).to(ys.dtype)
        return torch.zeros_like(x).index_add_(0, tokens, ys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route every token, then run this block's experts (all of them unless under EP)."""
        topk_ids, topk_weights = self.route(x)
        return self.forward_local(x, topk_ids, topk_weights)

    def checkpoint_view(
        self, name: str, tensor: torch.Tensor
    ) -> tuple[str, torch.Tensor, torch.Tensor] | None:
        """Where checkpoint tensor ``name`` (relative to this block) goes; see ``weights.py``.

        Two layouts are read: the Hub's one tensor per expert and projection
        (``experts.{e}.gate_proj.weight [I, hidden]`` ...), and transformers' fused in-memory
        layout (``experts.gate_up_proj [E, 2I, hidden]``, ``experts.down_proj [E, hidden, I]``),
        which is already ours. Experts outside the local slice are skipped: ``None`` for a
        per-expert tensor, a narrowed source for a fused one.
        """
        lo, n, inter = self.expert_start, self.num_local_experts, self.intermediate_size
        if name == "gate.weight":
            return "gate.weight", self.gate.weight.data, tensor
        if name in ("experts.gate_up_proj", "experts.down_proj"):
            pname = "w13" if name == "experts.gate_up_proj" else "w2"
            if tensor.dim() > 0 and tensor.shape[0] == self.num_experts:
                tensor = tensor.narrow(0, lo, n)
            return pname, getattr(self, pname).data, tensor
        match = _PER_EXPERT.fullmatch(name)
        if match is None:
            raise KeyError(name)
        e, proj = int(match.group(1)) - lo, match.group(2)
        if not 0 <= e < n:
            return None
        if proj == "down_proj":
            return "w2", self.w2.data[e], tensor
        return "w13", self.w13.data[e].narrow(0, 0 if proj == "gate_proj" else inter, inter), tensor
