"""Relaxed quantization: oracles for the cell probabilities, the limits, gradients, local grid."""

from __future__ import annotations

import math

import pytest
import torch

from torchvalley.quant import RelaxedQuantizer, annealed_temperature, code_range, round_to_grid
from torchvalley.quant.grid import check_bits, initial_scale
from torchvalley.quant.relaxed import cell_log_probabilities, relaxed_quantize

F64 = torch.float64


def _grid(bits: int = 3, signed: bool = True, scale: float = 0.25, offset: float = 0.1):
    low, high = code_range(bits, signed)
    return torch.tensor(scale, dtype=F64), torch.tensor(offset, dtype=F64), low, high


def _values(n: int = 400, spread: float = 1.5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=generator, dtype=F64) * 2 - 1) * spread


@pytest.mark.parametrize("noise", ["logistic", "uniform"])
@pytest.mark.parametrize("ratio", [0.05, 1 / 3, 2.0])
def test_probabilities_sum_to_one(noise: str, ratio: float) -> None:
    scale, offset, low, high = _grid()
    x = _values()
    log_probs, _ = cell_log_probabilities(x, scale, offset, scale * ratio, low, high, noise=noise)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones_like(x), rtol=0, atol=1e-12)


def test_logistic_probabilities_equal_sigmoid_differences() -> None:
    # Oracle: pi_k = sigmoid(b_k) - sigmoid(a_k) computed directly, the tails to the end cells.
    scale, offset, low, high = _grid()
    sigma = scale / 3
    x = _values()
    log_probs, codes = cell_log_probabilities(x, scale, offset, sigma, low, high)
    centre = offset + scale * codes
    upper = torch.sigmoid((centre + scale / 2 - x[:, None]) / sigma)
    lower = torch.sigmoid((centre - scale / 2 - x[:, None]) / sigma)
    upper[:, -1], lower[:, 0] = 1.0, 0.0
    torch.testing.assert_close(log_probs.exp(), upper - lower, rtol=1e-9, atol=1e-15)


def test_uniform_noise_gives_stochastic_rounding_exactly() -> None:
    # Uniform noise of half-width alpha/2: P(up) = frac((x - beta)/alpha), P(down) = 1 - that;
    # values outside the grid put all their mass on the end cell.
    scale, offset, low, high = _grid(bits=3)
    x = torch.cat([_values(400, spread=0.9), torch.tensor([-5.0, 5.0], dtype=F64)])
    log_probs, codes = cell_log_probabilities(
        x, scale, offset, scale / 2, low, high, noise="uniform"
    )
    position = torch.clamp((x - offset) / scale, low, high)
    down = torch.floor(position)
    fraction = position - down
    oracle = torch.zeros_like(log_probs)
    rows = torch.arange(len(x))
    oracle[rows, (down - low).long()] += 1 - fraction
    up_index = torch.clamp(down + 1, max=high) - low
    oracle[rows, up_index.long()] += fraction
    torch.testing.assert_close(log_probs.exp(), oracle, rtol=0, atol=1e-12)
    assert codes.tolist() == list(range(low, high + 1))


@pytest.mark.parametrize("local_cells", [None, 2])
@pytest.mark.parametrize("straight_through", [False, True])
def test_zero_noise_zero_temperature_is_deterministic_rounding(
    local_cells: int | None, straight_through: bool
) -> None:
    # sigma = 1e-6 alpha, lam = 1e-6: the nearest cell has log-probability ~0 and every other
    # one below -1e5, far beyond any Gumbel draw, so the softmax is exactly one-hot.
    scale, offset, low, high = _grid(bits=4)
    x = _values(1000, spread=2.5, seed=1)
    torch.manual_seed(0)
    out = relaxed_quantize(
        x,
        scale,
        offset,
        scale * 1e-6,
        low,
        high,
        1e-6,
        local_cells=local_cells,
        straight_through=straight_through,
    )
    assert torch.equal(out, round_to_grid(x, scale, offset, low, high))


def test_module_limit_and_eval_mode_rounding() -> None:
    quantizer = RelaxedQuantizer(4, signed=True, temperature=1e-6, sigma_ratio=1e-6)
    quantizer.initialize(-1.0, 1.0)
    x = _values(500, spread=1.2, seed=2).float()
    torch.manual_seed(0)
    relaxed = quantizer(x)
    rounded = round_to_grid(x, *quantizer.grid())
    assert torch.equal(relaxed, rounded)
    assert torch.equal(quantizer.eval()(x), rounded)


@pytest.mark.parametrize("local_cells", [None, 2])
def test_gradcheck_inputs_scale_offset_sigma(local_cells: int | None) -> None:
    scale, offset, low, high = _grid(bits=3)
    x = _values(12, spread=0.8, seed=3)
    sigma = scale / 3
    generator = torch.Generator().manual_seed(4)
    width = 5 if local_cells else high - low + 1
    gumbel = -torch.log(torch.empty(12, width, dtype=F64).exponential_(generator=generator))
    inputs = [t.clone().requires_grad_() for t in (x, scale, offset, sigma)]

    def function(x, scale, offset, sigma):
        return relaxed_quantize(
            x, scale, offset, sigma, low, high, 0.7, local_cells=local_cells, gumbel=gumbel
        )

    assert torch.autograd.gradcheck(function, inputs)


def test_straight_through_forward_is_hard_backward_is_relaxed() -> None:
    scale, offset, low, high = _grid(bits=3)
    x = _values(50, spread=0.8, seed=5)
    gumbel = -torch.log(
        torch.empty(50, 8, dtype=F64).exponential_(generator=torch.Generator().manual_seed(6))
    )
    grads = []
    for straight_through in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, scale, offset)]
        out = relaxed_quantize(
            *leaves, scale / 3, low, high, 0.5, gumbel=gumbel, straight_through=straight_through
        )
        (out * torch.linspace(-1, 1, 50, dtype=F64)).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
        if straight_through:
            grid_values = offset + scale * torch.arange(low, high + 1, dtype=F64)
            assert torch.isin(out.detach(), grid_values).all()
    for relaxed, straight in zip(*grads, strict=True):
        torch.testing.assert_close(straight, relaxed, rtol=0, atol=0)


def test_local_grid_equals_full_grid_where_omitted_mass_is_negligible() -> None:
    # 8-bit grid, sigma = alpha/3, K = 3: kept cells cover +-3.5 alpha around the nearest
    # point, which is within alpha/2 of x, so the window edges are >= 3 alpha = 9 sigma from x
    # on one side and >= 12 sigma on the other: omitted logistic mass <= e^-9 + e^-12. The local
    # softmax renormalises the kept probabilities: each differs from the full one by a factor within
    # 1/(1 - omitted) of 1, and the mean value by at most omitted * (grid range).
    scale, offset, low, high = _grid(bits=8, scale=0.01, offset=0.0)
    x = _values(300, spread=1.2, seed=7)
    sigma = scale / 3
    full, codes = cell_log_probabilities(x, scale, offset, sigma, low, high)
    local, local_codes = cell_log_probabilities(x, scale, offset, sigma, low, high, local_cells=3)
    assert local.shape == (300, 7)
    kept = torch.gather(full.exp(), 1, (local_codes - low).long())
    omitted = 1 - kept.sum(-1)
    assert omitted.max() <= math.exp(-9) + math.exp(-12)
    renormalised = torch.softmax(local, -1)
    torch.testing.assert_close(renormalised, kept / kept.sum(-1, keepdim=True), rtol=1e-9, atol=0)
    torch.testing.assert_close(renormalised, kept, rtol=0, atol=float(omitted.max()) * 1.01)
    full_mean = (full.exp() * (offset + scale * codes)).sum(-1)
    local_mean = (renormalised * (offset + scale * local_codes)).sum(-1)
    bound = float(omitted.max()) * scale * (high - low)
    assert (full_mean - local_mean).abs().max() <= bound


def test_gumbel_max_frequencies_match_cell_probabilities() -> None:
    # The hard (argmax) sample is exactly categorical(pi) (Gumbel-max). n = 40000 draws: each
    # frequency has std sqrt(p(1-p)/n) <= 0.0025; 5 std = 0.0125 bounds a fixed-seed flake.
    scale, offset, low, high = _grid(bits=2, scale=0.5, offset=0.0)
    x = torch.full((40000,), 0.2, dtype=F64)
    probs = cell_log_probabilities(x[:1], scale, offset, scale / 3, low, high)[0].exp()[0]
    torch.manual_seed(8)
    out = relaxed_quantize(x, scale, offset, scale / 3, low, high, 1.0, straight_through=True)
    codes = torch.round(out / scale).long() - low
    frequencies = torch.bincount(codes, minlength=high - low + 1).double() / len(x)
    torch.testing.assert_close(frequencies, probs, rtol=0, atol=0.0125)


def test_gradients_reach_scale_offset_sigma_and_input() -> None:
    quantizer = RelaxedQuantizer(3)
    x = torch.randn(64, requires_grad=True)
    quantizer(x).pow(2).sum().backward()
    for tensor in (x, quantizer.log_scale, quantizer.offset, quantizer.log_sigma):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_initialisation_and_signedness() -> None:
    weights = RelaxedQuantizer(4, signed=True)
    weights.initialize(-0.8, 0.5)
    assert weights.codes() == (-8, 7)
    torch.testing.assert_close(weights.scale, torch.tensor(0.1))  # 0.8 / 8 covers -0.8
    torch.testing.assert_close(weights.sigma, torch.tensor(0.1 / 3))
    activations = RelaxedQuantizer(2)
    activations(torch.tensor([0.0, 0.3, 0.6]))
    assert activations.codes() == (0, 3) and bool(activations.initialized)
    torch.testing.assert_close(activations.scale, torch.tensor(0.2))


def test_annealing_schedule() -> None:
    assert annealed_temperature(2.0, 0.5, 0, 100) == 2.0
    assert annealed_temperature(2.0, 0.5, 50, 100) == pytest.approx(1.0)
    assert annealed_temperature(2.0, 0.5, 500, 100) == pytest.approx(0.5)
    assert annealed_temperature(2.0, 0.5, 50, 0) == 2.0
    quantizer = RelaxedQuantizer(3, temperature=2.0, final_temperature=0.5, anneal_steps=2)
    for _ in range(2):
        quantizer(torch.randn(8))
    assert int(quantizer.step) == 2 and quantizer.current_temperature == pytest.approx(0.5)
    quantizer.eval()(torch.randn(8))
    assert int(quantizer.step) == 2  # eval passes do not advance the schedule


def test_state_dict_round_trip() -> None:
    source = RelaxedQuantizer(3, temperature=1.5, final_temperature=0.5, anneal_steps=10)
    with torch.no_grad():
        source(torch.rand(32))  # initialises an unsigned grid from the data
        source.offset.fill_(0.01)
        source.log_sigma.fill_(-3.0)
    target = RelaxedQuantizer(3, temperature=1.5, final_temperature=0.5, anneal_steps=10)
    target.load_state_dict(source.state_dict())
    x = torch.rand(100)
    for a, b in ((source, target),):
        torch.manual_seed(1)
        first = a(x)
        torch.manual_seed(1)
        second = b(x)
        assert torch.equal(first, second)
        assert torch.equal(a.eval()(x), b.eval()(x))
    assert target.codes() == (0, 7) and int(target.step) == 2


@pytest.mark.parametrize("bits", [0, 17, -1, 2.0, True, "4"])
def test_bad_bits(bits) -> None:
    with pytest.raises(ValueError, match="bits"):
        RelaxedQuantizer(bits)
    with pytest.raises(ValueError, match="bits"):
        check_bits(bits)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        RelaxedQuantizer(4, temperature=temperature)
    with pytest.raises(ValueError, match="final_temperature"):
        RelaxedQuantizer(4, final_temperature=temperature)
    scale, offset, low, high = _grid()
    with pytest.raises(ValueError, match="temperature"):
        relaxed_quantize(_values(4), scale, offset, scale, low, high, temperature)


def test_grid_that_cannot_represent_the_initial_range() -> None:
    with pytest.raises(ValueError, match="unsigned"):
        RelaxedQuantizer(4, signed=False).initialize(-0.5, 1.0)
    with pytest.raises(ValueError, match="unsigned"):
        RelaxedQuantizer(4, signed=False)(torch.tensor([-1.0, 2.0]))
    with pytest.raises(ValueError, match="1-bit"):
        RelaxedQuantizer(1, signed=True).initialize(-0.5, 1.0)
    with pytest.raises(ValueError, match="single point"):
        initial_scale(0.0, 0.0, 4, True)
    with pytest.raises(ValueError, match="finite"):
        initial_scale(-math.inf, 1.0, 4, True)


def test_other_bad_arguments() -> None:
    for kwargs, name in (
        ({"local_cells": 0}, "local_cells"),
        ({"anneal_steps": -1}, "anneal_steps"),
        ({"noise": "gauss"}, "noise"),
        ({"sigma_ratio": 0.0}, "sigma_ratio"),
    ):
        with pytest.raises(ValueError, match=name):
            RelaxedQuantizer(4, **kwargs)


def test_eval_pass_before_training_does_not_fix_the_grid() -> None:
    # A harness evaluates the initial model in eval mode (BatchNorm on its initial running
    # statistics, so activations on another scale); the grid must come from training data.
    quantizer = RelaxedQuantizer(4)
    quantizer.eval()(torch.linspace(0, 100, 50))
    assert not bool(quantizer.initialized)
    quantizer.train()(torch.linspace(0, 1.5, 50))
    assert bool(quantizer.initialized)
    torch.testing.assert_close(quantizer.scale, torch.tensor(0.1))
