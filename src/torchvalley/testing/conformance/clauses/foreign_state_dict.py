"""Clause 9: a state dict saved by a different optimizer is refused on load with a ValueError.

``torch.optim.Optimizer.load_state_dict`` only checks that the number of groups and of
parameters per group match; it then adopts whatever hyperparameters and state the dict holds,
and the next ``step()`` dies with a bare ``KeyError`` (or, worse, runs on the wrong state). An
optimizer of this library checks the format where the dict enters.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.compare import first_line
from torchvalley.testing.conformance.harness import fail, restores_global_rng, run_steps, skip
from torchvalley.testing.conformance.problems import ProblemFactory, problem_for


class ForeignOptimizer(torch.optim.Optimizer):
    """Stands for "some other optimizer": a hyperparameter and a state tensor per parameter that
    no real optimizer uses, over the same param groups as the optimizer under test."""

    def __init__(self, params: Iterable[Any], foreign_rate: float = 0.1) -> None:
        super().__init__(params, {"foreign_rate": foreign_rate})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["foreign_trace"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Never called by the clause (only the saved dict matters)."""
        raise NotImplementedError("the foreign optimizer only provides a state_dict")


def _from_torch(entry: OptimizerEntry) -> bool:
    return str(getattr(entry.factory, "__module__", "")).startswith("torch.optim")


@restores_global_rng
def check_foreign_state_dict(
    entry: OptimizerEntry,
    *,
    dtype: torch.dtype = torch.float32,
    make_problem: ProblemFactory | None = None,
) -> None:
    """``load_state_dict`` refuses, with a ``ValueError``, a dict another optimizer saved.

    Runs one step, then hands ``load_state_dict`` the state dict of a :class:`ForeignOptimizer`
    over the same param groups (same group and parameter counts, so torch's own length checks
    pass; unknown group keys and state). Asserts that it raises ``ValueError``.

    Raises:
        unittest.SkipTest: for torch's own optimizer classes (``torch.optim``), whose
            ``load_state_dict`` does not check the format.
    """
    if _from_torch(entry):
        skip(entry, "torch.optim's own load_state_dict does not check the format (upstream)")
    make_problem = make_problem or problem_for(entry)
    _, optimizer = run_steps(entry, make_problem, dtype, steps=1)
    donor = ForeignOptimizer([{"params": list(g["params"])} for g in optimizer.param_groups])
    foreign = donor.state_dict()
    try:
        optimizer.load_state_dict(copy.deepcopy(foreign))
    except ValueError:
        return
    except Exception as error:
        fail(
            entry,
            "foreign state dict: load_state_dict must raise ValueError for a state dict saved "
            f"by another optimizer, got {type(error).__name__}: {first_line(error)}",
        )
    fail(
        entry,
        "foreign state dict: load_state_dict accepted a state dict saved by another optimizer "
        "(param group keys ['foreign_rate', 'params'], state key 'foreign_trace'); check the "
        "format on load and raise ValueError saying what does not match",
    )
