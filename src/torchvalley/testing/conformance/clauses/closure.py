"""Clause 7: the ``step(closure)`` contract."""

from __future__ import annotations

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import (
    assert_identical,
    tensors_identical,
)
from torchvalley.testing.conformance.harness import (
    STEPS,
    fail,
    make_closure,
    new_optimizer,
    restores_global_rng,
    run_steps,
)
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for


@restores_global_rng
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
        optimizer = new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
        make_closure(optimizer, problem)()  # gradients are there; only the closure is missing
        try:
            optimizer.step()
        except (ValueError, RuntimeError) as error:
            if "closure" not in str(error).lower():
                fail(
                    entry,
                    "closure: step() without a closure raised an error that does not "
                    "mention the closure",
                    f"{type(error).__name__}: {error}",
                )
        except Exception as error:
            fail(
                entry,
                "closure: step() without a closure must raise ValueError or "
                f"RuntimeError mentioning 'closure', got {type(error).__name__}: {error}",
            )
        else:
            fail(
                entry, "closure: declared needs_closure, but step() without a closure did not raise"
            )

    problem = make_problem(dtype)
    optimizer = new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
    inner = make_closure(optimizer, problem)
    returned: list[torch.Tensor] = []

    def recording_closure() -> torch.Tensor:
        loss = inner()
        returned.append(loss.detach().clone())
        return loss

    result = optimizer.step(recording_closure)
    if not returned:
        fail(entry, "closure: step(closure) never called the closure")
    if not isinstance(result, torch.Tensor) or not any(
        tensors_identical(result.detach(), loss) for loss in returned
    ):
        fail(
            entry,
            f"closure: step(closure) must return the closure's loss; got {result!r}, "
            f"the closure returned {[loss.item() for loss in returned]}",
        )

    if not needs_closure:
        # The rest of the suite drives every entry with step(closure); this is the proof that
        # it is the same as the plain loop users write for optimizers without a closure.
        with_closure = run_steps(entry, make_problem, dtype)[0]
        problem = make_problem(dtype)
        optimizer = new_optimizer(entry, problem.parameters(), problem.model, **entry.example)
        for _ in range(STEPS):
            make_closure(optimizer, problem)()
            optimizer.step()
        assert_identical(
            entry,
            "closure: 'loss = closure(); step()' and 'step(closure)' give different trajectories",
            problem.snapshot(),
            with_closure.snapshot(),
        )
