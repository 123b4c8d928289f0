"""Retractions must not cross the boundary: SPD (Bures–Wasserstein) and the Siegel spaces.

Regression for the 10k-step drift run that stopped in ``torch.linalg.eigh``: the BW space is
geodesically incomplete (the geodesic t ↦ (I + tℒ)X(I + tℒ) reaches a singular matrix at
t = 1/|λ_min(ℒ)|), and the retraction used the exp formula past that point, where it comes back
reflected and inflated ((I + ℒ)²X with ℒ = −5I is 16X). Under RSGD with momentum the inflated
point has a larger gradient, the next overshoot is larger, and the entries grew to 1e32 until
float32 ``eigh`` failed. The retraction now stops each step half way to the boundary.

The Siegel spaces had the same failure in another form: their first-order retraction
projx(Z + U) clamped a step that crossed the boundary (at infinite distance) onto a matrix of
condition number ``max_condition`` ~23 away in the metric, and the identity transport kept the
momentum constant in coordinates, so its length in the metric grew without bound as Im Z shrank.
"""

from __future__ import annotations

import torch

from torchvalley.manifolds import (
    BoundedDomain,
    ManifoldParameter,
    Product,
    SymmetricPositiveDefinite,
    UpperHalf,
)
from torchvalley.optim import RiemannianSGD

BW = SymmetricPositiveDefinite("bures-wasserstein")


def _diag_oracle(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Commuting case X = diag(w), U = diag(u): ℒ = diag(u / 2w), the geodesic is
    diag((1 + tℒ)² w); the step is α = min(1, ½ / max(0, −min ℒ))."""
    ell = u / (2 * w)
    alpha = torch.clamp(0.5 / (-ell.min()).clamp_min(1e-300), max=1.0)
    return torch.diag((1 + alpha * ell).square() * w)


def test_a_long_step_towards_the_boundary_is_not_reflected():
    x = torch.eye(3, dtype=torch.float64)
    y = BW.retr(x, -10 * x)
    # The exp formula gives (1 − 5)²I = 16I here; the retraction stops at (1 − ½)²I.
    assert torch.allclose(BW.expmap(x, -10 * x), 16 * x)
    assert torch.allclose(y, 0.25 * x, atol=1e-12)
    w = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    for u in (
        torch.tensor([-0.1, 0.2, 1.0], dtype=torch.float64),  # inside: the retraction is exp
        torch.tensor([-3.0, 0.5, -1.0], dtype=torch.float64),  # ℒ₁₁ = −5: past the boundary
        torch.tensor([0.5, -3.9, 2.0], dtype=torch.float64),  # ℒ₂₂ = −1.95
    ):
        torch.testing.assert_close(
            BW.retr(torch.diag(w), torch.diag(u)), _diag_oracle(w, u), rtol=1e-12, atol=1e-12
        )


def test_non_commuting_long_steps_follow_the_geodesic_and_stop_half_way():
    """Oracle: ℒ from the Sylvester equation Xℒ + ℒX = U solved as a Kronecker linear system
    (I ⊗ X + X ⊗ I) vec ℒ = vec U, then y = (I + αℒ)X(I + αℒ) with α from ℒ's spectrum."""
    g = torch.Generator().manual_seed(1)
    x = BW.random(8, 4, 4, generator=g, dtype=torch.float64)
    u = 20 * BW.proju(x, torch.randn(8, 4, 4, generator=g, dtype=torch.float64))
    y = BW.retr(x, u)
    eye = torch.eye(4, dtype=torch.float64)
    crossed = 0
    for xi, ui, yi in zip(x, u, y, strict=True):
        kron = torch.kron(eye, xi) + torch.kron(xi, eye)
        ell = torch.linalg.solve(kron, ui.T.reshape(-1)).reshape(4, 4).T
        low = float(torch.linalg.eigvalsh(ell).min())
        alpha = min(1.0, 0.5 / -low) if low < 0 else 1.0
        crossed += low < -1  # the exp formula would pass through the boundary
        a = eye + alpha * ell
        torch.testing.assert_close(yi, a @ xi @ a, rtol=1e-10, atol=1e-10)
        # I + αℒ ⪰ ½I, so no eigenvalue drops below a quarter of X's smallest.
        assert torch.linalg.eigvalsh(yi).min() >= torch.linalg.eigvalsh(xi).min() / 4 - 1e-12
    assert crossed >= 4  # the draw exercises the stop, not only the plain exp
    # Small steps are untouched: the retraction equals exp there.
    small = 1e-3 * u / u.abs().amax()
    torch.testing.assert_close(BW.retr(x, small), BW.expmap(x, small), rtol=1e-12, atol=1e-12)


def test_rsgd_with_momentum_does_not_inflate_the_point():
    """The drift benchmark's configuration (16 points 4×4, float32, seed 0, lr 1e-2, momentum
    0.9). Before the fix λ_max grew from 5 to 763 within 30 steps (and to 1e32 by step 500, where
    eigh failed); the loss's minimizers have λ_max ≈ 5, so the iterate has no reason to leave
    [0, 10]."""
    g = torch.Generator().manual_seed(0)
    x = ManifoldParameter(BW.random(16, 4, 4, generator=g, dtype=torch.float32), BW)
    t = BW.random(16, 4, 4, generator=g, dtype=torch.float32)
    opt = RiemannianSGD([x], lr=1e-2, momentum=0.9)

    def loss():
        return BW.dist(x, t).square().sum() + 0.1 * torch.sin(3 * x).sum()

    with torch.no_grad():
        first = float(loss())
    top = 0.0
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
        top = max(top, float(torch.linalg.eigvalsh(x.detach()).max()))
    assert top < 10, top
    assert BW.check_point(x.detach())
    with torch.no_grad():
        assert float(loss()) < first - 20


def test_siegel_retractions_stop_half_way_to_the_boundary():
    """Closed forms. Upper half plane (n = 1) at i with U = −3i: the boundary is reached at
    t = 1/3, α = ½/3, Z + αU = i/2 (before: projx(−2i) clamped Im to ~1e-308). Bounded domain at
    0 with U = 3I: α = ½ · 1/3, Z + αU = I/2 (before: (1 − eps)I)."""
    i = torch.ones(1, 1, dtype=torch.complex128) * 1j
    torch.testing.assert_close(UpperHalf().retr(i, -3 * i), i / 2)
    eye = torch.eye(2, dtype=torch.complex128)
    torch.testing.assert_close(BoundedDomain().retr(0 * eye, 3 * eye), eye / 2)
    # Short steps are Z + U.
    z = UpperHalf().random(2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = 1e-3 * UpperHalf().proju(z, torch.ones_like(z))
    torch.testing.assert_close(UpperHalf().retr(z, u), z + u)


def test_siegel_transport_is_the_hyperbolic_plane_isometry_for_n1():
    """n = 1: from i to x' + iy' the isometry z ↦ y'z + x' has differential v ↦ y'v; in the
    bounded domain (the disc with metric 4|dz|²/(1 − |z|²)²) the norm is kept as well."""
    i = torch.ones(1, 1, dtype=torch.complex128) * 1j
    y = torch.full((1, 1), 0.3 + 2.5j, dtype=torch.complex128)
    v = torch.full((1, 1), 0.7 - 0.2j, dtype=torch.complex128)
    torch.testing.assert_close(UpperHalf().transp(i, y, v), 2.5 * v)
    bd = BoundedDomain()
    a = torch.full((1, 1), 0.2 + 0.1j, dtype=torch.complex128)
    b = torch.full((1, 1), -0.5 + 0.6j, dtype=torch.complex128)
    torch.testing.assert_close(bd.norm(b, bd.transp(a, b, v)), bd.norm(a, v))
    scale = (1 - a.abs().square()) / (1 - b.abs().square())
    torch.testing.assert_close(bd.transp(a, b, v).abs(), v.abs() / scale)


def test_rsgd_with_momentum_on_the_siegel_product_descends():
    """A product of the two Siegel spaces (3 points, 2×2 each), RSGD momentum 0.9, lr 1e-2, on
    Σ d(Z, T)² + 0.1 Σ sin(3 Re Z): before the fixes the loss went 18 → 2.9 → 477 (a step crossed
    the boundary at step ~17 and every later step pushed into it)."""
    m = Product((UpperHalf(), (2, 2)), (BoundedDomain(), (2, 2)))
    g = torch.Generator().manual_seed(0)
    x = ManifoldParameter(m.random(3, 8, generator=g, dtype=torch.float64), m)
    t = m.random(3, 8, generator=g, dtype=torch.float64)
    opt = RiemannianSGD([x], lr=1e-2, momentum=0.9)
    seen = []
    for _ in range(60):
        opt.zero_grad()
        loss = m.dist(x, t).square().sum() + 0.1 * torch.sin(3 * x.real).sum()
        loss.backward()
        opt.step()
        seen.append(float(loss.detach()))
    assert max(seen) <= seen[0]
    assert seen[-1] < 1.0
    assert m.check_point(x.detach())
