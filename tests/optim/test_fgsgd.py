"""FG-SGD (torchvalley.optim.fgsgd) against independent oracles.

Oracles: the manifold constraints written out by hand (row/column norms, WᵀW = r²I),
``torch.optim.SGD`` for the unconstrained parameters, a hand-written Riemannian SGD with momentum
on the sphere, the closed-form optimum of a linear function on the sphere, and an uninterrupted
run for the state_dict round trip.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import torchvalley
from torchvalley import ManifoldParameter
from torchvalley.manifolds import Sphere, Stiefel
from torchvalley.optim.fgsgd import (
    DEFAULT_STEP_BOUND,
    FGSGD,
    FGManifold,
    fg_manifold,
    renormalize_weights,
)

# (weight shape, constraint, grouping) combinations that are meaningful.
CASES = [
    ((5, 7), "sphere", "PO"),
    ((5, 7), "sphere", "PI"),
    ((4, 3, 3, 3), "sphere", "PIO"),
    ((4, 3, 3, 3), "sphere", "PO"),
    ((6, 4), "oblique", "PO"),
    ((4, 3, 3), "oblique", "PI"),
    ((4, 3, 3, 3), "oblique", "PIO"),
    ((3, 8), "stiefel", "PO"),
    ((8, 3), "stiefel", "PO"),
    ((4, 2, 3, 3), "stiefel", "PI"),
]


def _violation(manifold: FGManifold, w: torch.Tensor, radius: torch.Tensor) -> float:
    """How far ``w / radius`` is from the manifold, with the constraint written out by hand."""
    out, inp = w.shape[:2]
    if manifold.grouping == "PO":
        view = w.reshape(out, -1)
    elif manifold.grouping == "PI":
        view = w.transpose(0, 1).reshape(inp, -1)
    else:
        view = w.reshape(out * inp, -1)
    x = view / radius
    if manifold.constraint == "sphere":
        return float((x.norm(dim=1) - 1).abs().max())
    if manifold.constraint == "oblique":
        return float((x.norm(dim=0) - 1).abs().max())
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return float((gram - torch.eye(gram.shape[0], dtype=x.dtype)).abs().max())


def _random_loss_steps(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(
            (p * torch.randn(p.shape, generator=gen, dtype=p.dtype)).sum() + p.pow(4).sum()
            for p in params
        )
        loss.backward()
        opt.step()


# ------------------------------------------------------------------------------- (a) on manifold


@pytest.mark.parametrize(("shape", "constraint", "grouping"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_constrained_weights_stay_on_scaled_manifold(
    shape: tuple[int, ...], constraint: str, grouping: str, dtype: torch.dtype, tol: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype))
    b = nn.Parameter(torch.randn(shape[0], generator=gen, dtype=dtype))
    opt = FGSGD(
        [w, b], lr=0.1, momentum=0.9, nesterov=True, constraint=constraint, grouping=grouping
    )
    _random_loss_steps(opt, [w, b], steps=60, seed=1)
    manifold = fg_manifold(shape, constraint, grouping)
    radius = opt.state[w]["radius"]
    assert radius.dtype == dtype
    assert _violation(manifold, w.detach(), radius) <= tol
    assert manifold.check_point(w.detach() / manifold.from_view(radius.expand(manifold.view_shape)))
    # the momentum buffer is tangent at the point
    x = manifold.from_view(manifold.to_view(w.detach()) / radius)
    assert manifold.check_vector(x, opt.state[w]["momentum_buffer"], atol=tol * 10, rtol=0)


def test_default_radius_is_initial_group_norm_and_fixed() -> None:
    gen = torch.Generator().manual_seed(3)
    w = nn.Parameter(torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64))
    initial = w.detach().flatten(1).norm(dim=1)
    opt = FGSGD([w], lr=0.2, momentum=0.5)
    _random_loss_steps(opt, [w], steps=20, seed=4)
    torch.testing.assert_close(w.detach().flatten(1).norm(dim=1), initial, rtol=0, atol=1e-12)
    torch.testing.assert_close(opt.state[w]["radius"].flatten(), initial, rtol=0, atol=0)


def test_given_radius_projects_first() -> None:
    gen = torch.Generator().manual_seed(5)
    w = nn.Parameter(torch.randn(6, 4, generator=gen, dtype=torch.float64))
    opt = FGSGD([w], lr=0.0, constraint="oblique", radius=2.0)
    w.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(
        w.detach().norm(dim=0), torch.full((4,), 2.0, dtype=torch.float64), rtol=0, atol=1e-12
    )


# ----------------------------------------------------------------- (b) unconstrained == torch SGD


@pytest.mark.parametrize(
    "hyper",
    [
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.05, "momentum": 0.7, "weight_decay": 0.01, "maximize": True},
    ],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_unconstrained_parameters_match_torch_sgd_bitwise(
    hyper: dict[str, float], foreach: bool
) -> None:
    gen = torch.Generator().manual_seed(7)
    shapes = [(5,), (3,), (4, 2)]  # the 2-D one in a constraint="none" group
    base = [torch.randn(s, generator=gen) for s in shapes]
    ours = [nn.Parameter(t.clone()) for t in base]
    ref = [nn.Parameter(t.clone()) for t in base]
    opt = FGSGD(
        [{"params": ours[:2]}, {"params": ours[2:], "constraint": "none"}],
        foreach=foreach,
        **hyper,
    )
    ref_opt = torch.optim.SGD(ref, foreach=foreach, **hyper)
    for step in range(6):
        data = torch.randn(3, generator=gen)
        for params, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            (params[0][:3] * data).sum().mul(step + 1).backward(retain_graph=False)
            (params[1] ** 2 * data).sum().backward()
            params[2].pow(3).sum().backward()
            o.step()
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b)
    if "momentum" in hyper:
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"])


# ------------------------------------------------------------ (c) hand-computed Riemannian SGD


def _hand_rsgd_sphere(
    x: torch.Tensor, grads: list[torch.Tensor], lr: float, mu: float, nesterov: bool
) -> torch.Tensor:
    """Riemannian SGD with momentum on unit rows: projection, (x+u)/‖x+u‖, projection transport."""

    def proj(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v - (x * v).sum(-1, keepdim=True) * x

    buf = None
    for g in grads:
        rgrad = proj(x, g)
        buf = rgrad.clone() if buf is None else mu * buf + rgrad
        d = rgrad + mu * buf if nesterov else buf
        y = x - lr * d
        y = y / y.norm(dim=-1, keepdim=True)
        buf = proj(y, buf)
        x = y
    return x


@pytest.mark.parametrize("nesterov", [False, True])
def test_manifold_parameter_on_sphere_matches_hand_computed_rsgd(nesterov: bool) -> None:
    gen = torch.Generator().manual_seed(11)
    x0 = Sphere().random(4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(5)]
    p = ManifoldParameter(x0.clone(), Sphere())
    opt = FGSGD([p], lr=0.3, momentum=0.9, nesterov=nesterov, step_bound=None)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _hand_rsgd_sphere(x0, grads, 0.3, 0.9, nesterov)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)
    assert "radius" not in opt.state[p]


def test_renormalized_weight_matches_hand_computed_rsgd_with_radius() -> None:
    gen = torch.Generator().manual_seed(12)
    w0 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(5)]
    w = nn.Parameter(w0.clone())
    opt = FGSGD([w], lr=0.2, momentum=0.9, radius=2.0, step_bound=math.inf)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    # x = W / r with the gradient r·g with respect to x
    x0 = w0 / w0.norm(dim=1, keepdim=True)
    expected = 2.0 * _hand_rsgd_sphere(x0, [2.0 * g for g in grads], 0.2, 0.9, False)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------- (d) step bound


@pytest.mark.parametrize("bound", [DEFAULT_STEP_BOUND, 0.1])
def test_huge_gradient_moves_each_group_at_most_step_bound(bound: float) -> None:
    gen = torch.Generator().manual_seed(13)
    x0 = Sphere().random(6, 5, generator=gen, dtype=torch.float64)
    p = ManifoldParameter(x0.clone(), Sphere())
    w = nn.Parameter(3.0 * torch.randn(6, 5, generator=gen, dtype=torch.float64))
    w0 = w.detach().clone()
    opt = FGSGD([p, w], lr=1.0, step_bound=bound)
    p.grad = 1e8 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    w.grad = 1e8 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    opt.step()
    moved = Sphere().dist(x0, p.detach())
    assert bool((moved <= bound + 1e-12).all())
    assert float(moved.max()) > 0.5 * bound  # the bound, not the gradient, set the step
    r = w0.norm(dim=1, keepdim=True)
    moved_w = Sphere().dist(w0 / r, w.detach() / r)
    assert bool((moved_w <= bound + 1e-12).all())
    # the bound is per group: a row with a tiny gradient takes the plain lr step
    q = ManifoldParameter(x0.clone(), Sphere())
    opt = FGSGD([q], lr=0.01, step_bound=bound)
    g = torch.zeros(6, 5, dtype=torch.float64)
    g[0] = 1e8
    g[1] = 1e-3
    q.grad = g
    opt.step()
    expected_row1 = Sphere().retr(x0[1], -0.01 * Sphere().proju(x0[1], g[1]))
    torch.testing.assert_close(q.detach()[1], expected_row1, rtol=0, atol=1e-15)


def test_step_bound_is_per_group_on_renormalized_manifold_parameters() -> None:
    model = _small_cnn()
    renormalize_weights(model, "sphere", "PO")
    bar = model[3].parametrizations.weight.original
    before = bar.detach().clone()
    opt = FGSGD([bar], lr=1.0, step_bound=0.2)
    bar.grad = 1e8 * torch.randn(bar.shape, generator=torch.Generator().manual_seed(3)).double()
    opt.step()
    moved = Sphere().dist(before, bar.detach())
    assert bool((moved <= 0.2 + 1e-12).all())
    assert float(moved.min()) > 0.1


# ------------------------------------------------------------------ (e) convex problem on sphere


def test_linear_objective_on_sphere_converges_to_closed_form_optimum() -> None:
    gen = torch.Generator().manual_seed(17)
    a = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    w = nn.Parameter(torch.randn(1, 6, generator=gen, dtype=torch.float64))
    opt = FGSGD([w], lr=0.1, momentum=0.9, radius=1.0)
    for _ in range(600):
        opt.zero_grad()
        (-(a * w).sum()).backward()
        opt.step()
    torch.testing.assert_close(w.detach(), a / a.norm(), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------- (f) Stiefel invariant


@pytest.mark.parametrize(
    ("shape", "grouping", "gram"),
    [
        ((3, 8), "PO", lambda w: w @ w.T),  # wide: orthonormal rows (filters)
        ((8, 3), "PO", lambda w: w.T @ w),  # tall: orthonormal columns
        ((4, 2, 3, 3), "PO", lambda w: w.flatten(1) @ w.flatten(1).T),
        ((8, 3), "PI", lambda w: w.T @ w),  # PI view Wᵀ (3, 8): orthonormal rows
    ],
)
def test_stiefel_keeps_scaled_orthonormality(shape, grouping, gram) -> None:
    gen = torch.Generator().manual_seed(19)
    w = nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
    singular = torch.linalg.svdvals(w.detach().flatten(1))
    opt = FGSGD([w], lr=0.05, momentum=0.9, constraint="stiefel", grouping=grouping)
    _random_loss_steps(opt, [w], steps=40, seed=20)
    r = float(opt.state[w]["radius"])
    assert r == pytest.approx(float(singular.mean()), rel=1e-12)
    g = gram(w.detach())
    torch.testing.assert_close(g, r * r * torch.eye(g.shape[0], dtype=g.dtype), rtol=0, atol=1e-10)
    assert torch.linalg.matrix_norm(w.detach().flatten(1), ord=2) == pytest.approx(r, rel=1e-10)


# ------------------------------------------------------------------- (g) renormalize_weights


def _small_cnn() -> nn.Module:
    torch.manual_seed(23)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Embedding(3, 2)
    ).double()


def _cnn_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model[3](model[2](model[1](model[0](x))))


@pytest.mark.parametrize(("constraint", "grouping"), [("sphere", "PO"), ("oblique", "PI")])
def test_renormalize_weights_preserves_forward(constraint: str, grouping: str) -> None:
    model = _small_cnn()
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = _cnn_forward(model, x)
    names = renormalize_weights(model, constraint, grouping)
    assert names == ["0.weight", "3.weight"]
    torch.testing.assert_close(_cnn_forward(model, x), before, rtol=1e-12, atol=1e-12)
    bars = [p for p in model.parameters() if isinstance(p, ManifoldParameter)]
    assert [tuple(p.shape) for p in bars] == [(4, 2, 3, 3), (5, 64)]
    assert all(p.manifold == fg_manifold(p.shape, constraint, grouping) for p in bars)
    assert not isinstance(model[4].weight, ManifoldParameter)


def test_renormalized_model_trains_on_manifold() -> None:
    model = _small_cnn()
    renormalize_weights(model, "sphere", "PO")
    radii = [model[i].parametrizations.weight[0].radius.clone() for i in (0, 3)]
    bars = [model[i].parametrizations.weight.original for i in (0, 3)]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    # rsgd-style steps by hand: W̄ ← R(W̄, −lr · rgrad)
    for _ in range(10):
        model.zero_grad()
        _cnn_forward(model, x).pow(2).sum().backward()
        with torch.no_grad():
            for p in bars:
                p.copy_(p.manifold.retr(p, -0.1 * p.manifold.egrad2rgrad(p, p.grad)))
    assert all(p.manifold.check_point(p.detach(), atol=1e-12, rtol=0) for p in bars)
    # FG-SGD on the converted model: the ManifoldParameters keep their manifold, no radius
    opt = FGSGD(model.parameters(), lr=0.1, momentum=0.9, model=model)
    for _ in range(10):
        opt.zero_grad()
        _cnn_forward(model, x).pow(2).sum().backward()
        opt.step()
    assert all(p.manifold.check_point(p.detach(), atol=1e-12, rtol=0) for p in bars)
    assert all("radius" not in opt.state[p] for p in bars)
    for i, r in zip((0, 3), radii, strict=True):
        w = model[i].weight.detach().flatten(1)
        torch.testing.assert_close(w.norm(dim=1, keepdim=True), r, rtol=0, atol=1e-12)


# ------------------------------------------------------------- which parameters are constrained


def test_model_restricts_constraint_to_linear_and_conv_weights() -> None:
    model = _small_cnn()
    emb = model[4].weight.detach().clone()
    opt = FGSGD(model.parameters(), lr=0.1, model=model)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    (_cnn_forward(model, x).pow(2).sum() + model[4](torch.tensor([0, 2])).sum()).backward()
    opt.step()
    assert "radius" in opt.state[model[0].weight]
    assert "radius" in opt.state[model[3].weight]
    assert "radius" not in opt.state[model[4].weight]
    assert "radius" not in opt.state[model[0].bias]
    expected = emb.clone()
    expected[[0, 2]] -= 0.1
    torch.testing.assert_close(model[4].weight.detach(), expected, rtol=0, atol=0)
    # without a model every >= 2-dim parameter is constrained
    opt = FGSGD(model.parameters(), lr=0.1)
    (model[4](torch.tensor([1])).sum()).backward()
    opt.step()
    assert "radius" in opt.state[model[4].weight]


# ----------------------------------------------------------------- (h) invalid hyperparameters


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lr", -1.0),
        ("momentum", 1.0),
        ("weight_decay", float("nan")),
        ("constraint", "ball"),
        ("grouping", "PX"),
        ("radius", 0.0),
        ("step_bound", -1.0),
        ("nesterov", "yes"),
        ("maximize", 1),
        ("foreach", "no"),
    ],
)
def test_invalid_hyperparameters_raise_naming_them(name: str, value: object) -> None:
    w = nn.Parameter(torch.randn(3, 4))
    with pytest.raises(ValueError, match=name):
        FGSGD([w], **{name: value})
    with pytest.raises(ValueError, match=name):
        FGSGD([{"params": [w], name: value}])
    with pytest.raises(ValueError, match=name):
        torchvalley.create_optimizer("fgsgd", [w], **{name: value})


def test_nesterov_without_momentum_is_refused() -> None:
    with pytest.raises(ValueError, match="nesterov"):
        FGSGD([nn.Parameter(torch.randn(3, 4))], nesterov=True)


@pytest.mark.parametrize(
    ("shape", "constraint", "grouping", "name"),
    [
        ((5, 7), "sphere", "PIO", "grouping"),  # Linear: no kernel
        ((4, 3, 1, 1), "oblique", "PIO", "grouping"),  # 1x1 conv: no kernel
        ((4, 3, 3, 3), "stiefel", "PIO", "grouping"),
        ((5, 1), "sphere", "PO", "constraint"),  # every group a single weight
        ((1, 5), "oblique", "PO", "constraint"),
        ((5,), "sphere", "PO", "constraint"),
    ],
)
def test_meaningless_combinations_raise(shape, constraint, grouping, name) -> None:
    with pytest.raises(ValueError, match=name):
        fg_manifold(shape, constraint, grouping)
    if len(shape) >= 2:
        with pytest.raises(ValueError, match=name):
            FGSGD([nn.Parameter(torch.randn(shape))], constraint=constraint, grouping=grouping)


def test_changing_constraint_after_state_creation_raises() -> None:
    w = nn.Parameter(torch.randn(3, 4))
    opt = FGSGD([w], lr=0.1)
    w.grad = torch.ones_like(w)
    opt.step()
    opt.param_groups[0]["constraint"] = "oblique"
    with pytest.raises(ValueError, match="constraint"):
        opt.step()


# ---------------------------------------------------------------------- (i) state_dict / foreach


def _net() -> nn.Module:
    torch.manual_seed(29)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 4)).double()


def _net_loss(model: nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    return model(torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64)).pow(2).mean()


@pytest.mark.parametrize("constraint", ["sphere", "stiefel"])
def test_state_dict_round_trip_is_bit_identical(constraint: str) -> None:
    hyper = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "constraint": constraint}
    model = _net()
    opt = FGSGD(model.parameters(), model=model, **hyper)
    for step in range(3):
        opt.zero_grad()
        _net_loss(model, step).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    for step in range(3, 6):
        opt.zero_grad()
        _net_loss(model, step).backward()
        opt.step()
    buffer.seek(0)
    resumed = FGSGD(resumed_model.parameters(), model=resumed_model, **hyper)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(3, 6):
        resumed.zero_grad()
        _net_loss(resumed_model, step).backward()
        resumed.step()
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("constraint", ["sphere", "oblique", "stiefel"])
def test_foreach_batches_same_shape_weights_with_same_numbers(constraint: str) -> None:
    results = []
    for foreach in (True, False):
        gen = torch.Generator().manual_seed(31)
        params = [
            nn.Parameter(torch.randn(4, 6, generator=gen, dtype=torch.float64)) for _ in "abc"
        ]
        params.append(nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64)))
        opt = FGSGD(
            params, lr=0.1, momentum=0.9, weight_decay=0.01, constraint=constraint, foreach=foreach
        )
        _random_loss_steps(opt, params, steps=8, seed=32)
        results.append((params, opt))
    (batched, opt_b), (single, opt_s) = results
    for a, b in zip(batched, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            opt_b.state[a]["momentum_buffer"],
            opt_s.state[b]["momentum_buffer"],
            rtol=1e-12,
            atol=1e-12,
        )


# ------------------------------------------------------------------------------- (j) maximize


@pytest.mark.parametrize("constraint", ["sphere", "stiefel", "none"])
def test_maximize_equals_minimizing_the_negated_loss(constraint: str) -> None:
    runs = []
    for maximize in (True, False):
        model = _net()
        opt = FGSGD(
            model.parameters(), lr=0.1, momentum=0.9, constraint=constraint, maximize=maximize
        )
        for step in range(4):
            opt.zero_grad()
            loss = _net_loss(model, step)
            (loss if maximize else -loss).backward()
            opt.step()
        runs.append(list(model.parameters()))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_registry_entry() -> None:
    entry = torchvalley.get_optimizer_entry("fgsgd")
    assert entry.family == "riemannian"
    assert entry.capabilities.manifold_aware and entry.capabilities.accepts_model
    assert entry.capabilities.foreach
    assert entry.hyperparameter("constraint").choices == ("sphere", "oblique", "stiefel", "none")
    assert entry.hyperparameter("grouping").choices == ("PO", "PI", "PIO")
    assert isinstance(fg_manifold((3, 4), "stiefel", "PO").base, Stiefel)


# ---------------------------------------------------------------------------- learned radius
def test_learn_radius_step_matches_the_hand_computed_gradient():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    start = w.detach().clone()
    opt = FGSGD([w], lr=0.1, learn_radius=True, step_bound=None)
    target = torch.randn(3, 4, dtype=torch.float64)
    ((w - target) ** 2).sum().backward()
    grad = w.grad.detach().clone()
    opt.step()
    r0 = start.norm(dim=1, keepdim=True)
    x0 = start / r0
    r1 = r0 - 0.1 * (grad * x0).sum(dim=1, keepdim=True)
    torch.testing.assert_close(opt.state[w]["radius"], r1, rtol=0, atol=1e-14)
    torch.testing.assert_close(w.detach().norm(dim=1, keepdim=True), r1, rtol=0, atol=1e-12)


def test_learn_radius_lets_the_scale_fit_where_a_fixed_radius_cannot():
    # Least squares with a target of norm 5 per row from an init of norm ~1: the fixed-radius
    # sphere cannot reach it; with the learned radius the loss goes to ~0.
    g = torch.Generator().manual_seed(1)
    target = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = 5 * target / target.norm(dim=1, keepdim=True)
    start = torch.randn(4, 6, generator=g, dtype=torch.float64)
    start = start / start.norm(dim=1, keepdim=True)
    losses = {}
    for learn in (False, True):
        w = torch.nn.Parameter(start.clone())
        opt = FGSGD([w], lr=0.05, momentum=0.9, learn_radius=learn)
        for _ in range(500):
            opt.zero_grad()
            loss = ((w - target) ** 2).sum()
            loss.backward()
            opt.step()
        losses[learn] = float(loss.detach())
        assert bool((opt.state[w]["radius"] > 0).all())
    assert losses[False] > 60  # rows stuck at norm 1: (5 - 1)^2 per row at best
    assert losses[True] < 1e-8


def test_learn_radius_state_round_trip_and_momentum():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3, 3, dtype=torch.float64))
    opt = FGSGD([w], lr=0.05, momentum=0.9, learn_radius=True)
    for _ in range(3):
        opt.zero_grad()
        (w.sin().sum() + (w**2).sum()).backward()
        opt.step()
    assert "radius_momentum" in opt.state[w]
    saved = copy.deepcopy(opt.state_dict())
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = FGSGD([w2], lr=0.05, momentum=0.9, learn_radius=True)
    opt2.load_state_dict(saved)
    for o, p in ((opt, w), (opt2, w2)):
        o.zero_grad()
        (p.sin().sum() + (p**2).sum()).backward()
        o.step()
    assert torch.equal(w, w2)
