"""Langevin samplers under DDP (gloo, 2 CPU processes): rank-invariant noise.

Each rank seeds the global RNG differently (``torch.manual_seed(1000 + rank)``), builds its model
(DDP broadcasts rank 0's weights at construction), trains on its own data shard for 100 noisy
steps, and the final parameters must be bit-identical across ranks: gradients are all-reduced
and every noise draw comes from :class:`~torchvalley.noise.CounterNoise` keyed by (seed, step,
parameter index), never from the global RNG. The noise must matter (the result is far from the
temperature-0 run), and a negative control, a hand-written SGLD drawing its noise with
``torch.randn_like``, must make the ranks diverge, so the check can detect the failure.

The workers are this file run as a script (``python test_langevin_ddp.py --ddp-worker ...``): a
spawned interpreter cannot import a test module that pytest loaded in importlib mode.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from torchvalley.dynamics import partition_by_layer
from torchvalley.testing.distributed import launch_workers

WORLD_SIZE = 2
STEPS = 100
BATCH = 32
LR = 0.05
TEMPERATURE = 1e-2  # noise std per step ~ (h/2) sqrt(tau) ~ 2.5e-3, 100 steps: clearly visible
# Registry samplers checked (adlala with two partitions; see build()).
SAMPLERS = ("baoab", "sgld", "adlala")


def make_model() -> nn.Module:
    # Not seeded on purpose: each rank's global RNG differs, DDP's broadcast aligns the weights.
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def make_shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(WORLD_SIZE * BATCH, 4, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return x.chunk(WORLD_SIZE)[rank], y.chunk(WORLD_SIZE)[rank]


def build(name: str, model: nn.Module, temperature: float) -> torch.optim.Optimizer:
    if name == "sgld":
        return torchvalley.create_optimizer(
            name, model.parameters(), lr=LR, temperature=temperature, seed=3
        )
    if name == "adlala":
        # Two partitions: adaptive Langevin on the first layer, BAOAB Langevin on the second.
        groups = partition_by_layer(
            model,
            "adaptive",
            "langevin",
            first_options={"noise_scale": 0.1 if temperature else 0.0},
        )
        return torchvalley.create_optimizer(
            name, groups, lr=LR, friction=1.0, temperature=temperature, seed=3
        )
    return torchvalley.create_optimizer(
        name, model.parameters(), lr=LR, friction=1.0, temperature=temperature, seed=3
    )


class GlobalRngSGLD(torch.optim.Optimizer):
    """Negative control: SGLD whose noise comes from the global RNG (differs across ranks)."""

    def __init__(self, params, lr: float, temperature: float) -> None:
        super().__init__(params, {"lr": lr, "temperature": temperature})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            scale = (2.0 * group["lr"] * group["temperature"]) ** 0.5
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"]).add_(torch.randn_like(p), alpha=scale)


def _ddp_worker(rank: int, world_size: int, out: Path) -> None:
    """Runs in each rank's own interpreter; writes its results to ``out/rank{rank}.pt``."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    torch.manual_seed(1000 + rank)  # a different global RNG on every rank
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    x, y = make_shard(rank)
    initial = None

    def train(make_opt) -> list[torch.Tensor]:
        nonlocal initial
        ddp = DDP(make_model())
        if initial is None:
            initial = [p.detach().clone() for p in ddp.parameters()]
        else:  # every run starts from the same weights (rank 0's first model)
            with torch.no_grad():
                for p, q in zip(ddp.parameters(), initial, strict=True):
                    p.copy_(q)
        opt = make_opt(ddp.module)
        for _ in range(STEPS):
            opt.zero_grad()
            F.mse_loss(ddp(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in ddp.parameters()]

    results = {}
    for name in SAMPLERS:
        results[name] = train(lambda m, name=name: build(name, m, TEMPERATURE))
        results[f"{name}_cold"] = train(lambda m, name=name: build(name, m, 0.0))
    results["control"] = train(lambda m: GlobalRngSGLD(m.parameters(), LR, TEMPERATURE))
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _launch_ddp(out: Path) -> list[dict]:
    return launch_workers(__file__, out, world_size=WORLD_SIZE)


def _max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b, strict=True))


def test_ddp_ranks_seeded_differently_stay_bit_identical(tmp_path):
    # One launch (2 ranks) for every sampler: process start-up dominates the run time.
    first, second = _launch_ddp(tmp_path)
    for name in SAMPLERS:
        for a, b in zip(first[name], second[name], strict=True):
            assert torch.equal(a, b), f"{name}: replicas differ after {STEPS} noisy steps"
        # The noise mattered: far from the noiseless run (rounding-level differences are
        # ~1e-7; the accumulated noise moves weights by ~1e-2).
        assert _max_difference(first[name], first[f"{name}_cold"]) > 1e-3, name
    # Negative control: the same update with global-RNG noise diverges across ranks, so the
    # equality above is not vacuous.
    assert _max_difference(first["control"], second["control"]) > 1e-3


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    _ddp_worker(arguments.rank, arguments.world_size, arguments.out)
