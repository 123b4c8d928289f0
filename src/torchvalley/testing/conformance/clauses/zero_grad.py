"""Clause 4: parameters without a gradient are left alone; ``zero_grad`` clears."""

from __future__ import annotations

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import (
    assert_identical,
)
from torchvalley.testing.conformance.harness import (
    drive,
    fail,
    new_optimizer,
    restores_global_rng,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for


@restores_global_rng
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
        fail(entry, "zero_grad: make_problem(with_unused=True) returned no unused parameter")
    used_before = [p.detach().clone() for p in used]
    unused_before = [p.detach().clone() for p in unused]
    optimizer = new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    drive(optimizer, problem)
    if any(p.grad is not None for p in unused):
        fail(entry, "zero_grad: a parameter the loss does not use got a gradient")
    assert_identical(
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
        fail(entry, "zero_grad: parameters with a gradient did not move", still)
    optimizer.zero_grad(set_to_none=True)
    with_grad = [
        f"param_groups[{g}]['params'][{i}]"
        for g, group in enumerate(optimizer.param_groups)
        for i, p in enumerate(group["params"])
        if p.grad is not None
    ]
    if with_grad:
        fail(entry, "zero_grad: grad is not None after zero_grad(set_to_none=True)", with_grad)
