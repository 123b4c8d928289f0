"""The oblique manifold OB: matrices whose rows (or columns) all have unit Euclidean norm.

OB is the product of unit spheres (Absil & Gallivan 2006; Absil, Mahony & Sepulchre 2008), so
every operation is the sphere's applied to each row/column, and the metric is the sum of the
sphere metrics: ⟨u, v⟩_X = tr(uᵀv), d(X, Y)² = Σᵢ d_S(xᵢ, yᵢ)².
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import Draw, Manifold, _violation_reason
from torchvalley.manifolds.sphere import (
    sphere_dist,
    sphere_expmap,
    sphere_logmap,
    sphere_proju,
    sphere_projx,
)

__all__ = ["Oblique"]


class Oblique(Manifold):
    """Matrices of shape ``(..., m, n)`` with unit-norm rows or unit-norm columns.

    Convention: ``unit="rows"`` (default) normalises along the last dimension, so each row of an
    ``(out, in)`` weight (one output neuron's weights) lies on S^{in−1}; ``unit="columns"``
    normalises along dimension −2, the textbook OB(n, p) = {X : diag(XᵀX) = 1}. A point is the
    whole matrix (``ndim = 2``): ``inner``/``norm``/``dist`` give one value per matrix.
    ``transp`` is the projection (not an isometry).

    Args:
        unit: ``"rows"`` or ``"columns"``.
    """

    ndim = 2

    def __init__(self, unit: str = "rows") -> None:
        if unit not in ("rows", "columns"):
            raise ValueError(f"unit must be 'rows' or 'columns', got {unit!r}")
        self.unit = unit
        self.violation_name = f"max |‖{unit[:-1]}‖ − 1|"
        self._dim = -1 if unit == "rows" else -2

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("unit", self.unit),)

    def projx(self, x: Tensor) -> Tensor:
        """Normalise every row/column."""
        return sphere_projx(x, self._dim)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Sphere projection per row/column."""
        return sphere_proju(x, u, self._dim)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """Normalise x + u per row/column."""
        return sphere_projx(x + u, self._dim)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """Sphere exponential map per row/column."""
        return sphere_expmap(x, u, self._dim)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """Sphere logarithm per row/column."""
        return sphere_logmap(x, y, self._dim)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """sqrt(Σᵢ d_S(xᵢ, yᵢ)²)."""
        d = sphere_dist(x, y, self._dim)
        return (d * d).sum(dim=(-2, -1), keepdim=keepdim).sqrt()

    def violation(self, x: Tensor) -> Tensor:
        """max |‖row‖ − 1| (or over columns with ``unit="columns"``)."""
        return (torch.linalg.vector_norm(x, dim=self._dim) - 1).abs().max()

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Uniform on each sphere factor."""
        return sphere_projx(draw.randn(shape), self._dim)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 2 or shape[self._dim] < 1:
            return False, f"Oblique needs a shape of at least (1, 1), got {tuple(shape)}"
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        err = float((x * u).sum(self._dim).abs().max())
        bound = atol + rtol * float(u.norm(dim=self._dim).max())
        if err > bound:
            return False, _violation_reason(f"max |⟨xᵢ, uᵢ⟩| per {self.unit[:-1]}", err, bound)
        return True, None
