"""Clause 8: invalid and unknown hyperparameters are refused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchvalley.registry import (
    OptimizerEntry,
    get_optimizer_entry,
)
from torchvalley.testing.conformance.harness import (
    UNKNOWN_HYPERPARAMETER,
    build_optimizer,
    fail,
    restores_global_rng,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for
from torchvalley.validation import INVALID_EXAMPLES


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


@restores_global_rng
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

    expect_refused(UNKNOWN_HYPERPARAMETER, (0.1,))

    defaults = {spec.name: spec.default for spec in entry.hyperparameters}
    candidates = [(f"default {k}={v!r}", {**example, k: v}) for k, v in defaults.items()]
    candidates.append(("all documented defaults together", defaults))
    for what, hyperparameters in candidates:
        try:
            build_optimizer(entry, params, problem_model=problem.model, **hyperparameters)
        except Exception as error:
            failures.append(f"{what}: refused with {type(error).__name__}: {error}")

    if failures:
        fail(entry, "invalid hyperparameters: the validation contract is broken", failures)
