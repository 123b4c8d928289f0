"""Baseline quantizers: LSQ-style straight-through QAT, post-training rounding, torch.ao.

* :class:`LSQQuantizer`: Learned Step Size Quantization (Esser, McKinley, Bablani, Appuswamy &
  Modha, ICLR 2020): ``x_hat = s * round(clamp(x / s, Q_n, Q_p))`` in the forward pass; the
  rounding's gradient is the identity (straight-through), the clamp's is 0 outside the range,
  and the step ``s`` learns with its gradient scaled by ``1 / sqrt(N * Q_p)``. Initial step
  ``2 mean|x| / sqrt(Q_p)`` (the paper's).
* :class:`RoundingQuantizer`: post-training rounding. Training passes values through unchanged
  and records their range (weights: their current range); eval rounds to the min/max grid of
  that range. Trained as the float model, evaluated as its rounded copy.
* :class:`TorchAOQuantizer`: torch.ao's ``FakeQuantize`` (moving-average min/max observer,
  straight-through rounding, step not learned), the QAT most PyTorch users run; up to 8 bits.

All three round to the grid ``beta + alpha * k`` at inference; the first two expose
:meth:`grid` like :class:`~torchvalley.quant.relaxed.RelaxedQuantizer`, so they export.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torchvalley.quant.grid import check_bits, code_range, initial_scale, round_to_grid

__all__ = ["LSQQuantizer", "RoundingQuantizer", "TorchAOQuantizer"]


def _scale_gradient(value: torch.Tensor, factor: float) -> torch.Tensor:
    """``value`` in the forward pass, ``factor * gradient`` in the backward pass."""
    scaled = value * factor
    return (value - scaled).detach() + scaled


def _round_straight_through(value: torch.Tensor) -> torch.Tensor:
    """``round(value)`` forward, identity backward."""
    return (torch.round(value) - value).detach() + value


class LSQQuantizer(nn.Module):
    """LSQ: a learned step, straight-through rounding (see the module docstring).

    Args:
        bits: ``1 <= bits <= 16``.
        signed: signed grid; ``False``: unsigned; ``None``: from the first range it sees.
    """

    def __init__(self, bits: int, *, signed: bool | None = None) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.signed = signed
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("is_signed", torch.tensor(bool(signed)))

    def initialize_from(self, x: torch.Tensor) -> None:
        """Initial step ``2 mean|x| / sqrt(Q_p)``, checked to be a grid that holds ``x``'s sign."""
        detached = x.detach()
        low_value, high_value = detached.min().item(), detached.max().item()
        signed = low_value < 0 if self.signed is None else self.signed
        initial_scale(low_value, high_value, self.bits, signed)  # raises if unrepresentable
        _, high = code_range(self.bits, signed)
        scale = 2.0 * detached.abs().mean().item() / math.sqrt(max(high, 1))
        with torch.no_grad():
            self.is_signed.fill_(signed)
            self.scale.fill_(scale if scale > 0 else 1.0)
            self.initialized.fill_(True)

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(alpha, beta = 0, low, high)``."""
        low, high = code_range(self.bits, bool(self.is_signed))
        scale = self.scale.abs().clamp_min(torch.finfo(self.scale.dtype).tiny)
        return scale, torch.zeros((), dtype=scale.dtype, device=scale.device), low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Straight-through fake quantization (train); nearest grid point (eval)."""
        if not bool(self.initialized):
            self.initialize_from(x)
            if not self.training:  # as RelaxedQuantizer: only a training pass fixes the step
                self.initialized.fill_(False)
        scale, offset, low, high = self.grid()
        if not self.training:
            return round_to_grid(x, scale, offset, low, high)
        step = _scale_gradient(scale, 1.0 / math.sqrt(x.numel() * max(high, 1)))
        codes = _round_straight_through(torch.clamp(x / step, low, high))
        return codes * step

    def extra_repr(self) -> str:
        return f"LSQ, bits={self.bits}, signed={self.signed}"


class RoundingQuantizer(nn.Module):
    """Post-training rounding to the min/max grid of the observed range.

    Args:
        bits: ``1 <= bits <= 16``.
        signed: as in :class:`LSQQuantizer`.
        track: ``"running"`` (activations: the range seen over training, each new batch
            widening it) or ``"current"`` (weights: the range of the tensor being rounded).
    """

    def __init__(self, bits: int, *, signed: bool | None = None, track: str = "running") -> None:
        super().__init__()
        if track not in ("running", "current"):
            raise ValueError(f"Invalid track: {track!r} ('running' or 'current')")
        self.bits = check_bits(bits)
        self.signed = signed
        self.track = track
        self.register_buffer("low_value", torch.tensor(math.inf))
        self.register_buffer("high_value", torch.tensor(-math.inf))

    def _observe(self, x: torch.Tensor) -> None:
        detached = x.detach()
        if self.track == "current":
            self.low_value.fill_(detached.min().item())
            self.high_value.fill_(detached.max().item())
        else:
            torch.minimum(self.low_value, detached.min(), out=self.low_value)
            torch.maximum(self.high_value, detached.max(), out=self.high_value)

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(alpha, 0, low, high)``: the smallest grid covering the observed range."""
        low_value, high_value = self.low_value.item(), self.high_value.item()
        if low_value > high_value:
            raise RuntimeError("RoundingQuantizer has seen no values yet (run training first)")
        signed = low_value < 0 if self.signed is None else self.signed
        scale = initial_scale(low_value, high_value, self.bits, signed)
        low, high = code_range(self.bits, signed)
        tensor = torch.tensor(scale, dtype=self.low_value.dtype)
        return tensor, torch.zeros_like(tensor), low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity + range tracking (train); nearest grid point (eval)."""
        if self.training or self.track == "current" or self.low_value > self.high_value:
            self._observe(x)
        if self.training:
            return x
        scale, offset, low, high = self.grid()
        return round_to_grid(x, scale.to(x.dtype), offset.to(x.dtype), low, high)

    def extra_repr(self) -> str:
        return f"post-training rounding, bits={self.bits}, signed={self.signed}, {self.track}"


class TorchAOQuantizer(nn.Module):
    """torch.ao ``FakeQuantize`` (moving-average min/max observer), observer off in eval.

    Supports 1 to 8 bits (``quant_min`` / ``quant_max`` of an 8-bit dtype): weights per tensor
    symmetric on ``qint8``, activations affine on ``quint8``.
    """

    def __init__(self, bits: int, *, signed: bool = True, weight: bool = False) -> None:
        super().__init__()
        from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

        self.bits = check_bits(bits)
        if bits > 8:
            raise ValueError(f"Invalid bits: {bits} (torch.ao FakeQuantize supports up to 8)")
        low, high = code_range(bits, signed)
        self.fake_quantize = FakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=low,
            quant_max=high,
            dtype=torch.qint8 if signed else torch.quint8,
            qscheme=torch.per_tensor_symmetric if weight else torch.per_tensor_affine,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake quantization; the observer updates in training mode only."""
        if self.training:
            self.fake_quantize.enable_observer()
        else:
            self.fake_quantize.disable_observer()
        return self.fake_quantize(x)
