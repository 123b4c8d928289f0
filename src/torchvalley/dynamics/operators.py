"""Splitting operators of Langevin-type dynamics, acting in place on lists of tensors.

Notation (Leimkuhler & Matthews 2013/2015; Leimkuhler, Matthews & Vlaar 2019): ``h`` is the
fraction of the step an operator covers (``h/2`` when its letter appears twice in a scheme),
``m`` the mass, ``gamma`` the friction, ``tau`` the temperature, ``R ~ N(0, I)``.

* ``A`` (drift): ``theta += h * p / m``.
* ``B`` (kick): ``p -= h * grad U(theta)``.
* ``O`` (exact Ornstein-Uhlenbeck): ``p = c * p + sqrt((1 - c**2) * m * tau) * R``,
  ``c = exp(-gamma * h)`` (``c = 0`` for infinite friction: a full momentum refresh).
* ``F`` (Euler-Maruyama friction and noise, SGHMC):
  ``p = (1 - gamma*h)*p + sqrt(2*gamma*h*m*tau)*R``.
* ``C`` (thermostat friction): ``p *= exp(-xi * h)``.
* ``D`` (additive noise): ``p += sigma_A * sqrt(h) * R``.
* ``E`` (thermostat): ``xi += eps * h * (sum(p**2) / m - N * tau)``, ``N`` the number of
  thermostatted elements.

Noise tensors are passed in by the caller (drawn from :class:`~torchvalley.CounterNoise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from torchvalley.sharding import is_dtensor

__all__ = [
    "LETTERS",
    "additive_noise",
    "drift",
    "euler_ou",
    "kick",
    "kinetic_sum",
    "ornstein_uhlenbeck",
    "ou_coefficient",
    "thermostat_friction",
    "thermostat_update",
]

#: Operator letters the engine understands.
LETTERS = frozenset("ABOFCDE")

Tensors = Sequence[torch.Tensor]


def ou_coefficient(friction: float, h: float) -> float:
    """``c = exp(-friction * h)``; ``0.0`` for ``friction = inf`` (overdamped refresh)."""
    return 0.0 if math.isinf(friction) else math.exp(-friction * h)


def drift(params: Tensors, momenta: Tensors, h: float, mass: float) -> None:
    """``A``: ``theta += h * p / m``."""
    torch._foreach_add_(list(params), list(momenta), alpha=h / mass)


def kick(momenta: Tensors, grads: Tensors, h: float) -> None:
    """``B``: ``p -= h * g``."""
    torch._foreach_add_(list(momenta), list(grads), alpha=-h)


def ornstein_uhlenbeck(
    momenta: Tensors, noise: Tensors, c: float, mass: float, temperature: float
) -> None:
    """``O``: ``p = c * p + sqrt((1 - c**2) * m * tau) * R`` (exact OU flow over the step)."""
    torch._foreach_mul_(list(momenta), c)
    scale = math.sqrt(max(1.0 - c * c, 0.0) * mass * temperature)
    if scale:
        torch._foreach_add_(list(momenta), list(noise), alpha=scale)


def euler_ou(
    momenta: Tensors, noise: Tensors, friction: float, h: float, mass: float, temperature: float
) -> None:
    """``F``: ``p = (1 - gamma*h) * p + sqrt(2*gamma*h*m*tau) * R`` (Euler-Maruyama)."""
    torch._foreach_mul_(list(momenta), 1.0 - friction * h)
    scale = math.sqrt(2.0 * friction * h * mass * temperature)
    if scale:
        torch._foreach_add_(list(momenta), list(noise), alpha=scale)


def thermostat_friction(momenta: Tensors, xi: torch.Tensor, h: float) -> None:
    """``C``: ``p *= exp(-xi * h)`` (``xi`` a 0-dim tensor, no host synchronisation)."""
    torch._foreach_mul_(list(momenta), torch.exp(xi * -h))


def additive_noise(momenta: Tensors, noise: Tensors, sigma: float, h: float) -> None:
    """``D``: ``p += sigma_A * sqrt(h) * R``."""
    scale = sigma * math.sqrt(h)
    if scale:
        torch._foreach_add_(list(momenta), list(noise), alpha=scale)


def kinetic_sum(momenta: Tensors, mass: float) -> torch.Tensor:
    """``sum(p**2) / m`` over all tensors, as a 0-dim tensor."""
    norms = torch._foreach_norm(list(momenta))
    # FSDP2: a DTensor's norm is a replicated DTensor; the thermostat is a plain 0-dim tensor
    norms = [n.full_tensor() if is_dtensor(n) else n for n in norms]
    return torch.stack([n * n for n in norms]).sum() / mass


def thermostat_update(
    xi: torch.Tensor,
    momenta: Tensors,
    coupling: float,
    h: float,
    mass: float,
    temperature: float,
    numel: int,
) -> None:
    """``E``: ``xi += eps * h * (sum(p**2) / m - N * tau)`` in place."""
    xi.add_((kinetic_sum(momenta, mass).to(xi.dtype) - numel * temperature) * (coupling * h))
