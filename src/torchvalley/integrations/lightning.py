"""SAM with PyTorch Lightning.

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
  calls ``scaler.step(optimizer)`` without it. Use manual optimization with
  :func:`sam_manual_step`, which hands Lightning's ``GradScaler`` to :meth:`SAM.step`.

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
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise missing("lightning", error) from error

__all__ = ["sam_manual_step", "sam_model"]


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
