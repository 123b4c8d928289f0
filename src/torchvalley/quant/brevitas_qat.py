"""brevitas as a quantization-aware-training anchor: the layer swap behind ``method="brevitas"``.

`brevitas <https://github.com/Xilinx/brevitas>`_ (an optional dependency, imported lazily) is a
PyTorch QAT library of quantized layers. :func:`brevitas_convert` turns a float model into its
brevitas training form with the same placement of quantizers as the other methods of
:func:`~torchvalley.quant.convert.quantize_model`:

* every Linear / Conv1d / Conv2d / Conv3d becomes ``brevitas.nn.QuantLinear`` /
  ``QuantConv1d`` / ``QuantConv2d`` / ``QuantConv3d`` (same shapes, weights and bias copied; bias
  and outputs in floating point). Weights: ``brevitas.quant.Int8WeightPerTensorFloat`` with
  ``bit_width`` set to the layer's bits and ``scaling_impl_type = PARAMETER_FROM_STATS``, i.e. one
  per-tensor scale initialised on the first forward from ``max|w| / (2^(b-1) - 1)`` and then
  *learned* (straight-through rounding, the gradient reaches the scale through the clamp and the
  rescaling). brevitas's weight quantizers are narrow-range: codes ``-(2^(b-1) - 1) ..
  2^(b-1) - 1``, so 2-bit weights are ternary ``{-1, 0, 1}`` times the scale and 3-bit weights
  have 7 levels (the ``rq`` / ``lsq`` grids use ``-2^(b-1) .. 2^(b-1) - 1``: 4 and 8 levels);
* the first layer's input (the data): ``input_quant = Int8ActPerTensorFloat`` (signed, codes
  ``-2^(b-1) .. 2^(b-1) - 1``) at ``input_bits``;
* the activation after a layer is quantized where brevitas puts it, at the ``nn.ReLU`` that
  follows the layer (before the next one): it becomes ``brevitas.nn.QuantReLU`` with
  ``Uint8ActPerTensorFloat`` at the activation bits (unsigned, codes ``0 .. 2^b - 1``). Both
  activation quantizers take their scale from the 99.999th percentile of ``|x|``, averaged over
  the first ``collect_stats_steps`` training forwards (brevitas's default is 300; 30 here, so
  that the scale is a learned parameter for most of a short run), then learn it.

A model whose quantized activation is not followed by an ``nn.ReLU`` module (a functional
``relu``, another activation, a ReLU module reused in two places) is refused with a
``ValueError`` rather than left partly in floating point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BREVITAS_QUANTIZERS", "brevitas_convert", "brevitas_skip_reason", "is_brevitas_module"]

#: The brevitas quantizers used, by role (see the module docstring for the overrides).
BREVITAS_QUANTIZERS = {
    "weight": "brevitas.quant.Int8WeightPerTensorFloat (bit_width=b, PARAMETER_FROM_STATS)",
    "input": "brevitas.quant.Int8ActPerTensorFloat (bit_width=input_bits)",
    "activation": "brevitas.quant.Uint8ActPerTensorFloat (bit_width=b) in brevitas.nn.QuantReLU",
}

#: Training forwards over which the activation scales average their statistics before they
#: become learned parameters.
COLLECT_STATS_STEPS = 30


def brevitas_skip_reason() -> str | None:
    """``None`` if brevitas imports, else why the ``brevitas`` method cannot run."""
    try:
        import brevitas.nn
        import brevitas.quant  # noqa: F401
    except ImportError as error:
        return f"brevitas is not installed ({error}); pip install brevitas"
    return None


def is_brevitas_module(module: nn.Module) -> bool:
    """Whether ``module`` is a brevitas layer (``brevitas.nn``)."""
    return type(module).__module__.startswith("brevitas.")


def _require_brevitas() -> None:
    reason = brevitas_skip_reason()
    if reason is not None:
        raise ImportError(f"method 'brevitas' needs brevitas: {reason}")


def _weight_quant(bits: int):
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Int8WeightPerTensorFloat

    return Int8WeightPerTensorFloat.let(
        bit_width=bits, scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS
    )


def _act_quant(bits: int, *, signed: bool, collect_stats_steps: int):
    from brevitas.quant import Int8ActPerTensorFloat, Uint8ActPerTensorFloat

    base = Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat
    return base.let(bit_width=bits, collect_stats_steps=collect_stats_steps)


def _brevitas_layer(
    layer: nn.Module, weight_bits: int | None, input_bits: int | None, collect_stats_steps: int
) -> nn.Module:
    from brevitas import nn as qnn

    options = {
        "bias": layer.bias is not None,
        "weight_quant": None if weight_bits is None else _weight_quant(weight_bits),
        "input_quant": None
        if input_bits is None
        else _act_quant(input_bits, signed=True, collect_stats_steps=collect_stats_steps),
        "return_quant_tensor": False,
        "device": layer.weight.device,
        "dtype": layer.weight.dtype,
    }
    if isinstance(layer, nn.Linear):
        new = qnn.QuantLinear(layer.in_features, layer.out_features, **options)
    else:
        kind = {nn.Conv1d: qnn.QuantConv1d, nn.Conv2d: qnn.QuantConv2d, nn.Conv3d: qnn.QuantConv3d}
        new = kind[type(layer)](
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            **options,
        )
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new.train(layer.training)
    return new


def brevitas_convert(
    model: nn.Module,
    plan: Sequence[tuple[str, nn.Module, int | None, int | None]],
    *,
    input_bits: int | None,
    collect_stats_steps: int = COLLECT_STATS_STEPS,
) -> nn.Module:
    """Swap ``model``'s layers and ReLUs for brevitas's (in place; see the module docstring).

    Args:
        model: the float model.
        plan: ``(name, layer, weight_bits, bits_of_the_activation_after)`` for the layers to
            quantize, in module order (``None``: that tensor stays in floating point).
        input_bits: bits of the first layer's input (``None``: float).
        collect_stats_steps: training forwards of statistics before an activation scale is
            learned (``>= 1``).

    Raises:
        ImportError: brevitas is not installed.
        ValueError: a quantized activation without an ``nn.ReLU`` module after its layer, or
            ``collect_stats_steps < 1``.
    """
    from brevitas import nn as qnn

    from torchvalley.quant.convert import _LAYERS, _set_module

    _require_brevitas()
    if int(collect_stats_steps) < 1:
        raise ValueError(f"Invalid collect_stats_steps: {collect_stats_steps} (must be >= 1)")
    bits_of = {name: (weight_bits, after) for name, _, weight_bits, after in plan}
    order = [name for name, _, _, _ in plan]
    # The ReLU module that follows each quantized layer, in module order.
    relu_after: dict[str, tuple[str, nn.Module]] = {}
    current = None
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS) and name in bits_of:
            current = name
        elif type(module) is nn.ReLU and current is not None and current not in relu_after:
            relu_after[current] = (name, module)
    for index, name in enumerate(order):
        after = bits_of[name][1]
        if after is not None and name not in relu_after:
            raise ValueError(
                f"Invalid model for method 'brevitas': the activation after layer {name!r} is "
                "quantized at an nn.ReLU module (brevitas QuantReLU), but none follows it before "
                f"the next layer{'' if index + 1 == len(order) else f' {order[index + 1]!r}'}"
            )
    for index, (name, layer, weight_bits, after) in enumerate(plan):
        _set_module(
            model,
            name,
            _brevitas_layer(
                layer, weight_bits, input_bits if index == 0 else None, int(collect_stats_steps)
            ),
        )
        if after is not None:
            relu_name, relu = relu_after[name]
            quant_relu = qnn.QuantReLU(
                act_quant=_act_quant(
                    after, signed=False, collect_stats_steps=int(collect_stats_steps)
                ),
                return_quant_tensor=False,
            )
            quant_relu.train(relu.training)
            _set_module(model, relu_name, quant_relu)
    return model
