"""The transfer tasks: fine-tune a pretrained 1-D CNN on unseen classes or on shifted data.

``mnist1d_transfer``
    MNIST-1D (generated locally, ``data_seed = 42``: the canonical set) split by class. The
    backbone of :class:`~torchvalley.bench.tasks.mnist1d.Mnist1dCNN` (``channels`` wide) is
    pretrained with Adam on classes 0-4; the task fine-tunes it, with a fresh 5-way head, on
    classes 5-9 (labels shifted to 0-4; about 2000 train / 500 test signals). This is the
    transfer-learning setting of multirate training (Vlaar & Leimkuhler, ICML 2022): the head
    is the fast part, the pretrained backbone the slow one.

``mnist1d_shift``
    The backbone is pretrained (Adam) on the whole canonical MNIST-1D; the task fine-tunes it,
    with a fresh 10-way head, on a shifted draw of the generator (:data:`SHIFT_ARGS`: more
    i.i.d. and correlated noise, shear and scaling; seed 43). The related-task case, where the
    pretrained features mostly carry over.

The pretraining is part of building the model: :meth:`Task.model(seed)` pretrains under that
seed (the same seed gives the same backbone) and caches the weights per seed and width.
Nothing is downloaded.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.bench.task import Task, TaskData, register_task
from torchvalley.bench.tasks._common import CLASSIFICATION
from torchvalley.bench.tasks.mnist1d import Mnist1dCNN, load_mnist1d

__all__ = [
    "PRETRAIN_CLASSES",
    "SHIFT_ARGS",
    "load_shift_data",
    "load_transfer_data",
    "pretrained_model",
    "split_by_class",
]

#: The classes the backbone is pretrained on; the task fine-tunes on the other five.
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
_DATA_SEED = 42


def split_by_class(data: TaskData, pretrain: bool) -> TaskData:
    """The pretraining classes (``pretrain=True``) or the others, labels shifted to 0..4."""
    wanted = torch.tensor(PRETRAIN_CLASSES)

    def pick(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.isin(labels, wanted) == pretrain
        shift = 0 if pretrain else len(PRETRAIN_CLASSES)
        return inputs[keep], labels[keep] - shift

    return TaskData(train=pick(*data.train), test=pick(*data.test))


def load_transfer_data(data_seed: int) -> TaskData:
    """MNIST-1D classes 5-9, labels 0-4 (the fine-tuning data)."""
    return split_by_class(load_mnist1d(data_seed), pretrain=False)


#: The shifted MNIST-1D of ``mnist1d_shift``: stronger noise, shear and scaling than the
#: canonical generator's (0.02, 0.25, 0.75, 0.4), a different draw (seed 43).
SHIFT_ARGS = {
    "iid_noise_scale": 0.03,
    "corr_noise_scale": 0.3,
    "shear_scale": 0.85,
    "scale_coeff": 0.45,
}
_SHIFT_SEED = 43


def load_shift_data(data_seed: int = _SHIFT_SEED) -> TaskData:
    """The shifted MNIST-1D (all 10 classes) that ``mnist1d_shift`` fine-tunes on."""
    return load_mnist1d(data_seed, **SHIFT_ARGS)


@functools.lru_cache(maxsize=32)
def _pretrained_state(
    seed: int, channels: int, epochs: int, source: str = "classes"
) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source == "classes":  # classes 0-4 of the canonical set
            classes = len(PRETRAIN_CLASSES)
            inputs, labels = split_by_class(load_mnist1d(_DATA_SEED), pretrain=True).train
        else:  # "all": the whole canonical set, for the shifted task
            classes = 10
            inputs, labels = load_mnist1d(_DATA_SEED).train
        model = Mnist1dCNN(channels=channels, num_classes=classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(labels))
            for start in range(0, len(labels), 100):
                batch = order[start : start + 100]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(inputs[batch]), labels[batch]).backward()
                optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pretrained_model(
    seed: int = 0, channels: int = 64, epochs: int = 15, source: str = "classes"
) -> nn.Module:
    """A :class:`Mnist1dCNN` whose backbone is pretrained and whose head is freshly initialised
    (from the global RNG, as any task model).

    ``source="classes"``: pretrained on classes 0-4 of the canonical MNIST-1D, 5-way head (for
    ``mnist1d_transfer``); ``"all"``: pretrained on the whole canonical set, 10-way head (for
    ``mnist1d_shift``).
    """
    if source not in ("classes", "all"):
        raise ValueError(f"Invalid source: {source!r} (one of 'classes', 'all')")
    classes = len(PRETRAIN_CLASSES) if source == "classes" else 10
    model = Mnist1dCNN(channels=channels, num_classes=classes)
    head = {k: v.clone() for k, v in model.classifier.state_dict().items()}  # not views
    model.load_state_dict(_pretrained_state(seed, channels, epochs, source))
    model.classifier.load_state_dict(head)
    return model


def _build() -> nn.Module:
    # Task.model seeds the global RNG: derive the pretraining seed from it, so that the
    # same task seed gives the same backbone and head.
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return pretrained_model(seed)


register_task(
    Task(
        name="mnist1d_transfer",
        description="MNIST-1D classes 5-9 (about 2000/500 signals), 1-D CNN pretrained on 0-4",
        model_name="1-D CNN 64-64-64 + BatchNorm, backbone pretrained (Adam, 15 epochs)",
        build_model=_build,
        load_data=load_transfer_data,
        **CLASSIFICATION,
        target=0.9,
        batch_size=100,
        default_epochs=10,
        default_data_seed=_DATA_SEED,
        reference=(
            "Greydanus & Kobak, MNIST-1D (ICML 2024), split by class for transfer as in Vlaar & "
            "Leimkuhler, Multirate Training of Neural Networks (ICML 2022)"
        ),
        info={"pretrain_classes": PRETRAIN_CLASSES, "num_classes": 5},
    )
)


def _build_shift() -> nn.Module:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    return pretrained_model(seed, source="all")


register_task(
    Task(
        name="mnist1d_shift",
        description="shifted MNIST-1D (more noise, shear, scaling; 4000/1000 signals), 1-D CNN "
        "pretrained on the canonical set",
        model_name="1-D CNN 64-64-64 + BatchNorm, backbone pretrained (Adam, 15 epochs)",
        build_model=_build_shift,
        load_data=load_shift_data,
        **CLASSIFICATION,
        target=0.85,
        batch_size=100,
        default_epochs=10,
        default_data_seed=_SHIFT_SEED,
        reference=(
            "Greydanus & Kobak, MNIST-1D (ICML 2024), generator arguments shifted; the related-"
            "task transfer setting of Vlaar & Leimkuhler, Multirate Training (ICML 2022)"
        ),
        info={"generator_args": SHIFT_ARGS, "num_classes": 10},
    )
)
