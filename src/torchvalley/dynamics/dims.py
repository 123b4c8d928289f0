"""DiMS: a particle on the graph of the loss, pulled down by gravity, braked across level sets.

Jacobsen, Jakobsen, Gegenfurtner & Arvanitidis, "Don't Stop Me Yet: Sampling Loss Minima via
Dissipative Riemannian Mechanics" (arXiv:2605.15459, 2026) sample the connected minimum sets of
a network's loss with "a dynamical system based on kinetic energy, subject to a gravitational
pull and a friction term that dissipates energy". Only the abstract was available to us; the
system below is **our construction** from that sentence (which parts are ours, and what would
change if the paper's equations differ: ``docs/dims.md``). The API keeps the paper's physical
hyperparameters (gravity, friction, initial energy, step size) so its exact form can replace
the integrator without changing callers.

The system. The particle is ``x = (θ, z)`` in R^{d+1} on the graph ``z = L(θ)``, with kinetic
energy ``½ θ̇ᵀMθ̇ + ½ ż²`` (``M`` = per-group masses; with ``M = I`` this is ``½ θ̇ᵀGθ̇`` for the
induced (Monge) metric ``G = I + ∇L∇Lᵀ``, the metric of Monge-SAM), potential ``g·z`` (gravity
``g``), and friction ``γ`` on the velocity component *across* the level sets (along
``M⁻¹∇L``, orthogonal in the metric to the level set's tangent space):

    E = ½ θ̇ᵀMθ̇ + ½ ż² + g z,        dE/dt = −γ · (∇L·θ̇)² / (∇Lᵀ M⁻¹ ∇L)  ≤ 0.

The motion along a level set is never braked, so the particle settles into the minimum set
while its motion along the set goes on ("don't stop"). On a curved minimum set the motion
along it needs a centripetal force, which gravity supplies from a small height: a speed ``s``
on a set of curvature ``κ`` with normal curvature ``λ`` of the loss rides at a loss gap of
about ``κ²s⁴ / (2 g² λ)`` (the ring ``(|θ|²−1)²``: ``s⁴ / (16 g²)``); large ``g`` or small
``s`` make it negligible.

The integrator is RATTLE (Andersen 1983; Leimkuhler & Reich, *Simulating Hamiltonian Dynamics*,
2004, §7) for the constraint ``c(θ, z) = z − L(θ) = 0``, symmetric and symplectic, so with
``γ = 0`` the energy error stays O(h²) without drift; the friction is an exact half step on
either side (Strang splitting). One step, with ``n = M⁻¹∇L`` and ``p = (θ̇, ż)``::

    θ̇ −= (1 − e^{−γh/2}) (∇L·θ̇ / ∇Lᵀn) n;  ż = ∇L·θ̇        # friction, half step (exact)
    ż −= (h/2) g                                           # gravity, half kick
    θ(λ) = θ + h(θ̇ − λ n),  z(λ) = z + h(ż + λ)             # SHAKE: find λ with z(λ) = L(θ(λ))
        by Newton, φ(λ) = z(λ) − L(θ(λ)),  φ' = h (1 + ∇L(θ(λ))·n)   (one gradient each)
    θ̇, ż = θ̇ − λn, ż + λ;  θ, z = θ(λ), L(θ(λ))
    ż −= (h/2) g                                           # gravity, half kick
    μ = (∇L·θ̇ − ż) / (1 + ∇Lᵀn);  θ̇ −= μ n;  ż += μ        # velocity onto the tangent space
    θ̇ −= (1 − e^{−γh/2}) (∇L·θ̇ / ∇Lᵀn) n;  ż = ∇L·θ̇        # friction, half step

Every gradient is the closure's (``loss.backward()``), at the new point, so a step costs as
many forward + backward passes as Newton iterations (about 2; the first guess
``λ₀ = (h/2) g / (1 + ∇Lᵀn)`` is the linearised solution), and no Hessian product is needed.
Newton runs to a tolerance (``tol``, default 16 ulp of the height) and the step raises
``RuntimeError`` (parameters restored) when it does not converge in ``max_newton`` iterations
or the loss is not finite, instead of returning garbage.

Samples are the parameters along the trajectory after a settling phase (collect them with
:class:`~torchvalley.dynamics.posterior.SampleCollector`); several particles from different
starts explore several valleys.

Data parallel. All-reduced gradients are not enough: the constraint is on the loss *value* (the
height z and the Newton residual), so a rank with only its shard's loss rides a different
surface, takes a different number of Newton iterations and drifts off the others (and under DDP
a rank that calls the closure once more than another hangs in its backward). With
``process_group`` set, every closure call averages the loss and the gradients over the group
(two all-reduces: the float64 loss, then the gradients flattened per dtype), so every rank
integrates the same full-batch system: the same iterations, bit-identical parameters, and, for
equal shards of a mean loss, the single-process full-batch trajectory up to summation order. The
initial velocity comes from the seeded generator (the same on every rank), and no other random
number is drawn. Use it with a plain model (the cheaper path) or with a DDP-wrapped one (DDP's
hooks have averaged the gradients already; averaging equal values again changes them at most
by rounding, the same on every rank; with 2 ranks not at all). No Hessian-vector product is
used, so there is nothing else to reduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from torchvalley.optim._profiling import profile_hook_step
from torchvalley.registry import Hyperparameter, validate_group

__all__ = ["DiMS"]

Tensors = list[torch.Tensor]

#: Hyperparameters that describe the one joint system (equal in every param group).
_SYSTEM = ("lr", "gravity", "friction", "energy", "tol", "max_newton", "seed", "refresh")


def _dot(xs: Tensors, ys: Tensors) -> torch.Tensor:
    """Σ_i ⟨x_i, y_i⟩ as a 0-d tensor (float64 accumulation: the energy bookkeeping needs it)."""
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(
        [torch.sum(x.double() * y.double()) for x, y in zip(xs, ys, strict=True)]
    ).sum()


class DiMS(torch.optim.Optimizer):
    """DiMS level-set sampler (our construction; see the module docstring and ``docs/dims.md``).

    ``step(closure)`` needs a closure that zeroes the gradients, computes the loss, calls
    ``backward()`` and returns the loss; it is called about twice per step (Newton on the
    constraint). Use the full-batch loss (the same data in every call) for the exactness of
    the minimum set; a closure over a new mini-batch per step makes the surface itself move.

    Args:
        params: parameters or param groups (a group may set its own ``mass``).
        lr: the time step h.
        gravity: g > 0, the pull down the loss (larger: lower ride height on curved sets).
        friction: γ ≥ 0 on the across-level-set velocity (larger: settles faster).
        energy: E₀ ≥ 0, the initial kinetic energy; the initial velocity is a Gaussian
            direction (seeded by ``seed``) tangent to the graph, scaled to E₀. It sets the
            speed along the minimum set, i.e. how far the particle explores it.
        mass: per group, m > 0: the kinetic energy ½ m |θ̇|² of the group's parameters.
        tol: Newton tolerance on |z − L(θ)|; ``None``: 16 ulp of max(1, |z|).
        max_newton: Newton iterations before the step gives up (``RuntimeError``).
        seed: seed of the initial velocity's direction.
        refresh: for a closure over a new mini-batch each step: re-evaluate the loss and the
            gradient at the current point first (z and ∇L of the new batch; the velocity is made
            tangent to the new graph, keeping θ̇), one more pass per step. Off (full batch):
            the state carries over from the previous step's last evaluation.
        process_group: data parallel: average the closure's loss and gradients over this
            ``torch.distributed`` process group (``"world"``: the default group) after every
            call, so that all ranks integrate the same system (module docstring). ``None``
            (default): no communication, e.g. independent particles on different ranks.
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("lr", "positive", 0.01, "time step h"),
        Hyperparameter("gravity", "positive", 1.0, "gravitational pull g"),
        Hyperparameter("friction", "non_negative", 1.0, "friction γ across level sets"),
        Hyperparameter("energy", "non_negative", 0.0, "initial kinetic energy E₀"),
        Hyperparameter("mass", "positive", 1.0, "mass of the group's parameters"),
        Hyperparameter("tol", "optional_positive", None, "Newton tolerance on z − L(θ)"),
        Hyperparameter("max_newton", "positive_int", 20, "Newton iterations per step, at most"),
        Hyperparameter("seed", "any", 0, "seed of the initial velocity's direction"),
        Hyperparameter(
            "refresh", "bool", False, "re-read loss and gradient at each step (mini-batches)"
        ),
    )
    STATE_KEYS: ClassVar[frozenset[str]] = frozenset({"velocity", "grad"})

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        gravity: float = 1.0,
        friction: float = 1.0,
        energy: float = 0.0,
        mass: float = 1.0,
        tol: float | None = None,
        max_newton: int = 20,
        seed: int = 0,
        refresh: bool = False,
        *,
        process_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            gravity=gravity,
            friction=friction,
            energy=energy,
            mass=mass,
            tol=tol,
            max_newton=max_newton,
            seed=seed,
            refresh=refresh,
        )
        validate_group(self.HYPERPARAMETERS, defaults)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"Invalid seed: {seed!r} (an int)")
        group_type = getattr(torch.distributed, "ProcessGroup", ())
        if process_group is not None and not (
            (isinstance(process_group, str) and process_group == "world")
            or isinstance(process_group, group_type)
        ):
            raise ValueError(
                f"Invalid process_group: {process_group!r} (None, 'world' or a "
                "torch.distributed.ProcessGroup)"
            )
        super().__init__(params, defaults)
        self.process_group = process_group
        #: The joint state: height z, vertical velocity ż, steps, last Newton iterations and
        #: residual. Kept here (not per parameter) and in ``state_dict()["dims"]``.
        self.system: dict[str, Any] = {"step": 0}

    # -- bookkeeping -----------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        for group in self.param_groups:
            validate_group(self.HYPERPARAMETERS, group)
        first = self.param_groups[0]
        for index, group in enumerate(self.param_groups[1:], start=1):
            for key in _SYSTEM:
                if group[key] != first[key]:
                    raise ValueError(
                        f"Invalid {key}: param_groups[{index}] has {group[key]!r}, "
                        f"param_groups[0] {first[key]!r}; DiMS integrates one system, only "
                        "'mass' may differ between groups"
                    )
        if not isinstance(first["seed"], int) or isinstance(first["seed"], bool):
            raise ValueError(f"Invalid seed: {first['seed']!r} (an int)")
        return first

    def _active(self) -> tuple[Tensors, list[float]]:
        """The system's parameters: those with a gradient at the first step (the others, e.g.
        parameters the loss does not use, are left alone) and their groups' masses."""
        started = "height" in self.system
        params, masses = [], []
        for group in self.param_groups:
            for p in group["params"]:
                member = "velocity" in self.state.get(p, {}) if started else p.grad is not None
                if member:
                    if p.grad is not None and p.grad.is_sparse:
                        raise ValueError("Invalid gradient: DiMS does not support sparse gradients")
                    params.append(p)
                    masses.append(float(group["mass"]))
        return params, masses

    def energy(self) -> float:
        """E = ½ θ̇ᵀMθ̇ + ½ ż² + g z (float64), ``nan`` before the first step."""
        if "height" not in self.system:
            return math.nan
        g = self._settings()["gravity"]
        return self.kinetic_energy() + g * self.system["height"]

    def kinetic_energy(self) -> float:
        """½ θ̇ᵀMθ̇ + ½ ż² (float64)."""
        if "height" not in self.system:
            return math.nan
        total = 0.5 * self.system["vertical_velocity"] ** 2
        for group in self.param_groups:
            for p in group["params"]:
                v = self.state.get(p, {}).get("velocity")
                if v is not None:
                    total += 0.5 * group["mass"] * float(torch.sum(v.double() ** 2))
        return total

    # -- the step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """One RATTLE step with friction (see the module docstring); returns the loss at the
        new point.

        Raises:
            ValueError: no closure, or param groups that disagree on a system setting.
            RuntimeError: Newton did not converge or the loss is not finite (the parameters are
                restored to the start of the step); reduce ``lr``.
        """
        if closure is None:
            raise ValueError("DiMS.step needs a closure (it re-evaluates the loss, ~2 per step)")
        s = self._settings()
        h, g, gamma = float(s["lr"]), float(s["gravity"]), float(s["friction"])

        def evaluate() -> torch.Tensor:
            with torch.enable_grad():
                loss = closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(
                    f"Invalid loss: the closure must return a scalar tensor, got {loss!r}"
                )
            if self.process_group is not None:
                loss = self._all_reduce(loss)
            return loss

        if "height" not in self.system:  # first step: the state at the start point
            loss = evaluate()
            self._start(loss, s)
        elif s["refresh"]:  # a new mini-batch: its loss and gradient at the current point
            loss = evaluate()
            params, _ = self._active()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            self._set_grads(params, [g.detach().clone() for g in grads])
            v = [self.state[p]["velocity"] for p in params]
            self.system.update(height=float(loss.detach()), vertical_velocity=float(_dot(grads, v)))
        params, masses = self._active()
        v = [self.state[p]["velocity"] for p in params]
        grad = [self.state[p]["grad"] for p in params]
        n = torch._foreach_div(grad, masses)  # M⁻¹∇L
        z, w = self.system["height"], self.system["vertical_velocity"]

        w = self._friction(v, grad, n, gamma * h / 2)  # friction, half step
        w -= 0.5 * h * g  # gravity, half kick
        start = [p.detach().clone() for p in params]
        gn = float(_dot(grad, n))
        lam = 0.5 * h * g / (1.0 + gn)  # the linearised solution
        tol = s["tol"]
        iterations = 0
        for _ in range(int(s["max_newton"])):
            iterations += 1
            for p, p0, vi, ni in zip(params, start, v, n, strict=True):  # θ(λ) = θ + h(θ̇ − λn)
                p.copy_(p0).add_(vi, alpha=h).add_(ni, alpha=-h * lam)
            loss = evaluate()
            value = float(loss.detach())
            z_new = z + h * (w + lam)
            residual = z_new - value  # φ(λ)
            if not math.isfinite(value) or not math.isfinite(residual):
                self._restore(params, start)
                raise RuntimeError(
                    f"DiMS: the loss is not finite ({value}) at step {self.system['step'] + 1}; "
                    "the parameters are restored; reduce lr"
                )
            limit = tol if tol is not None else 16 * _ulp(loss.dtype) * max(1.0, abs(value))
            if abs(residual) <= limit:
                break
            new_grad = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            slope = h * (1.0 + float(_dot(new_grad, n)))  # φ'(λ)
            lam -= residual / slope
        else:
            self._restore(params, start)
            raise RuntimeError(
                f"DiMS: Newton on the constraint did not converge in {s['max_newton']} "
                f"iterations (|z − L(θ)| = {abs(residual):.3g}) at step {self.system['step'] + 1}; "
                "the parameters are restored; reduce lr (or, for a closure over a new "
                "mini-batch each step, set refresh=True)"
            )
        torch._foreach_add_(v, n, alpha=-lam)  # θ̇ − λn
        w = w + lam - 0.5 * h * g  # ż + λ, then gravity, half kick
        grad_new = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params
        ]
        n_new = torch._foreach_div(grad_new, masses)
        gn_new = float(_dot(grad_new, n_new))
        mu = (float(_dot(grad_new, v)) - w) / (1.0 + gn_new)  # onto the tangent space
        torch._foreach_add_(v, n_new, alpha=-mu)
        w += mu
        self._set_grads(params, grad_new)
        w = self._friction(v, grad_new, n_new, gamma * h / 2)  # friction, half step
        self.system.update(
            height=value,
            vertical_velocity=w,
            step=self.system["step"] + 1,
            newton_iterations=iterations,
            residual=abs(residual),
        )
        return loss

    def _friction(self, v: Tensors, grad: Tensors, n: Tensors, t: float) -> float:
        """θ̇ −= (1 − e^{−t}) a n with a = ∇L·θ̇ / ∇Lᵀn (the across part); returns ż = ∇L·θ̇."""
        gn = float(_dot(grad, n))
        across = float(_dot(grad, v))
        if gn > 0.0 and t > 0.0:
            torch._foreach_add_(v, n, alpha=-(1.0 - math.exp(-t)) * across / gn)
            across = float(_dot(grad, v))
        return across

    def _start(self, loss: torch.Tensor, s: dict[str, Any]) -> None:
        """z = L(θ₀); θ̇₀ ~ N(0, M⁻¹) (seeded) made tangent, scaled to kinetic energy E₀."""
        params, masses = self._active()
        generator = torch.Generator().manual_seed(int(s["seed"]))
        v = [
            torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p) / math.sqrt(m)
            for p, m in zip(params, masses, strict=True)
        ]
        grad = [p.grad.detach().clone() for p in params]
        kinetic = 0.5 * sum(
            m * float(torch.sum(x.double() ** 2)) for x, m in zip(v, masses, strict=True)
        )
        kinetic += 0.5 * float(_dot(grad, v)) ** 2  # ż = ∇L·θ̇
        scale = math.sqrt(s["energy"] / kinetic) if kinetic > 0 else 0.0
        torch._foreach_mul_(v, scale)
        for p, vi, gi in zip(params, v, grad, strict=True):
            self.state[p]["velocity"] = vi
            self.state[p]["grad"] = gi
        self.system.update(height=float(loss.detach()), vertical_velocity=float(_dot(grad, v)))

    def _all_reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """The group's mean loss (returned, detached) and mean gradients (in place in ``.grad``):
        sum, then divide by the world size (every backend has SUM), one buffer per dtype."""
        dist = torch.distributed
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DiMS: process_group is set but torch.distributed is not initialized; call "
                "init_process_group first (or leave process_group=None)"
            )
        group = None if self.process_group == "world" else self.process_group
        size = dist.get_world_size(group)
        value = loss.detach().reshape(1).to(torch.float64)
        dist.all_reduce(value, group=group)
        grads = [
            p.grad for group_ in self.param_groups for p in group_["params"] if p.grad is not None
        ]
        by_dtype: dict[tuple[torch.dtype, torch.device], Tensors] = {}
        for grad in grads:
            by_dtype.setdefault((grad.dtype, grad.device), []).append(grad)
        for same in by_dtype.values():
            flat = torch.cat([grad.reshape(-1) for grad in same])
            dist.all_reduce(flat, group=group)
            flat.div_(size)
            offset = 0
            for grad in same:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()
        return (value / size).reshape(()).to(loss.dtype)

    def _set_grads(self, params: Tensors, grads: Tensors) -> None:
        for p, gi in zip(params, grads, strict=True):
            self.state[p]["grad"] = gi

    @staticmethod
    def _restore(params: Tensors, start: Tensors) -> None:
        for p, p0 in zip(params, start, strict=True):
            p.copy_(p0)

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"dims"``: the joint state (height, ż, step, ...)."""
        state = super().state_dict()
        state["dims"] = dict(self.system)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict written by :meth:`state_dict` (refuses one without ``"dims"``)."""
        if "dims" not in state_dict:
            raise ValueError("Invalid state_dict: not a DiMS state dict (no 'dims' entry)")
        for index, entry in state_dict.get("state", {}).items():
            unknown = set(entry) - self.STATE_KEYS
            if unknown:
                raise ValueError(
                    f"Invalid state_dict: state of parameter {index} has keys {sorted(unknown)} "
                    f"that DiMS does not write (expected {sorted(self.STATE_KEYS)})"
                )
        rest = {k: v for k, v in state_dict.items() if k != "dims"}
        super().load_state_dict(rest)
        self.system = dict(state_dict["dims"])


def _ulp(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else 2.0**-52
