"""LookSAM, ESAM and MESA under DDP (gloo, 2 CPU processes), against independent oracles.

This file is also the DDP worker (``python test_sam_efficient_ddp.py --ddp-worker ...``).
Oracles, in float64 with ``functional_call``: LookSAM in ``"local"`` mode re-derived per rank
(each rank's own ascent and split, ``g_v`` averaged, all-reduced gradients); ESAM (weight
selection, ``"global"``) and MESA equal the same optimizer run in one process on the whole
batch (an all-reduced mean of two half-batch means is the full-batch mean).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from torchvalley.optim.sam.esam import ESAM
from torchvalley.optim.sam.looksam import LookSAM
from torchvalley.optim.sam.mesa import MESA
from torchvalley.testing.distributed import launch_workers

WORLD, BATCH, STEPS, K, ALPHA, RHO, LR = 2, 16, 4, 2, 0.7, 0.1, 0.1


def make_model(classes: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3 if classes else 1)).double()


def make_batches(classes: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 4, generator=generator, dtype=torch.float64)
        if classes:
            y = torch.randint(0, 3, (BATCH,), generator=generator)
        else:
            y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(
                BATCH, 1, generator=generator, dtype=torch.float64
            )
        batches.append((x, y))
    return batches


def shard(batch, rank):
    x, y = batch
    return x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]


def closure_for(model, optimizer, x, y, loss_fn):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    return closure


def train(make, model, batches, loss_fn, rank=None):
    optimizer = make(model)
    for batch in batches:
        x, y = batch if rank is None else shard(batch, rank)
        closure = closure_for(model, optimizer, x, y, loss_fn)
        if isinstance(optimizer, MESA):
            closure()
            optimizer.step()
        else:
            optimizer.step(closure)
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {k: v.detach().clone() for k, v in inner.named_parameters()}


def _looksam(model):
    kwargs = {"perturbation_sync": "local", "lr": LR}
    return LookSAM(model.parameters(), "sgd", RHO, k=K, alpha=ALPHA, model=model, **kwargs)


def _esam(model):
    kwargs = {"perturbation_sync": "global", "lr": LR, "beta": 0.5, "gamma": 1.0, "seed": 2}
    return ESAM(model.parameters(), "sgd", RHO, model=model, **kwargs)


def _mesa(model):
    return MESA(model.parameters(), "sgd", model=model, lam=0.8, tau=2.0, ema_decay=0.5, lr=LR)


def _worker(rank: int, world: int, out: Path) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world)
    DDP = nn.parallel.DistributedDataParallel
    results = {
        "looksam": train(_looksam, DDP(make_model()), make_batches(), F.mse_loss, rank),
        "esam": train(_esam, DDP(make_model()), make_batches(), F.mse_loss, rank),
        "mesa": train(_mesa, DDP(make_model(True)), make_batches(True), F.cross_entropy, rank),
    }
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


# -- the LookSAM oracle ----------------------------------------------------------------------------


def _grad(model, params, x, y):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = F.mse_loss(functional_call(model, leaves, (x,)), y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def _norm(d):
    return torch.sqrt(sum(t.square().sum() for t in d.values()))


def _mean(ds):
    return {k: sum(d[k] for d in ds) / len(ds) for k in ds[0]}


def looksam_local_reference() -> dict[str, torch.Tensor]:
    model = make_model()
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    g_v = None
    for step, batch in enumerate(make_batches()):
        shards = [shard(batch, r) for r in range(WORLD)]
        g = [_grad(model, params, x, y) for x, y in shards]  # each rank's own clean gradient
        if step % K == 0:
            g_s = _mean(
                [
                    _grad(model, {k: params[k] + RHO * g_r[k] / _norm(g_r) for k in params}, x, y)
                    for g_r, (x, y) in zip(g, shards, strict=True)
                ]
            )
            splits = []
            for g_r in g:
                dot = sum((g_s[k] * g_r[k]).sum() for k in g_r)
                splits.append({k: g_s[k] - dot / _norm(g_r) ** 2 * g_r[k] for k in g_r})
            g_v = _mean(splits)  # averaged across replicas
            update = g_s
        else:
            full = _mean(g)  # the all-reduced clean gradient
            update = {k: full[k] + ALPHA * _norm(full) / _norm(g_v) * g_v[k] for k in full}
        params = {k: params[k] - LR * update[k] for k in params}
    return params


def test_efficient_variants_under_ddp(tmp_path):
    results = launch_workers(__file__, tmp_path, world_size=WORLD)
    for key in ("looksam", "esam", "mesa"):
        for name in results[0][key]:
            assert torch.equal(results[0][key][name], results[1][key][name]), (key, name)
    expected = looksam_local_reference()
    for name, value in results[0]["looksam"].items():
        torch.testing.assert_close(value, expected[name], atol=1e-12, rtol=0)
    single = {
        "esam": train(_esam, make_model(), make_batches(), F.mse_loss),
        "mesa": train(_mesa, make_model(True), make_batches(True), F.cross_entropy),
    }
    for key, params in single.items():
        for name, value in results[0][key].items():
            torch.testing.assert_close(value, params[name], atol=1e-12, rtol=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker(arguments.rank, arguments.world_size, arguments.out)
