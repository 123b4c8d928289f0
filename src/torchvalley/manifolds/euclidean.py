"""Euclidean space ℝⁿ as a manifold (the identity geometry)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import Draw, Manifold

__all__ = ["Euclidean"]


class Euclidean(Manifold):
    """Euclidean space: every tensor is a point, every vector is tangent.

    ``retr = expmap = x + u``, ``logmap = y − x``, ``transp`` is the identity (an isometry) and
    ``dist = ‖x − y‖``.

    Args:
        ndim: how many trailing dimensions form one point. With the default 0 every entry is its
            own point, so ``inner``/``norm``/``dist`` are elementwise (coordinate-wise adaptivity,
            as geoopt's ``Euclidean``); ``ndim=1`` reduces over the last dimension.
    """

    is_flat = True
    transp_is_isometry = True
    retr_is_expmap = True

    def __init__(self, ndim: int = 0) -> None:
        if int(ndim) < 0:
            raise ValueError(f"ndim must be >= 0, got {ndim}")
        self.ndim = int(ndim)

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("ndim", self.ndim),)

    def projx(self, x: Tensor) -> Tensor:
        """Identity."""
        return x

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Identity."""
        return u

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """Identity: the Riemannian gradient is the Euclidean one."""
        return g

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """Identity: the Euclidean representative is the vector itself."""
        return r

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """x + u."""
        return x + u

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """x + u."""
        return x + u

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """y − x."""
        return y - x

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Identity (parallel transport of a flat space)."""
        return v

    def adaptive_inner(self, x: Tensor, u: Tensor) -> Tensor:
        """u * u: coordinate-wise, as Adam (whatever ``ndim``)."""
        return u * u

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """‖x − y‖ over the point dimensions."""
        d = y - x
        return self._reduce(d * d, keepdim).sqrt()

    def violation(self, x: Tensor) -> Tensor:
        """Always 0: every tensor is a point."""
        return x.new_zeros(())

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Standard normal entries."""
        return draw.randn(shape)

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        return True, None
