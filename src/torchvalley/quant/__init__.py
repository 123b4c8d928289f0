"""Quantization: Relaxed Quantization (Louizos et al., ICLR 2019) and the baselines it is
compared with, as quantizer modules and a model transform.

* :mod:`~torchvalley.quant.grid`: the uniform grid ``beta + alpha * k`` and rounding to it;
* :mod:`~torchvalley.quant.relaxed`: :class:`RelaxedQuantizer` (RQ and RQ-ST);
* :mod:`~torchvalley.quant.lsq`: LSQ-style straight-through QAT, post-training rounding,
  torch.ao fake-quantize;
* :mod:`~torchvalley.quant.convert`: :func:`quantize_model` and :func:`export_quantized`.
* :mod:`~torchvalley.quant.brevitas_qat`: ``method="brevitas"``, brevitas's quantized layers
  (QuantLinear / QuantConv / QuantReLU with learned scales) as a QAT anchor (optional).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchvalley.quant import export_quantized, quantize_model
    >>> model = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), bits=4)
    >>> _ = model(torch.randn(16, 4))  # training form: relaxed samples; initialises act. grids
    >>> exported = export_quantized(model)
    >>> x = torch.randn(3, 4)
    >>> torch.equal(exported(x), model.eval()(x))
    True
"""

from torchvalley.quant.convert import (
    METHODS,
    ExportedLayer,
    QuantizedLayer,
    export_quantized,
    make_quantizer,
    quantize_model,
    quantized_layers,
)
from torchvalley.quant.grid import code_range, round_to_grid
from torchvalley.quant.lsq import LSQQuantizer, RoundingQuantizer, TorchAOQuantizer
from torchvalley.quant.relaxed import (
    RelaxedQuantizer,
    annealed_temperature,
    cell_log_probabilities,
    relaxed_quantize,
)

__all__ = [
    "METHODS",
    "ExportedLayer",
    "LSQQuantizer",
    "QuantizedLayer",
    "RelaxedQuantizer",
    "RoundingQuantizer",
    "TorchAOQuantizer",
    "annealed_temperature",
    "cell_log_probabilities",
    "code_range",
    "export_quantized",
    "make_quantizer",
    "quantize_model",
    "quantized_layers",
    "relaxed_quantize",
    "round_to_grid",
]
