"""The two-layer ReLU neural tangent kernel of Du, Zhai, Póczos & Singh (ICLR 2019).

Du et al., "Gradient descent provably optimizes over-parameterized neural networks"
(arXiv:1810.02054), study

    f(W, a, x) = (1/√m) Σ_{r=1}^m a_r σ(w_rᵀx),   σ = ReLU,

with ``w_r(0) ~ N(0, I)``, ``a_r ~ Unif{−1, +1}`` fixed (only ``W`` is trained) and the loss
``L(W) = ½ Σ_i (f(W, a, x_i) − y_i)²`` on inputs with ``‖x_i‖ = 1``. The predictions
``u_i = f(W, a, x_i)`` follow ``u̇ = H(t)(y − u)`` with the Gram matrix

    H_ij(t) = (1/m) x_iᵀx_j Σ_r 1{w_r(t)ᵀx_i ≥ 0, w_r(t)ᵀx_j ≥ 0},

whose expectation at initialisation is

    H∞_ij = E_{w ~ N(0, I)}[x_iᵀx_j 1{wᵀx_i ≥ 0, wᵀx_j ≥ 0}] = x_iᵀx_j (π − arccos(x_iᵀx_j)) / (2π)

(the two half-spaces intersect in a wedge of angle ``π − θ_ij``). ``λ₀ = λ_min(H∞) > 0`` when no
two inputs are parallel (their Section 3). With width ``m = Ω(n⁶/(λ₀⁴δ³))`` and step
``η = O(λ₀/n²)``, gradient descent converges linearly, ``‖y − u(k)‖² ≤ (1 − ηλ₀/2)^k
‖y − u(0)‖²`` (their gradient-descent theorem, Section 4), every neuron stays within
``R' = O(√n ‖y − u(0)‖ / (√m λ₀))`` of its initialisation, few activation patterns change, and
``λ_min(H(k)) ≥ λ₀/2`` throughout.

This module gives the closed form ``H∞`` and the finite-width ``H`` (:func:`ntk_gram`),
``λ₀`` (:func:`ntk_lambda0`), the network in the paper's parametrisation
(:class:`TwoLayerReLU`) and a gradient-descent harness recording the quantities of the theorems
and of the paper's Section 5 experiments (:func:`train_two_layer_relu`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = [
    "NTKTrajectory",
    "TwoLayerReLU",
    "ntk_gram",
    "ntk_lambda0",
    "train_two_layer_relu",
]

_CHUNK = 65_536


class TwoLayerReLU(nn.Module):
    """``f(x) = (1/√m) Σ_r a_r ReLU(w_rᵀx)``, the network of Du et al. (ICLR 2019).

    ``weight`` (``m × d``, rows ``w_r``) is the only parameter, drawn ``N(0, I)``; the output
    weights ``a_r ∈ {−1, +1}`` are a fixed buffer ``output_weights``, uniformly random.

    Args:
        in_features: input dimension ``d``.
        width: number of hidden neurons ``m``.
        generator: random source of the initialisation (CPU; default the global one).
        dtype: parameter dtype (default torch's default dtype).
        device: parameter device.

    Example:
        >>> net = TwoLayerReLU(3, 100, generator=torch.Generator().manual_seed(0))
        >>> net(torch.eye(3)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or width < 1:
            raise ValueError(f"Invalid sizes: in_features={in_features}, width={width}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        weight = torch.randn(width, in_features, generator=generator, dtype=dtype)
        signs = torch.randint(0, 2, (width,), generator=generator).to(dtype) * 2 - 1
        self.weight = nn.Parameter(weight.to(device))
        self.register_buffer("output_weights", signs.to(device))

    @property
    def width(self) -> int:
        """The number of hidden neurons ``m``."""
        return self.weight.shape[0]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The predictions ``u = f(x)`` of shape ``(n,)`` for inputs of shape ``(n, d)``."""
        hidden = torch.relu(inputs @ self.weight.T)
        return hidden @ self.output_weights / math.sqrt(self.width)

    def activation_pattern(self, inputs: torch.Tensor) -> torch.Tensor:
        """``1{w_rᵀx_i ≥ 0}`` as a boolean ``(n, m)`` tensor (the paper's convention at 0)."""
        return (inputs @ self.weight.detach().T) >= 0


def _check_inputs(inputs: torch.Tensor) -> None:
    if inputs.ndim != 2 or inputs.shape[0] == 0:
        raise ValueError(f"Invalid inputs: expected a non-empty (n, d) matrix, got {inputs.shape}")
    if bool(torch.any(torch.linalg.vector_norm(inputs, dim=1) == 0)):
        raise ValueError("Invalid inputs: a zero input has no direction")


def _angles(x: torch.Tensor) -> torch.Tensor:
    """Pairwise angles ``θ_ij = 2 atan2(‖x̂_i − x̂_j‖, ‖x̂_i + x̂_j‖)`` of the rows of ``x``.

    Unlike ``arccos(x̂_iᵀx̂_j)``, which loses half the digits for nearly (anti)parallel pairs
    (an error ``≈ √eps`` that can make ``H∞`` indefinite), this is accurate to rounding.
    """
    unit = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    n, d = unit.shape
    rows = max(1, 2**22 // max(1, n * d))
    blocks = []
    for start in range(0, n, rows):
        block = unit[start : start + rows, None, :]
        minus = torch.linalg.vector_norm(block - unit[None], dim=2)
        plus = torch.linalg.vector_norm(block + unit[None], dim=2)
        blocks.append(2 * torch.atan2(minus, plus))
    return torch.cat(blocks)


def ntk_gram(
    inputs: torch.Tensor, weights: torch.Tensor | TwoLayerReLU | None = None
) -> torch.Tensor:
    """The Gram matrix ``H∞`` (infinite width) or ``H`` (given hidden weights) of Du et al.

    Without ``weights``, the closed form

        ``H∞_ij = x_iᵀx_j (π − θ_ij) / (2π)``,  ``θ_ij = arccos(x_iᵀx_j / (‖x_i‖‖x_j‖))``,

    which is the paper's ``x_iᵀx_j (π − arccos(x_iᵀx_j)) / (2π)`` for unit inputs (the
    indicator only sees directions, so the normalised angle is the right one in general; the
    angle is computed as ``2 atan2(‖x̂_i − x̂_j‖, ‖x̂_i + x̂_j‖)``, accurate for nearly parallel
    pairs where ``arccos`` loses half the digits). With
    ``weights`` ``W`` (``m × d``, or a :class:`TwoLayerReLU`), the finite-width

        ``H_ij = (1/m) x_iᵀx_j Σ_r 1{w_rᵀx_i ≥ 0, w_rᵀx_j ≥ 0}``,

    an average of ``m`` terms in ``[min(0, x_iᵀx_j), max(0, x_iᵀx_j)]`` whose mean is ``H∞_ij``
    when ``w_r ~ N(0, I)``.

    Args:
        inputs: ``(n, d)`` non-zero inputs (the paper takes ``‖x_i‖ = 1``).
        weights: hidden weights ``W`` of shape ``(m, d)`` or the network; ``None`` for ``H∞``.

    Returns:
        The symmetric positive semi-definite ``(n, n)`` matrix, in the inputs' dtype.

    Raises:
        ValueError: on a non-2-D or zero input, or weights of the wrong shape.

    Example:
        >>> ntk_gram(torch.eye(2, dtype=torch.float64))
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]], dtype=torch.float64)
    """
    _check_inputs(inputs)
    x = inputs.detach()
    gram = x @ x.T
    if weights is None:
        return gram * (math.pi - _angles(x)) / (2 * math.pi)
    w = weights.weight if isinstance(weights, TwoLayerReLU) else weights
    w = w.detach().to(dtype=x.dtype, device=x.device)
    if w.ndim != 2 or w.shape[1] != x.shape[1] or w.shape[0] == 0:
        raise ValueError(
            f"Invalid weights: expected (m, {x.shape[1]}) hidden weights, got {tuple(w.shape)}"
        )
    counts = torch.zeros_like(gram)
    for start in range(0, w.shape[0], _CHUNK):
        active = ((x @ w[start : start + _CHUNK].T) >= 0).to(x.dtype)
        counts += active @ active.T
    return gram * counts / w.shape[0]


def ntk_lambda0(inputs: torch.Tensor) -> float:
    """``λ₀ = λ_min(H∞)``, the least eigenvalue of :func:`ntk_gram` ``(inputs)``.

    Positive when no two inputs are parallel (Du et al., Section 3); it sets both the
    convergence rate ``1 − ηλ₀/2`` and the admissible step ``η = O(λ₀/n²)``.
    """
    gram = ntk_gram(inputs)
    return float(torch.linalg.eigvalsh(gram.to(torch.float64))[0])


@dataclasses.dataclass
class NTKTrajectory:
    """What :func:`train_two_layer_relu` recorded.

    Attributes:
        lr: the step size ``η`` used.
        lambda0: ``λ₀ = λ_min(H∞)`` of the training inputs.
        width: the number of hidden neurons ``m``.
        loss: ``L(k) = ½‖y − u(k)‖²`` for every step ``k = 0..steps`` (``u(k)`` the predictions
            after ``k`` updates).
        record_steps: the steps ``k`` at which the quantities below were recorded.
        lambda_min: ``λ_min(H(k))``.
        max_movement: ``max_r ‖w_r(k) − w_r(0)‖`` (the paper's Figure "maximum distances from
            initialization").
        frobenius_movement: ``‖W(k) − W(0)‖_F``.
        pattern_change: the fraction of pairs ``(r, i)`` with
            ``1{w_r(k)ᵀx_i ≥ 0} ≠ 1{w_r(0)ᵀx_i ≥ 0}`` (the paper's "pattern changes").
        neurons_changed: the fraction of neurons ``r`` whose pattern changed on some input.
    """

    lr: float
    lambda0: float
    width: int
    loss: list[float] = dataclasses.field(default_factory=list)
    record_steps: list[int] = dataclasses.field(default_factory=list)
    lambda_min: list[float] = dataclasses.field(default_factory=list)
    max_movement: list[float] = dataclasses.field(default_factory=list)
    frobenius_movement: list[float] = dataclasses.field(default_factory=list)
    pattern_change: list[float] = dataclasses.field(default_factory=list)
    neurons_changed: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """``1 − ηλ₀/2``, the per-step contraction guaranteed by Du et al.'s GD theorem."""
        return 1.0 - self.lr * self.lambda0 / 2

    def rate_bound(self) -> list[float]:
        """The bound ``L(0)(1 − ηλ₀/2)^k`` on ``L(k)`` for ``k = 0..steps``."""
        return [self.loss[0] * self.rate**k for k in range(len(self.loss))]


def train_two_layer_relu(
    model: TwoLayerReLU,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    lr: float | None = None,
    record_every: int = 1,
) -> NTKTrajectory:
    """Full-batch gradient descent on ``L = ½ Σ_i (f(x_i) − y_i)²`` over the hidden weights.

    The update is the paper's,

        ``w_r ← w_r − η (1/√m) a_r Σ_i (u_i − y_i) 1{w_rᵀx_i ≥ 0} x_i``,

    computed in closed form (the ReLU derivative at 0 is taken as 1, as in the paper; the
    output weights never change). Note the *summed* squared loss of the paper, unlike the mean
    losses elsewhere in :mod:`torchvalley.landscape`. ``model.weight`` is updated in place.

    Args:
        model: the network (trained in place).
        inputs: ``(n, d)`` inputs (the theory assumes ``‖x_i‖ = 1`` and no two parallel).
        targets: ``(n,)`` targets.
        steps: number of gradient steps.
        lr: step size ``η``; default ``λ₀/n²``, the paper's ``η = O(λ₀/n²)`` with constant 1.
        record_every: record ``λ_min(H(k))`` and the movement statistics every this many
            steps (and at the last step); the loss is recorded at every step.

    Returns:
        An :class:`NTKTrajectory`.

    Raises:
        ValueError: on bad shapes, ``steps < 0``, ``record_every < 1`` or ``lr ≤ 0``.
    """
    _check_inputs(inputs)
    if targets.shape != (inputs.shape[0],):
        raise ValueError(f"Invalid targets: expected shape ({inputs.shape[0]},)")
    if steps < 0 or record_every < 1:
        raise ValueError(f"Invalid steps={steps} or record_every={record_every}")
    weight = model.weight
    x = inputs.detach().to(dtype=weight.dtype, device=weight.device)
    y = targets.detach().to(dtype=weight.dtype, device=weight.device)
    lambda0 = ntk_lambda0(x)
    lr = lambda0 / x.shape[0] ** 2 if lr is None else float(lr)
    if not lr > 0:
        raise ValueError(f"Invalid lr: {lr}")
    a = model.output_weights
    scale = 1.0 / math.sqrt(model.width)
    trajectory = NTKTrajectory(lr=lr, lambda0=lambda0, width=model.width)
    with torch.no_grad():
        initial = weight.detach().clone()
        initial_pattern = (x @ initial.T) >= 0
        for step in range(steps + 1):
            pre = x @ weight.T
            active = pre >= 0
            residual = (pre.clamp_min(0) @ a) * scale - y
            trajectory.loss.append(0.5 * float(residual @ residual))
            if step % record_every == 0 or step == steps:
                movement = weight - initial
                changed = active != initial_pattern
                gram = (x @ x.T) * (active.to(x.dtype) @ active.to(x.dtype).T) / model.width
                trajectory.record_steps.append(step)
                trajectory.lambda_min.append(
                    float(torch.linalg.eigvalsh(gram.to(torch.float64))[0])
                )
                trajectory.max_movement.append(
                    float(torch.linalg.vector_norm(movement, dim=1).max())
                )
                trajectory.frobenius_movement.append(float(torch.linalg.vector_norm(movement)))
                trajectory.pattern_change.append(float(changed.to(torch.float64).mean()))
                trajectory.neurons_changed.append(
                    float(changed.any(dim=0).to(torch.float64).mean())
                )
            if step == steps:
                break
            # ∂L/∂w_r = (1/√m) a_r Σ_i (u_i − y_i) 1{w_rᵀx_i ≥ 0} x_i, for all r at once.
            gradient = ((active.to(x.dtype) * residual[:, None]) * a).T @ x * scale
            weight.sub_(lr * gradient)
    return trajectory
