"""Tests of the fluctuation–dissipation observables and the FDR scheduler.

Oracles:

* the exact one-step identity of torch's SGD update (pure algebra, any gradients): the sums of
  O_L - O_R over a run equal telescoped boundary terms, to float64 rounding;
* FDR1 at stationarity on f(θ) = ½ θᵀHθ with Gaussian minibatch noise (torch.optim.SGD): the
  batch-means interval of the ratio contains 1 and is narrow, while the same interval rejects
  the convention that ignores momentum (negative control);
* FDR2 is exact for a quadratic: the same check with one Hessian-vector product per sample;
* the quench rule on synthetic records (second half of the window, threshold, factor, reset),
  then on the quadratic: it quenches at the first test in a stationary regime and not while the
  iterates still drift; state_dict round trip; argument validation.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from torchvalley.curvature.function import ParameterFunction
from torchvalley.landscape.gradient_statistics.fdr import (
    FDRMonitor,
    FDRScheduler,
    _t_quantile,
    batch_means_ratio,
    fdr1_coefficient,
)

F64 = torch.float64


def quadratic_problem(chains: int = 200, dim: int = 10, low: float = -0.3, high: float = 0.3):
    """θ of shape (chains, dim): a block-diagonal quadratic, Hessian eigenvalues 10^[low, high]."""
    h = torch.logspace(low, high, dim, dtype=F64)
    return h, torch.nn.Parameter(torch.zeros(chains, dim, dtype=F64))


def noisy_step(theta, h, optimizer, generator, sigma: float = 1.0) -> None:
    """p.grad = Hθ + σ ξ (unbiased minibatch gradient of ½θᵀHθ), then optimizer.step()."""
    noise = torch.randn(theta.shape, generator=generator, dtype=F64)
    theta.grad = theta.detach() * h + sigma * noise
    optimizer.step()


# --------------------------------------------------------------------------------------------
# Conventions
# --------------------------------------------------------------------------------------------


def test_fdr1_coefficient_torch_convention():
    assert fdr1_coefficient(0.1, 0.9, 0.0) == pytest.approx(0.5 * 0.1 * 1.9)
    # EMA form (dampening = momentum): (1 + μ)/(1 - μ)
    assert fdr1_coefficient(0.1, 0.9, 0.9) == pytest.approx(0.05 * 1.9 / 0.1)
    # torch ignores dampening without momentum
    assert fdr1_coefficient(0.1, 0.0, 0.5) == pytest.approx(0.05)
    for kwargs, name in [
        (dict(lr=0.0), "lr"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, momentum=0.9, dampening=1.0), "dampening"),
    ]:
        with pytest.raises(ValueError, match=name):
            fdr1_coefficient(**kwargs)


def test_exact_one_step_identity_with_groups():
    """Σ_t (θ_t·G_t − c‖b_{t+1}‖²) = [μ Δ(θ·b) − (1−μ)/(2η) Δ‖θ‖²]/(1−δ) per group, exactly."""
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(7, 3, generator=gen, dtype=F64))
    b = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=F64))
    c = torch.nn.Parameter(torch.randn(4, generator=gen, dtype=F64))
    groups = [
        dict(params=[a], lr=0.03, momentum=0.9, dampening=0.3, weight_decay=0.05),
        dict(params=[b], lr=0.01, momentum=0.5, dampening=0.0, weight_decay=0.0),
        dict(params=[c], lr=0.02, momentum=0.0, dampening=0.0, weight_decay=0.1),
    ]
    opt = torch.optim.SGD(groups, lr=0.1)

    def step():  # a non-quadratic loss with noise: the identity is algebraic
        opt.zero_grad()
        loss = (a**4).sum() + torch.cos(b).sum() * (a.sum()) + (c**2).sum()
        loss.backward()
        for p in (a, b, c):
            p.grad += 0.3 * torch.randn(p.shape, generator=gen, dtype=F64)
        opt.step()

    for _ in range(3):  # torch's first step sets b = G undamped; start after it
        step()

    def snapshot():
        out = []
        for group in opt.param_groups:
            p = group["params"][0]
            buf = opt.state[p].get("momentum_buffer")
            tb = float((p.detach() * buf).sum()) if buf is not None else 0.0
            out.append((float((p.detach() ** 2).sum()), tb))
        return out

    before = snapshot()
    monitor = FDRMonitor(opt)
    for _ in range(40):
        step()
    after = snapshot()
    assert monitor.count() == 40 and monitor.steps == 40
    for gi, group in enumerate(opt.param_groups):
        lhs, rhs = monitor.records(gi)
        mu, lr = group["momentum"], group["lr"]
        damp = group["dampening"] if mu else 0.0
        boundary = (
            mu * (after[gi][1] - before[gi][1])
            - (1 - mu) / (2 * lr) * (after[gi][0] - before[gi][0])
        ) / (1 - damp)
        scale = float(lhs.abs().sum() + rhs.abs().sum())
        assert float((lhs - rhs).sum()) == pytest.approx(boundary, abs=1e-11 * scale)
    total_l, total_r = monitor.records()
    parts = [monitor.records(i) for i in range(3)]
    torch.testing.assert_close(total_l, sum(p[0] for p in parts))
    torch.testing.assert_close(total_r, sum(p[1] for p in parts))


# --------------------------------------------------------------------------------------------
# FDR1 / FDR2 at stationarity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lr, momentum, dampening, weight_decay",
    [
        (0.05, 0.9, 0.0, 0.0),  # heavy ball
        (0.05, 0.9, 0.9, 0.1),  # EMA form, (1+μ)/(1−μ)
        (0.05, 0.8, 0.4, 0.05),
        (0.1, 0.0, 0.0, 0.01),  # plain SGD
    ],
)
def test_fdr1_holds_at_stationarity(lr, momentum, dampening, weight_decay):
    h, theta = quadratic_problem()
    opt = torch.optim.SGD(
        [theta], lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay
    )
    gen = torch.Generator().manual_seed(1)
    monitor = FDRMonitor(opt)
    for _ in range(600):  # burn-in: slowest relaxation time is ~40 steps
        noisy_step(theta, h, opt, gen)
    monitor.reset()
    for _ in range(2000):
        noisy_step(theta, h, opt, gen)
    estimate = monitor.estimate(start=0)
    assert estimate.n == 2000 and estimate.n_batches == 20
    assert estimate.contains_one, estimate
    assert estimate.halfwidth < 0.01  # the check has power
    # Negative control: ignoring momentum (c = lr/2) is rejected by the same interval.
    if momentum:
        lhs, rhs = monitor.records(0)
        wrong = rhs * (0.5 * lr) / fdr1_coefficient(lr, momentum, dampening)
        assert not batch_means_ratio(lhs, wrong).contains_one


def test_fdr1_ratio_far_from_one_while_drifting():
    """Off equilibrium (started far away, slow modes still descending) the ratio is far above 1."""
    h, theta = quadratic_problem(low=-2.0, high=0.0)
    with torch.no_grad():
        theta.fill_(30.0)
    opt = torch.optim.SGD([theta], lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    monitor = FDRMonitor(opt)
    for _ in range(400):
        noisy_step(theta, h, opt, gen)
    estimate = monitor.estimate()
    assert estimate.lower > 1.5


class _Quadratic(torch.nn.Module):
    def __init__(self, theta: torch.nn.Parameter) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.theta


# torch 2.13 warns once, when forward-mode AD (ParameterFunction.hvp) first loads its
# decompositions through torch.jit.script; not ours to fix here.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_fdr2_exact_for_quadratic():
    h, theta = quadratic_problem(chains=100)
    model = _Quadratic(theta)

    def loss_fn(outputs, targets):
        return 0.5 * (outputs * h * outputs).sum()

    function = ParameterFunction(model, loss_fn, (torch.zeros(1, 1), torch.zeros(1)))
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.2)
    gen = torch.Generator().manual_seed(3)
    monitor = FDRMonitor(opt)
    for _ in range(300):
        noisy_step(theta, h, opt, gen)
    left = right = None
    for step in range(2000):
        noisy_step(theta, h, opt, gen)
        if step % 5 == 4:  # the last sample is taken after the last step
            left, right = monitor.observe_fdr2(function)
    # single group: left = ||∇F||², right = (η/2)(1+μ)/(1−δ) bᵀ(H + λI)b
    buf = opt.state[theta]["momentum_buffer"]
    grad_f = theta.detach() * h + 0.2 * theta.detach()
    assert left == pytest.approx(float((grad_f**2).sum()), rel=1e-12)
    expected = fdr1_coefficient(0.05, 0.8, 0.3) * float((buf * (h + 0.2) * buf).sum())
    assert right == pytest.approx(expected, rel=1e-12)
    estimate = monitor.fdr2_estimate()
    assert estimate.contains_one, estimate
    assert estimate.halfwidth < 0.03
    # negative control: the FDR2 of plain SGD (c = η/2) applied to momentum is rejected
    wrong = torch.tensor(monitor._fdr2[1]) * 0.025 / fdr1_coefficient(0.05, 0.8, 0.3)
    assert not batch_means_ratio(torch.tensor(monitor._fdr2[0]), wrong).contains_one


# --------------------------------------------------------------------------------------------
# The batch-means interval
# --------------------------------------------------------------------------------------------


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, rel in ((4, 3e-3), (9, 1e-4), (19, 2e-6), (49, 1e-7)):
        for p in (0.9, 0.975, 0.995):
            assert _t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=rel)


def test_batch_means_interval_covers_at_its_level():
    """AR(1) numerator (correlation time ~10) over a constant-mean denominator: coverage ≈ 95%."""
    gen = torch.Generator().manual_seed(4)
    trials, n, phi = 300, 2000, 0.9
    shocks = torch.randn(trials, n, generator=gen, dtype=F64) * math.sqrt(1 - phi**2)
    series = torch.empty(trials, n, dtype=F64)
    series[:, 0] = torch.randn(trials, generator=gen, dtype=F64)
    for t in range(1, n):
        series[:, t] = phi * series[:, t - 1] + shocks[:, t]
    rhs = 2.0 + 0.1 * torch.randn(trials, n, generator=gen, dtype=F64)
    covered = 0
    for i in range(trials):
        estimate = batch_means_ratio(3.0 + series[i], rhs[i])
        covered += estimate.lower <= 1.5 <= estimate.upper
    assert 0.88 <= covered / trials <= 0.99


def test_batch_means_ratio_edge_cases():
    # the ratio is the plain ratio of time averages over all records (Yaida's), whatever K
    gen = torch.Generator().manual_seed(14)
    lhs, rhs = torch.rand(103, generator=gen, dtype=F64), torch.rand(103, generator=gen, dtype=F64)
    estimate = batch_means_ratio(lhs, rhs)
    assert estimate.ratio == pytest.approx(float(lhs.mean() / rhs.mean()), rel=1e-14)
    assert estimate.n == 103 and estimate.n_batches == 20
    short = batch_means_ratio(torch.ones(10), torch.ones(10))
    assert short.ratio == 1.0 and math.isnan(short.lower) and not short.contains_one
    assert math.isnan(batch_means_ratio(torch.zeros(0), torch.zeros(0)).ratio)
    with pytest.raises(ValueError, match="n_batches"):
        batch_means_ratio(torch.ones(100), torch.ones(100), n_batches=4)
    with pytest.raises(ValueError, match="confidence"):
        batch_means_ratio(torch.ones(100), torch.ones(100), confidence=1.0)
    with pytest.raises(ValueError, match="lhs/rhs"):
        batch_means_ratio(torch.ones(100), torch.ones(99))


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


def _synthetic_scheduler(**kwargs):
    """A scheduler whose records the test writes itself (hook detached)."""
    theta = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.5)
    scheduler = FDRScheduler(opt, **kwargs)
    scheduler.monitor.detach()
    opt.step()  # no gradients: a no-op step that satisfies torch's ordering check
    return opt, scheduler


def _feed(scheduler, ratios):
    series = scheduler.monitor._series_for(0)
    for r in ratios:
        series.append(torch.tensor(float(r), dtype=F64), torch.tensor(1.0, dtype=F64))
        scheduler.step()


def test_yaida_rule_uses_second_half_threshold_and_factor():
    opt, scheduler = _synthetic_scheduler(window=10, threshold=0.01, factor=0.1)
    # first half far off, second half within 1 %: quench exactly at t = 10
    _feed(scheduler, [5.0] * 5 + [1.005] * 4)
    assert opt.param_groups[0]["lr"] == 0.1 and not scheduler.quenches
    _feed(scheduler, [1.005])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert scheduler.quenches[0]["ratio"] == pytest.approx(1.005)
    assert scheduler.monitor.count(0) == 0  # records purged, t reset
    # 2 % off: no quench at t = 10; at t = 20 the second half [10, 20) is within 1 %
    _feed(scheduler, [1.02] * 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert scheduler.last_estimates[0]["ratio"] == pytest.approx(1.02)
    _feed(scheduler, [0.995] * 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert [q["step"] for q in scheduler.quenches] == [0, 0]  # monitor.update never ran
    assert scheduler.get_last_lr() == [pytest.approx(0.001)]
    assert [h["quenched"] for h in scheduler.history] == [True, False, True]


def test_ci_rule_needs_one_inside_a_narrow_interval():
    opt, scheduler = _synthetic_scheduler(window=100, mode="ci", n_batches=5, max_halfwidth=0.05)
    gen = torch.Generator().manual_seed(5)
    noisy = 1.0 + 0.5 * torch.randn(100, generator=gen, dtype=F64)  # wide interval
    _feed(scheduler, noisy.tolist())
    assert not scheduler.quenches and scheduler.last_estimates[0]["upper"] > 1.05
    precise = 1.0 + 0.01 * torch.randn(100, generator=gen, dtype=F64)
    _feed(scheduler, precise.tolist())
    assert len(scheduler.quenches) == 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize("mode", ["yaida", "ci"])
def test_scheduler_quenches_at_stationarity(mode):
    h, theta = quadratic_problem()
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(6)
    for _ in range(400):  # reach stationarity before the scheduler exists
        noisy_step(theta, h, opt, gen)
    scheduler = FDRScheduler(opt, window=300, mode=mode)
    for _ in range(300):
        noisy_step(theta, h, opt, gen)
        scheduler.step()
    assert len(scheduler.quenches) == 1, scheduler.last_estimates
    assert scheduler.quenches[0]["step"] == 300
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("mode", ["yaida", "ci"])
def test_scheduler_does_not_quench_while_drifting(mode):
    h, theta = quadratic_problem(low=-2.0, high=0.0)
    with torch.no_grad():
        theta.fill_(30.0)
    opt = torch.optim.SGD([theta], lr=0.01, momentum=0.9, weight_decay=0.001)
    gen = torch.Generator().manual_seed(7)
    scheduler = FDRScheduler(opt, window=200, mode=mode)
    for _ in range(600):
        noisy_step(theta, h, opt, gen)
        scheduler.step()
    assert not scheduler.quenches
    assert opt.param_groups[0]["lr"] == 0.01
    assert scheduler.last_estimates[0]["ratio"] > 1.2  # tested three times, far from 1


def test_scheduler_per_group_false_quenches_all_groups():
    h, theta = quadratic_problem()
    h2, other = quadratic_problem(chains=50)
    opt = torch.optim.SGD(
        [dict(params=[theta], lr=0.05), dict(params=[other], lr=0.02)], momentum=0.9
    )
    gen = torch.Generator().manual_seed(8)

    def step():
        other.grad = other.detach() * h2 + torch.randn(other.shape, generator=gen, dtype=F64)
        noisy_step(theta, h, opt, gen)

    for _ in range(400):
        step()
    scheduler = FDRScheduler(opt, window=300, per_group=False)
    for _ in range(300):
        step()
        scheduler.step()
    assert [q["group"] for q in scheduler.quenches] == [0, 1]
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.005), pytest.approx(0.002)]


def test_scheduler_state_dict_round_trip():
    def make():
        h, theta = quadratic_problem(chains=20)
        opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9, weight_decay=0.01)
        return h, theta, opt, FDRScheduler(opt, window=100, mode="ci", n_batches=5)

    h, theta, opt, scheduler = make()
    gen = torch.Generator().manual_seed(9)
    for _ in range(250):
        noisy_step(theta, h, opt, gen)
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(
        {"theta": theta.detach(), "opt": opt.state_dict(), "sched": scheduler.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    h2, theta2, opt2, scheduler2 = make()
    with torch.no_grad():
        theta2.copy_(saved["theta"])
    opt2.load_state_dict(saved["opt"])
    scheduler2.load_state_dict(saved["sched"])
    gen2 = torch.Generator()
    gen2.set_state(gen.get_state())
    for _ in range(300):
        noisy_step(theta, h, opt, gen)
        scheduler.step()
        noisy_step(theta2, h2, opt2, gen2)
        scheduler2.step()
    assert torch.equal(theta.detach(), theta2.detach())
    assert scheduler.quenches == scheduler2.quenches and scheduler.quenches
    assert scheduler.get_last_lr() == scheduler2.get_last_lr()
    for a, b in zip(scheduler.monitor.records(0), scheduler2.monitor.records(0), strict=True):
        assert torch.equal(a, b)
    assert scheduler.last_epoch == scheduler2.last_epoch == 550


def test_monitor_records_nothing_for_skipped_steps_and_detaches():
    h, theta = quadratic_problem(chains=2)
    opt = torch.optim.SGD([theta], lr=0.05, momentum=0.9)
    monitor = FDRMonitor(opt)
    gen = torch.Generator().manual_seed(10)
    noisy_step(theta, h, opt, gen)
    assert monitor.count() == 1
    monitor.detach()
    noisy_step(theta, h, opt, gen)
    assert monitor.count() == 1
    monitor.update()  # manual mode
    assert monitor.count() == 2
    state = monitor.state_dict()
    fresh = FDRMonitor(opt, attach=False)
    fresh.load_state_dict(state)
    for a, b in zip(fresh.records(0), monitor.records(0), strict=True):
        assert torch.equal(a, b)


def test_validation_names_the_argument():
    theta = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([theta], lr=0.1, momentum=0.9)
    for kwargs, name in [
        (dict(window=1), "window"),
        (dict(threshold=0.0), "threshold"),
        (dict(factor=1.0), "factor"),
        (dict(mode="fast"), "mode"),
        (dict(n_batches=3), "n_batches"),
        (dict(confidence=0.0), "confidence"),
        (dict(max_halfwidth=0.0), "max_halfwidth"),
        (dict(min_lr=-1.0), "min_lr"),
    ]:
        with pytest.raises(ValueError, match=name):
            FDRScheduler(opt, **kwargs)
    with pytest.raises(ValueError, match="optimizer"):
        FDRMonitor(torch.optim.Adam([theta]))
    with pytest.raises(ValueError, match="nesterov"):
        FDRMonitor(torch.optim.SGD([theta], lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(ValueError, match="maximize"):
        FDRMonitor(torch.optim.SGD([theta], lr=0.1, maximize=True))
    with pytest.raises(ValueError, match="dampening"):
        FDRMonitor(torch.optim.SGD([theta], lr=0.1, momentum=0.9, dampening=1.0))


def test_min_lr_floor():
    opt, scheduler = _synthetic_scheduler(window=10, min_lr=0.05)
    _feed(scheduler, [1.0] * 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    _feed(scheduler, [1.0] * 10)  # already at the floor: nothing changes, records kept
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05) and len(scheduler.quenches) == 1


def test_fdr_schedule_script_smoke(tmp_path):
    """benchmarks/fdr_schedule.py end to end on the fast quadratic task."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fdr_schedule.py"
    spec = importlib.util.spec_from_file_location("fdr_schedule_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        out, payload = tmp_path / "fdr.md", tmp_path / "fdr.json"
        argv = ["--task", "quadratic", "--epochs", "3", "--seeds", "0", "1", "--window", "10"]
        argv += ["--tune", "--out", str(out), "--json", str(payload)]
        argv += ["--threads", str(torch.get_num_threads())]  # leave the thread pool alone
        assert module.main(argv) == 0
    finally:
        sys.modules.pop(spec.name, None)
    text = out.read_text()
    assert "| fdr-yaida |" in text and "| step |" in text and "Chosen:" in text
    runs = json.loads(payload.read_text())["runs"]
    assert len(runs) == 8 and {r["schedule"] for r in runs} == set(module.SCHEDULES)
    assert all(len(r["lrs"]) == 3 for r in runs)
