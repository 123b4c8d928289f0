"""The ``quadratic`` task: a stochastic quadratic with a known Hessian.

``quadratic``
    A stochastic quadratic with a known Hessian (closed form, see :func:`quadratic_problem`):
    ``L(θ) = mean_i ½ (θ − x_i)ᵀ H (θ − x_i)`` with ``x_i ~ N(θ*, I)``, ``d = 50`` and
    eigenvalues of ``H`` log-spaced from 0.01 to 1. The Hessian of every mini-batch loss is
    exactly ``H``; the metric is the exact excess loss ``½ (θ − θ*)ᵀ H (θ − θ*)``. ``H`` and ``θ*``
    are fixed task constants (problem seed 0); ``data_seed`` only changes the sampled noise.

Adam (lr 1e-2) and SGD (lr 0.01-0.05, momentum 0.9) reach the target within ``default_epochs``.
"""

from __future__ import annotations

import torch
from torch import nn

from torchvalley.bench.task import Task, TaskData, register_task

__all__ = [
    "QUADRATIC_DIM",
    "QUADRATIC_PROBLEM_SEED",
    "QUADRATIC_TEST",
    "QUADRATIC_TRAIN",
    "QuadraticModel",
    "load_quadratic",
    "quadratic_problem",
]

QUADRATIC_DIM = 50
QUADRATIC_PROBLEM_SEED = 0
QUADRATIC_TRAIN = 2000
QUADRATIC_TEST = 50


def quadratic_problem(
    seed: int = QUADRATIC_PROBLEM_SEED, dim: int = QUADRATIC_DIM
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The quadratic's Hessian ``H = Q diag(λ) Qᵀ`` and minimizer ``θ*``, in float64.

    ``λ`` is log-spaced from 0.01 to 1 (ascending); ``Q`` is a Haar-random orthogonal matrix (QR
    of a Gaussian matrix with the signs of ``R``'s diagonal fixed) and ``θ* ~ N(0, I)``, both drawn
    from a generator seeded with ``seed``. The ``quadratic`` task uses ``seed = 0``.

    Args:
        seed: seed of the problem.
        dim: dimension ``d``.

    Returns:
        ``(H, theta_star, eigenvalues, Q)`` with shapes ``(d, d)``, ``(d,)``, ``(d,)``, ``(d, d)``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))
    theta_star = torch.randn(dim, generator=generator, dtype=torch.float64)
    eigenvalues = torch.logspace(-2, 0, dim, dtype=torch.float64)
    hessian = (q * eigenvalues) @ q.T
    hessian = (hessian + hessian.T) / 2
    return hessian, theta_star, eigenvalues, q


_HESSIAN, _THETA_STAR, _EIGENVALUES, _ = quadratic_problem()
_HESSIAN_FP32 = _HESSIAN.to(torch.float32)


class QuadraticModel(nn.Module):
    """One parameter ``θ ∈ R^d`` (default init ``N(0, I)``); ``forward(x) = θ − x``."""

    def __init__(self, dim: int = QUADRATIC_DIM) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Residuals ``θ − x_i`` of shape ``(B, d)`` for samples of shape ``(B, d)``."""
        return self.theta - inputs


def _quadratic_form(residuals: torch.Tensor) -> torch.Tensor:
    """Per-row ``½ rᵀ H r`` for residuals of shape ``(B, d)``."""
    hessian = _HESSIAN_FP32.to(device=residuals.device, dtype=residuals.dtype)
    return 0.5 * ((residuals @ hessian) * residuals).sum(dim=1)


def _quadratic_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``½ (θ − x_i)ᵀ H (θ − x_i)``; ``targets`` are unused dummies."""
    del targets
    return _quadratic_form(outputs).mean()


def _quadratic_excess_loss(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of ``½ rᵀ H r`` over the rows; on the test set (``x_i = θ*``) the exact excess loss."""
    del targets
    return _quadratic_form(outputs.detach()).mean().item()


def load_quadratic(data_seed: int) -> TaskData:
    """Noisy samples of the optimum for training, the exact optimum for testing.

    Training inputs are ``x_i = θ* + ε_i − mean(ε)`` with ``ε_i ~ N(0, I)`` (2000 samples, drawn in
    float64 from ``data_seed``): re-centring makes the full training loss minimal exactly at
    ``θ*``. Test inputs are 50 copies of ``θ*``, so the model's test outputs are ``θ − θ*`` and
    the metric is exactly the excess loss. ``H`` and ``θ*`` do not depend on ``data_seed``.

    Args:
        data_seed: seed of the sampling noise.

    Returns:
        float32 inputs of shape ``(N, 50)`` and float32 dummy targets (zeros) of shape ``(N,)``.
    """
    generator = torch.Generator().manual_seed(int(data_seed))
    noise = torch.randn(QUADRATIC_TRAIN, QUADRATIC_DIM, generator=generator, dtype=torch.float64)
    train_inputs = _THETA_STAR + (noise - noise.mean(dim=0))
    test_inputs = _THETA_STAR.expand(QUADRATIC_TEST, QUADRATIC_DIM)
    return TaskData(
        train=(train_inputs.to(torch.float32), torch.zeros(QUADRATIC_TRAIN)),
        test=(test_inputs.to(torch.float32).clone(), torch.zeros(QUADRATIC_TEST)),
    )


register_task(
    Task(
        name="quadratic",
        description=(
            "Stochastic quadratic, d=50, Hessian eigenvalues log-spaced 0.01..1; metric: exact "
            "excess loss ½(θ−θ*)ᵀH(θ−θ*)"
        ),
        model_name="single parameter vector θ ∈ R^50",
        build_model=QuadraticModel,
        load_data=load_quadratic,
        loss_fn=_quadratic_loss,
        metric_name="excess_loss",
        metric_fn=_quadratic_excess_loss,
        higher_is_better=False,
        target=1e-2,
        batch_size=50,
        default_epochs=50,
        default_data_seed=0,
        reference="closed form: L(θ) = E ½(θ−x)ᵀH(θ−x), x ~ N(θ*, I); see quadratic_problem",
        info={
            "dim": QUADRATIC_DIM,
            "problem_seed": QUADRATIC_PROBLEM_SEED,
            "hessian_eigenvalues": tuple(_EIGENVALUES.tolist()),
            "minimizer": tuple(_THETA_STAR.tolist()),
            "condition_number": 100.0,
            "train_size": QUADRATIC_TRAIN,
            "test_size": QUADRATIC_TEST,
        },
    )
)
