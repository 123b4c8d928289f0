r"""bSAM: Bayesian sharpness-aware minimization (a variational-Adam update with a SAM ascent).

One step, per parameter (elementwise; ``w`` the mean of the Gaussian posterior, ``s`` its
precision per unit of data, ``N`` the number of training examples)::

    w~ = w + n / sqrt(N s),  n ~ N(0, I)              # a posterior sample
    g  = grad L(w~)                                   # pass 1 (noisy gradient)
    g_a = grad L(w + rho g / s)                       # pass 2: ascent from the mean, metric s
    m  = beta1 m + (1 - beta1) (g_a + delta w)        # momentum, prior precision delta
    w  = w - lr m / s                                 # the step uses the old precision
    s  = beta2 s + (1 - beta2) (sqrt(s) |g| + gamma + delta)   # precision, damping gamma

It is not a wrapper: the descent is bSAM's own natural-gradient (variational) rule, whose
precision ``s`` is also the ascent metric and the sampling precision; putting another base
optimizer under it would no longer be bSAM. The noise comes from the optimizer's own generator
(seeded; its state is in ``state_dict``). ``step`` returns the loss of the first pass (at the
posterior sample). After training, ``w`` is the posterior mean and ``1 / (N s)`` the variance
(:meth:`BSAM.posterior_variance`).

Möllenhoff & Khan, *SAM as an Optimal Relaxation of Bayes*, ICLR 2023 (official JAX
team-approx-bayes/bayesian-sam ``optim.py``: the formulas above, ``s`` initialised to
``s_init``). pytorch_optimizer's ``BSAM`` differs (noise std ``1/(N s)``, the ascent and the
update taken from the noisy point, momentum of ``delta g``), so it is not a numerical anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchvalley.optim._profiling import profile_hook_step
from torchvalley.registry import Hyperparameter, revalidate_changed_groups, validate_group
from torchvalley.sharding import foreach_copy_

__all__ = ["BSAM"]


class BSAM(torch.optim.Optimizer):
    """Bayesian SAM (bSAM): noisy pass, ascent in the precision metric, variational-Adam step.

    Args:
        params: parameters or param groups.
        num_data: ``N``, the number of training examples (scales the posterior variance).
        lr: step size.
        betas: ``(beta1, beta2)``: momentum and precision averaging.
        weight_decay: ``delta``, the prior precision (also added to ``s``).
        rho: ascent radius (unnormalized: ``eps = rho g / s``).
        damping: ``gamma`` added to the precision update.
        s_init: initial precision.
        seed: seed of the noise generator.
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("lr", "non_negative", 0.5, "step size"),
        Hyperparameter("betas", "betas", (0.9, 0.999), "momentum and precision averaging"),
        Hyperparameter("weight_decay", "non_negative", 1e-4, "prior precision delta"),
        Hyperparameter("rho", "non_negative", 0.05, "ascent radius (eps = rho g / s)"),
        Hyperparameter("damping", "non_negative", 0.1, "damping gamma of the precision"),
        Hyperparameter("s_init", "positive", 1.0, "initial precision"),
    )
    _GLOBAL = (
        Hyperparameter("num_data", "positive_int", 50000, "number of training examples N"),
        Hyperparameter("seed", "any", 0, "seed of the noise generator (an int)"),
    )
    STATE_KEYS: ClassVar[frozenset[str]] = frozenset({"precision", "momentum"})

    def __init__(
        self,
        params: Iterable[Any],
        num_data: int = 50000,
        lr: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-4,
        rho: float = 0.05,
        damping: float = 0.1,
        s_init: float = 1.0,
        seed: int = 0,
    ) -> None:
        validate_group(self._GLOBAL, {"num_data": num_data, "seed": seed})
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Invalid seed: {seed!r} (an int)")
        defaults = {
            "lr": lr,
            "betas": betas,
            "weight_decay": weight_decay,
            "rho": rho,
            "damping": damping,
            "s_init": s_init,
        }
        validate_group(self.HYPERPARAMETERS, defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            validate_group(self.HYPERPARAMETERS, group)
        self.num_data = num_data
        self.generator = torch.Generator().manual_seed(seed)
        self._checked_values: dict[int, tuple] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate the group's own values, then add it."""
        validate_group(self.HYPERPARAMETERS, param_group)
        super().add_param_group(param_group)

    def _state(self, group: dict, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["precision"] = torch.full_like(p, float(group["s_init"]))
            state["momentum"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One bSAM step (the closure zeroes grads, runs forward and backward, returns the loss;
        it is called twice). Returns the loss at the posterior sample."""
        if closure is None:
            raise RuntimeError(
                "BSAM.step() needs a closure (zero_grad, forward, backward, return loss): it "
                "evaluates the gradient at a posterior sample and at the ascent point"
            )
        revalidate_changed_groups(
            self.param_groups, self.HYPERPARAMETERS, self._checked_values, self._validate
        )
        closure = torch.enable_grad()(closure)
        groups = [(g, [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        groups = [(g, ps) for g, ps in groups if ps]
        params = [p for _, ps in groups for p in ps]
        for group, ps in groups:
            for p in ps:
                self._state(group, p)
        precision = [self.state[p]["precision"] for p in params]
        backup = [p.detach().clone() for p in params]
        try:
            # w~ = w + n / sqrt(N s); n drawn in float32 whatever p's dtype (the same sample in
            # every precision)
            noise = [
                torch.randn(p.shape, generator=self.generator, dtype=torch.float32).to(
                    p.device, p.dtype
                )
                for p in params
            ]
            std = torch._foreach_mul(precision, float(self.num_data))
            torch._foreach_rsqrt_(std)
            torch._foreach_mul_(noise, std)
            torch._foreach_add_(params, noise)
            del noise, std
            loss = closure()
            noisy = {p: p.grad for p in params if p.grad is not None}
            foreach_copy_(params, backup)
            for group, ps in groups:  # w + rho g / s, from the mean
                moved = [p for p in ps if p in noisy]
                if moved:
                    torch._foreach_addcdiv_(
                        moved,
                        [noisy[p] for p in moved],
                        [self.state[p]["precision"] for p in moved],
                        value=group["rho"],
                    )
            self.zero_grad(set_to_none=True)
            closure()
        finally:
            foreach_copy_(params, backup)
        del backup
        for group, ps in groups:
            ps = [p for p in ps if p.grad is not None and p in noisy]
            if not ps:
                continue
            beta1, beta2 = group["betas"]
            delta = group["weight_decay"]
            s = [self.state[p]["precision"] for p in ps]
            m = [self.state[p]["momentum"] for p in ps]
            torch._foreach_mul_(m, beta1)  # m = beta1 m + (1 - beta1)(g_a + delta w)
            torch._foreach_add_(m, [p.grad for p in ps], alpha=1 - beta1)
            if delta != 0:
                torch._foreach_add_(m, ps, alpha=(1 - beta1) * delta)
            torch._foreach_addcdiv_(ps, m, s, value=-group["lr"])  # w - lr m / s
            curvature = torch._foreach_sqrt(s)  # sqrt(s) |g| + gamma + delta
            torch._foreach_mul_(curvature, torch._foreach_abs([noisy[p] for p in ps]))
            torch._foreach_add_(curvature, group["damping"] + delta)
            torch._foreach_mul_(s, beta2)  # s = beta2 s + (1 - beta2) curvature
            torch._foreach_add_(s, curvature, alpha=1 - beta2)
        return loss

    def _validate(self, group: dict[str, Any]) -> None:
        validate_group(self.HYPERPARAMETERS, group)

    def posterior_variance(self, p: Tensor) -> Tensor:
        """The variance ``1 / (N s)`` of ``p``'s Gaussian posterior (``p`` is its mean)."""
        state = self.state[p]
        if "precision" not in state:
            raise ValueError("Invalid p: no bSAM state yet (take a step first)")
        return (self.num_data * state["precision"]).reciprocal()

    def state_dict(self) -> dict[str, Any]:
        """Torch's ``state_dict`` plus the noise generator and ``num_data``."""
        state = super().state_dict()
        state["bsam"] = {"generator": self.generator.get_state(), "num_data": self.num_data}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one saved by another optimizer is refused (ValueError)."""
        state_dict = dict(state_dict)
        record = state_dict.pop("bsam", None)
        if not isinstance(record, dict) or "generator" not in record:
            raise ValueError("Invalid state_dict: not saved by BSAM (no 'bsam' record)")
        for index, group in enumerate(state_dict["param_groups"]):
            missing = sorted(set(self.defaults) - set(group))
            if missing:
                raise ValueError(f"Invalid state_dict: group {index} lacks {missing}")
            validate_group(self.HYPERPARAMETERS, dict(group))
        for key, state in state_dict["state"].items():
            foreign = sorted(set(state) - self.STATE_KEYS)
            if foreign:
                raise ValueError(f"Invalid state_dict: param {key} holds {foreign}")
        super().load_state_dict(state_dict)
        self.generator.set_state(record["generator"].clone())
        self.num_data = int(record["num_data"])
