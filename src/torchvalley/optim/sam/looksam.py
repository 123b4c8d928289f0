r"""LookSAM: the SAM gradient every ``k`` steps, its sharpness component reused in between.

Every ``k``-th step is a full SAM step (any ascent geometry, any base optimizer); it also
splits the SAM gradient :math:`g_s = \nabla L(w + \epsilon)` against the clean gradient
:math:`g = \nabla L(w)` of the same batch and keeps the part orthogonal to it::

    g_v = g_s - (<g_s, g> / ||g||^2) g            # SAM step (2 passes): what SAM adds to g
    ...
    g~ = g + alpha * (||g|| / ||g_v||) * g_v      # the k - 1 steps in between (1 pass each)

The in-between steps run one forward and backward pass; a step costs :math:`1 + 1/k` passes on
average (``k = 5``: 1.2). With ``k = 1`` every step is a SAM step and the numbers are SAM's bit
for bit (``g_v`` is computed but never used). Inner products and norms are global over every
parameter with a gradient, in float32 at least.

Liu, Mai, Chen, Hsieh, You, *Towards Efficient and Scalable Sharpness-Aware Minimization*,
CVPR 2022 (Algorithm 1: ``g_v`` as above, the adaptive ratio ``||g|| / ||g_v||``, ``k = 5``
as the paper's main setting). pytorch_optimizer's ``LookSAM`` runs two passes on every step
(no saving); here the in-between steps really cost one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchvalley.optim.sam import systems
from torchvalley.optim.sam.engine import SAM
from torchvalley.registry import Hyperparameter, validate_group

__all__ = ["LookSAM"]

_LOOKSAM_HYPERPARAMETERS = (
    Hyperparameter("k", "positive_int", 5, "a SAM step every k steps"),
    Hyperparameter("alpha", "non_negative", 0.3, "weight of the reused component g_v"),
)


class LookSAM(SAM):
    """SAM every ``k`` steps; the steps in between add ``alpha ||g|| / ||g_v|| g_v`` to ``g``.

    Args:
        params, base_optimizer, rho, ascent, perturb, **kwargs: as :class:`SAM`.
        k: period of the SAM steps (``1``: SAM itself).
        alpha: weight of the reused component (``0``: plain base steps in between). The
            default 0.3 is measured here (docs/results/sam_efficient.md: chosen by tuning on
            noisy digits; 0.7, pytorch_optimizer's default, underfits the wide MNIST-1D MLP).

    The step counter and ``g_v`` are part of ``state_dict`` (bit-identical resume). Under DDP
    with ``perturbation_sync="local"`` each replica's ``g_v`` is averaged across replicas, so
    the in-between steps stay identical everywhere.
    """

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        *SAM.HYPERPARAMETERS,
        *_LOOKSAM_HYPERPARAMETERS,
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        k: int = 5,
        alpha: float = 0.3,
        **kwargs: Any,
    ) -> None:
        settings = validate_group(_LOOKSAM_HYPERPARAMETERS, {"k": k, "alpha": alpha})
        super().__init__(params, base_optimizer, rho, ascent, perturb, **kwargs)
        self.k, self.alpha = settings["k"], settings["alpha"]
        self.looksam_steps = 0  # steps taken (the SAM steps are those with steps % k == 0)
        self._gv: dict[Tensor, Tensor] = {}  # g_v of the last SAM step, per parameter
        self._clean: dict[Tensor, Tensor] | None = None  # g of the SAM step being taken

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        """A SAM step (and a new ``g_v``) every ``k`` steps, a one-pass step otherwise."""
        if closure is None:
            raise RuntimeError(
                "LookSAM.step() needs a closure (zero_grad, forward, backward, return loss)"
            )
        if self.looksam_steps % self.k == 0:
            self._clean = {}
            try:
                loss = super().step(closure, grad_scaler=grad_scaler)
            finally:
                self._clean = None
        else:
            with torch.enable_grad():
                loss = closure()
            self._reuse_step(grad_scaler)
        self.looksam_steps += 1
        return loss

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> bool:
        if self._clean is not None:  # keep g for the split (taken over when freed anyway)
            steal = zero_grad and systems.ddp_module(self.model) is None
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._clean[p] = p.grad if steal else p.grad.clone()
        return super().first_step(zero_grad, grad_scaler=grad_scaler)

    def _before_base_step(self) -> None:
        # .grad = g_s at w (a GradScaler's scale too: g_v only enters through its direction).
        if not self._clean or self.first_pass_overflowed:
            return
        params = [p for p in self._clean if p.grad is not None]
        if not params:
            return
        g = [self._clean[p] for p in params]
        g_s = [p.grad for p in params]
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in g) else torch.float32
        dot = sum(
            torch.vdot(a.reshape(-1).to(dtype), b.reshape(-1).to(dtype))
            for a, b in zip(g_s, g, strict=True)
        )
        g_norm = _norm(g, dtype)
        coefficient = dot / g_norm.square().clamp_min(torch.finfo(dtype).tiny)
        torch._foreach_mul_(g, [(-coefficient).to(t.dtype) for t in g])  # -(<g_s,g>/|g|^2) g
        torch._foreach_add_(g, g_s)  # g_v = g_s - proj_g g_s, in g's buffers
        ddp = self._local_ddp()
        if ddp is not None:  # per-replica g: one g_v for all replicas
            for t in g:
                torch.distributed.all_reduce(
                    t, op=torch.distributed.ReduceOp.AVG, group=ddp.process_group
                )
        self._gv = dict(zip(params, g, strict=True))

    def _reuse_step(self, grad_scaler: Any) -> None:
        if grad_scaler is not None:
            grad_scaler.unscale_(self.base_optimizer)
        params = [p for p in self._gv if p.grad is not None]
        if params and self.alpha > 0:
            grads = [p.grad for p in params]
            g_v = [self._gv[p] for p in params]
            dtype = torch.float64 if any(t.dtype == torch.float64 for t in g_v) else torch.float32
            factor = (
                self.alpha
                * _norm(grads, dtype)
                / _norm(g_v, dtype).clamp_min(torch.finfo(dtype).tiny)
            )
            if all(t.device.type == "cpu" for t in grads):
                torch._foreach_add_(grads, g_v, alpha=float(factor))  # g + a|g|/|g_v| g_v
            else:
                torch._foreach_add_(grads, torch._foreach_mul(g_v, factor))
        self._base_step(grad_scaler, unscale=False)  # unscaled above

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """SAM's ``state_dict`` plus the step counter and ``g_v`` (by parameter index)."""
        state = super().state_dict()
        index = {p: i for i, p in enumerate(self._params())}
        state["looksam"] = {
            "steps": self.looksam_steps,
            "g_v": {index[p]: t for p, t in self._gv.items() if p in index},
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without LookSAM's record is refused (ValueError)."""
        state_dict = dict(state_dict)
        record = state_dict.pop("looksam", None)
        if not isinstance(record, dict) or {"steps", "g_v"} - set(record):
            raise ValueError("Invalid state_dict: not saved by LookSAM (no 'looksam' record)")
        super().load_state_dict(state_dict)
        params = self._params()
        self.looksam_steps = int(record["steps"])
        self._gv = {
            params[int(i)]: t.detach().to(params[int(i)].device, copy=True)
            for i, t in record["g_v"].items()
        }

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def __repr__(self) -> str:
        return f"LookSAM(k={self.k}, alpha={self.alpha}, base={self.base_optimizer!r})"


def _norm(tensors: list[Tensor], dtype: torch.dtype) -> Tensor:
    norms = torch._foreach_norm(tensors, 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
