"""The uniform quantization grid: 2^b points ``g_k = beta + alpha * k``.

A *signed* grid (weights) has integer codes ``k in [-2^(b-1), 2^(b-1) - 1]``; an *unsigned*
grid (post-ReLU activations) has ``k in [0, 2^b - 1]``. The step ``alpha > 0`` and the offset
``beta`` are learnable in the quantizers; this module holds the pure functions they share:
validation, the integer range, the initial step that covers a value range, and deterministic
rounding to the nearest grid point (the inference-time quantizer of every method here).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MAX_BITS",
    "check_bits",
    "check_temperature",
    "code_range",
    "initial_scale",
    "round_to_codes",
    "round_to_grid",
]

#: The widest grid a quantizer accepts (codes must fit an int16 / int32 export).
MAX_BITS = 16


def check_bits(bits: int, name: str = "bits") -> int:
    """``bits`` as an int in ``[1, 16]``; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"Invalid {name}: {bits!r} (a whole number in [1, {MAX_BITS}])")
    return bits


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """A finite temperature ``> 0``; ``ValueError`` naming ``name`` otherwise."""
    value = float(temperature)
    if not 0.0 < value < math.inf:
        raise ValueError(f"Invalid {name}: {temperature!r} (must be a finite number > 0)")
    return value


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The integer codes ``(low, high)`` of a ``bits``-bit grid, both ends included."""
    check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def initial_scale(low_value: float, high_value: float, bits: int, signed: bool) -> float:
    """The smallest step ``alpha`` (offset 0) whose grid covers ``[low_value, high_value]``.

    The grid's ends are ``alpha * low`` and ``alpha * high`` for the integer range
    ``(low, high) = code_range(bits, signed)``.

    Raises:
        ValueError: the range is not finite, or the grid cannot represent it with offset 0:
            negative values on an unsigned grid, positive values on a 1-bit signed grid
            (codes ``{-1, 0}``), or a range that is a single point at 0.
    """
    low, high = code_range(bits, signed)
    if not (math.isfinite(low_value) and math.isfinite(high_value)) or low_value > high_value:
        raise ValueError(
            f"Invalid initial range: [{low_value}, {high_value}] (finite, low <= high)"
        )
    candidates = []
    if low_value < 0:
        if low == 0:
            raise ValueError(
                f"Invalid initial range: [{low_value:.4g}, {high_value:.4g}] has negative "
                f"values, which an unsigned {bits}-bit grid cannot represent (use signed=True)"
            )
        candidates.append(low_value / low)
    if high_value > 0:
        if high == 0:
            raise ValueError(
                f"Invalid initial range: [{low_value:.4g}, {high_value:.4g}] has positive "
                f"values, which a signed 1-bit grid (codes -1, 0) cannot represent with offset "
                "0 (use signed=False or more bits)"
            )
        candidates.append(high_value / high)
    scale = max(candidates, default=0.0)
    if not scale > 0.0:
        raise ValueError(
            f"Invalid initial range: [{low_value}, {high_value}] is the single point 0; "
            "a grid step cannot be derived from it (give init_scale)"
        )
    return scale


def round_to_codes(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, low: int, high: int
) -> torch.Tensor:
    """Integer codes (as floats) of the nearest grid point: ``clamp(round((x - beta)/alpha))``."""
    return torch.clamp(torch.round((x - offset) / scale), low, high)


def round_to_grid(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, low: int, high: int
) -> torch.Tensor:
    """Deterministic rounding to the nearest point of the grid ``beta + alpha * k``.

    This is the mode of the relaxed quantizer's categorical distribution (the noise is
    unimodal and symmetric), hence its inference-time output. The expression
    ``offset + scale * code`` is the one every path here uses, so exported integer models
    reproduce it bit for bit.
    """
    return offset + scale * round_to_codes(x, scale, offset, low, high)
