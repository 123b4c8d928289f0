"""The ``mnist1d_transfer`` task (bench/tasks/transfer.py) that multirate fine-tuning runs on."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mnist1d", reason="the transfer task generates MNIST-1D (mnist1d package)")

from torchvalley.bench.tasks import get_task
from torchvalley.bench.tasks.mnist1d import load_mnist1d
from torchvalley.bench.tasks.transfer import (
    _pretrained_state,
    load_transfer_data,
    pretrained_model,
    split_by_class,
)
from torchvalley.optim import Multirate


def test_split_by_class_partitions_the_data_and_shifts_labels() -> None:
    full = load_mnist1d(42)
    pretrain, finetune = split_by_class(full, True), split_by_class(full, False)
    for part in ("train", "test"):
        (x, y), (xp, yp), (xf, yf) = (
            getattr(full, part),
            getattr(pretrain, part),
            getattr(finetune, part),
        )
        assert len(yp) + len(yf) == len(y)
        assert set(yp.tolist()) == set(yf.tolist()) == {0, 1, 2, 3, 4}
        assert torch.equal(xf, x[y >= 5]) and torch.equal(yf, y[y >= 5] - 5)
        assert torch.equal(xp, x[y < 5]) and torch.equal(yp, y[y < 5])
    loaded = load_transfer_data(42)
    assert torch.equal(loaded.train[1], finetune.train[1])


def test_pretrained_backbone_is_deterministic_and_the_head_fresh() -> None:
    torch.manual_seed(0)
    a = pretrained_model(seed=3, channels=4, epochs=1)
    torch.manual_seed(0)
    b = pretrained_model(seed=3, channels=4, epochs=1)
    state = _pretrained_state(3, 4, 1)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name])
        if name.startswith("features."):
            assert torch.equal(value, state[name])  # the pretrained backbone
    assert not torch.equal(a.classifier.weight, state["classifier.weight"])  # a fresh head


def test_task_is_registered_and_multirate_picks_the_head() -> None:
    task = get_task("mnist1d_transfer")
    assert 0 < task.target < 1 and task.info["num_classes"] == 5
    model = pretrained_model(seed=0, channels=4, epochs=1)
    opt = Multirate(model.parameters(), model=model, k=5, lr=0.05, momentum=0.9)
    assert opt._fast_params() == list(model.classifier.parameters())
