"""The label-noise task variants: symmetric noise on the training labels only, seeded."""

import pytest
import torch

from torchvalley.bench.tasks import get_task, list_tasks
from torchvalley.bench.tasks.label_noise import (
    NOISE_BASES,
    NOISE_RATES,
    noisy_task_name,
    symmetric_noise,
)


def test_every_variant_is_registered():
    for base in NOISE_BASES:
        for percent in NOISE_RATES:
            task = get_task(noisy_task_name(base, percent))
            assert task.info["label_noise"] == percent / 100
            assert task.model_name == get_task(base).model_name
    assert "mnist1d_mlp_wide" in list_tasks()


def test_symmetric_noise_rate_and_uniform_other_classes():
    labels = torch.arange(10).repeat(2000)  # 20000 labels, 10 classes
    noisy = symmetric_noise(labels, 0.4, 10, seed=3)
    flipped = noisy != labels
    # Binomial(20000, 0.4): std of the fraction sqrt(0.4 * 0.6 / 20000) = 0.0035; 5 std.
    assert abs(flipped.float().mean().item() - 0.4) < 5 * 0.0035
    # A flipped label is uniform over the 9 other classes: offsets 1..9 each ~1/9 of the flips.
    offsets = ((noisy - labels) % 10)[flipped]
    counts = torch.bincount(offsets, minlength=10).float()
    assert counts[0] == 0
    share = counts[1:] / flipped.sum()
    # ~8000 flips: std of each share sqrt((1/9)(8/9)/8000) = 0.0035; 5 std.
    assert (share - 1 / 9).abs().max().item() < 5 * 0.0035
    assert torch.equal(noisy, symmetric_noise(labels, 0.4, 10, seed=3))  # seeded
    assert not torch.equal(noisy, symmetric_noise(labels, 0.4, 10, seed=4))
    assert torch.equal(symmetric_noise(labels, 0.0, 10, seed=3), labels)


def test_only_training_labels_are_noisy():
    pytest.importorskip("sklearn", reason="digits needs scikit-learn")
    clean = get_task("digits_mlp").data()
    noisy = get_task("digits_mlp_noise60").data()
    assert torch.equal(noisy.train[0], clean.train[0])
    assert torch.equal(noisy.test[0], clean.test[0])
    assert torch.equal(noisy.test[1], clean.test[1])
    rate = (noisy.train[1] != clean.train[1]).float().mean().item()
    # 1437 labels at 0.6: std sqrt(0.6 * 0.4 / 1437) = 0.013; 5 std.
    assert abs(rate - 0.6) < 5 * 0.013


def test_invalid_noise_settings():
    with pytest.raises(ValueError, match="Invalid rate"):
        symmetric_noise(torch.zeros(3, dtype=torch.long), 1.5, 10, seed=0)
    with pytest.raises(ValueError, match="Invalid num_classes"):
        symmetric_noise(torch.zeros(3, dtype=torch.long), 0.5, 1, seed=0)
