"""Turn a model into its quantized training form, and export the deterministic integer model.

:func:`quantize_model` replaces every ``nn.Linear`` / ``nn.Conv1d/2d/3d`` by a
:class:`QuantizedLayer` that quantizes the layer's weights and its *input*, i.e. the activation
after the previous layer (the first layer's input is the data: ``input_bits``). The logits after
the last layer stay in floating point. Each layer's weight bits, and the bits of the activation
after it, come from ``layer_bits[name]`` if given, else from the first/last-layer policy, else
from ``bits`` / ``activation_bits``.

:func:`export_quantized` returns a copy in which each layer holds integer weight codes (the
smallest integer dtype that fits) with its scale and offset, and rounds its input to integer
codes of the activation grid; its outputs equal the fake-quantized model's in eval mode bit for
bit (both compute ``offset + scale * code`` and then the same float operation).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.quant.grid import check_bits, round_to_codes
from torchvalley.quant.lsq import LSQQuantizer, RoundingQuantizer, TorchAOQuantizer
from torchvalley.quant.relaxed import RelaxedQuantizer

__all__ = [
    "METHODS",
    "ExportedLayer",
    "QuantizedLayer",
    "export_quantized",
    "make_quantizer",
    "quantize_model",
    "quantized_layers",
]

#: Quantization methods: relaxed quantization, its straight-through variant, LSQ-style QAT,
#: post-training rounding, torch.ao fake-quantize QAT, brevitas QAT (a layer swap, see
#: :mod:`~torchvalley.quant.brevitas_qat`; needs brevitas).
METHODS = ("rq", "rq_st", "lsq", "round", "torchao", "brevitas")

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def make_quantizer(
    method: str, bits: int, *, weight: bool, signed: bool | None = None, **options: Any
) -> nn.Module:
    """One quantizer of ``method`` (see :data:`METHODS`) for a weight or an activation."""
    if method in ("rq", "rq_st"):
        return RelaxedQuantizer(bits, signed=signed, straight_through=method == "rq_st", **options)
    if options:
        raise ValueError(f"Invalid options for method {method!r}: {sorted(options)} (RQ only)")
    if method == "lsq":
        return LSQQuantizer(bits, signed=signed)
    if method == "round":
        return RoundingQuantizer(bits, signed=signed, track="current" if weight else "running")
    if method == "torchao":
        return TorchAOQuantizer(bits, signed=weight, weight=weight)
    if method == "brevitas":
        raise ValueError(
            "Invalid method for make_quantizer: 'brevitas' swaps whole layers (brevitas QuantLinear"
            " / QuantConv / QuantReLU); use quantize_model(..., method='brevitas')"
        )
    raise ValueError(f"Invalid method: {method!r} (one of {', '.join(METHODS)})")


class QuantizedLayer(nn.Module):
    """A Linear / Conv layer whose weights and input pass through quantizers.

    Attributes:
        layer: the original layer (its float weights are the ones trained).
        weight_quantizer: quantizes ``layer.weight``.
        input_quantizer: quantizes the input (``None``: the input stays in floating point).
    """

    def __init__(
        self, layer: nn.Module, weight_quantizer: nn.Module, input_quantizer: nn.Module | None
    ) -> None:
        super().__init__()
        if not isinstance(layer, _LAYERS):
            raise TypeError(
                f"QuantizedLayer wraps Linear / Conv layers, not {type(layer).__name__}"
            )
        self.layer = layer
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``layer(input_quantizer(x))`` with the quantized weights."""
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        weight = self.weight_quantizer(self.layer.weight)
        return _apply(self.layer, x, weight)


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def _bits_pair(value: int | tuple[int, int | None], name: str) -> tuple[int, int | None]:
    if isinstance(value, tuple):
        weight_bits, activation_bits = value
        return check_bits(weight_bits, f"layer_bits[{name!r}]"), (
            None
            if activation_bits is None
            else check_bits(activation_bits, f"layer_bits[{name!r}]")
        )
    bits = check_bits(value, f"layer_bits[{name!r}]")
    return bits, bits


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_model(
    model: nn.Module,
    bits: int = 8,
    *,
    activation_bits: int | None = None,
    method: str = "rq",
    first_layer_bits: int | None = 8,
    last_layer_bits: int | None = 8,
    input_bits: int | None = 8,
    layer_bits: Mapping[str, int | tuple[int, int | None]] | None = None,
    skip: Callable[[str, nn.Module], bool] | None = None,
    **quantizer_options: Any,
) -> nn.Module:
    """Replace ``model``'s Linear / Conv layers (in place) by :class:`QuantizedLayer` s.

    Args:
        model: the float model; its weights initialise the weight grids.
        bits: weight bits of the layers between the first and the last.
        activation_bits: bits of the activation after each layer but the last (default:
            ``bits``); these are the inputs of the following layers.
        method: one of :data:`METHODS`.
        first_layer_bits, last_layer_bits: weight bits of the first / last layer (default 8, a
            common policy; ``None``: keep that layer's weights in floating point). The
            activation after the first layer uses ``activation_bits``.
        input_bits: bits of the model's input (the first layer's input); ``None``: float.
        layer_bits: per-layer override by module name: ``bits`` or ``(weight_bits,
            bits_of_the_activation_after)`` (``None``: that activation stays float).
        skip: ``(name, layer) -> bool``: layers to leave untouched.
        **quantizer_options: passed to :class:`~torchvalley.quant.relaxed.RelaxedQuantizer`
            (``temperature``, ``local_cells``, ...; RQ methods only); ``"brevitas"`` takes
            ``collect_stats_steps`` (see :func:`~torchvalley.quant.brevitas_qat.brevitas_convert`).

    Returns:
        ``model``, converted. Activation grids initialise on the first forward pass. With
        ``method="brevitas"`` the layers become brevitas layers and the activations are
        quantized at the ``nn.ReLU`` after each layer (brevitas ``QuantReLU``).

    Raises:
        ValueError: bad bits, an unknown method or layer name, options for a non-RQ method, or
            a weight range the grid cannot represent.
        ImportError: ``method="brevitas"`` without brevitas installed.
    """
    check_bits(bits)
    activation_bits = (
        bits if activation_bits is None else check_bits(activation_bits, "activation_bits")
    )
    for value, name in (
        (first_layer_bits, "first_layer_bits"),
        (last_layer_bits, "last_layer_bits"),
        (input_bits, "input_bits"),
    ):
        if value is not None:
            check_bits(value, name)
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (one of {', '.join(METHODS)})")
    layer_bits = dict(layer_bits or {})
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, _LAYERS) and not (skip is not None and skip(name, module))
    ]
    unknown = set(layer_bits) - {name for name, _ in layers}
    if unknown:
        raise ValueError(f"Invalid layer_bits: no quantizable layer named {sorted(unknown)}")
    if not layers:
        raise ValueError("Invalid model: it has no Linear / Conv layer to quantize")
    if method == "brevitas":
        return _quantize_brevitas(
            model,
            layers,
            bits,
            activation_bits,
            first_layer_bits,
            last_layer_bits,
            input_bits,
            layer_bits,
            quantizer_options,
        )
    previous_activation = input_bits
    for index, (name, layer) in enumerate(layers):
        is_first, is_last = index == 0, index == len(layers) - 1
        weight_bits, after_bits = bits, activation_bits
        if is_first:
            weight_bits = first_layer_bits
        if is_last:
            weight_bits, after_bits = last_layer_bits, None
        if name in layer_bits:
            weight_bits, after_bits = _bits_pair(layer_bits[name], name)
        if weight_bits is None:
            weight_quantizer: nn.Module = nn.Identity()
        else:
            weight_quantizer = make_quantizer(
                method, weight_bits, weight=True, signed=True, **quantizer_options
            )
            _initialize_weight_quantizer(weight_quantizer, layer.weight)
        input_quantizer = (
            None
            if previous_activation is None
            else make_quantizer(method, previous_activation, weight=False, **quantizer_options)
        )
        _set_module(model, name, QuantizedLayer(layer, weight_quantizer, input_quantizer))
        previous_activation = after_bits
    return model


def _layer_plan(
    layers, bits, activation_bits, first_layer_bits, last_layer_bits, layer_bits
) -> list[tuple[str, nn.Module, int | None, int | None]]:
    """``(name, layer, weight_bits, bits_of_the_activation_after)`` under the bits policy."""
    plan = []
    for index, (name, layer) in enumerate(layers):
        weight_bits, after_bits = bits, activation_bits
        if index == 0:
            weight_bits = first_layer_bits
        if index == len(layers) - 1:
            weight_bits, after_bits = last_layer_bits, None
        if name in layer_bits:
            weight_bits, after_bits = _bits_pair(layer_bits[name], name)
        plan.append((name, layer, weight_bits, after_bits))
    return plan


def _quantize_brevitas(
    model,
    layers,
    bits,
    activation_bits,
    first_layer_bits,
    last_layer_bits,
    input_bits,
    layer_bits,
    options,
) -> nn.Module:
    from torchvalley.quant.brevitas_qat import brevitas_convert

    unknown = set(options) - {"collect_stats_steps"}
    if unknown:
        raise ValueError(
            f"Invalid options for method 'brevitas': {sorted(unknown)} (only collect_stats_steps)"
        )
    plan = _layer_plan(layers, bits, activation_bits, first_layer_bits, last_layer_bits, layer_bits)
    return brevitas_convert(model, plan, input_bits=input_bits, **options)


def _initialize_weight_quantizer(quantizer: nn.Module, weight: torch.Tensor) -> None:
    if isinstance(quantizer, RelaxedQuantizer):
        detached = weight.detach()
        quantizer.initialize(detached.min().item(), detached.max().item())
    elif isinstance(quantizer, LSQQuantizer):
        quantizer.initialize_from(weight)


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantizedLayer]]:
    """The :class:`QuantizedLayer` s of a converted model, by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer)]


def _integer_dtype(low: int, high: int) -> torch.dtype:
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    raise ValueError(f"codes [{low}, {high}] do not fit int32")


class ExportedLayer(nn.Module):
    """A layer with integer weight codes: ``weight = offset + scale * codes``.

    Buffers: ``weight_codes`` (int8/16/32), ``weight_scale``, ``weight_offset``; the input grid
    ``input_scale``, ``input_offset`` with ``input_low`` / ``input_high`` (attributes) when the
    input is quantized. The bias stays in floating point.
    """

    def __init__(self, layer: nn.Module, weight_grid: tuple | None, input_grid: tuple | None):
        super().__init__()
        self.layer = copy.deepcopy(layer)
        weight = self.layer.weight
        del self.layer.weight
        self.register_buffer("float_weight", None)
        if weight_grid is None:
            self.register_buffer("float_weight", weight.detach().clone())
            self.weight_low = self.weight_high = None
        else:
            scale, offset, low, high = weight_grid
            codes = round_to_codes(weight.detach(), scale, offset, low, high)
            self.register_buffer("weight_codes", codes.to(_integer_dtype(low, high)))
            self.register_buffer("weight_scale", scale.detach().clone())
            self.register_buffer("weight_offset", offset.detach().clone())
            self.weight_low, self.weight_high = low, high
        self.input_low = self.input_high = None
        if input_grid is not None:
            scale, offset, low, high = input_grid
            self.register_buffer("input_scale", scale.detach().clone())
            self.register_buffer("input_offset", offset.detach().clone())
            self.input_low, self.input_high = low, high

    def weight(self) -> torch.Tensor:
        """The dequantized weights ``offset + scale * codes``."""
        if self.float_weight is not None:
            return self.float_weight
        return self.weight_offset + self.weight_scale * self.weight_codes.to(
            self.weight_scale.dtype
        )

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (as floats) of the input on its grid."""
        return round_to_codes(
            x, self.input_scale, self.input_offset, self.input_low, self.input_high
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on the dequantized input and weights."""
        if self.input_low is not None:
            x = self.input_offset + self.input_scale * self.input_codes(x)
        return _apply(self.layer, x, self.weight())


def _grid_of(
    quantizer: nn.Module | None, what: str, weight: torch.Tensor | None = None
) -> tuple | None:
    if quantizer is None or isinstance(quantizer, nn.Identity):
        return None
    if not hasattr(quantizer, "grid"):
        raise ValueError(
            f"cannot export {what}: {type(quantizer).__name__} has no uniform grid to export "
            "(export supports the rq, rq_st, lsq and round methods)"
        )
    if isinstance(quantizer, RoundingQuantizer) and quantizer.track == "current":
        quantizer._observe(weight)  # the grid of the weights as they are now
    if hasattr(quantizer, "initialized") and not bool(quantizer.initialized):
        raise ValueError(f"cannot export {what}: its grid is not initialised (run a forward first)")
    return quantizer.grid()


def export_quantized(model: nn.Module) -> nn.Module:
    """A copy of a converted model with integer weights, in eval mode (see the module doc)."""
    from torchvalley.quant.brevitas_qat import is_brevitas_module

    if any(is_brevitas_module(module) for module in model.modules()):
        raise ValueError(
            "cannot export a brevitas model with export_quantized (it exports the rq, rq_st, lsq "
            "and round methods); use brevitas's own export (e.g. brevitas.export.export_onnx_qcdq)"
        )
    exported = copy.deepcopy(model).eval()
    for name, layer in quantized_layers(exported):
        replacement = ExportedLayer(
            layer.layer,
            _grid_of(layer.weight_quantizer, f"{name}'s weights", layer.layer.weight),
            _grid_of(layer.input_quantizer, f"{name}'s input"),
        )
        _set_module(exported, name, replacement.eval())
    return exported
