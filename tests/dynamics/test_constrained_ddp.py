"""CoLA under DDP (gloo, 2 CPU processes): identical noise on every rank.

As ``test_langevin_ddp.py``: each rank seeds its global RNG differently, DDP broadcasts rank 0's
weights, each rank trains on its own shard for 30 noisy steps of ``cola_ud`` (o-CoLA) and
``cola_od`` (c-CoLA), and the final parameters (and the norm constraint's auxiliary coordinates)
must be bit-identical across ranks and far from the T = 0 run (the noise mattered). The
negative control (global-RNG SGLD) in ``test_langevin_ddp.py`` shows such a check can fail.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from torchvalley.testing.distributed import launch_workers

WORLD_SIZE = 2
STEPS = 30
BATCH = 32
TEMPERATURE = 1e-2
RUNS = (("cola_ud", "orthogonal"), ("cola_od", "norm"))


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))


def make_shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(WORLD_SIZE * BATCH, 4, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return x.chunk(WORLD_SIZE)[rank], y.chunk(WORLD_SIZE)[rank]


def _ddp_worker(rank: int, world_size: int, out: Path) -> None:
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    torch.manual_seed(1000 + rank)  # a different global RNG on every rank
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    x, y = make_shard(rank)
    results = {}
    initial = None
    for name, constraint in RUNS:
        for temperature in (TEMPERATURE, 0.0):
            ddp = DDP(make_model())
            if initial is None:
                initial = [p.detach().clone() for p in ddp.parameters()]
            with torch.no_grad():
                for p, q in zip(ddp.parameters(), initial, strict=True):
                    p.copy_(q)
            opt = torchvalley.create_optimizer(
                name,
                ddp.module.parameters(),
                model=ddp.module,
                constraint=constraint,
                radius=1.0,
                lr=0.05,
                temperature=temperature,
                seed=3,
            )
            for _ in range(STEPS):
                opt.zero_grad()
                F.mse_loss(ddp(x), y).backward()
                opt.step()
            tensors = [p.detach().clone() for p in ddp.parameters()]
            tensors += [s["xi"].clone() for s in opt.state.values() if "xi" in s]
            results[f"{name}_{temperature}"] = tensors
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_draw_identical_cola_noise(tmp_path):
    # a generous timeout: two interpreters importing torch on a loaded machine
    first, second = launch_workers(__file__, tmp_path, world_size=WORLD_SIZE, timeout=400.0)
    for name, _ in RUNS:
        noisy, cold = first[f"{name}_{TEMPERATURE}"], first[f"{name}_0.0"]
        for a, b in zip(noisy, second[f"{name}_{TEMPERATURE}"], strict=True):
            assert torch.equal(a, b), f"{name}: replicas differ after {STEPS} noisy steps"
        difference = max((u - v).abs().max().item() for u, v in zip(noisy, cold, strict=True))
        assert difference > 1e-3, name
    assert len(first["cola_od_0.01"]) > len(first["cola_ud_0.01"])  # the xi coordinates


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    _ddp_worker(arguments.rank, arguments.world_size, arguments.out)
