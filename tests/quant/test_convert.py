"""quantize_model / export_quantized, and the baseline quantizers (LSQ, rounding, torch.ao)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchvalley.quant import (
    METHODS,
    ExportedLayer,
    LSQQuantizer,
    QuantizedLayer,
    RelaxedQuantizer,
    RoundingQuantizer,
    export_quantized,
    quantize_model,
    quantized_layers,
    round_to_grid,
)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv1d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 + 4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x[:, None, :8]))
        b = torch.relu(self.conv2(x[:, None, :16].reshape(-1, 1, 4, 4)))
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], 1))


def _train_a_little(model: nn.Module, inputs: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()


EXPORTABLE = ("rq", "rq_st", "lsq", "round")


@pytest.mark.parametrize("method", EXPORTABLE)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_export_equals_fake_quantized_eval_model(method: str, bits: int) -> None:
    model = quantize_model(_mlp(), bits, method=method, first_layer_bits=bits)
    inputs = torch.randn(64, 6)
    _train_a_little(model, inputs)
    exported = export_quantized(model)
    test_inputs = torch.randn(200, 6) * 1.5
    with torch.no_grad():
        assert torch.equal(exported(test_inputs), model.eval()(test_inputs))
    layers = [m for m in exported.modules() if isinstance(m, ExportedLayer)]
    assert len(layers) == 3
    for layer in layers:
        assert layer.weight_codes.dtype == (torch.int8 if bits <= 8 else torch.int16)
        assert layer.weight_low <= int(layer.weight_codes.min())
        assert int(layer.weight_codes.max()) <= layer.weight_high
    # the middle layer's weights are a bits-bit grid
    assert layers[1].weight_high - layers[1].weight_low + 1 == 2**bits


def test_export_conv_layers_and_16_bits() -> None:
    model = quantize_model(_ConvNet(), 12, method="rq", last_layer_bits=16)
    inputs = torch.randn(32, 16)
    _train_a_little(model, inputs)
    exported = export_quantized(model)
    with torch.no_grad():
        assert torch.equal(exported(inputs), model.eval()(inputs))
    assert exported.head.weight_codes.dtype == torch.int16


def test_export_refuses_torchao_and_uninitialised_grids() -> None:
    model = quantize_model(_mlp(), 4, method="torchao")
    model(torch.randn(8, 6))
    with pytest.raises(ValueError, match="no uniform grid"):
        export_quantized(model)
    fresh = quantize_model(_mlp(), 4, method="rq")
    with pytest.raises(ValueError, match="not initialised"):
        export_quantized(fresh)


def test_layer_policy() -> None:
    model = quantize_model(
        _mlp(),
        3,
        activation_bits=5,
        first_layer_bits=8,
        last_layer_bits=None,
        input_bits=None,
        layer_bits={"2": (6, 7)},
    )
    layers = dict(quantized_layers(model))
    assert list(layers) == ["0", "2", "4"]
    assert layers["0"].weight_quantizer.bits == 8 and layers["0"].input_quantizer is None
    assert layers["2"].weight_quantizer.bits == 6 and layers["2"].input_quantizer.bits == 5
    assert isinstance(layers["4"].weight_quantizer, nn.Identity)  # last layer float
    assert layers["4"].input_quantizer.bits == 7  # the activation after layer "2"
    skipped = quantize_model(_mlp(), 4, skip=lambda name, layer: name == "4")
    assert isinstance(skipped[4], nn.Linear)


def test_quantized_forward_equals_manual_computation() -> None:
    # Oracle: eval-mode output = float layers applied to rounded inputs and rounded weights.
    float_model = _mlp()
    model = quantize_model(_mlp(), 4, method="lsq", first_layer_bits=4, last_layer_bits=4)
    inputs = torch.randn(10, 6)
    model(inputs)
    model.eval()
    x = inputs
    for index, layer in enumerate(float_model):
        if isinstance(layer, nn.Linear):
            wrapped = model[index]
            x = round_to_grid(x, *wrapped.input_quantizer.grid())
            weight = round_to_grid(layer.weight, *wrapped.weight_quantizer.grid())
            x = nn.functional.linear(x, weight, layer.bias)
        else:
            x = layer(x)
    with torch.no_grad():
        assert torch.equal(model(inputs), x)


# brevitas's activation scales average statistics for their first training forwards and a loaded
# state ends that phase, so its round trip is tested after it (tests/quant/test_brevitas.py).
@pytest.mark.parametrize("method", [m for m in METHODS if m != "brevitas"])
def test_model_state_dict_round_trip(method: str) -> None:
    source = quantize_model(_mlp(), 3, method=method)
    inputs = torch.randn(32, 6)
    _train_a_little(source, inputs)
    target = quantize_model(_mlp(), 3, method=method)
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        source.train(), target.train()
        torch.manual_seed(5)
        first = source(inputs)
        torch.manual_seed(5)
        assert torch.equal(first, target(inputs))
        assert torch.equal(source.eval()(inputs), target.eval()(inputs))


def test_lsq_forward_and_scale_gradient() -> None:
    # LSQ (Esser et al. 2020): forward s * round(clamp(x/s, Qn, Qp)); d x_hat / d s =
    # round(x/s) - x/s inside the range, Qn or Qp outside, times g = 1/sqrt(N Qp); d/dx = 1
    # inside, 0 outside.
    quantizer = LSQQuantizer(3, signed=True)
    x = torch.tensor([-2.0, -0.33, 0.1, 0.26, 0.74, 3.0], requires_grad=True)
    quantizer(x.detach())  # initialise
    with torch.no_grad():
        quantizer.scale.fill_(0.2)
    out = quantizer(x)
    assert torch.equal(out.detach(), round_to_grid(x.detach(), *quantizer.grid()))
    out.sum().backward()
    position = x.detach() / 0.2
    inside = (position >= -4) & (position <= 3)
    expected = torch.where(inside, torch.round(position) - position, position.clamp(-4, 3))
    g = 1 / math.sqrt(6 * 3)
    torch.testing.assert_close(quantizer.scale.grad, expected.sum() * g)
    torch.testing.assert_close(x.grad, inside.float())


def test_rounding_quantizer_is_post_training_rounding() -> None:
    quantizer = RoundingQuantizer(4, track="running")
    x = torch.rand(100) * 3
    assert torch.equal(quantizer(x), x)  # training: identity, range recorded
    quantizer(torch.rand(10))
    quantizer.eval()
    scale, offset, low, high = quantizer.grid()
    assert (low, high) == (0, 15)
    torch.testing.assert_close(scale, x.max() / 15)
    assert torch.equal(quantizer(x), round_to_grid(x, scale, offset, low, high))
    with pytest.raises(RuntimeError, match="seen no values"):
        RoundingQuantizer(4).eval().grid()


def test_torchao_quantizer_supported_bits() -> None:
    model = quantize_model(_mlp(), 2, method="torchao")
    model(torch.randn(16, 6)).sum().backward()
    model.eval()
    out = model(torch.randn(4, 6))
    assert out.shape == (4, 3)
    with pytest.raises(ValueError, match="up to 8"):
        quantize_model(_mlp(), 9, method="torchao")


def test_quantizer_kinds_per_method() -> None:
    kinds = {
        "rq": RelaxedQuantizer,
        "rq_st": RelaxedQuantizer,
        "lsq": LSQQuantizer,
        "round": RoundingQuantizer,
    }
    for method, kind in kinds.items():
        layer = quantize_model(_mlp(), 4, method=method)[2]
        assert isinstance(layer, QuantizedLayer)
        assert isinstance(layer.weight_quantizer, kind)
    assert quantize_model(_mlp(), 4, method="rq_st")[2].weight_quantizer.straight_through


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bits"):
        quantize_model(_mlp(), 0)
    with pytest.raises(ValueError, match="activation_bits"):
        quantize_model(_mlp(), 4, activation_bits=17)
    with pytest.raises(ValueError, match="first_layer_bits"):
        quantize_model(_mlp(), 4, first_layer_bits=0)
    with pytest.raises(ValueError, match="method"):
        quantize_model(_mlp(), 4, method="dorefa")
    with pytest.raises(ValueError, match="layer_bits"):
        quantize_model(_mlp(), 4, layer_bits={"9": 4})
    with pytest.raises(ValueError, match="layer_bits"):
        quantize_model(_mlp(), 4, layer_bits={"2": 20})
    with pytest.raises(ValueError, match="RQ only"):
        quantize_model(_mlp(), 4, method="lsq", temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        quantize_model(_mlp(), 4, temperature=0.0)
    with pytest.raises(ValueError, match="no Linear"):
        quantize_model(nn.Sequential(nn.ReLU()), 4)
