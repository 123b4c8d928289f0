"""Tests of the von Mises–Fisher directional statistics.

Oracles:

* A_d(κ) = I_{d/2}(κ)/I_{d/2-1}(κ) against scipy.special.ive (where it does not underflow) and
  mpmath (high d); its inverse round-trips;
* Wood's sampler: the mean of μᵀx matches A_d(κ) computed independently (scipy / mpmath Bessel
  ratio) within 4 standard errors;
* κ recovery from Wood samples in d ∈ {3, 100, 10⁴}: the tolerance is 4 asymptotic standard
  deviations, sd(κ̂) = 1/sqrt(n A_d'(κ)) (Fisher information of κ), plus the first-order bias
  (1 − A²)/(2 n A A_d'(κ)) of the plain MLE; n is chosen so that the tolerance is below 5 % of κ;
* uniform directions: exceed the null's 95 % quantile at about the 5 % rate; the null's
  simulation (a 1-D random walk) matches a direct simulation in d dims;
* vmf_concentration against a hand-written autograd loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchvalley.landscape.gradient_statistics.directions import (
    sample_vmf,
    uniform_null,
    vmf_concentration,
    vmf_fit,
    vmf_kappa_from_rbar,
    vmf_mean_resultant_length,
)

F64 = torch.float64


def reference_ratio(kappa: float, dim: int) -> float:
    """I_{d/2}(κ)/I_{d/2-1}(κ) from scipy (exponentially scaled) or, if it underflows, mpmath."""
    special = pytest.importorskip("scipy.special")
    numerator, denominator = special.ive(dim / 2, kappa), special.ive(dim / 2 - 1, kappa)
    value = numerator / denominator if denominator > 0 else math.nan
    if math.isfinite(value) and value > 0:
        return float(value)
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(30):
        return float(mpmath.besseli(dim / 2, kappa) / mpmath.besseli(dim / 2 - 1, kappa))


@pytest.mark.parametrize("dim", [2, 3, 10, 100, 10_000, 1_000_000])
def test_mean_resultant_length_matches_bessel_references(dim):
    for kappa in (1e-3, 0.5, 10.0, 300.0, 1e4, 1e6):
        if not (dim >= 10**6 and kappa >= 10**6):  # where mpmath takes minutes
            assert vmf_mean_resultant_length(kappa, dim) == pytest.approx(
                reference_ratio(kappa, dim), rel=1e-10
            )
        assert vmf_kappa_from_rbar(vmf_mean_resultant_length(kappa, dim), dim) == pytest.approx(
            kappa, rel=1e-7
        )
    assert vmf_mean_resultant_length(0.0, dim) == 0.0
    assert vmf_kappa_from_rbar(0.0, dim) == 0.0 and vmf_kappa_from_rbar(1.0, dim) == math.inf


def test_closed_forms_low_dimension():
    # d = 3: A_3(κ) = coth κ − 1/κ ; d = 2 at small κ: A ≈ κ/2
    for kappa in (0.1, 2.0, 50.0):
        assert vmf_mean_resultant_length(kappa, 3) == pytest.approx(
            1 / math.tanh(kappa) - 1 / kappa, rel=1e-12
        )
    assert vmf_mean_resultant_length(1e-6, 2) == pytest.approx(5e-7, rel=1e-9)


@pytest.mark.parametrize("dim, kappa", [(3, 5.0), (100, 50.0), (10_000, 5_000.0)])
def test_wood_sampler_mean_resultant_length(dim, kappa):
    gen = torch.Generator().manual_seed(dim)
    mu = torch.randn(dim, generator=gen, dtype=F64)
    n = 4000 if dim < 10_000 else 500
    x = sample_vmf(mu, kappa, n, gen)
    assert x.shape == (n, dim) and x.dtype == F64
    torch.testing.assert_close(torch.linalg.vector_norm(x, dim=1), torch.ones(n, dtype=F64))
    w = x @ (mu / mu.norm())
    se = float(w.std()) / math.sqrt(n)
    assert abs(float(w.mean()) - reference_ratio(kappa, dim)) < 4 * se
    # the tangent part is isotropic: its mean is ~0 in every direction orthogonal to mu
    tangent = (x - w[:, None] * (mu / mu.norm())).mean(dim=0)
    assert float(tangent.norm()) < 4 * math.sqrt((1 - float((w**2).mean())) / n)


def _kappa_tolerance(kappa: float, dim: int, n: int, z: float = 4.0) -> tuple[float, float]:
    """(z·sd, bias) of the MLE κ̂ from n samples (asymptotic; module docstring)."""
    a = vmf_mean_resultant_length(kappa, dim)
    slope = 1 - a * a - (dim - 1) * a / kappa
    return z / math.sqrt(n * slope), (1 - a * a) / (2 * n * a * slope)


@pytest.mark.parametrize(
    "dim, kappa, n",
    [
        (3, 10.0, 8_000),
        (3, 100.0, 8_000),
        (100, 30.0, 4_000),
        (100, 1_000.0, 2_000),
        (10_000, 3_000.0, 300),
        (10_000, 30_000.0, 300),
    ],
)
def test_kappa_recovered_from_wood_samples(dim, kappa, n):
    spread, bias = _kappa_tolerance(kappa, dim, n)
    assert spread + abs(bias) < 0.05 * kappa  # n is large enough for a 5 % check
    gen = torch.Generator().manual_seed(int(kappa) + dim)
    mu = torch.randn(dim, generator=gen, dtype=F64)
    fit = vmf_fit(sample_vmf(mu, kappa, n, gen), null_samples=200)
    assert abs(fit.kappa - kappa) <= spread + abs(bias)
    assert abs(fit.kappa_debiased - kappa) <= spread + 0.1 * abs(bias)
    assert fit.exceeds_null
    # mean direction: the perpendicular part of the mean has E|.|² = (d-1)(A/κ)/n
    a = vmf_mean_resultant_length(kappa, dim)
    perpendicular = (dim - 1) * a / kappa / n
    assert float(fit.mean_direction @ (mu / mu.norm())) > a / math.sqrt(a * a + 2 * perpendicular)
    # Banerjee's closed form is close; Newton only refines it
    assert fit.kappa_banerjee == pytest.approx(fit.kappa, rel=0.05)


def test_uniform_directions_exceed_the_null_at_its_level():
    gen = torch.Generator().manual_seed(11)
    n, dim, trials = 20, 100, 300
    null = uniform_null(n, dim)
    exceed = 0
    for _ in range(trials):
        fit = vmf_fit(torch.randn(n, dim, generator=gen, dtype=F64), normalize=True)
        assert fit.null is null  # cached
        exceed += fit.exceeds_null
    # 5 % nominal; binomial sd over 300 trials is 1.3 %
    assert 0.01 <= exceed / trials <= 0.10


@pytest.mark.parametrize("dim", [3, 10_000])
def test_uniform_samples_give_kappa_near_the_null(dim):
    gen = torch.Generator().manual_seed(12)
    n = 200 if dim > 100 else 2000
    x = sample_vmf(torch.ones(dim, dtype=F64), 0.0, n, gen)
    fit = vmf_fit(x)
    assert fit.kappa <= fit.null.kappa_upper
    assert fit.null_pvalue > 0.01
    # the floor: R̄ ≈ 1/sqrt(n), κ̂ ≈ d/sqrt(n) in high d
    assert fit.null.rbar_mean == pytest.approx(1 / math.sqrt(n), rel=0.15)
    if dim > 100:
        assert fit.kappa == pytest.approx(dim / math.sqrt(n), rel=0.25)
        assert fit.kappa_debiased < 0.2 * fit.kappa


def test_null_matches_direct_simulation():
    n, dim, samples = 16, 50, 4000
    null = uniform_null(n, dim, samples=samples, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(samples, n, dim, generator=gen, dtype=F64)
    x = x / torch.linalg.vector_norm(x, dim=2, keepdim=True)
    direct = torch.linalg.vector_norm(x.mean(dim=1), dim=1)
    # E[R̄²] = 1/n exactly, in both
    for rbar in (null.rbar_samples, direct):
        mean_sq = float((rbar**2).mean())
        assert abs(mean_sq - 1 / n) < 4 * float((rbar**2).std()) / math.sqrt(samples)
    se = math.hypot(float(direct.std()), float(null.rbar_samples.std())) / math.sqrt(samples)
    assert abs(null.rbar_mean - float(direct.mean())) < 4 * se
    # the null's 95 % quantile leaves 5 % of the direct simulation above it
    above = float((direct > null.rbar_upper).double().mean())
    assert abs(above - 0.05) < 4 * math.sqrt(2 * 0.05 * 0.95 / samples)
    assert null.kappa_upper == pytest.approx(vmf_kappa_from_rbar(null.rbar_upper, dim))


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_vmf_concentration_matches_manual_autograd():
    torch.manual_seed(0)
    model = _Net().double()
    model.eval()
    gen = torch.Generator().manual_seed(13)
    batches = [
        (
            torch.randn(16, 5, generator=gen, dtype=F64),
            torch.randint(0, 3, (16,), generator=gen),
        )
        for _ in range(6)
    ]
    loss_fn = torch.nn.functional.cross_entropy
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = vmf_concentration(model, loss_fn, batches, null_samples=200)
    by_module = vmf_concentration(model, loss_fn, batches, per="module", null=False)

    # the oracle: autograd per batch, train-mode BatchNorm on a copy
    import copy

    manual = copy.deepcopy(model).train()
    names = [n for n, _ in manual.named_parameters()]
    grads = []
    for inputs, targets in batches:
        manual.zero_grad()
        loss_fn(manual(inputs), targets).backward()
        grads.append({n: p.grad.detach().clone() for n, p in manual.named_parameters()})
    flat = torch.stack([torch.cat([g[n].reshape(-1) for n in names]) for g in grads])
    expected = vmf_fit(flat, normalize=True, null_samples=200)
    assert result.overall.rbar == pytest.approx(expected.rbar, rel=1e-10)
    assert result.overall.kappa == pytest.approx(expected.kappa, rel=1e-8)
    torch.testing.assert_close(result.gradient_norms, torch.linalg.vector_norm(flat, dim=1))
    # gradient stochasticity: the unbiased trace of the batch-gradient covariance
    centred = flat - flat.mean(dim=0)
    assert result.gradient_variance == pytest.approx(
        float((centred**2).sum()) / (len(batches) - 1), rel=1e-10
    )
    assert result.gradient_variance == pytest.approx(float(torch.cov(flat.T).trace()), rel=1e-10)
    assert result.mean_gradient_norm == pytest.approx(float(flat.mean(dim=0).norm()), rel=1e-12)
    assert list(result.layers) == names
    for name in names:
        layer = torch.stack([g[name].reshape(-1) for g in grads])
        assert result.layers[name].rbar == pytest.approx(
            vmf_fit(layer, normalize=True, null=False).rbar, rel=1e-10
        )
    assert list(by_module.layers) == ["body.0", "body.1", "head"]
    head = torch.stack([torch.cat([g["head.weight"].reshape(-1), g["head.bias"]]) for g in grads])
    assert by_module.layers["head"].rbar == pytest.approx(
        vmf_fit(head, normalize=True, null=False).rbar, rel=1e-10
    )
    assert by_module.layers["head"].null is None
    # the model is untouched: parameters, buffers (running stats), eval flag
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.training


def test_validation():
    with pytest.raises(ValueError, match="unit_vectors"):
        vmf_fit(torch.ones(3))
    with pytest.raises(ValueError, match="unit_vectors"):
        vmf_fit(torch.ones(4, 3))  # rows not unit
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(torch.ones(3), -1.0, 5)
    with pytest.raises(ValueError, match="mu"):
        sample_vmf(torch.zeros(3), 1.0, 5)
    with pytest.raises(ValueError, match="rbar"):
        vmf_kappa_from_rbar(1.5, 3)
    with pytest.raises(ValueError, match="dim"):
        vmf_mean_resultant_length(1.0, 1)
    with pytest.raises(ValueError, match="quantile"):
        uniform_null(5, 3, quantile=1.0)
    with pytest.raises(ValueError, match="per"):
        vmf_concentration(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss, [], per="layer")
