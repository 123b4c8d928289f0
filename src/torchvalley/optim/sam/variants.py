r"""GSAM, WSAM and Friendly-SAM: SAM variants that change what the two gradients become.

All three run on the :class:`~torchvalley.optim.sam.SAM` wrapper (any ascent geometry, any base
optimizer, param groups, ``perturb=``, clipping, gradient centralization, BatchNorm handling) and
cost SAM's two passes. With ``g = grad L(w)`` (clean pass) and ``g_s = grad L(w + eps)``
(perturbed pass, pulled back to ``w`` on manifolds)::

    GSAM   d = g_s - alpha g_perp,   g_perp = g - (<g, g_s> / ||g_s||^2) g_s
    WSAM   d = g + a (g_s - g),      a = gamma / (1 - gamma)          (decouple=False)
           base step with g, then w -= lr a (g_s - g)                   (decouple=True)
    F-SAM  eps from g - sigma m_{t-1},   m_t = lmbda m_{t-1} + (1 - lmbda) g,   m_0 = g_1

and the base optimizer steps with ``d`` (F-SAM: with ``g_s``). Inner products and norms are
global over every parameter with a gradient, in float32 at least, in the ambient (Euclidean)
coordinates also for manifold parameters.

Reductions to SAM, bit for bit: GSAM with ``alpha = 0`` (the decomposition is skipped),
WSAM with ``gamma = 1/2`` and ``decouple=False`` (``a = 1``), F-SAM with ``sigma = 0`` (no
momentum is kept). WSAM with ``gamma = 1/2, decouple=True`` over plain SGD is SAM to round-off.

Papers: Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu, *Surrogate Gap
Minimization Improves Sharpness-Aware Training*, ICLR 2022 (Algorithm 1; ``rho_t`` follows the
learning rate: ``rho_min=`` here); Yue, Jiang, Ye, Gao, Liu, Zhang, *Sharpness-Aware
Minimization Revisited: Weighted Sharpness as a Regularization Term*, KDD 2023 (the decoupled
update is the paper's default); Li, Zhou, Tian, Yang, Huang, *Friendly Sharpness-Aware
Minimization*, CVPR 2024 (official nblt/F-SAM: the EMA takes the raw gradient; pytorch_optimizer's
per-tensor path feeds it the already debiased one, its foreach path at ``sigma=1,
lmbda>=0.5`` the raw one, which is what we match).

Not supported (a ``ValueError`` says so): a ``GradScaler`` (the clean gradient is kept unscaled
while the perturbed one is still scaled at the combination) and :meth:`SAM.step_micro_batches`
(one clean gradient per micro-batch would need its own combination; use plain SAM there).
Under DDP with ``perturbation_sync="local"`` the clean gradient of GSAM/WSAM is all-reduced
(averaged) before the combination, so every replica takes the same step; F-SAM's momentum is
then each replica's own (like its perturbation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchvalley.optim.sam import systems
from torchvalley.optim.sam.engine import SAM
from torchvalley.registry import Hyperparameter, validate_group
from torchvalley.sharding import foreach_copy_
from torchvalley.validation import check_non_negative

__all__ = ["GSAM", "WSAM", "FriendlySAM"]


def _refuse_scaler(grad_scaler: Any, name: str) -> None:
    if grad_scaler is not None:
        raise ValueError(
            f"Invalid grad_scaler: {name} combines the clean and the perturbed gradients, which "
            "a GradScaler scales differently; train in bf16 autocast without a scaler, or "
            "use SAM"
        )


def _dtype(tensors: list[Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _dot(a: list[Tensor], b: list[Tensor], dtype: torch.dtype) -> Tensor:
    return sum(
        torch.vdot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype))
        for x, y in zip(a, b, strict=True)
    )


def _norm(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    norms = torch._foreach_norm(tensors, 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


class _TwoGradientSAM(SAM):
    """SAM that keeps the clean gradient ``g`` of the step and combines it with ``g_s`` (the
    SAM gradient at ``w``) before the base step (:meth:`_combine`)."""

    _NAME = "SAM"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clean: dict[Tensor, Tensor] | None = None

    def _needs_clean(self) -> bool:
        return True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        _refuse_scaler(grad_scaler, self._NAME)
        return super().step(closure)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> bool:
        _refuse_scaler(grad_scaler, self._NAME)
        self._clean = None
        if self._needs_clean():
            # g of every parameter with a gradient; taken over when zero_grad frees it anyway.
            steal = zero_grad and systems.ddp_module(self.model) is None
            self._clean = {
                p: (p.grad if steal else p.grad.clone())
                for group in self.param_groups
                for p in group["params"]
                if p.grad is not None
            }
        return super().first_step(zero_grad)

    def second_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> None:
        _refuse_scaler(grad_scaler, self._NAME)
        try:
            super().second_step(zero_grad)
        finally:
            self._clean = None

    def step_micro_batches(self, closures: Sequence[Callable[[], Any]]) -> list[Any]:
        raise ValueError(
            f"Invalid call: {self._NAME} does not support step_micro_batches (one clean gradient "
            "per micro-batch); use step() or SAM"
        )

    def _before_base_step(self) -> None:
        clean, self._clean = self._clean, None
        if not clean:
            return
        params = [p for p in clean if p.grad is not None]
        if not params:
            return
        g = [clean[p] for p in params]
        ddp = self._local_ddp()
        if ddp is not None:  # per-replica g: one combination for all replicas
            for t in g:
                torch.distributed.all_reduce(
                    t, op=torch.distributed.ReduceOp.AVG, group=ddp.process_group
                )
        self._combine(params, g, [p.grad for p in params])

    def _combine(self, params: list[Tensor], g: list[Tensor], g_s: list[Tensor]) -> None:
        raise NotImplementedError


_GSAM_HYPERPARAMETERS = (
    Hyperparameter("alpha", "unit_interval", 0.4, "weight of the surrogate-gap component"),
    Hyperparameter("rho_min", "any", None, "rho at lr_min (None: constant rho)"),
    Hyperparameter("lr_min", "non_negative", 0.0, "the lr at which rho_t = rho_min"),
)


class GSAM(_TwoGradientSAM):
    r"""GSAM: SAM's gradient minus ``alpha`` times the clean gradient's component orthogonal
    to it, which descends the surrogate gap :math:`h = L(w + \epsilon) - L(w)` without
    changing the perturbed loss to first order.

    Args:
        params, base_optimizer, rho, ascent, perturb, **kwargs: as :class:`SAM`.
        alpha: weight of :math:`g_\perp` (``0``: SAM bit for bit; the paper's 0.01-0.3 on
            ImageNet, pytorch_optimizer's default 0.4).
        rho_min: ``None`` keeps each group's ``rho``; a number makes the radius follow the
            learning rate, :math:`\rho_t = \rho_{min} + (\rho - \rho_{min})
            (lr_t - lr_{min}) / (lr_{max} - lr_{min})` with :math:`lr_{max}` the group's
            ``initial_lr`` (set by any torch scheduler; without one ``lr_t = lr_max``: rho).
        lr_min: the learning rate at which the radius is ``rho_min``.
    """

    _NAME = "GSAM"
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        *SAM.HYPERPARAMETERS,
        *_GSAM_HYPERPARAMETERS,
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        alpha: float = 0.4,
        rho_min: float | None = None,
        lr_min: float = 0.0,
        **kwargs: Any,
    ) -> None:
        settings = validate_group(
            _GSAM_HYPERPARAMETERS, {"alpha": alpha, "rho_min": rho_min, "lr_min": lr_min}
        )
        if rho_min is not None:
            rho_min = check_non_negative("rho_min", rho_min)
        super().__init__(params, base_optimizer, rho, ascent, perturb, **kwargs)
        self.alpha, self.rho_min = float(settings["alpha"]), rho_min
        self.lr_min = float(settings["lr_min"])

    def _needs_clean(self) -> bool:
        return self.alpha != 0

    def _radius(self, group: dict[str, Any]) -> float:
        rho = group["rho"]
        if self.rho_min is None:
            return rho
        lr, lr_max = float(group["lr"]), float(group.get("initial_lr", group["lr"]))
        if lr_max == self.lr_min:
            return rho
        return self.rho_min + (rho - self.rho_min) * (lr - self.lr_min) / (lr_max - self.lr_min)

    def _combine(self, params: list[Tensor], g: list[Tensor], g_s: list[Tensor]) -> None:
        dtype = _dtype(g_s)
        # c = <g, g_s> / ||g_s||^2; g_perp = g - c g_s; d = g_s - alpha g_perp, computed as
        # d = (1 + alpha c) g_s - alpha g: two passes over g_s, none over w or a new buffer.
        c = _dot(g, g_s, dtype) / _norm(g_s, dtype).square().clamp_min(torch.finfo(dtype).tiny)
        if all(t.device.type == "cpu" for t in g_s):
            torch._foreach_mul_(g_s, float(1.0 + self.alpha * c))
        else:  # no host sync on accelerators
            torch._foreach_mul_(g_s, [(1.0 + self.alpha * c).to(t.dtype) for t in g_s])
        torch._foreach_add_(g_s, g, alpha=-self.alpha)

    def __repr__(self) -> str:
        return f"GSAM(alpha={self.alpha}, base={self.base_optimizer!r})"


_WSAM_HYPERPARAMETERS = (
    Hyperparameter("gamma", "unit_interval_open", 0.9, "sharpness weight; a = gamma/(1-gamma)"),
    Hyperparameter("decouple", "bool", True, "apply the sharpness term after the base step"),
)


class WSAM(_TwoGradientSAM):
    r"""WSAM: minimize :math:`L(w) + \frac{\gamma}{1-\gamma} (L(w + \epsilon) - L(w))`.

    Args:
        params, base_optimizer, rho, ascent, perturb, **kwargs: as :class:`SAM`.
        gamma: weight of the sharpness in ``[0, 1)``; ``a = gamma / (1 - gamma)``
            (``1/2``: ``a = 1``, SAM's objective).
        decouple: ``True`` (the paper's default): the base optimizer steps with the clean
            gradient ``g`` and then ``w -= lr a (g_s - g)`` (``lr`` of the group; the sharpness
            term bypasses the base's momentum and preconditioning, as weight decay in AdamW).
            ``False``: the base steps with ``g + a (g_s - g)``.

    Gradient centralization and clipping apply to what the base optimizer receives (with
    ``decouple=True`` the clean gradient; pytorch_optimizer clips ``g_s`` before mixing).
    """

    _NAME = "WSAM"
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        *SAM.HYPERPARAMETERS,
        *_WSAM_HYPERPARAMETERS,
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        gamma: float = 0.9,
        decouple: bool = True,
        **kwargs: Any,
    ) -> None:
        settings = validate_group(_WSAM_HYPERPARAMETERS, {"gamma": gamma, "decouple": decouple})
        super().__init__(params, base_optimizer, rho, ascent, perturb, **kwargs)
        self.gamma, self.decouple = float(settings["gamma"]), settings["decouple"]
        self.sharpness_weight = self.gamma / (1.0 - self.gamma)  # a
        if self.decouple and any("lr" not in group for group in self.param_groups):
            raise ValueError(
                "Invalid decouple: the decoupled sharpness step needs an 'lr' in every param "
                "group (the base optimizer has none); use decouple=False"
            )
        self._sharpness: list[tuple[Tensor, Tensor, dict]] = []

    def _needs_clean(self) -> bool:
        return self.decouple or self.sharpness_weight != 1.0

    def _combine(self, params: list[Tensor], g: list[Tensor], g_s: list[Tensor]) -> None:
        a = self.sharpness_weight
        if not self.decouple:
            torch._foreach_lerp_(g_s, g, 1.0 - a)  # g_s + (1 - a)(g - g_s) = g + a (g_s - g)
            return
        torch._foreach_sub_(g_s, g)  # g_s - g, kept for after the base step
        group_of = {p: group for group in self.param_groups for p in group["params"]}
        self._sharpness = [(p, s, group_of[p]) for p, s in zip(params, g_s, strict=True)]
        for p, clean in zip(params, g, strict=True):
            p.grad = clean  # the base steps with g

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> None:
        self._sharpness = []
        try:
            super().second_step(False, grad_scaler=grad_scaler)
            by_rate: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
            for p, sharpness, group in self._sharpness:
                params, terms = by_rate.setdefault(float(group["lr"]), ([], []))
                params.append(p)
                terms.append(sharpness)
            for lr, (params, terms) in by_rate.items():  # w -= lr a (g_s - g)
                torch._foreach_add_(params, terms, alpha=-lr * self.sharpness_weight)
        finally:
            self._sharpness = []
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def __repr__(self) -> str:
        return f"WSAM(gamma={self.gamma}, decouple={self.decouple}, base={self.base_optimizer!r})"


_FSAM_HYPERPARAMETERS = (
    Hyperparameter("sigma", "non_negative", 1.0, "weight of the momentum removed from g"),
    Hyperparameter("lmbda", "unit_interval", 0.9, "EMA decay of the gradient momentum"),
)


class FriendlySAM(SAM):
    r"""Friendly-SAM (F-SAM): the ascent follows :math:`g - \sigma m_{t-1}`, the batch-specific
    part of the gradient, with :math:`m` an EMA of past clean gradients (the full-gradient
    estimate); the descent is SAM's.

    Args:
        params, base_optimizer, rho, ascent, perturb, **kwargs: as :class:`SAM`.
        sigma: how much of the momentum is removed (``0``: SAM bit for bit, no momentum kept).
        lmbda: EMA decay, :math:`m_t = \lambda m_{t-1} + (1 - \lambda) g_t`, :math:`m_0 = g_1`
            (the first step ascends along :math:`g_1`, as the official code).

    The momentum covers the perturbed parameters and is part of ``state_dict``. The ascent
    geometry (ASAM, Fisher, Monge, Riemannian) is applied to the debiased direction.
    """

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        *SAM.HYPERPARAMETERS,
        *_FSAM_HYPERPARAMETERS,
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        sigma: float = 1.0,
        lmbda: float = 0.9,
        **kwargs: Any,
    ) -> None:
        settings = validate_group(_FSAM_HYPERPARAMETERS, {"sigma": sigma, "lmbda": lmbda})
        super().__init__(params, base_optimizer, rho, ascent, perturb, **kwargs)
        self.sigma, self.lmbda = float(settings["sigma"]), float(settings["lmbda"])
        self.momentum: dict[Tensor, Tensor] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        _refuse_scaler(grad_scaler, "FriendlySAM")
        return super().step(closure)

    def step_micro_batches(self, closures: Sequence[Callable[[], Any]]) -> list[Any]:
        raise ValueError(
            "Invalid call: FriendlySAM does not support step_micro_batches (the momentum "
            "would mix micro-batches); use step() or SAM"
        )

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> bool:
        _refuse_scaler(grad_scaler, "FriendlySAM")
        if self.sigma == 0:
            return super().first_step(zero_grad)
        params = [
            p
            for group in self.param_groups
            if group["perturbed"]
            for p in group["params"]
            if p.grad is not None and self._selects(p)
        ]
        fresh = {p for p in params if p not in self.momentum}
        for p in fresh:
            self.momentum[p] = p.grad.detach().clone()  # m_0 = g_1: ascend along g_1
        old = [p for p in params if p not in fresh]
        raw = [p.grad for p in old]
        if old:
            m = [self.momentum[p] for p in old]
            d = self._workspace("friendly", old)
            foreach_copy_(d, raw)
            torch._foreach_add_(d, m, alpha=-self.sigma)  # d = g - sigma m_{t-1}
            torch._foreach_lerp_(m, raw, 1.0 - self.lmbda)  # m_t = lmbda m_{t-1} + (1-lmbda) g
            for p, direction in zip(old, d, strict=True):
                p.grad = direction
        try:
            climbed = super().first_step(False)
        finally:
            for p, g in zip(old, raw, strict=True):
                if p.grad is not None:
                    p.grad = g
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return climbed

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """SAM's ``state_dict`` plus the momentum (by parameter index)."""
        state = super().state_dict()
        index = {p: i for i, p in enumerate(self._params())}
        state["friendly_sam"] = {
            "momentum": {index[p]: t for p, t in self.momentum.items() if p in index}
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without F-SAM's record is refused (ValueError)."""
        state_dict = dict(state_dict)
        record = state_dict.pop("friendly_sam", None)
        if not isinstance(record, dict) or "momentum" not in record:
            raise ValueError("Invalid state_dict: not saved by FriendlySAM (no 'friendly_sam')")
        super().load_state_dict(state_dict)
        params = self._params()
        self.momentum = {
            params[int(i)]: t.detach().to(params[int(i)].device, copy=True)
            for i, t in record["momentum"].items()
        }

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def __repr__(self) -> str:
        return f"FriendlySAM(sigma={self.sigma}, lmbda={self.lmbda}, base={self.base_optimizer!r})"
