"""Issue 21: every new manifold under every Riemannian optimizer, Riemannian SAM, FG-SGD
(ManifoldParameters in an FG-SGD group) and products.

Oracle: membership (``check_point`` at the default tolerance of the dtype) after the steps, and
descent of the loss from a random start: 30 small steps of a first-order method on a smooth loss
must lower it. The loss is Σ d(x, t)² + 0.1 Σ sin(3x) (real part for the complex Siegel spaces)
where a distance exists; a Euclidean loss ‖x − t‖² + Σ sin(3x) would be badly scaled in these
geometries (on SPD with Bures–Wasserstein the Riemannian gradient grows like X·G, on the κ > 0
projected sphere coordinates run off to the pole at infinity) and diverges at a fixed lr. The
Birkhoff polytope (no distance) and products containing it use ‖x − t‖², whose minimum is
inside the polytope (a term pushing entries to 0 would drive the points to a vertex, where
Sinkhorn's convergence slows down without bound).
"""

from __future__ import annotations

import pytest
import torch

from torchvalley.manifolds import (
    BirkhoffPolytope,
    BoundedDomain,
    Kappa,
    ManifoldParameter,
    Product,
    Scaled,
    Sphere,
    SphereProjection,
    SphereSubspaceIntersection,
    Stereographic,
    SymmetricPositiveDefinite,
    UpperHalf,
)
from torchvalley.optim import SAM, RiemannianAdagrad, RiemannianAdam, RiemannianSGD
from torchvalley.optim.fgsgd import FGSGD

_SPAN = torch.tensor([[1.0, 0, 0, 2, 0], [0, 1, 1, 0, 0]]).T

MANIFOLDS = [
    ("spd-affine", SymmetricPositiveDefinite(), (3, 4, 4)),
    ("spd-log-euclidean", SymmetricPositiveDefinite("log-euclidean"), (3, 4, 4)),
    ("spd-bures-wasserstein", SymmetricPositiveDefinite("bures-wasserstein"), (3, 4, 4)),
    ("stereo-k-1", Stereographic(-1.0), (6, 3)),
    # κ > 0: the default retraction is the exponential map (x + u overshoots to the pole under
    # RSGD with momentum, see the Stereographic docstring); the first-order one (exact=False) is
    # run at κ = 0.5, where these short runs stay away from the pole.
    ("stereo-k+1", Stereographic(1.0), (6, 3)),
    ("stereo-k0", Stereographic(0.0), (6, 3)),
    ("sphere-projection-first-order", SphereProjection(0.5, exact=False), (6, 3)),
    ("birkhoff", BirkhoffPolytope(), (2, 4, 4)),
    ("upper-half", UpperHalf(), (2, 3, 3)),
    ("bounded-domain", BoundedDomain(), (2, 3, 3)),
    ("sphere-subspace", SphereSubspaceIntersection(_SPAN), (6, 5)),
    ("scaled-spd", Scaled(SymmetricPositiveDefinite(), 2.0), (3, 4, 4)),
    ("scaled-stereo", Scaled(Stereographic(-1.0), 0.5), (6, 3)),
    (
        "product",
        Product(
            (SymmetricPositiveDefinite(), (2, 2)),
            (Stereographic(-1.0), 3),
            (BirkhoffPolytope(), (3, 3)),
            (SphereSubspaceIntersection(_SPAN), 5),
        ),
        (4, 21),
    ),
    (
        "product-scaled-stereo",
        Product(
            (Scaled(Sphere(), 2.0), 3),
            (Stereographic(1.0, exact=True), 2),
            (Stereographic(0.0), 2),
        ),
        (4, 7),
    ),
    # complex factors: a product of the two Siegel spaces (2×2 each, flattened).
    ("product-siegel", Product((UpperHalf(), (2, 2)), (BoundedDomain(), (2, 2))), (3, 8)),
]

OPTIMIZERS = [
    ("rsgd", lambda p: RiemannianSGD(p, lr=1e-2, momentum=0.9)),
    ("radam", lambda p: RiemannianAdam(p, lr=1e-2)),
    ("ramsgrad", lambda p: RiemannianAdam(p, lr=1e-2, amsgrad=True)),
    ("radagrad", lambda p: RiemannianAdagrad(p, lr=5e-2)),
    ("riemannian-sam", lambda p: SAM(p, "rsgd", rho=0.02, ascent="riemannian", lr=1e-2)),
    # FG-SGD steps a ManifoldParameter on its own manifold with the step bounded per point.
    ("fgsgd", lambda p: FGSGD(p, lr=1e-2, momentum=0.9)),
]


def _complex(manifold) -> bool:
    return isinstance(manifold, (UpperHalf, BoundedDomain)) or (
        isinstance(manifold, Product) and isinstance(manifold.factors[0][0], UpperHalf)
    )


def _loss(manifold, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not manifold.has_logmap and not _complex(manifold):
        return (x - target).square().sum()
    wiggle = torch.sin(3 * (x.real if x.is_complex() else x)).sum()
    return manifold.dist(x, target).square().sum() + 0.1 * wiggle


def _run(manifold, shape, make, dtype=torch.float64, steps=30):
    g = torch.Generator().manual_seed(0)
    start = manifold.random(*shape, generator=g, dtype=dtype)
    x = ManifoldParameter(start, manifold)
    target = manifold.random(*shape, generator=g, dtype=dtype)
    opt = make([x])
    before = float(_loss(manifold, x.detach(), target))
    for _ in range(steps):
        if isinstance(opt, SAM):

            def closure():
                opt.zero_grad()
                loss = _loss(manifold, x, target)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            opt.zero_grad()
            _loss(manifold, x, target).backward()
            opt.step()
    return x, before, float(_loss(manifold, x.detach(), target))


@pytest.mark.parametrize(("oname", "make"), OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize(("name", "manifold", "shape"), MANIFOLDS, ids=[m[0] for m in MANIFOLDS])
def test_steps_stay_on_the_manifold_and_descend(name, manifold, shape, oname, make):
    if oname == "riemannian-sam" and _complex(manifold):
        # SAM refuses complex parameters (its ascent norm is defined on real coordinates).
        with pytest.raises(ValueError, match="complex"):
            _run(manifold, shape, make)
        return
    x, before, after = _run(manifold, shape, make)
    ok, why = manifold.check_point(x.detach(), explain=True)
    assert ok, why
    assert after < before, (before, after)


@pytest.mark.parametrize("name", ["spd-affine", "stereo-k-1", "birkhoff", "upper-half"])
def test_float32_steps_stay_on_the_manifold(name):
    _, manifold, shape = next(m for m in MANIFOLDS if m[0] == name)
    x, before, after = _run(manifold, shape, OPTIMIZERS[1][1], dtype=torch.float32)
    ok, why = manifold.check_point(x.detach(), explain=True)
    assert ok, why
    assert after < before


def test_learnable_kappa_crosses_zero_under_an_optimizer():
    """Fixed points, target distances measured at κ = +0.5: Adam on κ alone, started at −0.05,
    crosses 0 (no NaN, the Taylor branch takes over) and recovers κ = 0.5."""
    g = torch.Generator().manual_seed(3)
    pts = 0.4 * torch.randn(10, 3, generator=g, dtype=torch.float64)
    target = Stereographic(0.5).dist(pts[:, None], pts[None])
    kappa = Kappa(-0.05)
    m = Stereographic(kappa)
    opt = torch.optim.Adam(kappa.parameters(), lr=2e-2)
    seen = []
    for _ in range(300):
        opt.zero_grad()
        loss = (m.dist(pts[:, None], pts[None]) - target).square().mean()
        loss.backward()
        assert torch.isfinite(kappa.raw.grad)
        opt.step()
        seen.append(m.k)
    assert min(seen) < 0 < max(seen)
    assert abs(m.k - 0.5) < 1e-3


def test_stabilize_counts_steps_per_parameter():
    """Documented difference from geoopt (whose RSGD re-projects every manifold parameter of
    the group on every k-th *group* step): ours re-projects a parameter on its own k-th step, so
    a parameter that received no gradient (did not move, hence did not drift) is not touched.

    Two sphere parameters; b gets a gradient only on every other step. With stabilize=2 after
    4 optimizer steps, a (4 steps) was re-projected twice and b (2 steps) once.
    """
    calls: dict[int, int] = {}

    class Counting(Sphere):
        def projx(self, x):
            calls[x.shape[0]] = calls.get(x.shape[0], 0) + 1
            return super().projx(x)

        def reproject(self, x):
            return self.projx(x)

    m = Counting()
    g = torch.Generator().manual_seed(0)
    a = ManifoldParameter(Sphere().random(2, 3, generator=g, dtype=torch.float64), m)
    b = ManifoldParameter(Sphere().random(3, 3, generator=g, dtype=torch.float64), m)
    opt = RiemannianSGD([a, b], lr=0.1, stabilize=2)
    calls.clear()
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        loss = a[:, 0].sum() + (b[:, 0].sum() if step % 2 == 0 else 0)
        loss.backward()
        opt.step()
    assert calls == {2: 2, 3: 1}
    assert opt.state[a]["manifold_steps"] == 4
    assert opt.state[b]["manifold_steps"] == 2
    # ``optimizer.stabilize()`` re-projects every manifold parameter on demand, as geoopt's
    # per-group re-projection does.
    calls.clear()
    opt.stabilize()
    assert calls == {2: 1, 3: 1}


@pytest.mark.parametrize("name", ["spd", "birkhoff", "stereographic", "siegel", "subsphere"])
def test_fgsgd_refuses_other_manifolds_as_constraint_strings(name):
    """docs/fgsgd.md: the new manifolds enter FG-SGD as ManifoldParameters, not as constraints."""
    w = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="Invalid constraint"):
        FGSGD([w], lr=0.1, constraint=name)


def test_fgsgd_trains_zero_mean_unit_norm_filters_as_a_manifold_parameter():
    """A bank of 5 filters of length 6, each unit-norm with zero mean (the sphere ∩ the
    complement of span(1)), in an FG-SGD group next to a plain bias. Oracle: the constraints
    written out (row norms 1, row sums 0), the bias gets torch.optim.SGD's step, and a linear
    loss ⟨C, W⟩ decreases towards its closed-form minimum −Σ‖P cᵢ‖ (P the centring projector)."""
    g = torch.Generator().manual_seed(0)
    m = SphereSubspaceIntersection(torch.ones(6, dtype=torch.float64), complement=True)
    w = ManifoldParameter(m.random(5, 6, generator=g, dtype=torch.float64), m)
    b = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    c = torch.randn(5, 6, generator=g, dtype=torch.float64)
    opt = FGSGD([w, b], lr=0.2, momentum=0.5)
    for _ in range(200):
        opt.zero_grad()
        ((c * w).sum() + b.sum()).backward()
        opt.step()
    wd = w.detach()
    torch.testing.assert_close(wd.norm(dim=1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(
        wd.sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert "radius" not in opt.state[w]
    centred = c - c.mean(dim=1, keepdim=True)
    optimum = -float(centred.norm(dim=1).sum())
    assert abs(float((c * wd).sum()) - optimum) < 1e-6
    # the bias: SGD with momentum 0.5 on a constant gradient 1
    ref = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    sgd = torch.optim.SGD([ref], lr=0.2, momentum=0.5)
    for _ in range(200):
        ref.grad = torch.ones(5, dtype=torch.float64)
        sgd.step()
    torch.testing.assert_close(b.detach(), ref.detach(), rtol=0, atol=1e-12)


def test_stereographic_default_retraction_is_exp_for_fixed_positive_kappa():
    """exact=None: exp for a fixed κ > 0, x + u for κ ≤ 0 and for a learnable κ."""
    assert Stereographic(1.0).exact and SphereProjection(0.5).exact
    assert not Stereographic(-1.0).exact and not Stereographic(0.0).exact
    assert not Stereographic(Kappa(0.5)).exact
    assert not Stereographic(1.0, exact=False).exact
