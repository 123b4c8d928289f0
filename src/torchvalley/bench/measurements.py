"""Landscape measurements as training-loop hooks.

Each callback is an epoch callback of the benchmark harness
(:func:`torchvalley.bench.runner.run_one` / ``run_sweep``, ``callbacks=[...]``): at the end of
every ``every``-th epoch (epoch 0 is before training) it measures the model on a fixed subset of
the training data and returns named numbers, which the runner stores in the results store's
``measurements`` table. They work in any loop too: call ``callback.measure(model, loss_fn,
batch)`` yourself.

Example:
    >>> from torchvalley.bench.runner import run_one
    >>> from torchvalley.bench.measurements import HessianEigenvaluesCallback
    >>> result = run_one("quadratic", "sgd:lr=0.05", seed=0, epochs=2, progress=False,
    ...                  callbacks=[HessianEigenvaluesCallback(every=2, examples=200)])
    >>> sorted({name for _, name, _ in result.measurements})
    ['hessian_lambda_1']
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from torchvalley.curvature.function import Batch, LossFunction

__all__ = [
    "GradientConcentrationCallback",
    "HessianEigenvaluesCallback",
    "HessianTraceCallback",
    "LandscapeCallback",
    "SharpnessCallback",
]


class LandscapeCallback(abc.ABC):
    """Base class: when to measure and on which data; subclasses define :meth:`measure`.

    Args:
        every: measure at epochs ``0, every, 2·every, ...``.
        examples: the first ``examples`` training examples form the measurement batch (fixed,
            so measurements at different epochs are comparable).
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        seed: seed of the measurement's own randomness (probe vectors, restarts).
    """

    def __init__(
        self, *, every: int = 1, examples: int = 1000, bn_mode: str = "eval", seed: int = 0
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Invalid every: {every!r} (an integer >= 1)")
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError(f"Invalid examples: {examples!r} (an integer >= 1)")
        if bn_mode not in ("eval", "train"):
            raise ValueError(f"Invalid bn_mode: {bn_mode!r} (one of 'eval', 'train')")
        self.every = every
        self.examples = examples
        self.bn_mode = bn_mode
        self.seed = seed

    def __call__(self, context: Any) -> Mapping[str, float] | None:
        """The runner's hook: measure at the right epochs, on the fixed training subset."""
        if context.epoch % self.every:
            return None
        inputs, targets = context.data.train
        batch = (inputs[: self.examples], targets[: self.examples])
        return self.measure(context.model, context.task.loss_fn, batch)

    @abc.abstractmethod
    def measure(self, model: nn.Module, loss_fn: LossFunction, batch: Batch) -> dict[str, float]:
        """The measurement itself: ``{name: value}``."""

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


class HessianEigenvaluesCallback(LandscapeCallback):
    """Top-``k`` Hessian eigenvalues (Lanczos, largest algebraic): ``hessian_lambda_1..k``."""

    def __init__(self, k: int = 1, *, max_iter: int = 100, **options: Any) -> None:
        super().__init__(**options)
        self.k = k
        self.max_iter = max_iter

    def measure(self, model, loss_fn, batch):
        from torchvalley.landscape import hessian_eigenvalues

        result = hessian_eigenvalues(
            model,
            loss_fn,
            batch,
            k=self.k,
            max_iter=self.max_iter,
            bn_mode=self.bn_mode,
            generator=self._generator(),
        )
        return {f"hessian_lambda_{i + 1}": float(v) for i, v in enumerate(result.eigenvalues)}


class HessianTraceCallback(LandscapeCallback):
    """Hutchinson's trace: ``hessian_trace`` and its ``hessian_trace_se``."""

    def __init__(self, samples: int = 50, **options: Any) -> None:
        super().__init__(**options)
        self.samples = samples

    def measure(self, model, loss_fn, batch):
        from torchvalley.landscape import hessian_trace

        result = hessian_trace(
            model,
            loss_fn,
            batch,
            samples=self.samples,
            bn_mode=self.bn_mode,
            generator=self._generator(),
        )
        return {"hessian_trace": result.estimate, "hessian_trace_se": result.standard_error}


class SharpnessCallback(LandscapeCallback):
    """ρ-sharpness ``sharpness_{kind}`` (worst, adaptive or average case)."""

    def __init__(self, rho: float = 0.05, kind: str = "worst", **options: Any) -> None:
        super().__init__(**options)
        self.rho = rho
        self.kind = kind

    def measure(self, model, loss_fn, batch):
        from torchvalley.landscape.sharpness import sharpness

        result = sharpness(
            model,
            loss_fn,
            batch,
            self.rho,
            kind=self.kind,
            bn_mode=self.bn_mode,
            generator=self._generator(),
        )
        return {f"sharpness_{self.kind}": result.value}


class GradientConcentrationCallback(LandscapeCallback):
    """von Mises–Fisher concentration of minibatch gradient directions (Lee et al. 2018):
    ``vmf_kappa`` and the uniform-direction null's upper quantile ``vmf_kappa_null``, from the
    measurement subset cut into minibatches of ``batch_size``."""

    def __init__(self, batch_size: int = 50, **options: Any) -> None:
        options.setdefault("bn_mode", "train")
        super().__init__(**options)
        self.batch_size = batch_size

    def measure(self, model, loss_fn, batch):
        from torchvalley.landscape import vmf_concentration

        inputs, targets = batch
        batches = [
            (inputs[i : i + self.batch_size], targets[i : i + self.batch_size])
            for i in range(0, inputs.shape[0] - self.batch_size + 1, self.batch_size)
        ]
        result = vmf_concentration(model, loss_fn, batches, bn_mode=self.bn_mode, seed=self.seed)
        values = {"vmf_kappa": float(result.overall.kappa)}
        null = getattr(result.overall, "null", None)
        if null is not None:
            values["vmf_kappa_null"] = float(null.kappa_upper)
        return values
