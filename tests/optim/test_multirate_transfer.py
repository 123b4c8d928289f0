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


def test_generator_overrides_reach_mnist1d_and_the_shift_task_uses_them(monkeypatch) -> None:
    from torchvalley.bench.tasks import transfer

    small = {"num_samples": 200}  # generating the full 5000 signals takes seconds
    plain = load_mnist1d(43, **small)
    shifted = load_mnist1d(43, **small, **transfer.SHIFT_ARGS)
    assert shifted.train[0].shape == plain.train[0].shape == (160, 40)
    assert not torch.equal(shifted.train[0], plain.train[0])
    assert torch.equal(load_mnist1d(43, **small).train[0], plain.train[0])  # deterministic
    with pytest.raises(ValueError, match="generator argument: 'noise'"):
        load_mnist1d(42, noise=0.1)
    calls = []
    monkeypatch.setattr(transfer, "load_mnist1d", lambda seed, **kw: calls.append((seed, kw)))
    transfer.load_shift_data()
    assert calls == [(43, transfer.SHIFT_ARGS)]


def test_shift_backbone_is_pretrained_on_all_classes_with_a_fresh_10_way_head() -> None:
    torch.manual_seed(0)
    model = pretrained_model(seed=3, channels=4, epochs=1, source="all")
    assert model.classifier.out_features == 10
    state = _pretrained_state(3, 4, 1, "all")
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    assert not torch.equal(model.classifier.weight, state["classifier.weight"])
    task = get_task("mnist1d_shift")
    assert task.info["num_classes"] == 10 and task.info["generator_args"]["shear_scale"] == 0.85
    with pytest.raises(ValueError, match="Invalid source"):
        pretrained_model(source="imagenet")
