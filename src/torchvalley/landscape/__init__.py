"""Loss-landscape diagnostics: pure functions of (model, loss_fn, data).

``loss_fn(outputs, targets)`` returns a scalar mean loss; ``data`` is one ``(inputs, targets)``
batch or an iterable of batches. See :mod:`torchvalley.landscape._core` for the conventions.
"""

from torchvalley.landscape._core import ParameterFunction as ParameterFunction
