"""Parameterizations of BAOA/BAOAB: physical ``(h, gamma, tau, m)`` and heavy-ball SGD form.

With scheme ``"BAOA"`` (or BAOAB after its first step) the positions follow exactly the
heavy-ball recursion

    theta_{k+1} - theta_k = mu (theta_k - theta_{k-1}) - eta grad U(theta_k)
                            + sigma (R_{k-1} + R_k),

    mu = exp(-gamma h),  eta = h**2 (1 + mu) / (2 m),  sigma = (h/2) sqrt((1 - mu**2) tau / m).

Derivation: with ``q_k`` the momentum after the kick, ``theta_{k+1} - theta_k =
h (1 + mu) q_k / (2m) + (h/2m) s R_k`` and ``q_{k+1} = mu q_k + s R_k - h g_{k+1}``,
``s = sqrt((1 - mu**2) m tau)``. At ``tau = 0`` this is ``torch.optim.SGD(lr=eta,
momentum=mu)`` step for step (SGD's first buffer ``g_0`` equals BAOA's first full kick; BAOAB's
initial half kick makes its first step half as long). The inverse needs the mass (the map is
invariant under ``h -> h sqrt(k), m -> k m`` with ``gamma h`` fixed). For SGLD ``eta = h`` and
the per-step noise std is ``sqrt(2 h tau)``.

Temperature convention (dataset-size invariant, as posteriors): write the loss as the
*averaged* negative log posterior ``U = -(1/N_data) (log p(D|theta) + log p(theta))`` (the usual
mean cross-entropy plus ``weight_decay``-style prior / N_data). Sampling ``exp(-U / tau)`` with
``tau = 1 / N_data`` (:func:`posterior_temperature`) is the Bayesian posterior; ``tau = T /
N_data`` is the tempered posterior at temperature ``T``. The learning rate then stays meaningful
across dataset and batch sizes. For training, a small ``tau`` (1e-6 .. 1e-4) adds exploration.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = [
    "PhysicalParameters",
    "SGDParameters",
    "physical_to_sgd",
    "posterior_temperature",
    "sgd_to_physical",
]


class SGDParameters(NamedTuple):
    """SGD-style parameters: heavy-ball ``lr`` (eta), ``momentum`` (mu), position ``noise``."""

    lr: float
    momentum: float
    noise: float


class PhysicalParameters(NamedTuple):
    """Physical parameters: step ``lr`` (h), ``friction``, ``temperature``, ``mass``."""

    lr: float
    friction: float
    temperature: float
    mass: float


def physical_to_sgd(
    lr: float, friction: float, temperature: float, mass: float = 1.0
) -> SGDParameters:
    """Map BAOA/BAOAB ``(h, gamma, tau, m)`` to the heavy-ball form (see the module docstring).

    ``mu = exp(-gamma h)``, ``eta = h**2 (1 + mu) / (2 m)``,
    ``sigma = (h / 2) sqrt((1 - mu**2) tau / m)``.
    """
    mu = math.exp(-friction * lr)
    eta = lr * lr * (1.0 + mu) / (2.0 * mass)
    sigma = 0.5 * lr * math.sqrt((1.0 - mu * mu) * temperature / mass)
    return SGDParameters(eta, mu, sigma)


def sgd_to_physical(
    lr: float, momentum: float, noise: float = 0.0, mass: float = 1.0
) -> PhysicalParameters:
    """Inverse of :func:`physical_to_sgd` for a given mass (``0 < momentum < 1``).

    ``h = sqrt(2 m eta / (1 + mu))``, ``gamma = -log(mu) / h``,
    ``tau = 4 m sigma**2 / (h**2 (1 - mu**2))``.
    """
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"momentum must be in (0, 1), got {momentum!r}")
    h = math.sqrt(2.0 * mass * lr / (1.0 + momentum))
    friction = -math.log(momentum) / h
    temperature = 4.0 * mass * noise * noise / (h * h * (1.0 - momentum * momentum))
    return PhysicalParameters(h, friction, temperature, mass)


def posterior_temperature(num_data: int, scale: float = 1.0) -> float:
    """``scale / num_data``: temperature sampling the (tempered) posterior of a mean loss."""
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data!r}")
    return scale / num_data
