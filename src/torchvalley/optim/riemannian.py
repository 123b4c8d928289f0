r"""Riemannian SGD, Adam / AMSGrad and Adagrad with exact ``torch.optim`` parity.

Every parameter is treated as a point of its manifold: a :class:`~torchvalley.ManifoldParameter`
carries one, any other tensor lives on :class:`~torchvalley.manifolds.Euclidean`. One step of
each optimizer is the Euclidean method written with the manifold's operations (Bonnabel 2013;
Bécigneul & Ganea, *Riemannian Adaptive Optimization Methods*, ICLR 2019):

* the Riemannian gradient ``r = egrad2rgrad(x, g)`` replaces the gradient;
* the update ``x ← retr(x, −step)`` replaces ``x ← x − step``;
* a momentum / first moment is carried to the new point with ``transp(x, x⁺, m)``;
* a second moment is one scalar **per manifold point**, ``v ← β₂ v + (1 − β₂) ‖r‖²_x`` (and one
  per factor of a :class:`~torchvalley.manifolds.Product`), because coordinate-wise adaptivity
  has no intrinsic meaning on a manifold; on Euclidean parameters it is coordinate-wise, as in
  Adam.

**Parity.** Euclidean parameters (plain tensors and ``ManifoldParameter``\ s on ``Euclidean``)
are updated by torch's own functional kernels (``torch.optim.sgd.sgd``,
``torch.optim.adam.adam``, ``torch.optim.adagrad.adagrad``) with the same state layout, so
:class:`RiemannianSGD`, :class:`RiemannianAdam` (``decoupled_weight_decay=False`` / ``True``)
and :class:`RiemannianAdagrad` equal ``torch.optim.SGD``, ``Adam``, ``AdamW`` and ``Adagrad``
*bit for bit*, in every dtype, on both the per-tensor and the ``foreach`` path, including
momentum from the first step (geoopt's RSGD starts its buffer at ``(1 + m) g``), dampening,
Nesterov and ``maximize`` (which geoopt's RAdam silently ignores).

**Manifold parameters** go through a per-tensor path (vectorized over the batch dimensions of
the manifold, e.g. all rows of an embedding at once) with the same operation order as torch
where one exists (bias corrections, ``sqrt(v) / sqrt(bc2) + eps``, ``lr / bc1``). Weight decay:
the coupled form adds ``wd·x`` to the Euclidean gradient before ``egrad2rgrad``; the decoupled
form (AdamW) retracts along ``−lr·wd·egrad2rgrad(x, x)``, the Riemannian gradient of
``wd‖x‖²/2``, outside the moments (it is zero on the sphere, whose points all have norm 1).

**Drift control** without an SVD on every step (geoopt's RAdam projects every point on every
step, an SVD per step for Stiefel): the retractions already return points of the manifold up to
rounding; ``stabilize=k`` re-projects every manifold point and its moment (``proju``) every
``k`` steps, and ``drift_tol=τ`` measures the constraint violation after each step with a cheap
closed form (``|‖x‖ − 1|``, ``max|XᵀX − I|``, ``|⟨x, x⟩_L + k| / k``) and re-projects only when
it exceeds ``τ`` (one host synchronisation per manifold parameter and step, so it is off by
default). Both re-project a point that has drifted only slightly (violation < 0.1) with the
manifold's cheap ``reproject`` (for Stiefel one Newton–Schulz step ``X(3I − XᵀX)/2``, two matrix
products, which squares the violation) and use ``projx`` otherwise.
:meth:`RiemannianOptimizer.stabilize` runs ``projx`` on demand and
:meth:`RiemannianOptimizer.max_violation` reports the current violation. The period of
``stabilize=k`` counts each parameter's own manifold steps (``state["manifold_steps"]``): a
parameter that got no gradient did not move, cannot have drifted, and is not re-projected.
Deliberate difference from geoopt, whose RSGD re-projects every parameter of the group on every
k-th *group* step and whose RAdam re-projects the whole group whenever one parameter's count
reaches a multiple of k (both touching parameters that did not move); ``optimizer.stabilize()``
is the whole-group re-projection (``tests/manifolds/test_new_manifolds_optim.py``).

**Float64 policy for hyperbolic parameters.** Hyperbolic geometry loses accuracy quickly in
low precision: a float32 Poincaré point is kept at norm ≤ 1 − 4e-3 (distances from the origin
saturate near 6.2, against 12.2 in float64; :func:`~torchvalley.manifolds.boundary_eps`). With
``hyperbolic_float64=True`` (default), the step of a parameter on ``PoincareBall`` / ``Lorentz``
(or a product containing one) stored in a lower precision is *computed* in float64 and rounded
back, followed by a projection in the parameter's dtype. The states stay in the parameter's
dtype. Store hyperbolic parameters in float64 where memory allows: that is the recommended
setting and the one the benchmarks use.

**Lazy updates** (``lazy=True``), for embeddings: only the manifold points (e.g. rows of an
``(n, d)`` Poincaré embedding) whose gradient is non-zero are updated; the others keep their
point, moments and step count, and every point has its own step count (so Adam's bias
corrections and Adagrad's learning-rate decay are per point, not per tensor as in geoopt's
sparse optimizers). Without it a point that is not in the batch still moves along its decaying
momentum. Sparse gradients (``nn.Embedding(sparse=True)``) are accepted on manifold parameters
(densified, then usually combined with ``lazy``); on Euclidean parameters torch's kernels decide
(SGD and Adagrad accept them, Adam refuses them). The AMSGrad maximum is stored as the maximum
of the second moment itself (never square-rooted in storage).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as _torch_adagrad
from torch.optim.adam import adam as _torch_adam
from torch.optim.sgd import sgd as _torch_sgd

from torchvalley.manifolds import Manifold, manifold_of
from torchvalley.manifolds.base import default_tolerance
from torchvalley.optim._profiling import no_grad_step, profile_hook_step
from torchvalley.optim.torch_baselines import COMMON_FLAGS, SGD_HYPERPARAMETERS
from torchvalley.registry import Hyperparameter, revalidate_changed_groups, validate_group

__all__ = [
    "RiemannianAdagrad",
    "RiemannianAdam",
    "RiemannianOptimizer",
    "RiemannianSGD",
    "component_inner",
    "constraint_violation",
    "manifold_of",
    "rsgd_update",
]


def component_inner(manifold: Manifold, x: Tensor, u: Tensor) -> Tensor:
    """What a Riemannian adaptive method accumulates: :meth:`Manifold.adaptive_inner`.

    ``u * u`` (coordinate-wise, as Adam) on :class:`~torchvalley.manifolds.Euclidean`,
    ``‖u‖²_x`` per manifold point elsewhere, one value per factor on a product.
    """
    return manifold.adaptive_inner(x, u)


def constraint_violation(manifold: Manifold, x: Tensor) -> Tensor:
    """Deprecated alias of ``manifold.violation(x)`` (kept for existing imports)."""
    warnings.warn(
        "constraint_violation(manifold, x) is deprecated: use manifold.violation(x)",
        DeprecationWarning,
        stacklevel=2,
    )
    return manifold.violation(x.detach())


def rsgd_update(
    manifold: Manifold,
    x: Tensor,
    r: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    bound: float | None = None,
    norm: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One Riemannian SGD step of the point(s) ``x`` (the functional form of RiemannianSGD).

    Pure: reads ``x``, ``r`` and ``buf`` and returns new tensors. With ``bound`` the step's
    metric length is at most ``bound`` per point (``‖d‖_x`` with ``keepdim``, FG-SGD's δ), or
    per whatever ``norm(x, d)`` measures (FG-SGD: per weight group).

    Args:
        manifold: the manifold of ``x``.
        x: the point(s).
        r: the Riemannian gradient at ``x`` (``manifold.egrad2rgrad`` of the Euclidean one).
        buf: the momentum buffer at ``x`` (None on the first step or without momentum).
        lr: learning rate.
        momentum: momentum factor (0: no buffer).
        dampening: dampening of the momentum.
        nesterov: Nesterov momentum.
        bound: the largest metric length of a step per point (None: unbounded).
        norm: the length ``norm(x, d)`` that ``bound`` limits, broadcastable against ``x``
            (default ``manifold.norm(x, d, keepdim=True)``).

    Returns:
        ``(x_new, buf_new)``: the new point and the buffer transported to it (None without
        momentum).
    """
    if momentum != 0:
        # buf ← r (first step), else buf ← μ·buf + (1 − τ)·r
        buf = r.clone() if buf is None else buf.mul(momentum).add_(r, alpha=1 - dampening)
        # d = r + μ·buf (Nesterov) or buf
        direction = r.add(buf, alpha=momentum) if nesterov else buf
    else:
        buf, direction = None, r
    if bound is None:
        step = direction.mul(-lr)
    else:
        # −lr·d shortened to metric length ≤ bound: scale = lr / max(1, lr·‖d‖_x / bound)
        length = manifold.norm(x, direction, keepdim=True) if norm is None else norm(x, direction)
        step = direction * -(lr / (length * (lr / bound)).clamp_min(1.0))
    # x⁺ = R_x(−η d)
    new_x = manifold.retr(x, step)
    # buf lives in T_x M: move it to T_{x⁺} M
    return new_x, None if buf is None else manifold.transp(x, new_x, buf)


#: The step counts' increment (a tensor: adding a Python 1 wraps it in a tensor on every step).
_ONE = torch.ones((), dtype=torch.float32)

#: Violations below this count as "near the manifold" for the cheap re-projection.
_NEAR = 0.1


def _point_batch_dims(manifold: Manifold, p: Tensor) -> int:
    """How many leading dimensions of ``p`` index separate manifold points (0: one point)."""
    if manifold.is_flat or getattr(manifold, "flatten", False):
        return 0
    return max(p.dim() - manifold.ndim, 0)


def _step_value(step: Tensor, x: Tensor) -> Any:
    """A step count as a Python float (one count per tensor) or, in lazy mode (one count per
    point), as a tensor in ``x``'s dtype broadcastable against the points ``x``."""
    if step.dim() == 0:
        return float(step)
    return step.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


#: A membership check at a step or a load accepts this many times the construction tolerance
#: (``default_tolerance`` of the dtype): the optimizer's own rounding drift is not an error,
#: a point clearly off its manifold is.
_ENTRY_SLACK = 10.0


def check_membership(p: Tensor, manifold: Manifold, where: str) -> None:
    """Raise ``ValueError`` unless ``p`` is a point of ``manifold`` (tolerance by dtype).

    Args:
        p: the parameter.
        manifold: its manifold.
        where: where the point entered (for the message), e.g. ``"at the first step"``.
    """
    if not manifold.strict_membership:
        return
    tol = _ENTRY_SLACK * default_tolerance(p.dtype)
    ok, reason = manifold.check_point(p.detach(), explain=True, atol=tol, rtol=tol)
    if not ok:
        raise ValueError(
            f"a parameter of shape {tuple(p.shape)} is not a point of {manifold!r} {where}: "
            f"{reason}. Project it first: `with torch.no_grad(): p.copy_(p.manifold.projx(p))` "
            "(or `p.proj_()`); build new ones with ManifoldParameter(data, manifold, project=True)"
        )


def check_state_dict(
    optimizer: torch.optim.Optimizer,
    state_dict: Mapping[str, Any],
    group_keys: Iterable[str],
    state_keys: Iterable[str],
) -> dict[str, Any]:
    """Reject a state dict of another optimizer before ``load_state_dict`` copies it.

    Args:
        optimizer: the optimizer that loads.
        state_dict: the dict to load.
        group_keys: hyperparameters that every saved group must hold (those that tell the
            algorithm apart, e.g. ``betas`` for Adam); the others are filled from the defaults.
        state_keys: the per-parameter state keys this optimizer may hold.

    Returns:
        A copy of ``state_dict`` whose groups hold every key of ``optimizer.defaults``.

    Raises:
        ValueError: naming the missing hyperparameters or the foreign state keys.
    """
    name = type(optimizer).__name__
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(f"Invalid state_dict for {name}: expected 'state' and 'param_groups'")
    groups = []
    for i, group in enumerate(state_dict["param_groups"]):
        missing = [k for k in group_keys if k not in group]
        if missing:
            raise ValueError(
                f"Invalid state_dict for {name}: param group {i} lacks {missing} (a state dict "
                f"of another optimizer? its hyperparameters are {sorted(set(group) - {'params'})})"
            )
        groups.append({**optimizer.defaults, **group})
    allowed = set(state_keys)
    for key, state in state_dict["state"].items():
        foreign = sorted(set(state) - allowed)
        if foreign:
            raise ValueError(
                f"Invalid state_dict for {name}: the state of parameter {key} holds {foreign}, "
                f"which {name} never writes (a state dict of another optimizer? {name} keeps "
                f"{sorted(allowed)})"
            )
    return {**state_dict, "param_groups": groups}


class RiemannianOptimizer(torch.optim.Optimizer):
    """Shared machinery: Euclidean / manifold split, drift control, precision policy.

    Subclasses implement :meth:`_euclidean_step` (a call of torch's functional kernel) and
    :meth:`_manifold_step` (one parameter on its manifold), and declare ``HYPERPARAMETERS``,
    the hyperparameters a saved group must hold (``_GROUP_KEYS``) and the state keys they
    write (``_STATE_KEYS``). A manifold parameter is checked for membership (``ValueError``
    saying how to project) at its first step, at ``load_state_dict``, and at the next step after
    anything else wrote into it (``module.load_state_dict``, a user's ``copy_``).
    """

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = ()
    _GROUP_KEYS: ClassVar[tuple[str, ...]] = ()
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    #: state key of the moment transported with the point (None: nothing to transport).
    _moment_key: str | None = None
    #: whether the manifold step keeps a step count (lazy mode keeps one per point).
    _uses_step: bool = False
    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        validate_group(self.HYPERPARAMETERS, defaults)
        # id(p) -> p._version after the optimizer's last write: any other write since then
        # (a load, a user's copy_) triggers a membership check at the next step.
        self._point_versions: dict[int, int] = {}
        # id(group) -> its declared values when last validated (revalidate_changed_groups).
        self._checked_values: dict[int, tuple] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validating its hyperparameters (``ValueError`` naming the bad one)."""
        validate_group(self.HYPERPARAMETERS, param_group)
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Cross-field checks of one group (e.g. Nesterov needs momentum)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.load_state_dict`` after checking that the dict comes from this
        kind of optimizer; the manifold parameters are checked for membership now and again at
        the next step."""
        state_dict = check_state_dict(self, state_dict, self._GROUP_KEYS, self._STATE_KEYS)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._check_group(group)
        self._point_versions = {}
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    manifold = manifold_of(p)
                    if not manifold.is_flat:
                        check_membership(p, manifold, "when the optimizer state was loaded")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_point_versions", {})
        self.__dict__.setdefault("_checked_values", {})

    def _validate_and_check(self, group: MutableMapping[str, Any]) -> None:
        validate_group(self.HYPERPARAMETERS, group)
        self._check_group(group)

    # ------------------------------------------------------------------ the step
    @no_grad_step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step (``closure`` re-evaluates the loss, as in ``torch.optim``)."""
        # Groups changed since the last step (schedulers, users) are checked before anything moves.
        revalidate_changed_groups(
            self.param_groups, self.HYPERPARAMETERS, self._checked_values, self._validate_and_check
        )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            euclidean: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                manifold = manifold_of(p)
                if manifold.is_flat:
                    euclidean.append(p)
                    continue
                self._step_on_manifold(group, p, manifold)
            if euclidean:
                self._euclidean_step(group, euclidean)
        return loss

    def _step_on_manifold(self, group: Mapping[str, Any], p: Tensor, manifold: Manifold) -> None:
        if self._point_versions.get(id(p)) != p._version:
            check_membership(p, manifold, "at this step (it was written outside the optimizer)")
        state = self.state[p]
        upcast = (
            manifold.low_precision_sensitive
            and group["hyperbolic_float64"]
            and p.dtype != torch.float64
            and p.is_floating_point()
        )
        x = p.detach()
        grad = p.grad
        if grad.is_sparse:
            grad = grad.to_dense()
        if upcast:
            x, grad = x.to(torch.float64), grad.to(torch.float64)
        batch_dims = _point_batch_dims(manifold, p) if group["lazy"] else 0
        if batch_dims:
            new_x = self._lazy_manifold_step(group, state, manifold, x, grad, p.dtype, batch_dims)
        else:
            new_x = self._manifold_step(group, state, manifold, x, grad, p.dtype)
        p.copy_(manifold.projx(new_x.to(p.dtype)) if upcast else new_x)
        self._control_drift(group, state, manifold, p)
        self._point_versions[id(p)] = p._version

    def _lazy_manifold_step(
        self,
        group: Mapping[str, Any],
        state: dict[str, Any],
        manifold: Manifold,
        x: Tensor,
        grad: Tensor,
        dtype: torch.dtype,
        batch_dims: int,
    ) -> Tensor:
        """The step of only the points whose gradient is non-zero (``lazy=True``).

        The points of ``x`` are its first ``batch_dims`` dimensions (e.g. the rows of an
        embedding). The untouched points, their moments and their step counts are left as they
        are; each point has its own step count, so bias corrections are per point.
        """
        batch_shape = x.shape[:batch_dims]
        count = math.prod(batch_shape)
        flat_x = x.reshape(count, *x.shape[batch_dims:])
        flat_grad = grad.reshape(count, *grad.shape[batch_dims:])
        rows = flat_grad.reshape(count, -1).ne(0).any(dim=1).nonzero().squeeze(1)
        if self._uses_step:
            # One count per point (a count per tensor, from before lazy was switched on, is
            # copied to every point).
            old = state.get("step", torch.tensor(0.0))
            if old.shape != batch_shape:
                state["step"] = torch.full(
                    batch_shape, float(old), dtype=torch.float32, device=x.device
                )
        sub: dict[str, Any] = {}
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape[:batch_dims] == batch_shape:
                sub[key] = value.reshape(count, *value.shape[batch_dims:])[rows]
        new_rows = self._manifold_step(group, sub, manifold, flat_x[rows], flat_grad[rows], dtype)
        for key, value in sub.items():
            full = state.get(key)
            if full is None:
                full = torch.zeros(
                    (*batch_shape, *value.shape[1:]), dtype=value.dtype, device=value.device
                )
                state[key] = full
            full.reshape(count, *full.shape[batch_dims:])[rows] = value.to(full.dtype)
        new_x = flat_x.clone()
        new_x[rows] = new_rows.to(new_x.dtype)
        return new_x.reshape(x.shape)

    def _moment(self, state: dict[str, Any], x: Tensor) -> Tensor | None:
        """The stored moment (in ``x``'s dtype), or None."""
        if self._moment_key is None:
            return None
        moment = state.get(self._moment_key)
        if moment is None or moment.dtype == x.dtype:
            return moment
        return moment.to(x.dtype)

    def _control_drift(
        self, group: Mapping[str, Any], state: dict[str, Any], manifold: Manifold, p: Tensor
    ) -> None:
        period = group["stabilize"]
        tol = group["drift_tol"]
        steps = state.get("manifold_steps", 0) + 1
        state["manifold_steps"] = steps
        if period is None and tol is None:
            return
        project = period is not None and steps % period == 0
        violation = None
        if not project and tol is not None:
            violation = float(manifold.violation(p.detach()))
            project = violation > tol
        if project:
            if violation is None:
                violation = float(manifold.violation(p.detach()))
            # Drift is small: the manifold's cheap re-projection for nearby points (one
            # Newton–Schulz step on Stiefel instead of an SVD); projx if it is not small.
            self._project(state, manifold, p, near=violation < _NEAR)

    def _project(
        self, state: dict[str, Any], manifold: Manifold, p: Tensor, near: bool = False
    ) -> None:
        p.copy_(manifold.reproject(p.detach()) if near else manifold.projx(p.detach()))
        if self._moment_key is not None and state.get(self._moment_key) is not None:
            moment = state[self._moment_key]
            moment.copy_(manifold.proju(p.detach(), moment))

    @torch.no_grad()
    def stabilize(self) -> None:
        """Project every manifold parameter onto its manifold and its moment onto the tangent
        space now."""
        for group in self.param_groups:
            for p in group["params"]:
                manifold = manifold_of(p)
                if not manifold.is_flat:
                    self._project(self.state[p], manifold, p)
                    self._point_versions[id(p)] = p._version

    @torch.no_grad()
    def max_violation(self) -> float:
        """The largest constraint violation over the manifold parameters (0.0 if none)."""
        worst = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                manifold = manifold_of(p)
                if not manifold.is_flat:
                    worst = max(worst, float(manifold.violation(p.detach())))
        return worst

    # ------------------------------------------------------------------ subclass hooks
    def _euclidean_step(self, group: Mapping[str, Any], params: list[Tensor]) -> None:
        raise NotImplementedError

    def _manifold_step(
        self,
        group: Mapping[str, Any],
        state: dict[str, Any],
        manifold: Manifold,
        x: Tensor,
        grad: Tensor,
        dtype: torch.dtype,
    ) -> Tensor:
        raise NotImplementedError


def _defaults(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A constructor's keyword arguments (its ``locals()``) as the optimizer's defaults."""
    return {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}


def _store(state: dict[str, Any], key: str, value: Tensor, dtype: torch.dtype) -> None:
    # ``value`` is a fresh tensor (the manifold step never updates state in place), so it is
    # stored as it is, cast to the parameter's dtype where the step ran in float64. Real
    # quantities of a complex parameter (second moments ‖r‖²_x on the Siegel spaces) stay real.
    if dtype.is_complex and not value.is_complex():
        dtype = dtype.to_real()
    state[key] = value if value.dtype == dtype else value.to(dtype)


# The documented hyperparameters (registry records; the classes validate with the same kinds).
_DRIFT_HYPERPARAMETERS = (
    Hyperparameter(
        "lazy",
        "bool",
        False,
        "update only the manifold points whose gradient is non-zero (per-point step counts)",
    ),
    Hyperparameter(
        "stabilize",
        "optional_positive_int",
        None,
        "re-project manifold parameters and their moments every this many steps (None: off)",
    ),
    Hyperparameter(
        "drift_tol",
        "optional_positive",
        None,
        "re-project a manifold parameter when its constraint violation exceeds this",
    ),
    Hyperparameter(
        "hyperbolic_float64",
        "bool",
        True,
        "compute steps of low-precision hyperbolic parameters in float64",
    ),
)
_RSGD_HYPERPARAMETERS = (*SGD_HYPERPARAMETERS, *COMMON_FLAGS, *_DRIFT_HYPERPARAMETERS)
_ADAM_HYPERPARAMETERS = (
    Hyperparameter("lr", "non_negative", 1e-3, "learning rate"),
    Hyperparameter("betas", "betas", (0.9, 0.999), "decay rates of the two moment estimates"),
    Hyperparameter("eps", "non_negative", 1e-8, "added to the denominator"),
    Hyperparameter("weight_decay", "non_negative", 0.0, "weight decay (coupled unless decoupled)"),
    Hyperparameter("decoupled_weight_decay", "bool", False, "AdamW-style decoupled weight decay"),
    *COMMON_FLAGS,
    *_DRIFT_HYPERPARAMETERS,
)
_RADAM_HYPERPARAMETERS = (
    *_ADAM_HYPERPARAMETERS,
    Hyperparameter("amsgrad", "bool", False, "use the running maximum (RAMSGrad)"),
)
_RADAGRAD_HYPERPARAMETERS = (
    Hyperparameter("lr", "non_negative", 1e-2, "learning rate"),
    Hyperparameter("lr_decay", "non_negative", 0.0, "learning-rate decay"),
    Hyperparameter("weight_decay", "non_negative", 0.0, "L2 penalty added to the gradient"),
    Hyperparameter("initial_accumulator_value", "non_negative", 0.0, "initial sum of squares"),
    Hyperparameter("eps", "non_negative", 1e-10, "added to the denominator"),
    *COMMON_FLAGS,
    *_DRIFT_HYPERPARAMETERS,
)


class RiemannianSGD(RiemannianOptimizer):
    """Riemannian SGD with (Nesterov) momentum; ``torch.optim.SGD`` on Euclidean parameters.

    On a manifold parameter ``x`` with Riemannian gradient ``r`` (of ``g + wd·x``):
    ``buf ← r`` on the first step, then ``buf ← m·buf + (1 − dampening)·r``; the direction is
    ``r + m·buf`` (Nesterov) or ``buf``; ``x⁺ = retr(x, −lr·d)`` and ``buf ← transp(x, x⁺, buf)``.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        momentum: momentum factor.
        dampening: dampening of the momentum.
        weight_decay: L2 penalty added to the (Euclidean) gradient.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
        maximize: maximize the objective.
        foreach: torch's multi-tensor path for the Euclidean parameters (None: torch's choice).
        lazy: update only the manifold points (e.g. embedding rows) whose gradient is non-zero.
        stabilize: re-project manifold parameters and momenta every this many steps (None: off).
        drift_tol: re-project a manifold parameter when its violation exceeds this (None: off).
        hyperbolic_float64: compute hyperbolic steps in float64 (see the module docstring).

    Example:
        >>> import torch
        >>> from torchvalley import ManifoldParameter
        >>> from torchvalley.manifolds import Sphere
        >>> x = ManifoldParameter(Sphere().random(4, 3, generator=torch.Generator().manual_seed(0)),
        ...                       Sphere())
        >>> opt = RiemannianSGD([x], lr=0.1, momentum=0.9)
        >>> (x @ torch.tensor([1.0, 0.0, 0.0])).sum().backward()
        >>> opt.step()
        >>> bool(Sphere().check_point(x))
        True
    """

    _moment_key = "momentum_buffer"
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = _RSGD_HYPERPARAMETERS
    _GROUP_KEYS = ("lr", "momentum", "dampening", "nesterov")
    _STATE_KEYS = ("momentum_buffer", "manifold_steps")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        lazy: bool = False,
        stabilize: int | None = None,
        drift_tol: float | None = None,
        hyperbolic_float64: bool = True,
    ) -> None:
        super().__init__(params, _defaults(locals()))

    def _check_group(self, group: Mapping[str, Any]) -> None:
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Invalid nesterov: Nesterov momentum requires momentum > 0 and zero dampening "
                f"(got momentum={group['momentum']}, dampening={group['dampening']})"
            )

    def _euclidean_step(self, group: Mapping[str, Any], params: list[Tensor]) -> None:
        grads = [p.grad for p in params]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        _torch_sgd(
            params,
            grads,
            buffers,
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            has_sparse_grad=any(g.is_sparse for g in grads),
            foreach=group["foreach"],
        )
        if group["momentum"] != 0:
            for p, buffer in zip(params, buffers, strict=True):
                self.state[p]["momentum_buffer"] = buffer

    def _manifold_step(self, group, state, manifold, x, grad, dtype):
        g = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = g.add(x, alpha=group["weight_decay"])  # coupled L2: g + wd·x
        momentum = group["momentum"]
        new_x, buf = rsgd_update(
            manifold,
            x,
            manifold.egrad2rgrad(x, g),
            self._moment(state, x) if momentum != 0 else None,
            lr=group["lr"],
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
        )
        if buf is not None:
            _store(state, "momentum_buffer", buf, dtype)
        return new_x


class RiemannianAdam(RiemannianOptimizer):
    """Riemannian Adam / AMSGrad (Bécigneul & Ganea 2019); ``torch.optim.Adam``/``AdamW`` on
    Euclidean parameters.

    On a manifold parameter: ``m ← β₁m + (1 − β₁) r``, ``v ← β₂v + (1 − β₂)‖r‖²_x`` (one scalar
    per point, per factor of a product), ``v̂ = max(v̂, v)`` with ``amsgrad``,
    ``x⁺ = retr(x, −(lr / bc₁) m / (sqrt(v̂) / sqrt(bc₂) + eps))`` and ``m ← transp(x, x⁺, m)``
    with the bias corrections ``bcᵢ = 1 − βᵢᵗ`` (the paper's algorithms have neither bias
    correction nor eps; with every factor equal to ℝ they reduce to Adam / AMSGrad).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: decay rates of the two moments.
        eps: added to the denominator.
        weight_decay: L2 penalty (coupled) or decoupled decay (``decoupled_weight_decay``).
        amsgrad: use the running maximum of the second moment (RAMSGrad).
        decoupled_weight_decay: AdamW-style decay (on Euclidean parameters exactly AdamW).
        maximize: maximize the objective.
        foreach: torch's multi-tensor path for the Euclidean parameters (None: torch's choice).
        lazy: update only the manifold points (e.g. embedding rows) whose gradient is non-zero,
            with a step count (bias correction) per point.
        stabilize: re-project manifold parameters and moments every this many steps.
        drift_tol: re-project a manifold parameter when its violation exceeds this.
        hyperbolic_float64: compute hyperbolic steps in float64 (see the module docstring).
    """

    _moment_key = "exp_avg"
    _uses_step = True
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = _RADAM_HYPERPARAMETERS
    _GROUP_KEYS = ("lr", "betas", "eps")
    _STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "manifold_steps")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        lazy: bool = False,
        stabilize: int | None = None,
        drift_tol: float | None = None,
        hyperbolic_float64: bool = True,
    ) -> None:
        super().__init__(params, _defaults(locals()))

    def _euclidean_step(self, group: Mapping[str, Any], params: list[Tensor]) -> None:
        grads, exp_avgs, exp_avg_sqs, max_sqs, steps = [], [], [], [], []
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("RiemannianAdam does not support sparse gradients")
            state = self.state[p]
            if len(state) == 0:
                # The layout of torch.optim.Adam's state (a float32 0-d step on the CPU).
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        _torch_adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_sqs,
            steps,
            foreach=group["foreach"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    def _manifold_step(self, group, state, manifold, x, grad, dtype):
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        decoupled = group["decoupled_weight_decay"]
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["step"].add_(_ONE)  # t ← t + 1 (a tensor 1: no scalar wrapping on the hot path)
        step = _step_value(state["step"], x)
        g = -grad if group["maximize"] else grad
        if wd != 0 and not decoupled:
            g = g.add(x, alpha=wd)
        r = manifold.egrad2rgrad(x, g)
        exp_avg = self._moment(state, x)
        if exp_avg is None:
            exp_avg = torch.zeros_like(r)
        exp_avg = exp_avg.lerp(r, 1 - beta1)
        increment = manifold.adaptive_inner(x, r)
        exp_avg_sq = state.get("exp_avg_sq")
        if exp_avg_sq is None:
            exp_avg_sq = increment.mul(1 - beta2)
        else:
            if exp_avg_sq.dtype != increment.dtype:
                exp_avg_sq = exp_avg_sq.to(increment.dtype)
            # v ← β₂v + (1 − β₂)‖r‖² (lerp: one kernel, no scalar wrapping)
            exp_avg_sq = exp_avg_sq.lerp(increment, 1 - beta2)
        _store(state, "exp_avg_sq", exp_avg_sq, dtype)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (
            math.sqrt(1 - beta2**step) if isinstance(step, float) else (1 - beta2**step).sqrt()
        )
        if group["amsgrad"]:
            previous = state.get("max_exp_avg_sq")
            maximum = (
                exp_avg_sq.clone()
                if previous is None
                else torch.maximum(previous.to(exp_avg_sq.dtype), exp_avg_sq)
            )
            _store(state, "max_exp_avg_sq", maximum, dtype)
            denom = maximum.sqrt().div_(bias_correction2_sqrt).add_(eps)
        else:
            denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
        direction = (exp_avg / denom).mul_(-lr / bias_correction1)
        if wd != 0 and decoupled:
            direction = direction.add_(manifold.egrad2rgrad(x, x), alpha=-lr * wd)
        new_x = manifold.retr(x, direction)
        _store(state, "exp_avg", manifold.transp(x, new_x, exp_avg), dtype)
        return new_x


class RiemannianAdagrad(RiemannianOptimizer):
    """Riemannian Adagrad (RADAGRAD, Bécigneul & Ganea 2019); ``torch.optim.Adagrad`` on
    Euclidean parameters.

    On a manifold parameter: ``s ← s + ‖r‖²_x`` (one scalar per point, per product factor),
    ``x⁺ = retr(x, −clr · r / (sqrt(s) + eps))`` with ``clr = lr / (1 + (t − 1)·lr_decay)``;
    there is no moment to transport.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        lr_decay: learning-rate decay (torch's Adagrad).
        weight_decay: L2 penalty added to the gradient.
        initial_accumulator_value: initial value of the accumulated squares.
        eps: added to the denominator.
        maximize: maximize the objective.
        foreach: torch's multi-tensor path for the Euclidean parameters (None: torch's choice).
        lazy: update only the manifold points whose gradient is non-zero, with a step count
            (learning-rate decay) per point.
        stabilize: re-project manifold parameters every this many steps.
        drift_tol: re-project a manifold parameter when its violation exceeds this.
        hyperbolic_float64: compute hyperbolic steps in float64 (see the module docstring).
    """

    _uses_step = True
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = _RADAGRAD_HYPERPARAMETERS
    _GROUP_KEYS = ("lr", "lr_decay", "initial_accumulator_value")
    _STATE_KEYS = ("step", "sum", "manifold_steps")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        lazy: bool = False,
        stabilize: int | None = None,
        drift_tol: float | None = None,
        hyperbolic_float64: bool = True,
    ) -> None:
        super().__init__(params, _defaults(locals()))

    def _euclidean_step(self, group: Mapping[str, Any], params: list[Tensor]) -> None:
        grads, sums, steps = [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["sum"] = torch.full_like(
                    p, group["initial_accumulator_value"], memory_format=torch.preserve_format
                )
            grads.append(p.grad)
            sums.append(state["sum"])
            steps.append(state["step"])
        _torch_adagrad(
            params,
            grads,
            sums,
            steps,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            lr_decay=group["lr_decay"],
            eps=group["eps"],
            has_sparse_grad=any(g.is_sparse for g in grads),
            foreach=group["foreach"],
            maximize=group["maximize"],
        )

    def _manifold_step(self, group, state, manifold, x, grad, dtype):
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["step"].add_(_ONE)
        step = _step_value(state["step"], x)
        g = -grad if group["maximize"] else grad
        if group["weight_decay"] != 0:
            g = g.add(x, alpha=group["weight_decay"])
        r = manifold.egrad2rgrad(x, g)
        increment = manifold.adaptive_inner(x, r)
        total = state.get("sum")
        if total is None:
            total = increment.add(group["initial_accumulator_value"])
        else:
            total = total.to(increment.dtype).add(increment)
        _store(state, "sum", total, dtype)
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        std = total.sqrt().add_(group["eps"])
        return manifold.retr(x, (r / std).mul_(-clr))
