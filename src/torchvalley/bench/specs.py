"""Optimizer specs: ``"name:key=value,key=value"`` strings, as used by the CLI and the harness.

Values are Python literals (``0.1``, ``1e-3``, ``True``, ``(0.9, 0.99)``, ``None``); anything that
is not a literal is kept as a string, so ``base_optimizer=sgd`` works. Commas inside brackets
do not split.

Example:
    >>> spec = OptimizerSpec.parse("adam:lr=1e-3,betas=(0.9,0.99)")
    >>> spec.name, spec.hyperparameters
    ('adam', {'lr': 0.001, 'betas': (0.9, 0.99)})
    >>> spec.label
    'adam:betas=(0.9, 0.99),lr=0.001'
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from torchvalley.registry import validate_hyperparameters

__all__ = ["OptimizerSpec", "format_value"]


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


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A registry name plus hyperparameters; ``label`` is canonical (keys sorted)."""

    name: str
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name:k=v,...`` with keys sorted, so equal specs have equal labels."""
        if not self.hyperparameters:
            return self.name
        items = ",".join(
            f"{key}={format_value(value)}" for key, value in sorted(self.hyperparameters.items())
        )
        return f"{self.name}:{items}"

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
