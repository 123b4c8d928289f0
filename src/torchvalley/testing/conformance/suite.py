"""The whole contract: :data:`CONFORMANCE_CHECKS` in order and :func:`run_conformance`."""

from __future__ import annotations

import dataclasses
import unittest
from collections.abc import Callable, Mapping
from typing import Any

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.clauses import (
    SCHEDULERS,
    check_closure,
    check_dtypes,
    check_foreach,
    check_foreign_state_dict,
    check_invalid_hyperparameters,
    check_lr_scheduler,
    check_param_groups,
    check_state_dict_round_trip,
    check_zero_grad,
)
from torchvalley.testing.conformance.problems import ProblemFactory


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
        "lr_scheduler", check_lr_scheduler, tuple((s, {"scheduler": s}) for s in SCHEDULERS)
    ),
    ConformanceCheck("zero_grad", check_zero_grad),
    ConformanceCheck("dtypes", check_dtypes),
    ConformanceCheck("foreach", check_foreach, _BOTH_DTYPES),
    ConformanceCheck("closure", check_closure),
    ConformanceCheck("invalid_hyperparameters", check_invalid_hyperparameters),
    ConformanceCheck("foreign_state_dict", check_foreign_state_dict),
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
