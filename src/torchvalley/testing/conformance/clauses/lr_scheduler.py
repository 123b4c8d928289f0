"""Clause 3: torch LR schedulers drive ``group['lr']``."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import (
    assert_identical,
    differences,
)
from torchvalley.testing.conformance.harness import (
    STEPS,
    fail,
    new_optimizer,
    restores_global_rng,
    run_steps,
    step_once,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for

SCHEDULERS = ("step", "lambda")


def _lambda_schedule(epoch: int) -> float:
    return 1.0 / (1.0 + epoch)


@restores_global_rng
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
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
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
    optimizer = new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            lr_scheduler = attach(optimizer)
            for _ in range(STEPS):
                step_once(optimizer, problem)
                lr_scheduler.step()
        except Warning as warning:
            fail(
                entry,
                "lr scheduler: a warning was raised while the scheduler drove the "
                "optimizer (was optimizer.step replaced after construction?)",
                f"{type(warning).__name__}: {warning}",
            )
        except Exception as error:
            fail(entry, f"lr scheduler: {scheduler} scheduler failed: {error!r}")
    scheduled = problem.snapshot()

    problem = make_problem(dtype)
    optimizer = new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    initial = [group["lr"] for group in optimizer.param_groups]
    for done in range(STEPS):
        step_once(optimizer, problem)
        set_by_hand(optimizer, initial, done + 1)
    assert_identical(
        entry,
        f"lr scheduler: the {scheduler} scheduler's trajectory differs from setting "
        "group['lr'] by hand to the same schedule",
        scheduled,
        problem.snapshot(),
    )

    constant = run_steps(entry, make_problem, dtype)[0].snapshot()
    if not differences(scheduled, constant):
        fail(
            entry,
            f"lr scheduler: the {scheduler} scheduler had no effect on the trajectory "
            "(is the lr cached at construction instead of read from group['lr']?)",
        )
