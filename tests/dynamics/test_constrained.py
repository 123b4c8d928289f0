"""CoLA (constrained Langevin): reductions, residuals, validation, the helper, conformance.

Oracles: BAOAB / SGLD (bit for bit, no constrained groups), a heavy-ball recursion written out
(norm constraint with a radius far beyond the weights), a textbook RATTLE step with the
multiplier found by Newton's method on the dense Kronecker Jacobian (orthogonal, T = 0), the
overdamped scheme (friction -> infinity), and the conformance suite on an orthogonal problem.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import torchvalley
from torchvalley.dynamics import ConstrainedLangevin, constrain_model
from torchvalley.dynamics.constrained import constraint_residual, rattle_solve
from torchvalley.manifolds import Stiefel
from torchvalley.testing.conformance import problems
from torchvalley.testing.conformance.suite import run_conformance

F64 = torch.float64


def _net(seed: int = 0, dtype=F64) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 6),
        torch.nn.Tanh(),
        torch.nn.Linear(6, 3),
    )
    return net.to(dtype)


def _data(dtype=F64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=g, dtype=dtype), torch.randn(
        32, 3, generator=g, dtype=dtype
    )


def _train(net, opt, steps, dtype=F64):
    x, y = _data(dtype)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def _clone(net: torch.nn.Module) -> torch.nn.Module:
    other = _net(99)
    other.load_state_dict(net.state_dict())
    return other


# ------------------------------------------------------------------ reductions
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_no_constrained_groups_ud_equals_baoab_bitwise(dtype) -> None:
    a = _net(dtype=dtype)
    b = _clone(a).to(dtype)
    kw = {"lr": 0.05, "friction": 2.0, "temperature": 1e-2, "seed": 7}
    opt_a = torchvalley.create_optimizer("cola_ud", a.parameters(), constraint=None, **kw)
    opt_b = torchvalley.create_optimizer("baoab", b.parameters(), **kw)
    _train(a, opt_a, 30, dtype)
    _train(b, opt_b, 30, dtype)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_no_constrained_groups_od_equals_sgld_bitwise() -> None:
    a = _net()
    b = _clone(a)
    kw = {"lr": 0.02, "temperature": 1e-2, "seed": 3}
    opt_a = torchvalley.create_optimizer(
        "cola_od", [{"params": list(a.parameters()), "constraint": None}], **kw
    )
    opt_b = torchvalley.create_optimizer("sgld", b.parameters(), **kw)
    _train(a, opt_a, 30)
    _train(b, opt_b, 30)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_norm_constraint_far_radius_at_zero_temperature_is_sgd_momentum() -> None:
    # |w| <= 1 and r = 1e5: the constraint's forces are O(w**2 / r**2) = 1e-10, so c-CoLA at
    # T = 0 is BAOAB's heavy-ball recursion (parameters.py): after the first step (its half
    # kick, theta_1 = theta_0 - h**2 (1 + mu) / 4 g_0) theta_{k+1} = theta_k +
    # mu (theta_k - theta_{k-1}) - eta g_k, mu = exp(-gamma h), eta = h**2 (1 + mu) / 2.
    h, gamma = 0.3, 0.7
    mu, eta = math.exp(-gamma * h), h * h * (1 + math.exp(-gamma * h)) / 2
    target = torch.linspace(-0.5, 0.5, 12, dtype=F64).reshape(3, 4)
    theta = torch.nn.Parameter(torch.linspace(0.9, -0.8, 12, dtype=F64).reshape(3, 4))

    def grad(t):
        return 2 * (t - target) + 3 * torch.sin(3 * t)

    opt = ConstrainedLangevin(
        [{"params": [theta], "constraint": "norm", "radius": 1e5}],
        lr=h,
        friction=gamma,
        temperature=0.0,
    )
    previous = theta.detach().clone()
    oracle = previous - h * h * (1 + mu) / 4 * grad(previous)
    for k in range(40):
        theta.grad = grad(theta.detach())
        opt.step()
        if k:
            oracle, previous = oracle + mu * (oracle - previous) - eta * grad(oracle), oracle
        torch.testing.assert_close(theta.detach(), oracle, rtol=0, atol=1e-8)


def _rattle_oracle(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W' = Y + W L, L symmetric, W'^T W' = I: Newton on the m(m+1)/2 unknowns with the dense
    Jacobian from autograd (independent of the SHAKE iteration under test)."""
    m = w.shape[1]
    rows, cols = torch.triu_indices(m, m)

    def residual(v):
        lam = torch.zeros(m, m, dtype=F64)
        lam = lam.index_put((rows, cols), v).index_put((cols, rows), v)
        new = y + w @ lam
        return (new.T @ new - torch.eye(m, dtype=F64))[rows, cols]

    v = torch.zeros(rows.numel(), dtype=F64)
    for _ in range(30):
        r = residual(v)
        if float(r.abs().max()) < 1e-15:
            break
        v = v - torch.linalg.solve(torch.autograd.functional.jacobian(residual, v), r)
    lam = torch.zeros(m, m, dtype=F64).index_put((rows, cols), v).index_put((cols, rows), v)
    return y + w @ lam


def test_orthogonal_zero_temperature_is_constrained_heavy_ball_rattle() -> None:
    # T = 0: c-CoLA-ud is constrained SGD with momentum, i.e. BAOAB at T = 0 with projected
    # kicks and RATTLE drifts; the oracle writes that step out with its own multiplier solve.
    h, gamma = 0.2, 1.5
    c = math.exp(-gamma * h)
    g = torch.Generator().manual_seed(2)
    target = torch.randn(5, 3, generator=g, dtype=F64)
    w0 = Stiefel().random(5, 3, generator=g, dtype=F64)
    weight = torch.nn.Parameter(w0.clone())
    opt = ConstrainedLangevin(
        [{"params": [weight], "constraint": "orthogonal"}], lr=h, friction=gamma, temperature=0
    )

    def grad(t):
        return t - target + 0.5 * t**3

    def proj(x, u):
        return u - x @ ((x.T @ u + u.T @ x) / 2)

    def rattle(x, p, t):
        y = x + t * p
        new = _rattle_oracle(x, y)
        return new, proj(new, p + (new - y) / t)

    x, p, owed = w0.clone(), torch.zeros_like(w0), 0.0
    for _ in range(25):
        gx = grad(x)
        weight.grad = grad(weight.detach())
        opt.step()
        p = proj(x, p - (owed + h / 2) * gx)
        x, p = rattle(x, p, h / 2)
        p = proj(x, c * p)
        x, p = rattle(x, p, h / 2)
        owed = h / 2
        torch.testing.assert_close(weight.detach(), x, rtol=0, atol=1e-11)
    assert constraint_residual(weight.detach()) < 1e-13


def test_large_friction_underdamped_approaches_overdamped() -> None:
    # gamma -> inf, T = 0: O sets p = 0, so a step of cola_ud moves theta by the RATTLE drift
    # of -(h/2) * h Pi G, the constrained gradient step of cola_od with lr = h**2 / 2 (the
    # multiplier absorbs the difference between Pi G and G). After the first step (a half
    # kick) the two agree up to rounding.
    h = 0.2
    net_ud = _net(3)
    groups = constrain_model(net_ud, "orthogonal")
    ud = ConstrainedLangevin(groups, lr=h, friction=1e6, temperature=0.0)
    _train(net_ud, ud, 1)
    net_od = _clone(net_ud)
    od_groups = constrain_model(net_od, "orthogonal")
    assert all(
        torch.equal(p, q) for p, q in zip(net_ud.parameters(), net_od.parameters(), strict=True)
    )
    od = ConstrainedLangevin(od_groups, lr=h * h / 2, temperature=0.0, dynamics="overdamped")
    _train(net_ud, ud, 30)
    _train(net_od, od, 30)
    for p, q in zip(net_ud.parameters(), net_od.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ residuals
@pytest.mark.parametrize("dynamics", ["underdamped", "overdamped"])
def test_float64_residual_every_step(dynamics) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).double()  # 4 x 27: wide, W W^T = I
    tall = torch.nn.Linear(3, 9).double()  # 9 x 3: tall
    square = torch.nn.Linear(5, 5).double()
    weights = [conv.weight, tall.weight, square.weight]
    groups = constrain_model(torch.nn.ModuleList([torch.nn.Linear(1, 1), conv, tall, square]))
    opt = ConstrainedLangevin(
        groups, lr=0.05, friction=1.0, temperature=0.05, dynamics=dynamics, seed=1
    )
    g = torch.Generator().manual_seed(5)
    worst, most = 0.0, 0
    for _ in range(120):
        for w in weights:
            w.grad = torch.randn(w.shape, generator=g, dtype=F64)
        opt.step()
        report = opt.diagnostics()[0]
        worst, most = max(worst, report["residual"]), max(most, report["iterations"])
        for w in weights:
            assert constraint_residual(Stiefel(flatten=True)._tall(w.detach())) <= 1e-12
    assert worst <= 1e-12 and report["fallbacks"] == 0 and 1 <= most <= 40


def test_rattle_solve_matches_newton_oracle_and_reports_fallback() -> None:
    g = torch.Generator().manual_seed(3)
    x = Stiefel().random(6, 3, generator=g, dtype=F64)
    p = torch.randn(6, 3, generator=g, dtype=F64)
    p = p - x @ ((x.T @ p + p.T @ x) / 2)
    y = x + 0.05 * p
    w, iterations, residual, fallbacks = rattle_solve(x[None], y[None], 1e-13, 100)
    torch.testing.assert_close(w[0], _rattle_oracle(x, y), rtol=0, atol=1e-12)
    assert residual <= 1e-13 and fallbacks == 0 and iterations >= 2
    # a step of length ~ the matrix itself: the iteration diverges, the polar factor is used
    far = x + 5.0 * p
    w, _, residual, fallbacks = rattle_solve(x[None], far[None], 1e-13, 100)
    assert fallbacks == 1 and residual <= 1e-13


def test_norm_constraint_keeps_weights_on_circle_and_bounded() -> None:
    net = _net(4)
    groups = constrain_model(net, "norm", radius=0.4, first_radius=0.6, clip=True)
    assert [g.get("radius") for g in groups] == [0.6, 0.4, None]
    opt = ConstrainedLangevin(groups, lr=0.1, friction=1.0, temperature=1e-2, seed=2)
    _train(net, opt, 200)
    for group in groups[:2]:
        for p in group["params"]:
            xi = opt.state[p]["xi"]
            assert float(p.detach().abs().max()) <= group["radius"]
            circle = (p.detach() ** 2 + xi**2) / group["radius"] ** 2 - 1
            assert float(circle.abs().max()) < 1e-14
    assert opt.diagnostics()[0]["residual"] < 1e-14


# ------------------------------------------------------------------ validation and helper
def test_value_errors() -> None:
    net = _net()
    weight = net[2].weight
    with pytest.raises(ValueError, match="Invalid constraint"):
        ConstrainedLangevin([{"params": [weight], "constraint": "stiefel"}])
    with pytest.raises(ValueError, match="Invalid radius"):
        ConstrainedLangevin([{"params": [weight], "constraint": "norm", "radius": 0.0}])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ConstrainedLangevin([{"params": [net[2].bias], "constraint": "orthogonal"}])
    with pytest.raises(ValueError, match=r"off the orthogonality constraint.*constrain_model"):
        ConstrainedLangevin([{"params": [weight], "constraint": "orthogonal"}])
    with pytest.raises(ValueError, match=r"Invalid radius.*clip"):
        ConstrainedLangevin([{"params": [weight], "constraint": "norm", "radius": 1e-3}])
    with pytest.raises(ValueError, match="float32/float64"):
        half = torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.bfloat16))
        ConstrainedLangevin([{"params": [half], "constraint": "norm"}])
    with pytest.raises(ValueError, match="optimizer-wide"):
        ConstrainedLangevin([{"params": [weight], "seed": 3}])
    with pytest.raises(ValueError, match="Invalid dynamics"):
        ConstrainedLangevin([weight], dynamics="brownian")
    with pytest.raises(ValueError, match="Invalid constraint"):
        constrain_model(net, "sphere")
    with pytest.raises(ValueError, match=r"Invalid radius.*clip=True"):
        constrain_model(net, "norm", radius=1e-3)
    # changing the constraint set after the auxiliary coordinates exist
    groups = constrain_model(net, "norm", radius=2.0)
    opt = ConstrainedLangevin(groups, lr=0.01)
    _train(net, opt, 1)
    opt.param_groups[0]["radius"] = 3.0
    with pytest.raises(ValueError, match="build a new optimizer"):
        _train(net, opt, 1)


def test_constrain_model_groups_and_idempotence() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 4, 3),
        torch.nn.BatchNorm1d(4),
        torch.nn.Conv1d(4, 6, 3),  # 6 x 12: wide
        torch.nn.Flatten(),
        torch.nn.Linear(12, 20),  # 20 x 12: tall
    ).double()
    first = net[0].weight.detach().clone()
    groups = constrain_model(net, "orthogonal", method="polar")
    assert [len(g["params"]) for g in groups] == [2, 6]
    assert groups[0]["params"] == [net[2].weight, net[4].weight]
    assert torch.equal(net[0].weight, first)  # the first layer stays as it was
    w = net[2].weight.detach().reshape(6, 12)
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=F64), rtol=0, atol=1e-13)
    before = [p.detach().clone() for p in net.parameters()]
    constrain_model(net, "orthogonal")  # already on the set: bit-identical
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    # QR: the Q factor with a positive diagonal of R (the reference's initOG)
    other = torch.nn.Linear(3, 7).double()
    weight = other.weight.detach().clone()
    constrain_model(torch.nn.Sequential(torch.nn.Linear(1, 1).double(), other))
    q, r = torch.linalg.qr(weight)
    torch.testing.assert_close(other.weight.detach(), q * torch.sign(torch.diagonal(r)))


def test_factory_with_model_builds_paper_groups() -> None:
    net = _net()
    opt = torchvalley.create_optimizer("cola_ud", net.parameters(), model=net, lr=0.05)
    constraints = [g["constraint"] for g in opt.param_groups]
    assert constraints == ["orthogonal", None]
    assert opt.param_groups[0]["params"] == [net[2].weight, net[4].weight]
    _train(net, opt, 5)
    opt = torchvalley.create_optimizer(
        "cola_od", net.parameters(), model=net, constraint="norm", radius=0.05
    )
    assert float(net[0].weight.detach().abs().max()) <= 0.05  # clipped onto |w| <= r
    with pytest.raises(ValueError, match="orthogonal"):
        torchvalley.create_optimizer("cola_ud", net.parameters())  # no model: all orthogonal


def test_state_dict_resume_is_bit_exact_with_aux_coordinates() -> None:
    def build(net):
        groups = constrain_model(net, "norm", radius=2.0)
        return ConstrainedLangevin(groups, lr=0.05, temperature=1e-2, seed=4)

    net = _net(5)
    opt = build(net)
    _train(net, opt, 5)
    saved, weights = copy.deepcopy(opt.state_dict()), _clone(net).state_dict()
    assert {"momentum", "xi", "xi_momentum"} <= set(saved["state"][0])
    _train(net, opt, 5)
    other = _net(6)
    other.load_state_dict(weights)
    resumed = build(other)
    resumed.load_state_dict(saved)
    _train(other, resumed, 5)
    for p, q in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ conformance on o-CoLA
class _OrthogonalModel(torch.nn.Module):
    """Three weights on their orthogonality sets (tall, wide, square) and an unconstrained
    first layer: every tensor of a flat list, and every explicit group, can be orthogonal."""

    def __init__(self, dtype, with_unused, generator):
        super().__init__()

        def on(*shape):
            point = Stiefel(flatten=True).projx(torch.randn(*shape, generator=generator, dtype=F64))
            return torch.nn.Parameter(point.to(dtype))

        self.w1 = on(6, 4)
        self.w2 = on(3, 6)
        self.w3 = on(3, 3)
        self.unused = on(2, 3) if with_unused else None

    def forward(self, x):
        return torch.tanh(torch.tanh(x @ self.w1) @ self.w2.T[:4]) @ self.w3


def _orthogonal_problem(dtype=torch.float32, *, with_unused=False):
    generator = torch.Generator().manual_seed(0)
    model = _OrthogonalModel(dtype, with_unused, generator)
    inputs = torch.randn(16, 6, generator=generator, dtype=F64).to(dtype)
    targets = torch.randn(16, 3, generator=generator, dtype=F64).to(dtype)

    def loss_fn(module):
        return torch.nn.functional.mse_loss(module(inputs), targets)

    return problems.Problem(model, loss_fn, unused=("unused",) if with_unused else ())


@pytest.mark.parametrize("name", ["cola_ud", "cola_od"])
def test_conformance_on_orthogonal_problem(name) -> None:
    entry = torchvalley.get_optimizer_entry(name)
    example = {**entry.example, "constraint": "orthogonal"}
    example.pop("radius")
    group_example = {k: v for k, v in entry.group_example.items() if k in ("lr", "temperature")}
    group_example["temperature"] = 0.05
    entry = dataclasses.replace(entry, example=example, group_example=group_example)
    counts = run_conformance(entry, make_problem=_orthogonal_problem)
    assert counts["passed"] >= 10


def test_stalled_shake_switches_to_newton(monkeypatch) -> None:
    # A long overdamped-like step on a 3 x 3 (square) weight: the SHAKE update stalls, Newton's
    # method finds the multiplier (the dense oracle's), no polar fallback; without Newton the
    # same solve falls back.
    from torchvalley.dynamics import constrained

    g = torch.Generator().manual_seed(4)
    x = Stiefel().random(3, 3, generator=g, dtype=F64)
    y = x + 0.5 * torch.randn(3, 3, generator=g, dtype=F64)
    w, _, residual, fallbacks = rattle_solve(x[None], y[None], 1e-13, 100)
    assert fallbacks == 0 and residual <= 1e-13
    torch.testing.assert_close(w[0], _rattle_oracle(x, y), rtol=0, atol=1e-12)
    monkeypatch.setattr(constrained, "NEWTON_MAX_SIZE", 0)
    assert rattle_solve(x[None], y[None], 1e-13, 100)[3] == 1
