r"""ABS / ABSA: Hessian-driven adaptive batch size, with FGSM adversarial training.

Paper: Z. Yao, A. Gholami, D. Arfeen, R. Liaw, J. Gonzalez, K. Keutzer & M. Mahoney, *Large
Batch Size Training of Neural Networks with Adversarial Training and Second-Order Information*,
arXiv:1810.01021 (2018). Reference code: amirgholami/HessianFlow (``optimizer/absa.py``).

Once per epoch the top Hessian eigenvalue λ of the loss on one fixed batch is computed (our
Lanczos, :func:`torchvalley.landscape.hessian_eigenvalues`, in eval mode). Then, at the end of
epoch e (:meth:`AdaptiveBatchSchedule.end_epoch`):

.. code-block:: text

    if r < r_max:                                    # tracking stops at the largest batch
        if λ_ref is None:        λ_ref ← λ                         # the first measurement
        elif λ ≤ λ_ref / c:      grow ("flatter")                  # the landscape got flatter
        else: s ← s + 1;  if s ≥ duration: grow ("duration")     # forced growth
    grow:  r' = min(r_max, ⌊c r⌋);  lr_scale ← lr_scale · r'/r   # linear LR scaling
           a ← a · r/r';  r ← r';  λ_ref ← λ;  s ← 0
           if r = r_max: a ← 0                       # adversarial training off at the end
    if e ≥ adversarial_epochs: a ← 0                 # HessianFlow: epochs // 2

``r`` is the number of mini-batches whose gradients are averaged into one update (the effective
batch is ``r · B``), ``c`` the growth/decay ratio, ``a`` the fraction of each mini-batch
replaced by FGSM examples ``x + ε sign(∇_x L)`` computed in eval mode (ABSA; ABS is ``a = 0``).

:class:`AdaptiveBatchSize` is the training-loop component: a ``torch.optim`` wrapper over any
base optimizer that averages ``r`` micro-batch gradients per base step, multiplies the base's
``lr`` by ``lr_scale`` at step time (schedulers still drive ``group["lr"]``), replaces part of a
batch with adversarial examples (:meth:`~AdaptiveBatchSize.prepare_batch`) and runs the
schedule at the end of an epoch (:meth:`~AdaptiveBatchSize.end_epoch`, or
:meth:`~AdaptiveBatchSize.epoch_end` with the harness's epoch context). The benchmark runner
calls both hooks when the optimizer has them, so ``torchvalley bench --optimizers "absa:lr=0.05,
momentum=0.9,max_ratio=8"`` runs ABSA; in your own loop::

    optimizer = AdaptiveBatchSize(model.parameters(), model=model, lr=0.1, momentum=0.9,
                                  adversarial_fraction=0.2)
    for epoch in range(epochs):
        for inputs, targets in loader:
            inputs, targets = optimizer.prepare_batch(inputs, targets, loss_fn)
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()              # a base step every r-th call
        optimizer.end_epoch(loss_fn, hessian_batch)

Defaults are HessianFlow's (:data:`HESSIANFLOW_DEFAULTS`): base batch 128 (the loader's),
``max_ratio = 128``, ``growth = 2`` (its ``decay_ratio``), ``duration = 10``, ABSA
``adversarial_fraction = 0.2`` and ``epsilon = 0.005``, eigenvalues on one batch of 128 in eval
mode with at most 10 iterations and tolerance 1e-2 (power iteration there, Lanczos here, whose
tolerance is a bound on the error rather than a change between iterates). Differences, on
purpose: the Hessian batch is the first ``hessian_examples`` training examples every epoch
(fixed, so successive eigenvalues compare the model, not the batch); the largest *algebraic*
eigenvalue (HessianFlow's power iteration returns the largest in magnitude; they agree once
training has started); a forced growth also resets the reference eigenvalue; gradients of the
micro-batches are averaged (HessianFlow sums ``loss / r``; equal up to rounding).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchvalley.attacks import fgsm
from torchvalley.optim._profiling import profile_hook_step
from torchvalley.registry import (
    Hyperparameter,
    get_optimizer_entry,
    resolve_base_optimizer,
    revalidate_changed_groups,
    validate_group,
)

__all__ = [
    "HESSIANFLOW_DEFAULTS",
    "AdaptiveBatchSchedule",
    "AdaptiveBatchSize",
    "top_hessian_eigenvalue",
]

#: HessianFlow's settings (``train.py`` / ``optimizer/absa.py``), our defaults.
HESSIANFLOW_DEFAULTS: Mapping[str, Any] = {
    "batch_size": 128,
    "max_ratio": 128,
    "growth": 2.0,
    "duration": 10,
    "adversarial_fraction (ABSA)": 0.2,
    "epsilon": 0.005,
    "adversarial_epochs": "epochs // 2",
    "hessian_examples": 128,
    "eigenvalue iterations": 10,
    "eigenvalue tolerance": 1e-2,
    "lr": 0.1,
    "momentum": 0.9,
}


@dataclasses.dataclass
class AdaptiveBatchSchedule:
    """The ABS/ABSA rules as a state machine over epochs (no model, no data).

    Attributes:
        max_ratio: the largest ``r`` (effective batch ``max_ratio · B``).
        growth: ``c > 1``: the eigenvalue drop that triggers growth and the growth factor.
        duration: epochs without growth after which the batch grows anyway.
        adversarial_epochs: from this epoch on, no adversarial examples (``None``: no limit).
        scale_lr: multiply the learning rate by the batch growth.
        ratio: the current ``r``.
        lr_scale: the current learning-rate multiplier.
        adversarial_fraction: the current ``a``.
        reference: the eigenvalue growth is measured against.
        stale_epochs: epochs since the last growth (or the first measurement).
        epoch: epochs ended so far.
    """

    max_ratio: int = 128
    growth: float = 2.0
    duration: int = 10
    adversarial_epochs: int | None = None
    scale_lr: bool = True
    ratio: int = 1
    lr_scale: float = 1.0
    adversarial_fraction: float = 0.0
    reference: float | None = None
    stale_epochs: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        for name in ("max_ratio", "duration", "ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r} (an integer >= 1)")
        if not (
            isinstance(self.growth, int | float) and self.growth > 1 and math.isfinite(self.growth)
        ):
            raise ValueError(f"Invalid growth: {self.growth!r} (a finite real number > 1)")
        if not 0.0 <= self.adversarial_fraction <= 1.0:
            raise ValueError(f"Invalid adversarial_fraction: {self.adversarial_fraction!r}")
        if self.ratio > self.max_ratio:
            raise ValueError(f"Invalid initial_ratio: {self.ratio} > max_ratio {self.max_ratio}")
        if self.ratio == self.max_ratio:
            self.adversarial_fraction = 0.0

    @property
    def tracking(self) -> bool:
        """Whether the eigenvalue is still needed (the batch can still grow)."""
        return self.ratio < self.max_ratio

    def end_epoch(self, eigenvalue: float | None) -> str | None:
        """Apply the rules at the end of an epoch; returns why the batch grew, or ``None``.

        Args:
            eigenvalue: the top Hessian eigenvalue now (ignored, and may be ``None``, once the
                batch is at its largest).

        Returns:
            ``"flatter"``, ``"duration"`` or ``None``.
        """
        self.epoch += 1
        reason = None
        if self.tracking:
            if eigenvalue is None or not math.isfinite(eigenvalue):
                raise ValueError(f"Invalid eigenvalue: {eigenvalue!r} (a finite number)")
            if self.reference is None:
                self.reference = float(eigenvalue)
            elif eigenvalue <= self.reference / self.growth:
                reason = "flatter"
            else:
                self.stale_epochs += 1
                if self.stale_epochs >= self.duration:
                    reason = "duration"
            if reason is not None:
                self._grow(float(eigenvalue))
        if self.adversarial_epochs is not None and self.epoch >= self.adversarial_epochs:
            self.adversarial_fraction = 0.0
        return reason

    def _grow(self, eigenvalue: float) -> None:
        new = min(self.max_ratio, max(self.ratio + 1, math.floor(self.ratio * self.growth)))
        factor = new / self.ratio
        if self.scale_lr:
            self.lr_scale *= factor  # linear scaling with the batch
        self.adversarial_fraction /= factor
        self.ratio = new
        self.reference = eigenvalue
        self.stale_epochs = 0
        if self.ratio >= self.max_ratio:
            self.adversarial_fraction = 0.0  # adversarial training and tracking end here

    def state_dict(self) -> dict[str, Any]:
        """Every field, as plain Python values."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the settings too)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, state[field.name])


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: tuple[Tensor, Tensor],
    *,
    max_iter: int = 10,
    tol: float = 1e-2,
    seed: int = 0,
) -> float:
    """λ_max of the loss's Hessian on ``batch`` in eval mode (Lanczos; the model untouched)."""
    from torchvalley.curvature.operator import CurvatureOperator
    from torchvalley.landscape.spectrum import hessian_eigenvalues

    operator = CurvatureOperator.of(model, loss_fn, batch, bn_mode="eval")
    result = hessian_eigenvalues(operator, k=1, max_iter=max_iter, tol=tol, seed=seed)
    return float(result.eigenvalues[0])


class AdaptiveBatchSize(torch.optim.Optimizer):
    """ABS / ABSA over any base optimizer: gradient accumulation, LR scaling, FGSM examples.

    Args:
        params: parameters or param groups (the base optimizer's groups are these dicts).
        base_optimizer: registry name or optimizer class.
        max_ratio, growth, duration, adversarial_epochs, scale_lr: the schedule
            (:class:`AdaptiveBatchSchedule`).
        initial_ratio: ``r`` at the start (1: the base's batch).
        adversarial_fraction: ABSA's ``a`` at the start (0: ABS).
        epsilon: FGSM's ε.
        hessian_examples: size of the fixed Hessian batch (the first training examples).
        lanczos_iterations, lanczos_tol: the eigenvalue's Lanczos budget and accuracy.
        seed: seed of the Lanczos start vectors (``seed + epoch``).
        model: the module (FGSM examples and the eigenvalue; the harness passes it).
        **base_hyperparameters: the base optimizer's settings (``lr``, ``momentum``, ...).
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("base_optimizer", "optimizer", "sgd", "registry name or optimizer class"),
        Hyperparameter("max_ratio", "positive_int", 128, "largest batch multiplier r_max"),
        Hyperparameter("initial_ratio", "positive_int", 1, "batch multiplier r at the start"),
        Hyperparameter("growth", "positive", 2.0, "c > 1: eigenvalue drop and batch growth"),
        Hyperparameter("duration", "positive_int", 10, "epochs without growth before forcing"),
        Hyperparameter("adversarial_fraction", "unit_interval", 0.0, "ABSA: FGSM share a"),
        Hyperparameter("epsilon", "non_negative", 0.005, "FGSM radius ε (∞-norm)"),
        Hyperparameter(
            "adversarial_epochs", "optional_positive_int", None, "no FGSM from this epoch on"
        ),
        Hyperparameter("scale_lr", "bool", True, "multiply lr by the batch growth"),
        Hyperparameter("hessian_examples", "positive_int", 128, "examples of the Hessian batch"),
        Hyperparameter("lanczos_iterations", "positive_int", 10, "Lanczos steps (products)"),
        Hyperparameter("lanczos_tol", "positive", 1e-2, "Lanczos relative accuracy"),
        Hyperparameter("seed", "any", 0, "seed of the Lanczos start vectors (int >= 0)"),
    )
    _SETTINGS = tuple(h.name for h in HYPERPARAMETERS)

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        max_ratio: int = 128,
        initial_ratio: int = 1,
        growth: float = 2.0,
        duration: int = 10,
        adversarial_fraction: float = 0.0,
        epsilon: float = 0.005,
        adversarial_epochs: int | None = None,
        scale_lr: bool = True,
        hessian_examples: int = 128,
        lanczos_iterations: int = 10,
        lanczos_tol: float = 1e-2,
        seed: int = 0,
        *,
        model: nn.Module | None = None,
        **base_hyperparameters: Any,
    ) -> None:
        settings = validate_group(
            self.HYPERPARAMETERS,
            {
                "base_optimizer": base_optimizer,
                "max_ratio": max_ratio,
                "initial_ratio": initial_ratio,
                "growth": growth,
                "duration": duration,
                "adversarial_fraction": adversarial_fraction,
                "epsilon": epsilon,
                "adversarial_epochs": adversarial_epochs,
                "scale_lr": scale_lr,
                "hessian_examples": hessian_examples,
                "lanczos_iterations": lanczos_iterations,
                "lanczos_tol": lanczos_tol,
            },
        )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Invalid seed: {seed!r} (an integer >= 0)")
        if not settings["growth"] > 1:
            raise ValueError(f"Invalid growth: {growth!r} (must be > 1)")
        if initial_ratio > max_ratio:
            raise ValueError(f"Invalid initial_ratio: {initial_ratio} > max_ratio {max_ratio}")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.epsilon = float(epsilon)
        self.hessian_examples = hessian_examples
        self.lanczos_iterations = lanczos_iterations
        self.lanczos_tol = float(lanczos_tol)
        self.seed = seed
        self.schedule = AdaptiveBatchSchedule(
            max_ratio=max_ratio,
            growth=float(growth),
            duration=duration,
            adversarial_epochs=adversarial_epochs,
            scale_lr=scale_lr,
            ratio=initial_ratio,
            adversarial_fraction=float(adversarial_fraction),
        )
        self._base_name = base_optimizer if isinstance(base_optimizer, str) else None
        super().__init__(params, {})
        for group in self.param_groups:
            validate_group(self.HYPERPARAMETERS, group)
            if any(key in group for key in self._SETTINGS):
                raise ValueError(
                    "Invalid param group: ABS settings "
                    f"{sorted(set(group) & set(self._SETTINGS))} apply to the whole optimizer"
                )
        factory = resolve_base_optimizer(base_optimizer)
        if isinstance(base_optimizer, str):
            capabilities = get_optimizer_entry(base_optimizer).capabilities
            if capabilities.needs_closure:
                raise ValueError(
                    f"Invalid base_optimizer: {base_optimizer!r} needs a closure at every step; "
                    "ABS steps its base on accumulated gradients, without one"
                )
            if capabilities.accepts_model:
                base_hyperparameters = {**base_hyperparameters, "model": model}
        self.base_optimizer = factory(self.param_groups, **base_hyperparameters)
        self.param_groups = self.base_optimizer.param_groups  # the same dicts
        self.defaults = self.base_optimizer.defaults
        self.state = self.base_optimizer.state
        self._accumulated: dict[Tensor, Tensor] = {}
        self._micro_batches = 0  # gradients accumulated towards the next base step
        self.updates = 0  # base steps taken (the paper's "SGD iterations")
        self.adversarial_examples = 0  # FGSM examples made (each costs a forward+backward)
        self._checked_values: dict[int, tuple] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_checked_values", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (to the base too); ABS's own settings are refused in a group."""
        validate_group(self.HYPERPARAMETERS, param_group)
        if any(key in param_group for key in self._SETTINGS):
            raise ValueError(
                "Invalid param group: ABS settings "
                f"{sorted(set(param_group) & set(self._SETTINGS))} apply to the whole optimizer"
            )
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    # ------------------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Accumulate this micro-batch's gradient; every ``r``-th call, one base step on the
        average with ``lr · lr_scale``. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        revalidate_changed_groups(
            self.param_groups,
            self.HYPERPARAMETERS,
            self._checked_values,
            lambda group: validate_group(self.HYPERPARAMETERS, group),
        )
        ratio = self.schedule.ratio
        if ratio == 1 and self._micro_batches == 0:
            self._base_step()  # nothing accumulated: the base's step on this gradient
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("Invalid gradient: ABS does not accumulate sparse gradients")
                buffer = self._accumulated.get(p)
                if buffer is None:
                    self._accumulated[p] = p.grad.detach().clone()  # Σ g_i starts
                else:
                    buffer.add_(p.grad)  # Σ g_i
        self._micro_batches += 1
        if self._micro_batches >= ratio:
            for p, buffer in self._accumulated.items():
                buffer.div_(self._micro_batches)  # the mean gradient of the large batch
                if p.grad is None:
                    p.grad = buffer
                else:
                    p.grad.copy_(buffer)
            self._accumulated = {}
            self._micro_batches = 0
            self._base_step()
        return loss

    def _base_step(self) -> None:
        scale = self.schedule.lr_scale
        saved = [group["lr"] for group in self.param_groups] if scale != 1.0 else None
        if saved is not None:
            for group in self.param_groups:
                group["lr"] = group["lr"] * scale  # linear scaling with the batch
        try:
            self.base_optimizer.step()
        finally:
            if saved is not None:
                for group, lr in zip(self.param_groups, saved, strict=True):
                    group["lr"] = lr
        self.updates += 1

    # ---------------------------------------------------------------- the training-loop hooks
    def prepare_batch(
        self,
        inputs: Tensor,
        targets: Tensor,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        model: nn.Module | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The batch with its first ``⌊a·n⌋`` (at least 1) examples replaced by FGSM examples.

        As HessianFlow: nothing happens while ``a ≤ 1/n``; the FGSM examples are computed in
        eval mode and clamped to the range of the replaced examples. ``model`` defaults to the
        one given at construction.
        """
        fraction = self.schedule.adversarial_fraction
        count = inputs.shape[0]
        if fraction <= 1.0 / count:
            return inputs, targets
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("Invalid model: adversarial examples need model= (the network)")
        replaced = max(int(count * fraction), 1)
        adversarial = fgsm(
            model, loss_fn, inputs[:replaced], targets[:replaced], self.epsilon, bounds="batch"
        )
        self.adversarial_examples += replaced
        return torch.cat([adversarial, inputs[replaced:]]), targets

    def end_epoch(
        self,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batch: tuple[Tensor, Tensor],
        model: nn.Module | None = None,
    ) -> dict[str, float]:
        """Measure λ_max on ``batch`` (while the batch can still grow) and apply the schedule.

        Returns:
            ``abs_lambda_max`` (when measured), ``abs_ratio``, ``abs_lr_scale``,
            ``abs_adversarial_fraction``, ``abs_grew`` (0, 1: flatter, 2: forced),
            ``abs_updates`` and ``abs_adversarial_examples`` (cumulative).
        """
        model = model if model is not None else self.model
        eigenvalue = None
        if self.schedule.tracking:
            if model is None:
                raise ValueError("Invalid model: the eigenvalue needs model= (the network)")
            inputs, targets = batch
            eigenvalue = top_hessian_eigenvalue(
                model,
                loss_fn,
                (inputs[: self.hessian_examples], targets[: self.hessian_examples]),
                max_iter=self.lanczos_iterations,
                tol=self.lanczos_tol,
                seed=self.seed + self.schedule.epoch,
            )
        reason = self.schedule.end_epoch(eigenvalue)
        values = {} if eigenvalue is None else {"abs_lambda_max": eigenvalue}
        values.update(
            abs_ratio=float(self.schedule.ratio),
            abs_lr_scale=self.schedule.lr_scale,
            abs_adversarial_fraction=self.schedule.adversarial_fraction,
            abs_grew={None: 0.0, "flatter": 1.0, "duration": 2.0}[reason],
            abs_updates=float(self.updates),
            abs_adversarial_examples=float(self.adversarial_examples),
        )
        return values

    def epoch_end(self, context: Any) -> dict[str, float]:
        """The harness's hook (an epoch callback's signature): :meth:`end_epoch` on the task's
        first training examples; adds ``abs_batch_size`` (``r · B``)."""
        values = self.end_epoch(context.task.loss_fn, context.data.train, context.model)
        values["abs_batch_size"] = float(self.schedule.ratio * context.batch_size)
        return values

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base's state dict plus the schedule, the counters and the partial sums."""
        index = {p: i for i, p in enumerate(self._params())}
        base = self.base_optimizer.state_dict()
        return {
            **base,
            "adaptive_batch": {
                "version": 1,
                "base": self._base_label(),
                "schedule": self.schedule.state_dict(),
                "micro_batches": self._micro_batches,
                "updates": self.updates,
                "adversarial_examples": self.adversarial_examples,
                "accumulated": {index[p]: b.clone() for p, b in self._accumulated.items()},
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume exactly, mid-accumulation and mid-schedule included.

        Raises:
            ValueError: the dict was not saved by this wrapper over the same base.
        """
        saved = state_dict.get("adaptive_batch") if isinstance(state_dict, Mapping) else None
        if not isinstance(saved, Mapping) or saved.get("version") != 1:
            raise ValueError("Invalid state_dict: not saved by AdaptiveBatchSize (ABS/ABSA)")
        if saved["base"] != self._base_label():
            raise ValueError(
                f"Invalid state_dict: saved over base {saved['base']!r}, loaded into one over "
                f"{self._base_label()!r}"
            )
        base = {k: v for k, v in state_dict.items() if k != "adaptive_batch"}
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.schedule.load_state_dict(saved["schedule"])
        self._micro_batches = int(saved["micro_batches"])
        self.updates = int(saved["updates"])
        self.adversarial_examples = int(saved["adversarial_examples"])
        params = self._params()
        self._accumulated = {
            params[int(i)]: b.detach().clone().to(params[int(i)])
            for i, b in saved["accumulated"].items()
        }

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _base_label(self) -> str:
        return self._base_name or type(self.base_optimizer).__name__
