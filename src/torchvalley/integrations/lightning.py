"""SAM with PyTorch Lightning.

**The simplest way is** :class:`SAMCallback`: keep an ordinary optimizer (SGD, AdamW, ...) in
``configure_optimizers`` and add ``SAMCallback(rho=0.05)`` to the ``Trainer``'s callbacks. It
works with automatic optimization under every precision (``16-mixed`` included), clips the
final SAM gradient with ``gradient_clip_val`` and needs no change to the ``LightningModule``
(its limitations are listed in its docstring). The rest of this page is about returning a
:class:`~torchvalley.optim.SAM` from ``configure_optimizers`` instead.

**Automatic optimization works as is** with ``precision="32-true"``, ``"64-true"`` and
``"bf16-mixed"``: return a :class:`~torchvalley.optim.SAM` from ``configure_optimizers``.
Lightning calls ``optimizer.step(closure)`` with a closure that runs ``training_step``,
``zero_grad`` and ``backward``, and :meth:`SAM.step` calls it twice (clean pass, perturbed
pass), like LBFGS. What follows from the closure being run twice:

- ``training_step`` and the backward hooks run twice per optimizer step; the step output that
  Lightning keeps (``on_train_batch_end``'s ``outputs``) and anything logged with
  ``self.log(..., on_epoch=True)`` include the *perturbed* pass;
- Lightning's ``gradient_clip_val`` clips after each closure call, so the first-pass gradient
  is clipped too. SAM/ASAM's ascent does not depend on the gradient's scale, but Fisher and
  Monge's do: clip with ``SAM(max_grad_norm=...)`` instead, which clips the final gradient only;
- ``accumulate_grad_batches > 1`` is wrong with SAM: the step's first pass sees the accumulated
  gradient and the second pass only the last micro-batch. Use manual optimization with
  :meth:`SAM.step_micro_batches`;
- ``precision="16-mixed"`` cannot work: Lightning's AMP plugin runs the closure itself and
  calls ``scaler.step(optimizer)`` without it. Use :class:`SAMCallback`, or manual optimization
  with :func:`sam_manual_step`, which hands Lightning's ``GradScaler`` to :meth:`SAM.step`.

**Manual optimization** (``self.automatic_optimization = False``) with
:func:`sam_manual_step` avoids all of the above::

    class Module(lightning.pytorch.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.net = torch.nn.Linear(3, 1)

        def configure_optimizers(self):
            return SAM(self.parameters(), "sgd", rho=0.05, lr=0.1, model=sam_model(self))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = sam_manual_step(self, lambda: F.mse_loss(self.net(x), y))
            self.log("train_loss", loss)  # the clean-pass loss

Under DDP, :func:`sam_model` returns Lightning's ``DistributedDataParallel`` wrapper (it exists
when ``configure_optimizers`` runs), so ``perturbation_sync="local"`` runs the first pass under
``no_sync``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchvalley.integrations import missing
from torchvalley.optim import SAM

try:
    import lightning.pytorch as pl
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
    from torch.amp.grad_scaler import OptState
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise missing("lightning", error) from error

__all__ = ["MultirateBackward", "SAMCallback", "multirate_of", "sam_manual_step", "sam_model"]


def sam_model(module: pl.LightningModule) -> nn.Module:
    """The module to pass as ``SAM(model=...)`` from ``configure_optimizers``.

    Lightning's ``DistributedDataParallel`` wrapper when the module is being trained under DDP
    (SAM needs it for ``no_sync`` in ``perturbation_sync="local"``), otherwise ``module``.
    """
    trainer = getattr(module, "_trainer", None)
    wrapped = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return wrapped
    return module


def sam_manual_step(
    module: pl.LightningModule,
    compute_loss: Callable[[], torch.Tensor],
    optimizer: Any = None,
) -> torch.Tensor:
    """One SAM step from inside ``training_step`` under manual optimization.

    Runs the clean pass, the ascent, the perturbed pass and the base step. Each pass calls
    ``compute_loss()`` (forward, returning the loss) and ``module.manual_backward`` (so
    Lightning's precision plugin scales the loss under ``16-mixed`` and the backward hooks
    run). Without a loss scaler the step goes through ``LightningOptimizer.step`` (the
    strategy, ``on_before_optimizer_step`` and the step count as for any optimizer). With
    ``16-mixed``, whose plugin would call ``step()`` without a closure, :meth:`SAM.step` gets
    Lightning's ``GradScaler`` (unscaled first pass for the ascent, the whole step skipped on
    overflow in either pass) and the step is counted through the ``LightningOptimizer``'s step
    hooks; ``on_before_optimizer_step`` is not called on that path.

    Args:
        module: the ``LightningModule`` (``automatic_optimization = False``).
        compute_loss: runs the forward pass and returns the loss; called twice.
        optimizer: the SAM optimizer, wrapped or not; defaults to ``module.optimizers()``.

    Returns:
        The clean-pass loss (detached).

    Raises:
        ValueError: under automatic optimization, or if the module has several optimizers and
            none was given.
        TypeError: if the optimizer is not a :class:`~torchvalley.optim.SAM`.
    """
    if module.automatic_optimization:
        raise ValueError(
            "sam_manual_step is for manual optimization (self.automatic_optimization = False); "
            "under automatic optimization Lightning already calls SAM.step(closure)"
        )
    wrapper = module.optimizers() if optimizer is None else optimizer
    if isinstance(wrapper, (list, tuple)):
        raise ValueError("the module has several optimizers: pass optimizer=the SAM one")
    sam = wrapper.optimizer if isinstance(wrapper, LightningOptimizer) else wrapper
    if not isinstance(sam, SAM):
        raise TypeError(f"sam_manual_step needs a SAM optimizer, got {type(sam).__name__}")

    def closure() -> torch.Tensor:
        sam.zero_grad()
        loss = compute_loss()
        module.manual_backward(loss)
        return loss.detach()

    scaler = getattr(module.trainer.precision_plugin, "scaler", None)
    if scaler is None:
        if isinstance(wrapper, LightningOptimizer):
            return wrapper.step(closure=closure)
        return sam.step(closure)
    if isinstance(wrapper, LightningOptimizer):
        wrapper._on_before_step()  # Lightning's manual loop counts steps through these hooks
    loss = sam.step(closure, grad_scaler=scaler)
    if isinstance(wrapper, LightningOptimizer):
        wrapper._on_after_step()
    return loss


class _NoStep(torch.optim.Optimizer):
    """Base optimizer of :class:`SAMCallback`'s ascent engine: the update is Lightning's."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {})

    def step(self, closure: Any = None) -> None:  # pragma: no cover - never called
        raise RuntimeError("SAMCallback's ascent engine has no update of its own")


# SAM options the callback cannot honour: the clean pass and the update belong to Lightning.
_REFUSED_OPTIONS = {
    "max_grad_norm": "use Trainer(gradient_clip_val=...), which clips the final SAM gradient",
    "perturbation_sync": (
        "the clean pass is Lightning's own backward (all-reduced under DDP): the "
        "perturbations are always 'global'"
    ),
    "base_optimizer": "the base optimizer is the one configure_optimizers returns",
    "model": "the model is the LightningModule",
}


def _output_loss(output: Any) -> torch.Tensor | None:
    if isinstance(output, dict):
        output = output.get("loss")
    if output is None or isinstance(output, torch.Tensor):
        return output
    raise TypeError(
        "SAMCallback: training_step must return a loss tensor, a dict with 'loss' or None, got "
        f"{type(output).__name__}"
    )


class SAMCallback(pl.Callback):
    """Turn the optimizer of ``configure_optimizers`` (SGD, AdamW, ...) into SAM, with no
    change to the ``LightningModule`` and under every precision plugin, ``16-mixed`` included.

    Lightning's automatic step runs the closure (``training_step`` + ``backward``: the clean
    pass), unscales the gradients under ``16-mixed`` (``GradScaler.unscale_``), calls
    ``on_before_optimizer_step``, clips (``gradient_clip_val``) and steps the optimizer
    (``scaler.step`` + ``scaler.update`` under ``16-mixed``). In ``on_before_optimizer_step``
    this callback climbs to ``w + eps`` from the clean gradients
    (:meth:`SAM.first_step <torchvalley.optim.SAM.first_step>`), runs ``training_step`` and the
    backward again (the perturbed pass, through the strategy and the precision plugin: autocast,
    loss scaling, DDP), unscales the new gradients under ``16-mixed`` and restores ``w`` and the
    clean-pass BatchNorm statistics bit for bit. Lightning then clips and steps with the
    perturbed gradient, so ``gradient_clip_val`` clips the final SAM gradient only.

    Under ``16-mixed`` a non-finite gradient in either pass skips the step as the
    ``GradScaler`` does (weights unchanged, scale backed off once): after a clean-pass overflow
    the perturbed pass is not run; a perturbed-pass overflow is recorded where
    ``scaler.step`` looks for it.

    Usage::

        trainer = lightning.pytorch.Trainer(callbacks=[SAMCallback(rho=0.05)], precision=...)

    Args:
        rho: radius of the ascent step (see :class:`~torchvalley.optim.SAM`).
        ascent: ``"sam"``, ``"asam"``, ``"fisher"`` or ``"monge"``.
        **sam_options: more :class:`~torchvalley.optim.SAM` options for the ascent: ``perturb``,
            ``eta``, ``normalize_bias``, ``fisher_eta``, ``bn_statistics``, ``diagnostics``
            (then :attr:`last_diagnostics`), ``swap_storage``. ``max_grad_norm`` is refused
            (use ``gradient_clip_val``), and so is ``perturbation_sync`` (see below).

    Limitations:

    - ``training_step`` runs twice per step, and so do ``on_before_backward`` and
      ``on_after_backward``. ``self.log``/``self.log_dict`` are no-ops during the perturbed
      pass, so what is logged and the step output Lightning keeps are the clean pass's.
    - Under DDP the clean-pass gradient is all-reduced by Lightning's own backward before the
      callback sees it: the perturbation is the same on every replica (SAM's
      ``perturbation_sync="global"``), not the paper's per-replica m-sharpness.
    - ``accumulate_grad_batches > 1`` is refused (the ascent would see the accumulated
      gradient and the perturbed pass only the last micro-batch); use manual optimization
      with :meth:`SAM.step_micro_batches <torchvalley.optim.SAM.step_micro_batches>`.
    - Automatic optimization only, one optimizer. Optimizers that unscale inside their own
      ``step`` (fused ones) are refused under ``16-mixed``. In fp32/bf16 a non-finite
      perturbed-pass gradient is not checked for, as with :class:`~torchvalley.optim.SAM`.
    - The perturbed pass reuses the batch given to ``on_train_batch_start`` (a
      ``training_step`` taking a ``dataloader_iter`` cannot be replayed and is not supported);
      a ``training_step`` that draws random numbers (dropout) draws new ones in that pass. If
      the perturbed pass returns ``None``, the step has no gradient.
    """

    def __init__(self, rho: float = 0.05, ascent: str = "sam", **sam_options: Any) -> None:
        for name, reason in _REFUSED_OPTIONS.items():
            if name in sam_options:
                raise ValueError(f"SAMCallback does not take {name}: {reason}")
        self.rho = rho
        self.ascent = ascent
        self.sam_options = sam_options
        # SAM's own validation, on a stand-in parameter (named, for predicate perturbs).
        self._engine_for(nn.Module(), [("weight", nn.Parameter(torch.zeros(1)))])
        self.engine: SAM | None = None
        self._engine_key: tuple[int, ...] | None = None
        self._batch: Any = None
        self._batch_idx = 0

    def _engine_for(self, model: nn.Module, params: Any) -> SAM:
        return SAM(
            params, _NoStep, rho=self.rho, ascent=self.ascent, model=model, **self.sam_options
        )

    @property
    def last_diagnostics(self) -> dict[str, torch.Tensor]:
        """The ascent's diagnostics of the last step (with ``diagnostics=True``)."""
        return {} if self.engine is None else self.engine.last_diagnostics

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ValueError(
                "SAMCallback needs automatic optimization; under manual optimization use a SAM "
                "optimizer with sam_manual_step"
            )
        if trainer.accumulate_grad_batches > 1:
            raise ValueError(
                "SAMCallback does not support accumulate_grad_batches > 1 (the ascent would use "
                "the accumulated gradient and the perturbed pass only the last micro-batch); "
                "use manual optimization with SAM.step_micro_batches"
            )
        for optimizer in trainer.optimizers:
            inner = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
            if isinstance(inner, SAM):
                raise ValueError(
                    "SAMCallback turns an ordinary optimizer into SAM: configure_optimizers "
                    "already returns a SAM (drop one of the two)"
                )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._batch = None  # do not keep the batch alive between steps

    def _engine(self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> SAM:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        key = (id(optimizer), *map(id, params))
        if self.engine is None or self._engine_key != key:
            # The parameters of the user's optimizer, named through the module (ASAM, perturb).
            self.engine = self._engine_for(pl_module, params)
            self._engine_key = key
        return self.engine

    def on_before_optimizer_step(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        if self._batch is None:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        engine = self._engine(pl_module, optimizer)
        if all(p.grad is None for group in engine.param_groups for p in group["params"]):
            return  # training_step returned None: Lightning skips the backward and the step
        if scaler is not None:
            state = scaler._per_optimizer_states[id(optimizer)]
            if state["stage"] is not OptState.UNSCALED:
                raise RuntimeError(
                    "SAMCallback under 16-mixed needs the gradients unscaled before "
                    "on_before_optimizer_step; an optimizer that unscales in its own step "
                    "(fused) is not supported"
                )
            if any(bool(t.item()) for t in state["found_inf_per_device"].values()):
                return  # clean-pass overflow: scaler.step skips, scaler.update backs off

        # zero_grad=False: if nothing is perturbable, first_step leaves the gradients alone.
        if not engine.first_step(zero_grad=False):
            return
        engine.zero_grad(set_to_none=True)  # .grad was the ascent's scratch space
        try:
            with torch.enable_grad():
                self._perturbed_pass(trainer, pl_module, optimizer)
            if scaler is not None:
                # The perturbed pass was scaled like the clean one: unscale it as
                # GradScaler.unscale_ does and record its overflow where scaler.step looks.
                inverse_scale = scaler._scale.double().reciprocal().float()
                found_inf = torch.zeros((), dtype=torch.float32, device=scaler._scale.device)
                state["found_inf_per_device"] = scaler._unscale_grads_(
                    optimizer, inverse_scale, found_inf, False
                )
        finally:
            with torch.no_grad():  # the hook may run under enable_grad (optimizer.step's closure)
                engine.restore(pull_back=True)  # Riemannian ascent: gradients back at w

    def _perturbed_pass(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        def no_log(*args: Any, **kwargs: Any) -> None:
            return None

        pl_module.log = no_log  # type: ignore[method-assign]
        pl_module.log_dict = no_log  # type: ignore[method-assign]
        try:
            # The arguments Lightning's loop passes (batch_idx only if training_step takes it).
            args = [self._batch]
            if is_param_in_hook_signature(pl_module.training_step, "batch_idx", min_args=2):
                args.append(self._batch_idx)
            loss = _output_loss(trainer.strategy.training_step(*args))
        finally:
            del pl_module.log, pl_module.log_dict
        if loss is not None:
            trainer.strategy.backward(loss, optimizer)


# ------------------------------------------------------------------------------------ multirate


def multirate_of(module: pl.LightningModule) -> Any:
    """The :class:`~torchvalley.optim.Multirate` among the trainer's optimizers, or ``None``."""
    from torchvalley.optim.multirate import Multirate

    trainer = getattr(module, "_trainer", None)
    for optimizer in getattr(trainer, "optimizers", None) or ():
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's inner
        if isinstance(optimizer, Multirate):
            return optimizer
    return None


class MultirateBackward:
    """Mixin for a ``LightningModule`` trained with :class:`~torchvalley.optim.Multirate`:
    Lightning's backward becomes ``optimizer.backward(loss)``, so steps 2..k of a cycle run the
    partial backward pass that stops at the fast parameters (the saving of multirate training)
    and the optimizer counts full and partial passes. Put it first among the bases::

        class Module(MultirateBackward, lightning.pytorch.LightningModule):
            def configure_optimizers(self):
                return Multirate(head_partition(self), base_optimizer="sgd", k=5, lr=0.1,
                                 momentum=0.9, model=self)

    Works with automatic optimization (Lightning calls ``Multirate.step(closure)``, whose
    closure runs ``training_step`` and this backward) and with ``self.manual_backward(loss)``
    under manual optimization. Without the mixin training is still correct, every pass is
    full. Under DDP the forward of a partial step must run in ``no_sync``, which Lightning's
    automatic loop does not do: use manual optimization there, with the forward inside
    ``optimizer.pass_context()`` (or :meth:`Multirate.step` with a closure).
    """

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        optimizer = multirate_of(self)  # type: ignore[arg-type]
        if optimizer is None or args or set(kwargs) - {"retain_graph"}:
            super().backward(loss, *args, **kwargs)  # type: ignore[misc]
            return
        optimizer.backward(loss, retain_graph=kwargs.get("retain_graph"))
