"""Label-noise variants of the MNIST-1D and digits tasks, and a wide MNIST-1D MLP.

``<task>_noise<pct>`` for ``<task>`` in ``mnist1d_mlp``, ``mnist1d_cnn``, ``digits_mlp``,
``digits_cnn`` and ``pct`` in 20, 40, 60
    The base task with *symmetric* label noise on the **training** labels only: each training
    label is, independently with probability ``pct / 100``, replaced by one of the other
    ``C - 1`` classes drawn uniformly (so the expected fraction of wrong labels is exactly the
    rate; the convention of e.g. Patrini et al. 2017). The draws come from a generator seeded by
    ``(data_seed, pct)`` alone; the test set is the base task's, clean. The setting where Foret
    et al. (SAM, ICLR 2021, Table 4) report SAM's largest gains over SGD (CIFAR-10 ResNet-32,
    40% noise: 93.4% against 68.8%).

``mnist1d_mlp_wide``
    MNIST-1D with a 40-512-512-10 ReLU MLP (about 290k parameters for 4000 training signals):
    SGD fits the training set and overfits, the over-parameterised setting.

:func:`symmetric_noise` is the corruption itself, for use on any labels.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from torchvalley.bench.task import Task, TaskData, get_task, register_task
from torchvalley.bench.tasks import digits as _digits  # noqa: F401  (registers what is varied)
from torchvalley.bench.tasks.mnist1d import MNIST1D_CLASSES, MNIST1D_LENGTH

__all__ = ["NOISE_BASES", "NOISE_RATES", "noisy_task_name", "symmetric_noise"]

#: The tasks given noisy variants, and the rates in percent.
NOISE_BASES = ("mnist1d_mlp", "mnist1d_cnn", "digits_mlp", "digits_cnn")
NOISE_RATES = (20, 40, 60)


def symmetric_noise(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """A copy of ``labels`` where each label, with probability ``rate``, becomes one of the
    other ``num_classes - 1`` classes, uniformly; reproducible from ``seed`` alone.

    Raises:
        ValueError: ``rate`` outside ``[0, 1]`` or fewer than two classes.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"Invalid rate: {rate} (must be in [0, 1])")
    if num_classes < 2:
        raise ValueError(f"Invalid num_classes: {num_classes} (at least 2)")
    generator = torch.Generator().manual_seed(int(seed))
    flip = torch.rand(labels.shape, generator=generator) < rate
    # An offset in 1..C-1 added modulo C: uniform over the other classes.
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)
    return torch.where(flip, (labels + offset) % num_classes, labels)


def noisy_task_name(base: str, percent: int) -> str:
    """``"mnist1d_cnn", 40 -> "mnist1d_cnn_noise40"``."""
    return f"{base}_noise{percent}"


def _noisy_loader(base: Task, percent: int, num_classes: int):
    def load(data_seed: int) -> TaskData:
        data = base.load_data(data_seed)
        inputs, labels = data.train
        # The seed mixes the data seed and the rate: each (data set, rate) its own corruption.
        noisy = symmetric_noise(labels, percent / 100, num_classes, 1_000_003 * data_seed + percent)
        return dataclasses.replace(data, train=(inputs, noisy))

    return load


for _base_name in NOISE_BASES:
    _base = get_task(_base_name)
    _classes = int(_base.info["num_classes"])
    for _percent in NOISE_RATES:
        register_task(
            dataclasses.replace(
                _base,
                name=noisy_task_name(_base_name, _percent),
                description=f"{_base.description}; {_percent}% symmetric noise on train labels",
                load_data=_noisy_loader(_base, _percent, _classes),
                info={**_base.info, "label_noise": _percent / 100, "noise": "symmetric"},
                reference=(
                    f"{_base.reference}; symmetric label noise as in Foret et al., "
                    "Sharpness-Aware Minimization, ICLR 2021 (Table 4)"
                ),
            )
        )


def _mnist1d_mlp_wide() -> nn.Module:
    return nn.Sequential(
        nn.Linear(MNIST1D_LENGTH, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, MNIST1D_CLASSES),
    )


register_task(
    dataclasses.replace(
        get_task("mnist1d_mlp"),
        name="mnist1d_mlp_wide",
        description="MNIST-1D (4000/1000 signals), wide 2-hidden-layer MLP (over-parameterised)",
        model_name="MLP 40-512-512-10 ReLU",
        build_model=_mnist1d_mlp_wide,
    )
)
