"""Damped, preconditioned linear conjugate gradient for Hessian-free optimization.

Solves ``A x = b`` for a symmetric positive (semi-)definite ``A`` given only as a product
``v ↦ A v`` (a :class:`~torchvalley.curvature.CurvatureOperator`, whose damping ``λ`` makes
``A = C + λI``, or any callable), by minimising the quadratic model

    φ(x) = ½ xᵀ A x − bᵀ x        (for Newton-type steps b = −∇L, so φ(x) = ½ xᵀAx + ∇Lᵀx).

The iteration (Hestenes & Stiefel 1952; with a preconditioner ``M`` as in Nocedal & Wright,
*Numerical Optimization*, Alg. 5.3)::

    r_0 = b − A x_0,  y_0 = M⁻¹ r_0,  p_0 = y_0
    α_i = r_iᵀ y_i / p_iᵀ A p_i                         # exact line minimum of φ along p_i
    x_{i+1} = x_i + α_i p_i,  r_{i+1} = r_i − α_i A p_i  # one product per iteration
    y_{i+1} = M⁻¹ r_{i+1},  β_i = r_{i+1}ᵀ y_{i+1} / r_iᵀ y_i,  p_{i+1} = y_{i+1} + β_i p_i

What Hessian-free optimization needs on top (Martens, *Deep learning via Hessian-free
optimization*, ICML 2010, §4):

* **Relative-progress stopping** (§4.4): stop at iteration ``i`` when ``φ(x_i) < 0`` and
  ``(φ(x_i) − φ(x_{i−k})) / φ(x_i) < k ε`` with ``k = max(10, ⌈0.1 i⌉)`` (``ε = 5·10⁻⁴``
  in the paper): the quadratic model stopped improving, long before the residual is small.
  ``φ`` is tracked for free: ``φ(x) = −½ xᵀ(b + r)`` since ``A x = b − r``.
* **The iterate path** (§4.6, "CG-backtracking"): the iterates at ``i = ⌈γ^j⌉`` (``γ = 1.3``)
  and the last one are returned, so the optimizer can step back to an earlier, shorter iterate
  when the last one is worse on the true loss.
* **Warm start** (§4.5): ``x_0`` = a decayed previous solution.
* **Preconditioning** (§4.7): ``M = (diag(Σ_i g_i ⊙ g_i) + λ)^ξ``, the diagonal of the
  empirical Fisher (per-example gradients ``g_i``) plus damping, to a power ``ξ = 0.75``; see
  :func:`martens_preconditioner`.

The iteration also stops when the residual is below ``residual_tol · ‖b‖`` (solved) and on a
direction of non-positive curvature ``p_iᵀ A p_i ≤ 0`` (``A`` indefinite, e.g. an undamped
Hessian: the current iterate is returned, as truncated-Newton methods do).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchvalley.validation import check_non_negative, check_positive

__all__ = ["CGResult", "conjugate_gradient", "martens_preconditioner"]

STOP_REASONS = ("residual", "relative_progress", "max_iter", "negative_curvature")


@dataclasses.dataclass
class CGResult:
    """The outcome of :func:`conjugate_gradient`.

    Attributes:
        solution: the last iterate ``x_n`` (same form as ``b``: flat tensor or tuple).
        iterations: ``n``, the number of CG iterations run (products with ``A`` not counting
            the one a warm start costs).
        products: products with ``A`` (``n``, plus one for a nonzero ``x0``).
        path: ``(i, x_i)`` for the stored iterates in increasing ``i``, the last entry being
            ``(n, x_n)`` (``x_0`` itself only when ``n = 0``).
        values: ``φ(x_i)`` for ``i = 0..n`` (Python floats).
        stop_reason: ``"residual"``, ``"relative_progress"``, ``"max_iter"`` or
            ``"negative_curvature"``.
    """

    solution: Any
    iterations: int
    products: int
    path: list[tuple[int, Any]]
    values: list[float]
    stop_reason: str

    @property
    def path_values(self) -> list[float]:
        """``φ`` at the stored iterates (same order as :attr:`path`)."""
        return [self.values[i] for i, _ in self.path]


def _path_indices(max_iter: int, growth: float) -> set[int]:
    """``{⌈γ^j⌉ : j ≥ 0} ∩ [1, max_iter]`` (Martens 2010, §4.6)."""
    indices, value = set(), 1.0
    while math.ceil(value) <= max_iter:
        indices.add(math.ceil(value))
        value *= growth
    return indices


def conjugate_gradient(
    matvec: Any,
    b: torch.Tensor | Sequence[torch.Tensor],
    *,
    x0: torch.Tensor | Sequence[torch.Tensor] | None = None,
    max_iter: int = 250,
    min_iter: int = 0,
    progress_tol: float | None = 5e-4,
    residual_tol: float = 1e-10,
    preconditioner: torch.Tensor | Sequence[torch.Tensor] | None = None,
    path: str = "geometric",
    path_growth: float = 1.3,
    initial_direction: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> CGResult:
    """Minimise ``φ(x) = ½xᵀAx − bᵀx`` (solve ``Ax = b``) by preconditioned CG.

    Args:
        matvec: ``A``: a :class:`~torchvalley.curvature.CurvatureOperator` (its damped
            product), or a callable ``v ↦ Av`` on vectors of the form of ``b``.
        b: the right-hand side: a flat tensor or a tuple of parameter-shaped tensors.
        x0: the starting point (warm start); default zero (no product spent on it).
        max_iter: at most this many iterations (``0``: return ``x0``).
        min_iter: the relative-progress rule is not applied before this iteration.
        progress_tol: ``ε`` of Martens' relative-progress rule; ``None`` switches it off.
        residual_tol: stop when ``‖r_i‖ ≤ residual_tol · ‖b‖``.
        preconditioner: the diagonal of ``M`` (positive, form of ``b``): every residual is
            divided by it; ``None``: ``M = I``.
        path: which iterates to return: ``"geometric"`` (``i = ⌈γ^j⌉`` and the last),
            ``"all"`` or ``"last"``.
        path_growth: ``γ > 1`` of the geometric path.
        initial_direction: the first search direction ``p_0`` instead of ``M⁻¹ r_0``; later
            directions are made ``A``-conjugate to it (the first step is the exact line
            minimum of ``φ`` along it).

    Returns:
        A :class:`CGResult`.

    Raises:
        ValueError: for a bad ``max_iter``, ``min_iter``, ``progress_tol``, ``residual_tol``,
            ``path``, ``path_growth`` or ``preconditioner``, or vectors whose shapes differ.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> result = conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0]).double())
        >>> result.iterations, result.stop_reason
        (2, 'residual')
        >>> torch.allclose(A @ result.solution, torch.tensor([1.0, 2.0]).double())
        True
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"Invalid max_iter: {max_iter!r} (a non-negative integer)")
    if isinstance(min_iter, bool) or not isinstance(min_iter, int) or min_iter < 0:
        raise ValueError(f"Invalid min_iter: {min_iter!r} (a non-negative integer)")
    if progress_tol is not None:
        check_positive("progress_tol", progress_tol)
    check_non_negative("residual_tol", residual_tol)
    if path not in ("geometric", "all", "last"):
        raise ValueError(f"Invalid path: {path!r} (one of 'geometric', 'all', 'last')")
    if not (
        isinstance(path_growth, (int, float)) and path_growth > 1 and math.isfinite(path_growth)
    ):
        raise ValueError(f"Invalid path_growth: {path_growth!r} (a finite number > 1)")

    structured = not isinstance(b, torch.Tensor)
    shapes = [t.shape for t in b] if structured else None

    def flat(v: Any, name: str) -> torch.Tensor:
        if structured:
            parts = tuple(v)
            if [t.shape for t in parts] != shapes:
                raise ValueError(f"Invalid {name}: its tensors' shapes differ from b's")
            return torch.cat([t.reshape(-1) for t in parts])
        if v.shape != b.shape:
            raise ValueError(f"Invalid {name}: shape {tuple(v.shape)}, b has {tuple(b.shape)}")
        return v.reshape(-1)

    def shaped(v: torch.Tensor) -> Any:
        if not structured:
            return v.reshape(b.shape)
        numels = [math.prod(s) for s in shapes]
        return tuple(p.reshape(s) for p, s in zip(torch.split(v, numels), shapes, strict=True))

    apply = _flat_product(matvec, structured, flat, shaped)
    b_flat = flat(b, "b")
    dtype, device = b_flat.dtype, b_flat.device
    inverse_m = None
    if preconditioner is not None:
        diag = flat(preconditioner, "preconditioner").to(dtype=dtype, device=device)
        if not bool(torch.all(diag > 0)) or not bool(torch.all(torch.isfinite(diag))):
            raise ValueError("Invalid preconditioner: entries must be finite and positive")
        inverse_m = 1.0 / diag

    products = 0
    if x0 is None:
        x = torch.zeros_like(b_flat)
        r = b_flat.clone()
    else:
        x = flat(x0, "x0").to(dtype=dtype, device=device).clone()
        if bool(torch.any(x != 0)):
            r = b_flat - apply(x)
            products += 1
        else:
            r = b_flat.clone()
    y = r if inverse_m is None else inverse_m * r
    if initial_direction is not None:
        p = flat(initial_direction, "initial_direction").to(dtype=dtype, device=device).clone()
    else:
        p = y.clone()
    ry = torch.dot(r, y)

    def phi() -> float:
        return float(-0.5 * torch.dot(x, b_flat + r))

    values = [phi()]
    b_norm = float(torch.linalg.vector_norm(b_flat))
    stored = _path_indices(max_iter, path_growth) if path == "geometric" else set()
    kept: list[tuple[int, torch.Tensor]] = []
    reason = "max_iter"
    i = 0
    if float(torch.linalg.vector_norm(r)) <= residual_tol * b_norm:
        reason = "residual"
    else:
        while i < max_iter:
            ap = apply(p)
            products += 1
            curvature = torch.dot(p, ap)
            if not float(curvature) > 0:
                reason = "negative_curvature"
                break
            if initial_direction is not None and i == 0:
                alpha = torch.dot(r, p) / curvature  # line minimum along a given direction
            else:
                alpha = ry / curvature
            x.add_(p, alpha=float(alpha))
            r.sub_(ap, alpha=float(alpha))
            i += 1
            values.append(phi())
            if path == "all" or i in stored:
                kept.append((i, x.clone()))
            if float(torch.linalg.vector_norm(r)) <= residual_tol * b_norm:
                reason = "residual"
                break
            k = max(10, math.ceil(0.1 * i))
            if (
                progress_tol is not None
                and i > k
                and i >= min_iter
                and values[i] < 0
                and (values[i] - values[i - k]) / values[i] < k * progress_tol
            ):
                reason = "relative_progress"
                break
            y = r if inverse_m is None else inverse_m * r
            if initial_direction is not None and i == 1:
                # keep p_1 A-conjugate to the given p_0: β = −(A p_0)ᵀ y_1 / p_0ᵀ A p_0
                beta = -torch.dot(ap, y) / curvature
                ry_next = torch.dot(r, y)
            else:
                ry_next = torch.dot(r, y)
                beta = ry_next / ry
            p = y + float(beta) * p
            ry = ry_next
    if not kept or kept[-1][0] != i:
        kept.append((i, x.clone()))
    if path == "last":
        kept = kept[-1:]
    return CGResult(
        solution=shaped(x),
        iterations=i,
        products=products,
        path=[(j, shaped(v)) for j, v in kept],
        values=values,
        stop_reason=reason,
    )


def _flat_product(
    matvec: Any, structured: bool, flat: Callable[..., torch.Tensor], shaped: Callable[..., Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``A`` as a map on flat vectors."""
    if hasattr(matvec, "matvec_flat"):  # a CurvatureOperator
        return matvec.matvec_flat
    if not callable(matvec):
        raise ValueError(f"Invalid matvec: {matvec!r} is not callable")

    def apply(v: torch.Tensor) -> torch.Tensor:
        return flat(matvec(shaped(v)), "A v")

    return apply


def martens_preconditioner(
    squared_gradient_sum: torch.Tensor | Sequence[torch.Tensor],
    damping: float,
    exponent: float = 0.75,
) -> Any:
    """Martens' (2010, §4.7) diagonal preconditioner ``(diag(Σ_i g_i²) + λ)^ξ``.

    Args:
        squared_gradient_sum: ``Σ_i g_i ⊙ g_i`` over the examples (or its mean: the
            diagonal of the empirical Fisher; the paper sums, which only rescales ``M``),
            a flat tensor or a tuple of parameter-shaped tensors.
        damping: ``λ ≥ 0`` (the optimizer's current damping).
        exponent: ``ξ ∈ [0, 1]``: ``0`` is no preconditioning, ``1`` the full diagonal.

    Returns:
        The diagonal of ``M`` in the form of the input (pass it as ``preconditioner``).

    Raises:
        ValueError: for a negative ``damping`` or an ``exponent`` outside ``[0, 1]``.
    """
    check_non_negative("damping", damping)
    if not (isinstance(exponent, (int, float)) and 0 <= exponent <= 1):
        raise ValueError(f"Invalid exponent: {exponent!r} (in [0, 1])")
    tiny = 1e-30  # a coordinate with no gradient and no damping would make M singular

    def one(t: torch.Tensor) -> torch.Tensor:
        return (t + damping).clamp_min(tiny).pow(exponent)

    if isinstance(squared_gradient_sum, torch.Tensor):
        return one(squared_gradient_sum)
    return tuple(one(t) for t in squared_gradient_sum)
