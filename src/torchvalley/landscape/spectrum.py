"""The Hessian's spectrum without forming it: top eigenvalues, trace and eigenvalue density.

Every function here takes a :class:`~torchvalley.curvature.operator.CurvatureOperator` first,
the way SciPy takes a ``LinearOperator``: one operator (one gradient graph, with the
``"double_backward"`` strategy) serves every call::

    op = CurvatureOperator.of(model, loss_fn, data, bn_mode="eval", curvature="hessian")
    hessian_eigenvalues(op, k=1); hessian_trace(op, samples=50)
    spectral_density(op, lanczos_steps=80)

The earlier form ``f(model, loss_fn, data, ..., bn_mode=, parameters=, strategy=, curvature=,
per_example_loss=)`` builds the operator from those options and still works. The conventions
are those of :mod:`torchvalley.curvature.function` (``loss_fn(outputs, targets)`` a mean loss;
``data`` a batch or an iterable of batches, averaged by batch size; ``bn_mode``; a parameter
subset by name); ``curvature="gauss_newton"`` or ``"fisher"`` analyses those matrices instead.
Computation runs in the parameters' dtype and on their device; returned eigenvalues, trace
samples and quadrature nodes are float64 CPU tensors. The Krylov kernels are in
:mod:`torchvalley.landscape.krylov`.

* :func:`hessian_eigenvalues`: the ``k`` largest eigenvalues, either *algebraic* (``λ_max``
  first, the most positive) or by *magnitude* (largest ``|λ|`` first, negative ones included, as
  PyHessian reports), by

  - **Lanczos** (Lanczos, *An iteration method for the solution of the eigenvalue problem of
    linear differential and integral operators*, J. Res. NBS 1950) with full
    reorthogonalisation (classical Gram–Schmidt, a second pass when the first cancels, DGKS):
    ``m`` products give a tridiagonal ``T_m = Q_mᵀ H Q_m``; its eigenpairs ``(θ_i, s_i)``
    (``torch.linalg.eigh``) are Ritz pairs ``(θ_i, Q_m s_i)`` with residual
    ``r_i = ‖H y_i − θ_i y_i‖ = β_m |s_{m,i}|``. Iteration stops as soon as the requested
    relative accuracy ``tol`` is reached: every wanted Ritz value has an error bound
    ``≤ tol·|θ_i|``, at two consecutive steps and after at least ``2k + 4`` steps. The bound is
    ``min(r_i, r_i²/δ_i)`` for eigenvalues (``δ_i`` the distance to the nearest other Ritz value;
    Kato–Temple), ``r_i`` when eigenvectors are returned. Ritz values converge about twice as
    fast as residuals, so this stops at about half the products of a residual test, and far
    fewer than power iteration at the same accuracy. The start vector is ``ĝ + r̂`` by default
    (the unit loss gradient, which lies mostly in the top eigenvectors' span, plus a unit
    Gaussian vector; ``start="random"`` for the Gaussian alone): a 0.47M-parameter CNN at
    initialisation needs 6 products against 12 from a Gaussian start and 21 for PyHessian tuned
    with hindsight to error ≤ 1e-3 (``benchmarks/hessian_speed.py``, ``--mode starts`` for ten
    workloads). The two-step, ``2k + 4`` guard is there because ``δ_i``
    comes from the Ritz values, which an eigenvalue not yet found fools (synthetic spectra with
    λ_max 10–15 % above a cluster: one test at one step stopped on the cluster in up to 8 of 90
    runs, the guarded test in none; with a 3–5 % gap both can, as any Krylov method can miss an
    eigenvalue its start vector barely sees). On an exact
    breakdown (an invariant Krylov subspace, e.g. a low-rank Hessian) it restarts from a random
    vector orthogonal to the basis, so repeated eigenvalues are found once per restart. Memory:
    the ``m × P`` basis.
  - **power iteration** with deflation, as in PyHessian (Yao et al., *PyHessian*, IEEE BigData
    2020): ``v ← Hv/‖Hv‖`` with ``v`` orthogonalised (Gram–Schmidt) against the eigenvectors
    found so far; the estimate is the Rayleigh quotient ``vᵀHv`` and an eigenvalue is accepted
    when it changes by less than ``tol`` relatively between iterations (PyHessian's rule).
    Power iteration converges to the largest ``|λ|``; for ``mode="algebraic"``, whenever that
    is negative (``λ_-``), the iteration is rerun on ``H − λ_- I``, whose spectrum on the
    deflated subspace is ``≥ 0`` and whose top eigenvector is ``H``'s algebraic top (a spectral
    shift; the shift is kept for the remaining eigenvalues).

* :func:`hessian_trace`: Hutchinson's estimator ``tr H = E[zᵀHz]`` with Rademacher ``z``
  (Hutchinson, *A stochastic estimator of the trace of the influence matrix for Laplacian
  smoothing splines*, Comm. Stat. Simul. Comput. 1989), the mean of ``samples`` draws with its
  standard error ``std/√n``.

* :func:`spectral_density`: stochastic Lanczos quadrature (Ubaru, Chen & Saad, *Fast
  estimation of tr(f(A)) via stochastic Lanczos quadrature*, SIAM J. Matrix Anal. Appl. 2017;
  as used by Ghorbani, Krishnan & Xiao 2019 and PyHessian): for each of ``n_probes`` unit
  Rademacher vectors ``v``, ``m`` Lanczos steps give the Gauss quadrature rule of the measure
  ``Σ_i (vᵀu_i)² δ_{λ_i}`` — nodes ``θ_j`` (eigenvalues of ``T_m``) and weights ``s_{1j}²``
  (squared first components of its eigenvectors; Golub & Welsch, *Calculation of Gauss
  quadrature rules*, Math. Comp. 1969) — exact for polynomials of degree ``≤ 2m − 1``, and
  ``E[Σ_j w_j f(θ_j)] = tr f(H)/P``. :meth:`SpectralDensity.density` smooths the rule with
  Gaussians; :func:`~torchvalley.landscape.surfaces.plots.plot_spectral_density` draws it on
  a log-density axis like PyHessian.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from torchvalley.curvature.function import Vector, mask_seed
from torchvalley.curvature.operator import CurvatureOperator
from torchvalley.landscape import krylov
from torchvalley.validation import check_choice, check_int_at_least, check_positive_int

__all__ = [
    "METHODS",
    "MODES",
    "HessianEigenResult",
    "HessianTrace",
    "SpectralDensity",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
]

METHODS = ("lanczos", "power")
STARTS = ("gradient", "random")
MODES = ("algebraic", "magnitude")

_F64 = torch.float64
DEFAULT_TOL = {"lanczos": 1e-3, "power": 1e-4}
"""The default ``tol`` of :func:`hessian_eigenvalues` per method (see its docstring)."""
MatVec = Callable[[torch.Tensor], torch.Tensor]


# -- results ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HessianEigenResult:
    """Top eigenvalues from :func:`hessian_eigenvalues`.

    Attributes:
        eigenvalues: ``(k,)`` float64; descending (``mode="algebraic"``) or by descending
            magnitude (``mode="magnitude"``).
        eigenvectors: ``k`` unit vectors (tuples of parameter-shaped tensors), when asked for
            with ``return_vectors=True``; else ``None``.
        residuals: ``(k,)`` float64 ``‖Hv − λv‖`` per eigenpair (power: measured at the last
            iterate; Lanczos: the Ritz estimate ``β_m |s_{m,i}|``).
        converged: per eigenvalue, whether the stopping rule was met within ``max_iter``.
        hvp_count: curvature-vector products used.
        method: ``"lanczos"`` or ``"power"``.
        mode: ``"algebraic"`` or ``"magnitude"``.
    """

    eigenvalues: torch.Tensor
    eigenvectors: tuple[Vector, ...] | None
    residuals: torch.Tensor
    converged: tuple[bool, ...]
    hvp_count: int
    method: str
    mode: str


@dataclasses.dataclass(frozen=True)
class HessianTrace:
    """Hutchinson's trace estimate from :func:`hessian_trace`.

    Attributes:
        estimate: the mean of the samples ``zᵀHz``.
        standard_error: ``std(samples, ddof=1)/√n``.
        samples: ``n``, the number of probe vectors.
        values: ``(n,)`` float64, the samples ``zᵀHz``.
        dimension: ``P``, the number of parameters (``estimate/P`` is the mean eigenvalue).
    """

    estimate: float
    standard_error: float
    samples: int
    values: torch.Tensor
    dimension: int


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature rules from :func:`spectral_density`.

    Probe ``p``'s rule is ``Σ_j weights[p, j] f(nodes[p, j]) ≈ vᵀf(H)v``; the average over the
    probes estimates ``tr f(H)/P``. Probes whose Krylov space was exhausted before
    ``lanczos_steps`` are padded with zero weights.

    Attributes:
        nodes: ``(n_probes, m)`` float64 Ritz values, ascending per probe.
        weights: ``(n_probes, m)`` float64, non-negative, each row summing to 1.
        dimension: ``P``, the number of parameters.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    dimension: int

    @property
    def n_probes(self) -> int:
        return int(self.nodes.shape[0])

    def moment(self, power: int) -> torch.Tensor:
        """Per-probe estimates ``Σ_j w_j θ_j^power`` of ``tr(H^power)/P``, shape ``(n_probes,)``."""
        return (self.weights * self.nodes**power).sum(dim=1)

    def default_sigma(self) -> float:
        """PyHessian's kernel width: variance ``1e-5·max(1, λ_max − λ_min)`` of the nodes."""
        width = float(self.nodes.max() - self.nodes.min())
        return math.sqrt(1e-5 * max(1.0, width))

    def grid(self, points: int = 10000, sigma: float | None = None) -> torch.Tensor:
        """An evenly spaced float64 grid over ``[min node − 5σ, max node + 5σ]`` (+ 1 % margin)."""
        sigma = self.default_sigma() if sigma is None else float(sigma)
        low, high = float(self.nodes.min()), float(self.nodes.max())
        margin = 0.01 * (high - low) + 5.0 * sigma
        return torch.linspace(low - margin, high + margin, int(points), dtype=_F64)

    def density(
        self, grid: torch.Tensor | Sequence[float], sigma: float | None = None
    ) -> torch.Tensor:
        """The Gaussian-smoothed spectral density on ``grid``.

        ``φ(t) = (1/n_probes) Σ_p Σ_j w_pj N(t; θ_pj, σ²)``, which integrates to 1 (each Gaussian
        is normalised analytically, not on the grid).

        Args:
            grid: evaluation points.
            sigma: the kernel's standard deviation (default :meth:`default_sigma`).

        Returns:
            A float64 tensor shaped like ``grid``.
        """
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if not sigma > 0:
            raise ValueError(f"Invalid sigma: {sigma!r} (must be > 0)")
        points = torch.as_tensor(grid, dtype=_F64)
        if points.numel() == 0:
            return points.clone()
        nodes, weights = self.nodes.reshape(1, -1), self.weights.reshape(1, -1)
        norm = self.n_probes * sigma * math.sqrt(2 * math.pi)
        values = [
            (torch.exp(-0.5 * ((chunk.reshape(-1, 1) - nodes) / sigma) ** 2) * weights).sum(dim=1)
            for chunk in points.reshape(-1).split(1024)
        ]
        return (torch.cat(values) / norm).reshape(points.shape)


# -- argument handling ------------------------------------------------------------------------


def _make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("Invalid arguments: pass generator or seed, not both")
    if generator is not None:
        return generator
    if seed is None:  # follow the global RNG (reproducible under torch.manual_seed)
        seed = int(torch.randint(0, 2**62, ()))
    return torch.Generator().manual_seed(int(seed))


_OPERATOR_OPTIONS = ("bn_mode", "parameters", "strategy", "curvature", "per_example_loss")


def _accepts_model(function: Callable[..., Any]) -> Callable[..., Any]:
    """Also accept the earlier form ``f(model, loss_fn, data, ..., bn_mode=..., parameters=...,
    strategy=..., curvature=..., per_example_loss=...)``: a wrapper that builds the operator with
    :meth:`CurvatureOperator.of` and calls ``f(operator, ...)``."""

    @functools.wraps(function)
    def wrapper(operator: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(operator, CurvatureOperator):
            misplaced = sorted(set(kwargs) & set(_OPERATOR_OPTIONS))
            if misplaced:
                raise ValueError(
                    f"Invalid arguments: {', '.join(misplaced)} configure the operator; pass "
                    "them to CurvatureOperator.of(model, loss_fn, data, ...)"
                )
            return function(operator, *args, **kwargs)
        if not isinstance(operator, nn.Module) or len(args) < 2:
            raise ValueError(
                f"Invalid arguments: expected a CurvatureOperator or (model, loss_fn, data), got "
                f"{type(operator).__name__} and {len(args)} more positional argument(s)"
            )
        loss_fn, data, *rest = args
        options = {name: kwargs.pop(name) for name in _OPERATOR_OPTIONS if name in kwargs}
        generator, seed = kwargs.get("generator"), kwargs.get("seed")
        mask = None
        if options.get("bn_mode", "eval") == "train":
            if generator is None and seed is None:  # one draw from the global RNG, as before
                kwargs["seed"] = seed = int(torch.randint(0, 2**62, ()))
            mask = seed if seed is not None or generator is None else mask_seed("train", generator)
        op = CurvatureOperator.of(operator, loss_fn, data, seed=mask, **options)
        return function(op, *rest, **kwargs)

    return wrapper


def _gaussian(op: CurvatureOperator, generator: torch.Generator) -> torch.Tensor:
    sample = torch.randn(op.dimension, generator=generator, dtype=op.dtype)
    return sample.to(op.device)


def _unit_gradient(op: CurvatureOperator) -> torch.Tensor | None:
    """``∇L/‖∇L‖`` at the operator's point, or ``None`` where the gradient is 0 or not finite."""
    gradient = op.gradient_flat().to(dtype=op.dtype, device=op.device)
    norm = torch.linalg.vector_norm(gradient)
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return None
    return gradient / norm


def _start(
    op: CurvatureOperator, generator: torch.Generator, unit_gradient: torch.Tensor | None
) -> torch.Tensor:
    """The first Krylov vector: ``ĝ + r̂`` (unit loss gradient plus a unit Gaussian draw) for
    ``start="gradient"``, the Gaussian ``r`` alone for ``"random"`` or a zero gradient.
    The gradient of a network's loss lies mostly in the span of the Hessian's top eigenvectors
    (Gur-Ari, Roberts & Dyer, *Gradient descent happens in a tiny subspace*, 2018), so the
    Krylov space holds them after fewer products; the random half keeps every eigenvector's
    weight in the start vector away from 0, as a random start does."""
    sample = _gaussian(op, generator)
    if unit_gradient is None:
        return sample
    return unit_gradient + sample / torch.linalg.vector_norm(sample)


def _rademacher(op: CurvatureOperator, generator: torch.Generator) -> torch.Tensor:
    bits = torch.randint(0, 2, (op.dimension,), generator=generator)
    return (bits.to(op.dtype) * 2 - 1).to(op.device)


# -- eigenvalues ------------------------------------------------------------------------------


@_accepts_model
def hessian_eigenvalues(
    operator: CurvatureOperator,
    k: int = 1,
    *,
    method: str = "lanczos",
    mode: str = "algebraic",
    max_iter: int = 100,
    tol: float | None = None,
    return_vectors: bool = False,
    start: str = "gradient",
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> HessianEigenResult:
    """The ``k`` largest eigenvalues of the Hessian (algebraic or by magnitude).

    See the module docstring for the algorithms (Lanczos 1950; power iteration with deflation
    and a spectral shift, as PyHessian, Yao et al. 2020).

    Args:
        operator: the curvature operator (:meth:`CurvatureOperator.of`); its products are
            counted in ``operator.products``. The earlier form ``(model, loss_fn, data, ...,
            bn_mode=, parameters=, strategy=, curvature=, per_example_loss=)`` still works: it
            builds the operator with those options (see :meth:`CurvatureOperator.of`).
        k: how many eigenvalues.
        method: ``"lanczos"`` (default) or ``"power"``.
        mode: ``"algebraic"`` (largest values, ``λ_max`` first) or ``"magnitude"`` (largest
            ``|λ|`` first; PyHessian's convention).
        max_iter: Lanczos: the most Lanczos steps (products; capped at ``P``, must be ``≥ k``);
            power: the most iterations (products) per eigenvalue and per shift.
        tol: the requested accuracy (``tol=0`` runs exactly ``max_iter`` products; default
            :data:`DEFAULT_TOL`: ``1e-3`` for Lanczos, ``1e-4`` for power). Lanczos: stop when
            every wanted eigenvalue's error bound is ``≤ tol·|λ|`` relatively (the residual
            ``‖Hv − λv‖`` itself with ``return_vectors=True``; see the module docstring);
            power: stop when the Rayleigh quotient changes by less than ``tol`` relatively
            (PyHessian's rule, which does not bound the error: slow convergence looks
            converged).
        return_vectors: also return the unit eigenvectors.
        start: the start vector. ``"gradient"`` (default): the unit loss gradient at the point
            plus a unit Gaussian vector (read from the gradient graph the products use, so no
            extra pass for one batch; a plain Gaussian where the gradient is 0), which reaches
            a given accuracy with fewer products on networks; ``"random"``: a Gaussian vector
            (PyHessian's choice). Every power-iteration vector (one per eigenvalue) starts the
            same way.
        generator: CPU ``torch.Generator`` for the start vectors.
        seed: seed of a new generator (instead of ``generator``); with neither, a seed is drawn
            from the global RNG.

    Returns:
        A :class:`HessianEigenResult`.

    Raises:
        ValueError: for an invalid ``k`` (not in ``1..P``), ``method``, ``mode``, ``max_iter``,
            ``tol`` or ``start`` (and, in the model form, ``bn_mode``, ``strategy`` or
            ``curvature``).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
        ...                             torch.nn.Linear(4, 1)).double()
        >>> data = (torch.randn(16, 3).double(), torch.randn(16, 1).double())
        >>> op = CurvatureOperator.of(model, torch.nn.functional.mse_loss, data)
        >>> result = hessian_eigenvalues(op, k=2, seed=0)
        >>> result.eigenvalues.shape, all(result.converged)
        (torch.Size([2]), True)
        >>> float(hessian_trace(op, samples=50, seed=0).estimate) > 0  # the same graph
        True
    """
    check_choice("method", method, METHODS)
    check_choice("mode", mode, MODES)
    check_choice("start", start, STARTS)
    check_positive_int("k", k)
    check_positive_int("max_iter", max_iter)
    if tol is None:
        tol = DEFAULT_TOL[method]
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"Invalid tol: {tol!r} (a number ≥ 0)")
    op, first = operator, operator.products
    rng = _make_generator(generator, seed)
    if k > op.dimension:
        raise ValueError(f"Invalid k: {k} (more than the {op.dimension} parameters)")
    if method == "lanczos" and max_iter < k:
        raise ValueError(f"Invalid max_iter: {max_iter} (Lanczos needs at least k = {k})")
    unit_gradient = _unit_gradient(op) if start == "gradient" else None
    if method == "lanczos":
        values, vectors, residuals, converged = _lanczos_top(
            op, k, mode, max_iter, tol, rng, return_vectors, unit_gradient
        )
    else:
        values, vectors, residuals, converged = _power_top(
            op, k, mode, max_iter, tol, rng, unit_gradient
        )
    eigenvectors = tuple(op.unflatten(v) for v in vectors) if return_vectors else None
    return HessianEigenResult(
        eigenvalues=torch.tensor(values, dtype=_F64),
        eigenvectors=eigenvectors,
        residuals=torch.tensor(residuals, dtype=_F64),
        converged=tuple(converged),
        hvp_count=op.products - first,
        method=method,
        mode=mode,
    )


def _lanczos_top(
    op: CurvatureOperator,
    k: int,
    mode: str,
    max_iter: int,
    tol: float,
    rng: torch.Generator,
    return_vectors: bool,
    unit_gradient: torch.Tensor | None,
) -> tuple[list[float], list[torch.Tensor], list[float], list[bool]]:
    floor = 100 * torch.finfo(op.dtype).eps  # relative accuracy the arithmetic allows

    def check(state: krylov.LanczosState):
        values, vectors = krylov.ritz(state)
        wanted = krylov.wanted_indices(values, k, mode)
        residuals, bounds = krylov.error_bounds(
            values, vectors, state.last_beta, wanted, not return_vectors
        )
        # converged: error ≤ tol·|θ_i| (or at the rounding level of ‖T‖)
        limits = tol * values[wanted].abs()
        if tol > 0:
            limits = limits.clamp(min=floor * float(values.abs().max()))
        return values, vectors, wanted, residuals, bounds <= limits

    passed = [False]  # the test's outcome at the previous step

    def stop(state: krylov.LanczosState) -> bool:
        # The gap estimate is trusted only when the test holds at two consecutive steps and
        # after 2k + 4 steps: a Ritz value that a new one is about to overtake (an eigenvalue
        # missed so far, e.g. λ_max above a cluster) fails it.
        now = bool(check(state)[-1].all())
        done = now and passed[0] and len(state.alphas) >= 2 * k + 4
        passed[0] = now
        return done

    state = krylov.lanczos(
        op.matvec_flat,
        _start(op, rng, unit_gradient),
        min(max_iter, op.dimension),
        restart=lambda: _gaussian(op, rng),
        stop=stop,
    )
    values, vectors, wanted, residuals, converged = check(state)
    eigenvectors = []
    if return_vectors:
        basis = state.basis.matrix
        for index in wanted.tolist():
            y = basis.T @ vectors[:, index].to(dtype=basis.dtype, device=basis.device)
            eigenvectors.append(y / torch.linalg.vector_norm(y))
    return values[wanted].tolist(), eigenvectors, residuals.tolist(), converged.tolist()


def _power_top(
    op: CurvatureOperator,
    k: int,
    mode: str,
    max_iter: int,
    tol: float,
    rng: torch.Generator,
    unit_gradient: torch.Tensor | None,
) -> tuple[list[float], list[torch.Tensor], list[float], list[bool]]:
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    residuals: list[float] = []
    converged: list[bool] = []
    shift = 0.0
    for _ in range(k):
        basis = torch.stack(vectors) if vectors else None
        value, vector, residual, ok = krylov.power_iteration(
            op.matvec_flat, _start(op, rng, unit_gradient), basis, shift, max_iter, tol
        )
        if mode == "algebraic" and shift == 0.0 and value < 0.0:
            # The dominant eigenvalue of the rest is negative: every remaining eigenvalue is
            # ≥ value, so H − value·I is PSD there and its top eigenvector is the algebraic top.
            shift = value
            value, vector, residual, ok = krylov.power_iteration(
                op.matvec_flat, _start(op, rng, unit_gradient), basis, shift, max_iter, tol
            )
        values.append(value)
        vectors.append(vector)
        residuals.append(residual)
        converged.append(ok)
    if mode == "algebraic":
        order = sorted(range(k), key=lambda i: -values[i])
    else:
        order = sorted(range(k), key=lambda i: -abs(values[i]))
    return (
        [values[i] for i in order],
        [vectors[i] for i in order],
        [residuals[i] for i in order],
        [converged[i] for i in order],
    )


# -- trace ------------------------------------------------------------------------------------


@_accepts_model
def hessian_trace(
    operator: CurvatureOperator,
    *,
    samples: int = 100,
    probes_per_pass: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> HessianTrace:
    """Hutchinson's estimate of ``tr H`` with its standard error (Hutchinson 1989).

    ``tr H ≈ (1/n) Σ_i z_iᵀ H z_i`` with ``n = samples`` Rademacher vectors ``z_i`` (entries
    ±1, each draw's variance is ``2 Σ_{a≠b} H_ab²``); the standard error is the sample standard
    deviation over ``√n``.

    Args:
        operator: the curvature operator (:meth:`CurvatureOperator.of`); its products are
            counted in ``operator.products``. The earlier form ``(model, loss_fn, data, ...,
            bn_mode=, parameters=, strategy=, curvature=, per_example_loss=)`` still works: it
            builds the operator with those options (see :meth:`CurvatureOperator.of`).
        samples: number of probe vectors ``n`` (``≥ 2``).
        probes_per_pass: Hessian products computed together (batched backward or
            ``vmap``); the probes and the result do not depend on it.
        generator: CPU ``torch.Generator`` for the probes.
        seed: seed of a new generator instead; with neither, drawn from the global RNG.

    Returns:
        A :class:`HessianTrace`.

    Raises:
        ValueError: for invalid ``samples``, ``probes_per_pass``, ``bn_mode``, ``strategy`` or
            ``curvature``.
    """
    check_int_at_least("samples", samples, 2)
    check_positive_int("probes_per_pass", probes_per_pass)
    op = operator
    rng = _make_generator(generator, seed)
    values = []
    for start in range(0, samples, probes_per_pass):
        probes = torch.stack(
            [_rademacher(op, rng) for _ in range(min(probes_per_pass, samples - start))]
        )
        products = op.matmat_flat(probes)
        values.append((probes * products).sum(dim=1).to(device="cpu", dtype=_F64))
    draws = torch.cat(values)
    return HessianTrace(
        estimate=float(draws.mean()),
        standard_error=float(draws.std(correction=1) / math.sqrt(samples)),
        samples=samples,
        values=draws,
        dimension=op.dimension,
    )


# -- spectral density -------------------------------------------------------------------------


@_accepts_model
def spectral_density(
    operator: CurvatureOperator,
    *,
    n_probes: int = 1,
    lanczos_steps: int = 100,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ubaru et al. 2017).

    For each probe (a unit Rademacher vector ``v``), ``m = lanczos_steps`` steps of Lanczos with
    full reorthogonalisation give ``T_m``; its eigenvalues are the quadrature nodes and the
    squared first components of its eigenvectors the weights (Golub & Welsch 1969).

    Args:
        operator: the curvature operator (:meth:`CurvatureOperator.of`); its products are
            counted in ``operator.products``. The earlier form ``(model, loss_fn, data, ...,
            bn_mode=, parameters=, strategy=, curvature=, per_example_loss=)`` still works: it
            builds the operator with those options (see :meth:`CurvatureOperator.of`).
        n_probes: number of probe vectors.
        lanczos_steps: Lanczos steps per probe (capped at ``P``; fewer if the Krylov space of a
            probe is exhausted).
        generator: CPU ``torch.Generator`` for the probes.
        seed: seed of a new generator instead; with neither, drawn from the global RNG.

    Returns:
        A :class:`SpectralDensity` (``n_probes × m`` nodes and weights).

    Raises:
        ValueError: for invalid ``n_probes``, ``lanczos_steps``, ``bn_mode``, ``strategy`` or
            ``curvature``.
    """
    check_positive_int("n_probes", n_probes)
    check_positive_int("lanczos_steps", lanczos_steps)
    op = operator
    rng = _make_generator(generator, seed)
    steps = min(lanczos_steps, op.dimension)
    nodes = torch.zeros(n_probes, steps, dtype=_F64)
    weights = torch.zeros(n_probes, steps, dtype=_F64)
    for probe in range(n_probes):
        state = krylov.lanczos(op.matvec_flat, _rademacher(op, rng), steps)
        values, vectors = krylov.ritz(state)
        m = values.shape[0]
        nodes[probe, :m] = values
        nodes[probe, m:] = values[-1]
        weights[probe, :m] = vectors[0] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, dimension=op.dimension)
