"""DiMS data parallel (gloo, 2 CPU processes): every rank integrates the full-batch system.

Each rank holds half of a regression data set, seeds its global RNG differently, and runs 25
DiMS steps with ``process_group="world"`` (the closure's loss and gradients averaged over the
ranks after every call), once with a plain model and once with a DDP-wrapped one. Oracles:

* the ranks end bit-identical (same Newton iterations, same initial velocity from the seeded
  generator, no other random draw);
* they equal a single-process run on the full batch (computed here, in the test process) to
  1e-9: for equal shards of a mean loss the average of the shard losses/gradients is the
  full-batch loss/gradient, up to float64 summation order (~1e-16 relative per step; 25 steps
  of a smooth map with Newton to 16 ulp keep that far below 1e-9);
* they are far (> 1e-4) from a single-process run on either shard alone, so a worker that did
  not average (or averaged only the gradients, not the heights) would fail the previous check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.dynamics.dims import DiMS
from torchvalley.testing.distributed import launch_workers

WORLD_SIZE = 2
STEPS = 25
BATCH = 32
SETTINGS = {"lr": 0.02, "gravity": 1.0, "friction": 1.0, "energy": 0.05, "seed": 3}


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same start everywhere (the ranks' global RNGs differ afterwards)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(WORLD_SIZE * BATCH, 4, generator=generator, dtype=torch.float64)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return x, y


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict[str, object]:
    module = getattr(model, "module", model)
    opt = DiMS(module.parameters(), **SETTINGS, **kwargs)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    iterations = []
    for _ in range(STEPS):
        opt.step(closure)
        iterations.append(opt.system["newton_iterations"])
    return {
        "params": [p.detach().clone() for p in module.parameters()],
        "velocity": [opt.state[p]["velocity"].clone() for p in module.parameters()],
        "height": opt.system["height"],
        "iterations": iterations,
    }


def _ddp_worker(rank: int, world_size: int, out: Path) -> None:
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    x, y = (t.chunk(world_size)[rank] for t in make_data())
    results = {}
    for name in ("plain", "ddp"):
        model = make_model()
        torch.manual_seed(1000 + rank)  # a different global RNG on every rank
        if name == "ddp":
            model = DDP(model)
        results[name] = run(model, x, y, process_group="world")
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _close(a: dict, b: dict) -> float:
    """The largest difference between two runs' parameters and velocities."""
    pairs = zip(a["params"] + a["velocity"], b["params"] + b["velocity"], strict=True)
    return max((u - v).abs().max().item() for u, v in pairs)


def test_ddp_ranks_integrate_the_full_batch_system(tmp_path):
    first, second = launch_workers(__file__, tmp_path, world_size=WORLD_SIZE, timeout=400.0)
    x, y = make_data()
    full = run(make_model(), x, y)
    shards = [run(make_model(), xs, ys) for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True)]
    for name in ("plain", "ddp"):
        a, b = first[name], second[name]
        for u, v in zip(a["params"] + a["velocity"], b["params"] + b["velocity"], strict=True):
            assert torch.equal(u, v), f"{name}: the ranks differ after {STEPS} steps"
        assert a["iterations"] == b["iterations"]
        assert _close(a, full) < 1e-9, name
        assert abs(a["height"] - full["height"]) < 1e-12
        for shard in shards:
            assert _close(a, shard) > 1e-4, name  # the averaging mattered
    assert _close(first["plain"], first["ddp"]) < 1e-12


def test_process_group_is_validated_and_needs_an_initialized_group():
    import pytest

    model = make_model()
    with pytest.raises(ValueError, match="process_group"):
        DiMS(model.parameters(), process_group="everyone")
    opt = DiMS(model.parameters(), process_group="world")
    x, y = make_data()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="not initialized"):
        opt.step(closure)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    _ddp_worker(arguments.rank, arguments.world_size, arguments.out)
