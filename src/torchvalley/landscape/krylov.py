"""Krylov kernels on flat vectors: Lanczos with full reorthogonalisation, Ritz pairs and their
error bounds, power iteration with deflation and a shift.

``matvec`` is any ``(P,) -> (P,)`` symmetric product (a
:class:`~torchvalley.curvature.operator.CurvatureOperator`'s ``matvec_flat``). The algorithms,
their stopping rules and references are described in :mod:`torchvalley.landscape.spectrum`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "Basis",
    "LanczosState",
    "error_bounds",
    "lanczos",
    "orthogonalize",
    "power_iteration",
    "ritz",
    "tridiagonal",
    "wanted_indices",
]

_F64 = torch.float64
_DGKS = 1.0 / math.sqrt(2.0)
MatVec = Callable[[torch.Tensor], torch.Tensor]


def orthogonalize(vector: torch.Tensor, basis: torch.Tensor | None, times: int = 1):
    """``vector`` minus its projection on the orthonormal rows of ``basis``."""
    if basis is None or basis.shape[0] == 0:
        return vector
    for _ in range(times):
        vector = vector - basis.T @ (basis @ vector)
    return vector


class Basis:
    """Orthonormal rows ``q_0, q_1, ...`` in a buffer that doubles when full (so memory follows
    the steps actually taken, not ``max_iter``)."""

    def __init__(self, like: torch.Tensor, capacity: int) -> None:
        self.rows = torch.empty(
            max(1, capacity), like.numel(), dtype=like.dtype, device=like.device
        )
        self.count = 0

    def append(self, row: torch.Tensor) -> None:
        if self.count == self.rows.shape[0]:
            rows, columns = self.rows.shape
            grown = self.rows.new_empty(2 * rows, columns)
            grown[: self.count] = self.rows
            self.rows = grown
        self.rows[self.count] = row
        self.count += 1

    @property
    def matrix(self) -> torch.Tensor:
        return self.rows[: self.count]


def tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> torch.Tensor:
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=_F64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=_F64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t


def wanted_indices(values: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """Indices of the ``k`` wanted values, in output order."""
    keys = values if mode == "algebraic" else values.abs()
    return torch.argsort(keys, descending=True, stable=True)[:k]


@dataclasses.dataclass
class LanczosState:
    alphas: list[float]
    betas: list[float]  # betas[j] couples q_j and q_{j+1} (0.0 after a restart)
    basis: Basis
    last_beta: float  # the residual norm after the last step


def lanczos(
    matvec: MatVec,
    start: torch.Tensor,
    steps: int,
    *,
    restart: Callable[[], torch.Tensor] | None = None,
    stop: Callable[[LanczosState], bool] | None = None,
) -> LanczosState:
    """Lanczos with full reorthogonalisation (CGS2) for at most ``steps`` products.

    ``restart`` (if given) draws a new start vector after an exact breakdown; otherwise the
    iteration ends there. ``stop(state)`` is asked after every step that is not a breakdown.
    """
    dimension = start.numel()
    eps = torch.finfo(start.dtype).eps
    state = LanczosState([], [], Basis(start, min(steps, dimension, 16)), 0.0)
    q = start / torch.linalg.vector_norm(start)
    scale = 0.0
    for j in range(steps):
        state.basis.append(q)
        w = matvec(q)
        alpha = float(torch.dot(q, w))
        w = w - alpha * q
        if j > 0 and state.betas[j - 1] != 0.0:
            w = w - state.betas[j - 1] * state.basis.rows[j - 1]
        # Full reorthogonalisation, a second Gram–Schmidt pass only when the first removed much
        # of w (DGKS: ‖w'‖ < ‖w‖/√2; Daniel, Gragg, Kaufman & Stewart 1976, as in ARPACK).
        before = float(torch.linalg.vector_norm(w))
        w = orthogonalize(w, state.basis.matrix)
        beta = float(torch.linalg.vector_norm(w))
        if beta < _DGKS * before:
            w = orthogonalize(w, state.basis.matrix)
            beta = float(torch.linalg.vector_norm(w))
        state.alphas.append(alpha)
        state.last_beta = beta
        scale = max(scale, abs(alpha) + beta + (state.betas[-1] if state.betas else 0.0))
        exhausted = state.basis.count >= dimension
        breakdown = beta <= 100 * eps * max(scale, torch.finfo(start.dtype).tiny)
        if exhausted or (breakdown and restart is None):
            state.last_beta = 0.0
            break
        if not breakdown and stop is not None and stop(state):
            break
        if j == steps - 1:
            break
        if breakdown:
            assert restart is not None
            fresh = orthogonalize(restart(), state.basis.matrix, times=2)
            state.betas.append(0.0)
            state.last_beta = 0.0
            q = fresh / torch.linalg.vector_norm(fresh)
        else:
            state.betas.append(beta)
            q = w / beta
    return state


def ritz(state: LanczosState) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(tridiagonal(state.alphas, state.betas))
    return values, vectors


def power_iteration(
    matvec: MatVec,
    start: torch.Tensor,
    basis: torch.Tensor | None,
    shift: float,
    max_iter: int,
    tol: float,
) -> tuple[float, torch.Tensor, float, bool]:
    """Power iteration on ``(H − shift·I)`` restricted to the complement of ``basis``.

    Returns ``(λ, v, ‖Hv − λv‖, converged)`` with ``λ = vᵀHv`` the Rayleigh quotient of ``H``.
    """
    v = orthogonalize(start, basis)
    v = v / torch.linalg.vector_norm(v)
    previous: float | None = None
    value, residual, converged = 0.0, math.inf, False
    for _ in range(max_iter):
        product = matvec(v)
        value = float(torch.dot(v, product))
        residual = float(torch.linalg.vector_norm(product - value * v))
        w = orthogonalize(product, basis)
        shifted = w - shift * v if shift != 0.0 else w
        norm = float(torch.linalg.vector_norm(shifted))
        if norm == 0.0 or residual == 0.0:  # an exact eigenvector (or a zero operator)
            converged = True
            break
        if previous is not None and abs(value - previous) < tol * abs(value):
            converged = True
            break
        previous = value
        v = orthogonalize(shifted / norm, basis)
        v = v / torch.linalg.vector_norm(v)
    return value, v, residual, converged


def error_bounds(
    values: torch.Tensor,
    vectors: torch.Tensor,
    last_beta: float,
    wanted: torch.Tensor,
    eigenvalues_only: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residuals ``r_i = β_m |s_{m,i}|`` of the wanted Ritz pairs and bounds on the error of
    their Ritz values: ``r_i`` (an eigenvalue lies within ``r_i``, Krylov–Bogoliubov) and, for
    eigenvalues only, ``r_i²/δ_i`` with ``δ_i`` the distance to the nearest other Ritz value
    (Kato–Temple, with the gap estimated from the Ritz values; Parlett, *The symmetric
    eigenvalue problem*, §11-7): a Ritz value converges about twice as fast as its vector."""
    residuals = (last_beta * vectors[-1, wanted]).abs()
    if not eigenvalues_only or values.numel() < 2:
        return residuals, residuals
    distance = (values.reshape(1, -1) - values[wanted].reshape(-1, 1)).abs()
    distance[torch.arange(wanted.numel()), wanted] = math.inf
    gaps = distance.min(dim=1).values
    return residuals, torch.minimum(residuals, residuals**2 / gaps)
