"""What the built-in tasks share: accuracy metrics, the classification settings, RNG hygiene.

Every task generates or loads its data locally (nothing is ever downloaded), seeds its data
generator only from ``data_seed`` (never from, and never changing, the global RNG state) and builds
its model with PyTorch's default initialisation, so :meth:`~torchvalley.bench.task.Task.model`
controls the initial weights through its seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["CLASSIFICATION", "binary_accuracy", "classification_accuracy", "preserved_global_rngs"]


def classification_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit equals the integer class target.

    Args:
        outputs: logits of shape ``(N, C)``.
        targets: class indices of shape ``(N,)``.

    Returns:
        The accuracy in ``[0, 1]``.
    """
    predictions = outputs.detach().argmax(dim=1)
    return (predictions == targets).float().mean().item()


def binary_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of points with ``round(sigmoid(logit)) == target``.

    A logit of exactly 0 (probability 0.5, a tie of probability zero) counts as class 1.

    Args:
        outputs: logits of shape ``(N,)`` or ``(N, 1)``.
        targets: labels in ``{0, 1}`` of shape ``(N,)``.

    Returns:
        The accuracy in ``[0, 1]``.
    """
    predictions = (outputs.detach().reshape(-1) >= 0).to(targets.dtype)
    return (predictions == targets.reshape(-1)).float().mean().item()


#: What the classification tasks share: cross-entropy, accuracy, higher is better.
CLASSIFICATION = {
    "loss_fn": F.cross_entropy,
    "metric_name": "accuracy",
    "metric_fn": classification_accuracy,
    "higher_is_better": True,
}


@contextmanager
def preserved_global_rngs() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global RNG states on exit."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
