"""Clause 1: param groups keep their values, separate and are read at step time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import (
    assert_identical,
    differences,
    same_value,
)
from torchvalley.testing.conformance.harness import (
    STEPS,
    fail,
    new_optimizer,
    restores_global_rng,
    run_steps,
    skip,
)
from torchvalley.testing.conformance.problems import Problem, ProblemFactory, problem_for


@restores_global_rng
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
        skip(entry, "does not support several param groups")
    if not entry.group_example:
        fail(
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
    problem, optimizer = run_steps(entry, make_problem, dtype, two_groups(entry.group_example))
    if len(optimizer.param_groups) != 2:
        fail(entry, f"param groups: expected 2 param groups, got {len(optimizer.param_groups)}")
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
            if not same_value(got, value):
                wrong.append(f"param_groups[{index}][{key!r}] is {got!r}, expected {value!r}")
    if wrong:
        fail(entry, "param groups: a group dict lost its hyperparameters", wrong)
    together_first, together_second = halves(problem)

    # (b) Separable: one optimizer with two groups == two optimizers with one group each.
    if caps.separable and not caps.noisy and not caps.needs_closure:
        problem = make_problem(dtype)
        first, second = problem.split()
        optimizers = [
            new_optimizer(entry, first, problem.model, **entry.example),
            new_optimizer(entry, second, problem.model, **{**entry.example, **entry.group_example}),
        ]
        for _ in range(STEPS):
            problem.model.zero_grad(set_to_none=True)
            problem.loss().backward()
            for optimizer in optimizers:
                optimizer.step()
        apart_first, apart_second = halves(problem)
        assert_identical(
            entry,
            "param groups: declared separable, but two groups in one optimizer do not match two "
            "single-group optimizers bit for bit",
            together_first + together_second,
            apart_first + apart_second,
        )

    # (c) Each override, alone, changes the second group's trajectory.
    # (Only the second group is compared: the loss couples the groups, so the first group's
    # trajectory changes too after the first step, even for a separable optimizer.)
    base_second = halves(run_steps(entry, make_problem, dtype, two_groups({}))[0])[1]
    for key, value in entry.group_example.items():
        second = halves(run_steps(entry, make_problem, dtype, two_groups({key: value}))[0])[1]
        if not differences(second, base_second):
            fail(
                entry,
                f"param groups: setting {key}={value!r} on the second group does not change its "
                f"trajectory (is group[{key!r}] read at step time, not cached at construction? "
                "every key of group_example must change the update)",
            )
