"""Each parallel layer against its dense counterpart, on two Gloo ranks."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vibe_sgl_lite.distributed.parallel_state import ParallelGroup, find_free_port
from vibe_sgl_lite.distributed.tensor_parallel import (
    ExpertParallelMoeBlock,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
    kv_heads_of_rank,
)
from vibe_sgl_lite.models.moe import SparseMoeBlock

pytestmark = pytest.mark.distributed


def _check_layers(rank: int, port: int, failures: "mp.Queue[str]") -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        group = ParallelGroup(rank, 2, dist.group.WORLD)
        torch.manual_seed(0)  # every rank builds the same dense layers and inputs
        x = torch.randn(5, 8)

        dense = nn.Linear(8, 6, bias=True)
        row = RowParallelLinear(rank * 4, 4, 6, True, group)
        assert row.checkpoint_slices == {"weight": [(1, rank * 4, 4)]}
        row.weight.data.copy_(dense.weight[:, rank * 4 : (rank + 1) * 4])
        row.bias.data.copy_(dense.bias)  # type: ignore[union-attr]
        torch.testing.assert_close(row(x[:, rank * 4 : (rank + 1) * 4]), dense(x))

        embed = nn.Embedding(10, 8)
        vocab = VocabParallelEmbedding(rank * 5, 5, 8, group)
        vocab.weight.data.copy_(embed.weight[rank * 5 : (rank + 1) * 5])
        ids = torch.tensor([0, 4, 5, 9, 3])
        torch.testing.assert_close(vocab(ids), embed(ids))

        head = nn.Linear(8, 10, bias=False)
        lm = ParallelLMHead(8, rank * 5, 5, group)
        lm.weight.data.copy_(head.weight[rank * 5 : (rank + 1) * 5])
        torch.testing.assert_close(lm(x), head(x))

        moe = SparseMoeBlock(8, 4, num_experts=4, top_k=2, norm_topk_prob=True)
        for p in moe.parameters():
            nn.init.normal_(p, std=0.5)
        part = ExpertParallelMoeBlock(moe, group)
        assert (part.expert_start, part.num_local_experts) == (rank * 2, 2)
        part.gate.weight.data.copy_(moe.gate.weight)
        part.w13.data.copy_(moe.w13[rank * 2 : rank * 2 + 2])
        part.w2.data.copy_(moe.w2[rank * 2 : rank * 2 + 2])
        torch.testing.assert_close(part(x), moe(x))
    except Exception as exc:  # reported to the parent, which fails the test
        failures.put(f"rank {rank}: {exc!r}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_parallel_layers_match_dense() -> None:
    ctx = mp.get_context("spawn")
    failures: mp.Queue[str] = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=_check_layers, args=(r, port, failures)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not errors, errors


@pytest.mark.parametrize(
    "num_kv, tp, expected",
    [
        (4, 2, [(0, 2), (2, 2)]),
        (2, 2, [(0, 1), (1, 1)]),
        (1, 2, [(0, 1), (0, 1)]),
        (2, 4, [(0, 1), (0, 1), (1, 1), (1, 1)]),
    ],
)
def test_kv_heads_split_or_replicated(
    num_kv: int, tp: int, expected: list[tuple[int, int]]
) -> None:
    assert [kv_heads_of_rank(num_kv, ParallelGroup(r, tp)) for r in range(tp)] == expected


def test_kv_heads_indivisible_is_an_error() -> None:
    with pytest.raises(ValueError, match="tp_size 3"):
        kv_heads_of_rank(2, ParallelGroup(0, 3))
