"""ρ-sharpness of a model at its current parameters: worst-case, adaptive and average-case.

The sharpness of the loss :math:`L` at :math:`w` in a ball of radius :math:`\\rho` is how much
the loss can rise inside the ball,

.. math::

    S_\\rho(w) = \\max_{\\|T_w^{-1}\\delta\\|_2 \\le \\rho} L(w + \\delta) - L(w),

with :math:`T_w = I` for the plain (Keskar et al. 2017; Foret et al. 2021) and
:math:`T_w = \\mathrm{diag}(|w| + \\eta)` for the *adaptive*, scale-invariant version (Kwon et al.
2021, ASAM; Andriushchenko et al. 2023, "A modern look at the relationship between sharpness and
generalization"). The *average-case* sharpness replaces the max by an expectation over random
:math:`\\delta` (Andriushchenko et al. 2023, Sec. 2).

Conventions:

* ``data`` is one batch or several; the perturbation is shared by all of them, so the value is
  that of the concatenated data set (``m = n`` in the *m*-sharpness of Foret et al. 2021). For
  *m*-sharpness, call :func:`sharpness` once per batch of size *m* and average the values.
* the maximization is over the selected ``parameters`` (default: every parameter that requires
  grad); BatchNorm follows ``bn_mode`` (see :mod:`torchvalley.curvature.function`).
* the model is never modified.

Example:
    >>> model = torch.nn.Linear(3, 1, bias=False)
    >>> data = (torch.randn(16, 3), torch.zeros(16, 1))
    >>> result = sharpness(model, torch.nn.functional.mse_loss, data, rho=0.1)
    >>> result.kind, result.value >= 0.0
    ('worst', True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchvalley.curvature.function import (
    LossFunction,
    ParameterFunction,
    Vector,
    mask_seed,
    vector_add,
    vector_norm,
    vector_random,
    vector_scale,
)
from torchvalley.validation import (
    check_choice,
    check_int_at_least,
    check_non_negative,
    check_positive,
    check_positive_int,
)

__all__ = ["SharpnessResult", "sharpness"]

_KINDS = ("worst", "adaptive", "average")
_DISTRIBUTIONS = ("gaussian", "sphere")


@dataclasses.dataclass(frozen=True)
class SharpnessResult:
    """The outcome of :func:`sharpness`.

    Attributes:
        kind: ``"worst"``, ``"adaptive"`` or ``"average"``.
        rho: the radius ρ.
        value: the sharpness ``L(w + δ) − L(w)``: the largest rise found (worst, adaptive) or
            the mean rise over the samples (average).
        loss: ``L(w)``, the loss at the model's parameters.
        perturbed_loss: ``L(w + δ)`` at the maximizer, or the mean over the samples.
        delta_norm: the Euclidean norm ``‖δ‖₂`` of the maximizer in parameter space (for
            ``"adaptive"`` the constraint is on ``‖δ / (|w| + η)‖₂`` instead, so this may
            differ from ρ), or the mean norm of the samples.
        iterations: gradient-ascent steps taken, over all restarts (worst, adaptive), or the
            number of samples (average).
        std_error: the standard error of ``value`` (sample standard deviation over
            ``√n_samples``); ``None`` for the worst-case kinds.
        n_samples: the number of random perturbations (average), else ``None``.
        delta: the maximizer δ, shaped like the selected parameters (worst, adaptive), else
            ``None``.
    """

    kind: str
    rho: float
    value: float
    loss: float
    perturbed_loss: float
    delta_norm: float
    iterations: int
    std_error: float | None = None
    n_samples: int | None = None
    delta: Vector | None = dataclasses.field(default=None, repr=False, compare=False)


def sharpness(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Any,
    rho: float,
    kind: str = "worst",
    *,
    n_iters: int = 20,
    n_restarts: int = 1,
    step_size: float | None = None,
    eta: float = 0.0,
    n_samples: int = 100,
    distribution: str = "gaussian",
    parameters: Sequence[str] | None = None,
    bn_mode: str = "eval",
    generator: torch.Generator | None = None,
) -> SharpnessResult:
    """ρ-sharpness of ``model`` on ``data``: worst-case, adaptive worst-case or average-case.

    **Worst case** (``"worst"``; Keskar et al. 2017, Foret et al. 2021) and **adaptive**
    (``"adaptive"``; Kwon et al. 2021, Andriushchenko et al. 2023): with ``δ = T u``,
    ``T = 1`` (worst) or ``T = |w| + η`` elementwise (adaptive), maximize
    ``f(u) = L(w + T u)`` over ``‖u‖₂ ≤ ρ`` by projected normalized-gradient ascent::

        u ← start (see below);  s ← step_size (default 2ρ)
        repeat n_iters times:
            g ← T ∇L(w + T u)                      # ∇f(u), the chain rule through δ = T u
            u' ← Π(u + s g / ‖g‖)                  # Π: radial projection onto ‖u‖₂ ≤ ρ
            if f(u') > f(u): u ← u'                # accept an improvement
            else: s ← s / 2                        # halve the step on non-improvement

    The first restart starts at a tiny random ``u`` (norm ``10⁻³ρ``), so its first step is
    SAM's ascent step (Foret et al. 2021) yet a stationary point (e.g. an exact minimum) is not a
    fixed point; further restarts start uniformly on the sphere ``‖u‖₂ = ρ``. The reported
    maximizer is the best point evaluated, ``δ = 0`` included (so ``value ≥ 0``). On a
    quadratic the iteration is a shifted power iteration and converges to ``½ρ²λ_max``; in
    general it gives a lower bound of the true maximum (more iterations and restarts, a
    tighter one). This is the ℓ2 version of the APGD-based estimate of Andriushchenko et al.
    (2023), without momentum.

    **Average case** (``"average"``; Andriushchenko et al. 2023): the mean of
    ``L(w + δ) − L(w)`` over ``n_samples`` independent draws of

    * ``distribution="gaussian"``: ``δ ~ N(0, σ² I)`` with ``σ = ρ / √d`` (``d`` the number of
      selected scalars), so that ``E‖δ‖₂² = ρ²``; on a quadratic the value is ``½σ² tr(H)``;
    * ``distribution="sphere"``: ``δ`` uniform on the sphere ``‖δ‖₂ = ρ``; on a quadratic the
      value is ``½ρ² tr(H) / d``;

    with its standard error.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: one ``(inputs, targets)`` batch or an iterable of batches.
        rho: the radius ρ ≥ 0 (``0`` gives a sharpness of 0).
        kind: ``"worst"``, ``"adaptive"`` or ``"average"``.
        n_iters: ascent steps per restart (worst, adaptive).
        n_restarts: independent ascents; the best is reported (worst, adaptive).
        step_size: the initial step length in ``u`` (default ``2ρ``, as APGD's ``2ε``).
        eta: the offset η in ``T = |w| + η`` (adaptive). The default 0 is the ``|w|`` of
            Andriushchenko et al. (2023); ASAM (Kwon et al. 2021) uses 0.01.
        n_samples: random perturbations (average), at least 2.
        distribution: ``"gaussian"`` or ``"sphere"`` (average), see above.
        parameters: names of the parameters to perturb (default: all that require grad).
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        generator: the source of randomness (drawn on the CPU); ``None`` uses a generator
            seeded with 0, so repeated calls agree. With ``bn_mode="train"`` it also seeds the
            dropout masks (one fixed draw for every evaluation; the global RNG is untouched).

    Returns:
        A :class:`SharpnessResult`.

    Raises:
        ValueError: for a negative or non-finite ``rho``, an unknown ``kind`` or
            ``distribution``, non-positive ``n_iters``/``n_restarts``/``step_size``, negative
            ``eta``, ``n_samples < 2``, or bad ``data``/``parameters``/``bn_mode``.
    """
    check_non_negative("rho", rho)
    rho = float(rho)
    check_choice("kind", kind, _KINDS)
    check_positive_int("n_iters", n_iters)
    check_positive_int("n_restarts", n_restarts)
    if step_size is not None:
        check_positive("step_size", step_size)
    check_non_negative("eta", eta)
    check_int_at_least("n_samples", n_samples, 2)
    check_choice("distribution", distribution, _DISTRIBUTIONS)
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    seed = mask_seed(bn_mode, generator)
    function = ParameterFunction(
        model, loss_fn, data, parameters=parameters, bn_mode=bn_mode, seed=seed
    )
    point = function.point()
    with torch.no_grad():
        loss = float(function.loss(point))
    if kind == "average":
        return _average_case(function, point, loss, rho, n_samples, distribution, generator)
    scale = (
        tuple(torch.ones_like(p) for p in point)
        if kind == "worst"
        else tuple(p.abs() + eta for p in point)
    )
    return _worst_case(
        function,
        point,
        loss,
        rho,
        kind,
        scale,
        n_iters,
        n_restarts,
        2.0 * rho if step_size is None else float(step_size),
        generator,
    )


# -- worst case -------------------------------------------------------------------------------


def _value_and_gradient(function: ParameterFunction, params: Vector) -> tuple[float, Vector]:
    """``L(params)`` and ``∇L(params)`` in one pass per batch (batch-size weighted)."""
    value: torch.Tensor | None = None
    total: list[torch.Tensor] | None = None
    for weight, batch in zip(function.weights, function.batches, strict=True):
        grads, batch_value = torch.func.grad_and_value(
            lambda p, b=batch: function.batch_loss(p, b)
        )(params)
        # Summed as ParameterFunction.loss sums, so that δ = 0 reproduces L(w) exactly.
        term = weight * batch_value.detach()
        value = term if value is None else value + term
        scaled = [weight * g for g in grads]
        total = scaled if total is None else [t + s for t, s in zip(total, scaled, strict=True)]
    return float(value), tuple(total)


def _project(u: Vector, rho: float) -> Vector:
    """Radial projection onto the ball ``‖u‖₂ ≤ ρ``."""
    norm = float(vector_norm(u))
    return u if norm <= rho else vector_scale(u, rho / norm)


def _worst_case(
    function: ParameterFunction,
    point: Vector,
    loss: float,
    rho: float,
    kind: str,
    scale: Vector,
    n_iters: int,
    n_restarts: int,
    step_size: float,
    generator: torch.Generator,
) -> SharpnessResult:
    def delta_of(u: Vector) -> Vector:
        return tuple(t * x for t, x in zip(scale, u, strict=True))

    def evaluate(u: Vector) -> tuple[float, Vector]:
        value, gradient = _value_and_gradient(function, vector_add(point, delta_of(u)))
        return value, delta_of(gradient)  # ∇_u L(w + T u) = T ∇L

    # δ = 0 is in the ball: the maximum is at least L(w).
    best_value, best_delta = loss, tuple(torch.zeros_like(p) for p in point)
    iterations = 0
    if rho > 0.0:
        for restart in range(n_restarts):
            direction = vector_random(point, generator)
            norm = float(vector_norm(direction))
            radius = 1e-3 * rho if restart == 0 else rho
            u = vector_scale(direction, radius / norm) if norm > 0.0 else direction
            value, gradient = evaluate(u)
            if value > best_value:
                best_value, best_delta = value, delta_of(u)
            step = step_size
            for _ in range(n_iters):
                gradient_norm = float(vector_norm(gradient))
                if gradient_norm == 0.0 or step < 1e-9 * step_size:
                    break  # a stationary point of f, or no progress left to make
                candidate = _project(vector_add(u, gradient, step / gradient_norm), rho)
                candidate_value, candidate_gradient = evaluate(candidate)
                iterations += 1
                if candidate_value > value:
                    u, value, gradient = candidate, candidate_value, candidate_gradient
                    if value > best_value:
                        best_value, best_delta = value, delta_of(u)
                else:
                    step /= 2.0
    return SharpnessResult(
        kind=kind,
        rho=rho,
        value=best_value - loss,
        loss=loss,
        perturbed_loss=best_value,
        delta_norm=float(vector_norm(best_delta)),
        iterations=iterations,
        delta=best_delta,
    )


# -- average case -----------------------------------------------------------------------------


def _average_case(
    function: ParameterFunction,
    point: Vector,
    loss: float,
    rho: float,
    n_samples: int,
    distribution: str,
    generator: torch.Generator,
) -> SharpnessResult:
    dimension = sum(p.numel() for p in point)
    sigma = rho / math.sqrt(dimension)
    perturbed, norms = [], []
    with torch.no_grad():
        for _ in range(n_samples):
            noise = vector_random(point, generator)
            if distribution == "gaussian":
                delta = vector_scale(noise, sigma)
            else:
                norm = float(vector_norm(noise))
                delta = vector_scale(noise, rho / norm) if norm > 0.0 else noise
            perturbed.append(float(function.loss(vector_add(point, delta))))
            norms.append(float(vector_norm(delta)))
    values = torch.tensor(perturbed, dtype=torch.float64)
    rises = values - loss
    return SharpnessResult(
        kind="average",
        rho=rho,
        value=float(rises.mean()),
        loss=loss,
        perturbed_loss=float(values.mean()),
        delta_norm=sum(norms) / n_samples,
        iterations=n_samples,
        std_error=float(rises.std(correction=1)) / math.sqrt(n_samples),
        n_samples=n_samples,
    )
