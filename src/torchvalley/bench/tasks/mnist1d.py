"""The ``mnist1d_mlp`` and ``mnist1d_cnn`` tasks: MNIST-1D, generated locally.

``mnist1d_mlp`` / ``mnist1d_cnn``
    MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024;
    https://github.com/greydanus/mnist1d): 10-class classification of 40-sample 1-D signals,
    4000 train / 1000 test. The data are *generated* with ``mnist1d.data.make_dataset`` using the
    package's default arguments and ``seed = data_seed``; ``data_seed = 42`` (the default) is the
    canonical data set. Models: a 40-100-100-10 ReLU MLP and a small 1-D CNN with BatchNorm.

Targets and default epochs come from measured runs: Adam (lr 1e-3) and SGD (lr 0.05, momentum
0.9) reach the target within ``default_epochs``.
"""

from __future__ import annotations

import torch
from torch import nn

from torchvalley.bench.task import Task, TaskData, register_task, require_extra
from torchvalley.bench.tasks._common import CLASSIFICATION, preserved_global_rngs

__all__ = ["MNIST1D_CLASSES", "MNIST1D_LENGTH", "Mnist1dCNN", "load_mnist1d"]

MNIST1D_LENGTH = 40
MNIST1D_CLASSES = 10


def load_mnist1d(data_seed: int, **generator_args: float) -> TaskData:
    """Generate MNIST-1D locally: 4000 train / 1000 test signals of length 40, 10 classes.

    Uses ``mnist1d.data.make_dataset`` with the package's default arguments and
    ``seed = data_seed`` (42 gives the canonical data set). ``make_dataset`` reseeds the global
    ``random`` and ``numpy.random`` generators; their states (and torch's) are restored afterwards.

    Args:
        data_seed: seed of the generator.
        generator_args: overrides of ``mnist1d.data.get_dataset_args()`` (e.g.
            ``iid_noise_scale=0.05``: a shifted distribution); unknown names raise ``ValueError``.

    Returns:
        float32 inputs of shape ``(N, 40)`` and int64 class targets.
    """
    with require_extra("mnist1d", "mnist1d", "load_mnist1d"):
        from mnist1d.data import get_dataset_args, make_dataset  # slow import (matplotlib)

    args = get_dataset_args()
    args.seed = int(data_seed)
    for name, value in generator_args.items():
        if name not in vars(args) or name in ("seed", "url"):
            raise ValueError(f"Invalid MNIST-1D generator argument: {name!r}")
        setattr(args, name, value)
    with preserved_global_rngs():
        dataset = make_dataset(args)
    return TaskData(
        train=(
            torch.as_tensor(dataset["x"], dtype=torch.float32),
            torch.as_tensor(dataset["y"], dtype=torch.int64),
        ),
        test=(
            torch.as_tensor(dataset["x_test"], dtype=torch.float32),
            torch.as_tensor(dataset["y_test"], dtype=torch.int64),
        ),
    )


def _mnist1d_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(MNIST1D_LENGTH, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, MNIST1D_CLASSES),
    )


class Mnist1dCNN(nn.Module):
    """A small 1-D CNN with BatchNorm for MNIST-1D: 3 conv layers of 32 channels + linear.

    ``(B, 40) -> (B, 1, 40) -> conv5 (40) -> conv3/2 (20) -> conv3/2 (10) -> linear(320, 10)``,
    each convolution followed by BatchNorm and ReLU.
    """

    def __init__(self, channels: int = 32, num_classes: int = MNIST1D_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=5, padding=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(channels * (MNIST1D_LENGTH // 4), num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)`` for signals of shape ``(B, 40)``."""
        features = self.features(inputs.reshape(inputs.shape[0], 1, -1))
        return self.classifier(features.flatten(1))


_MNIST1D_REFERENCE = (
    "Greydanus & Kobak, Scaling down deep learning with MNIST-1D, ICML 2024; "
    "https://github.com/greydanus/mnist1d (generated locally with make_dataset)"
)
_MNIST1D_INFO = {"num_classes": 10, "input_length": 40, "train_size": 4000, "test_size": 1000}

register_task(
    Task(
        name="mnist1d_mlp",
        description="MNIST-1D (4000/1000 signals of length 40, 10 classes), 2-hidden-layer MLP",
        model_name="MLP 40-100-100-10 ReLU",
        build_model=_mnist1d_mlp,
        load_data=load_mnist1d,
        **CLASSIFICATION,
        target=0.58,
        batch_size=100,
        default_epochs=50,
        default_data_seed=42,
        reference=_MNIST1D_REFERENCE,
        info=dict(_MNIST1D_INFO),
    )
)

register_task(
    Task(
        name="mnist1d_cnn",
        description="MNIST-1D (4000/1000 signals of length 40, 10 classes), small 1-D CNN",
        model_name="1-D CNN 32-32-32 + BatchNorm",
        build_model=Mnist1dCNN,
        load_data=load_mnist1d,
        **CLASSIFICATION,
        target=0.9,
        batch_size=100,
        default_epochs=20,
        default_data_seed=42,
        reference=_MNIST1D_REFERENCE,
        info=dict(_MNIST1D_INFO),
    )
)
