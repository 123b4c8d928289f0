"""SAM in training systems: DDP (gloo, 2 CPU processes), gradient accumulation, GradScaler,
bf16 autocast and clipping of the final gradient.

The oracle for DDP ``"local"`` mode and for :meth:`SAM.step_micro_batches` is an independent
single-process **m-sharpness simulation** written here with ``torch.func.functional_call`` and a
hand-written SGD-with-momentum update (no ``SAM``, no ``torch.optim``): split the batch into m
chunks, perturb each chunk with its own gradient, take each chunk's gradient at its perturbed
weights, average, and step (SAM paper §3.1, research/sam.md §10 items 9–10).

The DDP workers are this file run as a script (``python test_sam_systems.py --ddp-worker ...``):
a spawned interpreter cannot import a test module that pytest loaded in importlib mode, and a
fresh interpreter per rank is exactly what ``torch.multiprocessing`` spawn gives.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from torchvalley.optim import SAM
from torchvalley.testing.distributed import launch_workers

Params = dict[str, torch.Tensor]

WORLD_SIZE = 2
BATCH = 16
STEPS = 3
LR, MOMENTUM, RHO = 0.1, 0.9, 0.05


# ---------------------------------------------------------------------------------------------
# Shared problem: a small tanh MLP regression, deterministic in its seed.
# ---------------------------------------------------------------------------------------------


def make_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def make_data(dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, generator=generator, dtype=dtype)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(
        BATCH, 1, generator=generator, dtype=dtype
    )
    return x, y


def chunks(x: torch.Tensor, y: torch.Tensor, m: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.chunk(m), y.chunk(m), strict=True))


def sam_closure(
    model: nn.Module, opt: SAM, x: torch.Tensor, y: torch.Tensor, record: list | None = None
) -> Callable[[], torch.Tensor]:
    """The usual closure; ``record`` collects the parameters it sees (w, then w + eps)."""

    def closure() -> torch.Tensor:
        if record is not None:
            record.append([p.detach().clone() for p in model.parameters()])
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


# ---------------------------------------------------------------------------------------------
# The independent oracle.
# ---------------------------------------------------------------------------------------------


def _gradient(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
    leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
    loss = F.mse_loss(functional_call(model, leaves, (x,)), y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def _global_norm(tensors: Params) -> torch.Tensor:
    return torch.sqrt(sum(t.square().sum() for t in tensors.values()))


def ascent_eps(grads: Params, rho: float, ascent: str = "sam", fisher_eta: float = 1.0) -> Params:
    """eps = rho M^{-1} g / sqrt(g^T M^{-1} g) for SAM (M = I), Fisher (M = 1 + eta g^2) and
    Monge (M = I + g g^T, i.e. SAM's eps shrunk by sqrt(1 + ||g||^2))."""
    if ascent in ("sam", "monge"):
        norm = _global_norm(grads)
        eps = {k: rho * g / norm for k, g in grads.items()}
        if ascent == "monge":
            eps = {k: e / torch.sqrt(1 + norm**2) for k, e in eps.items()}
        return eps
    assert ascent == "fisher"
    inverse = {k: 1.0 / (1.0 + fisher_eta * g.square()) for k, g in grads.items()}
    norm = torch.sqrt(sum((inverse[k] * g.square()).sum() for k, g in grads.items()))
    return {k: rho * inverse[k] * g / norm for k, g in grads.items()}


def m_sharpness_reference(
    model: nn.Module,
    batches: list[list[tuple[torch.Tensor, torch.Tensor]]],
    *,
    rho: float = RHO,
    lr: float = LR,
    momentum: float = MOMENTUM,
    ascent: str = "sam",
    max_grad_norm: float | None = None,
) -> tuple[Params, list[list[Params]]]:
    """Run len(batches) SAM steps; each step averages per-chunk SAM gradients.

    Returns the final parameters and, per step, each chunk's perturbation.
    """
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers: Params = {}
    perturbations = []
    for step_chunks in batches:
        per_chunk, step_eps = [], []
        for x, y in step_chunks:
            eps = ascent_eps(_gradient(model, params, x, y), rho, ascent)
            step_eps.append(eps)
            perturbed = {k: params[k] + eps[k] for k in params}
            per_chunk.append(_gradient(model, perturbed, x, y))
        perturbations.append(step_eps)
        grad = {k: sum(g[k] for g in per_chunk) / len(per_chunk) for k in params}
        if max_grad_norm is not None:
            coefficient = torch.clamp(max_grad_norm / (_global_norm(grad) + 1e-6), max=1.0)
            grad = {k: g * coefficient for k, g in grad.items()}
        for k in params:
            buffers[k] = grad[k].clone() if k not in buffers else momentum * buffers[k] + grad[k]
            params[k] = params[k] - lr * buffers[k]
    return params, perturbations


def run_sam(
    model: nn.Module, steps: int, x: torch.Tensor, y: torch.Tensor, **sam_kwargs
) -> tuple[nn.Module, list[list[torch.Tensor]]]:
    """``steps`` SAM steps on one batch; returns the model and each step's perturbation."""
    kwargs = {"rho": RHO, "lr": LR, "momentum": MOMENTUM, **sam_kwargs}
    opt = SAM(model.parameters(), "sgd", **kwargs)
    perturbations = []
    for _ in range(steps):
        record: list = []
        opt.step(sam_closure(model, opt, x, y, record))
        perturbations.append([b - a for a, b in zip(record[0], record[1], strict=True)])
    return model, perturbations


def assert_params_close(model: nn.Module, expected: Params, *, atol: float, rtol: float = 0.0):
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], atol=atol, rtol=rtol, msg=name)


# ---------------------------------------------------------------------------------------------
# a. DDP with gloo: two processes on CPU.
# ---------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world_size: int, out: Path) -> None:
    """Runs in each rank's own interpreter; writes its results to ``out/rank{rank}.pt``."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=30)
    )
    x, y = make_data()
    shard = chunks(x, y, world_size)[rank]
    results: dict = {}

    def train(sync: str, ascent: str = "sam") -> dict:
        ddp = DDP(make_model())
        sam_kwargs = {"model": ddp, "perturbation_sync": sync, "lr": LR, "momentum": MOMENTUM}
        opt = SAM(ddp.parameters(), "sgd", RHO, ascent, **sam_kwargs)
        perturbations = []
        for _ in range(STEPS):
            record: list = []  # the parameters each closure call sees: w, then w + eps
            opt.step(sam_closure(ddp, opt, *shard, record))
            perturbations.append([b - a for a, b in zip(record[0], record[1], strict=True)])
        return {"params": dict(ddp.module.named_parameters()), "eps": perturbations}

    results["global"] = train("global")
    results["local"] = train("local")
    results["local_fisher"] = train("local", "fisher")

    # Accumulation under DDP: two micro-batches per rank, every pass under no_sync, one
    # all-reduce of the averaged gradient.
    ddp = DDP(make_model())
    opt = SAM(ddp.parameters(), "sgd", RHO, model=ddp, lr=LR, momentum=MOMENTUM)
    for _ in range(STEPS):
        opt.step_micro_batches([sam_closure(ddp, opt, *c) for c in chunks(*shard, 2)])
    results["micro"] = {"params": dict(ddp.module.named_parameters())}

    # GradScaler, local mode, a first-pass overflow on rank 0 only: every rank must skip the
    # step (rank 0 skipping its second pass while rank 1 runs an all-reducing backward would
    # hang), restore the weights and back off the scale.
    ddp = DDP(make_model(torch.float32))
    opt = SAM(ddp.parameters(), "sgd", RHO, model=ddp, lr=LR, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x32, y32 = (t.to(torch.float32) for t in shard)
    calls = [0]

    def scaled_closure() -> torch.Tensor:
        calls[0] += 1
        opt.zero_grad()
        loss = F.mse_loss(ddp(x32), y32)
        if rank == 0 and calls[0] == 1:
            loss = loss * math.inf
        scaler.scale(loss).backward()
        return loss

    before = [p.detach().clone() for p in ddp.parameters()]
    opt.step(scaled_closure, grad_scaler=scaler)
    results["scaler_rank0_overflow"] = {
        "unchanged": all(torch.equal(a, b) for a, b in zip(before, ddp.parameters(), strict=True)),
        "scale": scaler.get_scale(),
        "calls": calls[0],
    }
    # And the next step runs normally on both ranks (the ranks are still in lockstep).
    opt.step(scaled_closure, grad_scaler=scaler)
    results["scaler_after"] = {"params": dict(ddp.module.named_parameters())}

    torch.save(
        {k: {n: _detach(v) for n, v in r.items()} for k, r in results.items()},
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _detach(value):
    if isinstance(value, dict):
        return {k: v.detach().clone() for k, v in value.items()}
    if isinstance(value, list):
        return [[t.detach().clone() for t in step] for step in value]
    return value


def test_ddp_two_gloo_processes(tmp_path):
    # One launch (2 ranks, ~10 s) for every DDP check below: a module-scoped fixture would be
    # set up once per pytest-xdist worker running one of several tests.
    results = _launch_ddp(tmp_path)
    _check_global_sync(results)
    _check_local_sync(results, "local", "sam")
    _check_local_sync(results, "local_fisher", "fisher")
    _check_micro_batches(results)
    _check_overflow_on_one_rank(results)


def _launch_ddp(out: Path) -> list[dict]:
    return launch_workers(__file__, out, world_size=WORLD_SIZE)


def _assert_replicas_identical(results: list[dict], key: str) -> None:
    first, second = (r[key]["params"] for r in results)
    for name in first:
        assert torch.equal(first[name], second[name]), f"{key}: replicas differ at {name}"


def _check_global_sync(ddp_results: list[dict]) -> None:
    # Oracle: single-process SAM on the full batch. Replicas are bitwise identical; against the
    # oracle only the all-reduce's summation order differs (float64: ~1e-16 per step).
    _assert_replicas_identical(ddp_results, "global")
    x, y = make_data()
    model, reference_eps = run_sam(make_model(), STEPS, x, y)
    expected = dict(model.named_parameters())
    for result in ddp_results:
        assert_params_close_dict(result["global"]["params"], expected, atol=1e-12)
    # Identical (all-reduced) perturbations on both ranks, equal to the full-batch ones.
    for step in range(STEPS):
        for a, b, ref in zip(
            ddp_results[0]["global"]["eps"][step],
            ddp_results[1]["global"]["eps"][step],
            reference_eps[step],
            strict=True,
        ):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, ref, atol=1e-12, rtol=0)


def _check_local_sync(ddp_results: list[dict], key: str, ascent: str) -> None:
    # Oracle: the independent m-sharpness simulation with m = world size. float64 throughout;
    # the only differences are the order of floating-point operations (<1e-12 after 3 steps).
    _assert_replicas_identical(ddp_results, key)  # the second gradient is all-reduced
    x, y = make_data()
    expected, expected_eps = m_sharpness_reference(
        make_model(), [chunks(x, y, WORLD_SIZE)] * STEPS, ascent=ascent
    )
    for result in ddp_results:
        assert_params_close_dict(result[key]["params"], expected, atol=1e-12)
    names = list(expected)
    for step in range(STEPS):
        eps = [r[key]["eps"][step] for r in ddp_results]
        # Each rank perturbed with its own shard's gradient: different perturbations...
        assert max((a - b).abs().max() for a, b in zip(*eps, strict=True)) > 1e-3
        # ...each equal to the simulation's perturbation of that rank's chunk.
        for rank in range(WORLD_SIZE):
            for name, tensor in zip(names, eps[rank], strict=True):
                torch.testing.assert_close(
                    tensor, expected_eps[step][rank][name], atol=1e-12, rtol=0
                )


def _check_micro_batches(ddp_results: list[dict]) -> None:
    # 2 ranks x 2 micro-batches = 4 chunks, averaged once across ranks.
    _assert_replicas_identical(ddp_results, "micro")
    x, y = make_data()
    expected, _ = m_sharpness_reference(make_model(), [chunks(x, y, 4)] * STEPS)
    for result in ddp_results:
        assert_params_close_dict(result["micro"]["params"], expected, atol=1e-12)


def _check_overflow_on_one_rank(ddp_results: list[dict]) -> None:
    for result in ddp_results:
        overflow = result["scaler_rank0_overflow"]
        assert overflow["unchanged"]
        assert overflow["scale"] == 2.0**9  # backed off once, on every rank
    assert ddp_results[0]["scaler_rank0_overflow"]["calls"] == 1  # no second pass ran
    assert ddp_results[1]["scaler_rank0_overflow"]["calls"] == 1
    _assert_replicas_identical(ddp_results, "scaler_after")


def assert_params_close_dict(actual: Params, expected: Params, *, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name].detach(), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------
# b. Gradient accumulation.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("micro_batches", [1, 2, 4])
def test_step_micro_batches_equals_m_sharpness_simulation(micro_batches):
    # float64 model: the accumulation buffer must not round through float32 (<=1e-12).
    x, y = make_data()
    model = make_model()
    opt = SAM(model.parameters(), "sgd", RHO, lr=LR, momentum=MOMENTUM)
    for _ in range(STEPS):
        losses = opt.step_micro_batches(
            [sam_closure(model, opt, *c) for c in chunks(x, y, micro_batches)]
        )
        assert len(losses) == micro_batches
    expected, _ = m_sharpness_reference(make_model(), [chunks(x, y, micro_batches)] * STEPS)
    assert_params_close(model, expected, atol=1e-12)


def test_step_micro_batches_float32_accumulates_in_float32():
    # float32 model: the float32 buffer and reference agree to float32 rounding (~1e-7 relative).
    x, y = make_data(torch.float32)
    model = make_model(torch.float32)
    opt = SAM(model.parameters(), "sgd", RHO, lr=LR, momentum=MOMENTUM)
    for _ in range(STEPS):
        opt.step_micro_batches([sam_closure(model, opt, *c) for c in chunks(x, y, 4)])
    expected, _ = m_sharpness_reference(make_model(torch.float32), [chunks(x, y, 4)] * STEPS)
    assert_params_close(model, expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# c. GradScaler (the fp16 path's loss scaling, on CPU).
# ---------------------------------------------------------------------------------------------

SCALE = 2.0**12


def _scaled_closure(model, opt, scaler, x, y, inject: int | None = None, calls=None):
    calls = [0] if calls is None else calls

    def closure() -> torch.Tensor:
        calls[0] += 1
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        if inject == calls[0]:
            loss = loss * math.inf
        scaler.scale(loss).backward()
        return loss

    return closure


@pytest.mark.parametrize("ascent", ["sam", "fisher", "monge"])
def test_grad_scaler_step_equals_unscaled_step(ascent):
    # Scaling the loss by a power of two scales every gradient exactly, and unscaling is exact,
    # so the scaled run equals the fp32 run bitwise. Fisher and Monge are scale-sensitive: an
    # ascent from the *scaled* first-pass gradient (the bug this guards against) is far off.
    x, y = make_data(torch.float32)
    scaled = make_model(torch.float32)
    opt = SAM(scaled.parameters(), "sgd", 0.5, ascent, lr=LR, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    for _ in range(STEPS):
        opt.step(_scaled_closure(scaled, opt, scaler, x, y), grad_scaler=scaler)

    reference, _ = run_sam(make_model(torch.float32), STEPS, x, y, rho=0.5, ascent=ascent)
    for p, q in zip(scaled.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)

    # Negative control: the same steps with the ascent taken from the scaled gradient.
    wrong = make_model(torch.float32)
    wrong_opt = SAM(wrong.parameters(), "sgd", 0.5, ascent, lr=LR, momentum=MOMENTUM)
    for _ in range(STEPS):
        calls = [0]

        def scaled_first_pass(model=wrong, opt=wrong_opt, calls=calls) -> torch.Tensor:
            calls[0] += 1
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            (loss * (SCALE if calls[0] == 1 else 1.0)).backward()
            return loss

        wrong_opt.step(scaled_first_pass)
    difference = max(
        (p - q).abs().max() for p, q in zip(wrong.parameters(), scaled.parameters(), strict=True)
    )
    if ascent == "sam":
        assert difference < 1e-6  # scale-invariant ascent: only rounding
    else:
        assert difference > 1e-3


def _snapshot(model: nn.Module, opt: SAM) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def _assert_unchanged(model, opt, snapshot) -> None:
    params, state = snapshot
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    new_state = opt.state_dict()
    assert new_state["state"].keys() == state["state"].keys()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            assert torch.equal(new_state["state"][index][key], value)


def _overflowed_reference_scaler() -> dict:
    """The scaler state after one ordinary overflowed step (scale backed off, tracker reset)."""
    model = make_model(torch.float32)
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    x, y = make_data(torch.float32)
    scaler.scale(F.mse_loss(model(x), y)).backward()
    scaler.step(sgd)
    scaler.update()  # tracker 1
    sgd.zero_grad()
    scaler.scale(F.mse_loss(model(x), y) * math.inf).backward()
    scaler.step(sgd)
    scaler.update()
    return scaler.state_dict()


@pytest.mark.parametrize("inject", [1, 2], ids=["first_pass", "second_pass"])
@pytest.mark.parametrize("ascent", ["sam", "fisher"])
def test_grad_scaler_overflow_skips_the_whole_step(inject, ascent):
    x, y = make_data(torch.float32)
    model = make_model(torch.float32)
    opt = SAM(model.parameters(), "sgd", RHO, ascent, lr=LR, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    opt.step(_scaled_closure(model, opt, scaler, x, y), grad_scaler=scaler)  # momentum state
    snapshot = _snapshot(model, opt)

    calls = [0]
    loss = opt.step(_scaled_closure(model, opt, scaler, x, y, inject, calls), grad_scaler=scaler)
    _assert_unchanged(model, opt, snapshot)  # no update, weights restored, base state intact
    assert calls[0] == (1 if inject == 1 else 2)  # a failed first pass has no second pass
    assert scaler.state_dict() == _overflowed_reference_scaler()  # scale halved, tracker reset
    assert math.isfinite(loss.item()) == (inject == 2)  # step() returns the clean-pass loss
    if inject == 1:  # nothing non-finite is left behind in .grad
        assert all(p.grad is None for p in model.parameters())

    # Training goes on: the next step is an ordinary one, equal to an fp32 step from here.
    opt.step(_scaled_closure(model, opt, scaler, x, y), grad_scaler=scaler)
    reference = make_model(torch.float32)
    reference_opt = SAM(reference.parameters(), "sgd", RHO, ascent, lr=LR, momentum=MOMENTUM)
    for _ in range(2):
        reference_opt.step(sam_closure(reference, reference_opt, x, y))
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_grad_scaler_manual_first_and_second_step():
    # The manual protocol: first_step reports the overflow, the caller skips the second pass.
    x, y = make_data(torch.float32)
    model = make_model(torch.float32)
    opt = SAM(model.parameters(), "sgd", RHO, lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(F.mse_loss(model(x), y) * math.inf).backward()
    assert opt.first_step(zero_grad=True, grad_scaler=scaler) is False
    opt.second_step(zero_grad=True, grad_scaler=scaler)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert scaler.get_scale() == SCALE / 2
    # An ordinary manual step afterwards.
    scaler.scale(F.mse_loss(model(x), y)).backward()
    assert opt.first_step(zero_grad=True, grad_scaler=scaler) is True
    scaler.scale(F.mse_loss(model(x), y)).backward()
    opt.second_step(zero_grad=True, grad_scaler=scaler)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_fp16_autocast_with_grad_scaler_tracks_fp32():
    # End to end with CPU fp16 autocast: fp16 has 11 significant bits (unit roundoff
    # u = 2^-11 = 4.9e-4). The matmul inputs are rounded to fp16 (products accumulate in fp32),
    # so gradients, and the 3-step parameter update, carry relative errors of order u
    # (observed 4e-4). The tolerance 4e-3 is ~8u; the SAM-vs-SGD gap (~0.3) is far larger.
    x, y = make_data(torch.float32)
    model = make_model(torch.float32)
    start = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), "sgd", 0.2, lr=LR, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        return loss

    for _ in range(STEPS):
        opt.step(closure, grad_scaler=scaler)
    assert scaler.get_scale() == SCALE  # no overflow on this problem
    _assert_update_close(model, start, x, y, rho=0.2, tolerance=4e-3)


def _update_error(model, start, reference) -> tuple[float, float]:
    delta = torch.cat([(p - s).flatten() for p, s in zip(model.parameters(), start, strict=True)])
    ref = torch.cat([(p - s).flatten() for p, s in zip(reference.parameters(), start, strict=True)])
    return ((delta - ref).norm() / ref.norm()).item(), ref.norm().item()


def _assert_update_close(model, start, x, y, *, rho: float, tolerance: float) -> None:
    """The relative error of the update ``w_T - w_0`` against the fp32 run."""
    reference, _ = run_sam(make_model(torch.float32), STEPS, x, y, rho=rho)
    error, _ = _update_error(model, start, reference)
    assert error < tolerance
    # The tolerance is meaningful: plain SGD (rho = 0) is much further from SAM's update.
    sgd, _ = run_sam(make_model(torch.float32), STEPS, x, y, rho=0.0)
    sam_vs_sgd, _ = _update_error(sgd, start, reference)
    assert sam_vs_sgd > 3 * tolerance


# ---------------------------------------------------------------------------------------------
# d. bf16 autocast.
# ---------------------------------------------------------------------------------------------


def test_bf16_autocast_tracks_fp32():
    # bf16 has 8 significant bits (unit roundoff u = 2^-8 = 3.9e-3). Parameters and gradients
    # stay fp32 (autocast rounds only the matmul inputs; products accumulate in fp32), and the
    # first-pass norm is taken in float32, so the 3-step update carries relative errors of
    # order u (observed 2.8e-3). The tolerance 2e-2 is ~5u; the SAM-vs-SGD gap (~0.3) is
    # asserted to be far larger, so a broken ascent would not pass.
    x, y = make_data(torch.float32)
    model = make_model(torch.float32)
    start = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), "sgd", 0.2, lr=LR, momentum=MOMENTUM)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(x)
        assert output.dtype == torch.bfloat16
        loss = F.mse_loss(output.float(), y)
        loss.backward()
        return loss

    for _ in range(STEPS):
        opt.step(closure)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_update_close(model, start, x, y, rho=0.2, tolerance=2e-2)


# ---------------------------------------------------------------------------------------------
# e. Clipping: the final gradient only.
# ---------------------------------------------------------------------------------------------


def test_max_grad_norm_clips_the_final_gradient():
    x, y = make_data()
    model = make_model()
    opt = SAM(model.parameters(), "sgd", RHO, lr=LR, momentum=MOMENTUM, max_grad_norm=0.05)
    for _ in range(STEPS):
        opt.step(sam_closure(model, opt, x, y))
    expected, _ = m_sharpness_reference(make_model(), [[(x, y)]] * STEPS, max_grad_norm=0.05)
    assert_params_close(model, expected, atol=1e-12)
    # The clipping was active (else this would not test it).
    unclipped, _ = m_sharpness_reference(make_model(), [[(x, y)]] * STEPS)
    assert max((expected[k] - unclipped[k]).abs().max() for k in expected) > 1e-3


@pytest.mark.parametrize("ascent", ["fisher", "monge"])
def test_max_grad_norm_does_not_clip_the_first_pass(ascent):
    # Fisher and Monge depend on the gradient's scale, so clipping the first-pass gradient
    # (||g|| >> max_grad_norm here) would change eps. The implementation's eps is the one from
    # the unclipped gradient.
    x, y = make_data()
    y = 10.0 * y  # large residuals: ||g|| is ~10-100
    model = make_model()
    opt = SAM(model.parameters(), "sgd", 0.5, ascent, lr=0.0, max_grad_norm=0.1)
    record: list = []
    opt.step(sam_closure(model, opt, x, y, record))
    eps = {n: b - a for n, a, b in zip(dict(model.named_parameters()), *record, strict=True)}

    grads = _gradient(model, dict(model.named_parameters()), x, y)
    norm = _global_norm(grads)
    assert norm > 10 * 0.1
    unclipped = ascent_eps(grads, 0.5, ascent)
    clipped = ascent_eps({k: g * (0.1 / norm) for k, g in grads.items()}, 0.5, ascent)
    for name in eps:
        torch.testing.assert_close(eps[name], unclipped[name], atol=1e-12, rtol=0)
    assert max((clipped[k] - unclipped[k]).abs().max() for k in eps) > 1e-2


# ---------------------------------------------------------------------------------------------
# DDP worker entry point.
# ---------------------------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    _ddp_worker(arguments.rank, arguments.world_size, arguments.out)
