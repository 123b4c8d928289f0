r"""A2Grad: optimal adaptive and accelerated stochastic gradient descent.

Paper: Q. Deng, Y. Cheng & G. Lan, *Optimal Adaptive and Accelerated Stochastic Gradient
Descent*, arXiv:1810.00553 (2018), Algorithms 2-7. Reference code: severilov/A2Grad_optimizer
(also jettify/pytorch-optimizer's ``A2GradUni/Inc/Exp``), which keeps one scalar ``h_k`` per
tensor (``per_tensor=True`` here); the paper's ``h_k ∈ R^d`` is per coordinate (the default).

The parameter holds ``y_k`` (the paper's x̲_k, where the gradient ``G_k`` is taken); the state
holds the mirror-descent iterate ``x_k``. With ``k = 0, 1, ...`` counted per parameter, one step
(Algorithm 7 with the diagonal scaling of Algorithm 3):

.. code-block:: text

    γ_k = 2L/(k+1),  α_k = 2/(k+2)                        # Theorem 2
    g̃_k = g̃_{k-1} + (G_k − g̃_{k-1})/(k+1)                # running mean of the gradients
    δ_k = G_k − g̃_k                                        # the practical variance proxy (§5)
    uni: v_k = v_{k-1} + δ_k²;                    h_k = √v_k           # Alg. 4 (q = 0)
    inc: v_k = (k/(k+1))² v_{k-1} + δ_k²;         h_k = √v_k           # Alg. 5 (q = 2)
    exp: ṽ_k = ρ ṽ_{k-1} + (1−ρ) δ_k² (ṽ_0 = δ_0²); v_k = max(ṽ_k, v_{k-1});
                                                  h_k = √((k+1) v_k)   # Alg. 6
    x_{k+1} = x_k − lr · G_k/(γ_k + β h_k)                  # lr = 1 is the paper
    x̄_{k+1} = y_k − α_k lr · G_k/(γ_k + β h_k)             # = (1−α_k) x̄_k + α_k x_{k+1}
    y_{k+1} = (1−α_{k+1}) x̄_{k+1} + α_{k+1} x_{k+1}

The state ``v`` holds v_k (uni, exp) or w_k = (k+1)² v_k (inc, which then needs no decay
pass), starting from the dtype's smallest normal number (see :func:`_accumulator`). ``δ_k²`` is
elementwise (``per_tensor=False``) or ``‖δ_k‖²`` summed over the tensor
(``per_tensor=True``). ``lr`` multiplies the paper's step (``lr = s`` equals the paper with
``L/s`` and ``β/s``); it is there so that learning-rate schedulers have something to drive.
The theory's output is the average x̄: :meth:`A2Grad.averaged` returns it and
:meth:`A2Grad.swap_averaged` puts it into the parameters (e.g. for evaluation). It is not stored:
x̄_k = (y_k − α_k x_k)/(1 − α_k) for k ≥ 1 (and x̄_0 = y_0).

Differences from the reference code, all deliberate: ``h_k`` per coordinate by default; ``v``
and ``h`` stay tensors (no ``.item()``, so no device synchronisation per parameter); ``maximize``
and a multi-tensor path. pytorch_optimizer's ``A2Grad`` shifts the iteration index by one
(``γ = 2L/(k+2)``, ``α_{k+1} = 2/(k+4)``, an extra ``√(k+2)`` in ``inc``), so it is not the
paper's algorithm; ``tests/optim/test_a2grad.py`` shows the shift.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchvalley.optim._profiling import profile_hook_step
from torchvalley.optim.riemannian import check_state_dict
from torchvalley.registry import Hyperparameter, revalidate_changed_groups, validate_group

__all__ = ["VARIANTS", "A2Grad", "a2grad"]

#: The three h_k recursions of the paper (Algorithms 4, 5, 6).
VARIANTS = ("uni", "inc", "exp")

_STATE_KEYS = ("step", "x", "gradient_average", "v", "v_smoothed")


class A2Grad(torch.optim.Optimizer):
    """A2Grad (Deng, Cheng & Lan 2018) with the uni / inc / exp step-size recursions.

    Args:
        params: parameters or param-group dicts.
        lr: multiplier of the paper's step ``1/(γ_k + β h_k)`` (1: the paper).
        lips: ``L``, the smoothness constant in ``γ_k = 2L/(k+1)``.
        beta: ``β``, the weight of the adaptive term ``β h_k`` (0: plain accelerated SGD).
        variant: ``"uni"``, ``"inc"`` or ``"exp"`` (the h_k recursion); ``"inc"``, the best of
            the three on both tasks of results/adaptive.md, is the default.
        rho: ``ρ`` of the exponential moving average of the ``exp`` variant.
        per_tensor: one ``h_k`` per tensor, as the reference code, instead of per coordinate.
        maximize: maximize the objective.
        foreach: multi-tensor path (``None``: on; the two paths agree to rounding).
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("lr", "non_negative", 1.0, "multiplier of the step 1/(γ_k + β h_k)"),
        Hyperparameter("lips", "positive", 10.0, "L in γ_k = 2L/(k+1)"),
        Hyperparameter("beta", "non_negative", 10.0, "β, weight of the adaptive term β h_k"),
        Hyperparameter("variant", "choice", "inc", "the h_k recursion", choices=VARIANTS),
        Hyperparameter("rho", "unit_interval", 0.5, "exp variant: moving-average factor ρ"),
        Hyperparameter(
            "per_tensor", "bool", False, "one h_k per tensor (reference code), not per coordinate"
        ),
        Hyperparameter("maximize", "bool", False, "maximize the objective instead"),
        Hyperparameter("foreach", "optional_bool", None, "multi-tensor path (None: on)"),
    )

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        lips: float = 10.0,
        beta: float = 10.0,
        variant: str = "inc",
        rho: float = 0.5,
        per_tensor: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "lips": lips,
            "beta": beta,
            "variant": variant,
            "rho": rho,
            "per_tensor": per_tensor,
            "maximize": maximize,
            "foreach": foreach,
        }
        validate_group(self.HYPERPARAMETERS, defaults)
        # id(group) -> its declared values when last validated (revalidate_changed_groups).
        self._checked_values: dict[int, tuple] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_checked_values", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after validating its hyperparameters."""
        super().add_param_group(param_group)
        validate_group(self.HYPERPARAMETERS, self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.load_state_dict`` after checking the dict is an A2Grad's."""
        super().load_state_dict(
            check_state_dict(self, state_dict, ("lips", "beta", "variant"), _STATE_KEYS)
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One A2Grad step for every parameter with a gradient; returns the closure's loss."""
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
        for group in self.param_groups:
            # (device, dtype, k) -> the tensors that take one step together.
            buckets: dict[tuple, list[tuple[Tensor, Tensor, dict[str, Any]]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue  # no gradient: no step, and k does not advance
                if p.grad.is_sparse:
                    raise ValueError("Invalid gradient: A2Grad does not support sparse gradients")
                state = self.state[p]
                if not state:
                    _init_state(state, p)
                key = (p.device, p.dtype, state["step"])
                buckets.setdefault(key, []).append((p, p.grad, state))
            foreach = group["foreach"] is not False
            for (_, _, k), members in buckets.items():
                params = [p for p, _, _ in members]
                grads = [g for _, g, _ in members]
                states = [s for _, _, s in members]
                step = _multi_tensor_a2grad if foreach else _single_tensor_a2grad
                step(params, grads, states, k, group)
                for state in states:
                    state["step"] = k + 1
        return loss

    # ------------------------------------------------------------------ the averaged output
    @torch.no_grad()
    def averaged(self) -> dict[Tensor, Tensor]:
        """The averaged iterate x̄_k (the theory's output) of every parameter, as new tensors.

        ``x̄_k = (y_k − α_k x_k)/(1 − α_k)`` with ``α_k = 2/(k+2)``; a parameter that has not
        stepped yet is its own average.
        """
        result: dict[Tensor, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or state["step"] == 0:
                    result[p] = p.detach().clone()
                    continue
                alpha = 2.0 / (state["step"] + 2)
                result[p] = (p.detach() - alpha * state["x"]) / (1.0 - alpha)
        return result

    @contextlib.contextmanager
    def swap_averaged(self) -> Iterator[None]:
        """Within the block, the parameters hold x̄_k; afterwards y_k again (bit for bit).

        Example:
            >>> model = torch.nn.Linear(2, 1)
            >>> optimizer = A2Grad(model.parameters())
            >>> model(torch.ones(1, 2)).sum().backward(); optimizer.step()
            >>> with optimizer.swap_averaged():
            ...     _ = model(torch.ones(1, 2))   # evaluated at the averaged iterate
        """
        averaged = self.averaged()
        saved = {p: p.detach().clone() for p in averaged}
        with torch.no_grad():
            for p, value in averaged.items():
                p.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in saved.items():
                    p.copy_(value)


def _init_state(state: dict[str, Any], p: Tensor) -> None:
    """k = 0, x_0 = y_0, g̃_{-1} = 0; v_{-1} = 0 (and ṽ for ``exp``) are made at first use."""
    state["step"] = 0
    state["x"] = p.detach().clone()
    state["gradient_average"] = torch.zeros_like(p)


@dataclasses.dataclass(frozen=True)
class _Coefficients:
    """The step's scalars. With d = G_k − g̃_{k−1}: g̃_k = g̃_{k−1} + d/(k+1) and δ_k = c·d,
    c = k/(k+1), so δ_k² = c² d² needs no second pass. ``inc`` keeps w_k = (k+1)² v_k =
    w_{k−1} + k² d² (no decay pass) and h_k = √w_k/(k+1). With h_k = s √(state) (s = 1 for
    uni, 1/(k+1) for inc, √(k+1) for exp) the step G/(γ + β h) is computed as
    (1/(β s)) · G/(√state + γ/(β s)), one pass fewer; β = 0 is the step G/γ."""

    average_weight: float  # 1/(k+1)
    square_weight: float  # uni, exp: c²; inc: k²
    shift: float  # γ_k/(β s)
    x_value: float  # −lr/(β s), or −lr/γ_k when β = 0
    y_value: float  # α_k · x_value
    alpha_next: float  # α_{k+1}
    adaptive: bool  # β > 0


def _coefficients(k: int, group: dict[str, Any]) -> _Coefficients:
    gamma = 2.0 * group["lips"] / (k + 1)  # γ_k = 2L/(k+1)
    alpha, alpha_next = 2.0 / (k + 2), 2.0 / (k + 3)  # α_k, α_{k+1}
    variant = group["variant"]
    scale = {"uni": 1.0, "inc": 1.0 / (k + 1), "exp": (k + 1) ** 0.5}[variant]
    weight = float(group["beta"]) * scale
    lr = float(group["lr"])
    x_value = -lr / weight if weight > 0 else -lr / gamma
    return _Coefficients(
        average_weight=1.0 / (k + 1),
        square_weight=float(k * k) if variant == "inc" else (k / (k + 1)) ** 2,
        shift=gamma / weight if weight > 0 else 0.0,
        x_value=x_value,
        y_value=alpha * x_value,
        alpha_next=alpha_next,
        adaptive=weight > 0,
    )


def _accumulator(state: dict[str, Any], key: str, per_tensor: bool) -> Tensor:
    """``v`` (or ``v_smoothed``): per coordinate, or a 0-dim tensor for ``per_tensor``; made
    at first use (or when the group switched between the two).

    ``v`` starts at the dtype's smallest normal number instead of 0 (``v_smoothed`` at 0):
    √0 takes a slow path on some CPUs (6-8x slower on the AMD EPYC of results/adaptive.md)
    and a coordinate whose gradient never changes keeps v = 0 exactly. The offset changes
    √v only where v < 2^-100, far below the other term of the denominator.
    """
    x = state["x"]
    value = state.get(key)
    shape = () if per_tensor else x.shape
    if value is None or value.shape != shape:
        fill = torch.finfo(x.dtype).tiny if key == "v" else 0.0
        value = state[key] = torch.full(shape, fill, dtype=x.dtype, device=x.device)
    return value


def _single_tensor_a2grad(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    k: int,
    group: dict[str, Any],
) -> None:
    """The per-tensor path (the reference; the multi-tensor path runs the same arithmetic)."""
    c = _coefficients(k, group)
    variant, rho, per_tensor = group["variant"], group["rho"], group["per_tensor"]
    for p, grad, state in zip(params, grads, states, strict=True):
        grad = -grad if group["maximize"] else grad  # G_k
        average = state["gradient_average"]
        d = grad - average  # G_k − g̃_{k−1}
        average.add_(d, alpha=c.average_weight)  # g̃_k = g̃_{k−1} + d/(k+1)
        if per_tensor:
            d = torch.linalg.vector_norm(d)  # δ_k² summed over the tensor is c²‖d‖²
        v = _accumulator(state, "v", per_tensor)
        if variant == "exp":
            smoothed = _accumulator(state, "v_smoothed", per_tensor)
            smoothed.mul_(rho).addcmul_(d, d, value=(1.0 - rho) * c.square_weight)  # ṽ_k
            torch.maximum(v, smoothed, out=v)  # v_k = max(ṽ_k, v_{k-1})
        else:
            v.addcmul_(d, d, value=c.square_weight)  # uni: v += δ²; inc: w += (k+1)² δ²
        x = state["x"]
        if c.adaptive:
            denominator = v.sqrt().add_(c.shift)  # (γ_k + β h_k)/(β s)
            x.addcdiv_(grad, denominator, value=c.x_value)  # x_{k+1} = x_k − lr G/(γ + βh)
            p.addcdiv_(grad, denominator, value=c.y_value)  # x̄_{k+1} = y_k − α_k lr G/(…)
        else:
            x.add_(grad, alpha=c.x_value)
            p.add_(grad, alpha=c.y_value)
        p.lerp_(x, c.alpha_next)  # y_{k+1} = (1−α_{k+1}) x̄_{k+1} + α_{k+1} x_{k+1}


def _multi_tensor_a2grad(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    k: int,
    group: dict[str, Any],
) -> None:
    """The multi-tensor path: :func:`_single_tensor_a2grad` with ``torch._foreach_*`` ops."""
    c = _coefficients(k, group)
    variant, rho, per_tensor = group["variant"], group["rho"], group["per_tensor"]
    if group["maximize"]:
        grads = torch._foreach_neg(grads)
    averages = [state["gradient_average"] for state in states]
    xs = [state["x"] for state in states]
    ds = torch._foreach_sub(grads, averages)
    torch._foreach_add_(averages, ds, alpha=c.average_weight)
    if per_tensor:
        ds = list(torch._foreach_norm(ds))
    vs = [_accumulator(state, "v", per_tensor) for state in states]
    if variant == "exp":
        smoothed = [_accumulator(state, "v_smoothed", per_tensor) for state in states]
        torch._foreach_mul_(smoothed, rho)
        torch._foreach_addcmul_(smoothed, ds, ds, value=(1.0 - rho) * c.square_weight)
        torch._foreach_maximum_(vs, smoothed)
    else:
        torch._foreach_addcmul_(vs, ds, ds, value=c.square_weight)
    if not c.adaptive:
        torch._foreach_add_(xs, grads, alpha=c.x_value)
        torch._foreach_add_(params, grads, alpha=c.y_value)
    elif per_tensor:  # scalar denominators: broadcast per tensor
        denominators = torch._foreach_sqrt(vs)
        torch._foreach_add_(denominators, c.shift)
        for p, grad, x, denominator in zip(params, grads, xs, denominators, strict=True):
            x.addcdiv_(grad, denominator, value=c.x_value)
            p.addcdiv_(grad, denominator, value=c.y_value)
    else:
        denominators = ds  # d is spent: its memory takes √v + shift (no new allocation)
        for v, denominator in zip(vs, denominators, strict=True):
            torch.sqrt(v, out=denominator)
        torch._foreach_add_(denominators, c.shift)
        torch._foreach_addcdiv_(xs, grads, denominators, value=c.x_value)
        torch._foreach_addcdiv_(params, grads, denominators, value=c.y_value)
    torch._foreach_lerp_(params, xs, c.alpha_next)


def a2grad(params: Any, **hyperparameters: Any) -> A2Grad:
    """``A2Grad(params, **hyperparameters)``: the registry's factory (see :class:`A2Grad`)."""
    return A2Grad(params, **hyperparameters)
