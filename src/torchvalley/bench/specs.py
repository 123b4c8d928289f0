"""Optimizer specs: ``"name:key=value,key=value"`` strings, as used by the CLI and the harness.

Values are Python literals (``0.1``, ``1e-3``, ``True``, ``(0.9, 0.99)``, ``None``); anything that
is not a literal is kept as a string, so ``base_optimizer=sgd`` works. Commas inside brackets
do not split.

The *label* is canonical, so that one configuration is one run in a store: keys are sorted,
numbers are normalised (``1e-1`` and ``0.1``; ``0`` and ``0.0`` for a real-valued setting) and
values equal to the registry's declared default are left out (for a wrapper such as SAM, the
base optimizer's settings are compared with the base's defaults). ``hyperparameters`` keeps what
was written, so the optimizer is built exactly as asked.

Stores written before labels were canonical hold runs under the old label (every given key,
sorted); :attr:`OptimizerSpec.legacy_label` is that spelling, and the store looks a run up under
it too, so an old store's finished runs are still found and not run again.

Example:
    >>> spec = OptimizerSpec.parse("adam:lr=1e-2,betas=(0.9,0.99),eps=1e-8")
    >>> spec.name, spec.hyperparameters
    ('adam', {'lr': 0.01, 'betas': (0.9, 0.99), 'eps': 1e-08})
    >>> spec.label
    'adam:betas=(0.9, 0.99),lr=0.01'
    >>> OptimizerSpec.parse("sgd:lr=1e-1,momentum=0").label
    'sgd:lr=0.1'
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from torchvalley.registry import Hyperparameter, get_optimizer_entry, validate_hyperparameters

__all__ = ["OptimizerSpec", "canonical_hyperparameters", "format_value"]

# Kinds whose values are real numbers: an int written there means the same float.
_REAL_KINDS = frozenset(
    {"non_negative", "positive", "unit_interval", "unit_interval_open", "optional_positive"}
)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside (), [] or {}."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"unbalanced brackets in {text!r}")
    parts.append("".join(current))
    return parts


def _parse_value(text: str) -> Any:
    text = text.strip()
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null"}:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def format_value(value: Any) -> str:
    """The canonical text of a hyperparameter value (round-trips through :func:`_parse_value`)."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value) if not isinstance(value, str) else value


def _normalized(hyperparameter: Hyperparameter, value: Any) -> Any:
    if (
        hyperparameter.kind in _REAL_KINDS
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return float(value)
    if hyperparameter.kind == "betas" and isinstance(value, tuple | list):
        return tuple(float(beta) for beta in value)
    return value


def _is_default(value: Any, default: Any) -> bool:
    plain = (bool, int, float, str, tuple, type(None))
    if not isinstance(value, plain) or not isinstance(default, plain):
        return False
    if isinstance(value, bool) != isinstance(default, bool):
        return False  # True == 1, but a flag is not a number
    try:
        return bool(value == default)
    except Exception:
        return False


def canonical_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters that identify a configuration: numbers normalised, defaults dropped.

    Args:
        name: a registered optimizer name.
        hyperparameters: validated hyperparameters.
    """
    entry = get_optimizer_entry(name)
    base_entry = None
    if entry.capabilities.wraps_base:
        declared = entry.hyperparameter("base_optimizer")
        base = hyperparameters.get("base_optimizer", declared.default if declared else None)
        if isinstance(base, str):
            base_entry = get_optimizer_entry(base)
    canonical = {}
    for key, value in hyperparameters.items():
        declared = entry.hyperparameter(key)
        if declared is None and base_entry is not None:
            declared = base_entry.hyperparameter(key)
        if declared is not None:
            value = _normalized(declared, value)
            if _is_default(value, declared.default):
                continue
        canonical[key] = value
    return canonical


def _label(name: str, hyperparameters: dict[str, Any]) -> str:
    if not hyperparameters:
        return name
    items = ",".join(
        f"{key}={format_value(value)}" for key, value in sorted(hyperparameters.items())
    )
    return f"{name}:{items}"


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A registry name plus hyperparameters (as written); ``label`` is canonical."""

    name: str
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name:k=v,...``: keys sorted, numbers normalised, declared defaults left out, so
        specs that configure the same optimizer have equal labels."""
        try:
            canonical = canonical_hyperparameters(self.name, self.hyperparameters)
        except ValueError:  # not a registered name: nothing to compare with
            canonical = self.hyperparameters
        return _label(self.name, canonical)

    @property
    def legacy_label(self) -> str:
        """The label as stores written before canonical labels spelt it (every key given)."""
        return _label(self.name, self.hyperparameters)

    @classmethod
    def parse(cls, text: str) -> OptimizerSpec:
        """Parse ``"name:key=value,..."`` and validate it against the registry.

        Raises:
            ValueError: with one line saying what is wrong (syntax, unknown optimizer,
                unknown or invalid hyperparameter).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty optimizer spec {text!r}")
        name, _, rest = text.strip().partition(":")
        name = name.strip().lower()
        hyperparameters: dict[str, Any] = {}
        if rest.strip():
            for item in _split_top_level(rest):
                key, equals, value = item.partition("=")
                key = key.strip()
                if not equals or not key:
                    raise ValueError(
                        f"bad item {item.strip()!r} in optimizer spec {text!r}: expected key=value"
                    )
                if key in hyperparameters:
                    raise ValueError(f"hyperparameter {key!r} given twice in {text!r}")
                hyperparameters[key] = _parse_value(value)
        spec = cls(name, hyperparameters)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check the name and every hyperparameter against the registry."""
        checked = validate_hyperparameters(self.name, self.hyperparameters)
        self.hyperparameters.update(checked)
