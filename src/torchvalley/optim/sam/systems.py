"""The systems side of SAM: where ``w`` is kept during the perturbed pass, BatchNorm buffers,
``GradScaler`` on the first pass, DDP, and micro-batches.

None of this changes the maths of :mod:`~torchvalley.optim.sam.ascent`; each piece says which
training set-up it exists for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from torchvalley.sharding import foreach_copy_

if TYPE_CHECKING:
    from torchvalley.optim.sam.engine import SAM

__all__ = [
    "BatchNormBackup",
    "CopyBackup",
    "SwapBackup",
    "Workspace",
    "ddp_module",
    "fixed_storage_needed",
    "refuse_local_riemannian",
    "skip_scaled_step",
    "step_micro_batches",
    "swap_unsafe_reason",
    "unscale_first_pass",
]


# -- where w is kept -----------------------------------------------------------------------------


class CopyBackup:
    """Copy ``w`` aside, perturb the parameter in place, copy ``w`` back: the parameters keep
    their storage all along (what FSDP flat parameters, CUDA graphs and ``torch.compile`` of
    the training step need)."""

    def __init__(self) -> None:
        self._backup: dict[Tensor, Tensor] = {}  # persistent buffers, reused every step
        self._climbed: list[Tensor] = []
        #: ``(parameter, (rule, manifold))`` moved by a retraction: their gradient is pulled back.
        self.moved: list[tuple[Tensor, Any]] = []

    def _buffer(self, p: Tensor) -> Tensor:
        buffer = self._backup.get(p)
        if buffer is None or buffer.shape != p.shape or buffer.dtype != p.dtype:
            buffer = self._backup[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buffer

    def climb(
        self, params, steps, factor: Tensor, owned: bool, fold: bool, scale=None
    ) -> list[Tensor]:
        """``w <- w + factor * steps`` (times ``scale`` too, if given: folded only); ``steps``
        is written only if ``owned``. Returns eps (empty when folded: on the CPU the 0-d
        ``factor`` is read without a device sync and scaling and adding take one pass)."""
        foreach_copy_([self._buffer(p) for p in params], params)  # exact copy of w
        self._climbed.extend(params)  # from here on an error restores them
        if fold and scale is not None:
            torch._foreach_addcmul_(params, steps, scale, value=float(factor))  # w + eps
            return []
        if fold:
            torch._foreach_add_(params, steps, alpha=float(factor))  # w + eps, one pass
            return []
        eps = _scaled(steps, factor, owned)
        torch._foreach_add_(params, eps)  # w + eps
        return eps

    def move(self, p: Tensor, point: Tensor, how: Any) -> None:
        """Put ``p`` at ``point`` (a retraction's result), ``w`` kept bit for bit."""
        self._buffer(p).copy_(p)
        self._climbed.append(p)
        self.moved.append((p, how))
        p.copy_(point)

    def origin(self, p: Tensor) -> Tensor:
        """The saved ``w`` of a climbed parameter."""
        return self._backup[p]

    def restore(self) -> None:
        if self._climbed:
            foreach_copy_(self._climbed, [self._backup[p] for p in self._climbed])
        self._climbed = []
        self.moved = []


class SwapBackup(CopyBackup):
    """``swap_storage``: point each parameter at a spare buffer holding ``w + eps`` for the
    perturbed pass and back at ``w`` afterwards; ``w`` is never written and two memory passes
    are saved. Parameters change storage during the perturbed pass, which FSDP flat
    parameters, CUDA graphs and compiled training steps do not allow."""

    def __init__(self) -> None:
        super().__init__()
        self._swapped_out: dict[Tensor, Tensor] = {}

    def _swap(self, p: Tensor, buffer: Tensor) -> None:
        self._swapped_out[p] = p.data
        self._climbed.append(p)
        p.data = buffer

    def climb(
        self, params, steps, factor: Tensor, owned: bool, fold: bool, scale=None
    ) -> list[Tensor]:
        eps = [] if fold else _scaled(steps, factor, owned)
        alpha = float(factor) if fold else 1.0  # CPU only: no device synchronisation
        for i, (p, step) in enumerate(zip(params, steps if fold else eps, strict=True)):
            buffer = self._buffer(p)
            if scale is not None:
                torch.addcmul(p, step, scale[i], value=alpha, out=buffer)  # w + eps, one pass
            else:
                torch.add(p, step, alpha=alpha, out=buffer)  # w + eps, in one pass
            self._swap(p, buffer)
        return eps

    def move(self, p: Tensor, point: Tensor, how: Any) -> None:
        buffer = self._buffer(p)
        buffer.copy_(point)
        self.moved.append((p, how))
        self._swap(p, buffer)

    def origin(self, p: Tensor) -> Tensor:
        return self._swapped_out[p]

    def restore(self) -> None:
        for p in self._climbed:
            p.data = self._swapped_out.pop(p)  # nothing copied
        self._climbed = []
        self.moved = []


def _scaled(steps: list[Tensor], factor: Tensor, owned: bool) -> list[Tensor]:
    # In place on scratch the rule owns; a new list over the raw gradients (never written).
    if owned:
        torch._foreach_mul_(steps, factor)
        return steps
    return list(torch._foreach_mul(steps, factor))


class Workspace:
    """Scratch tensors of the ascent rules (``|w| + eta``, ``u = M^{-1/2} g``), one per
    (slot, parameter). Kept from step to step on the CPU, where a fresh parameter-sized tensor
    per step costs page faults (the allocator hands large blocks back to the system); fresh on
    accelerators, whose caching allocator makes that free and keeps the peak memory low."""

    def __init__(self) -> None:
        self._kept: dict[str, dict[Tensor, Tensor]] = {}

    def __call__(self, slot: str, params: list[Tensor]) -> list[Tensor]:
        kept = self._kept.setdefault(slot, {})  # keyed by the tensor itself, as optimizer state
        found = []
        for p in params:
            if p.device.type != "cpu":
                found.append(torch.empty_like(p))
                continue
            buffer = kept.get(p)
            if buffer is None or buffer.shape != p.shape or buffer.dtype != p.dtype:
                buffer = kept[p] = torch.empty_like(p)
            found.append(buffer)
        return found


class BatchNormBackup:
    """``bn_statistics="clean"``: the running statistics of the clean pass only (the JAX
    reference; ``num_batches_tracked`` is not double counted). Snapshot after the ascent,
    restore with the parameters."""

    def __init__(self, model: nn.Module | None, enabled: bool) -> None:
        self._model = model if enabled else None
        self._modules: list[nn.Module] | None = None
        self._copies: dict[Tensor, Tensor] = {}
        self._saved: list[tuple[Tensor, Tensor]] = []

    def snapshot(self) -> None:
        if self._model is None:
            return
        if self._modules is None:  # found once: the model's structure does not change
            kind = nn.modules.batchnorm._BatchNorm
            self._modules = [m for m in self._model.modules() if isinstance(m, kind)]
        for module in self._modules:
            if not module.training:
                continue
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is None:
                    continue
                copy = self._copies.get(buffer)
                if copy is None or copy.shape != buffer.shape:
                    copy = self._copies[buffer] = buffer.clone()
                else:
                    copy.copy_(buffer)
                self._saved.append((buffer, copy))

    def restore(self) -> None:
        for buffer, copy in self._saved:
            buffer.copy_(copy)
        self._saved = []


# -- GradScaler on the first pass ------------------------------------------------------------


def unscale_first_pass(grads: list[Tensor], grad_scaler: Any, sync_module: Any) -> bool:
    """Unscale the clean-pass gradients in place; ``False`` if any is not finite.

    ``sync_module``: the DDP module when each replica has its own first gradient ("local"):
    every rank must then take the same decision, or one skips its second (all-reducing)
    backward while another runs it.
    """
    scale = getattr(grad_scaler, "_scale", None)
    if not grad_scaler.is_enabled() or scale is None:
        return True
    found_inf = torch.zeros(1, device=grads[0].device)
    inverse = scale.double().reciprocal().float().to(grads[0].device)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inverse)
    if sync_module is not None:
        torch.distributed.all_reduce(found_inf, group=sync_module.process_group)
    # GradScaler.step synchronises on found_inf too; this path cannot avoid one sync.
    return not bool(found_inf.item())


def skip_scaled_step(grad_scaler: Any) -> None:
    """Record a skipped step on ``grad_scaler`` exactly as ``scaler.update()`` does after an
    overflow (scale times ``backoff_factor``, growth tracker reset to 0), through its public
    ``state_dict``/``load_state_dict``: after a first-pass overflow there is no gradient for
    ``unscale_``/``step`` to find the overflow in."""
    state = grad_scaler.state_dict()
    if state:  # empty for a disabled scaler
        state["scale"] *= state["backoff_factor"]
        state["_growth_tracker"] = 0
        grad_scaler.load_state_dict(state)


# -- DDP ---------------------------------------------------------------------------------------


def ddp_module(model: nn.Module | None) -> nn.Module | None:
    """``model`` if it is a ``DistributedDataParallel`` module, else ``None``."""
    return model if isinstance(model, nn.parallel.DistributedDataParallel) else None


def no_sync(model: nn.Module | None) -> contextlib.AbstractContextManager:
    module = ddp_module(model)
    return module.no_sync() if module is not None else contextlib.nullcontext()


def refuse_local_riemannian() -> ValueError:
    """The transport is local to each replica: with per-replica ascent points ("local") the
    all-reduced second-pass gradient would be transported from a different point on each."""
    return ValueError(
        "Invalid perturbation_sync: 'local' with ascent='riemannian' on manifold parameters "
        "under DDP: each replica would transport the all-reduced second-pass gradient from its "
        "own ascent point, and the replicas would diverge. Use perturbation_sync='global' or "
        "step_micro_batches()."
    )


# -- micro-batches -------------------------------------------------------------------------------


def step_micro_batches(sam: SAM, closures: Sequence[Callable[[], Any]]) -> list[Any]:
    """See :meth:`SAM.step_micro_batches`."""
    if not closures:
        raise ValueError("step_micro_batches needs at least one closure")
    distributed = ddp_module(sam.model) is not None
    params = [p for group in sam.param_groups for p in group["params"]]
    accumulated: dict[Tensor, Tensor] = {}
    losses = []
    with sam._restored_on_error():
        for closure in closures:
            closure = torch.enable_grad()(closure)
            # Every pass is local and the transport precedes the single all-reduce, so
            # per-replica Riemannian ascent points are fine.
            with no_sync(sam.model) if distributed else contextlib.nullcontext():
                losses.append(closure())
                sam._ascend(zero_grad=True, grad_scaler=None, micro_batch=True)
                closure()
            sam.restore(pull_back=True)
            seen = [p for p in params if p.grad is not None and p in accumulated]
            if seen:
                torch._foreach_add_([accumulated[p] for p in seen], [p.grad for p in seen])
            for p in params:
                if p.grad is not None and p not in accumulated:
                    # At least float32 (fp16/bf16 sums lose bits), never below the gradient's
                    # own precision (a float32 buffer would round float64 gradients).
                    dtype = torch.promote_types(p.grad.dtype, torch.float32)
                    accumulated[p] = p.grad.detach().to(dtype, copy=True)
            sam.zero_grad(set_to_none=True)
    buffers = list(accumulated.values())
    torch._foreach_mul_(buffers, 1.0 / len(closures))
    if distributed:
        for buffer in buffers:
            torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.AVG)
    for p, buffer in accumulated.items():
        p.grad = buffer.to(p.dtype)
    sam._base_step()
    sam._phase = "stepped"
    return losses


# -- when swapping storage is safe ---------------------------------------------------------------


def swap_unsafe_reason(groups: list[dict], model: nn.Module | None) -> str | None:
    """Why ``swap_storage`` must not be the default for these parameters, or ``None``.

    Swapping re-points ``p.data`` at a spare buffer for the perturbed pass. That is invisible
    to eager autograd, DDP and any optimizer, but not to code that reaches the weights through
    another tensor than the parameter itself:

    - a parameter that is a view of, or shares, a larger storage (FSDP's or a fused
      optimizer's flat parameters, ``parameters_to_vector`` views): the flat tensor would not
      see ``w + eps``;
    - a ``DTensor`` parameter (FSDP2 / tensor parallel) and a model holding FSDP modules,
      which manage parameter storage themselves.

    A step traced by ``torch.compile`` or captured in a CUDA graph is checked per step
    (:func:`fixed_storage_needed`).
    """
    for group in groups:
        for p in group["params"]:
            if type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor":
                return "DTensor parameters (FSDP2 / tensor parallel) manage their own storage"
            if p._base is not None:
                return "a parameter is a view of another tensor (flat parameters)"
            if (
                p.device.type != "meta"
                and p.numel()
                and (
                    p.untyped_storage().nbytes() > p.numel() * p.element_size()
                    or p.storage_offset() != 0
                )
            ):
                return "a parameter shares a larger storage (flat parameters)"
    if model is not None:
        for module in model.modules():
            name = type(module).__name__
            if "FullyShardedDataParallel" in name or name.startswith("FSDP"):
                return f"the model holds an FSDP module ({name})"
    return None


def fixed_storage_needed() -> bool:
    """Whether this step is being traced by ``torch.compile`` or captured in a CUDA graph,
    where a parameter's storage must not change."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
