"""Weak order of the stationary bias on an anharmonic potential.

``U(x) = x**4 / 4 + x**2 / 2`` at ``tau = 1``; the observable is ``<x**2>``, exact value by
quadrature. Many independent chains run as one large parameter (one element per chain), started
from the exact marginal (inverse CDF on a grid) so that a short burn-in suffices. The bias of
each chain's time average is estimated against the quadrature value and the log-log slope of
``|bias|`` against ``h`` is fitted.

* BAOAB (``baoab``, ``gamma = 1``): configurational averages have O(h**2) bias (Leimkuhler &
  Matthews 2013; O(h**4) only in the large-friction limit, which ``gamma = 1`` is far from).
  Measured: bias -2.2e-3, -1.1e-3, -5.6e-4 at h = 0.4, 0.28, 0.2 (slope ~2).
* Euler reference: SGLD (``sgld``, the unadjusted Euler-Maruyama Langevin algorithm) has O(h)
  bias. Measured: +2.4e-2, +1.1e-2, +5.5e-3 at h = 0.08, 0.04, 0.02 (slope ~1.05).
  (Euler-type SGHMC, scheme ``"FBA"``, is *not* used here: its ``B A`` part is symplectic Euler,
  whose configurational bias is O(h**2) too; for the harmonic oscillator with ``gamma = 1`` the
  exact stationary ``Var(x) - 1`` is 1.1e-2, 2.6e-3, 6.4e-4 at h = 0.2, 0.1, 0.05. Only its
  kinetic temperature is first order. Measured here it gave +7.2e-3, +1.8e-3 at h = 0.2, 0.1.)

Step sizes are as large as stability allows (BAOAB: ``h * sqrt(U''(x)) < 2`` up to |x| ~ 2.5,
probability ~1e-8 per chain and step) so that every bias is many standard errors away from zero.
The standard error of the mean over chains uses the chains' time averages, so it accounts for
the autocorrelation within a chain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import torchvalley

TAU = 1.0


def potential(x):
    return x**4 / 4 + x**2 / 2


def exact_second_moment() -> float:
    """``<x**2>`` under ``exp(-U / tau) / Z`` by adaptive quadrature (error ~1e-13)."""

    def weight(x: float) -> float:
        return math.exp(-potential(x) / TAU)

    z = integrate.quad(weight, -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)[0]
    m2 = integrate.quad(lambda x: x * x * weight(x), -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)
    return m2[0] / z


def exact_samples(n: int, seed: int) -> torch.Tensor:
    """Approximate draws from the exact marginal: inverse CDF of the density on a fine grid."""
    grid = np.linspace(-5.0, 5.0, 20001)
    cdf = np.cumsum(np.exp(-potential(grid) / TAU))
    cdf /= cdf[-1]
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.from_numpy(np.interp(u.numpy(), cdf, grid))


def stationary_bias(
    name: str, h: float, *, chains: int, burn_in: float, horizon: float
) -> tuple[float, float]:
    """``(bias, standard error)`` of ``<x**2>`` for registry sampler ``name`` at step ``h``.

    ``burn_in`` and ``horizon`` are in time units (steps = time / h), so every step size
    averages over the same physical time and has a similar standard error.
    """
    x = torch.nn.Parameter(exact_samples(chains, seed=0))
    options = {} if name == "sgld" else {"friction": 1.0}
    opt = torchvalley.create_optimizer(name, [x], lr=h, temperature=TAU, seed=1, **options)
    burn, steps = round(burn_in / h), round(horizon / h)
    total = torch.zeros(chains, dtype=torch.float64)
    for i in range(burn + steps):
        x.grad = x.detach() ** 3 + x.detach()  # grad U
        opt.step()
        if i >= burn:
            total += x.detach() ** 2
    averages = total / steps
    assert torch.isfinite(averages).all(), f"{name} at h={h} diverged"
    bias = averages.mean().item() - exact_second_moment()
    return bias, averages.std().item() / math.sqrt(chains)


def loglog_slope(hs: list[float], biases: list[float]) -> float:
    return float(np.polyfit(np.log(hs), np.log(np.abs(biases)), 1)[0])


def measure(
    name: str, hs: list[float], min_ratio: float = 6.0, **kwargs
) -> tuple[float, list[float]]:
    results = [stationary_bias(name, h, **kwargs) for h in hs]
    biases = [b for b, _ in results]
    # The fit is meaningful only if each bias is far above its statistical error.
    for h, (bias, se) in zip(hs, results, strict=True):
        assert abs(bias) > min_ratio * se, f"{name} h={h}: bias {bias:.3g} not >> SE {se:.3g}"
    return loglog_slope(hs, biases), biases


@pytest.fixture(autouse=True)
def _one_thread():
    # Shared 2-core machine: one thread is as fast for 1-D elementwise work and avoids contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_exact_reference_by_quadrature():
    # Sanity check of the reference: <x**2> lies below the harmonic value 1 (quartic confines).
    assert 0.46 < exact_second_moment() < 0.48


def test_weak_order_smoke():
    # Fast version (~3 s): SGLD first order over a factor 2 of h; BAOAB's bias at h = 0.4 is
    # measurable and halving h divides it by more than 2 (i.e. better than first order).
    slope, _ = measure("sgld", [0.08, 0.04], chains=100_000, burn_in=5.0, horizon=20.0)
    assert 0.7 <= slope <= 1.4
    _, (coarse, fine) = measure(
        "baoab", [0.4, 0.2], min_ratio=3.0, chains=100_000, burn_in=10.0, horizon=200.0
    )
    assert abs(fine) < abs(coarse) / 2


@pytest.mark.slow
def test_weak_order_baoab_second_euler_first():
    # Bands: a slope from three step sizes spanning a factor 2 with every bias >= 6 SE has an
    # error of about +-0.3; BAOAB's theory value is 2, SGLD's 1.
    baoab_slope, baoab = measure(
        "baoab", [0.4, 0.4 / math.sqrt(2), 0.2], chains=200_000, burn_in=10.0, horizon=400.0
    )
    sgld_slope, sgld = measure(
        "sgld", [0.08, 0.04, 0.02], chains=100_000, burn_in=5.0, horizon=40.0
    )
    print(
        f"baoab biases {baoab} slope {baoab_slope:.3f}; sgld biases {sgld} slope {sgld_slope:.3f}"
    )
    assert 1.6 <= baoab_slope <= 2.6
    assert 0.7 <= sgld_slope <= 1.4
