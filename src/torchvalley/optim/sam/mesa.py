r"""MESA: sharpness-aware training without a second pass (trajectory loss against an EMA model).

SAF and MESA (Du, Zhou, Feng, Tan, Goh, *Sharpness-Aware Training for Free*, NeurIPS 2022,
arXiv 2205.14083) replace SAM's perturbed pass by a *trajectory loss*: the KL divergence between
the model's tempered outputs and those of a past model on the same examples, which the paper
shows upper-bounds the change in loss along the trajectory (a sharpness proxy). SAF keeps the
outputs of every training example from ``E`` epochs ago (memory grows with the data set and
needs example indices in the loop); MESA, the paper's memory-efficient variant, takes the past
model to be an exponential moving average of the weights. MESA is what is built here: it needs
nothing from the training loop, and the paper reports it matching SAF's accuracy.

One step, with ``z = f(w; x)`` the logits of the batch::

    z_T = f(w_ema; x)                                      # an extra forward, no backward
    L_total = L(z, y) + lam * mean_x KL(softmax(z_T / tau) || softmax(z / tau))
    dL_total/dz = dL/dz + lam / (|B| tau) (softmax(z / tau) - softmax(z_T / tau))
    w = base_step(w, grad)                                 # any base optimizer
    w_ema = decay * w_ema + (1 - decay) * w

Cost: one forward and backward pass plus one forward of the EMA weights (about 1.3 passes),
one extra copy of the parameters. How it enters the training loop: MESA registers a forward
hook on ``model``; in a training forward with gradients enabled it runs the EMA model on the
same inputs (``torch.func.functional_call``, buffers cloned, so the live model's BatchNorm
statistics are untouched) and returns the logits through an identity whose backward adds the
trajectory term's gradient above. The loss value the loop sees is its own ``L`` (the term is
not added to it); the added gradient assumes ``L`` is a mean over the batch and that the model
returns logits of shape ``(batch, classes)``. A ``GradScaler``'s scale is not applied to the
added gradient, so MESA refuses to run under one (use bf16).

Defaults (``ema_decay = 0.995``, ``lam = 0.8``, ``tau = 4``): chosen for runs of a few
thousand steps here, not taken from the paper, whose ImageNet/CIFAR runs use a slower EMA and a
start epoch for the term; ``start_step`` delays the term.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchvalley.optim._profiling import profile_hook_step
from torchvalley.registry import (
    Hyperparameter,
    get_optimizer_entry,
    resolve_base_optimizer,
    revalidate_changed_groups,
    validate_group,
)

__all__ = ["MESA", "trajectory_gradient"]

#: Per group: each group's EMA may move at its own rate.
_GROUP_HYPERPARAMETERS = (
    Hyperparameter("ema_decay", "unit_interval_open", 0.995, "decay of the weight EMA"),
)
#: Global: the term acts on the model's outputs, which every group shares.
_TERM_HYPERPARAMETERS = (
    Hyperparameter("lam", "non_negative", 0.8, "weight of the trajectory (KL) term"),
    Hyperparameter("tau", "positive", 4.0, "temperature of the KL term"),
)


def trajectory_gradient(z: Tensor, z_teacher: Tensor, lam: float, tau: float) -> Tensor:
    """``d/dz`` of ``lam * mean_rows KL(softmax(z_T/tau) || softmax(z/tau))``, in ``z``'s dtype."""
    dtype = torch.promote_types(z.dtype, torch.float32)  # float32 at least, float64 kept
    p = torch.softmax(z.to(dtype) / tau, dim=1)
    q = torch.softmax(z_teacher.to(dtype) / tau, dim=1)
    return ((p - q) * (lam / (z.shape[0] * tau))).to(z.dtype)


class _Trajectory(torch.autograd.Function):
    """Identity on the logits whose backward adds the trajectory term's gradient."""

    @staticmethod
    def forward(ctx, z: Tensor, z_teacher: Tensor, lam: float, tau: float) -> Tensor:
        ctx.save_for_backward(z, z_teacher)
        ctx.lam, ctx.tau = lam, tau
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        z, z_teacher = ctx.saved_tensors
        return grad + trajectory_gradient(z, z_teacher, ctx.lam, ctx.tau), None, None, None


class MESA(torch.optim.Optimizer):
    """Any base optimizer plus MESA's trajectory term (see the module docstring).

    Args:
        params: parameters or param groups.
        base_optimizer: a registry name (``"sgd"``, ``"adamw"``, ...) or an optimizer class.
        model: the module being trained (required: its forward is hooked).
        lam: weight of the KL term (``0``: the base optimizer exactly, no extra forward).
        tau: temperature of both softmaxes.
        ema_decay: decay of the weight EMA (the teacher).
        start_step: steps before the term is switched on (``None``: from the first step).
        **base_hyperparameters: passed to the base optimizer.
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("base_optimizer", "optimizer", "sgd", "registry name or optimizer class"),
        *_GROUP_HYPERPARAMETERS,
        *_TERM_HYPERPARAMETERS,
        Hyperparameter("model", "any", None, "the module (required: its forward is hooked)"),
        Hyperparameter("start_step", "optional_positive_int", None, "steps before the term"),
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        *,
        model: nn.Module | None = None,
        lam: float = 0.8,
        tau: float = 4.0,
        ema_decay: float = 0.995,
        start_step: int | None = None,
        **base_hyperparameters: Any,
    ) -> None:
        settings = validate_group(
            self.HYPERPARAMETERS,
            {
                "base_optimizer": base_optimizer,
                "lam": lam,
                "tau": tau,
                "ema_decay": ema_decay,
                "start_step": start_step,
            },
        )
        if not isinstance(model, nn.Module):
            raise ValueError("Invalid model: MESA needs model=the nn.Module being trained")
        defaults = {h.name: settings[h.name] for h in _GROUP_HYPERPARAMETERS}
        super().__init__(params, defaults)
        for group in self.param_groups:
            validate_group(_GROUP_HYPERPARAMETERS, group)
        self.base_optimizer = resolve_base_optimizer(base_optimizer)(
            self.param_groups, **base_hyperparameters
        )
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        base_records = (
            get_optimizer_entry(base_optimizer).hyperparameters
            if isinstance(base_optimizer, str)
            else ()
        )
        self._records = (*_GROUP_HYPERPARAMETERS, *base_records)
        self._checked: dict[int, tuple] = {}
        # Under DDP the wrapped module is hooked and evaluated: the teacher's forward must not
        # go through DDP (no buffer broadcast, no reducer), and the gradient it adds to the
        # logits is then all-reduced with the rest.
        self.model = (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        )
        self.start_step = settings["start_step"] or 0
        self.lam, self.tau = float(settings["lam"]), float(settings["tau"])
        self.mesa_steps = 0
        self.ema: dict[Tensor, Tensor] = {}
        self._init_ema()
        self._in_teacher = False
        this = weakref.ref(self)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            optimizer = this()
            return output if optimizer is None else optimizer._hook(module, args, kwargs, output)

        handle = self.model.register_forward_hook(hook, with_kwargs=True)
        weakref.finalize(self, handle.remove)

    def _init_ema(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self.ema:
                    self.ema[p] = p.detach().clone()

    # -- the term ---------------------------------------------------------------------------------

    def _active(self) -> bool:
        return self.mesa_steps >= self.start_step and self.lam > 0

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if (
            module is not self.model  # a deep copy of the model carries the hook along
            or self._in_teacher
            or not module.training
            or not torch.is_grad_enabled()
            or not isinstance(output, Tensor)
            or not output.requires_grad
            or not self._active()
        ):
            return output
        if output.dim() != 2:
            raise ValueError(
                "Invalid model: MESA needs logits of shape (batch, classes), got "
                f"{tuple(output.shape)}"
            )
        names = {p: name for name, p in module.named_parameters()}
        weights = {names[p]: e for p, e in self.ema.items() if p in names}
        buffers = {name: b.clone() for name, b in module.named_buffers()}
        self._in_teacher = True
        try:
            with torch.no_grad():
                teacher = torch.func.functional_call(module, {**weights, **buffers}, args, kwargs)
        finally:
            self._in_teacher = False
        return _Trajectory.apply(output, teacher.detach(), self.lam, self.tau)

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        """The base optimizer's step (the term's gradient is already in ``.grad``), then the EMA."""
        if grad_scaler is not None:
            raise ValueError(
                "Invalid grad_scaler: MESA's added gradient is not scaled; train in bf16/fp32"
            )
        revalidate_changed_groups(self.param_groups, self._records, self._checked, self._validate)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.base_optimizer.step()
        self._init_ema()  # parameters added by add_param_group
        for group in self.param_groups:
            params = [p for p in group["params"] if p in self.ema]
            if params:  # w_ema <- decay w_ema + (1 - decay) w
                torch._foreach_lerp_(
                    [self.ema[p] for p in params], params, 1.0 - group["ema_decay"]
                )
        self.mesa_steps += 1
        return loss

    def _validate(self, group: dict[str, Any]) -> None:
        validate_group(self._records, group)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the wrapper and its base optimizer (one shared dict)."""
        if not hasattr(self, "base_optimizer"):
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        validate_group(_GROUP_HYPERPARAMETERS, param_group)
        self.base_optimizer.add_param_group(param_group)
        self._init_ema()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every parameter."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base's ``state_dict`` plus the step count and the EMA weights (by index)."""
        state = self.base_optimizer.state_dict()
        params = [p for group in self.param_groups for p in group["params"]]
        state["mesa"] = {
            "base": type(self.base_optimizer).__name__,
            "steps": self.mesa_steps,
            "ema": {i: self.ema[p] for i, p in enumerate(params) if p in self.ema},
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; another optimizer's (no ``mesa`` record, other base, groups
        lacking MESA's settings) is refused with a ValueError."""
        state_dict = dict(state_dict)
        record = state_dict.pop("mesa", None)
        base = type(self.base_optimizer).__name__
        if not isinstance(record, dict) or {"base", "steps", "ema"} - set(record):
            raise ValueError("Invalid state_dict: not saved by MESA (no 'mesa' record)")
        if record["base"] != base:
            raise ValueError(
                f"Invalid state_dict: saved by MESA over {record['base']}, loaded over {base}"
            )
        for group in state_dict["param_groups"]:
            missing = sorted(set(self.defaults) - set(group))
            if missing:
                raise ValueError(f"Invalid state_dict: its param groups lack {', '.join(missing)}")
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        params = [p for group in self.param_groups for p in group["params"]]
        self.mesa_steps = int(record["steps"])
        for i, t in record["ema"].items():
            p = params[int(i)]
            self.ema[p] = t.detach().to(device=p.device, dtype=p.dtype, copy=True)

    def __repr__(self) -> str:
        return f"MESA(base={self.base_optimizer!r})"
