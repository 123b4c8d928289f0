"""Every registered optimizer against the conformance contract (torchvalley.testing).

Parametrized over :func:`torchvalley.optimizer_entries` x the checks (x dtypes or scheduler
variants), so an optimizer is covered as soon as it is registered. A check that does not apply
to an entry's declared capabilities is reported as skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import torchvalley
from torchvalley.testing import CONFORMANCE_CHECKS, check_invalid_hyperparameters

ENTRIES = torchvalley.optimizer_entries()


def test_registry_has_entries() -> None:
    # An empty registry (e.g. a failed import of torchvalley.optim) would make every
    # parametrized test below vanish instead of fail.
    assert ENTRIES, "no optimizer is registered"


# Clauses an entry does not meet yet, with the reason; xfail(strict=False), so the case turns
# into an XPASS as soon as the fix lands, and the entry is then removed from here.
PENDING: dict[str, dict[str, str]] = {}


def _marks(check: str, entry: str) -> list[pytest.MarkDecorator]:
    reason = PENDING.get(check, {}).get(entry)
    return [pytest.mark.xfail(reason=reason, strict=False)] if reason else []


CONFORMANCE_CASES = [
    pytest.param(
        entry,
        check.function,
        kwargs,
        id=f"{case}-{entry.name}",
        marks=_marks(check.name, entry.name),
    )
    for check in CONFORMANCE_CHECKS
    for case, kwargs in check.cases()
    for entry in ENTRIES
]


@pytest.mark.parametrize(("entry", "check", "kwargs"), CONFORMANCE_CASES)
def test_conformance(
    entry: torchvalley.OptimizerEntry,
    check: Callable[..., None],
    kwargs: Mapping[str, Any],
) -> None:
    check(entry, **kwargs)


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_unregistered_copy_is_validated_like_the_registry(
    entry: torchvalley.OptimizerEntry,
) -> None:
    # A copy is not the registered object, so build_optimizer validates it with its own
    # mirror of the registry's rules (the path third-party and meta-test entries take):
    # the two paths must agree on every registered entry.
    check_invalid_hyperparameters(dataclasses.replace(entry))
