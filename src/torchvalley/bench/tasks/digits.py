"""The ``digits_mlp`` and ``digits_cnn`` tasks: scikit-learn's 8x8 digits.

``digits_mlp`` / ``digits_cnn``
    The UCI optical-digits 8x8 images as shipped with scikit-learn (``load_digits``; 1797 images,
    10 classes), pixels scaled to [0, 1], stratified 80/20 split with ``random_state = data_seed``
    (1437 train / 360 test). Models: a 64-128-10 ReLU MLP and a small 2-D CNN.

Targets and default epochs come from measured runs: Adam (lr 1e-3) and SGD (lr 0.05, momentum
0.9) reach the target within ``default_epochs``. Needs scikit-learn (the ``bench`` extra).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torchvalley.bench.task import Task, TaskData, register_task, require_extra
from torchvalley.bench.tasks._common import CLASSIFICATION

__all__ = ["DIGITS_CLASSES", "DigitsCNN", "load_digits_data"]

DIGITS_CLASSES = 10


def load_digits_data(data_seed: int) -> TaskData:
    """scikit-learn's 8x8 digits, pixels in ``[0, 1]``, stratified 80/20 split.

    Args:
        data_seed: ``random_state`` of ``train_test_split``.

    Returns:
        float32 inputs of shape ``(N, 64)`` (1437 train / 360 test) and int64 class targets.
    """
    with require_extra("sklearn", "scikit-learn", "load_digits_data"):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

    digits = load_digits()
    inputs = digits.data.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        inputs, labels, test_size=0.2, stratify=labels, random_state=int(data_seed)
    )
    return TaskData(
        train=(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=(torch.from_numpy(x_test), torch.from_numpy(y_test)),
    )


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, DIGITS_CLASSES))


class DigitsCNN(nn.Module):
    """A small 2-D CNN for 8x8 digits: conv3(16) - conv3(32) - max-pool 2 - linear(512, 10)."""

    def __init__(self, num_classes: int = DIGITS_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)`` for inputs of shape ``(B, 64)`` or ``(B, 8, 8)``."""
        features = self.features(inputs.reshape(inputs.shape[0], 1, 8, 8))
        return self.classifier(features.flatten(1))


_DIGITS_REFERENCE = (
    "UCI ML optical recognition of handwritten digits (8x8), via sklearn.datasets.load_digits"
)
_DIGITS_INFO = {"num_classes": 10, "image_size": (8, 8), "train_size": 1437, "test_size": 360}

register_task(
    Task(
        name="digits_mlp",
        description="8x8 digits (1437/360 images, 10 classes), 1-hidden-layer MLP",
        model_name="MLP 64-128-10 ReLU",
        build_model=_digits_mlp,
        load_data=load_digits_data,
        **CLASSIFICATION,
        target=0.95,
        batch_size=32,
        default_epochs=20,
        default_data_seed=0,
        reference=_DIGITS_REFERENCE,
        info=dict(_DIGITS_INFO),
    )
)

register_task(
    Task(
        name="digits_cnn",
        description="8x8 digits (1437/360 images, 10 classes), small 2-D CNN",
        model_name="2-D CNN 16-32 + max-pool",
        build_model=DigitsCNN,
        load_data=load_digits_data,
        **CLASSIFICATION,
        target=0.96,
        batch_size=32,
        default_epochs=20,
        default_data_seed=0,
        reference=_DIGITS_REFERENCE,
        info=dict(_DIGITS_INFO),
    )
)
