"""Partitioned integrators (LaLa, AdLaLa, LOL): one param group per layer, each its dynamics.

Leimkuhler, Matthews & Vlaar, Partitioned integrators for thermodynamic parameterization of
neural networks, Foundations of Data Science 2019. Dynamics and hyperparameters of
:class:`~torchvalley.dynamics.LangevinSplitting` are per param group, so a partitioned
integrator is a list of groups, e.g. from :func:`partition_by_layer`: AdLaLa is ``adaptive`` on
the first layer and ``langevin`` on every later layer, LOL ``langevin`` on the first layer and
``overdamped`` on every later layer, LaLa ``langevin`` on each.

The registry factories (:func:`sampler_factory`) accept ``model=`` (as the benchmark harness
passes it): given the model and a flat parameter list (e.g. ``model.parameters()``), they build
the paper's partition themselves, one group per layer (module owning parameters, in
``model.named_modules()`` order, restricted to the given parameters). The flat
hyperparameters then apply to every group. Explicit param groups are used as given, as is a flat
list holding a tensor the model does not own; without ``model`` the list is one group with the
entry's default dynamics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["partition_by_layer", "sampler_factory"]


def partition_by_layer(
    model: torch.nn.Module,
    first: str = "adaptive",
    rest: str = "langevin",
    *,
    first_options: Mapping[str, Any] | None = None,
    rest_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Param groups per layer (module owning parameters directly), for LaLa/AdLaLa/LOL.

    The first layer (in ``model.named_modules()`` order) gets ``dynamics=first`` and
    ``first_options``; every later layer is its own group with ``dynamics=rest`` and
    ``rest_options`` (so each may then be tuned separately).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> [g["dynamics"] for g in partition_by_layer(net)]
        ['adaptive', 'langevin']
    """
    groups = []
    for _, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not params:
            continue
        options = (first_options if not groups else rest_options) or {}
        groups.append(
            {"params": params, "dynamics": first if not groups else rest, **dict(options)}
        )
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def model_partition(params: Any, model: torch.nn.Module, first: str, rest: str) -> Any:
    """The registry factories' partition: :func:`partition_by_layer` restricted to ``params``.

    Explicit param groups (any ``dict`` in ``params``) are returned unchanged, as is a flat list
    holding a tensor that is not a trainable parameter of ``model`` (no layer to assign it to).
    Layers none of whose parameters are in ``params`` are dropped, so "the first layer" is the
    first layer (in ``model.named_modules()`` order) that has a parameter being optimized.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params)
    if not params or any(isinstance(p, Mapping) for p in params):
        return params
    wanted = {id(p) for p in params}
    owned = {id(p) for p in model.parameters() if p.requires_grad}
    if not wanted <= owned:
        return params
    groups: list[dict[str, Any]] = []
    for group in partition_by_layer(model, first, rest):
        kept = [p for p in group["params"] if id(p) in wanted]
        wanted -= {id(p) for p in kept}  # a parameter shared by two layers goes to the first
        if kept:
            dyn = first if not groups else rest
            groups.append({"params": kept, "dynamics": dyn})
    return groups


def sampler_factory(
    name: str,
    dynamics: str,
    *,
    partition: tuple[str, str] | None = None,
    dynamics_per_group: bool = False,
) -> Callable[..., Any]:
    """A registry factory for :class:`~torchvalley.dynamics.LangevinSplitting`.

    Args:
        name: the registry name (the factory's ``__name__``).
        dynamics: the default dynamics.
        partition: ``(first, rest)``: with ``model=`` and a flat parameter list, split the
            parameters per layer with these dynamics (:func:`model_partition`).
        dynamics_per_group: groups (and the caller) may choose the dynamics; otherwise every
            group is forced to ``dynamics``.
    """
    from torchvalley.dynamics.langevin import LangevinSplitting

    fixed = {} if dynamics_per_group else {"dynamics": dynamics}

    def factory(params: Any, model: torch.nn.Module | None = None, **kwargs: Any) -> Any:
        if partition is not None and model is not None:
            params = model_partition(params, model, *partition)
        return LangevinSplitting(params, **{"dynamics": dynamics, **kwargs, **fixed})

    factory.__name__ = name
    factory.__doc__ = f":class:`LangevinSplitting` with dynamics={dynamics!r}."
    if partition is not None:
        factory.__doc__ += (
            f" Given ``model=`` and a flat parameter list, the params are split with "
            f":func:`partition_by_layer` (first layer {partition[0]!r}, every later layer its "
            f"own {partition[1]!r} group); explicit param groups are used as given."
        )
    return factory
