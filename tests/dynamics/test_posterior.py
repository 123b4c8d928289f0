"""Tests for torchvalley.dynamics.posterior: sample collection, BMA and UQ metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torch import nn

from torchvalley.dynamics.posterior import (
    SampleCollector,
    accuracy,
    bayesian_model_average,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    uq_metrics,
)

# ------------------------------------------------------------------------------------------
# Metrics: hand-computed values

PROBS3 = torch.tensor(
    [[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.25, 0.25, 0.5]], dtype=torch.float64
)
TARGETS3 = torch.tensor([0, 2, 2, 1])


def test_nll_hand_computed() -> None:
    expected = -(math.log(0.7) + math.log(0.4) + math.log(0.4) + math.log(0.25)) / 4
    assert negative_log_likelihood(PROBS3, TARGETS3) == pytest.approx(expected, rel=1e-12)


def test_accuracy_hand_computed() -> None:
    # predictions: 0, 1, 2, 2 -> correct, wrong, correct, wrong
    assert accuracy(PROBS3, TARGETS3) == 0.5


def test_brier_hand_computed() -> None:
    rows = [
        0.3**2 + 0.2**2 + 0.1**2,
        0.1**2 + 0.5**2 + 0.6**2,
        0.3**2 + 0.3**2 + 0.6**2,
        0.25**2 + 0.75**2 + 0.5**2,
    ]
    assert brier_score(PROBS3, TARGETS3) == pytest.approx(sum(rows) / 4, rel=1e-12)


def test_binary_hand_computed() -> None:
    p = torch.tensor([0.9, 0.2, 0.6, 0.4])
    y = torch.tensor([1, 0, 0, 1])
    assert negative_log_likelihood(p, y) == pytest.approx(
        -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4, rel=1e-6
    )
    assert accuracy(p, y) == 0.5
    assert brier_score(p, y) == pytest.approx((0.01 + 0.04 + 0.36 + 0.36) / 4, rel=1e-6)
    # binary Brier is half the two-column multi-class Brier
    p2 = torch.stack([1 - p, p], dim=1).double()
    assert brier_score(p, y) == pytest.approx(brier_score(p2, y) / 2, rel=1e-6)
    assert negative_log_likelihood(p, y) == pytest.approx(negative_log_likelihood(p2, y), rel=1e-6)


def test_nll_clamped() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1, 1])
    assert negative_log_likelihood(p, y) == pytest.approx(-math.log(1e-12) / 2, rel=1e-9)


# ------------------------------------------------------------------------------------------
# Metrics: against scikit-learn


def test_metrics_match_sklearn_multiclass() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 5, generator=gen, dtype=torch.float64), dim=1)
    y = torch.randint(0, 5, (200,), generator=gen)
    assert negative_log_likelihood(probs, y) == pytest.approx(
        log_loss(y.numpy(), probs.numpy(), labels=list(range(5))), rel=1e-10
    )
    assert accuracy(probs, y) == pytest.approx(
        accuracy_score(y.numpy(), probs.argmax(1).numpy()), abs=0
    )
    onehot = np.eye(5)[y.numpy()]
    assert brier_score(probs, y) == pytest.approx(
        float(((probs.numpy() - onehot) ** 2).sum(1).mean()), rel=1e-12
    )


def test_metrics_match_sklearn_binary() -> None:
    gen = torch.Generator().manual_seed(1)
    p = torch.rand(300, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    y = torch.randint(0, 2, (300,), generator=gen)
    pn, yn = p.numpy(), y.numpy()
    assert negative_log_likelihood(p, y) == pytest.approx(log_loss(yn, pn), rel=1e-10)
    assert brier_score(p, y) == pytest.approx(brier_score_loss(yn, pn), rel=1e-10)
    assert accuracy(p, y) == pytest.approx(accuracy_score(yn, (pn > 0.5).astype(int)), abs=0)
    # float targets 0./1. are accepted
    assert accuracy(p, y.double()) == accuracy(p, y)


def test_uq_metrics_bundle() -> None:
    out = uq_metrics(PROBS3, TARGETS3, n_bins=5)
    assert set(out) == {"nll", "accuracy", "ece", "brier"}
    assert out["nll"] == negative_log_likelihood(PROBS3, TARGETS3)
    assert out["accuracy"] == accuracy(PROBS3, TARGETS3)
    assert out["ece"] == expected_calibration_error(PROBS3, TARGETS3, n_bins=5)
    assert out["brier"] == brier_score(PROBS3, TARGETS3)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize(
    ("probs", "targets"),
    [
        (torch.ones(3, 1), torch.zeros(3, dtype=torch.long)),  # (n, 1) is ambiguous
        (torch.tensor([[0.5, 0.6]]), torch.tensor([0])),  # rows must sum to 1
        (torch.tensor([0.5, 1.5]), torch.tensor([0, 1])),  # outside [0, 1]
        (torch.tensor([0.5, 0.5]), torch.tensor([0, 2])),  # label out of range
        (torch.tensor([0.5, 0.5]), torch.tensor([0])),  # shape mismatch
        (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 1.0])),  # non-integer labels
        (torch.tensor([1, 0]), torch.tensor([0, 1])),  # integer probs
    ],
)
def test_metric_validation(probs: torch.Tensor, targets: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        uq_metrics(probs, targets)


def test_ece_rejects_bad_bins() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(PROBS3, TARGETS3, n_bins=0)


# ------------------------------------------------------------------------------------------
# ECE


def test_ece_two_bin_hand_computed() -> None:
    probs = torch.tensor(
        [[0.4, 0.3, 0.3], [0.45, 0.35, 0.2], [0.8, 0.1, 0.1], [0.05, 0.9, 0.05]],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 1, 0, 1])
    # bin (0, .5]: confs .4, .45; one correct -> |0.5 - 0.425| = 0.075, weight 1/2
    # bin (.5, 1]: confs .8, .9; both correct -> |1 - 0.85| = 0.15, weight 1/2
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.1125, abs=1e-12)


def test_ece_binary_uses_max_confidence() -> None:
    p = torch.tensor([0.2, 0.9], dtype=torch.float64)  # confidences 0.8 (pred 0), 0.9 (pred 1)
    y = torch.tensor([0, 0])  # first correct, second wrong
    # one bin: acc 0.5, mean conf 0.85
    assert expected_calibration_error(p, y, n_bins=1) == pytest.approx(0.35, abs=1e-12)
    # many bins: |1 - 0.8| / 2 + |0 - 0.9| / 2
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.55, abs=1e-12)


def _calibrated_tolerance(n: int, n_bins: int) -> float:
    # Under calibration acc_b - conf_b is a mean of n_b independent zero-mean terms with variance
    # <= 1/4, so E|.| <= 1/(2 sqrt(n_b)) and E[ECE] <= Σ_b sqrt(n_b)/(2n) <= sqrt(n_bins/n)/2
    # (Cauchy-Schwarz). Allow 3x that bound.
    return 3 * 0.5 * math.sqrt(n_bins / n)


def test_ece_perfectly_calibrated_binary() -> None:
    n, n_bins = 20_000, 15
    gen = torch.Generator().manual_seed(123)
    p = torch.rand(n, generator=gen, dtype=torch.float64)
    y = torch.bernoulli(p, generator=gen).long()
    assert expected_calibration_error(p, y, n_bins=n_bins) < _calibrated_tolerance(n, n_bins)


def test_ece_perfectly_calibrated_multiclass() -> None:
    n, n_bins = 20_000, 15
    gen = torch.Generator().manual_seed(7)
    probs = torch.softmax(2.0 * torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=1)
    y = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    assert expected_calibration_error(probs, y, n_bins=n_bins) < _calibrated_tolerance(n, n_bins)


def test_ece_overconfident_exact() -> None:
    # confidence 0.9 on every example, exactly 60% correct -> ECE = |0.6 - 0.9| = 0.3
    n = 1000
    probs = torch.tensor([[0.9, 0.05, 0.05]], dtype=torch.float64).repeat(n, 1)
    y = torch.zeros(n, dtype=torch.long)
    y[600:] = 1
    assert expected_calibration_error(probs, y) == pytest.approx(0.3, abs=1e-12)


def test_ece_overconfident_sampled() -> None:
    # predictor states 0.95 but is right with probability 0.7: ECE = 0.25 up to sampling error
    n = 10_000
    gen = torch.Generator().manual_seed(5)
    probs = torch.full((n,), 0.95, dtype=torch.float64)
    y = torch.bernoulli(torch.full((n,), 0.7, dtype=torch.float64), generator=gen).long()
    tol = 4 * math.sqrt(0.7 * 0.3 / n)
    assert expected_calibration_error(probs, y) == pytest.approx(0.25, abs=tol)


# ------------------------------------------------------------------------------------------
# SampleCollector


def _set_step(model: nn.Linear, step: int) -> None:
    with torch.no_grad():
        model.weight.fill_(float(step))
        model.bias.fill_(-float(step))


def test_collector_burn_in_and_thinning() -> None:
    model = nn.Linear(2, 1)
    col = SampleCollector(model, burn_in=5, thin=3)
    stored = []
    for step in range(20):
        _set_step(model, step)
        if col(step):
            stored.append(step)
    assert stored == [5, 8, 11, 14, 17] == col.steps
    assert len(col) == 5
    for step, sample in zip(col.steps, col.samples, strict=True):
        assert set(sample) == {"weight", "bias"}
        assert torch.all(sample["weight"] == step)
        assert torch.all(sample["bias"] == -step)


def test_collector_thin_one_no_burn_in() -> None:
    model = nn.Linear(1, 1)
    col = SampleCollector(model, burn_in=0, thin=1)
    for step in range(4):
        col.collect(step)
    assert col.steps == [0, 1, 2, 3]


def test_collector_max_samples_keeps_most_recent() -> None:
    model = nn.Linear(2, 1)
    col = SampleCollector(model, burn_in=5, thin=3, max_samples=2)
    for step in range(20):
        _set_step(model, step)
        col(step)
    assert col.steps == [14, 17]
    assert [float(s["weight"][0, 0]) for s in col.samples] == [14.0, 17.0]


def test_collector_stores_detached_copies_with_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    col = SampleCollector(model, burn_in=0, thin=1)
    col(0)
    sample = col.samples[0]
    assert "1.running_mean" in sample and "1.num_batches_tracked" in sample
    before = {k: v.clone() for k, v in sample.items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(1.0)
    for k, v in sample.items():
        assert torch.equal(v, before[k])
        assert not v.requires_grad
        assert v.device == torch.device("cpu")


def test_collector_state_dict_round_trip() -> None:
    model = nn.Linear(2, 1)
    col = SampleCollector(model, burn_in=2, thin=2, max_samples=3)
    for step in range(9):
        _set_step(model, step)
        col(step)
    state = col.state_dict()
    other = SampleCollector(model, burn_in=2, thin=2, max_samples=3)
    other.load_state_dict(state)
    assert other.steps == col.steps == [4, 6, 8]
    assert other.last_step == 8
    for a, b in zip(other.samples, col.samples, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # continues where it stopped
    _set_step(model, 10)
    assert not other(9)
    assert other(10)
    assert other.steps == [6, 8, 10]
    with pytest.raises(ValueError, match="strictly increasing"):
        other(10)
    mismatched = SampleCollector(model, burn_in=2, thin=3, max_samples=3)
    with pytest.raises(ValueError, match="thin"):
        mismatched.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"burn_in": 2})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"burn_in": -1, "thin": 1},
        {"burn_in": 0, "thin": 0},
        {"burn_in": 0, "thin": 1, "max_samples": 0},
        {"burn_in": 1.5, "thin": 1},
        {"burn_in": 0, "thin": True},
    ],
)
def test_collector_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SampleCollector(nn.Linear(1, 1), **kwargs)


def test_collector_rejects_bad_steps() -> None:
    col = SampleCollector(nn.Linear(1, 1), burn_in=0, thin=1)
    with pytest.raises(ValueError):
        col(-1)
    col(3)
    with pytest.raises(ValueError):
        col(2)
    with pytest.raises(ValueError):
        SampleCollector("not a module", burn_in=0, thin=1)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Bayesian model averaging


def _linear(weight: list[list[float]], bias: list[float]) -> dict[str, torch.Tensor]:
    return {
        "weight": torch.tensor(weight, dtype=torch.float64),
        "bias": torch.tensor(bias, dtype=torch.float64),
    }


S1 = _linear([[1.0, -2.0], [0.5, 0.0], [0.0, 1.5]], [0.1, 0.0, -0.3])
S2 = _linear([[-1.0, 0.5], [2.0, 1.0], [0.3, -0.7]], [0.0, 0.4, 0.2])
X = torch.tensor([[0.5, 1.0], [-1.0, 2.0], [3.0, -0.5], [0.0, 0.0], [1.0, 1.0]]).double()


def _template(out_features: int = 3) -> nn.Linear:
    return nn.Linear(2, out_features).double()


def test_bma_classification_equals_mean_of_softmaxes() -> None:
    probs = bayesian_model_average(_template(), [S1, S2], X, batch_size=2)
    expected = (
        torch.softmax(X @ S1["weight"].T + S1["bias"], dim=1)
        + torch.softmax(X @ S2["weight"].T + S2["bias"], dim=1)
    ) / 2
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(probs.sum(1), torch.ones(5, dtype=torch.float64))


def test_bma_binary_equals_mean_of_sigmoids() -> None:
    a, b = _linear([[1.0, -1.0]], [0.2]), _linear([[-0.5, 2.0]], [-0.1])
    probs = bayesian_model_average(_template(1), [a, b], X, kind="binary", batch_size=3)
    expected = (
        torch.sigmoid(X @ a["weight"].T + a["bias"]) + torch.sigmoid(X @ b["weight"].T + b["bias"])
    ).squeeze(1) / 2
    assert probs.shape == (5,)
    torch.testing.assert_close(probs, expected, rtol=1e-12, atol=1e-14)


def test_bma_identical_samples_equals_single_model() -> None:
    model = _template()
    model.load_state_dict(S1)
    probs = bayesian_model_average(model, [S1, S1, S1], X)
    single = torch.softmax(model(X), dim=1).detach()
    torch.testing.assert_close(probs, single, rtol=1e-12, atol=1e-14)


def test_bma_regression_mean_and_variance_by_hand() -> None:
    samples = [
        _linear([[1.0, 2.0]], [0.0]),
        _linear([[0.0, -1.0]], [1.0]),
        _linear([[2.0, 0.5]], [-0.5]),
    ]
    mean, var = bayesian_model_average(_template(1), samples, X, kind="regression", batch_size=4)
    outs = torch.stack([X @ s["weight"].T + s["bias"] for s in samples])  # (S, n, 1)
    hand_mean = outs.sum(0) / 3
    hand_var = ((outs - hand_mean) ** 2).sum(0) / 3
    assert mean.shape == var.shape == (5, 1)
    torch.testing.assert_close(mean, hand_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, hand_var, rtol=1e-12, atol=1e-12)
    # first input x = (0.5, 1): outputs 2.5, 0, 1 -> mean 7/6, variance (64 + 49 + 1)/36/3 = 19/18
    assert float(mean[0, 0]) == pytest.approx(7 / 6, rel=1e-12)
    assert float(var[0, 0]) == pytest.approx(19 / 18, rel=1e-12)


def test_bma_leaves_caller_model_unchanged() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double()
    model.train()
    col = SampleCollector(model, burn_in=0, thin=1)
    for step in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1 * step)
            model[1].running_mean.add_(0.5)
        col(step)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs = bayesian_model_average(model, col, X)
    assert model.training and model[1].training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the samples' BatchNorm statistics are used in eval mode
    expected = torch.zeros(5, 3, dtype=torch.float64)
    for s in col.samples:
        ref = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double().eval()
        ref.load_state_dict(s)
        expected += torch.softmax(ref(X), dim=1).detach() / 3
    torch.testing.assert_close(probs, expected, rtol=1e-12, atol=1e-14)


def test_bma_validation() -> None:
    with pytest.raises(ValueError, match="empty"):
        bayesian_model_average(_template(), [], X)
    with pytest.raises(ValueError, match="kind"):
        bayesian_model_average(_template(), [S1], X, kind="ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bayesian_model_average(_template(), [S1], X, batch_size=0)
    with pytest.raises(ValueError, match="binary"):
        bayesian_model_average(_template(), [S1], X, kind="binary")
    with pytest.raises(RuntimeError):  # strict loading: wrong architecture
        bayesian_model_average(_template(1), [S1], X)


def test_bma_then_metrics_end_to_end() -> None:
    probs = bayesian_model_average(_template(), [S1, S2], X)
    y = torch.tensor([0, 1, 2, 0, 1])
    out = uq_metrics(probs, y, n_bins=5)
    assert 0 <= out["ece"] <= 1 and 0 <= out["accuracy"] <= 1 and out["nll"] > 0
