"""Hyperparameter validation shared by every optimizer and by the registry.

Each check takes ``(name, value)`` and either returns the value (possibly normalised, e.g. a
list of betas becomes a tuple) or raises ``ValueError`` whose message starts with
``Invalid {name}:`` so a user always learns *which* hyperparameter is wrong and why.

``torch.optim`` itself accepts ``lr=nan`` and raises ``TypeError`` for ``lr="abc"``; the
registry runs these checks before it builds any optimizer, torch's included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import torch

__all__ = [
    "CHECKS",
    "INVALID_EXAMPLES",
    "check_betas",
    "check_bool",
    "check_choice",
    "check_int_at_least",
    "check_non_negative",
    "check_optional_positive",
    "check_optional_positive_int",
    "check_positive",
    "check_positive_int",
    "check_unit_interval",
    "check_unit_interval_open",
]


def _as_real(name: str, value: Any) -> float:
    """Return ``value`` as a finite Python float, or raise a ValueError naming ``name``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Invalid {name}: a tensor {name} must have one element, got shape "
                f"{tuple(value.shape)}"
            )
        if value.dtype.is_complex:
            raise ValueError(f"Invalid {name}: expected a real number, got a complex tensor")
        value = value.detach().cpu().item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(
            f"Invalid {name}: expected a real number, got {type(value).__name__} {value!r}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (must be finite)")
    return value


def check_non_negative(name: str, value: Any) -> Any:
    """A finite real number ``>= 0`` (a one-element tensor is accepted for ``lr``-like values)."""
    if _as_real(name, value) < 0.0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")
    return value


def check_positive(name: str, value: Any) -> Any:
    """A finite real number ``> 0``."""
    if _as_real(name, value) <= 0.0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")
    return value


def check_unit_interval(name: str, value: Any) -> Any:
    """A finite real number in ``[0, 1]`` (e.g. dampening)."""
    real = _as_real(name, value)
    if not 0.0 <= real <= 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1])")
    return value


def check_unit_interval_open(name: str, value: Any) -> Any:
    """A finite real number in ``[0, 1)`` (momentum, a beta)."""
    real = _as_real(name, value)
    if not 0.0 <= real < 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1))")
    return value


def check_betas(name: str, value: Any) -> tuple:
    """A pair ``(beta1, beta2)`` with each in ``[0, 1)``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"Invalid {name}: expected a pair (beta1, beta2), got {value!r}")
    for index, beta in enumerate(value):
        check_unit_interval_open(f"{name}[{index}]", beta)
    return tuple(value)


def check_bool(name: str, value: Any) -> bool:
    """A real ``bool`` (``0``/``1`` or strings are refused: they hide typos)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Invalid {name}: expected True or False, got {type(value).__name__} {value!r}"
        )
    return value


def check_optional_bool(name: str, value: Any) -> bool | None:
    """``None`` (let the implementation choose) or a ``bool``."""
    return None if value is None else check_bool(name, value)


def check_optional_positive(name: str, value: Any) -> Any:
    """``None`` (off) or a finite real number ``> 0`` (e.g. a clipping norm)."""
    return None if value is None else check_positive(name, value)


def check_any(name: str, value: Any) -> Any:
    """No check here: the optimizer's own constructor validates (e.g. a model, a predicate)."""
    return value


def check_positive_int(name: str, value: Any) -> int:
    """An ``int`` ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: expected an integer >= 1, got {value!r}")
    return value


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    """An ``int`` ``>= minimum`` (e.g. a number of samples that needs at least 2)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    """One of ``options`` (a method or mode name)."""
    if isinstance(value, bool) or value not in options:
        choices = ", ".join(map(repr, options))
        raise ValueError(f"Invalid {name}: {value!r} (one of {choices})")
    return value


def check_optional_positive_int(name: str, value: Any) -> int | None:
    """``None`` (off) or an ``int`` ``>= 1`` (e.g. a period in steps)."""
    return None if value is None else check_positive_int(name, value)


#: kind name -> check; a registry entry names the kind of each documented hyperparameter.
CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "non_negative": check_non_negative,
    "positive": check_positive,
    "unit_interval": check_unit_interval,
    "unit_interval_open": check_unit_interval_open,
    "betas": check_betas,
    "bool": check_bool,
    "optional_bool": check_optional_bool,
    "positive_int": check_positive_int,
    "optional_positive": check_optional_positive,
    "optional_positive_int": check_optional_positive_int,
    "any": check_any,
}

#: kind name -> values every check of that kind must reject (the conformance suite uses them).
INVALID_EXAMPLES: dict[str, tuple] = {
    "non_negative": (-1.0, float("nan"), float("inf"), "0.1", None, True),
    "positive": (0.0, -1.0, float("nan"), "1", None),
    "unit_interval": (-0.1, 1.5, float("nan"), "0.5", None),
    "unit_interval_open": (-0.1, 1.0, float("nan"), "0.9", None),
    "betas": ((0.9,), (0.9, 1.0), (float("nan"), 0.9), "0.9,0.99", 0.9),
    "bool": ("yes", 1, 0.0, None),
    "optional_bool": ("yes", 1, 0.0),
    "positive_int": (0, -3, 1.5, "2", True),
    "optional_positive": (0.0, -1.0, float("nan"), "1"),
    "optional_positive_int": (0, -3, 1.5, "2", True),
    "any": (),  # validated by the optimizer itself
    # a Hyperparameter of kind "choice" also rejects anything not in its ``choices``
    "choice": ("no_such_choice", 3, None),
}
