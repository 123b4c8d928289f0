"""Contract suite run over every manifold × float32/float64 (seeds 1–5 inside each test).

rest.md §14 items 1–5 and 7. Tolerances are float64 unless marked; float32 uses looser ones.
Transports: Euclidean, PoincareBall, Lorentz (and products of them) are parallel transports and
are checked for isometry; Sphere, Oblique, Stiefel use the projection ``proju(y, v)``, checked
for tangency only.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchvalley.manifolds import (
    BirkhoffPolytope,
    BoundedDomain,
    Euclidean,
    Lorentz,
    Manifold,
    Oblique,
    PoincareBall,
    Product,
    Scaled,
    Sphere,
    SphereProjection,
    SphereSubspaceIntersection,
    Stereographic,
    Stiefel,
    SymmetricPositiveDefinite,
    UpperHalf,
)

SEEDS = (1, 2, 3, 4, 5)
DTYPES = (torch.float64, torch.float32)

CASES: list[tuple[str, Manifold, tuple[int, ...]]] = [
    ("euclidean0", Euclidean(), (4, 3)),
    ("euclidean1", Euclidean(ndim=1), (4, 3)),
    ("sphere", Sphere(), (4, 5)),
    ("stiefel-cayley", Stiefel("cayley"), (2, 6, 3)),
    ("stiefel-qr", Stiefel("qr"), (2, 6, 3)),
    ("stiefel-polar", Stiefel("polar"), (2, 6, 3)),
    ("stiefel-wide", Stiefel("cayley"), (3, 5)),
    ("stiefel-conv", Stiefel("polar", flatten=True), (4, 2, 3, 3)),
    ("oblique-rows", Oblique("rows"), (2, 4, 5)),
    ("oblique-cols", Oblique("columns"), (5, 4)),
    ("poincare", PoincareBall(), (4, 3)),
    ("poincare-c0.5", PoincareBall(0.5), (4, 3)),
    ("lorentz", Lorentz(), (4, 4)),
    ("lorentz-k2", Lorentz(2.0), (4, 3)),
    (
        "product",
        Product((Sphere(), 3), (PoincareBall(), 2), (Euclidean(), 2), (Stiefel("qr"), (3, 2))),
        (4, 13),
    ),
    ("product-hyp", Product((Lorentz(), 3), (PoincareBall(2.0), 2), (Euclidean(1), 2)), (3, 7)),
    # Issue 20 item 19: unbatched points, single points of every kind, factors with their own
    # batch of points and scalar factors.
    ("sphere-unbatched", Sphere(), (5,)),
    ("lorentz-unbatched", Lorentz(), (4,)),
    ("poincare-unbatched", PoincareBall(), (3,)),
    ("stiefel-unbatched", Stiefel(), (5, 2)),
    ("product-unbatched", Product((Sphere(), 3), (Lorentz(), 3), (Euclidean(1), 2)), (8,)),
    ("product-factor-batch", Product((Sphere(), (3, 2)), (Euclidean(), 1)), (4, 7)),
    ("product-factor-batch-unbatched", Product((Sphere(), (3, 2)), (Euclidean(), 1)), (7,)),
    (
        "product-factor-batch-hyp",
        Product((Lorentz(), (2, 3)), (PoincareBall(), (3, 2)), (Oblique(), (2, 2, 3))),
        (2, 2, 24),
    ),
    ("product-scalar", Product((Sphere(), 3), (Euclidean(), ())), (4, 4)),
    ("product-scalar-unbatched", Product((Euclidean(), ()), (PoincareBall(), 2)), (3,)),
    ("product-nested", Product((Product((Sphere(), 2), (Euclidean(), ())), (2, 3))), (2, 6)),
    # Issue 21: the remaining manifolds of geoopt.
    ("spd-affine", SymmetricPositiveDefinite(), (3, 3, 3)),
    ("spd-affine-unbatched", SymmetricPositiveDefinite(), (4, 4)),
    ("spd-log-euclidean", SymmetricPositiveDefinite("log-euclidean"), (2, 3, 3)),
    ("spd-bures-wasserstein", SymmetricPositiveDefinite("bures-wasserstein"), (2, 3, 3)),
    ("stereo-k-1", Stereographic(-1.0), (4, 3)),
    ("stereo-k+1", Stereographic(1.0, exact=False), (4, 3)),  # the default is exp at κ > 0
    ("stereo-k0", Stereographic(0.0), (4, 3)),
    ("stereo-k+1-exact", Stereographic(1.0, exact=True), (4, 3)),
    ("stereo-k-0.3", Stereographic(-0.3), (3,)),
    ("sphere-projection-2", SphereProjection(2.0), (4, 3)),
    ("birkhoff", BirkhoffPolytope(), (3, 4, 4)),
    ("birkhoff-unbatched", BirkhoffPolytope(), (3, 3)),
    ("upper-half", UpperHalf(), (2, 3, 3)),
    ("bounded-domain", BoundedDomain(), (2, 3, 3)),
    ("bounded-domain-1x1", BoundedDomain(), (4, 1, 1)),
    (
        "sphere-subspace",
        SphereSubspaceIntersection(
            torch.tensor([[1.0, 0, 0, 2, 0], [0, 1, 1, 0, 0], [0, 0, 1, 0, 1]]).T
        ),
        (4, 5),
    ),
    (
        "sphere-subspace-complement",
        SphereSubspaceIntersection(torch.tensor([[1.0, 0, 0, 2, 0]]).T, complement=True),
        (4, 5),
    ),
    ("scaled-sphere", Scaled(Sphere(), 2.0), (4, 5)),
    ("scaled-spd", Scaled(SymmetricPositiveDefinite(), 0.5), (2, 3, 3)),
    ("scaled-stereo", Scaled(Stereographic(-1.0), 3.0), (4, 3)),
    (
        "product-new",
        Product(
            (SymmetricPositiveDefinite(), (2, 2)),
            (Stereographic(1.0), 3),
            (BirkhoffPolytope(), (3, 3)),
            (Scaled(Sphere(), 0.5), 2),
        ),
        (2, 18),
    ),
]
IDS = [c[0] for c in CASES]

TOL = {
    torch.float64: {"idem": 1e-12, "member": 1e-10, "map": 1e-8, "iso": 1e-10},
    torch.float32: {"idem": 1e-5, "member": 1e-5, "map": 2e-3, "iso": 1e-4},
}
# Siegel spaces hold complex points: their cases run in the complex dtype of the same precision.
TOL[torch.complex128] = TOL[torch.float64]
TOL[torch.complex64] = TOL[torch.float32]
_COMPLEX_OF = {torch.float64: torch.complex128, torch.float32: torch.complex64}


def _dtype_for(m: Manifold, dtype: torch.dtype) -> torch.dtype:
    return _COMPLEX_OF[dtype] if isinstance(m, (UpperHalf, BoundedDomain)) else dtype


def _pairing(m: Manifold, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The Euclidean pairing Re Σ g ū, one value per point."""
    return m._reduce((g * u.conj()).real if u.is_complex() else g * u, keepdim=False)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _point(m: Manifold, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return m.random(*shape, generator=g, dtype=dtype)


def _tangent(m: Manifold, x: torch.Tensor, seed: int, scale: float = 0.3) -> torch.Tensor:
    """A tangent vector of Riemannian norm ``scale`` per point (inside injectivity radii)."""
    g = torch.Generator().manual_seed(1000 + seed)
    u = m.proju(x, torch.randn(x.shape, generator=g, dtype=x.dtype))
    n = m.norm(x, u, keepdim=True)
    while n.dim() < u.dim():
        n = n.unsqueeze(-1)
    return u / n.clamp_min(1e-12) * scale


def _pairs() -> list[tuple[str, Manifold, tuple[int, ...], torch.dtype]]:
    return [(n, m, s, _dtype_for(m, d)) for n, m, s in CASES for d in DTYPES]


CASE_PARAMS = pytest.mark.parametrize(
    ("name", "m", "shape", "dtype"),
    _pairs(),
    ids=[f"{n}-{str(d)[6:]}" for n, _, _, d in _pairs()],
)


@CASE_PARAMS
def test_projections_idempotent(name, m, shape, dtype):
    tol = TOL[dtype]["idem"]
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        raw = torch.randn(shape, generator=g, dtype=dtype)
        if isinstance(m, Lorentz):
            raw = raw.abs()
        x = m.projx(raw)
        _close(m.projx(x), x, tol)
        u = m.proju(x, torch.randn(shape, generator=g, dtype=dtype))
        _close(m.proju(x, u), u, tol)


@CASE_PARAMS
def test_membership_after_projx_and_random(name, m, shape, dtype):
    tol = TOL[dtype]["member"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        ok, why = m.check_point(x, explain=True, atol=tol, rtol=tol)
        assert ok, why
        g = torch.Generator().manual_seed(seed)
        y = m.projx(3 * torch.randn(shape, generator=g, dtype=dtype))
        ok, why = m.check_point(y, explain=True, atol=tol, rtol=tol)
        assert ok, why


@CASE_PARAMS
def test_tangency_of_proju_and_egrad2rgrad(name, m, shape, dtype):
    tol = TOL[dtype]["member"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        g = torch.Generator().manual_seed(seed)
        for v in (
            m.proju(x, torch.randn(shape, generator=g, dtype=dtype)),
            m.egrad2rgrad(x, torch.randn(shape, generator=g, dtype=dtype)),
        ):
            ok, why = m.check_vector(x, v, explain=True, atol=tol, rtol=tol)
            assert ok, why


@CASE_PARAMS
def test_egrad2rgrad_is_riesz_representer(name, m, shape, dtype):
    """⟨egrad2rgrad(x, g), u⟩_x = ⟨g, u⟩ (Euclidean pairing) for every tangent u."""
    tol = TOL[dtype]["iso"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        u = _tangent(m, x, seed)
        lhs = m.inner(x, m.egrad2rgrad(x, g), u)
        rhs = _pairing(m, g, u)
        _close(lhs, rhs, tol)


@CASE_PARAMS
def test_retr_at_zero_is_identity(name, m, shape, dtype):
    tol = TOL[dtype]["idem"] * 10
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        _close(m.retr(x, torch.zeros_like(x)), x, tol)
        if m.has_expmap:
            _close(m.expmap(x, torch.zeros_like(x)), x, tol)


def _gap(m: Manifold, a: torch.Tensor, b: torch.Tensor) -> float:
    if m.has_logmap:
        return float(m.dist(a, b).max())
    return float((a - b).abs().max())


def loglog_slope(ts: list[float], errs: list[float]) -> float:
    lt = torch.tensor([math.log(t) for t in ts], dtype=torch.float64)
    le = torch.tensor([math.log(e) for e in errs], dtype=torch.float64)
    lt = lt - lt.mean()
    return float((lt * (le - le.mean())).sum() / (lt * lt).sum())


SLOPES: dict[str, float] = {}


@pytest.mark.parametrize(("name", "m", "shape"), CASES, ids=IDS)
def test_retraction_order(name, m, shape):
    """‖dist(exp_x(tu), R_x(tu))‖ = O(t²): log-log slope ≥ 2 (less 0.1 for the fit).

    Without a closed-form exp (Birkhoff, Siegel), the first-order condition itself in the
    embedding: ‖R_x(tu) − (x + tu)‖ = O(t²).
    """
    ts = [10.0 ** (-3 + 0.25 * i) for i in range(9)]  # 1e-3 … 1e-1
    for seed in SEEDS[:3]:
        x = _point(m, shape, seed, _dtype_for(m, torch.float64))
        u = _tangent(m, x, seed, scale=1.0)
        if m.has_expmap:
            errs = [_gap(m, m.expmap(x, t * u), m.retr(x, t * u)) for t in ts]
        else:
            errs = [float((m.retr(x, t * u) - x - t * u).abs().max()) for t in ts]
        if m.retr_is_expmap or max(errs) < 1e-13:
            assert max(errs) < 1e-12, errs
            continue
        slope = loglog_slope(ts, errs)
        SLOPES[f"{name}/{seed}"] = slope
        assert slope >= 1.9, (slope, errs)


# Bures–Wasserstein's exp_X(U) = (I + ℒ)X(I + ℒ) is injective only while I + ℒ ≻ 0, which a
# length of 0.7 exceeds at points with small eigenvalues (‖ℒ‖ ≲ ‖U‖/√λ_min).
MAP_SCALE = {"spd-bures-wasserstein": 0.2}


@CASE_PARAMS
def test_logmap_inverts_expmap_and_dist_is_norm(name, m, shape, dtype):
    if not m.has_logmap:
        pytest.skip(f"{m!r} has no closed-form logmap/dist")
    tol = TOL[dtype]["map"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        u = _tangent(m, x, seed, scale=MAP_SCALE.get(name, 0.7))
        y = m.expmap(x, u)
        _close(m.logmap(x, y), u, tol)
        _close(m.dist(x, y), m.norm(x, u), tol)
        _close(m.dist(x, x), torch.zeros_like(m.dist(x, x)), tol)


@CASE_PARAMS
def test_transport(name, m, shape, dtype):
    tol_t = TOL[dtype]["member"]
    tol_i = TOL[dtype]["iso"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        y = m.retr(x, _tangent(m, x, seed, scale=0.8))
        u = _tangent(m, x, seed + 50, scale=1.0)
        v = _tangent(m, x, seed + 60, scale=2.0)
        pu, pv = m.transp(x, y, u), m.transp(x, y, v)
        ok, why = m.check_vector(y, pu, explain=True, atol=tol_t, rtol=tol_t)
        assert ok, why
        _close(m.transp(x, x, u), u, 10 * tol_i)
        if m.transp_is_isometry:
            _close(m.inner(y, pu, pv), m.inner(x, u, v), tol_i)
            _close(m.norm(y, pu), m.norm(x, u), tol_i)


def _closed_form_dist(m: Manifold, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if isinstance(m, Sphere):
        return torch.arccos((x * y).sum(-1).clamp(-1, 1))
    if isinstance(m, Oblique):
        dim = -1 if m.unit == "rows" else -2
        return torch.arccos((x * y).sum(dim).clamp(-1, 1)).square().sum(-1).sqrt()
    if isinstance(m, PoincareBall):
        c = m.c
        num = 2 * c * (x - y).square().sum(-1)
        den = (1 - c * x.square().sum(-1)) * (1 - c * y.square().sum(-1))
        return torch.arccosh(1 + num / den) / math.sqrt(c)
    if isinstance(m, Lorentz):
        return math.sqrt(m.k) * torch.arccosh((-Lorentz.ldot(x, y) / m.k).clamp_min(1))
    raise AssertionError(m)


CLOSED = [c for c in CASES if isinstance(c[1], (Sphere, Oblique, PoincareBall, Lorentz))]


@pytest.mark.parametrize(("name", "m", "shape"), CLOSED, ids=[c[0] for c in CLOSED])
def test_closed_form_distances(name, m, shape):
    for seed in SEEDS:
        x = _point(m, shape, seed, torch.float64)
        y = _point(m, shape, seed + 100, torch.float64)
        torch.testing.assert_close(m.dist(x, y), _closed_form_dist(m, x, y), atol=1e-10, rtol=1e-10)


@CASE_PARAMS
def test_rgrad2egrad_inverts_egrad2rgrad(name, m, shape, dtype):
    """egrad2rgrad(x, rgrad2egrad(x, r)) = r and Σ rgrad2egrad(x, r)·s = ⟨r, s⟩_x (Riesz)."""
    tol = 1e-10 if dtype == torch.float64 else TOL[dtype]["iso"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        g = torch.Generator().manual_seed(seed + 200)
        r = m.proju(x, torch.randn(shape, generator=g, dtype=dtype))
        s = m.proju(x, torch.randn(shape, generator=g, dtype=dtype))
        lowered = m.rgrad2egrad(x, r)
        assert lowered.shape == r.shape
        _close(m.egrad2rgrad(x, lowered), r, tol)
        _close(_pairing(m, lowered, s), m.inner(x, r, s), tol)


@CASE_PARAMS
def test_violation_is_zero_on_points_and_detects_a_perturbation(name, m, shape, dtype):
    # The cheap closed form against the generic definition max |projx(x) − x|: both ~0 on a
    # point; off the manifold the closed form is non-zero wherever projx moves the point.
    tol = TOL[dtype]["member"]
    for seed in SEEDS:
        x = _point(m, shape, seed, dtype)
        assert float(m.violation(x)) <= tol
        g = torch.Generator().manual_seed(seed + 100)
        y = x + 1e-2 * torch.randn(shape, generator=g, dtype=dtype)
        moved = float((m.projx(y) - y).abs().max())
        if moved > 1e-4 and not isinstance(m, PoincareBall):  # inside the ball nothing moves
            assert float(m.violation(y)) > 1e-5


BATCHED = [c for c in CASES if len(c[2]) > c[1].ndim and not getattr(c[1], "flatten", False)]


@pytest.mark.parametrize(("name", "m", "shape"), BATCHED, ids=[c[0] for c in BATCHED])
def test_batched_point_broadcasts_against_an_unbatched_vector(name, m, shape):
    """proju / egrad2rgrad / retr / inner of x[B, *point] with u[*point] equal those with u
    expanded to x's shape (every single manifold does; issue 20 item 19 for products)."""
    dtype = _dtype_for(m, torch.float64)
    x = _point(m, shape, 1, dtype)
    point_shape = shape[len(shape) - m.ndim :]
    g = torch.Generator().manual_seed(7)
    u = 0.1 * torch.randn(point_shape, generator=g, dtype=dtype)
    wide = u.expand(shape)
    for op in (m.proju, m.egrad2rgrad):
        # (Euclidean's identity returns u itself, which broadcasts the same way.)
        _close(torch.broadcast_to(op(x, u), shape), op(x, wide), 1e-12)
    t = m.proju(x, wide)
    _close(m.inner(x, t, u), m.inner(x, t, wide), 1e-12)
    _close(m.norm(x, t), m.norm(x, m.proju(x, wide)), 1e-12)
