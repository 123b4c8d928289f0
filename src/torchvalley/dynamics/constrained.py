"""Constrained Langevin dynamics (CoLA): orthogonality and norm constraints, two dynamics.

Leimkuhler, Vlaar, Pouchon & Storkey, "Better Training using Weight-Constrained Stochastic
Dynamics", ICML 2021 (and "Constraint-based Regularization of Neural Networks", 2020).
Notation as :mod:`.langevin`: ``h`` the step ``lr``, ``gamma`` friction, ``tau`` temperature,
unit mass, ``G = grad U + wd * theta``, ``R ~ N(0, I)``, ``c = exp(-gamma h)``,
``s = sqrt((1 - c**2) tau)``. Each param group has a ``constraint``:

* ``"orthogonal"`` (o-CoLA): the weight viewed as ``W`` (``n x m``, ``n`` = output channels,
  ``m`` = the rest), ``W^T W = I`` when ``n >= m`` and ``W W^T = I`` otherwise (the tall view of
  :class:`~torchvalley.manifolds.Stiefel` with ``flatten=True``, whose ``proju`` is the tangent
  projection ``Pi_W(P) = P - W sym(W^T P)``).
* ``"norm"`` (c-CoLA): each scalar weight ``w`` with an auxiliary coordinate ``xi`` on the
  circle ``w**2 + xi**2 = r**2`` (so ``|w| <= r``, ``r`` the group's ``radius``); momenta
  ``(p_w, p_xi)`` tangent: ``w p_w + xi p_xi = 0``.
* ``None``: plain Langevin (biases, the first layer, normalization layers): the very operations
  and noise keys of :class:`~torchvalley.dynamics.LangevinSplitting` (BAOAB) and SGLD.

Underdamped (``cola_ud``), geodesic BAOAB with one gradient per step (the cyclic permutation of
:mod:`.langevin`: the owed ``B_{h/2}`` of step ``k-1`` merged with the ``B_{h/2}`` of step k)::

    p = Pi_theta(p - (h_prev/2 + h/2) G)          # B: the two half kicks, projected
    theta, p = RATTLE(theta, p, h/2)              # A_{h/2}
    p = Pi_theta(c p + s R)                       # O: exact OU, projected
    theta, p = RATTLE(theta, p, h/2)              # A_{h/2}

For ``"orthogonal"`` the step runs this with one projection instead of four: every ``Pi`` but
the last is implied by the next RATTLE position step (a normal part of ``p`` only shifts its
multiplier), so the step costs 9 products of ``n x m x m`` instead of 16.

``RATTLE(theta, p, t)`` for ``"orthogonal"``: ``W~ = W + t P``; ``W' = W~ + W Lambda`` with
``Lambda`` symmetric such that ``W'^T W' = I`` (the multiplier along the constraint gradient at
the *old* point, :func:`rattle_solve`); ``P = Pi_{W'}(P + (W' - W~) / t)``. For ``"norm"`` it is
the exact geodesic flow: the rotation of ``(w, xi)`` and ``(p_w, p_xi)`` by the angle
``t (xi p_w - w p_xi) / r**2`` (no solve).

Overdamped (``cola_od``), constrained Euler-Maruyama (Ciccotti, Lelievre & Vanden-Eijnden 2008)::

    theta~ = theta - h G + sqrt(2 h tau) R
    theta' = theta~ + grad g(theta)^T lambda      # lambda such that g(theta') = 0

(orthogonal: :func:`rattle_solve`; norm: the root of a scalar quadratic per element, closed form).

The orthogonality solve iterates to a tolerance (``tolerance``, default per dtype
:data:`DEFAULT_TOLERANCE`, ``max_iterations``); the residual ``max |W'^T W' - I|`` of every
solved tensor is measured after the step and reported by :meth:`ConstrainedLangevin.diagnostics`
with the iteration counts. The reference code (``oCoLAud``) instead runs a fixed 10 iterations of
the same SHAKE update on the full ``n x m`` matrix and never checks the residual.

Noise keys (:class:`~torchvalley.CounterNoise`, ``index`` the parameter's position over all
groups): underdamped ``16 k + 2`` (BAOAB's ``O`` slot) for ``p`` and ``16 k + 5`` for ``p_xi``;
overdamped ``16 k`` (SGLD's) for ``theta`` and ``16 k + 1`` for ``xi``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from torchvalley.dynamics import engine
from torchvalley.dynamics import operators as ops
from torchvalley.dynamics.langevin import _real, parse_scheme
from torchvalley.manifolds.stiefel import Stiefel
from torchvalley.noise import CounterNoise
from torchvalley.optim._profiling import profile_hook_step
from torchvalley.registry import Hyperparameter, validate_group

__all__ = [
    "CONSTRAINTS",
    "DEFAULT_TOLERANCE",
    "ConstrainedLangevin",
    "SolveReport",
    "constraint_residual",
    "rattle_solve",
]

CONSTRAINTS = (None, "orthogonal", "norm")
DYNAMICS = ("underdamped", "overdamped")
#: residual targets ``max |W^T W - I|`` (``|w^2 + xi^2 - r^2| / r^2``) per dtype
DEFAULT_TOLERANCE = {torch.float32: 4e-6, torch.float64: 1e-13}
#: the largest small side ``m`` for which a stalled solve switches to Newton's method (an
#: ``m**2 x m**2`` linear system per iteration) before the polar fallback
NEWTON_MAX_SIZE = 16
_GROUP_KEYS = ("lr", "friction", "temperature", "weight_decay", "constraint", "radius")
_STATE_KEYS = frozenset({"momentum", "xi", "xi_momentum"})
_GEOMETRY = Stiefel(flatten=True)  # the tall view of a weight
_BATCHED = Stiefel()  # the tangent projection on batches of tall matrices
_BAOAB = parse_scheme("BAOAB")
_SLOT_O, _SLOT_XI_UD, _SLOT_XI_OD = 2, 5, 1


class SolveReport:
    """Largest residual and iteration count of one step's orthogonality solves (and norm
    residuals), and the number of solves that needed the polar fallback."""

    __slots__ = ("fallbacks", "iterations", "residual", "solves")

    def __init__(self) -> None:
        self.residual, self.iterations, self.solves, self.fallbacks = 0.0, 0, 0, 0

    def add(
        self, residual: float, iterations: int = 0, solves: int = 0, fallbacks: int = 0
    ) -> None:
        self.residual = max(self.residual, residual)
        self.iterations = max(self.iterations, iterations)
        self.solves += solves
        self.fallbacks += fallbacks

    def as_dict(self) -> dict[str, float]:
        return {
            "residual": self.residual,
            "iterations": self.iterations,
            "solves": self.solves,
            "fallbacks": self.fallbacks,
        }


def constraint_residual(w: Tensor) -> float:
    """``max |W^T W - I|`` of a tall matrix, or the largest over a batch (a host float)."""
    return float(_residuals(w).max()) if w.numel() else 0.0


def _residuals(w: Tensor) -> Tensor:
    """Per matrix of a batch ``(..., n, m)``: ``max |W^T W - I|``."""
    gram = w.transpose(-1, -2) @ w
    gram.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    return gram.abs().amax(dim=(-2, -1))


def rattle_solve(
    x: Tensor, y: Tensor, tolerance: float, max_iterations: int, check: bool = True
) -> tuple[Tensor, int, float, int]:
    """``W' = Y + X Lambda`` with ``Lambda`` symmetric and ``W'^T W' = I``, for a batch of tall
    matrices ``X``, ``Y`` of shape ``(B, n, m)`` (each matrix solved on its own).

    ``X`` is the old point (``X^T X = I``), ``Y`` the unconstrained update. Write
    ``Y = X A + N`` (``A = X^T Y``, ``N`` normal to the columns of ``X``); then
    ``W' = X (A + Lambda) + N`` and the condition is ``Z^T Z = C`` with ``Z = A + Lambda``,
    ``C = I - N^T N = I - (Y^T Y - A^T A)``: an ``m x m`` problem. It is solved by the SHAKE
    update ``Lambda -= (Z^T Z - C) / 2`` (the reference's iteration, whose Jacobian ``2 I`` is
    exact at ``Z = I``: the error contracts by about ``||A - I + Lambda||``, i.e. by ``h ||P||``
    per iteration) until ``max |Z^T Z - C| <= tolerance / 4``; then ``W'`` is assembled and its
    residual measured; should rounding in the ``n x m`` products leave it above ``tolerance``,
    the same update runs on ``W'`` itself. A matrix that has converged stops iterating (masked
    updates), so a matrix's numbers do not depend on the others in its batch. If the iteration
    stalls or diverges (steps with ``h ||P|| ~ 1``), Newton's method takes over for
    ``m <= NEWTON_MAX_SIZE`` (:func:`_newton`); if that fails too, or ``m`` is larger, ``W'`` is
    the polar factor of ``Y`` (closed form; its correction agrees with the multiplier's to
    ``O(h**3)``), and the fallback is counted.

    ``check=False`` skips the measurement of ``W'`` (one ``n x m x m`` product) and its
    refinement, for a solve whose result is solved from again at once (the first drift of a
    step): the reported residual is then the ``m x m`` one, ``max |Z^T Z - C|``.

    Returns:
        ``(W', iterations, residual, fallbacks)``: the most iterations any matrix took, the
        largest final residual, and how many matrices took the polar fallback.
    """
    a = x.transpose(-1, -2) @ y
    c = torch.baddbmm(-(y.transpose(-1, -2) @ y), a.transpose(-1, -2), a)  # A^T A - Y^T Y
    c.diagonal(dim1=-2, dim2=-1).add_(1.0)  # C = I - N^T N
    lam = torch.zeros_like(c)
    batch = x.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=x.device)
    failed = torch.zeros_like(active)
    previous = torch.full((batch,), math.inf, dtype=x.dtype, device=x.device)
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (reported)
        z = a + lam
        f = torch.baddbmm(-c, z.transpose(-1, -2), z)  # F = Z^T Z - C
        r = f.abs().amax(dim=(-2, -1))
        done = r <= tolerance / 4
        stalled = ~torch.isfinite(r) | (r > 0.9 * previous)
        failed |= active & ~done & stalled & ~(r <= tolerance)
        active &= ~done & ~stalled
        if not bool(active.any()):
            break
        update = (f + f.transpose(-1, -2)).mul_(0.25 * active.to(x.dtype)[:, None, None])
        lam.sub_(update)  # Lambda -= (F + F^T) / 4 where still iterating
        previous = torch.where(active, r, previous)
    else:
        failed |= active
    m = x.shape[-1]
    if bool(failed.any()) and m <= NEWTON_MAX_SIZE:  # long steps: Newton's method instead
        rows = failed.nonzero().flatten()
        lam[rows], solved, steps = _newton(a[rows], c[rows], tolerance, max_iterations)
        failed[rows] = ~solved
        iterations += steps
    w = torch.baddbmm(y, x, lam)  # W' = Y + X Lambda
    if not check:
        fallbacks = int(failed.sum())
        if fallbacks:
            u, _, vh = torch.linalg.svd(y[failed], full_matrices=False)
            w[failed] = u @ vh
        return w, iterations, float(r.max()) if not fallbacks else 0.0, fallbacks
    residual = _residuals(w)
    for _ in range(max_iterations):
        fix = ~failed & (residual > tolerance)
        if not bool(fix.any()):
            break
        gram = w.transpose(-1, -2) @ w
        gram.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        gram.mul_(fix.to(x.dtype)[:, None, None])  # only the matrices above the tolerance
        w = torch.baddbmm(w, x, gram, alpha=-0.5)
        iterations += 1
        new = _residuals(w)
        failed |= fix & ~(new < 0.9 * residual) & (new > tolerance)
        residual = new
    failed |= residual > tolerance
    fallbacks = int(failed.sum())
    if fallbacks:
        u, _, vh = torch.linalg.svd(y[failed], full_matrices=False)
        w[failed] = u @ vh
        residual = _residuals(w)
    return w, iterations, float(residual.max()), fallbacks


def _newton(
    a: Tensor, c: Tensor, tolerance: float, max_iterations: int
) -> tuple[Tensor, Tensor, int]:
    """Newton's method for ``(A + Lambda)^T (A + Lambda) = C`` from ``Lambda = 0``, for the
    matrices where the SHAKE update stalls (a step ``h ||P||`` of order 1).

    The Jacobian ``delta -> Z^T delta + delta Z`` (``Z = A + Lambda``) is the ``m**2 x m**2``
    Kronecker matrix ``Z^T (x) I + I (x) Z^T`` (row-major vec); for a symmetric right-hand side
    its solution is symmetric whenever it is unique. Returns ``(Lambda, converged, iterations)``.
    """
    m = a.shape[-1]
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    lam = torch.zeros_like(a)
    converged = torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
    steps = 0
    for steps in range(1, max_iterations + 1):  # noqa: B007 (reported)
        z = a + lam
        f = torch.baddbmm(-c, z.transpose(-1, -2), z)
        converged = f.abs().amax(dim=(-2, -1)) <= tolerance / 4
        if bool(converged.all()):
            break
        zt = z.transpose(-1, -2)
        jacobian = torch.einsum("bij,kl->bikjl", zt, eye) + torch.einsum("ij,bkl->bikjl", eye, zt)
        jacobian = jacobian.reshape(-1, m * m, m * m)
        delta, info = torch.linalg.solve_ex(jacobian, f.reshape(-1, m * m))
        delta = delta.reshape(-1, m, m)
        delta = (delta + delta.transpose(-1, -2)) / 2
        ok = (info == 0) & torch.isfinite(delta).all(dim=(-2, -1)) & ~converged
        lam = torch.where(ok[:, None, None], lam - delta, lam)
    converged &= torch.isfinite(lam).all(dim=(-2, -1))
    return lam, converged, steps


class ConstrainedLangevin(torch.optim.Optimizer):
    """CoLA: Langevin dynamics with orthogonality / norm constraints per param group.

    See the module docstring for the updates. Build the papers' param groups (and put a model's
    weights on their constraint sets) with :func:`~torchvalley.dynamics.constrain_model`.

    Args:
        params: parameters or param groups; each group may set every hyperparameter below up to
            ``radius``.
        lr: step ``h``.
        friction: ``gamma`` (underdamped only).
        temperature: ``tau``; ``0`` gives constrained SGD with momentum (underdamped) or
            constrained gradient descent (overdamped).
        weight_decay: ``wd`` added to the gradient (``wd * theta``).
        constraint: ``None``, ``"orthogonal"`` or ``"norm"`` (see the module docstring).
        radius: ``r`` of the ``"norm"`` constraint (weights must satisfy ``|w| <= r``).
        dynamics: ``"underdamped"`` (``cola_ud``) or ``"overdamped"`` (``cola_od``).
        seed: noise seed, an integer in ``[0, 2**64)``.
        tolerance: residual target of the orthogonality solve (``None``: per dtype,
            :data:`DEFAULT_TOLERANCE`).
        max_iterations: cap on the solve's iterations before its polar fallback.
        foreach: batch the orthogonal weights of one shape (``None``/``True``); ``False``
            solves each alone. The numbers are the same (each matrix's iteration is masked once
            it has converged).

    Raises:
        ValueError: for an invalid hyperparameter or constraint, a ``radius <= 0``, an
            orthogonal tensor with fewer than 2 dimensions, a constrained tensor that is not
            float32/float64, or weights off their constraint set at construction.

    Example:
        >>> from torchvalley.dynamics import constrain_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> opt = ConstrainedLangevin(constrain_model(net, "orthogonal"), lr=0.1, temperature=0.0)
        >>> net(torch.ones(2, 4)).sum().backward()
        >>> opt.step()
        >>> opt.diagnostics()[0]["residual"] < 1e-5
        True
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("lr", "positive", 0.1, "step size h"),
        Hyperparameter("friction", "non_negative", 1.0, "friction gamma (underdamped)"),
        Hyperparameter("temperature", "non_negative", 1e-4, "temperature tau"),
        Hyperparameter("weight_decay", "non_negative", 0.0, "L2 penalty added to the gradient"),
        Hyperparameter("constraint", "any", None, "None, 'orthogonal' (o-CoLA) or 'norm' (c-CoLA)"),
        Hyperparameter("radius", "positive", 1.0, "r of the norm constraint |w| <= r"),
        Hyperparameter("dynamics", "choice", "underdamped", "underdamped or overdamped", DYNAMICS),
        Hyperparameter("seed", "any", 0, "noise seed, an integer in [0, 2**64)"),
        Hyperparameter(
            "tolerance", "optional_positive", None, "orthogonality residual target (None: dtype's)"
        ),
        Hyperparameter("max_iterations", "positive_int", 100, "cap on the solve's iterations"),
        Hyperparameter(
            "foreach", "optional_bool", None, "batch same-shaped orthogonal weights (None: on)"
        ),
    )

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        friction: float = 1.0,
        temperature: float = 1e-4,
        weight_decay: float = 0.0,
        constraint: str | None = None,
        radius: float = 1.0,
        dynamics: str = "underdamped",
        seed: int = 0,
        tolerance: float | None = None,
        max_iterations: int = 100,
        foreach: bool | None = None,
    ) -> None:
        wide = {
            "dynamics": dynamics,
            "tolerance": tolerance,
            "max_iterations": max_iterations,
            "foreach": foreach,
        }
        validate_group(self.HYPERPARAMETERS, wide)
        try:
            self._noise = CounterNoise(seed)
        except ValueError:
            raise ValueError(
                f"Invalid seed: expected an integer in [0, 2**64), got {seed!r}"
            ) from None
        self._dynamics, self._tolerance, self._max_iterations = dynamics, tolerance, max_iterations
        self._foreach = foreach is None or foreach
        self._checked: dict[int, tuple] = {}
        self._scratch: dict[torch.dtype, Tensor] = {}
        self._reports: list[SolveReport] = []
        defaults = {
            "lr": lr,
            "friction": friction,
            "temperature": temperature,
            "weight_decay": weight_decay,
            "constraint": constraint,
            "radius": radius,
        }
        super().__init__(params, defaults)
        self.state["cola"] = {"step": 0, "groups": {}}

    # ------------------------------------------------------------------ validation
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``dynamics``, ``seed``, ``tolerance``, ``max_iterations`` are
        optimizer-wide. Its constrained tensors must lie on their constraint set."""
        for key in ("dynamics", "seed", "tolerance", "max_iterations", "foreach"):
            if key in param_group:
                raise ValueError(f"Invalid {key}: it is optimizer-wide, not per param group")
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        self._check(index, self.param_groups[index], on_set=True)

    def _check(self, index: int, group: Mapping[str, Any], on_set: bool = False) -> None:
        """Validate a group's values (re-checked at ``step`` only after a change)."""
        values = tuple(group.get(key) for key in _GROUP_KEYS)
        checked = self._checked.get(index)
        if checked is not None and all(a is b for a, b in zip(checked, values, strict=True)):
            return
        _check_group(self.HYPERPARAMETERS, group)
        constraint = group["constraint"]
        for position, p in enumerate(group["params"]):
            if constraint is not None:
                _check_tensor(p, constraint, group["radius"], position, self._tol(p), on_set)
        gstate = self.state.get("cola", {}).get("groups", {}).get(index, {})
        if "constraint" in gstate and (
            gstate["constraint"] != constraint or gstate["radius"] != group["radius"]
        ):
            raise ValueError(
                f"Invalid constraint/radius: param group {index} was stepped with "
                f"constraint={gstate['constraint']!r}, radius={gstate['radius']!r}; changing them "
                "invalidates its auxiliary coordinates: build a new optimizer"
            )
        self._checked[index] = values

    def _tol(self, p: Tensor) -> float:
        return self._tolerance or DEFAULT_TOLERANCE.get(p.dtype, 1e-5)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a copy of ``state_dict``; refuse another optimizer's (``ValueError``)."""
        state_dict = copy.deepcopy(state_dict)
        groups, state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(state, Mapping):
            raise ValueError("Invalid state_dict: expected an optimizer's state and param_groups")
        for index, saved in enumerate(groups):
            missing = [key for key in _GROUP_KEYS if key not in saved]
            if missing:
                raise ValueError(
                    f"Invalid state_dict: not a ConstrainedLangevin state_dict (param group "
                    f"{index} lacks {missing}: saved by another optimizer?)"
                )
            _check_group(self.HYPERPARAMETERS, dict(saved))
        shared = state.get("cola")
        if not isinstance(shared, Mapping) or not {"step", "groups"} <= set(shared):
            raise ValueError(
                "Invalid state_dict: it lacks the sampler state 'cola' (step counter, pending "
                "kicks): not a ConstrainedLangevin state_dict"
            )
        for key, entry in state.items():
            if key == "cola":
                continue
            unknown = sorted(set(entry) - _STATE_KEYS)
            if unknown:
                raise ValueError(
                    f"Invalid state_dict: parameter {key} has state {unknown}, not "
                    f"ConstrainedLangevin's {sorted(_STATE_KEYS)} (saved by another optimizer?)"
                )
        self._checked.clear()
        super().load_state_dict(state_dict)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step with the gradients in ``.grad``; parameters without one are left alone
        (no kick, drift, friction or noise) and keep their state."""
        for index, group in enumerate(self.param_groups):
            self._check(index, group)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        shared = self.state["cola"]
        k = shared["step"]
        group_states = dict(shared["groups"])
        self._reports = []
        position = 0
        for gi, group in enumerate(self.param_groups):
            report = SolveReport()
            self._reports.append(report)
            params, grads, indices = [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    grads.append(p.grad)
                    indices.append(position)
                position += 1
            if not params:
                continue
            wd = group["weight_decay"]
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            gstate = dict(group_states.get(gi, {}))
            if group["constraint"] is not None:
                gstate.update(constraint=group["constraint"], radius=group["radius"])
            if self._dynamics == "overdamped":
                self._overdamped(group, params, grads, indices, k, report)
            else:
                momenta = []
                for p in params:
                    state = self.state[p]
                    if "momentum" not in state:
                        state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    momenta.append(state["momentum"])
                self._underdamped(group, params, grads, momenta, indices, gstate, k, report)
                gstate["pending_lr"], gstate["pending_step"] = group["lr"], k
            group_states[gi] = gstate
        self.state["cola"] = {"step": k + 1, "groups": group_states}
        return loss

    def _langevin_view(self, group: Mapping[str, Any], dynamics: str) -> dict[str, Any]:
        """The group as :mod:`.engine` reads a LangevinSplitting group (unit mass)."""
        return {
            "mass": 1.0,
            "temperature": group["temperature"],
            "friction": group["friction"],
            "dynamics": dynamics,
            "noise_scale": 0.0,
        }

    def _run_engine(self, passes, params, momenta, grads, indices, view) -> None:
        """The LangevinSplitting default path (same operations, order and noise keys)."""
        prog = [op for items, h, k in passes for op in engine.program(items, h, k, view)]
        tensors = list(zip(params, momenta, grads, indices, strict=True))
        for part in engine.segments(prog):
            engine.run_segment(part, tensors, self._noise, self._scratch)  # type: ignore[arg-type]

    def _noise_like(self, t: Tensor, key: int, index: int) -> Tensor:
        return self._noise.gaussian(t, step=key, index=index, dtype=torch.float32).to(t.dtype)

    def _underdamped(self, group, params, grads, momenta, indices, gstate, k, report) -> None:
        h, constraint = group["lr"], group["constraint"]
        if constraint is None:  # BAOAB, exactly as LangevinSplitting runs it
            head, tail = _BAOAB
            passes = [(head, h, k)]
            if "pending_lr" in gstate:
                passes.insert(0, (tail, gstate["pending_lr"], gstate["pending_step"]))
            real = [_real(t) for t in params], [_real(t) for t in momenta]
            view = self._langevin_view(group, "langevin")
            self._run_engine(passes, *real, [_real(g) for g in grads], indices, view)
            return
        kick = 0.5 * h + (0.5 * gstate["pending_lr"] if "pending_lr" in gstate else 0.0)
        c = ops.ou_coefficient(group["friction"], h)
        scale = math.sqrt(max(1.0 - c * c, 0.0) * group["temperature"])
        key, tol = engine.SLOTS * k, self._tol(params[0])
        if constraint == "orthogonal":  # the projections of B, O and the first A are implied
            for bucket in self._buckets(params, momenta, grads, indices):
                thetas, moms, gs, idx = zip(*bucket, strict=True)
                w, mom = _stack_tall(thetas), _stack_tall(moms)
                mom.sub_(_stack_tall(gs), alpha=kick)  # B: p = p - kick G
                self._rattle(w, mom, 0.5 * h, tol, report, check=False)  # A_{h/2}, position
                mom.mul_(c)  # O: p = c p + s R
                if scale:
                    pairs = zip(thetas, idx, strict=True)
                    noise = [self._noise_like(t, key + _SLOT_O, i) for t, i in pairs]
                    mom.add_(_stack_tall(noise), alpha=scale)
                self._rattle(w, mom, 0.5 * h, tol, report)  # A_{h/2}, position
                mom = _BATCHED.proju(w, mom)  # p = Pi_theta(p): the one velocity projection
                _unstack_tall(w, thetas)
                _unstack_tall(mom, moms)
            return
        r = group["radius"]
        for theta, p, g, i in zip(params, momenta, grads, indices, strict=True):
            xi, pxi = self._circle_state(theta, r)
            p.sub_(g, alpha=kick)  # B on p_w, then the tangent projection of (p_w, p_xi)
            _project_circle(theta, xi, p, pxi, r)
            _rotate(theta, xi, p, pxi, 0.5 * h, r)  # A_{h/2}: exact geodesic flow
            p.mul_(c)
            pxi.mul_(c)
            if scale:  # O on both momenta, projected
                p.add_(self._noise_like(theta, key + _SLOT_O, i), alpha=scale)
                pxi.add_(self._noise_like(theta, key + _SLOT_XI_UD, i), alpha=scale)
                _project_circle(theta, xi, p, pxi, r)
            _rotate(theta, xi, p, pxi, 0.5 * h, r)  # A_{h/2}
            report.add(_circle_residual(theta, xi, r))

    def _buckets(self, *columns: list) -> list[list[tuple]]:
        """Orthogonal tensors of one tall shape, dtype and device, batched together
        (``foreach``; else one per batch: the same numbers, as the solve masks per matrix)."""
        rows = list(zip(*columns, strict=True))
        if not self._foreach:
            return [[row] for row in rows]
        buckets: dict[tuple, list[tuple]] = {}
        for row in rows:
            t = row[0]
            tall = _GEOMETRY._tall(t).shape
            buckets.setdefault((tuple(tall), t.dtype, t.device), []).append(row)
        return list(buckets.values())

    def _rattle(
        self, w: Tensor, mom: Tensor, t: float, tol: float, report: SolveReport, check: bool = True
    ) -> None:
        """The position half of ``A_t`` on the orthogonality constraint, in place on batched
        tall ``w`` and ``mom``: ``W' = W + t P + W Lambda``, ``P += W Lambda / t``.

        ``P`` need not be tangent at ``W``: a normal part ``W S`` (``S`` symmetric) only shifts
        the multiplier (``Lambda -> Lambda - t S``), so ``W'`` and the tangent part of the new
        ``P`` are the same as with ``Pi_W(P)``; the caller projects ``P`` once, at the end of the
        step (the velocity constraint), instead of after every B, O and A."""
        target = torch.add(w, mom, alpha=t)  # W~ = W + t P
        new, iterations, residual, fallbacks = rattle_solve(
            w, target, tol, self._max_iterations, check=check
        )
        mom.add_(new - target, alpha=1.0 / t)  # P += (W' - W~) / t
        w.copy_(new)
        report.add(residual if check else 0.0, iterations, w.shape[0], fallbacks)

    def _overdamped(self, group, params, grads, indices, k, report) -> None:
        h, tau, constraint = group["lr"], group["temperature"], group["constraint"]
        if constraint is None:  # SGLD, exactly as LangevinSplitting runs it
            real = [_real(t) for t in params]
            view = self._langevin_view(group, "sgld")
            grads = [_real(g) for g in grads]
            self._run_engine([(engine.SGLD, h, k)], real, real, grads, indices, view)
            return
        sigma, key, tol = math.sqrt(2.0 * h * tau), engine.SLOTS * k, self._tol(params[0])
        if constraint == "orthogonal":
            for bucket in self._buckets(params, grads, indices):
                thetas, gs, idx = zip(*bucket, strict=True)
                w = _stack_tall(thetas)
                target = w - h * _stack_tall(gs)  # W~ = W - h G + sqrt(2 h tau) R
                if sigma:
                    noise = [self._noise_like(t, key, i) for t, i in zip(thetas, idx, strict=True)]
                    target.add_(_stack_tall(noise), alpha=sigma)
                new, iterations, residual, fallbacks = rattle_solve(
                    w, target, tol, self._max_iterations
                )
                report.add(residual, iterations, w.shape[0], fallbacks)
                _unstack_tall(new, thetas)
            return
        r = group["radius"]
        for theta, g, i in zip(params, grads, indices, strict=True):
            target = theta - h * g  # theta~ = theta - h G + sqrt(2 h tau) R
            if sigma:
                target.add_(self._noise_like(theta, key, i), alpha=sigma)
            xi, _ = self._circle_state(theta, r, momentum=False)
            xi_target = xi.clone()
            if sigma:
                xi_target.add_(self._noise_like(theta, key + _SLOT_XI_OD, i), alpha=sigma)
            _circle_multiplier(theta, xi, target, xi_target, r)
            report.add(_circle_residual(theta, xi, r))

    def _circle_state(self, theta: Tensor, r: float, momentum: bool = True):
        """``xi`` (``+sqrt(r**2 - w**2)`` on the first step) and ``p_xi`` (zero at first)."""
        state = self.state[theta]
        if "xi" not in state:
            state["xi"] = (r * r - theta * theta).clamp_min_(0.0).sqrt_()
        if momentum and "xi_momentum" not in state:
            state["xi_momentum"] = torch.zeros_like(theta)
        return state["xi"], state.get("xi_momentum")

    def diagnostics(self) -> list[dict[str, float]]:
        """Per group, for the last step: ``residual`` (the largest ``max |W^T W - I|`` of its
        orthogonal tensors, or ``max |w**2 + xi**2 - r**2| / r**2`` of its norm ones),
        ``iterations`` (the most a solve took), ``solves`` and ``fallbacks`` (polar
        fallbacks); zeros for unconstrained groups and before the first step."""
        return [report.as_dict() for report in self._reports] or [
            SolveReport().as_dict() for _ in self.param_groups
        ]


# ---------------------------------------------------------------------- validation helpers
def _check_group(declared: tuple[Hyperparameter, ...], group: Mapping[str, Any]) -> None:
    missing = [key for key in _GROUP_KEYS if key not in group]
    if missing:
        raise ValueError(f"Invalid param group: it lacks {missing}")
    validate_group(declared, group)  # type: ignore[arg-type]
    constraint = group["constraint"]
    if isinstance(constraint, bool) or constraint not in CONSTRAINTS:
        raise ValueError(f"Invalid constraint: {constraint!r} (one of None, 'orthogonal', 'norm')")


def _check_tensor(
    p: Tensor, constraint: str, radius: float, position: int, tol: float, on_set: bool
) -> None:
    """A constrained tensor's dtype, shape and (at construction) membership."""
    where = f"parameter {position} of its group (shape {tuple(p.shape)})"
    if p.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"Invalid constraint: {constraint!r} needs float32/float64 weights, {where} is "
            f"{p.dtype}"
        )
    if constraint == "orthogonal":
        if p.dim() < 2:
            raise ValueError(
                f"Invalid constraint: 'orthogonal' needs a tensor with at least 2 dimensions, "
                f"{where} has {p.dim()}; put biases and other 1-dim tensors in a group with "
                "constraint=None (constrain_model does)"
            )
        if on_set:
            residual = constraint_residual(_GEOMETRY._tall(p.detach()))
            if not residual <= 100 * tol:
                raise ValueError(
                    f"Invalid weights: {where} is off the orthogonality constraint "
                    f"(max |W^T W - I| = {residual:.3g}); put it on the constraint set first: "
                    "torchvalley.dynamics.constrain_model(model, 'orthogonal') (QR or polar), "
                    "or Stiefel(flatten=True).projx(weight)"
                )
    elif on_set:
        largest = float(p.detach().abs().max()) if p.numel() else 0.0
        if largest > radius:
            raise ValueError(
                f"Invalid radius: {radius}: {where} has |w| up to {largest:.4g} > radius, so it "
                "cannot lie on the circle w**2 + xi**2 = radius**2; use a larger radius or "
                "clip the weights: constrain_model(model, 'norm', radius=..., clip=True)"
            )


# ---------------------------------------------------------------------- batches
def _stack_tall(tensors: Iterable[Tensor]) -> Tensor:
    """The tall views of same-shaped tensors as one ``(B, n, m)`` batch (a copy)."""
    return torch.stack([_GEOMETRY._tall(t) for t in tensors])


def _unstack_tall(batch: Tensor, tensors: Iterable[Tensor]) -> None:
    """Write a ``(B, n, m)`` batch back into the tall views of ``tensors``."""
    for matrix, t in zip(batch, tensors, strict=True):
        _GEOMETRY._tall(t).copy_(matrix)


# ---------------------------------------------------------------------- circle geometry
def _project_circle(w: Tensor, xi: Tensor, pw: Tensor, pxi: Tensor, r: float) -> None:
    """``(p_w, p_xi) -= lambda (w, xi)``, ``lambda = (w p_w + xi p_xi) / r**2`` (tangent)."""
    lam = (w * pw).add_(xi * pxi).div_(r * r)
    pw.sub_(lam * w)
    pxi.sub_(lam * xi)


def _rotate(w: Tensor, xi: Tensor, pw: Tensor, pxi: Tensor, t: float, r: float) -> None:
    """The geodesic flow for time ``t``: rotate ``(w, xi)`` and ``(p_w, p_xi)`` by
    ``t omega``, ``omega = (xi p_w - w p_xi) / r**2``; then rescale ``(w, xi)`` to radius
    ``r`` (removes the rounding of the rotation, a relative ``O(eps)``)."""
    angle = (xi * pw).sub_(w * pxi).mul_(t / (r * r))
    cos, sin = torch.cos(angle), torch.sin(angle)
    w_new = (w * cos).add_(xi * sin)
    xi.mul_(cos).sub_(w * sin)
    w.copy_(w_new)
    p_new = (pw * cos).add_(pxi * sin)
    pxi.mul_(cos).sub_(pw * sin)
    pw.copy_(p_new)
    _rescale(w, xi, r)


def _rescale(w: Tensor, xi: Tensor, r: float) -> None:
    factor = torch.rsqrt((w * w).add_(xi * xi)).mul_(r)
    w.mul_(factor)
    xi.mul_(factor)


def _circle_multiplier(w: Tensor, xi: Tensor, vw: Tensor, vxi: Tensor, r: float) -> None:
    """In place: ``(w, xi) <- (v_w, v_xi) + lambda (w, xi)`` on the circle of radius ``r``.

    ``|v + lambda u|**2 = r**2`` with ``|u| = r`` is ``r**2 lambda**2 + 2 b lambda + c = 0``,
    ``b = u.v``, ``c = |v|**2 - r**2``; the root nearest 0 is ``-c / (b + sqrt(b**2 - r**2 c))``
    (no cancellation). Where it does not exist (a step longer than the radius) the point is
    projected radially.
    """
    b = (w * vw).add_(xi * vxi)
    c = (vw * vw).add_(vxi * vxi).sub_(r * r)
    disc = b * b - (r * r) * c
    denominator = b + disc.clamp_min(0.0).sqrt()
    ok = (disc >= 0) & (denominator > 0)
    lam = torch.where(ok, -c / torch.where(ok, denominator, torch.ones_like(b)), 0.0)
    w_new = vw + lam * w
    xi_new = vxi + lam * xi
    w.copy_(w_new)
    xi.copy_(xi_new)
    _rescale(w, xi, r)


def _circle_residual(w: Tensor, xi: Tensor, r: float) -> float:
    if not w.numel():
        return 0.0
    return float(((w * w + xi * xi) / (r * r) - 1.0).abs().max())
