"""The abstract manifold surface shared by every manifold in :mod:`torchvalley.manifolds`.

A manifold here is a plain Python object (not an ``nn.Module``) that acts on tensors whose
trailing ``ndim`` dimensions hold one point; leading dimensions are a batch. The surface follows
Absil, Mahony & Sepulchre, *Optimization Algorithms on Matrix Manifolds* (2008):

* ``projx(x)``: a point of the ambient space mapped onto the manifold;
* ``proju(x, u)``: an ambient vector mapped onto the tangent space T_x M;
* ``egrad2rgrad(x, g)``: the Riemannian gradient from the Euclidean one, G(x)⁻¹ g projected;
* ``rgrad2egrad(x, r)``: its inverse on tangent vectors (metric lowering, G(x) r): an ambient
  vector whose Euclidean pairing with tangent vectors is the metric pairing with ``r``;
* ``retr(x, u)``: a retraction R_x(u) (first order: R_x(0) = x, dR_x(0) = id);
* ``transp(x, y, v)``: a vector transport T_x M → T_y M (``transp_is_isometry`` says whether it is
  the parallel transport, an isometry, or a projection, which is not);
* ``inner``/``norm``: the Riemannian metric;
* ``expmap``/``logmap``/``dist``: the exponential map, its inverse and the geodesic distance,
  where a closed form exists (``has_logmap`` is False where ``logmap``/``dist`` have none);
* ``random``: random points; ``check_point``/``check_vector``: membership with an explanation.

Manifolds compare by value: two manifolds are equal when they have the same type and the same
hyperparameters (e.g. the curvature), so ``Sphere() == Sphere()``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LOW_PRECISION", "Manifold", "default_tolerance"]


def default_tolerance(dtype: torch.dtype) -> float:
    """Default ``atol``/``rtol`` of the membership checks for points stored in ``dtype``.

    1e-5 (geoopt's value) for float32/float64; for 16-bit floats, whose rounding alone moves a
    point by about their epsilon, 4·eps (float16: 3.9e-3, bfloat16: 3.1e-2), so that a point
    rounded to the dtype is accepted while a point clearly off the manifold is not.

    Args:
        dtype: the dtype of the checked tensor.

    Returns:
        The tolerance.
    """
    if dtype.is_floating_point:
        return max(1e-5, 4 * torch.finfo(dtype).eps)
    return 1e-5


#: 16-bit floating dtypes: checks and linear algebra run in float32 for them.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_shape(shape: Sequence[Any]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


class Manifold(abc.ABC):
    """Base class: a Riemannian manifold acting on the trailing ``ndim`` dimensions of a tensor.

    Subclasses implement ``projx``, ``proju``, ``retr``, ``_random`` (``random`` validates the
    shape first), ``violation`` (or ``_check_point``) and ``_check_vector``; the defaults are
    ``egrad2rgrad = proju`` (embedded submanifolds with the induced metric) and its inverse on
    tangent vectors ``rgrad2egrad(x, r) = r``, ``transp(x, y, v) = proju(y, v)`` (a projection
    transport, not an isometry), the Euclidean inner product over the point dimensions, and
    ``_check_point`` as ``violation(x) ≤ atol + rtol``.
    """

    ndim: int = 0
    #: True when the manifold is the flat coordinate space itself (identity projections,
    #: retraction ``x + u``, coordinate-wise metric): the optimizers then take torch's own
    #: Euclidean step. Only :class:`~torchvalley.manifolds.Euclidean` sets it.
    is_flat: bool = False
    #: True when float32 rounding is too coarse for the geometry (hyperbolic models: distances
    #: grow like log of the coordinates), so the optimizers step low-precision points in float64.
    low_precision_sensitive: bool = False
    #: Whether the optimizers reject a point off the manifold where it enters (construction is
    #: always checked). False where the constraint itself moves during training (a Poincaré
    #: ball with a learnable curvature: its points are re-projected at every step as c moves).
    strict_membership: bool = True
    #: The quantity :meth:`violation` measures, named in the membership check's explanation.
    violation_name: str = "max |projx(x) − x|"
    transp_is_isometry: bool = False
    retr_is_expmap: bool = False
    has_expmap: bool = True
    has_logmap: bool = True

    # ----------------------------------------------------------------------------- identity
    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        """The hyperparameters, as ``(name, value)`` pairs, that define equality and repr."""
        return ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifold):
            return NotImplemented
        return type(self) is type(other) and self._hparams() == other._hparams()

    def __hash__(self) -> int:
        return hash((type(self), self._hparams()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------------ dimensions
    def _point_dims(self, x: Tensor) -> tuple[int, ...]:
        """The tensor dimensions that form one point (the last ``ndim``)."""
        return tuple(range(x.dim() - self.ndim, x.dim()))

    def _reduce(self, t: Tensor, keepdim: bool) -> Tensor:
        dims = self._point_dims(t)
        if not dims:
            return t
        return t.sum(dim=dims, keepdim=keepdim)

    # ------------------------------------------------------------------------ interface
    @abc.abstractmethod
    def projx(self, x: Tensor) -> Tensor:
        """Project an ambient point onto the manifold."""

    def violation(self, x: Tensor) -> Tensor:
        """The largest violation of the constraint by ``x`` (a batch of points), as a 0-d tensor.

        By default ``max |projx(x) − x|``; every manifold here overrides it with a cheap closed
        form (no SVD), which the optimizers' drift control evaluates after each step.
        """
        return (self.projx(x) - x).abs().max()

    def reproject(self, x: Tensor) -> Tensor:
        """Re-project a point that has drifted slightly off the manifold (rounding drift).

        By default ``projx``; a manifold whose ``projx`` is expensive (Stiefel: an SVD) may use
        a cheaper iteration that is accurate only near the manifold.
        """
        return self.projx(x)

    @abc.abstractmethod
    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Project an ambient vector ``u`` onto the tangent space at ``x``."""

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """Riemannian gradient from the Euclidean gradient ``g``: here ``proju(x, g)``."""
        return self.proju(x, g)

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """Euclidean representative of a tangent vector: the inverse of :meth:`egrad2rgrad`.

        Lowers the index with the metric: returns an ambient vector ``g`` with
        ``egrad2rgrad(x, g) == r`` and ``Σ g·s == inner(x, r, s)`` for every tangent ``s`` (the
        Riesz representative of ⟨r, ·⟩_x in the Euclidean pairing). A Euclidean-gradient
        consumer (a Riemannian optimizer applying ``egrad2rgrad`` at ``x``) thus recovers ``r``
        exactly. The default, ``r`` itself, is right for embedded submanifolds with the induced
        metric, where ``egrad2rgrad = proju`` is the identity on tangent vectors; manifolds with
        another metric override it.

        Args:
            x: the base point.
            r: a tangent vector at ``x`` (the result is unspecified for non-tangent ``r``).

        Returns:
            The ambient vector ``G(x) r`` (same shape as ``r``).
        """
        del x
        return r

    @abc.abstractmethod
    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """Retraction R_x(u) of a tangent vector ``u`` at ``x``."""

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Vector transport of ``v`` ∈ T_x M to T_y M; by default the projection ``proju(y, v)``."""
        del x
        return self.proju(y, v)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """Riemannian inner product ⟨u, v⟩_x (⟨u, u⟩_x when ``v`` is None), one value per point."""
        del x
        if v is None:
            v = u
        return self._reduce(u * v, keepdim)

    def norm(self, x: Tensor, u: Tensor, keepdim: bool = False) -> Tensor:
        """Riemannian norm ‖u‖_x = sqrt(⟨u, u⟩_x)."""
        return self.inner(x, u, keepdim=keepdim).clamp_min(0).sqrt()

    def adaptive_inner(self, x: Tensor, u: Tensor) -> Tensor:
        """What a Riemannian adaptive method accumulates in its second moment for ``u`` at ``x``.

        ``‖u‖²_x`` per point (Bécigneul & Ganea 2019), kept broadcastable against ``x``;
        :class:`~torchvalley.manifolds.Euclidean` overrides it with ``u * u`` (coordinate-wise,
        as Adam) and :class:`~torchvalley.manifolds.Product` with one value per factor.

        Args:
            x: a point (or a batch of points).
            u: a tangent vector at ``x``.

        Returns:
            A non-negative tensor broadcastable to ``x``.
        """
        return self.inner(x, u, keepdim=True)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """Exponential map exp_x(u): the geodesic from ``x`` with initial velocity ``u`` at t=1."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form expmap")

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """Logarithmic map log_x(y), the inverse of ``expmap`` inside the injectivity radius."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form logmap")

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """Geodesic distance d(x, y)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form distance")

    def random(
        self,
        *shape: Any,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Random points of the given full tensor shape (batch dimensions then point dims).

        The shape may be given as integers or as one tuple/``torch.Size``.

        Raises:
            ValueError: when the shape is too small to hold one point (naming the minimum).
        """
        size = self._point_shape(shape, "random")
        return self._random(size, Draw(generator, dtype, device), **kwargs)

    def origin(
        self,
        *shape: Any,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The manifold's distinguished point (hyperbolic models), repeated over the batch.

        Raises:
            ValueError: when the shape is too small to hold one point (naming the minimum).
            NotImplementedError: for a manifold without an origin.
        """
        size = self._point_shape(shape, "origin")
        zeros = torch.zeros(size, dtype=dtype or torch.get_default_dtype(), device=device)
        return self._origin(zeros)

    def _origin(self, zeros: Tensor) -> Tensor:
        """The origin, written into ``zeros`` of the validated shape."""
        raise NotImplementedError(f"{type(self).__name__} has no distinguished origin")

    def _point_shape(self, shape: Sequence[Any], what: str) -> torch.Size:
        """``shape`` normalized to a ``torch.Size`` that holds at least one point."""
        size = torch.Size(_as_shape(shape))
        ok, reason = self._check_shape(size)
        if not ok:
            raise ValueError(f"{self!r}.{what}: shape {tuple(size)} is too small: {reason}")
        return size

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Random points of the (validated) ``shape``: implemented by every manifold."""
        raise NotImplementedError(f"{type(self).__name__} implements neither random nor _random")

    # ------------------------------------------------------------------------- checks
    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < self.ndim:
            return (
                False,
                f"{self!r} needs a shape of at least {(1,) * self.ndim} ({self.ndim} dimensions), "
                f"got {tuple(shape)}",
            )
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        """Whether ``x`` is on the manifold, and if not, why: ``violation(x) ≤ atol + rtol``.

        The constraints compared here are normalized (unit norms, the identity), so the
        relative tolerance applies to 1; manifolds with another scale override this.
        """
        err = float(self.violation(x))
        bound = atol + rtol
        if not err <= bound:
            return False, _violation_reason(self.violation_name, err, bound)
        return True, None

    @abc.abstractmethod
    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        """Whether ``u`` is tangent at ``x``, and if not, why."""

    def check_point(
        self,
        x: Tensor,
        explain: bool = False,
        atol: float | None = None,
        rtol: float | None = None,
    ) -> bool | tuple[bool, str | None]:
        """Whether ``x`` is a point (or a batch of points) of the manifold.

        Args:
            x: the tensor to check.
            explain: if True, return ``(ok, reason)`` where ``reason`` describes the violation
                (None when ``ok``).
            atol: absolute tolerance of the constraint (default :func:`default_tolerance`).
            rtol: relative tolerance of the constraint (default :func:`default_tolerance`).

        Returns:
            ``ok``, or ``(ok, reason)`` when ``explain`` is True.
        """
        result = self._check(x, None, atol, rtol)
        return result if explain else result[0]

    def check_vector(
        self,
        x: Tensor,
        u: Tensor,
        explain: bool = False,
        atol: float | None = None,
        rtol: float | None = None,
    ) -> bool | tuple[bool, str | None]:
        """Whether ``u`` is tangent at ``x`` (``x`` is assumed to be a point).

        Args:
            x: the base point.
            u: the vector to check.
            explain: if True, return ``(ok, reason)``.
            atol: absolute tolerance.
            rtol: relative tolerance.

        Returns:
            ``ok``, or ``(ok, reason)`` when ``explain`` is True.
        """
        result = self._check(x, u, atol, rtol)
        return result if explain else result[0]

    def _check(
        self, x: Tensor, u: Tensor | None, atol: float | None, rtol: float | None
    ) -> tuple[bool, str | None]:
        if not isinstance(x, Tensor):
            return False, f"expected a tensor, got {type(x).__name__}"
        atol = default_tolerance(x.dtype) if atol is None else float(atol)
        rtol = default_tolerance(x.dtype) if rtol is None else float(rtol)
        ok, reason = self._check_shape(x.shape)
        if not ok:
            return ok, reason
        with torch.no_grad():
            # 16-bit points are checked in float32 (with the tolerance of their own dtype).
            x = x.detach().float() if x.dtype in LOW_PRECISION else x.detach()
            if not bool(torch.isfinite(x).all()):
                return False, "the point has non-finite (NaN or Inf) entries"
            if u is None:
                return self._check_point(x, atol, rtol)
            u = u.detach().to(x.dtype) if u.dtype in LOW_PRECISION else u.detach()
            if u.shape != x.shape:
                return False, f"vector shape {tuple(u.shape)} differs from point {tuple(x.shape)}"
            if not bool(torch.isfinite(u).all()):
                return False, "the vector has non-finite (NaN or Inf) entries"
            return self._check_vector(x, u, atol, rtol)

    def __deepcopy__(self, memo: dict[int, Any]) -> Manifold:
        # Manifolds are immutable values: sharing them is a faithful copy.
        return self


@dataclasses.dataclass(frozen=True)
class Draw:
    """Where random points come from: the generator, dtype and device of one ``random`` call."""

    generator: torch.Generator | None
    dtype: torch.dtype | None
    device: torch.device | str | None

    def randn(self, shape: Sequence[Any], dtype: torch.dtype | None = None) -> Tensor:
        """Standard normal entries of ``shape`` (in ``dtype`` if given, else the call's)."""
        return _randn(shape, self.generator, dtype or self.dtype, self.device)


def _randn(
    shape: Sequence[Any],
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> Tensor:
    return torch.randn(
        _as_shape(shape),
        generator=generator,
        dtype=dtype or torch.get_default_dtype(),
        device=device,
    )


def _violation_reason(what: str, value: float, bound: float) -> str:
    return f"{what} is {value:.3e}, above the tolerance {bound:.3e}"


def checked_point(manifold: Manifold, data: Any, project: bool) -> Tensor:
    """``data`` (detached) as a point of ``manifold``, projected first when ``project``.

    The membership check of :class:`~torchvalley.ManifoldParameter` and
    :class:`~torchvalley.manifolds.ManifoldTensor`.

    Raises:
        ValueError: the point is off the manifold, with the manifold's explanation.
    """
    with torch.no_grad():
        data = torch.as_tensor(data).detach()
        if project:
            data = manifold.projx(data)
        ok, reason = manifold.check_point(data, explain=True)
        if not ok:
            hint = "" if project else " (pass project=True to project it onto the manifold)"
            raise ValueError(f"data is not a point of {manifold!r}: {reason}{hint}")
    return data
