"""Product manifolds M₁ × … × M_m over a flat last dimension.

Convention: a point has shape ``(..., D)`` with D = Σᵢ prod(shapeᵢ); the slice of the last
dimension belonging to factor i is reshaped to ``(..., *shapeᵢ)`` and handed to Mᵢ. The metric
is the sum of the factor metrics, d(x, y)² = Σᵢ dᵢ(xᵢ, yᵢ)², and every map (projections,
retraction, exp/log, transport, Riemannian gradient and its inverse) acts factor by factor.
The product's transport is an isometry exactly when every factor's is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import Draw, Manifold

__all__ = ["Product"]


class Product(Manifold):
    """Product of manifolds laid out as consecutive slices of the last dimension.

    Args:
        *factors: ``(manifold, shape)`` pairs; ``shape`` (an int or a tuple) is the point shape of
            that factor, e.g. ``Product((Sphere(), 3), (PoincareBall(), 2), (Stiefel(), (4, 2)))``
            acts on tensors of shape ``(..., 3 + 2 + 8)``. ``shape`` must have at least
            ``manifold.ndim`` dimensions; ``Stiefel(flatten=True)`` is not allowed as a factor.
    """

    ndim = 1

    def __init__(self, *factors: tuple[Manifold, int | Sequence[int]]) -> None:
        if not factors:
            raise ValueError("Product needs at least one (manifold, shape) factor")
        parsed: list[tuple[Manifold, tuple[int, ...]]] = []
        for item in factors:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Manifold)):
                raise TypeError(f"factors must be (manifold, shape) pairs, got {item!r}")
            manifold, shape = item
            shape_t = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
            if len(shape_t) < manifold.ndim or any(s < 1 for s in shape_t):
                raise ValueError(f"shape {shape_t} is not a valid point shape for {manifold!r}")
            if getattr(manifold, "flatten", False):
                raise ValueError("Stiefel(flatten=True) cannot be a Product factor")
            parsed.append((manifold, shape_t))
        self.factors: tuple[tuple[Manifold, tuple[int, ...]], ...] = tuple(parsed)
        sizes = [math.prod(s) for _, s in parsed]
        self.sizes = tuple(sizes)
        self.total = sum(sizes)
        self.transp_is_isometry = all(m.transp_is_isometry for m, _ in parsed)
        self.retr_is_expmap = all(m.retr_is_expmap for m, _ in parsed)
        self.has_expmap = all(m.has_expmap for m, _ in parsed)
        self.has_logmap = all(m.has_logmap for m, _ in parsed)
        self.low_precision_sensitive = any(m.low_precision_sensitive for m, _ in parsed)

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("factors", self.factors),)

    # ---------------------------------------------------------------- split / join
    def _split(self, t: Tensor) -> list[Tensor]:
        """The factor slices of ``t`` (shape ``(..., D)``), each as ``(..., *shapeᵢ)``."""
        batch = t.shape[:-1]
        parts = torch.split(t, list(self.sizes), dim=-1)
        return [p.reshape((*batch, *s)) for p, (_, s) in zip(parts, self.factors, strict=True)]

    def _join(self, parts: Sequence[Tensor]) -> Tensor:
        """The inverse of :meth:`_split`: factor results ``(..., *shapeᵢ)`` laid out flat.

        The batch dimensions are those of each part without its point shape, broadcast against
        each other (a batch of points with an unbatched vector gives a batch), so a scalar factor
        (shape ``()``) and a factor with its own batch of points both keep their place.
        """
        flat = [
            p.reshape(*p.shape[: p.dim() - len(s)], -1)
            for p, (_, s) in zip(parts, self.factors, strict=True)
        ]
        batch = torch.broadcast_shapes(*(f.shape[:-1] for f in flat))
        return torch.cat([f.expand(*batch, f.shape[-1]) for f in flat], dim=-1)

    def _map(self, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        split = [self._split(t) for t in tensors]
        return self._join([fn(m, *(s[i] for s in split)) for i, (m, _) in enumerate(self.factors)])

    def _factor_values(self, values: Sequence[Tensor]) -> list[Tensor]:
        """Per-point values of each factor (``inner``, ``dist``, ...) with the factor's own batch of
        points (the leading dims of ``shapeᵢ`` beyond ``ndimᵢ``) flattened into a last dim."""
        out = []
        for v, (m, s) in zip(values, self.factors, strict=True):
            own = len(s) - m.ndim  # the factor's own batch dimensions
            out.append(v.reshape(*v.shape[: v.dim() - own], -1))
        return out

    def _sum_factors(self, values: list[Tensor], keepdim: bool) -> Tensor:
        total = sum(v.sum(-1) for v in self._factor_values(values))
        assert isinstance(total, Tensor)
        return total.unsqueeze(-1) if keepdim else total

    # ---------------------------------------------------------------- interface
    def projx(self, x: Tensor) -> Tensor:
        """Factor-wise ``projx``."""
        return self._map(lambda m, a: m.projx(a), x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Factor-wise ``proju``."""
        return self._map(lambda m, a, b: m.proju(a, b), x, u)

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """Factor-wise ``egrad2rgrad``."""
        return self._map(lambda m, a, b: m.egrad2rgrad(a, b), x, g)

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """Factor-wise ``rgrad2egrad``."""
        return self._map(lambda m, a, b: m.rgrad2egrad(a, b), x, r)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """Factor-wise ``retr``."""
        return self._map(lambda m, a, b: m.retr(a, b), x, u)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """Factor-wise ``expmap``."""
        return self._map(lambda m, a, b: m.expmap(a, b), x, u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """Factor-wise ``logmap``."""
        return self._map(lambda m, a, b: m.logmap(a, b), x, y)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Factor-wise ``transp``."""
        return self._map(lambda m, a, b, c: m.transp(a, b, c), x, y, v)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """Σᵢ ⟨uᵢ, vᵢ⟩_{xᵢ}."""
        v = u if v is None else v
        xs, us, vs = self._split(x), self._split(u), self._split(v)
        vals = [m.inner(a, b, c) for (m, _), a, b, c in zip(self.factors, xs, us, vs, strict=True)]
        return self._sum_factors(vals, keepdim)

    def adaptive_inner(self, x: Tensor, u: Tensor) -> Tensor:
        """``‖uᵢ‖²_{xᵢ}`` of each factor's point(s), repeated over its slice (Bécigneul & Ganea's
        adaptivity across product factors; coordinate-wise on an ``Euclidean()`` factor)."""
        parts = [
            m.inner(a, b, keepdim=True).expand(torch.broadcast_shapes(a.shape, b.shape))
            for (m, _), a, b in zip(self.factors, self._split(x), self._split(u), strict=True)
        ]
        return self._join(parts)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """sqrt(Σᵢ dᵢ(xᵢ, yᵢ)²)."""
        xs, ys = self._split(x), self._split(y)
        vals = [m.dist(a, b) ** 2 for (m, _), a, b in zip(self.factors, xs, ys, strict=True)]
        return self._sum_factors(vals, keepdim).sqrt()

    def violation(self, x: Tensor) -> Tensor:
        """The largest violation over the factors."""
        values = [
            m.violation(part) for (m, _), part in zip(self.factors, self._split(x), strict=True)
        ]
        return torch.stack(values).max()

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Independent random points of each factor; ``shape[-1]`` must equal the total size."""
        batch = torch.Size(shape[:-1])
        parts = [
            m.random(*batch, *s, generator=draw.generator, dtype=draw.dtype, device=draw.device)
            for m, s in self.factors
        ]
        return self._join(parts)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 1 or shape[-1] != self.total:
            return False, (
                f"Product needs a last dimension of size {self.total}, i.e. a shape of at "
                f"least ({self.total},), got {tuple(shape)}"
            )
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        for i, ((m, _), part) in enumerate(zip(self.factors, self._split(x), strict=True)):
            ok, reason = m._check(part, None, atol, rtol)
            if not ok:
                return False, f"factor {i} ({m!r}): {reason}"
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        parts = zip(self.factors, self._split(x), self._split(u), strict=True)
        for i, ((m, _), a, b) in enumerate(parts):
            ok, reason = m._check(a, b, atol, rtol)
            if not ok:
                return False, f"factor {i} ({m!r}): {reason}"
        return True, None
