"""Bitwise comparison of tensors, hyperparameter values and nested state dicts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from torchvalley.registry import OptimizerEntry
from torchvalley.testing.conformance.harness import fail


def tensors_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaNs in the same places count as equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        return torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b])
    return False


def same_value(a: Any, b: Any) -> bool:
    """Equality for hyperparameter values: tuples equal lists, NaN equals NaN, tensors by bits."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and tensors_identical(a.detach(), b.detach())
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except Exception:
        return a is b


def differences(actual: Any, expected: Any, path: str = "", *, tensors: bool = True) -> list[str]:
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
        if tensors and not tensors_identical(actual.detach(), expected.detach()):
            return [f"{where}: tensor values differ"]
        return []
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return [f"{where}: expected a mapping, got {type(actual).__name__}"]
        if set(actual) != set(expected):
            return [f"{where}: keys {sorted(map(str, actual))} != {sorted(map(str, expected))}"]
        found = []
        for key in expected:
            found += differences(actual[key], expected[key], f"{path}[{key!r}]", tensors=tensors)
        return found
    if isinstance(expected, (list, tuple)) and not isinstance(expected, str):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return [f"{where}: {actual!r} != {expected!r}"]
        found = []
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            found += differences(a, e, f"{path}[{index}]", tensors=tensors)
        return found
    return [] if same_value(actual, expected) else [f"{where}: {actual!r} != {expected!r}"]


def assert_identical(
    entry: OptimizerEntry,
    clause: str,
    actual: Sequence[torch.Tensor],
    expected: Sequence[Any],
    label: str = "param",
) -> None:
    diffs = differences(list(actual), list(expected), label)
    if diffs:
        fail(entry, clause, diffs)


def first_line(error: BaseException) -> str:
    """The first line of an error message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    return text.splitlines()[0] if text else ""


def iter_state_tensors(state: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(state, torch.Tensor):
        yield path, state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from iter_state_tensors(value, f"{path}[{key!r}]")
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from iter_state_tensors(value, f"{path}[{index}]")
