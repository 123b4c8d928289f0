"""The optimizer conformance contract as reusable check functions.

Every registry entry must pass these checks; ``tests/conformance`` runs them over
:func:`torchvalley.optimizer_entries`. They are public so that a third party can run the same
contract on an optimizer of their own (wrap it in an :class:`~torchvalley.OptimizerEntry`, no
registration needed) and so that meta-tests can feed them deliberately broken optimizers.

Each check takes an entry (plus a dtype or a variant where relevant), raises
:class:`AssertionError` with a message naming the entry and the broken clause, and raises
:class:`unittest.SkipTest` (which pytest reports as a skip) when a clause does not apply to the
entry's declared :class:`~torchvalley.Capabilities`. The checks reseed the global torch RNG
on a fork of it, so the caller's RNG state is unchanged.

All optimizers are driven the same way: a closure ``opt.zero_grad(); loss = problem.loss();
loss.backward(); return loss``, passed to ``opt.step(closure)`` for ``needs_closure`` entries
and called before ``opt.step()`` otherwise. Optimizers are built from ``entry.example`` with
:func:`build_optimizer` and the global torch RNG is seeded with :data:`SEED` just before each
construction, so a noisy optimizer that seeds its own generator from the global RNG is still
deterministic and the bitwise comparisons apply to it too.

Example:
    >>> import torchvalley
    >>> from torchvalley.testing import check_state_dict_round_trip, run_conformance
    >>> check_state_dict_round_trip(torchvalley.get_optimizer_entry("adam"))
    >>> run_conformance(torchvalley.get_optimizer_entry("sgd"))["skipped"]
    0
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import math
import re
import unittest
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import torch

from torchvalley.registry import (
    OptimizerEntry,
    build_from_entry,
    get_optimizer_entry,
    validate_entry_hyperparameters,
)
from torchvalley.validation import INVALID_EXAMPLES

__all__ = [
    "CONFORMANCE_CHECKS",
    "OTHER_SEED",
    "SEED",
    "STEPS",
    "ConformanceCheck",
    "Problem",
    "ProblemFactory",
    "build_optimizer",
    "check_closure",
    "check_dtypes",
    "check_foreach",
    "check_invalid_hyperparameters",
    "check_lr_scheduler",
    "check_param_groups",
    "check_state_dict_round_trip",
    "check_zero_grad",
    "default_problem",
    "manifold_problem",
    "problem_for",
    "run_conformance",
    "validate_entry_hyperparameters",
]

#: Seed of the global torch RNG before every optimizer construction.
SEED = 1234
#: A different seed, set before a resumed run continues (see :func:`check_state_dict_round_trip`).
OTHER_SEED = 98765
#: Optimizer steps per run; enough for momentum/moment estimates and bias correction to matter.
STEPS = 5

# A name no optimizer documents, used to check that unknown hyperparameters are refused.
_UNKNOWN_HYPERPARAMETER = "no_such_hyperparameter"


# --------------------------------------------------------------------------------------------
# The test problem
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """A small deterministic training problem.

    Attributes:
        model: the module whose parameters are optimized.
        loss_fn: ``loss_fn(model) -> scalar tensor``; must not touch the global RNG.
        unused: names (as in ``model.named_parameters()``) of parameters the loss does not use,
            so their ``grad`` stays ``None``.
    """

    model: torch.nn.Module
    loss_fn: Callable[[torch.nn.Module], torch.Tensor]
    unused: tuple[str, ...] = ()

    def loss(self) -> torch.Tensor:
        """The loss at the current parameters."""
        return self.loss_fn(self.model)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters in registration order."""
        return list(self.model.parameters())

    def used_and_unused(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """The parameters the loss uses and those it does not."""
        used, unused = [], []
        for name, parameter in self.model.named_parameters():
            (unused if name in self.unused else used).append(parameter)
        return used, unused

    def split(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """The parameters cut in two halves, for two param groups."""
        parameters = self.parameters()
        half = len(parameters) // 2
        if half == 0:
            raise AssertionError("the test problem needs at least two parameters")
        return parameters[:half], parameters[half:]

    def snapshot(self) -> list[torch.Tensor]:
        """Detached copies of the parameters."""
        return [p.detach().clone() for p in self.parameters()]


class ProblemFactory(Protocol):
    """``make_problem(dtype, *, with_unused=False) -> Problem``.

    The hook through which an entry that needs a different problem (e.g. a ``manifold_aware``
    optimizer whose parameters must live on a manifold) supplies one; every check accepts it as
    ``make_problem``. Two calls with the same arguments must return identical problems.
    """

    def __call__(self, dtype: torch.dtype, *, with_unused: bool = False) -> Problem: ...


class _TinyMLP(torch.nn.Module):
    """Linear(6, 5) -> tanh -> LayerNorm(5) -> Linear(5, 3), plus an optional parameter the
    forward ignores."""

    def __init__(self, dtype: torch.dtype, with_unused: bool, generator: torch.Generator):
        super().__init__()

        def draw(*shape: int, scale: float) -> torch.nn.Parameter:
            # Drawn in float64 from a private generator, then cast: the float32 and float64
            # problems start from the same values (up to rounding) and the global RNG is
            # untouched (nn.Linear's own init would consume it).
            values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
            return torch.nn.Parameter(values.to(dtype))

        self.w1 = draw(5, 6, scale=0.5)
        self.b1 = draw(5, scale=0.1)
        # A LayerNorm with affine parameters, so optimizers that treat normalization layers
        # specially (SAM-ON) have some; found by module type, hence a real nn.LayerNorm.
        self.norm = torch.nn.LayerNorm(5, dtype=dtype)
        with torch.no_grad():
            self.norm.weight.copy_(1.0 + draw(5, scale=0.1))
            self.norm.bias.copy_(draw(5, scale=0.1))
        self.w2 = draw(3, 5, scale=0.5)
        self.b2 = draw(3, scale=0.1)
        # Drawn last so that the other parameters do not depend on ``with_unused``.
        self.unused = draw(4, scale=1.0) if with_unused else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(torch.tanh(inputs @ self.w1.T + self.b1))
        return hidden @ self.w2.T + self.b2


def default_problem(dtype: torch.dtype = torch.float32, *, with_unused: bool = False) -> Problem:
    """The default :class:`Problem`: a tiny MLP regressing fixed random targets (MSE).

    Args:
        dtype: dtype of the parameters and data.
        with_unused: add a parameter ``unused`` that the loss never touches.
    """
    generator = torch.Generator().manual_seed(0)
    model = _TinyMLP(dtype, with_unused, generator)
    inputs = torch.randn(16, 6, generator=generator, dtype=torch.float64).to(dtype)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64).to(dtype)

    def loss_fn(module: torch.nn.Module) -> torch.Tensor:
        return torch.nn.functional.mse_loss(module(inputs), targets)

    return Problem(model, loss_fn, unused=("unused",) if with_unused else ())


class _ManifoldModel(torch.nn.Module):
    """The tiny MLP's shape with its weights on manifolds, plus two hyperbolic embeddings.

    ``inputs @ stiefel`` (St(6, 4)) -> Linear -> tanh -> LayerNorm -> ``@ sphere.T`` (rows on
    S^4); the Poincaré-ball and Lorentz points enter the loss through their squared distances
    to fixed anchors. Euclidean parameters (bias, LayerNorm, linear weight) are mixed in, so a
    Riemannian optimizer's Euclidean and manifold paths both run.
    """

    def __init__(self, dtype: torch.dtype, with_unused: bool, generator: torch.Generator):
        super().__init__()
        from torchvalley.manifolds import (
            Lorentz,
            ManifoldParameter,
            PoincareBall,
            Sphere,
            Stiefel,
        )

        def draw(*shape: int, scale: float) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale

        def on(manifold: Any, *shape: int, scale: float = 1.0) -> torch.nn.Parameter:
            point = manifold.projx(draw(*shape, scale=scale))
            return ManifoldParameter(point.to(dtype), manifold, project=True)

        self.stiefel = on(Stiefel(), 6, 4)
        self.w1 = torch.nn.Parameter(draw(5, 4, scale=0.5).to(dtype))
        self.b1 = torch.nn.Parameter(draw(5, scale=0.1).to(dtype))
        self.norm = torch.nn.LayerNorm(5, dtype=dtype)
        self.sphere = on(Sphere(), 3, 5)
        self.ball = on(PoincareBall(), 4, 2, scale=0.3)
        self.lorentz = on(Lorentz(), 3, 3, scale=0.5)
        self.ball_anchors = PoincareBall().projx(draw(4, 2, scale=0.3)).to(dtype)
        self.lorentz_anchors = Lorentz().projx(draw(3, 3, scale=0.5)).to(dtype)
        self.unused = torch.nn.Parameter(draw(4, scale=1.0).to(dtype)) if with_unused else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(torch.tanh((inputs @ self.stiefel) @ self.w1.T + self.b1))
        return 2.0 * hidden @ self.sphere.T

    def hyperbolic_term(self) -> torch.Tensor:
        ball = self.ball.manifold.dist(self.ball, self.ball_anchors) ** 2
        lorentz = self.lorentz.manifold.dist(self.lorentz, self.lorentz_anchors) ** 2
        return 0.1 * (ball.mean() + lorentz.mean())


def manifold_problem(dtype: torch.dtype = torch.float32, *, with_unused: bool = False) -> Problem:
    """The :class:`Problem` of ``manifold_aware`` entries: parameters on Stiefel, Sphere,
    Poincaré ball and Lorentz manifolds next to Euclidean ones (MSE plus hyperbolic distances).

    Args:
        dtype: dtype of the parameters and data.
        with_unused: add a parameter ``unused`` that the loss never touches.
    """
    generator = torch.Generator().manual_seed(0)
    model = _ManifoldModel(dtype, with_unused, generator)
    inputs = torch.randn(16, 6, generator=generator, dtype=torch.float64).to(dtype)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64).to(dtype)

    def loss_fn(module: torch.nn.Module) -> torch.Tensor:
        assert isinstance(module, _ManifoldModel)
        return torch.nn.functional.mse_loss(module(inputs), targets) + module.hyperbolic_term()

    return Problem(model, loss_fn, unused=("unused",) if with_unused else ())


def problem_for(entry: OptimizerEntry) -> ProblemFactory:
    """The default problem factory of an entry: :func:`manifold_problem` for ``manifold_aware``
    entries, :func:`default_problem` otherwise."""
    return manifold_problem if entry.capabilities.manifold_aware else default_problem


# --------------------------------------------------------------------------------------------
# Building and driving optimizers
# --------------------------------------------------------------------------------------------


def build_optimizer(
    entry: OptimizerEntry,
    params: Any,
    *,
    problem_model: torch.nn.Module | None = None,
    **hyperparameters: Any,
) -> Any:
    """Build ``entry``'s optimizer as :func:`~torchvalley.create_optimizer` does.

    The registry's own validation and construction (:func:`build_from_entry`) work for
    registered and unregistered entries alike (a third party's optimizer, a meta-test's broken
    one), so users and the suite take the same path. ``problem_model`` is passed on as
    ``model=`` (as the harness does) only to entries whose capabilities say ``accepts_model``,
    unless the hyperparameters set a ``model`` themselves.
    """
    if entry.capabilities.accepts_model and hyperparameters.get("model") is None:
        hyperparameters["model"] = problem_model
    return build_from_entry(entry, params, **hyperparameters)


def _new_optimizer(
    entry: OptimizerEntry, params: Any, model: torch.nn.Module, **hyperparameters: Any
) -> Any:
    # Reseed first: a noisy optimizer may seed its own generator from the global RNG at
    # construction, and the runs a check compares must see the same noise.
    torch.manual_seed(SEED)
    return build_optimizer(entry, params, problem_model=model, **hyperparameters)


def _make_closure(optimizer: Any, problem: Problem) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem.loss()
        loss.backward()
        return loss

    return closure


def _step(entry: OptimizerEntry, optimizer: Any, problem: Problem) -> None:
    closure = _make_closure(optimizer, problem)
    if entry.capabilities.needs_closure:
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


def _drive(entry: OptimizerEntry, optimizer: Any, problem: Problem, steps: int = STEPS) -> None:
    for _ in range(steps):
        _step(entry, optimizer, problem)


def _run(
    entry: OptimizerEntry,
    make_problem: ProblemFactory,
    dtype: torch.dtype,
    params: Callable[[Problem], Any] | None = None,
    steps: int = STEPS,
    **hyperparameters: Any,
) -> tuple[Problem, Any]:
    """A fresh problem, an optimizer over ``params(problem)`` (default: all), ``steps`` steps."""
    problem = make_problem(dtype)
    optimizer = _new_optimizer(
        entry,
        problem.parameters() if params is None else params(problem),
        problem.model,
        **{**entry.example, **hyperparameters},
    )
    _drive(entry, optimizer, problem, steps)
    return problem, optimizer


# --------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------


def _tensors_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaNs in the same places count as equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        return torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])
    return False


def _same_value(a: Any, b: Any) -> bool:
    """Equality for hyperparameter values: tuples equal lists, NaN equals NaN, tensors by bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and _tensors_identical(a.detach(), b.detach())
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _differences(actual: Any, expected: Any, path: str = "", *, tensors: bool = True) -> list[str]:
    """Paths where two nested structures (state dicts) differ; tensors compared bit for bit.

    With ``tensors=False`` tensors are only compared by dtype and shape (their values may
    legitimately have changed, see :func:`check_state_dict_round_trip`).
    """
    where = path or "<root>"
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return [f"{where}: expected a tensor, got {type(actual).__name__}"]
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            return [
                f"{where}: dtype/shape {actual.dtype}/{tuple(actual.shape)} != "
                f"{expected.dtype}/{tuple(expected.shape)}"
            ]
        if tensors and not _tensors_identical(actual.detach(), expected.detach()):
            return [f"{where}: tensor values differ"]
        return []
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{where}: expected a mapping, got {type(actual).__name__}"]
        if set(actual) != set(expected):
            return [f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"]
        found = []
        for key in expected:
            found += _differences(actual[key], expected[key], f"{path}[{key!r}]", tensors=tensors)
        return found
    if isinstance(expected, (list, tuple)) and not isinstance(expected, str):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return [f"{where}: {actual!r} != {expected!r}"]
        found = []
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            found += _differences(a, e, f"{path}[{index}]", tensors=tensors)
        return found
    return [] if _same_value(actual, expected) else [f"{where}: {actual!r} != {expected!r}"]


def _fail(entry: OptimizerEntry, clause: str, details: Sequence[str] | str = ()) -> NoReturn:
    """Raise the AssertionError every check uses: entry, broken clause, then details."""
    if isinstance(details, str):
        details = [details]
    shown = list(details[:8]) + ([f"... and {len(details) - 8} more"] if len(details) > 8 else [])
    body = "".join(f"\n  - {d}" for d in shown)
    raise AssertionError(f"[{entry.name}] {clause}{body}")


def _assert_identical(
    entry: OptimizerEntry,
    clause: str,
    actual: Sequence[torch.Tensor],
    expected: Sequence[Any],
    label: str = "param",
) -> None:
    diffs = _differences(list(actual), list(expected), label)
    if diffs:
        _fail(entry, clause, diffs)


def _first_line(error: BaseException) -> str:
    """The first line of an error message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    return text.splitlines()[0] if text else ""


def _skip(entry: OptimizerEntry, reason: str) -> NoReturn:
    # unittest.SkipTest rather than pytest.skip: the package must not depend on pytest, and
    # pytest reports a raised SkipTest as a skip.
    raise unittest.SkipTest(f"[{entry.name}] {reason}")


def _iter_state_tensors(state: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(state, torch.Tensor):
        yield path, state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from _iter_state_tensors(value, f"{path}[{key!r}]")
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from _iter_state_tensors(value, f"{path}[{index}]")


_Check = TypeVar("_Check", bound=Callable[..., None])


def _restores_global_rng(check: _Check) -> _Check:
    """Run ``check`` on a fork of the global CPU RNG: checks reseed it, callers keep theirs."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with torch.random.fork_rng(devices=[]):
            check(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# 1. Param groups
# --------------------------------------------------------------------------------------------


@_restores_global_rng
def check_param_groups(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """Two param groups, the second with ``entry.group_example`` overrides.

    Asserts (a) both group dicts keep their values after construction and steps; (b) for a
    ``separable`` entry, the two-group trajectory equals, bit for bit, two single-group
    optimizers each over its own half (skipped for ``noisy`` entries, whose single noise
    stream is split differently, and ``needs_closure`` entries, whose closure re-evaluates all
    parameters); (c) each key of ``group_example`` set alone on the second group changes the
    second group's trajectory (the optimizer reads ``group[...]`` at step time, not a value
    cached at construction).

    Raises:
        unittest.SkipTest: if the entry does not support param groups.
    """
    caps = entry.capabilities
    if not caps.supports_param_groups:
        _skip(entry, "does not support several param groups")
    if not entry.group_example:
        _fail(
            entry,
            "param groups: entry.group_example is empty; it must name hyperparameters "
            "that differ from entry.example",
        )
    make_problem = make_problem or problem_for(entry)

    def two_groups(overrides: Mapping[str, Any]) -> Callable[[Problem], Any]:
        def params(problem: Problem) -> Any:
            first, second = problem.split()
            return [{"params": first}, {"params": second, **overrides}]

        return params

    def halves(problem: Problem) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        first, second = problem.split()
        return [p.detach().clone() for p in first], [p.detach().clone() for p in second]

    # (a) The group dicts keep what they were given.
    problem, optimizer = _run(entry, make_problem, dtype, two_groups(entry.group_example))
    if len(optimizer.param_groups) != 2:
        _fail(entry, f"param groups: expected 2 param groups, got {len(optimizer.param_groups)}")
    # Only the keys of group_example are certain to be per-group hyperparameters (a wrapper's
    # ``base_optimizer``, say, need not be in its group dicts). The first group has the
    # example's value, else the documented default.
    expected: list[dict[str, Any]] = [{}, dict(entry.group_example)]
    for key in entry.group_example:
        spec = entry.hyperparameter(key)
        if key in entry.example:
            expected[0][key] = entry.example[key]
        elif spec is not None:
            expected[0][key] = spec.default
    wrong = []
    for index, values in enumerate(expected):
        for key, value in values.items():
            got = optimizer.param_groups[index].get(key, "<missing>")
            if not _same_value(got, value):
                wrong.append(f"param_groups[{index}][{key!r}] is {got!r}, expected {value!r}")
    if wrong:
        _fail(entry, "param groups: a group dict lost its hyperparameters", wrong)
    together_first, together_second = halves(problem)

    # (b) Separable: one optimizer with two groups == two optimizers with one group each.
    if caps.separable and not caps.noisy and not caps.needs_closure:
        problem = make_problem(dtype)
        first, second = problem.split()
        optimizers = [
            _new_optimizer(entry, first, problem.model, **entry.example),
            _new_optimizer(
                entry, second, problem.model, **{**entry.example, **entry.group_example}
            ),
        ]
        for _ in range(STEPS):
            problem.model.zero_grad(set_to_none=True)
            problem.loss().backward()
            for optimizer in optimizers:
                optimizer.step()
        apart_first, apart_second = halves(problem)
        _assert_identical(
            entry,
            "param groups: declared separable, but two groups in one optimizer do not match two "
            "single-group optimizers bit for bit",
            together_first + together_second,
            apart_first + apart_second,
        )

    # (c) Each override, alone, changes the second group's trajectory.
    # (Only the second group is compared: the loss couples the groups, so the first group's
    # trajectory changes too after the first step, even for a separable optimizer.)
    base_second = halves(_run(entry, make_problem, dtype, two_groups({}))[0])[1]
    for key, value in entry.group_example.items():
        second = halves(_run(entry, make_problem, dtype, two_groups({key: value}))[0])[1]
        if not _differences(second, base_second):
            _fail(
                entry,
                f"param groups: setting {key}={value!r} on the second group does not change its "
                f"trajectory (is group[{key!r}] read at step time, not cached at construction? "
                "every key of group_example must change the update)",
            )


# --------------------------------------------------------------------------------------------
# 2. state_dict round trip
# --------------------------------------------------------------------------------------------


@_restores_global_rng
def check_state_dict_round_trip(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
    steps_before: int = 3,
    steps_after: int = 3,
) -> None:
    """Checkpoint, resume, continue: the resumed run is bit-identical to an uninterrupted one.

    Runs ``steps_before`` steps, saves ``optimizer.state_dict()`` with :func:`torch.save` into a
    buffer and continues the original for ``steps_after`` steps. Then loads the buffer with
    ``torch.load(weights_only=True)`` (torch's default since 2.6: the state dict must hold only
    tensors and plain Python values), builds a fresh model copy and optimizer, loads the dict
    with ``load_state_dict``, **reseeds the global torch RNG with a different seed** (so an
    optimizer drawing noise from the global RNG instead of a generator whose state it saves
    fails) and continues ``steps_after`` steps. Asserts:

    * loading does not mutate the dict given to ``load_state_dict``, and ``state_dict()``
      right after loading equals it (tensors bit for bit);
    * the resumed parameters and ``state_dict()`` equal the uninterrupted run's bit for bit;
    * continuing does not change the loaded dict's structure, param groups or non-tensor
      values. Its tensors may change: ``torch.optim.Optimizer.load_state_dict`` adopts the
      given tensors without copying when dtype and device already match (pytorch/pytorch
      #147288), so every torch-based optimizer updates them in place.
    """
    make_problem = make_problem or problem_for(entry)
    problem, optimizer = _run(entry, make_problem, dtype, steps=steps_before)
    buffer = io.BytesIO()
    try:
        torch.save(optimizer.state_dict(), buffer)
    except Exception as error:
        _fail(entry, f"state_dict: torch.save(optimizer.state_dict()) failed: {error!r}")
    resumed_problem = dataclasses.replace(problem, model=copy.deepcopy(problem.model))

    # The uninterrupted run goes on with the global RNG where it is.
    _drive(entry, optimizer, problem, steps_after)

    buffer.seek(0)
    try:
        loaded = torch.load(buffer, weights_only=True)
    except Exception as error:
        _fail(
            entry,
            "state_dict: torch.load(weights_only=True) cannot read the saved state_dict; keep it "
            "to tensors and plain Python values (e.g. a generator as generator.get_state(), a "
            "base optimizer as its registry name)",
            f"{type(error).__name__}: {_first_line(error)}",
        )
    pristine = copy.deepcopy(loaded)
    resumed = _new_optimizer(
        entry, resumed_problem.parameters(), resumed_problem.model, **entry.example
    )
    resumed.load_state_dict(loaded)
    diffs = _differences(loaded, pristine, "state_dict")
    if diffs:
        _fail(entry, "state_dict: load_state_dict mutated the dict it was given", diffs)
    diffs = _differences(resumed.state_dict(), loaded, "state_dict")
    if diffs:
        _fail(
            entry,
            "state_dict: state_dict() right after load_state_dict differs from the loaded dict",
            diffs,
        )

    torch.manual_seed(OTHER_SEED)
    _drive(entry, resumed, resumed_problem, steps_after)
    _assert_identical(
        entry,
        "state_dict: resumed parameters differ from an uninterrupted run (state missing from "
        "state_dict, or noise drawn from the global RNG instead of a saved generator?)",
        resumed_problem.snapshot(),
        problem.snapshot(),
    )
    diffs = _differences(resumed.state_dict(), optimizer.state_dict(), "state_dict")
    if diffs:
        _fail(entry, "state_dict: resumed optimizer state differs from an uninterrupted run", diffs)
    diffs = _differences(loaded, pristine, "state_dict", tensors=False)
    if diffs:
        _fail(
            entry,
            "state_dict: continuing after load_state_dict changed the loaded dict's "
            "structure, param groups or non-tensor values",
            diffs,
        )


# --------------------------------------------------------------------------------------------
# 3. LR scheduler
# --------------------------------------------------------------------------------------------

_SCHEDULERS = ("step", "lambda")


def _lambda_schedule(epoch: int) -> float:
    return 1.0 / (1.0 + epoch)


@_restores_global_rng
def check_lr_scheduler(
    entry: OptimizerEntry,
    *,
    scheduler: str = "step",
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """A torch LR scheduler drives the optimizer's ``group["lr"]`` without warnings.

    ``scheduler="step"`` attaches ``StepLR(step_size=1, gamma=0.5)``, ``"lambda"`` attaches
    ``LambdaLR(lambda k: 1 / (1 + k))``. Under ``warnings.simplefilter("error")`` runs
    ``optimizer.step(); scheduler.step()`` and asserts: no warning (torch warns when
    ``optimizer.step`` was replaced after the scheduler wrapped it); the trajectory equals,
    bit for bit, a run that sets ``group["lr"]`` by hand to the same schedule; and it differs
    from a constant-lr run (the optimizer reads ``group["lr"]`` at every step).
    """
    if scheduler not in _SCHEDULERS:
        raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {scheduler!r}")
    make_problem = make_problem or problem_for(entry)

    def attach(optimizer: Any) -> Any:
        if scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _lambda_schedule)

    def set_by_hand(optimizer: Any, initial: list[Any], done: int) -> None:
        # The same arithmetic the schedulers do, so the two runs can match bit for bit:
        # StepLR multiplies the current lr by gamma, LambdaLR scales the initial lr.
        for group, lr in zip(optimizer.param_groups, initial, strict=True):
            group["lr"] = group["lr"] * 0.5 if scheduler == "step" else lr * _lambda_schedule(done)

    problem = make_problem(dtype)
    optimizer = _new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            lr_scheduler = attach(optimizer)
            for _ in range(STEPS):
                _step(entry, optimizer, problem)
                lr_scheduler.step()
        except Warning as warning:
            _fail(
                entry,
                "lr scheduler: a warning was raised while the scheduler drove the "
                "optimizer (was optimizer.step replaced after construction?)",
                f"{type(warning).__name__}: {warning}",
            )
        except Exception as error:
            _fail(entry, f"lr scheduler: {scheduler} scheduler failed: {error!r}")
    scheduled = problem.snapshot()

    problem = make_problem(dtype)
    optimizer = _new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    initial = [group["lr"] for group in optimizer.param_groups]
    for done in range(STEPS):
        _step(entry, optimizer, problem)
        set_by_hand(optimizer, initial, done + 1)
    _assert_identical(
        entry,
        f"lr scheduler: the {scheduler} scheduler's trajectory differs from setting "
        "group['lr'] by hand to the same schedule",
        scheduled,
        problem.snapshot(),
    )

    constant = _run(entry, make_problem, dtype)[0].snapshot()
    if not _differences(scheduled, constant):
        _fail(
            entry,
            f"lr scheduler: the {scheduler} scheduler had no effect on the trajectory "
            "(is the lr cached at construction instead of read from group['lr']?)",
        )


# --------------------------------------------------------------------------------------------
# 4. zero_grad and parameters without a gradient
# --------------------------------------------------------------------------------------------


@_restores_global_rng
def check_zero_grad(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """Parameters whose ``grad`` is ``None`` are left alone; ``zero_grad`` sets grads to None.

    Uses a problem with a parameter the loss never touches. Asserts that after the steps that
    parameter is bit-identical to its initial value (no weight decay, momentum or noise is
    applied to it), that every used parameter moved, and that ``zero_grad(set_to_none=True)``
    leaves every parameter's ``grad`` ``None``.
    """
    make_problem = make_problem or problem_for(entry)
    problem = make_problem(dtype, with_unused=True)
    used, unused = problem.used_and_unused()
    if not unused:
        _fail(entry, "zero_grad: make_problem(with_unused=True) returned no unused parameter")
    used_before = [p.detach().clone() for p in used]
    unused_before = [p.detach().clone() for p in unused]
    optimizer = _new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    _drive(entry, optimizer, problem)
    if any(p.grad is not None for p in unused):
        _fail(entry, "zero_grad: a parameter the loss does not use got a gradient")
    _assert_identical(
        entry,
        "zero_grad: a parameter whose grad is None was changed by step()",
        [p.detach() for p in unused],
        unused_before,
        label="unused",
    )
    still = [
        f"used[{i}]"
        for i, (p, b) in enumerate(zip(used, used_before, strict=True))
        if torch.equal(p, b)
    ]
    if still:
        _fail(entry, "zero_grad: parameters with a gradient did not move", still)
    optimizer.zero_grad(set_to_none=True)
    with_grad = [
        f"param_groups[{g}]['params'][{i}]"
        for g, group in enumerate(optimizer.param_groups)
        for i, p in enumerate(group["params"])
        if p.grad is not None
    ]
    if with_grad:
        _fail(entry, "zero_grad: grad is not None after zero_grad(set_to_none=True)", with_grad)


# --------------------------------------------------------------------------------------------
# 5. dtypes
# --------------------------------------------------------------------------------------------

# float32 vs float64 after STEPS steps on the default problem (parameters of order 0.1-1):
# rounding differences are ~1e-7 relative; 1e-4 leaves room for their growth through a few
# steps while still catching dtype-dependent bugs. atol covers entries that pass through zero.
_DTYPE_RTOL, _DTYPE_ATOL = 1e-4, 1e-5


@_restores_global_rng
def check_dtypes(entry: OptimizerEntry, *, make_problem: ProblemFactory | None = None) -> None:
    """float32 and float64 problems: dtypes are kept and the trajectories agree.

    Asserts that parameters and every floating optimizer-state tensor with at least one
    dimension keep the parameter's dtype (0-dim counters are exempt: torch keeps Adam's
    ``step`` in float32 for any parameter dtype), and that the float32 trajectory stays
    within ``rtol=1e-4, atol=1e-5`` of the float64 one after a few steps.
    """
    make_problem = make_problem or problem_for(entry)
    results = {}
    for dtype in (torch.float32, torch.float64):
        problem, optimizer = _run(entry, make_problem, dtype)
        wrong = [
            f"param[{i}] is {p.dtype}"
            for i, p in enumerate(problem.parameters())
            if p.dtype != dtype
        ]
        # The whole state dict, not just optimizer.state: a wrapper may keep its base's state
        # elsewhere. Every parameter of the problem has the same dtype.
        for path, tensor in _iter_state_tensors(optimizer.state_dict(), "state_dict"):
            if tensor.is_floating_point() and tensor.dim() > 0 and tensor.dtype != dtype:
                wrong.append(f"{path} is {tensor.dtype}, parameters are {dtype}")
        if wrong:
            _fail(entry, f"dtypes: with {dtype} parameters, a tensor changed dtype", wrong)
        results[dtype] = problem.snapshot()
    for index, (single, double) in enumerate(
        zip(results[torch.float32], results[torch.float64], strict=True)
    ):
        try:
            torch.testing.assert_close(
                single.to(torch.float64), double, rtol=_DTYPE_RTOL, atol=_DTYPE_ATOL
            )
        except AssertionError as error:
            _fail(
                entry,
                f"dtypes: float32 trajectory drifted from float64 at param[{index}]",
                str(error).splitlines(),
            )


# --------------------------------------------------------------------------------------------
# 6. foreach
# --------------------------------------------------------------------------------------------

# foreach=True vs foreach=False. On CPU torch's multi-tensor kernels run the same elementwise
# arithmetic as the per-tensor path, so for sgd/adam/adamw the two agree bit for bit; a few
# ulps are allowed in case an implementation fuses or reorders operations
# (float32: ~8 ulp around 1; float64: ~5e3 ulp around 1, still 1e-12 absolute).
_FOREACH_TOLERANCES = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-12, 1e-12)}


@_restores_global_rng
def check_foreach(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """``foreach=True`` and ``foreach=False`` give the same parameters and state.

    Tolerances: ``rtol=1e-6, atol=1e-7`` for float32 and ``rtol=atol=1e-12`` for float64.

    Raises:
        unittest.SkipTest: if the entry does not declare ``foreach``.
    """
    if not entry.capabilities.foreach:
        _skip(entry, "does not declare a foreach path")
    if entry.hyperparameter("foreach") is None:
        _fail(
            entry,
            "foreach: capabilities.foreach is set but 'foreach' is not a documented hyperparameter",
        )
    make_problem = make_problem or problem_for(entry)
    rtol, atol = _FOREACH_TOLERANCES.get(dtype, (1e-6, 1e-7))
    runs = [_run(entry, make_problem, dtype, foreach=flag) for flag in (True, False)]
    (multi_problem, multi), (single_problem, single) = runs
    pairs = [
        (f"param[{i}]", a, b)
        for i, (a, b) in enumerate(
            zip(multi_problem.snapshot(), single_problem.snapshot(), strict=True)
        )
    ]
    # The whole state dict (a wrapper may keep its base's state outside "state").
    multi_state = dict(_iter_state_tensors(multi.state_dict(), "state_dict"))
    single_state = dict(_iter_state_tensors(single.state_dict(), "state_dict"))
    if set(multi_state) != set(single_state):
        _fail(
            entry,
            "foreach: the two paths keep different state",
            [f"foreach=True: {sorted(multi_state)}", f"foreach=False: {sorted(single_state)}"],
        )
    pairs += [(path, multi_state[path], single_state[path]) for path in sorted(multi_state)]
    for path, a, b in pairs:
        try:
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
            elif not torch.equal(a, b):
                raise AssertionError("values differ")
        except AssertionError as error:
            _fail(
                entry,
                f"foreach: foreach=True and foreach=False differ at {path}",
                str(error).splitlines(),
            )


# --------------------------------------------------------------------------------------------
# 7. closure
# --------------------------------------------------------------------------------------------


@_restores_global_rng
def check_closure(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """The ``step(closure)`` contract.

    Asserts: for ``needs_closure`` entries, ``step()`` without a closure raises ``ValueError``
    or ``RuntimeError`` whose message mentions "closure"; for every entry, ``step(closure)``
    returns a loss the closure returned; for other entries, ``loss = closure(); step()`` and
    ``step(closure)`` give bit-identical trajectories.
    """
    make_problem = make_problem or problem_for(entry)
    needs_closure = entry.capabilities.needs_closure

    if needs_closure:
        problem = make_problem(dtype)
        optimizer = _new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
        _make_closure(optimizer, problem)()  # gradients are there; only the closure is missing
        try:
            optimizer.step()
        except (ValueError, RuntimeError) as error:
            if "closure" not in str(error).lower():
                _fail(
                    entry,
                    "closure: step() without a closure raised an error that does not "
                    "mention the closure",
                    f"{type(error).__name__}: {error}",
                )
        except Exception as error:
            _fail(
                entry,
                "closure: step() without a closure must raise ValueError or "
                f"RuntimeError mentioning 'closure', got {type(error).__name__}: {error}",
            )
        else:
            _fail(
                entry, "closure: declared needs_closure, but step() without a closure did not raise"
            )

    problem = make_problem(dtype)
    optimizer = _new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    inner = _make_closure(optimizer, problem)
    returned: list[torch.Tensor] = []

    def recording_closure() -> torch.Tensor:
        loss = inner()
        returned.append(loss.detach().clone())
        return loss

    result = optimizer.step(recording_closure)
    if not returned:
        _fail(entry, "closure: step(closure) never called the closure")
    if not isinstance(result, torch.Tensor) or not any(
        _tensors_identical(result.detach(), loss) for loss in returned
    ):
        _fail(
            entry,
            f"closure: step(closure) must return the closure's loss; got {result!r}, "
            f"the closure returned {[loss.item() for loss in returned]}",
        )

    if not needs_closure:
        called_first = _run(entry, make_problem, dtype)[0]
        problem = make_problem(dtype)
        optimizer = _new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
        for _ in range(STEPS):
            optimizer.step(_make_closure(optimizer, problem))
        _assert_identical(
            entry,
            "closure: 'loss = closure(); step()' and 'step(closure)' give different trajectories",
            problem.snapshot(),
            called_first.snapshot(),
        )


# --------------------------------------------------------------------------------------------
# 8. invalid hyperparameters
# --------------------------------------------------------------------------------------------


def _refusal_problem(build: Callable[[], Any], name: str, what: str) -> str | None:
    """``None`` if ``build()`` raised a ValueError naming ``name``, else what went wrong."""
    try:
        build()
    except ValueError as error:
        if name in str(error):
            return None
        return f"{what}: ValueError does not name {name!r}: {error}"
    except Exception as error:
        return f"{what}: raised {type(error).__name__} instead of ValueError: {error}"
    return f"{what}: accepted"


@_restores_global_rng
def check_invalid_hyperparameters(
    entry: OptimizerEntry, *, make_problem: ProblemFactory | None = None
) -> None:
    """Invalid and unknown hyperparameters are refused with a ValueError naming them.

    Asserts, building through :func:`build_optimizer` from ``entry.example``:

    * every value of :data:`~torchvalley.validation.INVALID_EXAMPLES` for a documented
      hyperparameter's kind raises ``ValueError`` naming it, passed to the constructor and set
      in a param-group dict (kind ``"optimizer"``: an unknown registry name and a
      non-optimizer object, constructor only);
    * for a wrapper whose base is a registered name, the same for the base's hyperparameters
      that ``entry.example`` sets;
    * an unknown hyperparameter raises ``ValueError`` naming it (constructor and group);
    * each documented default, and all of them together, are accepted.

    All failures are reported together.
    """
    make_problem = make_problem or problem_for(entry)
    problem = make_problem(torch.float32)
    first, second = problem.split()
    params = problem.parameters()
    example = dict(entry.example)
    failures: list[str] = []

    def in_constructor(name: str, value: Any) -> Callable[[], Any]:
        return lambda: build_optimizer(
            entry, params, problem_model=problem.model, **{**example, name: value}
        )

    def in_group(name: str, value: Any) -> Callable[[], Any]:
        if entry.capabilities.supports_param_groups:
            groups = [{"params": first}, {"params": second, name: value}]
        else:
            groups = [{"params": params, name: value}]
        return lambda: build_optimizer(entry, groups, problem_model=problem.model, **example)

    def expect_refused(name: str, values: Sequence[Any], *, group: bool = True) -> None:
        for value in values:
            failure = _refusal_problem(in_constructor(name, value), name, f"{name}={value!r}")
            if failure is None and group:
                failure = _refusal_problem(
                    in_group(name, value), name, f"{name}={value!r} in a param group"
                )
            if failure is not None:
                failures.append(failure)

    for spec in entry.hyperparameters:
        if spec.kind == "optimizer":
            expect_refused(spec.name, ("no_such_optimizer", object(), 42), group=False)
        else:
            expect_refused(spec.name, INVALID_EXAMPLES[spec.kind])

    if entry.capabilities.wraps_base:
        base_spec = entry.hyperparameter("base_optimizer")
        base = example.get("base_optimizer", base_spec.default if base_spec else None)
        if isinstance(base, str):
            base_entry = get_optimizer_entry(base)
            for key in example:
                spec = base_entry.hyperparameter(key)
                if entry.hyperparameter(key) is None and spec is not None:
                    expect_refused(key, INVALID_EXAMPLES.get(spec.kind, ()))

    expect_refused(_UNKNOWN_HYPERPARAMETER, (0.1,))

    defaults = {spec.name: spec.default for spec in entry.hyperparameters}
    candidates = [(f"default {k}={v!r}", {**example, k: v}) for k, v in defaults.items()]
    candidates.append(("all documented defaults together", defaults))
    for what, hyperparameters in candidates:
        try:
            build_optimizer(entry, params, problem_model=problem.model, **hyperparameters)
        except Exception as error:
            failures.append(f"{what}: refused with {type(error).__name__}: {error}")

    if failures:
        _fail(entry, "invalid hyperparameters: the validation contract is broken", failures)


# --------------------------------------------------------------------------------------------
# The whole suite
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConformanceCheck:
    """One check of the suite and the variants (keyword arguments) it runs with.

    Attributes:
        name: short name, used in test ids.
        function: ``function(entry, make_problem=..., **variant)``.
        variants: keyword arguments of each run, with an id for each.
    """

    name: str
    function: Callable[..., None]
    variants: tuple[tuple[str, Mapping[str, Any]], ...] = (("", {}),)

    def cases(self) -> list[tuple[str, Mapping[str, Any]]]:
        """``(id, kwargs)`` per variant; the id is ``name`` or ``name-variant``."""
        return [(f"{self.name}-{v}" if v else self.name, kw) for v, kw in self.variants]


_BOTH_DTYPES = (("float32", {"dtype": torch.float32}), ("float64", {"dtype": torch.float64}))

#: The contract, in order. The bitwise checks run in both dtypes.
CONFORMANCE_CHECKS: tuple[ConformanceCheck, ...] = (
    ConformanceCheck("param_groups", check_param_groups, _BOTH_DTYPES),
    ConformanceCheck("state_dict", check_state_dict_round_trip, _BOTH_DTYPES),
    ConformanceCheck(
        "lr_scheduler", check_lr_scheduler, tuple((s, {"scheduler": s}) for s in _SCHEDULERS)
    ),
    ConformanceCheck("zero_grad", check_zero_grad),
    ConformanceCheck("dtypes", check_dtypes),
    ConformanceCheck("foreach", check_foreach, _BOTH_DTYPES),
    ConformanceCheck("closure", check_closure),
    ConformanceCheck("invalid_hyperparameters", check_invalid_hyperparameters),
)


def run_conformance(
    entry: OptimizerEntry, *, make_problem: ProblemFactory | None = None
) -> dict[str, int]:
    """Run every check on ``entry`` and report all failures together.

    Returns:
        Counts ``{"passed": ..., "skipped": ...}``.

    Raises:
        AssertionError: listing every failed check and its message.
    """
    counts = {"passed": 0, "skipped": 0}
    failures = []
    for check in CONFORMANCE_CHECKS:
        for case, kwargs in check.cases():
            try:
                check.function(entry, make_problem=make_problem, **kwargs)
            except unittest.SkipTest:
                counts["skipped"] += 1
            except AssertionError as error:
                failures.append(f"{case}: {error}")
            else:
                counts["passed"] += 1
    if failures:
        raise AssertionError(
            f"{entry.name}: {len(failures)} conformance check(s) failed:\n" + "\n".join(failures)
        )
    return counts
