"""FSDP2 (``torch.distributed.fsdp.fully_shard``): optimizers with elementwise state, sharded
over 2 gloo CPU processes, match the same optimizer in one process.

Each rank builds the same float64 model (seeded), shards every Linear and the root with
``fully_shard`` (parameters become ``DTensor`` shards along dim 0), trains on its half of each
batch (FSDP reduce-scatters the mean of the two halves' gradients, which is the full batch's
mean gradient), and saves the gathered parameters (``full_tensor()``). The oracle is the same
optimizer in this process on the full batch. Differences come only from summation order
(float64: ~1e-15); the tolerance 1e-9 is far below any real difference (one wrong step moves
weights by ~lr * |grad| ~ 1e-3).

Optimizers that cannot be sharded, and why: ``docs/distributed.md``. Their refusals (or
silent wrong answers) are recorded here too (``UNSHARDABLE``), so the page stays true.

The workers are this file run as a script (``python test_fsdp2.py --ddp-worker ...``).
"""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from torchvalley.testing.distributed import launch_workers

WORLD_SIZE = 2
STEPS = 6
BATCH = 16

#: name -> hyperparameters. Elementwise state: SAM (its ascent needs one global gradient norm,
#: which DTensor all-reduces), Langevin samplers (counter-based noise), Riemannian optimizers on
#: Euclidean tensors (torch's kernels), and the adaptive ones.
SHARDABLE = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adam": {"lr": 0.01},
    "adamw": {"lr": 0.01, "weight_decay": 0.1},
    "sam": {"base_optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "rho": 0.05},
    "asam": {"base_optimizer": "sgd", "lr": 0.05, "rho": 0.5},
    "sgld": {"lr": 0.01, "temperature": 1e-4, "seed": 3},
    "baoab": {"lr": 0.01, "friction": 1.0, "temperature": 1e-4, "seed": 3},
    "rsgd": {"lr": 0.05, "momentum": 0.9},
    "radam": {"lr": 0.01},
    "radagrad": {"lr": 0.05},
    "sgnht": {"lr": 0.01, "temperature": 1e-4, "seed": 3},
}

#: Recorded refusals: rsgd on a ManifoldParameter (a sphere per weight matrix). fully_shard
#: replaces the parameter by a plain DTensor parameter, so the manifold is gone and the step
#: would silently be Euclidean; and the sphere's projection needs the whole matrix's norm.
UNSHARDABLE = ("rsgd_sphere",)


def make_sphere_model() -> nn.Module:
    from torchvalley.manifolds import ManifoldParameter, Sphere

    model = make_model().double()
    weight = model[2].weight
    model[2].weight = ManifoldParameter(weight / weight.norm(), Sphere(), project=True)
    return model


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    data = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 6, generator=generator, dtype=torch.float64)
        data.append((x, torch.sin(x.sum(dim=1, keepdim=True))))
    return data


def train(name: str, model: nn.Module, rank: int | None) -> None:
    optimizer = torchvalley.create_optimizer(
        name, model.parameters(), model=model, **SHARDABLE[name]
    )
    for x, y in batches():
        if rank is not None:  # this rank's half of the batch
            x, y = x.chunk(WORLD_SIZE)[rank], y.chunk(WORLD_SIZE)[rank]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure)


def single_process(name: str) -> list[torch.Tensor]:
    model = make_model().double()
    train(name, model, None)
    return [p.detach().clone() for p in model.parameters()]


def _ddp_worker(rank: int, world_size: int, out: Path) -> None:
    import datetime

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    results: dict[str, object] = {}
    try:
        model = make_sphere_model()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        from torchvalley.manifolds import manifold_of

        results["rsgd_sphere_type"] = type(manifold_of(model[2].weight)).__name__
    except Exception as error:
        results["rsgd_sphere_type"] = f"{type(error).__name__}: {error}"
    for name in SHARDABLE:
        try:
            model = make_model().double()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            train(name, model, rank)
            results[name] = [p.full_tensor().detach().clone() for p in model.parameters()]
        except Exception as error:  # recorded, so the test names the optimizer that failed
            results[name] = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-1500:]}"
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """One launch of 2 ranks for every optimizer: process start-up dominates the run time."""
    out = tmp_path_factory.mktemp("fsdp2")
    return launch_workers(__file__, out, world_size=WORLD_SIZE, timeout=300)


def test_fsdp2_shards_match_a_single_process(ranks):
    failures = []
    for name in SHARDABLE:
        expected = single_process(name)
        initial = [p.detach() for p in make_model().double().parameters()]
        for rank, result in enumerate(ranks):
            got = result[name]
            if isinstance(got, str):
                failures.append(f"{name} (rank {rank}): {got}")
                continue
            difference = max((a - b).abs().max().item() for a, b in zip(got, expected, strict=True))
            moved = max((a - b).abs().max().item() for a, b in zip(expected, initial, strict=True))
            if not (difference < 1e-9 and moved > 1e-4):
                failures.append(
                    f"{name} (rank {rank}): differs by {difference:.3g} (moved {moved:.3g})"
                )
    assert not failures, "\n".join(failures)


def test_fsdp2_drops_the_manifold_of_a_manifold_parameter(ranks):
    """Why Riemannian optimizers on manifold parameters cannot be sharded (docs/distributed.md):
    after fully_shard the parameter is a plain DTensor parameter, its manifold gone."""
    assert {rank["rsgd_sphere_type"] for rank in ranks} == {"Euclidean"}, ranks[0]
    from torchvalley.manifolds import manifold_of

    assert type(manifold_of(make_sphere_model()[2].weight)).__name__ == "Sphere"  # unsharded


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true")
    parser.add_argument("--world-size", type=int)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    _ddp_worker(arguments.rank, arguments.world_size, arguments.out)
