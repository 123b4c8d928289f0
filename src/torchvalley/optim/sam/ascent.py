r"""Ascent rules: the metric :math:`M` of :math:`\epsilon = \rho M^{-1} g / \sqrt{g^\top M^{-1} g}`.

Every rule works in three moves on one group's perturbed parameters, never writing ``.grad``
(it stays the raw gradient, as in the reference implementations):

- ``precondition``: :math:`u = M^{-1/2} g` and the per-tensor norms :math:`\lVert u\rVert`
  (the engine takes one global norm over all rules: a block-diagonal metric);
- ``climb``: :math:`w \leftarrow w + \text{factor}\cdot M^{-1} g` through a backup strategy
  (``factor`` is :math:`\rho / \lVert u\rVert`), returning :math:`\epsilon` when asked;
- ``pull_back``: hand the second-pass gradient back to ``w`` (the identity on flat
  parameters; transport and ``rgrad2egrad`` on a manifold).

:class:`Ellipsoid` covers sam, asam and fisher (a diagonal :math:`M^{-1/2}`), :class:`Monge`
the rank-one :math:`M = I + g g^\top` (the identity times the global factor
:math:`1/\sqrt{1 + \lVert g\rVert^2}`), :class:`Riemannian` each parameter's own manifold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from torchvalley.manifolds.base import Manifold
from torchvalley.sharding import foreach_copy_

__all__ = ["ASCENT_RULES", "AscentRule", "Ellipsoid", "Monge", "Part", "Riemannian"]


@dataclasses.dataclass
class Part:
    """One rule's share of a group: the perturbed parameters, their raw gradients (read only)
    and the rule's scratch (``directions`` :math:`u`, ``scale`` :math:`M^{-1/2}`, manifolds)."""

    group: dict
    rule: AscentRule
    params: list[Tensor]
    grads: list[Tensor]
    directions: list[Tensor] = dataclasses.field(default_factory=list)
    scale: list[Tensor] | None = None
    manifolds: list[Manifold] = dataclasses.field(default_factory=list)
    owns_directions: bool = False
    #: ``||g||`` over every perturbed parameter of the step (Monge's factor; set by the engine).
    euclidean_norm: Tensor | None = None
    #: ``workspace(slot, params)``: scratch tensors shaped like ``params`` (see
    #: :class:`~torchvalley.optim.sam.systems.Workspace`).
    workspace: Callable[[str, list[Tensor]], list[Tensor]] | None = None


class AscentRule(Protocol):
    """The three moves of an ascent geometry (see the module docstring)."""

    #: Whether the metric norm is the Euclidean one (then ``||g||`` needs no second pass).
    euclidean: bool

    def precondition(self, part: Part, is_bias: Callable[[Tensor], bool], dtype) -> list[Tensor]:
        """Set ``part.directions`` to ``u = M^{-1/2} g``; return the per-tensor ``||u||``."""
        ...

    def climb(self, part: Part, factor: Tensor, backup: Any, fold: bool) -> list[Tensor]:
        """Move ``w`` to ``w + factor M^{-1} g`` through ``backup``; return eps (if built)."""
        ...

    def pull_back(self, p: Tensor, here: Tensor, manifold: Manifold) -> None:
        """Turn ``p.grad`` (taken at the ascent point) into a gradient at ``here``."""
        ...


ScaleFn = Callable[[Part, Callable[[Tensor], bool]], list[Tensor]]


def _asam_scale(part: Part, is_bias: Callable[[Tensor], bool]) -> list[Tensor]:
    # T_w = |w| + eta on weights; biases keep T = 1 unless normalize_bias (davda54 variant).
    params, group = part.params, part.group
    scale = part.workspace("scale", params)
    foreach_copy_(scale, params)
    torch._foreach_abs_(scale)
    torch._foreach_add_(scale, group["eta"])
    if not group["normalize_bias"]:
        for index, p in enumerate(params):
            if is_bias(p):
                scale[index].fill_(1.0)
    return scale


def _fisher_scale(part: Part, is_bias: Callable[[Tensor], bool]) -> list[Tensor]:
    # F = 1 + eta_F g^2 (diagonal empirical Fisher of the minibatch gradient); M^{-1/2} = F^{-1/2}.
    fisher = part.workspace("scale", part.params)
    torch._foreach_zero_(fisher)
    torch._foreach_add_(fisher, 1.0)
    torch._foreach_addcmul_(fisher, part.grads, part.grads, value=part.group["fisher_eta"])
    torch._foreach_rsqrt_(fisher)
    return fisher


class Ellipsoid:
    """Diagonal metric ``M^{-1/2} = scale_fn(...)`` (``None``: the identity, plain SAM)."""

    def __init__(self, scale_fn: ScaleFn | None = None) -> None:
        self.scale_fn = scale_fn
        self.euclidean = scale_fn is None

    def precondition(self, part: Part, is_bias, dtype) -> list[Tensor]:
        if self.scale_fn is None:
            part.directions, part.owns_directions = part.grads, False  # u = g (read only)
        else:
            part.scale = self.scale_fn(part, is_bias)
            part.directions = part.workspace("directions", part.params)
            foreach_copy_(part.directions, part.grads)
            torch._foreach_mul_(part.directions, part.scale)  # u = M^{-1/2} g
            part.owns_directions = True
        return list(torch._foreach_norm(part.directions, 2, dtype=dtype))  # ||u|| per tensor

    def climb(self, part: Part, factor: Tensor, backup: Any, fold: bool) -> list[Tensor]:
        if part.scale is not None and not fold:
            torch._foreach_mul_(part.directions, part.scale)  # now M^{-1} g
        # Folded (CPU): w + factor u M^{-1/2} in one pass over w, u and the scale.
        scale = part.scale if fold else None
        return backup.climb(part.params, part.directions, factor, part.owns_directions, fold, scale)

    def pull_back(self, p: Tensor, here: Tensor, manifold: Manifold) -> None:
        return None  # flat: the gradient at w + eps is used at w as it is


class Monge(Ellipsoid):
    """``M = I + g g^T``: the identity direction, the radius shrunk by ``1/sqrt(1+||g||^2)``
    (Sherman–Morrison); the engine passes ``||g||`` over all perturbed parameters."""

    def climb(self, part: Part, factor: Tensor, backup: Any, fold: bool) -> list[Tensor]:
        factor = factor * torch.rsqrt(1.0 + part.euclidean_norm.square())
        return super().climb(part, factor, backup, fold)


class Riemannian:
    """A parameter's own manifold: ``r = egrad2rgrad(x, g)``, ``||r||_x`` in its metric,
    ``x~ = retr(x, factor r)``; the second gradient comes back by ``transp`` and
    ``rgrad2egrad``. Only parameters on a curved manifold reach this rule; the engine hands the
    flat ones of a ``riemannian`` group to plain SAM."""

    euclidean = False

    def precondition(self, part: Part, is_bias, dtype) -> list[Tensor]:
        triples = zip(part.params, part.grads, part.manifolds, strict=True)
        part.directions = [m.egrad2rgrad(p, g) for p, g, m in triples]  # r, a new tensor
        part.owns_directions = True
        # <r, r>_x in the manifold's metric (clamped: round-off may make it slightly negative)
        return [m.inner(p, r).to(dtype).sum().clamp_min(0).sqrt() for p, r, m in _zip(part)]

    def climb(self, part: Part, factor: Tensor, backup: Any, fold: bool) -> list[Tensor]:
        if part.group["rho"] == 0:
            # x stays exactly at w (a retraction by 0 need not be bitwise the identity) and its
            # gradient is handed over untransported.
            return []
        for p, r, manifold in _zip(part):
            r.mul_(factor.to(r.dtype))  # the tangent step u = rho r / ||r||
            backup.move(p, manifold.retr(p, r), (self, manifold))  # x~ = R_x(u)
        return part.directions

    def pull_back(self, p: Tensor, here: Tensor, manifold: Manifold) -> None:
        # rgrad2egrad(x, T_{x~->x} egrad2rgrad(x~, g~)): linear in g~, so a GradScaler's scale
        # and non-finite values pass through to its later unscale_.
        there = p.detach()
        riemannian = manifold.transp(there, here, manifold.egrad2rgrad(there, p.grad))
        p.grad.copy_(manifold.rgrad2egrad(here, riemannian))


def _zip(part: Part):
    return zip(part.params, part.directions, part.manifolds, strict=True)


#: ascent name -> rule. ``riemannian`` names the rule of its curved parameters; the engine hands
#: a ``riemannian`` group's flat parameters to ``sam`` (same numbers as ``ascent="sam"``).
ASCENT_RULES: dict[str, AscentRule] = {
    "sam": Ellipsoid(),
    "asam": Ellipsoid(_asam_scale),
    "fisher": Ellipsoid(_fisher_scale),
    "monge": Monge(),
    "riemannian": Riemannian(),
}
