"""The Birkhoff polytope: positive doubly stochastic n×n matrices, with the Fisher metric.

Douik & Hassibi, "Manifold Optimization Over the Set of Doubly Stochastic Matrices: A
Second-Order Geometry" (IEEE TSP 2019, arXiv:1802.02628). Points are X with Xᵢⱼ > 0, X1 = 1 and
Xᵀ1 = 1 (the relative interior of the polytope); tangent vectors have zero row and column sums.

* metric ⟨U, V⟩_X = Σᵢⱼ UᵢⱼVᵢⱼ / Xᵢⱼ (Fisher information);
* proju(X, Z) = Z − (α1ᵀ + 1βᵀ) ∘ X, the projection orthogonal *in the Fisher metric* (its
  normal space is {(α1ᵀ + 1βᵀ) ∘ X}), with (I − XXᵀ)α = Z1 − XZᵀ1 and β = Zᵀ1 − Xᵀα; the
  singular system (null vector 1) is solved as (I − XXᵀ + 11ᵀ/n)α = Z1 − XZᵀ1, whose right-hand
  side is orthogonal to 1;
* Riemannian gradient proju(X, X ∘ G) (the Riesz representer of the Euclidean gradient G in the
  Fisher metric), its inverse R / X;
* retraction R_X(U) = projx(X ∘ exp(U / X)) (first order, positive), ``projx`` = the Sinkhorn–
  Knopp iteration (alternate row and column normalization of a positive matrix) to a tolerance
  of ``tol`` (default 1e-13 in float64, 2e-6 in float32, on the row and column sums);
* transport ``proju(Y, V)`` (a projection, not an isometry); no closed-form exp/log/distance.

Deliberate differences from geoopt's ``BirkhoffPolytope``: geoopt's ``egrad2rgrad`` is its
``proju`` of G (projection without the factor X), which is not the Riesz representer of its own
metric, and its metric carries an extra factor 1/n; its Sinkhorn stops at 1e-5.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import LOW_PRECISION, Draw, Manifold, _violation_reason

__all__ = ["BirkhoffPolytope", "sinkhorn"]


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-13 if dtype == torch.float64 else 2e-6


def sinkhorn(x: Tensor, max_iter: int = 5000, tol: float | None = None) -> Tensor:
    """The doubly stochastic scaling diag(r) X diag(c) of a positive matrix (Sinkhorn–Knopp).

    A matrix with a non-positive entry first has its entries raised to at least 1e-3 times its
    largest entry (positive matrices are used as they are, so ``sinkhorn`` is idempotent on the
    polytope): Sinkhorn converges (linearly) only for matrices with total
    support, which a positive matrix has, and tiny entries slow it down. The iteration
    stops when every row and column sum is within ``tol`` of 1 (checked every 8 iterations) or
    after ``max_iter`` iterations.

    Args:
        x: matrices ``(..., n, n)``.
        max_iter: the iteration limit.
        tol: the tolerance on the sums (default 1e-13 for float64, 2e-6 otherwise).

    Returns:
        The scaled matrices.
    """
    work = x.float() if x.dtype in LOW_PRECISION else x
    tol = _default_tol(work.dtype) if tol is None else tol
    floor = 1e-3
    top = work.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(work.dtype).tiny)
    positive = (work > 0).flatten(-2).all(-1)[..., None, None]
    y = torch.where(positive, work, torch.maximum(work, floor * top))
    for i in range(max_iter):
        y = y / y.sum(-1, keepdim=True)
        y = y / y.sum(-2, keepdim=True)
        if i % 8 == 0 and float((y.sum(-1) - 1).abs().max()) <= tol:
            break
    return y.to(x.dtype)


class BirkhoffPolytope(Manifold):
    """Positive doubly stochastic matrices over the last two dimensions (see the module doc).

    Args:
        max_iter: Sinkhorn's iteration limit in ``projx``/``retr``.
        tol: Sinkhorn's tolerance on the row/column sums (default per dtype).
    """

    ndim = 2
    has_expmap = False
    has_logmap = False
    violation_name = "max |row or column sum − 1| (or the most negative entry)"

    def __init__(self, max_iter: int = 5000, tol: float | None = None) -> None:
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        if tol is not None and not float(tol) > 0:
            raise ValueError(f"tol must be a positive float, got {tol!r}")
        self.max_iter = max_iter
        self.tol = None if tol is None else float(tol)

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("max_iter", self.max_iter), ("tol", self.tol))

    def projx(self, x: Tensor) -> Tensor:
        """Sinkhorn–Knopp scaling of x (entries raised to a small positive floor first)."""
        return sinkhorn(x, self.max_iter, self.tol)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Z − (α1ᵀ + 1βᵀ) ∘ X, orthogonal in the Fisher metric."""
        x, u = torch.broadcast_tensors(x, u)
        n = x.shape[-1]
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        lu = torch.linalg.lu_factor(eye - x @ x.mT + torch.full_like(eye, 1.0 / n))

        def remove_normal(z: Tensor) -> Tensor:
            a = z.sum(-1, keepdim=True)  # Z1
            b = z.sum(-2).unsqueeze(-1)  # Zᵀ1
            alpha = torch.linalg.lu_solve(*lu, a - x @ b)
            beta = b - x.mT @ alpha
            return z - (alpha + beta.mT) * x

        # One step of iterative refinement (the same factorization) removes the residual normal
        # component that rounding leaves in low precision, so proju is idempotent to rounding.
        return remove_normal(remove_normal(u))

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """proju(X, X ∘ G)."""
        return self.proju(x, x * g)

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """R / X (metric lowering)."""
        return r / x

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """Σ U V / X."""
        v = u if v is None else v
        return self._reduce(u * v / x, keepdim)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """projx(X ∘ exp(U / X))."""
        return self.projx(x * torch.exp(u / x))

    def violation(self, x: Tensor) -> Tensor:
        """max |row/column sum − 1|, or the largest negative entry if larger."""
        rows = (x.sum(-1) - 1).abs().amax()
        cols = (x.sum(-2) - 1).abs().amax()
        neg = (-x).clamp_min(0).amax()
        return torch.stack([rows, cols, neg]).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 1.0) -> Tensor:
        """Sinkhorn scaling of exp(std · Gaussian) (positive, not uniform on the polytope)."""
        return self.projx(torch.exp(std * draw.randn(shape)))

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 1:
            return False, f"BirkhoffPolytope needs square matrices (..., n, n), got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        low = float(x.min())
        if not low > 0:
            return False, f"the smallest entry is {low:.3e}: entries must be positive"
        for name, sums in (("row", x.sum(-1)), ("column", x.sum(-2))):
            err = float((sums - 1).abs().max())
            if err > atol + rtol:
                return False, _violation_reason(f"max |{name} sum − 1|", err, atol + rtol)
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        scale = float(u.abs().sum(-1).max()) if u.numel() else 0.0
        for name, sums in (("row", u.sum(-1)), ("column", u.sum(-2))):
            err = float(sums.abs().max())
            if err > atol + rtol * scale:
                return False, _violation_reason(f"max |{name} sum|", err, atol + rtol * scale)
        return True, None
