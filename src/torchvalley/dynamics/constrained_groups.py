"""The CoLA papers' param groups, with the model's weights put on their constraint sets.

* o-CoLA (``"orthogonal"``; the reference's ``initOG``): every weight with at least 2
  dimensions except the first one (in ``model.named_parameters()`` order) is constrained and
  replaced by the Q factor of its QR factorisation (``method="qr"``, the reference's) or its polar
  factor (``method="polar"``, the closest orthonormal matrix) in the tall view of
  :class:`~torchvalley.manifolds.Stiefel` (``flatten=True``); the first weight, biases and
  normalization layers stay unconstrained.
* c-CoLA (``"norm"``): every weight with at least 2 dimensions is constrained to ``|w| <= r``,
  the first with ``first_radius`` (the reference's ``rad0``), the others with ``radius``
  (``rad1``); a weight beyond its radius is an error, or clipped to ``[-r, r]`` with
  ``clip=True``. The auxiliary coordinates are chosen by the optimizer,
  ``xi = +sqrt(r**2 - w**2)``.

Weights already on their set (within the optimizer's check) are left bit-identical, so building
twice, or after loading a checkpoint, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from torchvalley.dynamics.constrained import DEFAULT_TOLERANCE, constraint_residual
from torchvalley.manifolds.stiefel import Stiefel, _qf

__all__ = ["cola_factory", "constrain_model"]

_GEOMETRY = Stiefel(flatten=True)


def constrain_model(
    model: torch.nn.Module,
    constraint: str = "orthogonal",
    *,
    radius: float = 1.0,
    first_radius: float | None = None,
    method: str = "qr",
    clip: bool = False,
    params: Iterable[torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Put ``model``'s weights on their constraint sets and return the papers' param groups.

    Args:
        model: the network.
        constraint: ``"orthogonal"`` (o-CoLA) or ``"norm"`` (c-CoLA).
        radius: ``r`` of the norm constraint (the reference's ``rad1``).
        first_radius: ``r`` of the first weight (``rad0``; default ``radius``).
        method: ``"qr"`` or ``"polar"`` for orthogonal weights.
        clip: clip norm-constrained weights beyond their radius instead of raising.
        params: restrict to these parameters (default: every trainable parameter).

    Returns:
        Param groups: the constrained ones (``constraint``, and ``radius`` for ``"norm"``) and
        one with ``constraint=None`` for the rest (empty groups are dropped).

    Raises:
        ValueError: for an unknown constraint or method, a radius ``<= 0``, or a weight beyond
            its radius without ``clip``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> [(len(g["params"]), g["constraint"]) for g in constrain_model(net)]
        [(1, 'orthogonal'), (3, None)]
    """
    if constraint not in ("orthogonal", "norm"):
        raise ValueError(f"Invalid constraint: {constraint!r} (one of 'orthogonal', 'norm')")
    if method not in ("qr", "polar"):
        raise ValueError(f"Invalid method: {method!r} (one of 'qr', 'polar')")
    first_radius = radius if first_radius is None else first_radius
    for name, value in (("radius", radius), ("first_radius", first_radius)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"Invalid {name}: {value!r} (must be > 0)")
    wanted = None if params is None else {id(p) for p in params}
    seen: set[int] = set()
    chosen = []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen or (wanted is not None and id(p) not in wanted):
            continue
        seen.add(id(p))
        chosen.append(p)
    weights = [p for p in chosen if p.dim() >= 2]
    constrained: list[dict[str, Any]] = []
    with torch.no_grad():
        if constraint == "orthogonal":
            ortho = weights[1:]
            for p in ortho:
                _orthogonalize(p, method)
            if ortho:
                constrained.append({"params": ortho, "constraint": "orthogonal"})
        else:
            for index, p in enumerate(weights):
                r = first_radius if index == 0 else radius
                largest = float(p.abs().max()) if p.numel() else 0.0
                if largest > r:
                    if not clip:
                        raise ValueError(
                            f"Invalid radius: {r}: a weight of shape {tuple(p.shape)} has |w| up "
                            f"to {largest:.4g} > radius; use a larger radius or clip=True"
                        )
                    p.clamp_(-r, r)
            if weights and first_radius != radius:
                constrained.append(
                    {"params": weights[:1], "constraint": "norm", "radius": first_radius}
                )
                weights = weights[1:]
            if weights:
                constrained.append({"params": weights, "constraint": "norm", "radius": radius})
    taken = {id(p) for group in constrained for p in group["params"]}
    rest = [p for p in chosen if id(p) not in taken]
    return constrained + ([{"params": rest, "constraint": None}] if rest else [])


def _orthogonalize(p: torch.Tensor, method: str) -> None:
    """Replace ``p`` by its QR or polar factor (tall view), unless it is on the set already."""
    tall = _GEOMETRY._tall(p)
    if p.dtype in DEFAULT_TOLERANCE and constraint_residual(tall) <= DEFAULT_TOLERANCE[p.dtype]:
        return
    if method == "polar":
        p.copy_(_GEOMETRY.projx(p))
    else:
        tall.copy_(_qf(tall))


def cola_factory(name: str, dynamics: str) -> Any:
    """A registry factory for :class:`~torchvalley.dynamics.ConstrainedLangevin`.

    Given ``model=`` and a flat parameter list, the groups are :func:`constrain_model`'s with
    the given ``constraint`` (default ``"orthogonal"``) and ``radius``, and the model's weights
    are put on their sets (QR for orthogonal; clipped to ``[-r, r]`` for norm, the projection
    onto ``|w| <= r``); explicit param groups, or no model, are used as given, with
    ``constraint`` as every group's default.
    """
    from torchvalley.dynamics.constrained import ConstrainedLangevin

    def factory(params: Any, model: torch.nn.Module | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("constraint", "orthogonal")
        if isinstance(params, torch.Tensor):
            params = [params]
        params = list(params)
        flat = params and not any(isinstance(p, dict) for p in params)
        if model is not None and flat:
            owned = {id(p) for p in model.parameters()}
            if all(id(p) in owned for p in params):
                constraint = kwargs.pop("constraint")
                if constraint is None:
                    params = [{"params": params}]
                else:
                    radius = kwargs.get("radius", 1.0)
                    params = constrain_model(
                        model, constraint, radius=radius, clip=True, params=params
                    )
        return ConstrainedLangevin(params, dynamics=dynamics, **kwargs)

    factory.__name__ = name
    factory.__doc__ = f":class:`ConstrainedLangevin` with dynamics={dynamics!r} (see cola_factory)."
    return factory
