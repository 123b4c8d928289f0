"""``method="brevitas"``: brevitas's QuantLinear / QuantConv / QuantReLU as a QAT anchor.

Oracles: our own rounding (:func:`~torchvalley.quant.grid.round_to_grid`) with the scale brevitas
reports must give brevitas's quantized weights and activations exactly; the model's eval output
must equal the float layers recomposed by hand from those quantized tensors.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from torchvalley.quant import export_quantized, make_quantizer, quantize_model
from torchvalley.quant.brevitas_qat import brevitas_skip_reason
from torchvalley.quant.grid import round_to_grid

brevitas = pytest.importorskip("brevitas", reason="brevitas (optional) is not installed")
qnn = pytest.importorskip("brevitas.nn", reason="brevitas (optional) is not installed")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model: nn.Module, inputs: torch.Tensor, steps: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()


def _scale(proxy) -> torch.Tensor:
    return proxy.scale().detach()


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_brevitas_model_trains_and_its_tensors_are_on_the_grid(bits: int) -> None:
    torch.manual_seed(1)
    inputs = torch.randn(32, 6)
    model = quantize_model(
        _mlp(),
        bits,
        method="brevitas",
        first_layer_bits=bits,
        last_layer_bits=bits,
        input_bits=8,
        collect_stats_steps=2,
    )
    first, relu, last = model[0], model[1], model[2]
    assert isinstance(first, qnn.QuantLinear) and isinstance(last, qnn.QuantLinear)
    assert isinstance(relu, qnn.QuantReLU)
    # One step: finite loss, gradients reach the weights and the learned weight scales.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimizer.zero_grad()
    loss = model(inputs).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    scales = {n: p for n, p in model.named_parameters() if n.endswith("scaling_impl.value")}
    assert len(scales) == 4  # input, two weight scales, the ReLU's activation scale
    for name in ("0.weight_quant.tensor_quant.scaling_impl.value", "2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    before = {n: p.detach().clone() for n, p in scales.items()}
    optimizer.step()
    _train(model, inputs, steps=3)  # past the 2 statistics steps: activation scales learned
    for name, value in scales.items():
        assert not torch.equal(before[name], value.detach()), name
    model.eval()
    # Weights: narrow signed range -(2^(b-1)-1) .. 2^(b-1)-1 (ternary at 2 bits).
    high = 2 ** (bits - 1) - 1
    for layer in (first, last):
        quant = layer.quant_weight()
        scale = quant.scale.detach()
        codes = quant.value.detach() / scale
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
        assert codes.abs().max() <= high
        zero = torch.zeros(())
        expected = round_to_grid(layer.weight.detach(), scale, zero, -high, high)
        torch.testing.assert_close(quant.value.detach(), expected, rtol=1e-6, atol=1e-7)
    # Activations after the ReLU: unsigned codes 0 .. 2^b - 1 of the learned scale.
    hidden = torch.nn.functional.linear(
        round_to_grid(inputs, _scale(first.input_quant), torch.zeros(()), -128, 127),
        first.quant_weight().value.detach(),
        first.bias.detach(),
    )
    with torch.no_grad():
        activation = relu(hidden)
    act_scale = _scale(relu.act_quant)
    expected = round_to_grid(hidden.clamp_min(0), act_scale, torch.zeros(()), 0, 2**bits - 1)
    torch.testing.assert_close(activation, expected, rtol=1e-6, atol=1e-6)
    # The whole model in eval = the float layers on the quantized tensors.
    manual = torch.nn.functional.linear(
        expected, last.quant_weight().value.detach(), last.bias.detach()
    )
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), manual, rtol=1e-5, atol=1e-6)


def test_brevitas_conv_model_converts_and_trains() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8, 2),
    )
    reference = [p.detach().clone() for p in (model[0].weight, model[4].weight)]
    model = quantize_model(model, 4, method="brevitas", collect_stats_steps=1)
    assert isinstance(model[0], qnn.QuantConv1d) and isinstance(model[2], qnn.QuantReLU)
    assert torch.equal(model[0].weight.detach(), reference[0])  # float weights copied
    assert torch.equal(model[4].weight.detach(), reference[1])
    _train(model, torch.randn(8, 1, 8), steps=2)
    assert torch.isfinite(model.eval()(torch.randn(3, 1, 8))).all()


def test_brevitas_state_dict_round_trip_after_statistics() -> None:
    inputs = torch.randn(32, 6)
    source = quantize_model(_mlp(), 3, method="brevitas", collect_stats_steps=2)
    _train(source, inputs, steps=4)
    target = quantize_model(_mlp(), 3, method="brevitas", collect_stats_steps=2)
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        assert torch.equal(source.train()(inputs), target.train()(inputs))
        assert torch.equal(source.eval()(inputs), target.eval()(inputs))


def test_brevitas_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="collect_stats_steps"):
        quantize_model(_mlp(), 4, method="brevitas", collect_stats_steps=0)
    with pytest.raises(ValueError, match="temperature"):
        quantize_model(_mlp(), 4, method="brevitas", temperature=1.0)
    with pytest.raises(ValueError, match=r"nn\.ReLU"):  # the activation after layer 0 is a Tanh
        quantize_model(
            nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), 4, method="brevitas"
        )
    with pytest.raises(ValueError, match="swaps whole layers"):
        make_quantizer("brevitas", 4, weight=True)
    model = quantize_model(_mlp(), 4, method="brevitas")
    model(torch.randn(4, 6))
    with pytest.raises(ValueError, match="brevitas"):
        export_quantized(model)


def test_missing_brevitas_gives_a_skip_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    assert brevitas_skip_reason() is None
    monkeypatch.setitem(sys.modules, "brevitas", None)  # `import brevitas` now raises
    monkeypatch.setitem(sys.modules, "brevitas.nn", None)
    reason = brevitas_skip_reason()
    assert reason is not None and "pip install brevitas" in reason
    with pytest.raises(ImportError, match="brevitas"):
        quantize_model(_mlp(), 4, method="brevitas")
