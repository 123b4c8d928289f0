"""RSGD / RAdam / RAMSGrad / RAdagrad: parity with torch.optim on Euclidean parameters (bit for
bit), per-point and per-factor adaptivity, closed-form optima on manifolds, drift and the
hyperbolic boundary (research/rest.md §14 items 8–17)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import torchvalley
import torchvalley.testing
from torchvalley import ManifoldParameter
from torchvalley.manifolds import (
    Euclidean,
    Lorentz,
    Oblique,
    PoincareBall,
    Product,
    Sphere,
    Stiefel,
    boundary_eps,
)
from torchvalley.optim import RiemannianAdagrad, RiemannianAdam, RiemannianSGD
from torchvalley.optim.riemannian import component_inner


def _wiggly_loss(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Non-convex: the rest.md §1.4 drift loss.
    return ((p - target) ** 2).sum() + torch.sin(3 * p).sum()


def _drive(params, optimizer, targets, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(_wiggly_loss(p, t) for p, t in zip(params, targets, strict=True))
        loss.backward()
        optimizer.step()


def _pair(dtype, *shapes, euclidean_parameter=False):
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    targets = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    ours = [
        ManifoldParameter(b.clone(), Euclidean())
        if euclidean_parameter
        else torch.nn.Parameter(b.clone())
        for b in base
    ]
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    return ours, theirs, targets


# ------------------------------------------------------------------------- parity (items 8-10)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lr", [1e-3, 1e-2])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_radam_equals_torch_adam_bitwise(dtype, lr, amsgrad, weight_decay):
    ours, theirs, targets = _pair(dtype, (7, 3), (5,))
    mine = RiemannianAdam(ours, lr=lr, amsgrad=amsgrad, weight_decay=weight_decay, foreach=False)
    ref = torch.optim.Adam(theirs, lr=lr, amsgrad=amsgrad, weight_decay=weight_decay, foreach=False)
    _drive(ours, mine, targets, 1000)
    _drive(theirs, ref, targets, 1000)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("euclidean_parameter", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_radam_decoupled_equals_adamw_bitwise(foreach, euclidean_parameter, maximize):
    ours, theirs, targets = _pair(torch.float32, (6, 4), (3,), euclidean_parameter=True)
    if not euclidean_parameter:
        ours = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, "foreach": foreach, "maximize": maximize}
    mine = RiemannianAdam(ours, decoupled_weight_decay=True, **kwargs)
    ref = torch.optim.AdamW(theirs, **kwargs)
    _drive(ours, mine, targets, 200)
    _drive(theirs, ref, targets, 200)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    # Same state layout as torch, so the states themselves match too.
    for a, b in zip(ours, theirs, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(mine.state[a][key], ref.state[b][key])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True},
        {"momentum": 0.0},
        {"momentum": 0.5, "weight_decay": 1e-2, "maximize": True},
    ],
    ids=["momentum", "dampening", "nesterov", "plain", "wd-maximize"],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_rsgd_equals_torch_sgd_bitwise_from_step_one(dtype, kwargs, foreach):
    ours, theirs, targets = _pair(dtype, (7, 3), (5,), euclidean_parameter=True)
    mine = RiemannianSGD(ours, lr=1e-2, foreach=foreach, **kwargs)
    ref = torch.optim.SGD(theirs, lr=1e-2, foreach=foreach, **kwargs)
    for _ in range(50):
        _drive(ours, mine, targets, 1)
        _drive(theirs, ref, targets, 1)
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)  # from step 1 on (geoopt: 3.9e-3 off after step 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("foreach", [False, True])
def test_radagrad_equals_torch_adagrad_bitwise(dtype, foreach):
    ours, theirs, targets = _pair(dtype, (7, 3), (5,))
    kwargs = {
        "lr": 0.05,
        "lr_decay": 1e-3,
        "weight_decay": 1e-3,
        "initial_accumulator_value": 0.1,
        "foreach": foreach,
    }
    mine = RiemannianAdagrad(ours, **kwargs)
    ref = torch.optim.Adagrad(theirs, **kwargs)
    _drive(ours, mine, targets, 300)
    _drive(theirs, ref, targets, 300)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_registry_entries_build_the_same_optimizers():
    p = torch.nn.Parameter(torch.zeros(3))
    assert isinstance(torchvalley.create_optimizer("rsgd", [p], lr=0.1), RiemannianSGD)
    ams = torchvalley.create_optimizer("ramsgrad", [p], lr=0.1)
    assert isinstance(ams, RiemannianAdam) and ams.param_groups[0]["amsgrad"] is True
    assert isinstance(torchvalley.create_optimizer("radagrad", [p]), RiemannianAdagrad)
    for name in ("rsgd", "radam", "ramsgrad", "radagrad"):
        assert torchvalley.get_optimizer_entry(name).capabilities.manifold_aware


def _sphere_point(rows=4, cols=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ManifoldParameter(Sphere().random(rows, cols, generator=g, dtype=dtype), Sphere())


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam, RiemannianAdagrad])
def test_maximize_on_a_manifold_is_minimizing_the_negative(cls):
    # Item 10: maximize is honoured on manifold parameters (geoopt's RAdam ignores it).
    a, b = _sphere_point(), _sphere_point()
    target = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kwargs = {"lr": 0.05} | ({"momentum": 0.9} if cls is RiemannianSGD else {})
    before = torch.nn.functional.cosine_similarity(a.detach(), target, dim=-1)
    up = cls([a], maximize=True, **kwargs)
    down = cls([b], **kwargs)
    for _ in range(20):
        up.zero_grad()
        down.zero_grad()
        (a * target).sum().backward()
        (-(b * target)).sum().backward()
        up.step()
        down.step()
    assert torch.equal(a, b)
    # and it did move towards larger <x, target>: each row turned towards the target's row.
    after = torch.nn.functional.cosine_similarity(a.detach(), target, dim=-1)
    assert bool((after > before + 0.05).all())


def test_invalid_hyperparameters_raise_value_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        RiemannianSGD(p, lr=float("nan"))
    with pytest.raises(ValueError, match="nesterov"):
        RiemannianSGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        RiemannianAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="stabilize"):
        RiemannianAdam(p, stabilize=0)
    with pytest.raises(ValueError, match="drift_tol"):
        RiemannianAdam(p, drift_tol=-1.0)
    with pytest.raises(ValueError, match="eps"):
        RiemannianAdagrad(p, eps=-1.0)
    opt = RiemannianSGD(p, lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "momentum": 1.5})


# ------------------------------------------------------- adaptivity per point / factor (item 12)
def test_radam_second_moment_is_one_scalar_per_sphere_point():
    x = _sphere_point(6, 5)
    target = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    opt = RiemannianAdam([x], lr=1e-2, betas=(0.8, 0.9))
    expected_v = torch.zeros(6, 1, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        _wiggly_loss(x, target).backward()
        point = x.detach().clone()
        rgrad = x.grad - (x.grad * point).sum(-1, keepdim=True) * point
        expected_v = 0.9 * expected_v + 0.1 * (rgrad**2).sum(-1, keepdim=True)
        opt.step()
    v = opt.state[x]["exp_avg_sq"]
    assert v.shape == (6, 1)
    torch.testing.assert_close(v, expected_v, rtol=1e-12, atol=0)


def test_radam_on_a_product_of_euclidean_factors_is_adam_with_per_factor_moments():
    # Item 12, by hand: factors R^2 x R^3 x R^1, one second moment per factor.
    manifold = Product((Euclidean(1), 2), (Euclidean(1), 3), (Euclidean(1), 1))
    g = torch.Generator().manual_seed(0)
    start = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = ManifoldParameter(start.clone(), manifold)
    lr, (b1, b2), eps = 1e-2, (0.9, 0.99), 1e-8
    opt = RiemannianAdam([x], lr=lr, betas=(b1, b2), eps=eps)
    ref = start.clone()
    m = torch.zeros_like(ref)
    v = torch.zeros_like(ref)
    slices = [slice(0, 2), slice(2, 5), slice(5, 6)]
    for t in range(1, 51):
        opt.zero_grad()
        _wiggly_loss(x, target).backward()
        opt.step()
        grad = 2 * (ref - target) + 3 * torch.cos(3 * ref)
        m = b1 * m + (1 - b1) * grad
        for s in slices:
            sq = (grad[:, s] ** 2).sum(-1, keepdim=True)
            v[:, s] = b2 * v[:, s] + (1 - b2) * sq
        step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        ref = ref - lr * step
    torch.testing.assert_close(x.detach(), ref, rtol=0, atol=1e-12)


def test_component_inner_shapes():
    x = _sphere_point(3, 4).detach()
    u = Sphere().proju(x, torch.ones_like(x))
    assert component_inner(Sphere(), x, u).shape == (3, 1)
    assert component_inner(Euclidean(), x, u).shape == (3, 4)
    prod = Product((Sphere(), 4), (Euclidean(1), 2))
    xp = prod.random(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    up = prod.proju(xp, torch.randn(3, 6, dtype=torch.float64))
    value = component_inner(prod, xp, up)
    assert value.shape == (3, 6)
    torch.testing.assert_close(value[:, 0], (up[:, :4] ** 2).sum(-1))
    torch.testing.assert_close(value[:, 5], (up[:, 4:] ** 2).sum(-1))


# ------------------------------------------------------------- closed-form oracles on manifolds
def _spd(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T / n + torch.diag(torch.linspace(0.1, 3.0, n, dtype=torch.float64))


@pytest.mark.parametrize(
    ("cls", "kwargs", "steps"),
    [
        (RiemannianSGD, {"lr": 0.05, "momentum": 0.9}, 1500),
        (RiemannianSGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}, 1500),
        (RiemannianAdam, {"lr": 0.01}, 3000),
        (RiemannianAdam, {"lr": 0.01, "amsgrad": True}, 3000),
        (RiemannianAdagrad, {"lr": 0.1}, 3000),
    ],
)
@pytest.mark.parametrize("retraction", ["cayley", "qr", "polar"])
def test_stiefel_trace_minimization_reaches_the_smallest_eigenvalues(
    cls, kwargs, steps, retraction
):
    # min tr(XᵀAX) over St(8, 3) = sum of the 3 smallest eigenvalues of A (Ky Fan).
    a = _spd(8)
    manifold = Stiefel(retraction)
    g = torch.Generator().manual_seed(1)
    x = ManifoldParameter(manifold.random(8, 3, generator=g, dtype=torch.float64), manifold)
    opt = cls([x], **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        torch.trace(x.T @ a @ x).backward()
        opt.step()
    expected = torch.linalg.eigvalsh(a)[:3].sum()
    value = torch.trace(x.T @ a @ x).detach()
    assert abs(float(value - expected)) < 1e-6
    assert manifold.check_point(x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam, RiemannianAdagrad])
def test_sphere_rayleigh_quotient_finds_the_bottom_eigenvector(cls):
    a = _spd(6, seed=2)
    x = _sphere_point(1, 6, seed=5)
    kwargs = {"lr": 0.05} | ({"momentum": 0.9} if cls is RiemannianSGD else {})
    opt = cls([x], **kwargs)
    for _ in range(3000):
        opt.zero_grad()
        (x @ a @ x.T).sum().backward()
        opt.step()
    evals, evecs = torch.linalg.eigh(a)
    point = x.detach().squeeze()
    assert abs(float(point @ a @ point) - float(evals[0])) < 1e-8
    assert abs(abs(float(point @ evecs[:, 0])) - 1) < 1e-6


@pytest.mark.parametrize("manifold", [PoincareBall(), PoincareBall(c=0.5), Lorentz(k=2.0)])
@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam])
def test_hyperbolic_distance_minimization_reaches_the_target(manifold, cls):
    g = torch.Generator().manual_seed(0)
    start = manifold.projx(0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64))
    target = manifold.projx(0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64))
    x = ManifoldParameter(start, manifold)
    opt = cls([x], lr=0.05, **({"momentum": 0.5} if cls is RiemannianSGD else {}))
    for _ in range(1500):
        opt.zero_grad()
        (manifold.dist(x, target) ** 2).sum().backward()
        opt.step()
    assert float(manifold.dist(x.detach(), target).max()) < 1e-5
    assert manifold.check_point(x, atol=1e-10, rtol=0)


def test_rsgd_momentum_on_the_sphere_matches_the_hand_written_recursion():
    x = _sphere_point(3, 4, seed=2)
    target = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    lr, m = 0.03, 0.8
    opt = RiemannianSGD([x], lr=lr, momentum=m, nesterov=True)
    ref = x.detach().clone()
    buf = None

    def proj(point, v):
        return v - (v * point).sum(-1, keepdim=True) * point

    for _ in range(30):
        opt.zero_grad()
        _wiggly_loss(x, target).backward()
        opt.step()
        grad = proj(ref, 2 * (ref - target) + 3 * torch.cos(3 * ref))
        buf = grad.clone() if buf is None else m * buf + grad
        direction = grad + m * buf
        new = ref - lr * direction
        new = new / new.norm(dim=-1, keepdim=True)
        buf = proj(new, buf)
        ref = new
    torch.testing.assert_close(x.detach(), ref, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ resume (item 13)
@pytest.mark.parametrize("name", ["rsgd", "radam", "ramsgrad", "radagrad"])
def test_state_dict_resume_is_bit_identical_and_loads_across_dtypes(name):
    hyper = {"rsgd": {"lr": 0.02, "momentum": 0.9}}.get(name, {"lr": 0.01})
    problem = torchvalley.testing.manifold_problem(torch.float64)
    opt = torchvalley.create_optimizer(name, problem.parameters(), **hyper)

    def run(optimizer, prob, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            prob.loss().backward()
            optimizer.step()

    run(opt, problem, 5)
    saved_model = copy.deepcopy(problem.model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    run(opt, problem, 5)
    straight = [p.detach().clone() for p in problem.parameters()]

    resumed = torchvalley.testing.manifold_problem(torch.float64)
    resumed.model.load_state_dict(saved_model)
    opt2 = torchvalley.create_optimizer(name, resumed.parameters(), **hyper)
    opt2.load_state_dict(saved_opt)
    run(opt2, resumed, 5)
    for a, b in zip(straight, resumed.parameters(), strict=True):
        assert torch.equal(a, b)

    # A float32 copy of the model accepts the float64 checkpoint (states are cast).
    single = torchvalley.testing.manifold_problem(torch.float32)
    opt3 = torchvalley.create_optimizer(name, single.parameters(), **hyper)
    opt3.load_state_dict(saved_opt)
    run(opt3, single, 2)
    for p in single.parameters():
        assert p.dtype == torch.float32 and bool(torch.isfinite(p).all())
        manifold = getattr(p, "manifold", None)
        if manifold is not None:
            assert manifold.check_point(p, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ drift (items 14-15)
_DRIFT_CASES = [
    (Sphere(), (100, 16)),
    (Oblique(), (10, 16)),
    (Stiefel("cayley"), (64, 16)),
    (Stiefel("qr"), (64, 16)),
    (Stiefel("polar"), (64, 16)),
    (Lorentz(), (100, 8)),
    (PoincareBall(), (100, 5)),
    (Product((Sphere(), 3), (Lorentz(), 3)), (20, 6)),
]


def _drift_run(manifold, shape, dtype, cls, steps, **kwargs):
    g = torch.Generator().manual_seed(0)
    start = manifold.random(*shape, generator=g, dtype=torch.float64)
    x = ManifoldParameter(start.to(dtype), manifold, project=True)
    target = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    extra = {"momentum": 0.9} if cls is RiemannianSGD else {}
    opt = cls([x], lr=1e-2, **extra, **kwargs)
    worst = 0.0
    for _ in range(steps):
        opt.zero_grad()
        _wiggly_loss(x, target).backward()
        opt.step()
        if kwargs.get("drift_tol") is not None:
            worst = max(worst, float(manifold.violation(x.detach())))
    assert bool(torch.isfinite(x).all())
    return opt.max_violation(), worst


def _drift_params(steps):
    return [
        pytest.param(
            m, s, cls, steps, id=f"{type(m).__name__}-{getattr(m, 'retraction', '')}-{cls.__name__}"
        )
        for m, s in _DRIFT_CASES
        for cls in (RiemannianSGD, RiemannianAdam)
    ]


@pytest.mark.parametrize(("manifold", "shape", "cls", "steps"), _drift_params(1000))
def test_float64_drift_is_below_1e10(manifold, shape, cls, steps):
    violation, _ = _drift_run(manifold, shape, torch.float64, cls, steps)
    assert violation <= 1e-10


@pytest.mark.slow
@pytest.mark.parametrize(("manifold", "shape", "cls", "steps"), _drift_params(10_000))
def test_float64_drift_is_below_1e10_after_10k_steps(manifold, shape, cls, steps):
    violation, _ = _drift_run(manifold, shape, torch.float64, cls, steps)
    assert violation <= 1e-10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("manifold", "shape"),
    [(Sphere(), (100, 16)), (Stiefel("qr"), (64, 16)), (Lorentz(), (100, 8))],
)
@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam])
def test_float32_drift_after_10k_steps(manifold, shape, cls):
    violation, _ = _drift_run(manifold, shape, torch.float32, cls, 10_000)
    assert violation <= 1e-6


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam])
def test_float32_cayley_drift_is_held_by_drift_tol(cls):
    # Cayley accumulates rounding (≈1e-5 after 10k float32 steps, as geoopt's RSGD); with
    # drift_tol the violation after *every* step stays below the tolerance, no SVD per step.
    steps = 2000
    cayley = Stiefel("cayley")  # (the default, QR, stays at rounding level without control)
    free, _ = _drift_run(cayley, (64, 16), torch.float32, cls, steps)
    held, worst = _drift_run(cayley, (64, 16), torch.float32, cls, steps, drift_tol=1e-6)
    assert worst <= 1e-6 and held <= 1e-6
    assert free > 1e-6 or cls is RiemannianSGD  # the control: RAdam drifts past it without


def test_stabilize_period_projects_point_and_moment():
    manifold = Stiefel()
    g = torch.Generator().manual_seed(0)
    x = ManifoldParameter(manifold.random(16, 4, generator=g), manifold)
    target = torch.randn(16, 4, generator=g)
    opt = RiemannianAdam([x], lr=1e-2, stabilize=50)
    calls: dict[str, int] = {"projx": 0, "reproject": 0}
    originals = {name: getattr(manifold, name) for name in calls}

    def counting(name):
        def wrapped(t):
            calls[name] += 1
            return originals[name](t)

        return wrapped

    try:
        for name in calls:
            setattr(manifold, name, counting(name))
        for _ in range(200):
            opt.zero_grad()
            _wiggly_loss(x, target).backward()
            opt.step()
    finally:
        for name in calls:
            delattr(manifold, name)
    # every 50 steps, not every step, and with the cheap Newton–Schulz step, not the SVD
    assert calls == {"projx": 0, "reproject": 4}
    assert manifold.check_vector(x, opt.state[x]["exp_avg"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stiefel_reproject_squares_the_violation(dtype):
    manifold = Stiefel()
    g = torch.Generator().manual_seed(0)
    x = manifold.random(5, 32, 8, generator=g, dtype=torch.float64)
    for scale in (1e-3, 1e-5):
        near = (x + scale * torch.randn(x.shape, generator=g, dtype=torch.float64)).to(dtype)
        before = float(manifold.violation(near.double()))
        after = float(manifold.violation(manifold.reproject(near).double()))
        floor = 50 * torch.finfo(dtype).eps
        # YᵀY − I = −¾E² + O(E³) and |(E²)ᵢⱼ| ≤ p·max|E|² (p = 8 columns)
        bound = max(8 * before**2, floor)
        assert after <= bound
        # and it lands next to the polar factor (the closest point), to second order
        gap = (manifold.reproject(near).double() - manifold.projx(near.double())).abs().max()
        assert float(gap) <= bound


# ------------------------------------------------------------- Poincaré boundary (item 16)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam])
def test_poincare_from_the_boundary_stays_finite_and_saturates(dtype, cls):
    # geoopt #227: NaN with RAdam near the boundary. Start on the projection boundary and push
    # outwards (maximize the distance to the origin) for 10k steps.
    ball = PoincareBall()
    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, 4, generator=g, dtype=torch.float64)
    start = start / start.norm(dim=-1, keepdim=True) * 10
    x = ManifoldParameter(ball.projx(start.to(dtype)), ball)
    opt = cls([x], lr=1e-2, maximize=True, **({"momentum": 0.9} if cls is RiemannianSGD else {}))
    for _ in range(10_000 if dtype == torch.float64 else 2_000):
        opt.zero_grad()
        ball.dist0(x).sum().backward()
        opt.step()
    assert bool(torch.isfinite(x).all())
    eps = boundary_eps(dtype)
    assert float(x.detach().norm(dim=-1).max()) <= 1 - eps + 4 * torch.finfo(dtype).eps
    saturation = 2 * math.atanh(1 - eps)
    assert abs(float(ball.dist0(x.detach().double()).max()) - saturation) < 1e-3 * saturation


def test_float32_hyperbolic_steps_are_computed_in_float64():
    ball = PoincareBall()
    g = torch.Generator().manual_seed(0)
    start = ball.projx(0.3 * torch.randn(8, 3, generator=g, dtype=torch.float64))
    target = ball.projx(0.3 * torch.randn(8, 3, generator=g, dtype=torch.float64))
    low = ManifoldParameter(start.float(), ball)
    high = ManifoldParameter(start.float().double(), ball)
    opt_low = RiemannianAdam([low], lr=1e-2)
    opt_high = RiemannianAdam([high], lr=1e-2)
    opt_low.zero_grad()
    opt_high.zero_grad()
    (ball.dist(low, target.float()) ** 2).sum().backward()
    (ball.dist(high, target.float().double()) ** 2).sum().backward()
    high.grad.copy_(low.grad.double())  # the same gradient; only the step precision differs
    opt_low.step()
    opt_high.step()
    assert low.dtype == torch.float32
    assert torch.equal(low.detach(), ball.projx(high.detach().float()))


# ----------------------------------------------------------------- lazy / sparse (item 11)
def _ball_rows(n=6, d=3, seed=0):
    ball = PoincareBall()
    g = torch.Generator().manual_seed(seed)
    return ball, ball.projx(0.3 * torch.randn(n, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_lazy_equals_dense_when_every_row_is_touched(amsgrad):
    ball, start = _ball_rows()
    target = ball.projx(0.3 * torch.randn(6, 3, generator=torch.Generator().manual_seed(1)))
    target = target.double()
    runs = []
    for lazy in (False, True):
        x = ManifoldParameter(start.clone(), ball)
        opt = RiemannianAdam([x], lr=1e-2, amsgrad=amsgrad, lazy=lazy)
        for _ in range(50):
            opt.zero_grad()
            (ball.dist(x, target) ** 2).sum().backward()
            opt.step()
        runs.append((x.detach(), opt))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=1e-12)
    state = runs[1][1].state[runs[1][1].param_groups[0]["params"][0]]
    assert state["step"].shape == (6,) and bool((state["step"] == 50).all())
    if amsgrad:
        assert bool((state["max_exp_avg_sq"] >= state["exp_avg_sq"]).all())


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam, RiemannianAdagrad])
def test_lazy_rows_follow_their_own_dense_trajectory(cls):
    # Row 0 is touched at every step, row 1 every third step, rows 2.. never: each touched row
    # must follow exactly the trajectory of a dense optimizer that sees only its own steps.
    ball, start = _ball_rows()
    target = ball.projx(torch.full((3,), 0.4, dtype=torch.float64))
    kwargs = {"lr": 0.05} | ({"momentum": 0.9} if cls is RiemannianSGD else {})
    x = ManifoldParameter(start.clone(), ball)
    opt = cls([x], lazy=True, **kwargs)
    singles = [ManifoldParameter(start[i : i + 1].clone(), ball) for i in (0, 1)]
    single_opts = [cls([s], **kwargs) for s in singles]
    for t in range(12):
        rows = [0] if t % 3 else [0, 1]
        opt.zero_grad()
        (ball.dist(x[rows], target) ** 2).sum().backward()
        opt.step()
        for i, (s, o) in enumerate(zip(singles, single_opts, strict=True)):
            if i in rows:
                o.zero_grad()
                (ball.dist(s, target) ** 2).sum().backward()
                o.step()
    for i, s in enumerate(singles):
        torch.testing.assert_close(x.detach()[i : i + 1], s.detach(), rtol=0, atol=1e-13)
    assert torch.equal(x.detach()[2:], start[2:])  # untouched rows never move
    if cls is not RiemannianSGD:
        assert opt.state[x]["step"].tolist() == [12.0, 4.0, 0.0, 0.0, 0.0, 0.0]


def test_sparse_embedding_gradients_are_accepted_on_manifold_parameters():
    ball, start = _ball_rows(10, 4)
    results = []
    for sparse in (False, True):
        emb = torch.nn.Embedding(10, 4, sparse=sparse, dtype=torch.float64)
        emb.weight = ManifoldParameter(start.clone(), ball)
        opt = RiemannianAdam(emb.parameters(), lr=1e-2, lazy=True)
        idx = torch.tensor([[1, 2], [3, 1], [7, 8]])
        for _ in range(5):
            opt.zero_grad()
            out = emb(idx)
            ball.dist(out[:, 0], out[:, 1]).sum().backward()
            opt.step()
        assert emb.weight.grad.is_sparse is sparse
        results.append(emb.weight.detach().clone())
    assert torch.equal(results[0], results[1])
    untouched = [0, 4, 5, 6, 9]
    assert torch.equal(results[1][untouched], start[untouched])


# ---------------------------------------------- products: factor batches and scalar factors (#19)
PRODUCT_SPLITS = [
    # (product, point shape, [(factor manifold, factor shape)]) -- the same factors as separate
    # parameters are the oracle: a product step is the factors' steps side by side.
    (
        Product((Sphere(), (3, 2)), (Euclidean(), 1)),
        (4, 7),
        [(Sphere(), (4, 3, 2)), (None, (4, 1))],
    ),
    (Product((Sphere(), 3), (Euclidean(), ())), (4,), [(Sphere(), (3,)), (None, ())]),
    (
        Product((Lorentz(), (2, 3)), (Sphere(), 2)),
        (3, 8),
        [(Lorentz(), (3, 2, 3)), (Sphere(), (3, 2))],
    ),
]


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam, RiemannianAdagrad])
@pytest.mark.parametrize(("product", "shape", "pieces"), PRODUCT_SPLITS)
def test_product_step_is_the_factor_steps_side_by_side(cls, product, shape, pieces):
    """Before: RAdam/RAdagrad raised a shape error on a factor with its own batch of points and
    every method failed on an unbatched point with a scalar factor."""
    g = torch.Generator().manual_seed(0)
    x0 = product.random(*shape, generator=g, dtype=torch.float64)
    whole = ManifoldParameter(x0.clone(), product)
    parts = [
        ManifoldParameter(p.clone(), m) if m is not None else torch.nn.Parameter(p.clone())
        for (m, _), p in zip(pieces, product._split(x0), strict=True)
    ]
    hp = {"lr": 0.05, "momentum": 0.9} if cls is RiemannianSGD else {"lr": 0.05}
    opt_whole, opt_parts = cls([whole], **hp), cls(parts, **hp)
    for _ in range(5):
        grad = torch.randn(shape, generator=g, dtype=torch.float64)
        whole.grad = grad
        for p, gp in zip(parts, product._split(grad), strict=True):
            p.grad = gp.clone()
        opt_whole.step()
        opt_parts.step()
    expected = product._join([p.detach() for p in parts])
    torch.testing.assert_close(whole.detach(), expected, rtol=1e-10, atol=1e-12)
