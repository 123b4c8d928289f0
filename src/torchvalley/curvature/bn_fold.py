"""Eval-mode BatchNorm folded into the layer before it, while a curvature graph is built.

With ``bn_mode="eval"``, BatchNorm with running statistics ``(μ, σ²)`` is the per-channel affine
map ``x·a + c`` with ``a = γ/√(σ²+ε)`` and ``c = β − μa``, and when a convolution or linear layer
feeds it, ``BN(conv(x, W, b)) = conv(x, W·a, b·a + c)``. :class:`FoldedEvalBatchNorm` (a
``TorchFunctionMode``) evaluates ``F.batch_norm`` that way while the double-backward strategies
of :class:`~torchvalley.curvature.operator.CurvatureOperator` build their gradient graphs: the
same function of the same parameters (``W``, ``b``, ``γ``, ``β``), so every derivative is
unchanged, but the activation-sized operations of PyTorch's batch-norm graph and of its generic
double backward are gone, which makes a Hessian-vector product about half as expensive on a
conv + BatchNorm network (``benchmarks/hessian_speed.py --mode iterations``). A performance
device only: nothing else in the library depends on it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from torchvalley.curvature.function import ParameterFunction

__all__ = ["FoldedEvalBatchNorm", "graph_context"]

# Layers y = op(x, W, b) whose output channels are W's first axis and, batched, y's axis 1.
_FOLDABLE = (torch.conv1d, torch.conv2d, torch.conv3d, F.linear)


class FoldedEvalBatchNorm(TorchFunctionMode):
    """Evaluates eval-mode ``F.batch_norm`` as the per-channel affine map it is, folded into the
    convolution or linear layer that produced its input when there is one.

    With ``a = γ/√(σ² + ε)`` and ``c = β − μa``, ``BN(conv(x, W, b)) = conv(x, W·a, b·a + c)``
    (the same for ``F.linear`` with a ``(B, C)`` output) and otherwise ``BN(z) = z·a + c``: the
    same function of the same parameters (``W``, ``b``, ``γ``, ``β``), so every derivative is
    unchanged, but the activation-sized operations of PyTorch's batch-norm graph (and of its
    generic double backward) disappear. The unfolded layer still runs once in the forward pass;
    when its output feeds nothing else it is not part of the loss's graph. Only used while a
    graph is built (see :func:`graph_context`).
    """

    def __init__(self) -> None:
        super().__init__()
        # id(output) -> (output, its version counter, layer function, args, kwargs)
        self._layers: dict[int, tuple[torch.Tensor, int, Any, tuple[Any, ...], dict[str, Any]]]
        self._layers = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return self._batch_norm(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _FOLDABLE and isinstance(out, torch.Tensor):
            self._layers[id(out)] = (out, out._version, func, args, kwargs)
        return out

    def _batch_norm(
        self,
        input: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        training: bool = False,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
    ) -> torch.Tensor:
        if training or running_mean is None or running_var is None:
            return F.batch_norm(
                input, running_mean, running_var, weight, bias, training, momentum, eps
            )
        scale = torch.rsqrt(running_var + eps)
        if weight is not None:
            scale = scale * weight
        shift = -running_mean * scale
        if bias is not None:
            shift = shift + bias
        producer = self._layers.get(id(input))
        # the very tensor the layer returned, not modified in place since (e.g. ReLU(inplace))
        if producer is not None and producer[0] is input and producer[1] == input._version:
            folded = self._folded(*producer[2:], scale, shift)
            if folded is not None:
                return folded
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return input * scale.reshape(shape) + shift.reshape(shape)

    @staticmethod
    def _folded(
        layer: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> torch.Tensor | None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        inputs, weight = bound["input"], bound["weight"]
        # BatchNorm's channel axis must be the layer's output axis: batched convolutions
        # (input and weight of the same rank) and linear layers with (B, C) outputs.
        batched = inputs.dim() == weight.dim() if layer is not F.linear else inputs.dim() == 2
        if not batched or weight.shape[0] != scale.numel():
            return None
        bound["weight"] = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
        bias = bound.get("bias")
        bound["bias"] = shift if bias is None else bias * scale + shift
        return layer(**bound)


def graph_context(function: ParameterFunction) -> contextlib.AbstractContextManager[Any]:
    """The context a gradient graph of ``function`` is built in: folding in eval mode."""
    return FoldedEvalBatchNorm() if function.bn_mode == "eval" else contextlib.nullcontext()
