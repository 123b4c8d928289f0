"""The unit sphere S^{n−1} = {x ∈ ℝⁿ : ‖x‖ = 1} over the last dimension.

Formulas (Absil, Mahony & Sepulchre 2008, §3.6 and Example 5.4.1), with θ = ‖u‖:

* proju(x, u) = u − ⟨x, u⟩ x;  projx(x) = x / ‖x‖;  retr(x, u) = (x + u) / ‖x + u‖ (the metric
  projection retraction, which is second order);
* exp_x(u) = cos θ · x + (sin θ / θ) · u;
* d(x, y) = 2 arcsin(‖x − y‖ / 2) (= arccos⟨x, y⟩, without arccos's cancellation near 0);
* log_x(y) = (θ / sin θ) · (y − ⟨x, y⟩ x) with θ = d(x, y).

``transp`` is the projection ``proju(y, v)``: cheap, tangent at ``y``, but not an isometry.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchvalley.manifolds.base import Draw, Manifold, _violation_reason

__all__ = ["Sphere"]


def _tiny(t: Tensor) -> float:
    return 1e-15 if t.dtype == torch.float64 else 1e-30


def _sinc(t: Tensor) -> Tensor:
    """sin(t)/t, smooth at 0."""
    return torch.sinc(t / torch.pi)


def sphere_projx(x: Tensor, dim: int) -> Tensor:
    """x / ‖x‖ along ``dim``."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(_tiny(x))


def sphere_proju(x: Tensor, u: Tensor, dim: int) -> Tensor:
    """u − ⟨x, u⟩ x along ``dim``."""
    return u - (x * u).sum(dim=dim, keepdim=True) * x


def sphere_expmap(x: Tensor, u: Tensor, dim: int) -> Tensor:
    """cos‖u‖ x + sinc‖u‖ u, renormalised against rounding."""
    theta = u.norm(dim=dim, keepdim=True)
    return sphere_projx(torch.cos(theta) * x + _sinc(theta) * u, dim)


def sphere_dist(x: Tensor, y: Tensor, dim: int) -> Tensor:
    """2 arcsin(‖x − y‖ / 2) along ``dim`` (kept dimension)."""
    chord = (x - y).norm(dim=dim, keepdim=True)
    return 2 * torch.asin((chord / 2).clamp(max=1.0))


def sphere_logmap(x: Tensor, y: Tensor, dim: int) -> Tensor:
    """(θ / sin θ)(y − ⟨x, y⟩ x) with θ = d(x, y); undefined for antipodal points."""
    theta = sphere_dist(x, y, dim)
    v = sphere_proju(x, y - x, dim)
    return v / _sinc(theta).clamp_min(_tiny(x))


class Sphere(Manifold):
    """Unit sphere over the last dimension, with the metric induced by ℝⁿ.

    Points have shape ``(..., n)`` with ``‖x‖ = 1`` along the last dimension; leading dimensions
    are a batch of independent points.
    """

    ndim = 1
    violation_name = "max |‖x‖ − 1|"

    def projx(self, x: Tensor) -> Tensor:
        """x / ‖x‖."""
        return sphere_projx(x, -1)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """u − ⟨x, u⟩ x."""
        return sphere_proju(x, u, -1)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """(x + u) / ‖x + u‖ (second-order retraction)."""
        return sphere_projx(x + u, -1)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """cos θ x + (sin θ / θ) u with θ = ‖u‖."""
        return sphere_expmap(x, u, -1)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """(θ / sin θ)(y − ⟨x, y⟩ x) with θ = d(x, y)."""
        return sphere_logmap(x, y, -1)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """Great-circle distance 2 arcsin(‖x − y‖ / 2) = arccos⟨x, y⟩."""
        d = sphere_dist(x, y, -1)
        return d if keepdim else d.squeeze(-1)

    def violation(self, x: Tensor) -> Tensor:
        """max |‖x‖ − 1|."""
        return (torch.linalg.vector_norm(x, dim=-1) - 1).abs().max()

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Uniform points: normalised standard normal vectors."""
        return sphere_projx(draw.randn(shape), -1)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 1 or shape[-1] < 1:
            return False, f"Sphere needs a shape of at least (1,), got {tuple(shape)}"
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        err = float((x * u).sum(-1).abs().max())
        bound = atol + rtol * float(u.norm(dim=-1).max())
        if err > bound:
            return False, _violation_reason("max |⟨x, u⟩|", err, bound)
        return True, None
