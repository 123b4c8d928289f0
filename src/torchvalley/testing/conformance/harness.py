"""Building and driving optimizers the same way in every clause.

Optimizers are built from ``entry.example`` with :func:`build_optimizer` (the registry's own
:func:`~torchvalley.registry.build_from_entry`, ``model=`` passed where the entry accepts it),
the global torch RNG seeded with :data:`SEED` just before each construction (so a noisy
optimizer seeding its own generator from it is deterministic), and stepped with
``optimizer.step(closure)``, whatever the entry: the closure clause
(:func:`~torchvalley.testing.conformance.clauses.closure.check_closure`) proves that this equals
``closure(); optimizer.step()`` for every entry that does not need a closure.
"""

from __future__ import annotations

import functools
import unittest
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import torch

from torchvalley.registry import (
    OptimizerEntry,
    build_from_entry,
)
from torchvalley.testing.conformance.problems import Problem, ProblemFactory

#: Seed of the global torch RNG before every optimizer construction.
SEED = 1234
#: A different seed, set before a resumed run continues (see :func:`check_state_dict_round_trip`).
OTHER_SEED = 98765
#: Optimizer steps per run; enough for momentum/moment estimates and bias correction to matter.
STEPS = 5

# A name no optimizer documents, used to check that unknown hyperparameters are refused.
UNKNOWN_HYPERPARAMETER = "no_such_hyperparameter"


def build_optimizer(
    entry: OptimizerEntry,
    params: Any,
    *,
    problem_model: torch.nn.Module | None = None,
    **hyperparameters: Any,
) -> Any:
    """Build ``entry``'s optimizer as :func:`~torchvalley.create_optimizer` does.

    The registry's own validation and construction
    (:func:`~torchvalley.registry.build_from_entry`) work for registered and unregistered
    entries alike (a third party's optimizer, a meta-test's broken one), so users and the suite
    take the same path. ``problem_model`` (or a ``model`` the hyperparameters set themselves)
    goes to ``build_from_entry(..., model=...)``, which passes it on as ``model=`` only to
    entries whose capabilities say ``accepts_model``.
    """
    model = hyperparameters.pop("model", None)
    return build_from_entry(
        entry, params, model=problem_model if model is None else model, **hyperparameters
    )


def new_optimizer(
    entry: OptimizerEntry, params: Any, model: torch.nn.Module, **hyperparameters: Any
) -> Any:
    """:func:`build_optimizer` right after seeding the global RNG with :data:`SEED`."""
    # Reseed first: a noisy optimizer may seed its own generator from the global RNG at
    # construction, and the runs a check compares must see the same noise.
    torch.manual_seed(SEED)
    return build_optimizer(entry, params, problem_model=model, **hyperparameters)


def make_closure(optimizer: Any, problem: Problem) -> Callable[[], torch.Tensor]:
    """``optimizer.zero_grad(); loss = problem.loss(); loss.backward(); return loss``."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem.loss()
        loss.backward()
        return loss

    return closure


def step_once(optimizer: Any, problem: Problem) -> None:
    """One ``optimizer.step(closure)``, the same call for every entry (see the module docstring)."""
    optimizer.step(make_closure(optimizer, problem))


def drive(optimizer: Any, problem: Problem, steps: int = STEPS) -> None:
    """``steps`` calls of :func:`step_once`."""
    for _ in range(steps):
        step_once(optimizer, problem)


def run_steps(
    entry: OptimizerEntry,
    make_problem: ProblemFactory,
    dtype: torch.dtype,
    params: Callable[[Problem], Any] | None = None,
    steps: int = STEPS,
    **hyperparameters: Any,
) -> tuple[Problem, Any]:
    """A fresh problem, an optimizer over ``params(problem)`` (default: all), ``steps`` steps."""
    problem = make_problem(dtype)
    optimizer = new_optimizer(
        entry,
        problem.parameters() if params is None else params(problem),
        problem.model,
        **{**entry.example, **hyperparameters},
    )
    drive(optimizer, problem, steps)
    return problem, optimizer


def fail(entry: OptimizerEntry, clause: str, details: Sequence[str] | str = ()) -> NoReturn:
    """Raise the AssertionError every check uses: entry, broken clause, then details."""
    if isinstance(details, str):
        details = [details]
    shown = list(details[:8]) + ([f"... and {len(details) - 8} more"] if len(details) > 8 else [])
    body = "".join(f"\n  - {d}" for d in shown)
    raise AssertionError(f"[{entry.name}] {clause}{body}")


def skip(entry: OptimizerEntry, reason: str) -> NoReturn:
    # unittest.SkipTest rather than pytest.skip: the package must not depend on pytest, and
    # pytest reports a raised SkipTest as a skip.
    raise unittest.SkipTest(f"[{entry.name}] {reason}")


_Check = TypeVar("_Check", bound=Callable[..., None])


def restores_global_rng(check: _Check) -> _Check:
    """Run ``check`` on a fork of the global CPU RNG: checks reseed it, callers keep theirs."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with torch.random.fork_rng(devices=[]):
            check(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
