r"""FG-SGD: fine-grained SGD on products of weight manifolds with multi-norm renormalization.

Paper: M. Ozay, *Fine-grained Optimization of Deep Neural Networks*, NeurIPS 2019
(arXiv:1905.09054). No public code exists; this module is a reconstruction, whose choices
(groupings, constraints, radii, the step bound, which parameters are constrained) are set out
in ``docs/fgsgd.md``.

A weight ``W`` of shape ``(out, in, *k)`` is viewed as a matrix ``M`` whose rows are its groups
(``"PO"``: output channels, ``"PI"``: input channels, ``"PIO"``: kernel slices) and written
``W = r · X`` with ``X`` on a manifold of that view (``"sphere"``: unit rows, ``"oblique"``:
unit columns, ``"stiefel"``: orthonormal) and ``r`` a per-group radius (fixed, the initial
norms, or learned with ``learn_radius=True``). One step, per group:

.. code-block:: text

    ξ ← egrad2rgrad(X, r ∇_W L)                      # Riemannian gradient w.r.t. X
    b ← μ b + ξ  (b ← ξ at the first step)           # tangent-space heavy ball
    d ← ξ + μ b  if nesterov else b
    t ← η / max(1, η ‖d‖_X / δ)                      # never move a group more than δ
    X ← R_X(−t d);  b ← transp(X_old → X, b)         # retraction, moment carried along
    W ← r · X

The step is :func:`torchvalley.optim.riemannian.rsgd_update` (shared with RSGD) with the bound
``δ = step_bound`` (default π/4; ``None`` or ``inf``: plain Riemannian SGD). Unconstrained
parameters (``constraint=None``/``"none"`` groups, biases, and with ``model=`` the weights of
layers other than ``Linear``/``Conv``) get exactly ``torch.optim.SGD``'s update; weight decay
applies only to them. :func:`renormalize_weights` does the renormalization on a model instead,
through ``torch.nn.utils.parametrize``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd as _torch_sgd

from torchvalley.manifolds.base import Manifold
from torchvalley.manifolds.parameter import ManifoldParameter, manifold_of
from torchvalley.manifolds.weight_groups import (
    CONSTRAINTS,
    GROUPINGS,
    FGManifold,
    _check_constraint,
    _euclidean_ids,
    fg_manifold,
    initial_radius,
    renormalize_weights,
)
from torchvalley.optim._profiling import profile_hook_step
from torchvalley.optim.riemannian import check_membership, check_state_dict, rsgd_update
from torchvalley.registry import Hyperparameter, revalidate_changed_groups, validate_group
from torchvalley.validation import (
    check_optional_positive,
)

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_STEP_BOUND",
    "FGSGD",
    "GROUPINGS",
    "FGManifold",
    "fg_manifold",
    "renormalize_weights",
]

#: Default bound on the metric length of one step (see the module docstring).
DEFAULT_STEP_BOUND = math.pi / 4


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _step_bound(value: Any) -> float | None:
    """``None`` for no bound (``None`` or ``inf``), else the positive finite bound."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == math.inf:
        return None
    check_optional_positive("step_bound", value)
    return None if value is None else float(value)


def _validate_group(group: dict[str, Any]) -> None:
    """The declared checks (``FGSGD.HYPERPARAMETERS``) on a view of ``group`` that spells the two
    aliases the records cannot express (``constraint=None`` is ``"none"``, ``step_bound=inf``
    is ``None``), plus the one cross-field rule; the group itself keeps what the user wrote."""
    view = dict(group)
    if view.get("constraint") is None:
        view["constraint"] = "none"
    if "step_bound" in view:
        view["step_bound"] = _step_bound(view["step_bound"])
    validate_group(FGSGD_HYPERPARAMETERS, view)
    if group["nesterov"] and float(group["momentum"]) == 0.0:
        raise ValueError("Invalid nesterov: Nesterov momentum requires a momentum > 0")


def _fg_code(constraint: str, grouping: str) -> int:
    """``state["fg"]``: the index of ``(constraint, grouping)`` in ``CONSTRAINTS × GROUPINGS``."""
    return CONSTRAINTS.index(constraint) * len(GROUPINGS) + GROUPINGS.index(grouping)


def _fg_name(code: Any) -> str:
    if not isinstance(code, int) or not 0 <= code < len(CONSTRAINTS) * len(GROUPINGS):
        return repr(code)
    return f"{CONSTRAINTS[code // len(GROUPINGS)]}/{GROUPINGS[code % len(GROUPINGS)]}"


# --------------------------------------------------------------------------------------------
# The update
# --------------------------------------------------------------------------------------------


def _riemannian_update(
    manifold: Manifold,
    x: Tensor,
    egrad: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    step_bound: float | None,
    group_norm: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor | None]:
    """One FG-SGD step of the point(s) ``x``: Riemannian SGD without dampening, the step's
    length bounded per weight group (:func:`~torchvalley.optim.riemannian.rsgd_update`)."""
    return rsgd_update(
        manifold,
        x,
        manifold.egrad2rgrad(x, egrad),
        buf,
        lr=lr,
        momentum=momentum,
        dampening=0.0,
        nesterov=nesterov,
        bound=step_bound,
        norm=group_norm,
    )


#: FG-SGD's hyperparameters (one declaration: the class and its catalog entry use it).
FGSGD_HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("lr", "non_negative", 1e-3, "learning rate"),
    Hyperparameter("momentum", "unit_interval_open", 0.0, "tangent-space heavy-ball momentum"),
    Hyperparameter(
        "weight_decay", "non_negative", 0.0, "L2 penalty on the unconstrained parameters only"
    ),
    Hyperparameter("nesterov", "bool", False, "Nesterov momentum"),
    Hyperparameter("maximize", "bool", False, "maximize the objective instead of minimizing"),
    Hyperparameter(
        "constraint",
        "choice",
        "sphere",
        "manifold of the weight groups ('none': plain SGD for the group)",
        (*CONSTRAINTS, "none"),
    ),
    Hyperparameter(
        "grouping",
        "choice",
        "PO",
        "weight groups: per output channel, per input channel, per (output, input) kernel",
        GROUPINGS,
    ),
    Hyperparameter(
        "radius", "optional_positive", None, "fixed norm of every group (None: initial norms)"
    ),
    Hyperparameter("learn_radius", "bool", False, "learn each group's radius (scale) by SGD"),
    Hyperparameter(
        "step_bound",
        "optional_positive",
        DEFAULT_STEP_BOUND,
        "bound on the metric length of one step per group (None: unbounded)",
    ),
    Hyperparameter(
        "foreach",
        "optional_bool",
        None,
        "batched (True) or per-tensor (False) path; None: batched when all params are on CUDA",
    ),
    Hyperparameter("model", "any", None, "the module: only Linear/Conv weights of torch layers"),
)


class FGSGD(torch.optim.Optimizer):
    """FG-SGD: Riemannian SGD with momentum on renormalized weight groups (Ozay, NeurIPS 2019).

    See the module docstring for the update, and docs/fgsgd.md for the groupings, the
    constraints and which parameters are constrained.

    Args:
        params: parameters or param groups.
        lr: learning rate ``η`` (≥ 0).
        momentum: heavy-ball momentum ``μ`` in ``[0, 1)`` (tangent-space buffer, transported).
        weight_decay: L2 penalty, applied to the unconstrained parameters only.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        maximize: maximize the objective.
        constraint: ``"sphere"``, ``"oblique"``, ``"stiefel"``, or ``None``/``"none"`` (the
            group is plain SGD, except for its ``ManifoldParameter``s).
        grouping: ``"PO"``, ``"PI"`` or ``"PIO"``.
        radius: ``None`` (each group's initial norm) or the fixed norm of every group.
        learn_radius: learn each group's radius ``r`` (a scale, as in weight normalization)
            by SGD with the group's ``lr``, momentum and Nesterov on its gradient
            ``∂L/∂r = ⟨∂L/∂W, W̄⟩`` per group; kept positive. Off: the radius stays fixed.
        step_bound: bound ``δ`` on the metric length of one step per group; ``None`` or
            ``math.inf`` for no bound. Default ``π/4``.
        foreach: batch same-shape constrained weights and use ``torch._foreach_*`` for the
            unconstrained ones (``None``: when every parameter is on CUDA). Same numbers as the
            per-tensor path up to rounding.
        model: the module being trained; restricts the constraint to ``Linear``/``Conv``
            weights among torch's layers (see the module docstring).

    Raises:
        ValueError: naming the invalid hyperparameter, or for a weight whose shape does not
            fit the constraint and grouping.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        >>> opt = FGSGD(model.parameters(), lr=0.1, momentum=0.9, model=model)
        >>> model(torch.ones(5, 4)).square().sum().backward()
        >>> _ = opt.step()
        >>> r = opt.state[model[0].weight]["radius"]
        >>> torch.allclose(model[0].weight.norm(dim=1, keepdim=True), r)
        True
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = FGSGD_HYPERPARAMETERS

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        constraint: str | None = "sphere",
        grouping: str = "PO",
        radius: float | None = None,
        learn_radius: bool = False,
        step_bound: float | None = DEFAULT_STEP_BOUND,
        foreach: bool | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        self._euclidean = _euclidean_ids(model) if model is not None else set()
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "constraint": constraint,
            "grouping": grouping,
            "radius": radius,
            "learn_radius": learn_radius,
            "step_bound": step_bound,
            "foreach": foreach,
        }
        _validate_group(defaults)
        # id(group) -> its declared values when last validated (revalidate_changed_groups).
        self._checked_values: dict[int, tuple] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_checked_values", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after validating its hyperparameters and weight shapes."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group)
        for p in group["params"]:
            self._manifold_of(p, group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.load_state_dict`` after checking that the dict is an FG-SGD
        state (``ValueError`` naming what differs); ``ManifoldParameter``s are checked for
        membership at the next step."""
        state_dict = check_state_dict(
            self,
            state_dict,
            ("lr", "momentum", "constraint", "grouping", "step_bound"),
            ("momentum_buffer", "radius", "fg", "radius_momentum"),
        )
        super().load_state_dict(state_dict)
        self._point_versions = {}

    def _manifold_of(self, p: Tensor, group: dict[str, Any]) -> Manifold | None:
        """The manifold ``p`` is updated on (``None``: plain SGD)."""
        if isinstance(p, ManifoldParameter):
            manifold = manifold_of(p)
            return None if manifold.is_flat else manifold
        constraint = _check_constraint(group["constraint"])
        if constraint is None or p.dim() < 2 or id(p) in self._euclidean:
            return None
        return fg_manifold(p.shape, constraint, group["grouping"])

    def _init_fg_state(self, p: Tensor, manifold: FGManifold, group: dict[str, Any]) -> None:
        state = self.state[p]
        # The (constraint, grouping) the radius belongs to, as an int: torch's load_state_dict
        # mangles strings in the state (it iterates over them).
        key = _fg_code(manifold.constraint, manifold.grouping)
        if "radius" in state:
            if state.get("fg") != key:
                raise ValueError(
                    f"Invalid constraint: a parameter of shape {tuple(p.shape)} was renormalized "
                    f"as {_fg_name(state.get('fg'))!r} and its group now asks for "
                    f"{_fg_name(key)!r}; the radius is fixed when the state is created (build "
                    "a new optimizer to change it)"
                )
            return
        view = manifold.to_view(p.detach())
        radius = initial_radius(
            manifold, view, group["radius"], f"a parameter of shape {tuple(p.shape)}"
        )
        state["fg"] = key
        state["radius"] = radius
        # The first point: the projection of W / r (a no-op up to rounding for the sphere and
        # oblique constraints with the default radius).
        p.copy_(manifold.from_view(radius * manifold.base.projx(view / radius)))

    @torch.no_grad()
    def _fg_step(
        self,
        manifold: FGManifold,
        params: list[Tensor],
        group: dict[str, Any],
        lr: float,
        step_bound: float | None,
    ) -> None:
        """The constrained update of same-manifold weights, batched (stacked) together."""
        momentum = float(group["momentum"])
        states = [self.state[p] for p in params]
        batched = len(params) > 1
        to_view = manifold.to_view

        def stack(tensors: list[Tensor]) -> Tensor:
            return torch.stack(tensors) if batched else tensors[0]

        radius = stack([s["radius"] for s in states])
        x = stack([to_view(p) for p in params]) / radius
        grad_w = stack([to_view(p.grad) for p in params])
        if group["maximize"]:
            grad_w = -grad_w
        egrad = grad_w * radius
        if group["learn_radius"]:
            radius = self._radius_step(
                states, radius, (grad_w * x).sum_to_size(radius.shape), group, lr, batched
            )
        buf = None
        if momentum != 0.0 and "momentum_buffer" in states[0]:
            buf = stack([to_view(s["momentum_buffer"]) for s in states])
        x_new, buf = _riemannian_update(
            manifold.base,
            x,
            egrad,
            buf,
            lr=lr,
            momentum=momentum,
            nesterov=group["nesterov"],
            step_bound=step_bound,
            group_norm=lambda _, d: manifold.group_norm(d),
        )
        w_new = manifold.from_view(radius * x_new)
        buf_w = manifold.from_view(buf) if buf is not None else None
        for i, (p, s) in enumerate(zip(params, states, strict=True)):
            p.copy_(w_new[i] if batched else w_new)
            if buf_w is not None:
                s["momentum_buffer"] = buf_w[i].clone() if batched else buf_w

    def _radius_step(
        self,
        states: list[dict[str, Any]],
        radius: Tensor,
        grad_r: Tensor,
        group: dict[str, Any],
        lr: float,
        batched: bool,
    ) -> Tensor:
        """SGD (torch's momentum semantics) on the per-group radii; returns the new radii."""
        momentum = float(group["momentum"])
        direction = grad_r
        if momentum != 0.0:
            if "radius_momentum" in states[0]:
                old = [s["radius_momentum"] for s in states]
                buf = (torch.stack(old) if batched else old[0]).mul(momentum).add_(grad_r)
            else:
                buf = grad_r.clone()
            direction = grad_r.add(buf, alpha=momentum) if group["nesterov"] else buf
            for i, s in enumerate(states):
                s["radius_momentum"] = buf[i].clone() if batched else buf
        tiny = torch.finfo(radius.dtype).tiny
        new = radius.sub(direction, alpha=lr).clamp_min(tiny)
        for i, s in enumerate(states):
            s["radius"] = new[i].clone() if batched else new
        return new

    @torch.no_grad()
    def _manifold_parameter_step(
        self, p: Tensor, group: dict[str, Any], lr: float, step_bound: float | None
    ) -> None:
        """The update of a ``ManifoldParameter`` on its own manifold (no radius).

        The step bound applies per manifold point (``manifold.norm`` with ``keepdim``); on an
        :class:`FGManifold` (from :func:`renormalize_weights`) per weight group, as for a
        renormalized plain weight.
        """
        manifold: Manifold = p.manifold  # type: ignore[attr-defined]
        versions = self.__dict__.setdefault("_point_versions", {})
        if versions.get(id(p)) != p._version:
            check_membership(p, manifold, "at this step (it was written outside the optimizer)")
        state = self.state[p]
        momentum = float(group["momentum"])
        egrad = -p.grad if group["maximize"] else p.grad
        buf = state.get("momentum_buffer") if momentum != 0.0 else None
        if isinstance(manifold, FGManifold):
            fg = manifold
            x_new, buf = _riemannian_update(
                fg.base,
                fg.to_view(p.detach()),
                fg.to_view(egrad),
                None if buf is None else fg.to_view(buf),
                lr=lr,
                momentum=momentum,
                nesterov=group["nesterov"],
                step_bound=step_bound,
                group_norm=lambda _, d: fg.group_norm(d),
            )
            x_new = fg.from_view(x_new)
            buf = None if buf is None else fg.from_view(buf)
        else:
            x_new, buf = _riemannian_update(
                manifold,
                p.detach(),
                egrad,
                buf,
                lr=lr,
                momentum=momentum,
                nesterov=group["nesterov"],
                step_bound=step_bound,
                group_norm=lambda x, d: manifold.norm(x, d, keepdim=True),
            )
        p.copy_(x_new)
        versions[id(p)] = p._version
        if buf is not None:
            state["momentum_buffer"] = buf

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Perform one FG-SGD step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or ``None``.

        Raises:
            ValueError: when a group holds an invalid value (schedulers and users assign to
                ``param_groups``); checked before any parameter moves.
        """
        revalidate_changed_groups(
            self.param_groups, FGSGD_HYPERPARAMETERS, self._checked_values, _validate_group
        )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                self._group_step(group)
        return loss

    def _group_step(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        foreach = group["foreach"]
        if foreach is None:
            foreach = all(p.device.type == "cuda" for p in params)
        lr_value = group["lr"]
        lr = float(lr_value)
        step_bound = _step_bound(group["step_bound"])

        plain: list[Tensor] = []
        buckets: dict[tuple[Any, ...], list[Tensor]] = {}
        for p in params:
            manifold = self._manifold_of(p, group)
            if manifold is None:
                plain.append(p)
                continue
            if p.grad.is_sparse:
                raise RuntimeError("FGSGD does not support sparse gradients on constrained weights")
            if isinstance(p, ManifoldParameter):
                # its own manifold (an FGManifold too after renormalize_weights): no radius
                self._manifold_parameter_step(p, group, lr, step_bound)
            else:
                assert isinstance(manifold, FGManifold)
                self._init_fg_state(p, manifold, group)
                has_buf = "momentum_buffer" in self.state[p]
                key = (manifold, p.dtype, p.device, has_buf) + (() if foreach else (id(p),))
                buckets.setdefault(key, []).append(p)

        for (manifold, *_), bucket in buckets.items():
            self._fg_step(manifold, bucket, group, lr, step_bound)

        if plain:
            grads = [p.grad for p in plain]
            momentum = group["momentum"]
            buffers = [self.state[p].get("momentum_buffer") for p in plain] if momentum else []
            _torch_sgd(
                plain,
                grads,
                buffers,
                has_sparse_grad=any(g.is_sparse for g in grads),
                foreach=foreach,
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=lr_value,
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            if momentum:
                for p, buf in zip(plain, buffers, strict=True):
                    self.state[p]["momentum_buffer"] = buf
