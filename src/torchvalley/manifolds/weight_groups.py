"""Weight groups on manifolds: the geometry behind FG-SGD (Ozay, NeurIPS 2019).

A ``Linear`` weight ``(out, in)`` or a ``Conv`` weight ``(out, in, *kernel)`` is viewed as a matrix
``M`` whose rows are its weight groups:

* ``"PO"``: one row per output channel, ``M`` is ``(out, in·k)``;
* ``"PI"``: one row per input channel, ``M`` is ``(in, out·k)``;
* ``"PIO"``: one row per (output, input) pair, ``M`` is ``(out·in, k)`` (conv weights only).

A constraint puts the view on a manifold, and a weight is ``W = r · W̄`` with ``W̄`` on it:

* ``"sphere"``: every row of ``M`` has unit norm (``Oblique("rows")``);
* ``"oblique"``: every column of ``M`` has unit norm (``Oblique("columns")``);
* ``"stiefel"``: ``M`` is orthonormal (``Stiefel("polar")``; orthonormal rows when wide).

:class:`FGManifold` is the manifold of a whole weight under a (constraint, grouping);
:func:`fg_manifold` builds (and caches) it; :func:`initial_radius` is the radius ``r`` of each
group (its norm, or a fixed value); :func:`renormalize_weights` turns a model's weights into
``r · W̄`` with ``W̄`` a :class:`~torchvalley.ManifoldParameter` on its :class:`FGManifold`, a
parametrization that any Riemannian optimizer can then train. :class:`~torchvalley.optim.FGSGD`
keeps the radius in its own state instead and steps plain weights on these manifolds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchvalley.manifolds.base import Draw, Manifold
from torchvalley.manifolds.oblique import Oblique
from torchvalley.manifolds.parameter import ManifoldParameter
from torchvalley.manifolds.sphere import sphere_dist
from torchvalley.manifolds.stiefel import Stiefel
from torchvalley.validation import check_optional_positive

__all__ = [
    "CONSTRAINTS",
    "GROUPINGS",
    "FGManifold",
    "fg_manifold",
    "initial_radius",
    "renormalize_weights",
]

#: Constraints of a weight group (``"none"``/``None``: plain SGD).
CONSTRAINTS = ("sphere", "oblique", "stiefel")
#: Groupings: per output channel, per input channel, per (output, input) pair.
GROUPINGS = ("PO", "PI", "PIO")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------
# The manifold of a constrained weight
# --------------------------------------------------------------------------------------------


class FGManifold(Manifold):
    """The manifold of a weight of shape ``weight_shape`` under a constraint and a grouping.

    A point is the whole weight tensor (``ndim = len(weight_shape)``, leading dimensions are a
    batch). Every operation maps the weight to its matrix view ``M`` (see the module
    docstring), applies :attr:`base` (``Oblique("rows")`` for ``"sphere"``,
    ``Oblique("columns")`` for ``"oblique"``, ``Stiefel("polar")`` for ``"stiefel"``) and maps
    back. The metric is the Euclidean one of the weight (the sum of the groups' metrics).

    Args:
        weight_shape: the weight's shape ``(out, in, *kernel)``.
        constraint: ``"sphere"``, ``"oblique"`` or ``"stiefel"``.
        grouping: ``"PO"``, ``"PI"`` or ``"PIO"``.

    Raises:
        ValueError: for an unknown constraint/grouping, a weight with fewer than 2 dims, or a
            combination that is not meaningful for this shape (the message says why).
    """

    transp_is_isometry = False

    def __init__(self, weight_shape: Iterable[int], constraint: str, grouping: str) -> None:
        shape = tuple(int(s) for s in weight_shape)
        if constraint not in CONSTRAINTS:
            raise ValueError(f"Invalid constraint: {constraint!r} (one of {CONSTRAINTS})")
        if grouping not in GROUPINGS:
            raise ValueError(f"Invalid grouping: {grouping!r} (one of {GROUPINGS})")
        if len(shape) < 2 or math.prod(shape) == 0:
            raise ValueError(
                f"Invalid constraint: {constraint!r} needs a non-empty weight with >= 2 dims "
                f"(out, in, *kernel), got shape {shape}"
            )
        out, inp, kernel = shape[0], shape[1], math.prod(shape[2:])
        if grouping == "PO":
            rows, cols = out, inp * kernel
        elif grouping == "PI":
            rows, cols = inp, out * kernel
        else:
            if kernel == 1:
                raise ValueError(
                    f"Invalid grouping: 'PIO' groups the kernel of each (output, input) pair, "
                    f"but the weight of shape {shape} has no kernel (every group would be a "
                    "single weight); use 'PO' or 'PI'"
                )
            if constraint == "stiefel":
                raise ValueError(
                    "Invalid grouping: 'PIO' with constraint 'stiefel' would make the kernel "
                    "positions orthonormal, which bounds no operator norm of the layer; use "
                    "'PO' or 'PI' (spectral norm of the layer's matrix view)"
                )
            rows, cols = out * inp, kernel
        if constraint == "sphere" and cols == 1:
            raise ValueError(
                f"Invalid constraint: 'sphere' with grouping {grouping!r} on shape {shape} makes "
                "every group a single weight (a 0-dimensional sphere {-1, 1}: nothing to train)"
            )
        if constraint == "oblique" and rows == 1:
            raise ValueError(
                f"Invalid constraint: 'oblique' with grouping {grouping!r} on shape {shape} "
                "makes every column of the view a single weight (a 0-dimensional sphere)"
            )
        self.weight_shape = shape
        self.constraint = constraint
        self.grouping = grouping
        self.ndim = len(shape)
        self.view_shape = (rows, cols)
        self.has_logmap = constraint != "stiefel"
        self.base: Manifold
        if constraint == "sphere":
            self.base = Oblique("rows")
            self._group_dims: tuple[int, ...] = (-1,)
        elif constraint == "oblique":
            self.base = Oblique("columns")
            self._group_dims = (-2,)
        else:
            self.base = Stiefel(retraction="polar")
            self._group_dims = (-2, -1)

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("weight_shape", self.weight_shape),
            ("constraint", self.constraint),
            ("grouping", self.grouping),
        )

    # ---------------------------------------------------------------------------- views
    def _batch(self, x: Tensor) -> tuple[int, ...]:
        if tuple(x.shape[x.dim() - self.ndim :]) != self.weight_shape or x.dim() < self.ndim:
            raise ValueError(
                f"{self!r} acts on tensors of shape (..., {', '.join(map(str, self.weight_shape))})"
                f", got {tuple(x.shape)}"
            )
        return tuple(x.shape[: x.dim() - self.ndim])

    def to_view(self, x: Tensor) -> Tensor:
        """The matrix view ``(..., rows, cols)`` of a weight (or a batch of weights)."""
        batch = self._batch(x)
        if self.grouping == "PI":
            b = len(batch)
            x = x.transpose(b, b + 1)
        return x.reshape(*batch, *self.view_shape)

    def from_view(self, m: Tensor) -> Tensor:
        """The inverse of :meth:`to_view`: weights of shape ``(..., *weight_shape)``."""
        batch = tuple(m.shape[:-2])
        if self.grouping == "PI":
            out, inp, *kernel = self.weight_shape
            b = len(batch)
            return m.reshape(*batch, inp, out, *kernel).transpose(b, b + 1).contiguous()
        return m.reshape(*batch, *self.weight_shape)

    def group_norm(self, u_view: Tensor) -> Tensor:
        """Per-group Euclidean norms of a view-shaped tensor (kept dims, broadcastable)."""
        return torch.linalg.vector_norm(u_view, dim=self._group_dims, keepdim=True)

    def radius_of(self, w_view: Tensor) -> Tensor:
        """The default radius of each group of a view: its norm (Stiefel: mean singular value).

        Args:
            w_view: the view of a weight (or a batch of weights).

        Returns:
            A tensor broadcastable against ``w_view`` (rows ``(…, R, 1)``, columns
            ``(…, 1, C)`` or one value per matrix ``(…, 1, 1)``).
        """
        if self.constraint == "stiefel":
            return torch.linalg.svdvals(w_view).mean(-1)[..., None, None]
        return self.group_norm(w_view)

    def group_dist(self, x: Tensor, y: Tensor) -> Tensor:
        """Geodesic distance of every group (sphere: per row, oblique: per column of the view).

        Raises:
            NotImplementedError: for ``"stiefel"`` (no closed form).
        """
        if self.constraint == "stiefel":
            raise NotImplementedError("the Stiefel manifold has no closed-form distance")
        return sphere_dist(self.to_view(x), self.to_view(y), self._group_dims[0])

    def _map(self, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
        return self.from_view(fn(*(self.to_view(t) for t in tensors)))

    # ------------------------------------------------------------------------ interface
    def projx(self, x: Tensor) -> Tensor:
        """Project every group onto its manifold (normalise rows/columns, polar factor)."""
        return self._map(self.base.projx, x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Tangent projection of the base manifold on the view."""
        return self._map(self.base.proju, x, u)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """The base retraction on the view (normalisation; polar for Stiefel)."""
        return self._map(self.base.retr, x, u)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Projection transport ``proju(y, v)``."""
        return self._map(self.base.transp, x, y, v)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """The base exponential map on the view."""
        return self._map(self.base.expmap, x, u)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """The base logarithm on the view (sphere/oblique only)."""
        return self._map(self.base.logmap, x, y)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """sqrt(Σ_groups d_group²) (sphere/oblique only), one value per weight."""
        d = self.group_dist(x, y)
        return (d * d).sum(dim=(-2, -1), keepdim=keepdim).sqrt()

    def violation(self, x: Tensor) -> Tensor:
        """The base manifold's violation on the matrix view."""
        return self.base.violation(self.to_view(x))

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Random points of the base manifold, as weights."""
        batch = tuple(shape[: len(shape) - self.ndim])
        m = self.base.random(
            *batch, *self.view_shape, generator=draw.generator, dtype=draw.dtype, device=draw.device
        )
        return self.from_view(m)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < self.ndim or tuple(shape[len(shape) - self.ndim :]) != self.weight_shape:
            return False, f"{self!r} needs shape (..., {self.weight_shape}), got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        return self.base.check_point(self.to_view(x), explain=True, atol=atol, rtol=rtol)

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        return self.base.check_vector(
            self.to_view(x), self.to_view(u), explain=True, atol=atol, rtol=rtol
        )


@functools.lru_cache(maxsize=256)
def _cached_manifold(shape: tuple[int, ...], constraint: str, grouping: str) -> FGManifold:
    return FGManifold(shape, constraint, grouping)


def fg_manifold(weight_shape: Iterable[int], constraint: str, grouping: str) -> FGManifold:
    """The manifold a ``Linear`` ``(out, in)`` or ``Conv`` ``(out, in, *k)`` weight lives on.

    See the module docstring for the groupings (the matrix view) and the constraints.

    Args:
        weight_shape: the weight's shape.
        constraint: ``"sphere"`` (unit-norm rows of the view: every group), ``"oblique"``
            (unit-norm columns of the view) or ``"stiefel"`` (orthonormal view).
        grouping: ``"PO"`` (rows = output channels), ``"PI"`` (rows = input channels) or
            ``"PIO"`` (rows = kernel slices of (output, input) pairs; conv weights only).

    Returns:
        The :class:`FGManifold` (cached: equal arguments give the same object).

    Raises:
        ValueError: for unknown names or a combination that is not meaningful for the shape.

    Example:
        >>> m = fg_manifold((8, 3, 3, 3), "sphere", "PO")
        >>> m.view_shape, type(m.base).__name__
        ((8, 27), 'Oblique')
    """
    return _cached_manifold(tuple(int(s) for s in weight_shape), constraint, grouping)


# --------------------------------------------------------------------------------------------
# Validation, the radius, the layers that carry constrained weights
# --------------------------------------------------------------------------------------------


def _check_constraint(value: Any) -> str | None:
    if value is None or value == "none":
        return None
    if not isinstance(value, str) or value not in CONSTRAINTS:
        raise ValueError(f"Invalid constraint: {value!r} (one of {(*CONSTRAINTS, 'none')})")
    return value


def _check_grouping(value: Any) -> str:
    if not isinstance(value, str) or value not in GROUPINGS:
        raise ValueError(f"Invalid grouping: {value!r} (one of {GROUPINGS})")
    return value


def initial_radius(manifold: FGManifold, view: Tensor, radius: float | None, what: str) -> Tensor:
    """The radius of every weight group of ``view``: its norm, or ``radius`` everywhere.

    Args:
        manifold: the weight's manifold.
        view: the weight's matrix view (``manifold.to_view``), or a batch of them.
        radius: a fixed radius, or None for each group's own norm (Stiefel: mean singular value).
        what: the weight, for the message (e.g. ``"conv1.weight"``).

    Returns:
        A tensor broadcastable against ``view`` (see :meth:`FGManifold.radius_of`).

    Raises:
        ValueError: when ``radius`` is None and a group has zero norm.
    """
    if radius is not None:
        return torch.full_like(manifold.radius_of(view), float(radius))
    r = manifold.radius_of(view)
    if not bool((r > 0).all()):
        raise ValueError(
            f"Invalid radius: a weight group of {what} has zero norm, so its initial norm "
            "cannot be the radius; pass radius="
        )
    return r


def _is_torch_layer(module: nn.Module) -> bool:
    return any(
        cls.__module__.startswith("torch.")
        for cls in type(module).__mro__
        if cls not in (nn.Module, object)
    )


def _euclidean_ids(model: nn.Module) -> set[int]:
    """Ids of the ≥2-dim parameters of ``model`` that stay Euclidean (see the module doc)."""
    keep: set[int] = set()
    constrain: set[int] = set()
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None or p.dim() < 2:
                continue
            if isinstance(module, _LAYERS) and name == "weight":
                constrain.add(id(p))
            elif _is_torch_layer(module):
                keep.add(id(p))
            else:
                constrain.add(id(p))
    return keep - constrain


# --------------------------------------------------------------------------------------------
# Renormalizing a model's weights as ManifoldParameters
# --------------------------------------------------------------------------------------------


class _FixedRadius(nn.Module):
    """Parametrization ``W = r · W̄`` with a fixed radius buffer (in the manifold's view)."""

    def __init__(self, manifold: FGManifold, radius: Tensor) -> None:
        super().__init__()
        self.manifold = manifold
        self.register_buffer("radius", radius)

    def forward(self, x: Tensor) -> Tensor:
        return self.manifold.from_view(self.manifold.to_view(x) * self.radius)

    def right_inverse(self, w: Tensor) -> Tensor:
        view = self.manifold.to_view(w)
        return self.manifold.from_view(self.manifold.base.projx(view / self.radius))


def renormalize_weights(
    model: nn.Module,
    constraint: str = "sphere",
    grouping: str = "PO",
    radius: float | None = None,
) -> list[str]:
    """Turn every ``Linear``/``Conv1d/2d/3d`` weight into ``r · W̄`` with ``W̄`` on a manifold.

    Each weight ``W`` is replaced, through ``torch.nn.utils.parametrize``, by
    ``module.parametrizations.weight.original = W̄``, a :class:`~torchvalley.ManifoldParameter`
    on :func:`fg_manifold` ``(W.shape, constraint, grouping)`` with ``W̄ = projx(W / r)``;
    ``module.weight`` then computes ``r · W̄`` with the radius ``r`` a buffer (in the
    manifold's matrix view; ``radius=None``: each group's current norm, so for ``"sphere"`` and
    ``"oblique"`` the forward is unchanged up to rounding). Any Riemannian optimizer
    (``FGSGD``, RSGD) then trains ``W̄`` on its manifold. Already parametrized weights are
    skipped.

    Args:
        model: the module, modified in place.
        constraint: ``"sphere"``, ``"oblique"`` or ``"stiefel"``.
        grouping: ``"PO"``, ``"PI"`` or ``"PIO"``.
        radius: ``None`` (initial norms) or the fixed norm of every group.

    Returns:
        The names (as in ``model.named_parameters()`` before the conversion) of the converted
        weights, e.g. ``["0.weight", "2.weight"]``.

    Raises:
        ValueError: for an invalid hyperparameter or a weight whose shape does not fit, or a
            group with zero norm when ``radius`` is ``None``.
    """
    _check_constraint(constraint)
    if constraint is None or constraint == "none":
        raise ValueError("Invalid constraint: renormalize_weights needs a constraint")
    _check_grouping(grouping)
    check_optional_positive("radius", radius)
    converted: list[str] = []
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _LAYERS)
        and not parametrize.is_parametrized(module, "weight")
        and isinstance(module._parameters.get("weight"), nn.Parameter)
    ]
    for name, module in targets:
        weight = module.weight
        manifold = fg_manifold(weight.shape, constraint, grouping)
        with torch.no_grad():
            r = initial_radius(
                manifold, manifold.to_view(weight.detach()), radius, f"{name}.weight"
            )
        requires_grad = weight.requires_grad
        parametrize.register_parametrization(module, "weight", _FixedRadius(manifold, r))
        plist = module.parametrizations.weight
        plist.original = ManifoldParameter(
            plist.original.detach(), manifold, requires_grad=requires_grad
        )
        converted.append(f"{name}.weight" if name else "weight")
    return converted
