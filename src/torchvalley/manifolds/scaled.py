"""``Scaled``: a manifold whose metric is multiplied by s² (distances by s), s possibly learnable.

For a constant s > 0 the metric g̃ = s²g has the same Levi-Civita connection as g, hence the same
geodesics, exponential and logarithmic maps (as curves and tangent vectors), retractions and
parallel transports; what changes is the length: ⟨u, v⟩~ = s²⟨u, v⟩, ‖u‖~ = s‖u‖,
d̃ = s·d, the Riemannian gradient g̃rad = grad / s² (and its inverse ×s²), and an adaptive
method's second moment ×s². A sphere of radius r is ``Scaled(Sphere(), r)`` in this sense
(distances r·θ).

The scale may be learnable: ``Scaled(m, Scale(2.0))`` keeps s = exp(raw) > 0 with ``raw`` an
ordinary float64 parameter (``scale.parameters()``), and ``dist``/``inner``/``norm`` are
differentiable in it (e.g. a loss on distances learns the radius).

Deliberate difference from geoopt's ``Scaled``: geoopt rescales the *arguments* of ``expmap``/
``retr`` (u ↦ u/s) and the results of ``logmap`` (×s) and ``dist`` (×s), but leaves ``inner``,
``norm`` and ``egrad2rgrad`` unscaled, so its exp(x, log(x, y)) = y but ‖log_x y‖ ≠ d(x, y)
(geoopt's expmap(x, u) equals ours at u/s). Ours is the Riemannian metric s²g throughout, so
every contract identity (Riesz representer, ‖log_x y‖_x = d(x, y)) holds.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from torchvalley.manifolds.base import Draw, Manifold

__all__ = ["Scale", "Scaled"]


class Scale(nn.Module):
    """A learnable positive scale s = exp(raw) for :class:`Scaled`.

    Args:
        init: the initial scale (finite, > 0).
        dtype: the dtype of ``raw`` (float64 by default).
        device: its device.
    """

    raw: nn.Parameter

    def __init__(
        self,
        init: float = 1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        v = float(init)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"init must be a finite positive float, got {init!r}")
        self.raw = nn.Parameter(torch.tensor(math.log(v), dtype=dtype, device=device))

    def value(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """s = exp(raw), cast to ``dtype``/``device`` if given (differentiable)."""
        s = torch.exp(self.raw)
        if dtype is not None or device is not None:
            s = s.to(dtype=dtype or s.dtype, device=device)
        return s

    def forward(self, dtype: torch.dtype | None = None) -> Tensor:
        """Same as :meth:`value`."""
        return self.value(dtype)

    def extra_repr(self) -> str:
        """The current scale."""
        return f"s={math.exp(float(self.raw.detach())):.6g}"


class Scaled(Manifold):
    """``manifold`` with its metric multiplied by s² (see the module docstring).

    Args:
        manifold: the base manifold.
        scale: s > 0, a float or a learnable :class:`Scale`.
    """

    def __init__(self, manifold: Manifold, scale: float | Scale = 1.0) -> None:
        if not isinstance(manifold, Manifold):
            raise TypeError(f"manifold must be a Manifold, got {type(manifold).__name__}")
        if isinstance(scale, Scale):
            self._scale: Scale | None = scale
            self._s: float | None = None
        else:
            s = float(scale)
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"scale must be a finite positive float, got {scale!r}")
            self._scale = None
            self._s = s
        self.base = manifold
        self.ndim = manifold.ndim
        self.low_precision_sensitive = manifold.low_precision_sensitive
        self.transp_is_isometry = manifold.transp_is_isometry
        self.retr_is_expmap = manifold.retr_is_expmap
        self.has_expmap = manifold.has_expmap
        self.has_logmap = manifold.has_logmap
        self.violation_name = manifold.violation_name

    def __deepcopy__(self, memo: dict[int, Any]) -> Scaled:
        if self._scale is None and copy.deepcopy(self.base, memo) is self.base:
            return self
        if id(self) in memo:
            return memo[id(self)]
        result = copy.copy(self)
        result.base = copy.deepcopy(self.base, memo)
        result._scale = copy.deepcopy(self._scale, memo)
        memo[id(self)] = result
        return result

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("manifold", self.base), ("scale", self._s if self._scale is None else self._scale))

    @property
    def strict_membership(self) -> bool:  # type: ignore[override]
        """That of the base manifold."""
        return self.base.strict_membership

    @property
    def learnable(self) -> bool:
        """Whether the scale is a learnable :class:`Scale`."""
        return self._scale is not None

    @property
    def scale_module(self) -> Scale | None:
        """The learnable :class:`Scale`, or None."""
        return self._scale

    @property
    def scale(self) -> float:
        """The current s as a Python float (detached)."""
        if self._scale is None:
            return self._s  # type: ignore[return-value]
        return math.exp(float(self._scale.raw.detach()))

    def _sv(self, x: Tensor) -> float | Tensor:
        if self._scale is None:
            return self._s  # type: ignore[return-value]
        real = x.real if x.is_complex() else x
        return self._scale.value(real.dtype, x.device)

    # ---------------------------------------------------------------- unchanged maps
    def projx(self, x: Tensor) -> Tensor:
        """The base manifold's ``projx``."""
        return self.base.projx(x)

    def reproject(self, x: Tensor) -> Tensor:
        """The base manifold's ``reproject``."""
        return self.base.reproject(x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """The base manifold's ``proju``."""
        return self.base.proju(x, u)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """The base manifold's retraction (geodesics do not change under a constant scale)."""
        return self.base.retr(x, u)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """The base manifold's exponential map."""
        return self.base.expmap(x, u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """The base manifold's logarithmic map."""
        return self.base.logmap(x, y)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """The base manifold's transport."""
        return self.base.transp(x, y, v)

    def violation(self, x: Tensor) -> Tensor:
        """The base manifold's constraint violation."""
        return self.base.violation(x)

    # ---------------------------------------------------------------- scaled quantities
    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """base.egrad2rgrad / s²."""
        return self.base.egrad2rgrad(x, g) / self._sv(x) ** 2

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """base.rgrad2egrad · s²."""
        return self.base.rgrad2egrad(x, r) * self._sv(x) ** 2

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """s² · base.inner."""
        return self.base.inner(x, u, v, keepdim=keepdim) * self._sv(x) ** 2

    def adaptive_inner(self, x: Tensor, u: Tensor) -> Tensor:
        """s² · base.adaptive_inner."""
        return self.base.adaptive_inner(x, u) * self._sv(x) ** 2

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """s · base.dist."""
        return self.base.dist(x, y, keepdim=keepdim) * self._sv(x)

    # ---------------------------------------------------------------- construction and checks
    def _random(self, shape: torch.Size, draw: Draw, **kwargs: Any) -> Tensor:
        return self.base._random(shape, draw, **kwargs)

    def _origin(self, zeros: Tensor) -> Tensor:
        return self.base._origin(zeros)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        return self.base._check_shape(shape)

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        return self.base._check_point(x, atol, rtol)

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        return self.base._check_vector(x, u, atol, rtol)
