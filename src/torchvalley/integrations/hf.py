"""SAM with the Hugging Face ``Trainer``.

The ``Trainer`` loop calls ``optimizer.step()`` without a closure, after clipping with
``args.max_grad_norm``. :class:`SAMTrainer` therefore runs both passes in ``training_step``
(clean pass, ascent, perturbed pass, exact restore) and hands the loop SAM's *base* optimizer,
which shares SAM's param groups: the loop's clipping (of the final gradient, as SAM's own
``max_grad_norm`` does), its ``GradScaler``, LR scheduler and checkpointing apply unchanged::

    trainer = SAMTrainer(
        model=model,
        args=TrainingArguments(output_dir="out", learning_rate=3e-4),
        train_dataset=dataset,
        optimizer_cls_and_kwargs=(SAM, {"base_optimizer": "adamw", "rho": 0.05, "lr": 3e-4}),
    )
    trainer.train()

or ``optimizers=(SAM(model.parameters(), "adamw", rho=0.05, lr=3e-4), None)``. With
``optimizer_cls_and_kwargs`` SAM receives the ``Trainer``'s weight-decay param groups.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from torchvalley.integrations import missing
from torchvalley.optim import SAM

try:
    from transformers import Trainer
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise missing("transformers", error) from error

__all__ = ["SAMTrainer"]


class SAMTrainer(Trainer):
    """A ``transformers.Trainer`` whose ``training_step`` runs both SAM passes.

    The optimizer must be a :class:`~torchvalley.optim.SAM` (see the module docstring); after
    :meth:`create_optimizer`, ``self.sam`` is the SAM and ``self.optimizer`` its base optimizer.

    - **Gradient accumulation** (``gradient_accumulation_steps > 1``): every micro-batch gets
      its own ascent and the perturbed gradients accumulate, as in
      :meth:`SAM.step_micro_batches` (m-sharpness over micro-batches).
    - **DDP**: with ``perturbation_sync="local"`` the clean pass runs under ``no_sync`` (each
      replica perturbs with its own gradient); the perturbed pass is synchronised by the
      ``Trainer`` as usual. ``"global"`` all-reduces the clean gradient of the micro-batch that
      the ``Trainer`` synchronises (the last one of an accumulation window).
    - **fp16** (``GradScaler``): the clean-pass gradient is unscaled for the ascent (Fisher and
      Monge need the true gradient). If it overflows, the perturbed pass is skipped and a
      non-finite gradient is left for the scaler, which then skips the step and lowers the
      scale, as for an overflow in the perturbed pass. The weights are always restored before
      the loop steps.

    The loss returned to the loop (and logged) is the clean-pass loss.
    """

    sam: SAM

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """Create (or take) the SAM optimizer and give the loop its base optimizer."""
        optimizer = self.optimizer
        if not isinstance(optimizer, SAM):
            optimizer = super().create_optimizer(*args, **kwargs)
        if isinstance(optimizer, SAM):
            self.sam = optimizer
            self.optimizer = optimizer.base_optimizer
        elif getattr(self, "sam", None) is None or optimizer is not self.sam.base_optimizer:
            raise TypeError(
                "SAMTrainer needs a SAM optimizer: optimizers=(SAM(...), None) or "
                f"optimizer_cls_and_kwargs=(SAM, {{...}}), got {type(optimizer).__name__}"
            )
        return self.optimizer

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Any = None,
    ) -> torch.Tensor:
        """Clean pass, ascent, perturbed pass at ``w + eps``, restore ``w``.

        Leaves the SAM gradient in ``.grad`` (added to the earlier micro-batches' ones) for the
        loop's clipping and base-optimizer step. Returns the clean-pass loss.
        """
        sam = self.sam
        params = [p for group in sam.param_groups for p in group["params"]]
        # Earlier micro-batches' perturbed gradients: kept out of this micro-batch's ascent.
        accumulated = [p.grad for p in params]
        for p in params:
            p.grad = None

        local = sam.perturbation_sync == "local" and isinstance(
            model, nn.parallel.DistributedDataParallel
        )
        with model.no_sync() if local else contextlib.nullcontext():
            loss = super().training_step(model, inputs, num_items_in_batch)
        scaler = getattr(self.accelerator, "scaler", None)
        sam.first_step(zero_grad=True, grad_scaler=scaler)
        overflow = sam.first_pass_overflowed
        sam.first_pass_overflowed = False

        for p, grad in zip(params, accumulated, strict=True):
            p.grad = grad
        if overflow:
            # Nothing was perturbed. The scaler finds the overflow in .grad at its step.
            first = next(p for p in params if p.requires_grad)
            first.grad = torch.full_like(first, float("inf"))
            return loss
        try:
            super().training_step(model, inputs, num_items_in_batch)
        finally:
            with torch.no_grad():
                # w back, bit for bit, whatever happened; Riemannian gradients pulled back to w
                sam.restore(pull_back=True)
        # An LR scheduler attached to the SAM wrapper itself counts this as its step.
        sam._opt_called = True  # type: ignore[attr-defined]
        return loss
