"""Manifold-specific checks (rest.md §14 items 6, 7, 14, 16), ManifoldParameter and equality."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from torchvalley.manifolds import (
    Euclidean,
    Lorentz,
    Manifold,
    ManifoldParameter,
    Oblique,
    PoincareBall,
    Product,
    Sphere,
    Stiefel,
    boundary_eps,
    manifold_of,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _slope(ts: list[float], errs: list[float]) -> float:
    lt = torch.tensor([math.log(t) for t in ts], dtype=F64)
    le = torch.tensor([math.log(e) for e in errs], dtype=F64)
    lt = lt - lt.mean()
    return float((lt * (le - le.mean())).sum() / (lt * lt).sum())


# ----------------------------------------------------------------------------------- Stiefel
@pytest.mark.parametrize("retraction", ["cayley", "qr", "polar"])
@pytest.mark.parametrize("shape", [(7, 3), (2, 5, 5), (3, 8)])
def test_stiefel_orthonormal_after_retraction(retraction, shape):
    m = Stiefel(retraction)
    for seed in (1, 2, 3):
        x = m.random(*shape, generator=_gen(seed), dtype=F64)
        u = m.proju(x, torch.randn(shape, generator=_gen(seed + 9), dtype=F64))
        y = m.retr(x, u)
        tall = y if shape[-2] >= shape[-1] else y.transpose(-1, -2)
        gram = tall.transpose(-1, -2) @ tall
        torch.testing.assert_close(
            gram, torch.eye(gram.shape[-1], dtype=F64).expand_as(gram), atol=1e-12, rtol=0
        )


def test_stiefel_conv_convention():
    """(out, in, k, k) with out < in·k·k: the filters (rows of the flattened matrix) are
    orthonormal; with out ≥ in·k·k the columns are."""
    m = Stiefel("qr", flatten=True)
    w = m.random(4, 2, 3, 3, generator=_gen(0), dtype=F64)
    flat = w.reshape(4, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(4, dtype=F64), atol=1e-12, rtol=0)
    w2 = m.random(20, 2, 1, 1, generator=_gen(1), dtype=F64)
    flat2 = w2.reshape(20, -1)
    torch.testing.assert_close(flat2.T @ flat2, torch.eye(2, dtype=F64), atol=1e-12, rtol=0)
    assert m.inner(w, w).shape == ()


def test_stiefel_rejects_unknown_retraction():
    with pytest.raises(ValueError, match="retraction"):
        Stiefel("exp")


# ---------------------------------------------------------------------------------- Poincaré
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_poincare_from_the_boundary_stays_finite(dtype, c):
    """geoopt #227 regression: points at the projection boundary, large steps, no NaN/Inf."""
    m = PoincareBall(c)
    maxnorm = m.max_norm(dtype)
    g = _gen(0)
    x = m.projx(1e6 * torch.randn(64, 5, generator=g, dtype=dtype))
    torch.testing.assert_close(x.norm(dim=-1), torch.full((64,), maxnorm, dtype=dtype))
    y = x.clone()
    for i in range(200):
        egrad = 1e3 * torch.randn(64, 5, generator=g, dtype=dtype)
        u = -m.egrad2rgrad(x, egrad) * 100
        x = m.retr(x, u) if i % 2 else m.expmap(x, u)
        y = m.expmap(y, 1e4 * torch.randn(64, 5, generator=g, dtype=dtype))
        for t in (x, y):
            assert torch.isfinite(t).all()
            assert float(t.norm(dim=-1).max()) <= maxnorm * (1 + 4 * torch.finfo(dtype).eps)
            assert m.check_point(t)
    d0 = m.dist0(m.projx(1e6 * torch.ones(3, 4, dtype=dtype)))
    expected = 2 / math.sqrt(c) * math.atanh(1 - boundary_eps(dtype))
    torch.testing.assert_close(d0, torch.full_like(d0, expected), atol=1e-3, rtol=0)
    assert torch.isfinite(m.dist(x, y)).all() and torch.isfinite(m.logmap(x, y)).all()


def test_poincare_gyration_matches_definition():
    m = PoincareBall(0.7)
    a, b = (
        m.random(6, 3, generator=_gen(1), dtype=F64),
        m.random(6, 3, generator=_gen(2), dtype=F64),
    )
    w = 0.05 * m.random(6, 3, generator=_gen(3), dtype=F64)
    direct = m.mobius_add(-m.mobius_add(a, b), m.mobius_add(a, m.mobius_add(b, w)))
    torch.testing.assert_close(m.gyration(a, b, w), direct, atol=1e-12, rtol=1e-10)


def test_poincare_rejects_points_outside_and_bad_curvature():
    ok, why = PoincareBall().check_point(torch.tensor([[0.6, 0.8]]), explain=True)
    assert not ok and "inside the ball" in why
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            PoincareBall(bad)


# ----------------------------------------------------------------------------------- Lorentz
@pytest.mark.parametrize("k", [1.0, 2.5])
def test_lorentz_membership_after_projx(k):
    m = Lorentz(k)
    x = m.projx(5 * torch.randn(50, 6, generator=_gen(0), dtype=F64))
    err = (Lorentz.ldot(x, x) + k).abs() / (1 + x.square().sum(-1))
    assert float(err.max()) <= 1e-14
    assert bool((x[..., 0] > 0).all())
    ok, why = m.check_point(-x, explain=True)
    assert not ok and "positive" in why


# ----------------------------------------------------------------------- gradient check (§14.6)
GRAD_CASES = [
    (Euclidean(), (3, 4)),
    (Sphere(), (3, 5)),
    (Stiefel("cayley"), (6, 3)),
    (Stiefel("qr"), (6, 3)),
    (Stiefel("polar"), (3, 6)),
    (Oblique("columns"), (4, 3)),
    (PoincareBall(0.8), (3, 4)),
    (Lorentz(1.5), (3, 4)),
    (Product((Sphere(), 3), (Lorentz(), 3), (PoincareBall(), 2)), (2, 8)),
]


SLOPES: dict[str, float] = {}


@pytest.mark.parametrize(("m", "shape"), GRAD_CASES, ids=[repr(c[0]) for c in GRAD_CASES])
def test_riemannian_gradient_taylor_slope(m, shape):
    """|f(R_x(tξ)) − f(x) − t⟨grad f(x), ξ⟩_x| = O(t²): the log-log slope is ≈ 2."""
    g = _gen(7)
    w = torch.randn(shape, generator=g, dtype=F64)
    b = torch.randn(shape, generator=g, dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(w * x).sum() + (b * x).sum().square() + (x * x).sum()

    x = m.random(*shape, generator=g, dtype=F64).requires_grad_(True)
    (egrad,) = torch.autograd.grad(f(x), x)
    x = x.detach()
    rgrad = m.egrad2rgrad(x, egrad)
    xi = m.proju(x, torch.randn(shape, generator=g, dtype=F64))
    slope_term = m.inner(x, rgrad, xi).sum()
    ts = [10.0 ** (-5 + 0.25 * i) for i in range(9)]  # 1e-5 … 1e-3
    rem = [abs(float(f(m.retr(x, t * xi)) - f(x) - t * slope_term)) for t in ts]
    slope = _slope(ts, rem)
    SLOPES[repr(m)] = slope
    assert 1.85 <= slope <= 2.15, (slope, rem)


# -------------------------------------------------------------------------------- equality
def test_equality_by_value():
    assert Sphere() == Sphere() and hash(Sphere()) == hash(Sphere())
    assert PoincareBall(1.0) == PoincareBall(1) != PoincareBall(2.0)
    assert Lorentz(2.0) == Lorentz(2.0) != Lorentz(1.0)
    assert PoincareBall(1.0) != Lorentz(1.0)
    assert Stiefel("qr") == Stiefel("qr") != Stiefel("cayley")
    assert Oblique("rows") != Oblique("columns")
    assert Euclidean() != Euclidean(1)
    assert Product((Sphere(), 3), (Euclidean(), 2)) == Product((Sphere(), 3), (Euclidean(), (2,)))
    assert Product((Sphere(), 3)) != Product((Sphere(), 4))
    assert Sphere() != "Sphere"
    assert len({Sphere(), Sphere(), Oblique()}) == 2
    assert copy.deepcopy(PoincareBall(0.5)) == PoincareBall(0.5)
    assert pickle.loads(pickle.dumps(Lorentz(3.0))) == Lorentz(3.0)


def test_product_validation_and_explanations():
    with pytest.raises(ValueError):
        Product()
    with pytest.raises(ValueError):
        Product((Stiefel(flatten=True), (3, 2)))
    with pytest.raises(TypeError):
        Product(Sphere())
    m = Product((Sphere(), 3), (PoincareBall(), 2))
    x = m.random(4, 5, generator=_gen(0), dtype=F64)
    x[1, 3:] = 2.0
    ok, why = m.check_point(x, explain=True)
    assert not ok and why.startswith("factor 1 (PoincareBall")
    ok, why = m.check_point(x[..., :4], explain=True)
    assert not ok and "size 5" in why


# ------------------------------------------------------------------------ ManifoldParameter
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = ManifoldParameter(Stiefel().random(5, 3, generator=_gen(0)), Stiefel())
        self.e = ManifoldParameter(PoincareBall().random(4, 2, generator=_gen(1)), PoincareBall())


def test_manifold_of_and_is_flat():
    assert manifold_of(torch.zeros(3)) == Euclidean() and manifold_of(torch.zeros(3)).is_flat
    assert manifold_of(nn.Parameter(torch.zeros(3))).is_flat
    p = ManifoldParameter(torch.tensor([[0.6, 0.8]]), Sphere())
    assert manifold_of(p) is p.manifold and not manifold_of(p).is_flat
    assert Euclidean(1).is_flat
    assert not any(m.is_flat for m in (Sphere(), Stiefel(), Lorentz(), Product((Euclidean(), 2))))


def test_manifold_parameter_validation():
    with pytest.raises(ValueError, match=r"‖x‖ − 1.*project=True"):
        ManifoldParameter(torch.ones(3, 4), Sphere())
    p = ManifoldParameter(torch.ones(3, 4, dtype=F64), Sphere(), project=True)
    assert isinstance(p, nn.Parameter) and p.requires_grad and p.manifold == Sphere()
    torch.testing.assert_close(p.data, torch.full((3, 4), 0.5, dtype=F64))
    assert ManifoldParameter(torch.zeros(2)).manifold == Euclidean()
    assert not ManifoldParameter(torch.zeros(2), requires_grad=False).requires_grad
    with pytest.raises(ValueError, match="non-finite"):
        ManifoldParameter(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(TypeError):
        ManifoldParameter(torch.zeros(2), "sphere")
    q = ManifoldParameter(torch.tensor([[3.0, 4.0]]), Sphere(), project=True)
    q.data.mul_(2)
    q.proj_()
    torch.testing.assert_close(q.data, torch.tensor([[0.6, 0.8]]))


def test_manifold_parameter_in_module_deepcopy_and_state_dict():
    net = _Net()
    assert {id(p) for p in net.parameters()} == {id(net.w), id(net.e)}
    clone = copy.deepcopy(net)
    assert isinstance(clone.w, ManifoldParameter) and clone.w.manifold == Stiefel()
    assert clone.w is not net.w and torch.equal(clone.w, net.w)
    assert clone.w.data_ptr() != net.w.data_ptr()

    sd = net.state_dict()
    assert set(sd) == {"w", "e"} and type(sd["w"]) is torch.Tensor
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    other = _Net()
    with torch.no_grad():
        other.w.copy_(Stiefel().random(5, 3, generator=_gen(5)))
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other.w, net.w) and torch.equal(other.e, net.e)
    assert isinstance(other.w, ManifoldParameter) and other.e.manifold == PoincareBall()

    buf = io.BytesIO()
    torch.save(net.w, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=False)
    assert isinstance(restored, ManifoldParameter) and restored.manifold == Stiefel()
    assert torch.equal(restored, net.w)
    assert "ManifoldParameter on Stiefel" in repr(net.w)


def test_manifold_parameter_grad_flows():
    p = ManifoldParameter(Sphere().random(2, 3, generator=_gen(0)), Sphere())
    (p * 2).sum().backward()
    torch.testing.assert_close(p.grad, torch.full((2, 3), 2.0))


# ------------------------------------------------------------------------------- drift (§14.14)
DRIFT_STEPS = 10_000
DRIFT_CASES: list[tuple[Manifold, tuple[int, ...]]] = [
    (Sphere(), (16, 8)),
    (Stiefel("cayley"), (16, 4)),
    (Stiefel("qr"), (16, 4)),
    (Stiefel("polar"), (16, 4)),
    (Oblique(), (8, 6)),
    (Lorentz(), (16, 5)),
    (PoincareBall(), (16, 5)),
]


def _violation(m: Manifold, x: torch.Tensor) -> float:
    if isinstance(m, Sphere):
        return float((x.norm(dim=-1) - 1).abs().max())
    if isinstance(m, Oblique):
        return float((x.norm(dim=-1) - 1).abs().max())
    if isinstance(m, Stiefel):
        return float((x.T @ x - torch.eye(x.shape[1], dtype=x.dtype)).abs().max())
    if isinstance(m, Lorentz):
        return float((Lorentz.ldot(x, x) + m.k).abs().max())
    norm = float(x.norm(dim=-1).max())
    return 0.0 if norm < 1 / math.sqrt(m.c) else math.inf


@pytest.mark.parametrize(("m", "shape"), DRIFT_CASES, ids=[repr(c[0]) for c in DRIFT_CASES])
def test_float64_drift_over_many_retractions(m, shape):
    """10k steps x ← R_x(−lr·grad) with lr 1e-2 on ‖x − t‖² + Σ sin(3x) plus Gaussian gradient
    noise (a pure random walk would escape to infinity on the hyperboloid), no re-projection."""
    g = _gen(3)
    x = m.random(*shape, generator=g, dtype=F64)
    target = m.random(*shape, generator=g, dtype=F64)
    noise = torch.randn(DRIFT_STEPS, *shape, generator=g, dtype=F64)
    for i in range(DRIFT_STEPS):
        egrad = 2 * (x - target) + 3 * torch.cos(3 * x) + noise[i]
        x = m.retr(x, -1e-2 * m.egrad2rgrad(x, egrad))
    assert torch.isfinite(x).all()
    assert _violation(m, x) <= 1e-10
