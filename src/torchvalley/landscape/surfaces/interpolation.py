"""The loss along the straight path between two states, whole or one layer at a time.

* :func:`linear_interpolation`: the loss along the segment between two states, e.g. the
  initialization and the trained network, or two solutions (Goodfellow et al. 2015, "Qualitatively
  characterizing neural network optimization problems"; Vlaar & Frankle 2022, "What can linear
  interpolation of neural network loss landscapes tell us?").
* :func:`layerwise_interpolation`: the same path for one layer (or block) at a time, every
  other parameter held at an endpoint (Vlaar & Frankle 2022, following Chatterji et al. 2020).

Random filter-normalized slices are in :mod:`torchvalley.landscape.surfaces.slices`, plots in
:mod:`torchvalley.landscape.surfaces.plots`.

**BatchNorm along an interpolation path.** The running statistics of the endpoints do not
describe the network in between, so the two path functions take ``bn``:

* ``"recompute"`` (default): at each α, every BatchNorm running mean and variance is reset and
  recomputed as the cumulative average (``momentum=None``) over the ``bn_data`` batches in train
  mode (the usual "BN repair", as ``torch.optim.swa_utils.update_bn``), then the loss is
  evaluated in eval mode. Pass the *training* data as ``bn_data``; by default ``data`` is used.
  Dropout is active during these passes, as in any train-mode pass, with masks drawn from a
  forked RNG seeded with the batch's index: the same at every α (so the path is one function
  of α), the same from call to call, and the caller's global RNG is not consumed.
* ``"interpolate"``: the running statistics are interpolated like the parameters.

Every evaluation is in eval mode, under ``torch.no_grad()``, with ``torch.func.functional_call``
on copies: the model's parameters, buffers, train/eval flag and BatchNorm momenta are as before.
Values are returned as float64 CPU tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from torchvalley.curvature.function import Batch, LossFunction, as_batches
from torchvalley.landscape.surfaces.grid import MetricFunction, alpha_grid

__all__ = [
    "InterpolationResult",
    "LayerwiseInterpolationResult",
    "layerwise_interpolation",
    "linear_interpolation",
]

State = Mapping[str, torch.Tensor]

_BN_OPTIONS = ("recompute", "interpolate")
_OTHERS = ("a", "b")


# -- results ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InterpolationResult:
    """The loss along ``θ_α = (1 − α) θ_a + α θ_b``.

    Attributes:
        alphas: the α grid (float64, 1-D).
        losses: the loss at each α (float64).
        metrics: ``metric_fn`` at each α (float64), or ``None`` without a ``metric_fn``.
        bn: how BatchNorm statistics were set, ``"recompute"`` or ``"interpolate"``.
    """

    alphas: torch.Tensor
    losses: torch.Tensor
    metrics: torch.Tensor | None
    bn: str


@dataclasses.dataclass(frozen=True)
class LayerwiseInterpolationResult:
    """One interpolation curve per group of parameters.

    Attributes:
        alphas: the α grid (float64, 1-D), shared by every curve.
        groups: group name -> the state keys varied along that group's path.
        losses: group name -> the loss at each α (float64).
        metrics: group name -> ``metric_fn`` at each α, or ``None`` without a ``metric_fn``.
        full: the path varying every entry at once ("vary all"), or ``None``.
        others: the endpoint (``"a"`` or ``"b"``) where the entries outside a group stay.
        bn: ``"recompute"`` or ``"interpolate"``.
    """

    alphas: torch.Tensor
    groups: dict[str, tuple[str, ...]]
    losses: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] | None
    full: InterpolationResult | None
    others: str
    bn: str


# -- validation -------------------------------------------------------------------------------


def _check_bn(bn: str) -> None:
    if bn not in _BN_OPTIONS:
        raise ValueError(f"Invalid bn: {bn!r} (one of 'recompute', 'interpolate')")


def _check_states(model: nn.Module, state_a: State, state_b: State) -> dict[str, torch.Tensor]:
    """The model's own state (detached), after checking that both states fit it.

    A tied tensor (one parameter under several names) is kept under its first name only:
    ``functional_call`` then ties the value to all of its names.
    """
    own: dict[str, torch.Tensor] = {}
    aliases: set[str] = set()
    seen: set[int] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            aliases.add(key)
            continue
        seen.add(id(value))
        own[key] = value.detach()
    for name, state in (("state_a", state_a), ("state_b", state_b)):
        if not isinstance(state, Mapping):
            raise ValueError(f"Invalid {name}: expected a state_dict, got {type(state).__name__}")
        unknown = [k for k in state if k not in own and k not in aliases]
        if unknown:
            raise ValueError(f"Invalid {name}: keys not in the model: {unknown[:5]}")
        for key, value in state.items():
            if key in aliases:
                continue
            if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
                raise ValueError(f"Invalid {name}: {key!r} does not match the model's shape")
    if set(state_a) != set(state_b):
        raise ValueError("Invalid state_b: its keys differ from state_a's")
    return own


# -- states -----------------------------------------------------------------------------------


def _blend(a: torch.Tensor, b: torch.Tensor, alpha: float, like: torch.Tensor) -> torch.Tensor:
    """``(1 − α) a + α b`` in ``like``'s dtype and device; exactly ``a`` at 0 and ``b`` at 1."""
    a = a.detach().to(device=like.device, dtype=like.dtype)
    b = b.detach().to(device=like.device, dtype=like.dtype)
    if alpha == 0.0:
        return a.clone()
    if alpha == 1.0:
        return b.clone()
    if not like.is_floating_point() and not like.is_complex():
        # Integer and boolean entries (num_batches_tracked) come from the nearest endpoint.
        return (a if alpha <= 0.5 else b).clone()
    return (1.0 - alpha) * a + alpha * b


def _state_at(
    own: State,
    state_a: State,
    state_b: State,
    alpha: float,
    varied: Sequence[str] | None,
    others: str,
) -> dict[str, torch.Tensor]:
    """The full state at α: ``varied`` keys (default all) blended, the rest at ``others``."""
    fixed = state_a if others == "a" else state_b
    varied_set = set(state_a) if varied is None else set(varied)
    state: dict[str, torch.Tensor] = {}
    for key, like in own.items():
        if key in varied_set:
            state[key] = _blend(state_a[key], state_b[key], alpha, like)
        elif key in fixed:
            state[key] = fixed[key].detach().to(device=like.device, dtype=like.dtype).clone()
        else:
            state[key] = like.clone()
    return state


def _batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Normalization layers that keep running statistics (BatchNorm*, tracked InstanceNorm*)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        and module.track_running_stats
        and module.running_mean is not None
    ]


@contextlib.contextmanager
def _preserved(model: nn.Module, batchnorms: Sequence[tuple[str, nn.Module]]) -> Iterator[None]:
    """Restore the train/eval flag and BatchNorm momenta on exit."""
    was_training = model.training
    momenta = [module.momentum for _, module in batchnorms]
    try:
        yield
    finally:
        for (_, module), momentum in zip(batchnorms, momenta, strict=True):
            module.momentum = momentum
        model.train(was_training)


def _recompute_batchnorm(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    batchnorms: Sequence[tuple[str, nn.Module]],
    batches: Sequence[Batch],
) -> None:
    """Reset the running statistics in ``state`` and recompute them over ``batches``.

    The cumulative average (``momentum=None``) in train mode, written by BatchNorm into the
    tensors of ``state``; the caller restores the momenta and the mode (:func:`_preserved`).
    """
    for key, value in state.items():  # buffers are written in place: never the model's own
        state[key] = value.clone()
    for name, module in batchnorms:
        prefix = f"{name}." if name else ""
        state[prefix + "running_mean"].zero_()
        state[prefix + "running_var"].fill_(1.0)
        if prefix + "num_batches_tracked" in state:
            state[prefix + "num_batches_tracked"].zero_()
        module.momentum = None
    model.train()
    device = next(iter(state.values())).device if state else torch.device("cpu")
    devices = [device.index or 0] if device.type == "cuda" else []
    for index, (inputs, _) in enumerate(batches):
        with torch.random.fork_rng(devices=devices):  # dropout masks: fixed, global RNG kept
            torch.default_generator.manual_seed(index)
            for cuda in devices:
                torch.cuda.default_generators[cuda].manual_seed(index)
            functional_call(model, state, (inputs,))


def _evaluate(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    batches: Sequence[Batch],
    weights: Sequence[float],
    loss_fn: LossFunction,
    metric_fn: MetricFunction | None,
) -> tuple[float, float | None]:
    """Batch-size weighted mean loss (and metric) of ``model`` at ``state`` in eval mode."""
    model.eval()
    loss = metric = None
    for weight, (inputs, targets) in zip(weights, batches, strict=True):
        outputs = functional_call(model, state, (inputs,))
        term = weight * loss_fn(outputs, targets)
        loss = term if loss is None else loss + term
        if metric_fn is not None:
            value = weight * torch.as_tensor(metric_fn(outputs, targets))
            metric = value if metric is None else metric + value
    return float(loss), None if metric is None else float(metric)


def _batch_weights(batches: Sequence[Batch]) -> list[float]:
    sizes = [inputs.shape[0] for inputs, _ in batches]
    total = float(sum(sizes))
    return [size / total for size in sizes]


def _path(
    model: nn.Module,
    own: State,
    state_a: State,
    state_b: State,
    alphas: torch.Tensor,
    varied: Sequence[str] | None,
    others: str,
    loss_fn: LossFunction,
    batches: Sequence[Batch],
    bn: str,
    bn_batches: Sequence[Batch],
    metric_fn: MetricFunction | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Losses (and metrics) along one path, the model restored afterwards."""
    weights = _batch_weights(batches)
    batchnorms = _batchnorm_modules(model) if bn == "recompute" else []
    losses, metrics = [], []
    with _preserved(model, batchnorms), torch.no_grad():
        for alpha in alphas.tolist():
            state = _state_at(own, state_a, state_b, alpha, varied, others)
            if batchnorms:
                _recompute_batchnorm(model, state, batchnorms, bn_batches)
            loss, metric = _evaluate(model, state, batches, weights, loss_fn, metric_fn)
            losses.append(loss)
            metrics.append(metric)
    loss_tensor = torch.tensor(losses, dtype=torch.float64)
    metric_tensor = None if metric_fn is None else torch.tensor(metrics, dtype=torch.float64)
    return loss_tensor, metric_tensor


# -- interpolation ----------------------------------------------------------------------------


def linear_interpolation(
    model: nn.Module,
    state_a: State,
    state_b: State,
    loss_fn: LossFunction,
    data: Any,
    *,
    steps: int = 21,
    span: tuple[float, float] = (0.0, 1.0),
    alphas: Sequence[float] | torch.Tensor | None = None,
    bn: str = "recompute",
    bn_data: Any = None,
    metric_fn: MetricFunction | None = None,
) -> InterpolationResult:
    """The loss along the segment ``θ_α = (1 − α) θ_a + α θ_b`` between two states.

    The 1-D linear path of Goodfellow et al. (2015), used to compare solutions (Li et al. 2018)
    and to study the path from initialization to solution (Vlaar & Frankle 2022). Every
    floating-point entry of the states is interpolated (parameters, and BatchNorm statistics in
    ``bn="interpolate"`` mode); integer entries come from the nearer endpoint. At ``α = 0`` the
    state is exactly ``state_a`` and at ``α = 1`` exactly ``state_b``. ``span`` beyond
    ``[0, 1]`` extrapolates.

    Args:
        model: the network; its architecture is used, its values are not (and are not changed).
        state_a: the state at ``α = 0`` (e.g. the initialization), as from ``state_dict()``;
            entries it lacks are taken from ``model``.
        state_b: the state at ``α = 1`` (e.g. the trained network), with the same keys.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: the batch or batches the loss is measured on.
        steps: grid points (at least 2) spanning ``span``, when ``alphas`` is not given.
        span: the α range ``(start, end)``.
        alphas: an explicit α grid (overrides ``steps`` and ``span``).
        bn: ``"recompute"`` or ``"interpolate"`` BatchNorm statistics (see the module doc).
        bn_data: the batches that recompute BatchNorm statistics (the training data);
            default ``data``.
        metric_fn: optional ``metric_fn(outputs, targets) -> scalar`` (e.g. accuracy), averaged
            over batches weighted by size like the loss.

    Returns:
        An :class:`InterpolationResult`.

    Raises:
        ValueError: for ``steps < 2``, a bad ``span``, ``alphas`` or ``bn``, states that do
            not fit the model, or bad ``data``.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> a = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
        >>> b = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
        >>> data = (torch.ones(4, 2), torch.zeros(4, 1))
        >>> result = linear_interpolation(model, a, b, torch.nn.functional.mse_loss, data,
        ...                               steps=3)
        >>> result.losses.tolist()  # outputs 0, 1.5, 3
        [0.0, 2.25, 9.0]
    """
    grid = alpha_grid("alphas", steps, span, alphas)
    _check_bn(bn)
    own = _check_states(model, state_a, state_b)
    batches = as_batches(data)
    bn_batches = batches if bn_data is None else as_batches(bn_data)
    losses, metrics = _path(
        model, own, state_a, state_b, grid, None, "b", loss_fn, batches, bn, bn_batches, metric_fn
    )
    return InterpolationResult(alphas=grid, losses=losses, metrics=metrics, bn=bn)


def _resolve_groups(
    model: nn.Module,
    keys: Sequence[str],
    groups: str | Sequence[str] | Mapping[str, Sequence[str]],
) -> dict[str, tuple[str, ...]]:
    """Group name -> the state keys (of ``keys``) it varies."""
    parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}

    def under(prefix: str) -> tuple[str, ...]:
        return tuple(k for k in keys if k == prefix or k.startswith(prefix + "."))

    resolved: dict[str, tuple[str, ...]] = {}
    if groups == "children":
        for key in keys:
            resolved.setdefault(key.split(".", 1)[0], ())
        resolved = {name: under(name) for name in resolved}
    elif groups == "modules":
        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
            own += [prefix + n for n, _ in module.named_buffers(recurse=False)]
            resolved[name or "(root)"] = tuple(k for k in keys if k in own)
    elif isinstance(groups, str):
        raise ValueError(
            f"Invalid groups: {groups!r} (one of 'children', 'modules', a list of name "
            "prefixes or a mapping name -> prefixes)"
        )
    else:
        if isinstance(groups, Mapping):
            items = [(str(name), prefixes) for name, prefixes in groups.items()]
        else:
            try:
                items = [(prefix, [prefix]) for prefix in groups]
            except TypeError:
                raise ValueError(f"Invalid groups: {groups!r}") from None
        if not items:
            raise ValueError("Invalid groups: empty")
        for name, prefixes in items:
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            found: list[str] = []
            for prefix in prefixes:
                if not isinstance(prefix, str) or not prefix:
                    raise ValueError(f"Invalid groups: bad prefix {prefix!r}")
                matched = under(prefix)
                if not matched:
                    raise ValueError(f"Invalid groups: {prefix!r} matches no entry of the state")
                found += [k for k in matched if k not in found]
            resolved[name] = tuple(found)
        return resolved
    # Automatic groups: only those that own a parameter (buffers alone are no layer).
    return {
        name: members
        for name, members in resolved.items()
        if any(k in parameter_names for k in members)
    }


def layerwise_interpolation(
    model: nn.Module,
    state_a: State,
    state_b: State,
    loss_fn: LossFunction,
    data: Any,
    *,
    groups: str | Sequence[str] | Mapping[str, Sequence[str]] = "children",
    others: str = "b",
    steps: int = 21,
    span: tuple[float, float] = (0.0, 1.0),
    alphas: Sequence[float] | torch.Tensor | None = None,
    bn: str = "recompute",
    bn_data: Any = None,
    metric_fn: MetricFunction | None = None,
    include_full: bool = True,
) -> LayerwiseInterpolationResult:
    """Layer-wise linear interpolation: one group of entries moves from a to b, the rest stays.

    For each group ℓ, ``θ^(ℓ)_α = (1 − α) θ^(ℓ)_a + α θ^(ℓ)_b`` while every other entry stays at
    the endpoint ``others``. The default ``others="b"`` keeps the rest at the *final* solution,
    as in Vlaar & Frankle (2022, following Chatterji et al. 2020): with ``state_a`` the
    initialization and ``state_b`` the trained network, a curve shows how much the trained
    network depends on that layer having left its initialization (at ``α = 1`` every curve is
    at the trained loss). ``others="a"`` instead moves one layer alone away from ``state_a``.

    A group varies its parameters and its own buffers. With ``bn="recompute"`` every BatchNorm
    layer's statistics are recomputed at each α (moving one layer changes the activations seen
    by all the layers after it); with ``bn="interpolate"`` a group's BatchNorm statistics move
    with it and all other entries are exactly those of the ``others`` state.

    Args:
        model: the network (not changed).
        state_a: the state at ``α = 0`` (e.g. the initialization).
        state_b: the state at ``α = 1`` (e.g. the trained network), with the same keys.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: the batch or batches the loss is measured on.
        groups: ``"children"`` (default: one group per top-level child module, or top-level
            parameter, that owns parameters; for a torchvision ResNet ``conv1``, ``bn1``,
            ``layer1`` … ``layer4``, ``fc``), ``"modules"`` (one per module directly owning
            parameters), a list of name prefixes (one group each, e.g.
            ``["layer1", "fc"]``), or a mapping group name -> prefixes.
        others: where the entries outside the group stay, ``"b"`` (default) or ``"a"``.
        steps: grid points (at least 2) spanning ``span``, when ``alphas`` is not given.
        span: the α range ``(start, end)``.
        alphas: an explicit α grid (overrides ``steps`` and ``span``).
        bn: ``"recompute"`` or ``"interpolate"`` (see the module doc).
        bn_data: the batches that recompute BatchNorm statistics; default ``data``.
        metric_fn: optional ``metric_fn(outputs, targets) -> scalar``.
        include_full: also compute the path that varies everything ("vary all").

    Returns:
        A :class:`LayerwiseInterpolationResult`.

    Raises:
        ValueError: for a bad ``groups``, ``others``, ``steps``, ``span``, ``alphas``, ``bn``,
            states that do not fit the model, or bad ``data``.
    """
    grid = alpha_grid("alphas", steps, span, alphas)
    _check_bn(bn)
    if others not in _OTHERS:
        raise ValueError(f"Invalid others: {others!r} (one of 'a', 'b')")
    if not isinstance(include_full, bool):
        raise ValueError(f"Invalid include_full: expected True or False, got {include_full!r}")
    own = _check_states(model, state_a, state_b)
    resolved = _resolve_groups(model, [k for k in own if k in state_a], groups)
    if not resolved:
        raise ValueError("Invalid groups: no group owns a parameter of the states")
    batches = as_batches(data)
    bn_batches = batches if bn_data is None else as_batches(bn_data)
    losses: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    for name, members in resolved.items():
        curve, metric = _path(
            model,
            own,
            state_a,
            state_b,
            grid,
            members,
            others,
            loss_fn,
            batches,
            bn,
            bn_batches,
            metric_fn,
        )
        losses[name] = curve
        if metric is not None:
            metrics[name] = metric
    full = None
    if include_full:
        curve, metric = _path(
            model,
            own,
            state_a,
            state_b,
            grid,
            None,
            "b",
            loss_fn,
            batches,
            bn,
            bn_batches,
            metric_fn,
        )
        full = InterpolationResult(alphas=grid, losses=curve, metrics=metric, bn=bn)
    return LayerwiseInterpolationResult(
        alphas=grid,
        groups=resolved,
        losses=losses,
        metrics=metrics if metric_fn is not None else None,
        full=full,
        others=others,
        bn=bn,
    )
