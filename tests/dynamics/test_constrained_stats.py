"""CoLA samples the right measures: Haar (orthogonal), arcsine (norm), von Mises-Fisher (sphere).

Closed forms:

* zero loss, ``W`` square ``n x n`` started in SO(n): the stationary law is Haar on SO(n), whose
  entries have mean 0 and variance ``1/n``; for ``n = 3``, ``tr W = 1 + 2 cos(theta)`` with the
  rotation angle's density ``(1 - cos(theta)) / pi`` on ``[0, pi]``, so
  ``P(tr W <= t) = 1 - G(arccos((t - 1) / 2))``, ``G(theta) = (theta - sin(theta)) / pi``
  (discrete steps can cross into det = -1: the law is then Haar on O(3), and ``det(W) W`` is
  Haar on SO(3)).
* zero loss, norm constraint: the angle on the circle ``w**2 + xi**2 = r**2`` is uniform, so
  ``w / r`` follows the arcsine law, ``P(w / r <= x) = 1/2 + arcsin(x) / pi``.
* ``U(w) = (kappa/2) |w - mu|**2`` on the unit sphere S^2 at ``tau = 1``: the density is
  ``exp(kappa mu.w)`` (von Mises-Fisher), so ``t = mu.w`` has density proportional to
  ``exp(kappa t)`` on ``[-1, 1]`` (Archimedes): ``P(t <= s) = (e^{kappa s} - e^{-kappa}) /
  (e^{kappa} - e^{-kappa})``, ``E t = coth(kappa) - 1/kappa``.

Tolerances. Means: independent chains, the standard error from the spread of the per-chain
averages (which accounts for the autocorrelation within a chain), ``|mean - exact| < 4.5 se``
(two-sided p ~ 7e-6 per check). Distributions: Kolmogorov-Smirnov distance against the exact
CDF below ``1.95 / sqrt(n_eff)`` (p = 0.001); for thinned chain samples ``n_eff = n / 2`` (thinning
at ~5 relaxation times leaves correlations well under 1/2, so this is conservative), for the
norm test the elements are independent chains (``n_eff = n``). Each test also checks the KS
distance of a wrong law is far above the bound, so the test can fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchvalley.dynamics import ConstrainedLangevin
from torchvalley.manifolds import Stiefel

F64 = torch.float64
pytestmark = pytest.mark.slow


def _ks(samples: torch.Tensor, cdf) -> float:
    x, _ = torch.sort(samples.flatten())
    n = x.numel()
    f = cdf(x)
    upper = torch.arange(1, n + 1, dtype=F64) / n - f
    lower = f - torch.arange(0, n, dtype=F64) / n
    return float(torch.maximum(upper, lower).max())


def _assert_chain_mean(per_chain: torch.Tensor, exact: float) -> None:
    mean = float(per_chain.mean())
    se = float(per_chain.std()) / math.sqrt(per_chain.numel())
    assert abs(mean - exact) < 4.5 * se, (mean, exact, se)


def _so3_trace_cdf(t: torch.Tensor) -> torch.Tensor:
    theta = torch.arccos(((t - 1) / 2).clamp(-1, 1))
    return 1 - (theta - torch.sin(theta)) / math.pi


def _chains(shape, count, generator):
    return [
        torch.nn.Parameter(Stiefel(flatten=True).random(*shape, generator=generator, dtype=F64))
        for _ in range(count)
    ]


@pytest.mark.parametrize("dynamics", ["underdamped", "overdamped"])
def test_orthogonal_zero_loss_samples_haar(dynamics) -> None:
    # Chains start at the identity (tr = 3, far from Haar) and are sampled at four times 50
    # steps apart after a burn-in; samples of different chains are independent. (From a Haar
    # start every time slice is exactly Haar by left-invariance of the scheme, which would test
    # nothing.) Pooled thinned samples of one chain are not independent in their distribution
    # even when the trace's autocorrelation is ~0, hence n_eff = n / 2 below.
    chains = [torch.nn.Parameter(torch.eye(3, dtype=F64)) for _ in range(80)]
    lr = 0.5 if dynamics == "underdamped" else 0.05
    opt = ConstrainedLangevin(
        [{"params": chains, "constraint": "orthogonal"}],
        lr=lr,
        friction=1.0,
        temperature=1.0,
        dynamics=dynamics,
        seed=11,
    )
    for w in chains:
        w.grad = torch.zeros_like(w)
    samples = []
    for k in range(1, 401):
        opt.step()
        assert opt.diagnostics()[0]["residual"] <= 1e-12
        if k >= 250 and k % 50 == 0:
            samples.append(torch.stack([w.detach().clone() for w in chains]))
    stack = torch.stack(samples, dim=1)  # chains x samples x 3 x 3
    for i in range(3):
        for j in range(3):
            _assert_chain_mean(stack[:, :, i, j].mean(1), 0.0)
            _assert_chain_mean((stack[:, :, i, j] ** 2).mean(1), 1.0 / 3.0)
    # Steps are discrete, so a chain may jump into det = -1: the law is Haar on O(3), and
    # det(W) W (n odd) is Haar on SO(3) whichever component W is in.
    signs = torch.linalg.det(stack).sign()[..., None, None]
    trace = (signs * stack).diagonal(dim1=-2, dim2=-1).sum(-1)
    bound = 1.95 / math.sqrt(trace.numel() / 2)
    assert _ks(trace, _so3_trace_cdf) < bound
    # power: the trace law of a uniformly distributed rotation angle is far off
    assert _ks(trace, lambda t: torch.arccos(((t - 1) / 2).clamp(-1, 1)).neg() / math.pi + 1) > (
        2 * bound
    )


@pytest.mark.parametrize("dynamics", ["underdamped", "overdamped"])
def test_norm_zero_loss_samples_arcsine(dynamics) -> None:
    r = 0.5
    w = torch.nn.Parameter(torch.zeros(20000, dtype=F64))
    lr = 0.2 if dynamics == "underdamped" else 0.02
    opt = ConstrainedLangevin(
        [{"params": [w], "constraint": "norm", "radius": r}],
        lr=lr,
        friction=1.0,
        temperature=0.25,
        dynamics=dynamics,
        seed=5,
    )
    w.grad = torch.zeros_like(w)
    for _ in range(400):
        opt.step()
    x = w.detach() / r
    assert float(x.abs().max()) <= 1.0
    _assert_chain_mean(x, 0.0)
    _assert_chain_mean(x**2, 0.5)
    bound = 1.95 / math.sqrt(x.numel())
    assert _ks(x, lambda s: 0.5 + torch.arcsin(s.clamp(-1, 1)) / math.pi) < bound
    assert _ks(x, lambda s: (s + 1) / 2) > 3 * bound  # power: uniform w is far off


@pytest.mark.parametrize("dynamics", ["underdamped", "overdamped"])
def test_quadratic_loss_on_sphere_samples_von_mises_fisher(dynamics) -> None:
    kappa = 2.0
    mu = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    g = torch.Generator().manual_seed(3)
    chains = _chains((1, 3), 40, g)  # 1 x 3: W W^T = 1, the unit sphere S^2
    # O(h**2) bias for BAOAB-type steps, O(h) for Euler-Maruyama: smaller steps, more of them
    lr, steps, thin = (0.2, 1000, 10) if dynamics == "underdamped" else (0.01, 3000, 25)
    opt = ConstrainedLangevin(
        [{"params": chains, "constraint": "orthogonal"}],
        lr=lr,
        friction=1.0,
        temperature=1.0,
        dynamics=dynamics,
        seed=2,
    )
    samples = []
    for k in range(steps):
        for w in chains:
            w.grad = kappa * (w.detach() - mu)
        opt.step()
        if k >= steps // 5 and k % thin == 0:
            samples.append(torch.stack([(w.detach() * mu).sum() for w in chains]))
    t = torch.stack(samples, dim=1)  # chains x samples
    _assert_chain_mean(t.mean(1), 1 / math.tanh(kappa) - 1 / kappa)

    def cdf(s):
        return (torch.exp(kappa * s) - math.exp(-kappa)) / (math.exp(kappa) - math.exp(-kappa))

    bound = 1.95 / math.sqrt(t.numel() / 2)
    assert _ks(t, cdf) < bound
    assert _ks(t, lambda s: (s + 1) / 2) > 3 * bound  # power: the uniform law on S^2


@pytest.mark.parametrize("dynamics", ["underdamped", "overdamped"])
def test_float32_residual_every_step_over_10k_steps(dynamics) -> None:
    # The bound: max |W^T W - I| <= 1e-5 after every one of 10,000 float32 steps
    # (noisy, with a real loss), on a conv weight (wide view), a tall and a square weight.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(2, 8, 3),  # first layer: unconstrained
        torch.nn.Tanh(),
        torch.nn.Conv1d(8, 16, 3),  # 16 x 24: wide, W W^T = I
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 6, 12),  # 12 x 96: wide
        torch.nn.Tanh(),
        torch.nn.Linear(12, 12),  # square
        torch.nn.Linear(12, 40),  # 40 x 12: tall
    )
    from torchvalley.dynamics import constrain_model

    groups = constrain_model(net, "orthogonal")
    weights = groups[0]["params"]
    opt = ConstrainedLangevin(
        groups, lr=0.05, friction=1.0, temperature=1e-3, dynamics=dynamics, seed=9
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 2, 10, generator=g), torch.randn(64, 40, generator=g)
    geometry = Stiefel(flatten=True)
    worst = 0.0
    for _ in range(10_000):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
        report = opt.diagnostics()[0]
        assert report["fallbacks"] == 0
        worst = max(worst, report["residual"])
    assert worst <= 1e-5
    for w in weights:  # measured independently of the optimizer's report
        tall = geometry._tall(w.detach())
        assert float((tall.T @ tall - torch.eye(tall.shape[1])).abs().max()) <= 1e-5
