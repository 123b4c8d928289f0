"""Multirate under DDP: two gloo processes, partial backward passes, no unused-parameter errors.

Each rank trains the same network (wrapped in ``DistributedDataParallel`` with the default
``find_unused_parameters=False``) on its half of a batch, through ``step(closure)`` and through
the ``pass_context`` loop. Oracle: both ranks end with identical parameters, equal (up to
float rounding) to one process training on the whole batch, since DDP's gradient is the mean
of the two halves' mean-loss gradients. A rank that hit DDP's "Expected to have finished
reduction" error (the symptom of toggled ``requires_grad`` or an unsynced partial pass) fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.optim import Multirate
from torchvalley.optim.multirate_partitions import head_partition

STEPS = 8  # with k = 3: full passes at steps 0, 3, 6; the rest partial
K = 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 2))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)


def _train(model: nn.Module, forward: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Multirate:
    opt = Multirate(head_partition(model), k=K, lr=0.1, momentum=0.9, model=forward)
    for step in range(STEPS):
        if step % 2 == 0:  # the closure API

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = F.mse_loss(forward(x), y)
                opt.backward(loss)
                return loss

            opt.step(closure)
        else:  # the loop API
            opt.zero_grad()
            with opt.pass_context():
                loss = F.mse_loss(forward(x), y)
            opt.backward(loss)
            opt.step()
    return opt


def _worker(rank: int, world: int, out: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _net()
        ddp = DistributedDataParallel(model)
        x, y = _batch()
        half = len(x) // world
        rows = slice(rank * half, (rank + 1) * half)
        opt = _train(model, ddp, x[rows], y[rows])
        torch.save(
            {
                "params": [p.detach().clone() for p in model.parameters()],
                "passes": opt.backward_passes,
            },
            out / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_matches_one_process(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        import pytest

        pytest.skip("torch.distributed is not available in this build")
    from torchvalley.testing.distributed import launch_workers

    results = launch_workers(Path(__file__), tmp_path, world_size=2)
    for a, b in zip(results[0]["params"], results[1]["params"], strict=True):
        assert torch.equal(a, b)
    assert results[0]["passes"] == {"full": 3, "partial": 5}
    model = _net()
    _train(model, model, *_batch())
    for got, expected in zip(results[0]["params"], model.parameters(), strict=True):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true")
    parser.add_argument("--world-size", type=int)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.ddp_worker:
        sys.exit("run by pytest; as a script only as a DDP worker")
    _worker(args.rank, args.world_size, args.out)
