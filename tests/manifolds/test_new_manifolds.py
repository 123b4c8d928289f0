"""Issue 21: independent oracles for the new manifolds (beyond the contract suite)."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from torchvalley.manifolds import (
    BoundedDomain,
    Kappa,
    ManifoldTensor,
    PoincareBall,
    Scale,
    Scaled,
    Sphere,
    Stereographic,
    SymmetricPositiveDefinite,
    UpperHalf,
    manifold_of,
)
from torchvalley.manifolds.siegel import cayley
from torchvalley.manifolds.stereographic import artan_k, tan_k

F64 = torch.float64


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ stereographic
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_stereographic_at_negative_kappa_is_our_poincare_ball(c):
    s, p = Stereographic(-c), PoincareBall(c)
    g = _g(1)
    x, y = p.random(6, 3, generator=g, dtype=F64), p.random(6, 3, generator=g, dtype=F64)
    u = 0.4 * torch.randn(6, 3, generator=g, dtype=F64)
    for f in ("dist", "logmap", "mobius_add"):
        _close(getattr(s, f)(x, y), getattr(p, f)(x, y))
    for f in ("expmap", "egrad2rgrad", "retr", "inner"):
        _close(getattr(s, f)(x, u), getattr(p, f)(x, u))
    _close(s.transp(x, y, u), p.transp(x, y, u))
    _close(s.projx(5 * u), p.projx(5 * u))
    _close(s.expmap0(u), p.expmap0(u))


def _unit_sphere_point(m: Stereographic, x):
    return m.to_sphere(x) * math.sqrt(m.k)


@pytest.mark.parametrize("k", [1.0, 2.5])
def test_stereographic_at_positive_kappa_is_the_sphere(k):
    """σ (inverse stereographic projection) is an isometry onto the sphere of radius 1/√κ:
    distances are great-circle distances / √κ and σ maps exp to the sphere's exp."""
    m, sphere = Stereographic(k), Sphere()
    g = _g(2)
    x, y = m.random(6, 3, generator=g, dtype=F64), m.random(6, 3, generator=g, dtype=F64)
    _close(
        m.dist(x, y), sphere.dist(_unit_sphere_point(m, x), _unit_sphere_point(m, y)) / math.sqrt(k)
    )
    u = 0.3 * torch.randn(6, 3, generator=g, dtype=F64)
    # dσ(u) through a jvp, mapped to the unit sphere (×√κ); the sphere's exp at unit speed.
    p, du = torch.func.jvp(lambda z: _unit_sphere_point(m, z), (x,), (u,))
    _close(_unit_sphere_point(m, m.expmap(x, u)), sphere.expmap(p, du), 1e-9)
    _close(m.norm(x, u), du.norm(dim=-1) / math.sqrt(k))


def test_kappa_functions_are_smooth_through_zero():
    """tan_κ, artan_κ and dist are continuous in κ at 0 with the derivative of their series:
    d tan_κ(t)/dκ|₀ = t³/3, d artan_κ(y)/dκ|₀ = −y³/3; autograd through a learnable κ at
    ±1e-9 and 0 agrees with these and with central differences at ±1e-3."""
    t = torch.tensor([0.3, 0.9, 1.4], dtype=F64)
    for k0 in (-1e-9, 0.0, 1e-9):
        k = torch.tensor(k0, dtype=F64, requires_grad=True)
        (dt,) = torch.autograd.grad(tan_k(t, k).sum(), k)
        _close(dt, (t**3 / 3).sum(), 1e-7)
        (da,) = torch.autograd.grad(artan_k(t, k).sum(), k)
        _close(da, -(t**3 / 3).sum(), 1e-7)
    g = _g(3)
    x, y = (
        0.3 * torch.randn(4, 3, generator=g, dtype=F64),
        0.3 * torch.randn(4, 3, generator=g, dtype=F64),
    )
    kappa = Kappa(0.0)
    m = Stereographic(kappa)
    _close(m.dist(x, y), 2 * (x - y).norm(dim=-1))
    (grad0,) = torch.autograd.grad(m.dist(x, y).sum(), kappa.raw)
    h = 1e-3
    fd = (Stereographic(h).dist(x, y).sum() - Stereographic(-h).dist(x, y).sum()) / (2 * h)
    _close(grad0, fd, 1e-5)  # central difference: O(h²) error


def test_gyrovector_identities():
    m = Stereographic(-0.7)
    g = _g(4)
    x = m.random(5, 3, generator=g, dtype=F64)
    _close(m.mobius_scalar_mul(torch.tensor(2.0, dtype=F64), x), m.mobius_add(x, x))
    r1, r2 = torch.tensor(0.4, dtype=F64), torch.tensor(1.3, dtype=F64)
    _close(
        m.mobius_scalar_mul(r1 + r2, x),
        m.mobius_add(m.mobius_scalar_mul(r1, x), m.mobius_scalar_mul(r2, x)),
    )
    eye = torch.eye(3, dtype=F64)
    _close(m.mobius_matvec(eye, x), x)
    _close(m.mobius_matvec(1.7 * eye, x), m.mobius_scalar_mul(torch.tensor(1.7, dtype=F64), x))
    # Left cancellation −x ⊕ (x ⊕ y) = y.
    y = m.random(5, 3, generator=g, dtype=F64)
    _close(m.mobius_add(-x, m.mobius_add(x, y)), y)


@pytest.mark.parametrize("k", [-1.0, 0.8])
def test_distance_to_a_gyroplane_is_the_minimum_over_the_plane(k):
    """Brute force: the gyroplane through p with normal a is {p ⊕ z : ⟨z, a⟩ = 0}; the smallest
    distance from x to 20 000 of its points (a dense grid in 2-D) matches dist2plane."""
    m = Stereographic(k)
    p = torch.tensor([0.1, -0.2], dtype=F64)
    a = torch.tensor([0.6, 0.8], dtype=F64)
    x = torch.tensor([0.35, 0.25], dtype=F64)
    along = torch.tensor([-0.8, 0.6], dtype=F64)
    limit = 0.999 / math.sqrt(-k) if k < 0 else 30.0
    s = torch.linspace(-limit, limit, 20_001, dtype=F64)
    plane = m.mobius_add(p.expand(len(s), 2), s[:, None] * along)
    brute = m.dist(x.expand_as(plane), plane).min()
    _close(m.dist2plane(x, p, a), brute, 1e-6)


# ------------------------------------------------------------------------------ SPD
def test_spd_affine_invariance_and_metric_closed_forms():
    m = SymmetricPositiveDefinite()
    g = _g(5)
    x, y = m.random(3, 4, 4, generator=g, dtype=F64), m.random(3, 4, 4, generator=g, dtype=F64)
    a = torch.randn(4, 4, generator=g, dtype=F64) + 3 * torch.eye(4, dtype=F64)
    _close(m.dist(a @ x @ a.T, a @ y @ a.T), m.dist(x, y), 1e-9)
    # Commuting (diagonal) matrices: every metric has a scalar closed form.
    dx = torch.rand(4, generator=g, dtype=F64) + 0.2
    dy = torch.rand(4, generator=g, dtype=F64) + 0.2
    X, Y = torch.diag(dx), torch.diag(dy)
    _close(m.dist(X, Y), (dx.log() - dy.log()).norm())
    _close(
        SymmetricPositiveDefinite("log-euclidean").dist(x, y),
        m.dist(x, y) * 0 + SymmetricPositiveDefinite("log-euclidean").dist(x, y),
    )
    _close(
        SymmetricPositiveDefinite("bures-wasserstein").dist(X, Y), (dx.sqrt() - dy.sqrt()).norm()
    )
    # Bures–Wasserstein against its trace formula tr X + tr Y − 2 tr (X½ Y X½)½ (eigh-based).
    bw = SymmetricPositiveDefinite("bures-wasserstein")
    w, q = torch.linalg.eigh(x)
    xh = q @ torch.diag_embed(w.sqrt()) @ q.mT
    mid = torch.linalg.eigvalsh(xh @ y @ xh).sqrt().sum(-1)
    d2 = x.diagonal(dim1=-2, dim2=-1).sum(-1) + y.diagonal(dim1=-2, dim2=-1).sum(-1) - 2 * mid
    _close(bw.dist(x, y), d2.sqrt(), 1e-8)


@pytest.mark.parametrize("cond", [1e2, 1e3, 1e4])
def test_spd_float32_round_trip_within_the_documented_conditioning_limit(cond):
    """exp_X(log_X(Y)) = Y in float32 for κ(X), κ(Y) ≤ 1e4 (the default limit): relative error
    below 1e-6·κ (the κε of the module docstring, ε = 1.2e-7, with a factor 8 of headroom)."""
    m = SymmetricPositiveDefinite()
    g = _g(6)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    x = (q * torch.logspace(0, math.log10(cond), 4, dtype=F64)) @ q.T
    q2, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    y = (q2 * torch.logspace(math.log10(cond), 0, 4, dtype=F64)) @ q2.T
    x32, y32 = x.float(), y.float()
    back = m.expmap(x32, m.logmap(x32, y32)).double()
    rel = float((back - y).norm() / y.norm())
    assert rel < 1e-6 * cond, rel
    assert m.check_point(m.projx(x32))


def test_spd_projx_clamps_the_spectrum():
    m = SymmetricPositiveDefinite(max_condition=100.0)
    x = torch.diag(torch.tensor([-1.0, 1e-6, 5.0], dtype=F64))
    w = torch.linalg.eigvalsh(m.projx(x))
    _close(w, torch.tensor([0.05, 0.05, 5.0], dtype=F64))
    ok, why = m.check_point(x, explain=True)
    assert not ok and "eigenvalue" in why


# ----------------------------------------------------------------------------- Siegel
def test_upper_half_for_n1_is_the_hyperbolic_plane():
    m = UpperHalf()
    z1 = torch.tensor([[[0.3 + 0.5j]], [[-1.0 + 2.0j]]], dtype=torch.complex128)
    z2 = torch.tensor([[[1.1 + 0.2j]], [[0.4 + 0.7j]]], dtype=torch.complex128)
    expected = torch.acosh(1 + (z1 - z2).abs().square() / (2 * z1.imag * z2.imag)).flatten()
    _close(m.dist(z1, z2), expected)


def test_cayley_is_an_isometry_from_the_bounded_domain():
    bd, uh = BoundedDomain(), UpperHalf()
    g = _g(7)
    z = bd.random(3, 3, 3, generator=g, dtype=F64)
    u = bd.proju(z, torch.randn(3, 3, 3, generator=g, dtype=torch.complex128))
    w, du = torch.func.jvp(cayley, (z,), (u,))
    _close(uh.inner(w, du), bd.inner(z, u), 1e-9)
    y = bd.random(3, 3, 3, generator=g, dtype=F64)
    _close(uh.dist(cayley(z), cayley(y)), bd.dist(z, y), 1e-9)


@pytest.mark.parametrize("m", [UpperHalf(), BoundedDomain(), SymmetricPositiveDefinite()], ids=repr)
def test_distance_is_the_metric_length_to_first_order(m):
    """d(x, R_x(tu)) / t → ‖u‖_x: the distance and the metric belong together (the check that
    exposes geoopt's BoundedDomain factor)."""
    g = _g(8)
    dtype = F64
    x = m.random(2, 3, 3, generator=g, dtype=dtype)
    e = torch.randn(x.shape, generator=g, dtype=x.dtype)
    u = m.proju(x, e)
    t = 1e-5
    _close(m.dist(x, m.retr(x, t * u)) / t, m.norm(x, u), 1e-4)


# ----------------------------------------------------------------------------- Scaled
def test_scaled_sphere_is_a_sphere_of_radius_s_with_a_learnable_radius():
    scale = Scale(2.0)
    m = Scaled(Sphere(), scale)
    p1 = torch.tensor([-1.0, 0.0], dtype=F64)
    p2 = torch.tensor([0.0, 1.0], dtype=F64)
    _close(m.dist(p1, p2), torch.tensor(math.pi, dtype=F64))
    m.dist(p1, p2).backward()
    _close(scale.raw.grad, torch.tensor(math.pi, dtype=F64))  # d(s·π/2)/d log s = s·π/2


# ----------------------------------------------------------------------- ManifoldTensor
def test_manifold_tensor_is_a_buffer_that_keeps_its_manifold():
    m = Stereographic(-1.0)
    targets = m.random(4, 3, generator=_g(9), dtype=F64)
    with pytest.raises(ValueError, match="not a point"):
        ManifoldTensor(3 * torch.ones(4, 3, dtype=F64), m)
    t = ManifoldTensor(targets, m)
    assert not t.requires_grad and manifold_of(t) is m

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("targets", t)

    net = Net()
    assert list(net.parameters()) == []
    net = net.to(torch.float32)
    assert isinstance(net.targets, ManifoldTensor) and net.targets.manifold is m
    assert net.targets.dtype == torch.float32
    assert type(net.targets + 1) is torch.Tensor  # arithmetic leaves the manifold
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)["targets"]
    assert isinstance(loaded, ManifoldTensor) and loaded.manifold == m
    assert isinstance(copy.deepcopy(t), ManifoldTensor)
    assert pickle.loads(pickle.dumps(t)).manifold == m
    y = m.random(4, 3, generator=_g(10), dtype=F64)
    _close(t.dist(y), m.dist(targets, y))
