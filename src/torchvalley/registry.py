"""The optimizer registry: name -> factory + a declared capability record.

Every optimizer torchvalley ships registers itself here with one call to
:func:`register_optimizer`; the conformance suite (``tests/conformance``), the benchmark harness,
the step benchmark and the CLI all iterate over the registry, so a new optimizer is tested,
benchmarked and listed as soon as it is registered.

Example:
    >>> import torch, torchvalley
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torchvalley.create_optimizer("sgd", model.parameters(), lr=0.1, momentum=0.9)
    >>> type(opt).__name__
    'SGD'
    >>> "adam" in torchvalley.list_optimizers()
    True
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import torch

from torchvalley.validation import CHECKS

__all__ = [
    "Capabilities",
    "Hyperparameter",
    "OptimizerEntry",
    "build_from_entry",
    "create_optimizer",
    "get_optimizer_entry",
    "list_optimizers",
    "optimizer_entries",
    "register_optimizer",
    "resolve_base_optimizer",
    "revalidate_changed_groups",
    "validate_entry_hyperparameters",
    "validate_group",
    "validate_hyperparameters",
]

# Keys of a param-group dict that are not hyperparameters.
_GROUP_STRUCTURE_KEYS = frozenset({"params", "param_names", "name"})


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an optimizer needs and does, declared once and used by generic tests and tools.

    Attributes:
        needs_closure: ``step()`` must be given a closure that re-evaluates the loss
            (and runs backward); calling it without one raises.
        passes_per_step: forward+backward passes one ``step`` costs (SAM: 2).
        noisy: injects noise (Langevin-type samplers); its noise state is in ``state_dict``.
        manifold_aware: honours :class:`~torchvalley.ManifoldParameter` geometry.
        second_order: uses curvature (Hessian/Fisher/Gauss-Newton products); like timm's
            ``is_second_order`` a training loop may have to ``backward(create_graph=True)``.
        wraps_base: wraps a base optimizer given as ``base_optimizer`` (a registry name or an
            optimizer class) plus the base's hyperparameters.
        supports_param_groups: accepts several param groups with different hyperparameters.
        foreach: has a multi-tensor and a per-tensor path selected by a ``foreach`` flag, which
            must give the same numbers.
        separable: the update of a parameter depends only on its own gradient, state and its
            group's hyperparameters (false for, e.g., SAM, whose ascent uses the global norm).
        accepts_model: the factory takes an optional ``model=`` (the ``nn.Module`` being
            trained) for module-aware behaviour (BatchNorm statistics, normalization-layer
            selection, DDP ``no_sync``); the runner and the conformance suite pass it.
        needs_real_loss: the step relies on the closure's loss and gradients being those of
            one function of the parameters (DiMS solves a constraint on the loss's graph); a
            stand-in closure that returns a constant loss with preset gradients cannot drive
            it, so the optimizer-side benchmark skips it (its training-step mode times it).
    """

    needs_closure: bool = False
    passes_per_step: float = 1
    noisy: bool = False
    manifold_aware: bool = False
    second_order: bool = False
    wraps_base: bool = False
    supports_param_groups: bool = True
    foreach: bool = False
    separable: bool = True
    accepts_model: bool = False
    needs_real_loss: bool = False

    def flags(self) -> list[str]:
        """Short names of the capabilities that are on (for tables)."""
        names = {
            "needs_closure": "closure",
            "noisy": "noisy",
            "manifold_aware": "manifold",
            "second_order": "2nd-order",
            "wraps_base": "wrapper",
            "foreach": "foreach",
            "accepts_model": "model",
            "needs_real_loss": "real loss",
        }
        return [short for field, short in names.items() if getattr(self, field)]


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """A documented hyperparameter: its name, the kind of value it takes and its default.

    ``kind`` is a key of :data:`torchvalley.validation.CHECKS` (``"non_negative"``,
    ``"unit_interval_open"``, ``"betas"``, ``"bool"``, ...), ``"optimizer"`` for a wrapper's
    ``base_optimizer``, or ``"choice"`` for one of ``choices``.
    """

    name: str
    kind: str
    default: Any
    doc: str = ""
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in CHECKS and self.kind not in ("optimizer", "choice"):
            raise ValueError(f"Invalid kind for hyperparameter {self.name!r}: {self.kind!r}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"hyperparameter {self.name!r}: choices go with kind 'choice'")

    def check(self, value: Any) -> Any:
        """Validate ``value``; raise ``ValueError`` naming this hyperparameter if it is bad."""
        if self.kind == "optimizer":
            resolve_base_optimizer(value, name=self.name)
            return value
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                options = ", ".join(map(repr, self.choices))
                raise ValueError(f"Invalid {self.name}: {value!r} (one of {options})")
            return value
        return CHECKS[self.kind](self.name, value)


def validate_group(
    hyperparameters: Iterable[Hyperparameter], group: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Check, in place, every declared hyperparameter that ``group`` holds.

    The one validator of the optimizer classes: a class declares
    ``HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]]`` next to its signature and calls
    this from ``__init__`` (on ``defaults``), ``add_param_group`` and, where users mutate groups
    (schedulers do), at the start of ``step``. Values are replaced by their normalised form
    (e.g. ``betas`` as a tuple of floats). Keys that are not declared are left alone.

    Raises:
        ValueError: ``Invalid {name}: ...`` for the first bad value.
    """
    for hyperparameter in hyperparameters:
        if hyperparameter.name in group:
            group[hyperparameter.name] = hyperparameter.check(group[hyperparameter.name])
    return group


def revalidate_changed_groups(
    groups: Iterable[MutableMapping[str, Any]],
    hyperparameters: Iterable[Hyperparameter],
    checked: dict[int, tuple],
    check: Callable[[MutableMapping[str, Any]], Any],
) -> None:
    """Run ``check(group)`` on every group whose declared values changed since its last check.

    The step-time guard of the optimizer classes: schedulers and users assign to
    ``param_groups`` between steps, and a bad value must be refused before anything moves. The
    declared values are compared by identity with those recorded in ``checked`` (``id(group)``
    -> values; the optimizer keeps this dict), so an unchanged group costs a tuple, not a full
    validation.
    """
    names = _names(hyperparameters)
    for group in groups:
        get = group.get
        last = checked.get(id(group))
        # map/all in C: this runs at every step of every optimizer class
        if last is None or not all(map(operator.is_, last, map(get, names))):
            check(group)
            checked[id(group)] = tuple(map(get, names))


#: id(hyperparameters tuple) -> (the tuple, its names); the tuples are class attributes.
_NAMES: dict[int, tuple[Iterable[Hyperparameter], tuple[str, ...]]] = {}


def _names(hyperparameters: Iterable[Hyperparameter]) -> tuple[str, ...]:
    """The names of ``hyperparameters``, cached for a tuple (the classes' ``HYPERPARAMETERS``)."""
    if not isinstance(hyperparameters, tuple):
        return tuple(h.name for h in hyperparameters)
    cached = _NAMES.get(id(hyperparameters))
    if cached is None or cached[0] is not hyperparameters:
        cached = (hyperparameters, tuple(h.name for h in hyperparameters))
        _NAMES[id(hyperparameters)] = cached
    return cached[1]


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
    """One registry entry.

    Attributes:
        name: registry name (lower case, e.g. ``"sam"``).
        factory: ``factory(params, **hyperparameters) -> torch.optim.Optimizer``.
        capabilities: the declared :class:`Capabilities`.
        hyperparameters: the documented hyperparameters, validated by :func:`create_optimizer`.
        summary: one line for ``torchvalley list`` and the README table.
        family: ``"baseline"``, ``"sharpness-aware"``, ``"langevin"``, ``"riemannian"``, ...
        paper: the paper (authors, title, venue) the method comes from.
        example: hyperparameters for a typical small run; the conformance suite, the step
            benchmark and the demo start from them.
        group_example: hyperparameters that differ from ``example`` and are set on a second
            param group by the conformance suite (each must change the update).
    """

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    capabilities: Capabilities
    hyperparameters: tuple[Hyperparameter, ...]
    summary: str
    family: str
    paper: str = ""
    example: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    group_example: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def hyperparameter(self, name: str) -> Hyperparameter | None:
        """The documented hyperparameter called ``name``, or ``None``."""
        for hyperparameter in self.hyperparameters:
            if hyperparameter.name == name:
                return hyperparameter
        return None


_REGISTRY: dict[str, OptimizerEntry] = {}


def register_optimizer(
    name: str,
    factory: Callable[..., torch.optim.Optimizer],
    *,
    capabilities: Capabilities,
    hyperparameters: Iterable[Hyperparameter],
    summary: str,
    family: str,
    paper: str = "",
    example: Mapping[str, Any] | None = None,
    group_example: Mapping[str, Any] | None = None,
    replace: bool = False,
) -> OptimizerEntry:
    """Add an optimizer to the registry and return its entry.

    Raises:
        ValueError: if ``name`` is taken (pass ``replace=True`` to override on purpose), or if
            ``example``/``group_example`` name undocumented or invalid hyperparameters.
    """
    key = name.lower()
    if key in _REGISTRY and not replace:
        raise ValueError(f"optimizer {key!r} is already registered")
    entry = OptimizerEntry(
        name=key,
        factory=factory,
        capabilities=capabilities,
        hyperparameters=tuple(hyperparameters),
        summary=summary,
        family=family,
        paper=paper,
        example=dict(example or {}),
        group_example=dict(group_example or {}),
    )
    names = [h.name for h in entry.hyperparameters]
    if len(set(names)) != len(names):
        raise ValueError(f"optimizer {key!r} documents a hyperparameter twice: {names}")
    _REGISTRY[key] = entry
    try:
        validate_hyperparameters(key, {**entry.example, **entry.group_example})
    except ValueError:
        del _REGISTRY[key]
        raise
    return entry


def get_optimizer_entry(name: str) -> OptimizerEntry:
    """The registry entry for ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str):
        raise ValueError(f"Invalid optimizer name: expected a string, got {name!r}")
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown optimizer {name!r}; registered: {known}") from None


def list_optimizers(family: str | None = None) -> list[str]:
    """Registered optimizer names, sorted (optionally only those of one ``family``)."""
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def optimizer_entries() -> list[OptimizerEntry]:
    """All registry entries, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def resolve_base_optimizer(
    base: Any, *, name: str = "base_optimizer"
) -> Callable[..., torch.optim.Optimizer]:
    """Turn a base-optimizer spec into a factory ``f(params, **hyperparameters)``.

    ``base`` may be a registry name (``"sgd"``), a ``torch.optim.Optimizer`` subclass, or any
    callable returning an optimizer.
    """
    if isinstance(base, str):
        try:
            entry = get_optimizer_entry(base)
        except ValueError as error:
            raise ValueError(f"Invalid {name}: {error}") from None
        return entry.factory
    if isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
        return base
    if callable(base) and not isinstance(base, torch.optim.Optimizer):
        return base
    raise ValueError(
        f"Invalid {name}: expected a registry name or an optimizer class, got {base!r}"
    )


def validate_entry_hyperparameters(
    entry: OptimizerEntry, hyperparameters: Mapping[str, Any]
) -> dict[str, Any]:
    """Check hyperparameters for ``entry`` (registered or not) without building it.

    Documented hyperparameters are checked by kind. For a wrapper, the remaining keys are the
    base optimizer's: they are checked against the base's entry when the base is a registered
    name, and against the base constructor's signature when it is a class. Any other key is an
    error naming the wrapper's settings and the base's, with the closest match, so a misspelt
    hyperparameter is never silently dropped nor blamed on the wrong optimizer.

    Returns:
        The (possibly normalised) hyperparameters.

    Raises:
        ValueError: naming the offending hyperparameter.
    """
    import difflib
    import inspect

    def unknown_error(unknown: list[str], owners: list[tuple[str, list[str]]]) -> ValueError:
        names = ", ".join(repr(k) for k in unknown)
        known = [name for _, accepted in owners for name in accepted]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        lists = "; ".join(f"{owner}'s: {', '.join(accepted)}" for owner, accepted in owners)
        where = " over ".join(repr(owner) for owner, _ in owners)
        return ValueError(f"Unknown hyperparameter {names} for optimizer {where}{hint} ({lists})")

    checked: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in hyperparameters.items():
        spec = entry.hyperparameter(key)
        if spec is not None:
            checked[key] = spec.check(value)
        else:
            rest[key] = value
    if not rest:
        return checked
    ours = (entry.name, [h.name for h in entry.hyperparameters])
    if not entry.capabilities.wraps_base:
        raise unknown_error(list(rest), [ours])
    base_spec = entry.hyperparameter("base_optimizer")
    base = hyperparameters.get("base_optimizer", base_spec.default if base_spec else None)
    if isinstance(base, str):
        base_entry = get_optimizer_entry(base)
        theirs = [h.name for h in base_entry.hyperparameters]
        unknown = [key for key in rest if key not in theirs]
        if unknown:
            raise unknown_error(unknown, [ours, (base, theirs)])
        checked.update(validate_entry_hyperparameters(base_entry, rest))
        return checked
    try:
        parameters = inspect.signature(base).parameters.values()
    except (TypeError, ValueError):  # no signature to check against: the base checks its own
        parameters = ()
    if parameters and all(p.kind is not p.VAR_KEYWORD for p in parameters):
        theirs = [p.name for p in parameters if p.name not in ("self", "params")]
        unknown = [key for key in rest if key not in theirs]
        if unknown:
            label = getattr(base, "__name__", repr(base))
            raise unknown_error(unknown, [ours, (label, theirs)])
    checked.update(rest)
    return checked


def validate_hyperparameters(name: str, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate_entry_hyperparameters` for the registered optimizer ``name``."""
    return validate_entry_hyperparameters(get_optimizer_entry(name), hyperparameters)


def build_from_entry(
    entry: OptimizerEntry, params: Any, *, model: Any = None, **hyperparameters: Any
):
    """Validate hyperparameters (given here and per param group) and build ``entry``'s optimizer.

    Works for entries that are not registered (a third party's optimizer run through the
    conformance suite); :func:`create_optimizer` is this for a registered name. ``model`` (the
    ``nn.Module`` being trained) is passed on as ``model=`` only to entries whose capabilities
    say ``accepts_model``, so a call site can always pass it.
    """
    hyperparameters = validate_entry_hyperparameters(entry, hyperparameters)
    params = list(params)
    for group in params:
        if isinstance(group, Mapping):
            overrides = {k: v for k, v in group.items() if k not in _GROUP_STRUCTURE_KEYS}
            validate_entry_hyperparameters(entry, overrides)
    if (
        not entry.capabilities.supports_param_groups
        and sum(isinstance(g, Mapping) for g in params) > 1
    ):
        raise ValueError(f"optimizer {entry.name!r} does not support several param groups")
    if model is not None and entry.capabilities.accepts_model:
        hyperparameters["model"] = model
    return entry.factory(params, **hyperparameters)


def create_optimizer(
    name: str, params: Any, *, model: Any = None, **hyperparameters: Any
) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name`` over ``params``.

    ``params`` is anything ``torch.optim`` accepts: an iterable of tensors, of
    ``(name, tensor)`` pairs, or of param-group dicts. Hyperparameters given here and those set
    per param group are validated first (see :func:`validate_entry_hyperparameters`).
    ``model`` is passed on only where the entry's capabilities say ``accepts_model`` (SAM's
    BatchNorm handling, SAM-ON's layer selection, the Langevin partitions), so callers pass it
    without branching.

    Example:
        >>> import torch, torchvalley
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> torchvalley.create_optimizer("adam", [w], lr=float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: Invalid lr: nan (must be finite)
    """
    return build_from_entry(get_optimizer_entry(name), params, model=model, **hyperparameters)
