"""The unit sphere intersected with a linear subspace (or its orthogonal complement).

{x ∈ ℝⁿ : ‖x‖ = 1, x ∈ S} for a subspace S = span(A) given by the columns of A (n × m), or
S = span(A)^⊥ with ``complement=True`` (geoopt's ``SphereSubspaceIntersection`` /
``SphereSubspaceComplementIntersection``). With P the orthogonal projector onto S (P = QQᵀ from a
QR factorization of A, or I − QQᵀ): projx(x) = Px/‖Px‖, proju(x, u) = Pu − ⟨x, Pu⟩x, and the
great circles through x with velocity in S stay in S, so exp/log/dist/retraction are those of
:class:`~torchvalley.manifolds.Sphere` (a totally geodesic sub-sphere). ``transp`` is the
projection ``proju(y, v)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import Draw, _violation_reason
from torchvalley.manifolds.sphere import Sphere, sphere_projx

__all__ = ["SphereSubspaceIntersection"]


class SphereSubspaceIntersection(Sphere):
    """Unit vectors of a subspace (see the module docstring).

    Args:
        span: an (n × m) matrix whose columns span the subspace (or an (n,) vector: m = 1).
        complement: use the orthogonal complement of span(A) instead.
    """

    def __init__(self, span: Tensor, complement: bool = False) -> None:
        a = torch.as_tensor(span, dtype=torch.float64).detach().cpu()
        if a.dim() == 1:
            a = a.unsqueeze(-1)
        if a.dim() != 2 or a.shape[0] < 1:
            raise ValueError(f"span must be an (n, m) matrix, got shape {tuple(a.shape)}")
        q, r = torch.linalg.qr(a)
        diag = r.diagonal().abs()
        rank = int((diag > 1e-10 * float(diag.max().clamp_min(1e-300))).sum())
        q = q[:, :rank]
        proj = q @ q.T
        if complement:
            proj = torch.eye(a.shape[0], dtype=torch.float64) - proj
        dim = a.shape[0] - rank if complement else rank
        if dim < 1:
            raise ValueError("the subspace is {0}: its intersection with the sphere is empty")
        self.n = a.shape[0]
        self.dim = dim
        self.complement = bool(complement)
        self._proj = proj
        self._key = tuple(float(v) for v in proj.flatten())
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("n", self.n), ("projector", self._key))

    def __repr__(self) -> str:
        kind = "complement of a " if self.complement else ""
        return f"SphereSubspaceIntersection({kind}subspace of dimension {self.dim} in ℝ^{self.n})"

    def projector(self, like: Tensor) -> Tensor:
        """The orthogonal projector P onto the subspace, in ``like``'s dtype and device."""
        key = (like.dtype, like.device)
        p = self._cache.get(key)
        if p is None:
            p = self._proj.to(dtype=like.dtype, device=like.device)
            self._cache[key] = p
        return p

    def _p(self, u: Tensor) -> Tensor:
        return u @ self.projector(u)

    def projx(self, x: Tensor) -> Tensor:
        """Px / ‖Px‖."""
        return sphere_projx(self._p(x), -1)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Pu − ⟨x, Pu⟩ x."""
        pu = self._p(u)
        return pu - (x * pu).sum(-1, keepdim=True) * x

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """(x + u)/‖x + u‖ (kept in the subspace by P against rounding)."""
        return self.projx(x + u)

    def violation(self, x: Tensor) -> Tensor:
        """max of |‖x‖ − 1| and ‖x − Px‖."""
        off = torch.linalg.vector_norm(x - self._p(x), dim=-1).max()
        return torch.maximum(super().violation(x), off)

    def _random(self, shape: torch.Size, draw: Draw) -> Tensor:
        """Uniform points of the sub-sphere: P of a Gaussian vector, normalized."""
        return self.projx(draw.randn(shape))

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 1 or shape[-1] != self.n:
            return False, f"{self!r} needs a last dimension of {self.n}, got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        err = float((torch.linalg.vector_norm(x, dim=-1) - 1).abs().max())
        if err > atol + rtol:
            return False, _violation_reason("max |‖x‖ − 1|", err, atol + rtol)
        off = float(torch.linalg.vector_norm(x - self._p(x), dim=-1).max())
        if off > atol + rtol:
            return False, _violation_reason(
                "max ‖x − Px‖ (distance to the subspace)", off, atol + rtol
            )
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        ok, why = super()._check_vector(x, u, atol, rtol)
        if not ok:
            return ok, why
        off = float(torch.linalg.vector_norm(u - self._p(u), dim=-1).max())
        bound = atol + rtol * float(u.norm(dim=-1).max())
        if off > bound:
            return False, _violation_reason("max ‖u − Pu‖ (outside the subspace)", off, bound)
        return True, None
