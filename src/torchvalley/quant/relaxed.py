"""Relaxed Quantization (Louizos, Reisser, Blankevoort, Gavves & Welling, ICLR 2019).

A value ``x`` is perturbed by noise ``eps`` of scale ``sigma`` and rounded to the grid
``g_k = beta + alpha * k``; the probability that it lands on ``g_k`` is the noise mass of the
cell around ``g_k``, and the discrete choice is relaxed with a concrete (Gumbel-softmax) sample::

    a_k = (g_k - alpha/2 - x) / sigma,  b_k = (g_k + alpha/2 - x) / sigma   # cell edges
    pi_k = F(b_k) - F(a_k)            # F: noise CDF; lowest cell a = -inf, highest b = +inf
    z = softmax((log pi + G) / lam)   # G ~ Gumbel(0, 1) i.i.d., lam: temperature
    x_hat = sum_k z_k g_k             # RQ; RQ-ST: the one-hot argmax forward, z's gradient back

For logistic noise ``F = sigmoid`` and ``log pi_k`` has the closed form
``logsigmoid(b_k) + logsigmoid(-a_k) + log(1 - exp(-alpha/sigma))`` (since
``sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - e^(a-b))`` and ``b - a = alpha/sigma``),
which stays finite where a difference of sigmoids would underflow to 0. Uniform noise of
half-width ``alpha/2`` gives ``pi`` = the stochastic-rounding probabilities exactly.

The *local grid* keeps only the ``2K + 1`` cells around the nearest grid point of each value
(shifted to stay inside the grid), so memory and time grow with ``K``, not with ``2^bits``; the
softmax renormalises over the kept cells. At inference the quantizer rounds deterministically
to the nearest grid point, the mode of ``pi`` for unimodal symmetric noise.

Defaults (paper values recalled, not verified against the PDF, which was not available):
``sigma`` initialised to ``alpha / 3``; temperature ``lam = 2``, constant unless an annealing
schedule is given; local grid of ``K = 3`` cells each side (the window edges are at least
``3 alpha = 9 sigma`` from the value at the initial sigma: omitted logistic mass at most
``e^-9 + e^-12 ~ 1.3e-4``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.quant.grid import (
    check_bits,
    check_temperature,
    code_range,
    initial_scale,
    round_to_grid,
)

__all__ = [
    "NOISES",
    "RelaxedQuantizer",
    "annealed_temperature",
    "cell_log_probabilities",
    "relaxed_quantize",
]

#: The noise distributions of :func:`cell_log_probabilities`.
NOISES = ("logistic", "uniform")


def _window_start(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    low: int,
    high: int,
    local_cells: int | None,
) -> tuple[torch.Tensor | int, int]:
    """``(first code, number of cells)``: per element for the local grid, ``low`` otherwise.

    The local window holds the ``2K + 1`` codes around each value's nearest grid point,
    shifted to stay inside the grid; it is a piecewise-constant choice (no gradient).
    """
    if local_cells is None or 2 * local_cells + 1 >= high - low + 1:
        return low, high - low + 1
    width = 2 * local_cells + 1
    with torch.no_grad():
        nearest = torch.clamp(torch.round((x - offset) / scale), low, high)
        return torch.clamp(nearest - local_cells, low, high - width + 1), width


def _cell_logits(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    sigma: torch.Tensor,
    low: int,
    high: int,
    noise: str,
    local_cells: int | None,
) -> tuple[torch.Tensor, torch.Tensor | int, int]:
    """``(log_probs (C, *x.shape), first code, C)``; see :func:`cell_log_probabilities`.

    The cell axis comes first, so the softmax and the sums over a handful of cells run
    vectorised over the elements (faster on a CPU than a trailing axis of 4-7 entries).
    """
    if noise not in NOISES:
        raise ValueError(f"Invalid noise: {noise!r} (one of {', '.join(NOISES)})")
    first, width = _window_start(x, scale, offset, low, high, local_cells)
    # Cell j spans [g_j - alpha/2, g_j + alpha/2]; its edges in units of sigma relative to x are
    # a_j = (beta + alpha (first + j - 1/2) - x) / sigma and b_j = a_j + alpha / sigma.
    ratio = scale / sigma  # alpha / sigma
    steps = torch.arange(width, dtype=x.dtype, device=x.device).reshape(-1, *[1] * x.dim())
    lower = ((offset - x) / sigma + ratio * (first - 0.5)) + ratio * steps  # a_j, (C, *x.shape)
    upper = lower + ratio  # b_j
    # The window's bottom cell is the grid's bottom cell (a = -inf) where first == low, its top
    # cell the grid's top cell (b = +inf) where first + C - 1 == high. Infinite edges make the
    # formulas below exact without special cases (logsigmoid(inf) = 0, gradient 0).
    at_low = (steps == 0) & torch.as_tensor(first == low, device=x.device)
    at_high = (steps == width - 1) & torch.as_tensor(first + (width - 1) == high, device=x.device)
    lower = lower.masked_fill(at_low, -math.inf)
    upper = upper.masked_fill(at_high, math.inf)
    if noise == "logistic":
        # log pi_j = log F(b_j) + log(1 - F(a_j)) + log(1 - e^(a_j - b_j)); the last term is
        # log(1 - e^(-alpha/sigma)) for a finite cell and 0 for an end cell.
        log_width = torch.log(-torch.expm1(-ratio))
        log_probs = (
            F.logsigmoid(upper)
            + F.logsigmoid(-lower)
            + torch.where(at_low | at_high, 0.0, log_width)
        )
    else:
        # Uniform on [-sigma, sigma]: F(t) = clamp((t + 1) / 2, 0, 1) in units of sigma.
        difference = torch.clamp((upper + 1) / 2, 0.0, 1.0) - torch.clamp((lower + 1) / 2, 0.0, 1.0)
        log_probs = torch.log(torch.clamp(difference, min=0.0))
    return log_probs, first, width


def cell_log_probabilities(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    sigma: torch.Tensor,
    low: int,
    high: int,
    *,
    noise: str = "logistic",
    local_cells: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the grid cells for ``x + eps``, and the codes they belong to.

    Args:
        x: values to quantize, any shape.
        scale: the grid step ``alpha > 0`` (0-dim tensor).
        offset: the grid offset ``beta`` (0-dim tensor).
        sigma: the noise scale ``> 0``: the logistic scale, or the uniform half-width.
        low, high: the integer codes at the grid's ends.
        noise: ``"logistic"`` (the paper) or ``"uniform"`` (stochastic rounding when
            ``sigma = alpha / 2``).
        local_cells: ``K``: keep ``2K + 1`` cells around each value; ``None`` or a grid of at
            most ``2K + 1`` points: the full grid.

    Returns:
        ``(log_probs, codes)``: ``log_probs`` of shape ``(*x.shape, C)``; ``codes`` (floats)
        of shape ``(C,)`` for the full grid or ``(*x.shape, C)`` for the local grid.
    """
    log_probs, first, width = _cell_logits(x, scale, offset, sigma, low, high, noise, local_cells)
    steps = torch.arange(width, dtype=x.dtype, device=x.device)
    codes = steps + low if isinstance(first, int) else first.unsqueeze(-1) + steps
    return log_probs.movedim(0, -1), codes


def relaxed_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    sigma: torch.Tensor,
    low: int,
    high: int,
    temperature: float,
    *,
    noise: str = "logistic",
    local_cells: int | None = None,
    straight_through: bool = False,
    gumbel: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One relaxed-quantization sample of ``x`` (the training-time forward of RQ / RQ-ST).

    Args:
        x, scale, offset, sigma, low, high, noise, local_cells: see
            :func:`cell_log_probabilities`.
        temperature: the concrete temperature ``lam > 0``.
        straight_through: forward the hard (one-hot argmax) sample, backward the relaxed one.
        gumbel: Gumbel(0, 1) noise of shape ``(*x.shape, C)`` to use instead of drawing it
            (tests; ``C`` is the number of kept cells).
        generator: the generator to draw the Gumbel noise from (default: torch's global one).

    Returns:
        A tensor of ``x``'s shape and dtype.
    """
    check_temperature(temperature)
    log_probs, first, width = _cell_logits(x, scale, offset, sigma, low, high, noise, local_cells)
    if gumbel is None:
        # G = -log(-log U), U ~ U[0, 1) (rand is vectorised; exponential_ is 10x slower on a CPU).
        gumbel = torch.rand(log_probs.shape, dtype=x.dtype, device=x.device, generator=generator)
        gumbel.clamp_min_(torch.finfo(x.dtype).tiny).log_().neg_().log_().neg_()
    else:
        gumbel = gumbel.movedim(-1, 0)
    weights = torch.softmax((log_probs + gumbel) / temperature, dim=0)  # z, cells first
    steps = torch.arange(width, dtype=x.dtype, device=x.device).reshape(-1, *[1] * x.dim())
    # x_hat = sum_j z_j g_j = beta + alpha * sum_j z_j (first + j): the code's expectation under
    # z, then one scale and shift (the same expression as round_to_grid).
    soft_code = first + (weights * steps).sum(0)
    soft = offset + scale * soft_code
    if not straight_through:
        return soft
    hard_code = first + weights.detach().argmax(dim=0).to(x.dtype)
    hard = (offset + scale * hard_code).detach()
    return hard + (soft - soft.detach())  # forward: g at the argmax; backward: d soft only


def annealed_temperature(initial: float, final: float, step: int, anneal_steps: int) -> float:
    """Exponential annealing ``lam_t = lam_0 (lam_T / lam_0)^min(t / T, 1)``; T = 0: constant."""
    if anneal_steps <= 0 or final == initial:
        return initial
    fraction = min(step / anneal_steps, 1.0)
    return initial * (final / initial) ** fraction


class RelaxedQuantizer(nn.Module):
    """The RQ quantizer of one tensor (a layer's weights or the activations after it).

    Learnable step ``alpha`` (as ``log_scale``), offset ``beta`` (``offset``) and noise scale
    ``sigma`` (as ``log_sigma``), one of each per quantizer. Training mode draws a relaxed sample
    (:func:`relaxed_quantize`); eval mode rounds deterministically to the nearest grid point.

    The grid is set by :meth:`initialize` from a value range (weights: at conversion) or, if
    not initialised then, from the first tensor it sees (activations), with ``alpha`` the
    smallest step covering the range, ``beta = 0`` and ``sigma = sigma_ratio * alpha``. The
    temperature follows :func:`annealed_temperature` over training forward passes, counted in
    the ``step`` buffer (part of the ``state_dict``).

    Args:
        bits: grid of ``2^bits`` points, ``1 <= bits <= 16``.
        signed: signed grid (weights); ``False``: unsigned (post-ReLU activations); ``None``:
            decided at initialisation (unsigned if the range has no negative value).
        temperature: initial concrete temperature ``lam_0 > 0`` (default 2).
        final_temperature: ``lam_T`` of the annealing schedule (default: ``temperature``).
        anneal_steps: training forward passes over which the temperature is annealed.
        local_cells: ``K`` of the local grid (``None``: the full grid).
        straight_through: RQ-ST (hard forward, relaxed backward).
        noise: ``"logistic"`` (the paper) or ``"uniform"``.
        sigma_ratio: initial ``sigma / alpha`` (default 1/3).
        learn_scale, learn_offset, learn_sigma: which of ``alpha``, ``beta``, ``sigma`` train.
    """

    def __init__(
        self,
        bits: int,
        *,
        signed: bool | None = None,
        temperature: float = 2.0,
        final_temperature: float | None = None,
        anneal_steps: int = 0,
        local_cells: int | None = 3,
        straight_through: bool = False,
        noise: str = "logistic",
        sigma_ratio: float = 1.0 / 3.0,
        learn_scale: bool = True,
        learn_offset: bool = True,
        learn_sigma: bool = True,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.signed = signed
        self.temperature = check_temperature(temperature)
        self.final_temperature = check_temperature(
            temperature if final_temperature is None else final_temperature, "final_temperature"
        )
        if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 0:
            raise ValueError(f"Invalid anneal_steps: {anneal_steps!r} (a whole number >= 0)")
        self.anneal_steps = anneal_steps
        if local_cells is not None and (
            isinstance(local_cells, bool) or not isinstance(local_cells, int) or local_cells < 1
        ):
            raise ValueError(f"Invalid local_cells: {local_cells!r} (a whole number >= 1 or None)")
        self.local_cells = local_cells
        self.straight_through = bool(straight_through)
        if noise not in NOISES:
            raise ValueError(f"Invalid noise: {noise!r} (one of {', '.join(NOISES)})")
        self.noise = noise
        if not 0.0 < float(sigma_ratio) < math.inf:
            raise ValueError(f"Invalid sigma_ratio: {sigma_ratio!r} (a finite number > 0)")
        self.sigma_ratio = float(sigma_ratio)
        # alpha and sigma are learned as logarithms: positive by construction, and an adaptive
        # optimizer's step (about lr per step) is then a relative change, whatever the scale
        # (alpha of an 8-bit weight grid is ~1e-3: an absolute step of 1e-3 would double it).
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=learn_scale)
        self.offset = nn.Parameter(torch.zeros(()), requires_grad=learn_offset)
        self.log_sigma = nn.Parameter(
            torch.full((), math.log(self.sigma_ratio)), requires_grad=learn_sigma
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("is_signed", torch.tensor(bool(signed)))

    # -- grid -----------------------------------------------------------------------------------
    def initialize(self, low_value: float, high_value: float) -> None:
        """Set ``alpha`` to cover ``[low_value, high_value]``, ``beta = 0``, ``sigma``."""
        signed = low_value < 0 if self.signed is None else self.signed
        scale = initial_scale(float(low_value), float(high_value), self.bits, signed)
        with torch.no_grad():
            self.is_signed.fill_(signed)
            self.log_scale.fill_(math.log(scale))
            self.offset.zero_()
            self.log_sigma.fill_(math.log(self.sigma_ratio * scale))
            self.initialized.fill_(True)

    def codes(self) -> tuple[int, int]:
        """The integer codes ``(low, high)`` of the grid."""
        return code_range(self.bits, bool(self.is_signed))

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(alpha, beta, low, high)`` as used in the forward pass (``alpha`` kept > 0)."""
        low, high = self.codes()
        return self.log_scale.exp(), self.offset, low, high

    @property
    def scale(self) -> torch.Tensor:
        """The grid step ``alpha = exp(log_scale)``."""
        return self.log_scale.exp()

    @property
    def sigma(self) -> torch.Tensor:
        """The noise scale ``sigma = exp(log_sigma)``."""
        return self.log_sigma.exp()

    @property
    def current_temperature(self) -> float:
        """The temperature of the next training forward pass."""
        return annealed_temperature(
            self.temperature, self.final_temperature, int(self.step), self.anneal_steps
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A relaxed sample in training mode; the nearest grid point in eval mode."""
        if not bool(self.initialized):
            detached = x.detach()
            self.initialize(detached.min().item(), detached.max().item())
            if not self.training:
                # An eval pass before training (e.g. a harness's epoch-0 evaluation, BatchNorm on
                # its initial running statistics) must not fix the grid: training re-initialises.
                self.initialized.fill_(False)
        scale, offset, low, high = self.grid()
        if not self.training:
            return round_to_grid(x, scale, offset, low, high)
        sigma = self.log_sigma.exp()
        out = relaxed_quantize(
            x,
            scale,
            offset,
            sigma,
            low,
            high,
            self.current_temperature,
            noise=self.noise,
            local_cells=self.local_cells,
            straight_through=self.straight_through,
        )
        self.step.add_(1)
        return out

    def extra_repr(self) -> str:
        kind = "RQ-ST" if self.straight_through else "RQ"
        return (
            f"{kind}, bits={self.bits}, signed={self.signed}, noise={self.noise}, "
            f"temperature={self.temperature}->{self.final_temperature} over "
            f"{self.anneal_steps} steps, local_cells={self.local_cells}"
        )
