"""The small deterministic training problems every clause runs on.

:func:`default_problem` (a tiny MLP with a LayerNorm) for ordinary entries, :func:`manifold_problem`
(Stiefel, sphere, Poincaré-ball and Lorentz parameters next to Euclidean ones) for
``manifold_aware`` entries; :func:`problem_for` picks between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import torch

from torchvalley.registry import OptimizerEntry


@dataclasses.dataclass
class Problem:
    """A small deterministic training problem.

    Attributes:
        model: the module whose parameters are optimized.
        loss_fn: ``loss_fn(model) -> scalar tensor``; must not touch the global RNG.
        unused: names (as in ``model.named_parameters()``) of parameters the loss does not use,
            so their ``grad`` stays ``None``.
    """

    model: torch.nn.Module
    loss_fn: Callable[[torch.nn.Module], torch.Tensor]
    unused: tuple[str, ...] = ()

    def loss(self) -> torch.Tensor:
        """The loss at the current parameters."""
        return self.loss_fn(self.model)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters in registration order."""
        return list(self.model.parameters())

    def used_and_unused(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """The parameters the loss uses and those it does not."""
        used, unused = [], []
        for name, parameter in self.model.named_parameters():
            (unused if name in self.unused else used).append(parameter)
        return used, unused

    def split(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """The parameters cut in two halves, for two param groups."""
        parameters = self.parameters()
        half = len(parameters) // 2
        if half == 0:
            raise AssertionError("the test problem needs at least two parameters")
        return parameters[:half], parameters[half:]

    def snapshot(self) -> list[torch.Tensor]:
        """Detached copies of the parameters."""
        return [p.detach().clone() for p in self.parameters()]


class ProblemFactory(Protocol):
    """``make_problem(dtype, *, with_unused=False) -> Problem``.

    The hook through which an entry that needs a different problem (e.g. a ``manifold_aware``
    optimizer whose parameters must live on a manifold) supplies one; every check accepts it as
    ``make_problem``. Two calls with the same arguments must return identical problems.
    """

    def __call__(self, dtype: torch.dtype, *, with_unused: bool = False) -> Problem: ...


class _TinyMLP(torch.nn.Module):
    """Linear(6, 5) -> tanh -> LayerNorm(5) -> Linear(5, 3), plus an optional parameter the
    forward ignores."""

    def __init__(self, dtype: torch.dtype, with_unused: bool, generator: torch.Generator):
        super().__init__()

        def draw(*shape: int, scale: float) -> torch.nn.Parameter:
            # Drawn in float64 from a private generator, then cast: the float32 and float64
            # problems start from the same values (up to rounding) and the global RNG is
            # untouched (nn.Linear's own init would consume it).
            values = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
            return torch.nn.Parameter(values.to(dtype))

        self.w1 = draw(5, 6, scale=0.5)
        self.b1 = draw(5, scale=0.1)
        # A LayerNorm with affine parameters, so optimizers that treat normalization layers
        # specially (SAM-ON) have some; found by module type, hence a real nn.LayerNorm.
        self.norm = torch.nn.LayerNorm(5, dtype=dtype)
        with torch.no_grad():
            self.norm.weight.copy_(1.0 + draw(5, scale=0.1))
            self.norm.bias.copy_(draw(5, scale=0.1))
        self.w2 = draw(3, 5, scale=0.5)
        self.b2 = draw(3, scale=0.1)
        # Drawn last so that the other parameters do not depend on ``with_unused``.
        self.unused = draw(4, scale=1.0) if with_unused else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(torch.tanh(inputs @ self.w1.T + self.b1))
        return hidden @ self.w2.T + self.b2


def default_problem(dtype: torch.dtype = torch.float32, *, with_unused: bool = False) -> Problem:
    """The default :class:`Problem`: a tiny MLP regressing fixed random targets (MSE).

    Args:
        dtype: dtype of the parameters and data.
        with_unused: add a parameter ``unused`` that the loss never touches.
    """
    generator = torch.Generator().manual_seed(0)
    model = _TinyMLP(dtype, with_unused, generator)
    inputs = torch.randn(16, 6, generator=generator, dtype=torch.float64).to(dtype)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64).to(dtype)

    def loss_fn(module: torch.nn.Module) -> torch.Tensor:
        return torch.nn.functional.mse_loss(module(inputs), targets)

    return Problem(model, loss_fn, unused=("unused",) if with_unused else ())


class _ManifoldModel(torch.nn.Module):
    """The tiny MLP's shape with its weights on manifolds, plus two hyperbolic embeddings.

    ``inputs @ stiefel`` (St(6, 4)) -> Linear -> tanh -> LayerNorm -> ``@ sphere.T`` (rows on
    S^4); the Poincaré-ball and Lorentz points enter the loss through their squared distances
    to fixed anchors. Euclidean parameters (bias, LayerNorm, linear weight) are mixed in, so a
    Riemannian optimizer's Euclidean and manifold paths both run.
    """

    def __init__(self, dtype: torch.dtype, with_unused: bool, generator: torch.Generator):
        super().__init__()
        from torchvalley.manifolds import (
            Lorentz,
            ManifoldParameter,
            PoincareBall,
            Sphere,
            Stiefel,
        )

        def draw(*shape: int, scale: float) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale

        def on(manifold: Any, *shape: int, scale: float = 1.0) -> torch.nn.Parameter:
            point = manifold.projx(draw(*shape, scale=scale))
            return ManifoldParameter(point.to(dtype), manifold, project=True)

        self.stiefel = on(Stiefel(), 6, 4)
        self.w1 = torch.nn.Parameter(draw(5, 4, scale=0.5).to(dtype))
        self.b1 = torch.nn.Parameter(draw(5, scale=0.1).to(dtype))
        self.norm = torch.nn.LayerNorm(5, dtype=dtype)
        self.sphere = on(Sphere(), 3, 5)
        self.ball = on(PoincareBall(), 4, 2, scale=0.3)
        self.lorentz = on(Lorentz(), 3, 3, scale=0.5)
        self.ball_anchors = PoincareBall().projx(draw(4, 2, scale=0.3)).to(dtype)
        self.lorentz_anchors = Lorentz().projx(draw(3, 3, scale=0.5)).to(dtype)
        self.unused = torch.nn.Parameter(draw(4, scale=1.0).to(dtype)) if with_unused else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(torch.tanh((inputs @ self.stiefel) @ self.w1.T + self.b1))
        return 2.0 * hidden @ self.sphere.T

    def hyperbolic_term(self) -> torch.Tensor:
        ball = self.ball.manifold.dist(self.ball, self.ball_anchors) ** 2
        lorentz = self.lorentz.manifold.dist(self.lorentz, self.lorentz_anchors) ** 2
        return 0.1 * (ball.mean() + lorentz.mean())


def manifold_problem(dtype: torch.dtype = torch.float32, *, with_unused: bool = False) -> Problem:
    """The :class:`Problem` of ``manifold_aware`` entries: parameters on Stiefel, Sphere,
    Poincaré ball and Lorentz manifolds next to Euclidean ones (MSE plus hyperbolic distances).

    Args:
        dtype: dtype of the parameters and data.
        with_unused: add a parameter ``unused`` that the loss never touches.
    """
    generator = torch.Generator().manual_seed(0)
    model = _ManifoldModel(dtype, with_unused, generator)
    inputs = torch.randn(16, 6, generator=generator, dtype=torch.float64).to(dtype)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64).to(dtype)

    def loss_fn(module: torch.nn.Module) -> torch.Tensor:
        assert isinstance(module, _ManifoldModel)
        return torch.nn.functional.mse_loss(module(inputs), targets) + module.hyperbolic_term()

    return Problem(model, loss_fn, unused=("unused",) if with_unused else ())


def problem_for(entry: OptimizerEntry) -> ProblemFactory:
    """The default problem factory of an entry: :func:`manifold_problem` for ``manifold_aware``
    entries, :func:`default_problem` otherwise."""
    return manifold_problem if entry.capabilities.manifold_aware else default_problem
