"""Langevin-type samplers/optimizers built from a splitting-scheme engine.

Dynamics (``theta`` parameters, ``p`` momenta, ``U`` the loss, ``m`` mass, ``gamma`` friction,
``tau`` temperature, ``h`` the step ``lr``):

* ``"langevin"`` (underdamped): ``dtheta = p/m dt``, ``dp = -grad U dt - gamma p dt +
  sqrt(2 gamma m tau) dW``; default scheme ``"BAOAB"`` (Leimkuhler & Matthews 2013, 2015).
* ``"overdamped"``: the same with ``gamma = inf`` (``O`` refreshes ``p = sqrt(m tau) R``); with
  BAOAB this is the "BAOAB limit method" ``theta' = theta - h**2/(2m) grad U +
  (h/2) sqrt(tau/m) (R_n + R_{n+1})`` (the "O" partition of LOL).
* ``"adaptive"`` (adaptive Langevin / SG Nose-Hoover with additive noise, Ding et al. 2014;
  Leimkuhler, Matthews & Vlaar 2019): ``dp = -grad U dt - xi p dt + sigma_A dW``,
  ``dxi = eps (p.p/m - N tau) dt``; default scheme ``"BACDEDCAB"`` (the reference code's
  ``A C D E D C A B`` with the B split symmetrically). One thermostat ``xi`` per param group,
  ``N`` = number of elements of the group's parameters (with a gradient).
* ``"sghmc"`` (Chen, Fox & Guestrin 2014, Euler form): scheme ``"FBA"``:
  ``p = (1 - gamma h) p - h grad U + sqrt(2 gamma h m tau) R``; ``theta += h p / m``.
* ``"sgld"`` (Welling & Teh 2011): ``theta = theta - h grad U + sqrt(2 h tau) R`` (no momentum,
  ``mass`` and ``friction`` unused).

Partitions (LaLa, AdLaLa, LOL; Leimkuhler, Matthews & Vlaar 2019). Dynamics and hyperparameters
are per param group, so a partitioned integrator is a list of groups, e.g. from
:func:`partition_by_layer`. The registry entries ``"adlala"``, ``"lol"`` and ``"lala"`` accept
``model=`` (as the benchmark harness passes it): given the model and a flat parameter list (e.g.
``model.parameters()``), they build the paper's partition themselves, one group per layer
(module owning parameters, in ``model.named_modules()`` order, restricted to the given
parameters): AdLaLa ``adaptive`` on the first layer and ``langevin`` on every later layer, LOL
``langevin`` on the first layer and ``overdamped`` on every later layer, LaLa ``langevin`` on
each. The flat hyperparameters then apply to every group. Explicit param groups are used as
given, as is a flat list holding a tensor the model does not own; without ``model`` the list is
one group with the entry's default dynamics (``langevin``), as before.

Schemes. A scheme is a string of operator letters (see :mod:`torchvalley.dynamics.operators`):
each letter covers ``h / k`` where ``k`` is how often it appears (``"BAOAB"`` is
``B_{h/2} A_{h/2} O_h A_{h/2} B_{h/2}``, ``"OBABO"`` is ``O_{h/2} B_{h/2} A_h B_{h/2} O_{h/2}``,
``"BAOA"`` is posteriors' ``B_h A_{h/2} O_h A_{h/2}``). Schemes are per param group.

One gradient per ``step()`` (cyclic permutation). ``step()`` receives the gradient at the
current ``theta``. All ``B`` letters must lie in one cyclic run free of ``A`` (``"BAOAB"``,
``"OBABO"``, ``"BACDEDCAB"`` qualify; ``"ABA"`` does not). Split the scheme after its last ``A``
into a *head* (up to and including the last ``A``) and a *tail* (the rest, e.g. ``"B"`` for
BAOAB, ``"BO"`` for OBABO). ``step()`` number ``k`` runs the tail of step ``k-1`` (with that
step's ``lr`` and noise keys) and then the head of step ``k``. Neither the tail nor the head's
ops before its first ``A`` move ``theta``, so every ``B`` sees the gradient at the current
``theta``. On a group's first step there is no pending tail, so the first step is exactly the
scheme's head from the initial ``p = 0`` (for BAOAB: the initial half kick
``p = -(h/2) grad U``, then ``A O A``; afterwards the merged kick ``B_{h/2} B_{h/2}``). Hence the
positions after every ``step()`` are exactly those of the full scheme, while the stored momenta
lag by the tail (for BAOAB they are the momenta before the final half kick).

Missing gradients. A parameter whose ``grad`` is ``None`` on step ``k`` is left untouched on
that step (no drift, kick, friction or noise; its momentum keeps its value) and it does *not*
receive the tail it owed from step ``k-1``: the group's pending tail still advances to step
``k``, so that owed tail is skipped for it. When it next has a gradient, on step ``k'``, it
receives the tail of step ``k'-1`` (that step's ``lr`` and noise keys) and then the head of
``k'``. Its noise keys, and every other parameter's, are unaffected (the index ``i`` counts
every parameter of the optimizer). If no parameter of a group has a gradient, the group is
skipped as a whole and its pending tail is kept, so it runs (with its original ``lr`` and noise
keys) on the group's next step with gradients. ``sgld`` has no tail: the parameter is simply
not updated on that step. The adaptive thermostat's ``N`` counts only the elements with a
gradient on the step.

Noise. Every draw is ``CounterNoise(seed).gaussian(p, step=16 * k + slot, index=i,
dtype=float32)`` cast to the parameter dtype, with ``k`` the optimizer step the operator belongs
to, ``slot`` the letter's position in the scheme and ``i`` the parameter's position in the
optimizer (global across groups). The noise is thus rank-invariant, independent of the global
RNG, identical for float32 and float64 parameters, and resumes bit-exactly from ``state_dict``.

Parameterizations (:func:`physical_to_sgd`, :func:`sgd_to_physical`). With scheme ``"BAOA"``
(or BAOAB after its first step) the positions follow exactly the heavy-ball recursion

    theta_{k+1} - theta_k = mu (theta_k - theta_{k-1}) - eta grad U(theta_k)
                            + sigma (R_{k-1} + R_k),

    mu = exp(-gamma h),  eta = h**2 (1 + mu) / (2 m),  sigma = (h/2) sqrt((1 - mu**2) tau / m),

(derivation: with ``q_k`` the momentum after the kick, ``theta_{k+1} - theta_k =
h (1 + mu) q_k / (2m) + (h/2m) s R_k`` and ``q_{k+1} = mu q_k + s R_k - h g_{k+1}``,
``s = sqrt((1 - mu**2) m tau)``). At ``tau = 0`` this is ``torch.optim.SGD(lr=eta,
momentum=mu)`` step for step (SGD's first buffer ``g_0`` equals BAOA's first full kick; BAOAB's
initial half kick makes its first step half as long). The inverse needs the mass (the map is
invariant under ``h -> h sqrt(k), m -> k m`` with ``gamma h`` fixed): ``h = sqrt(2 m eta /
(1 + mu))``, ``gamma = -log(mu) / h``, ``tau = 4 m sigma**2 / (h**2 (1 - mu**2))``. For SGLD
``eta = h`` and the per-step noise std is ``sqrt(2 h tau)``.

Temperature convention (dataset-size invariant, as posteriors): write the loss as the
*averaged* negative log posterior ``U = -(1/N_data) (log p(D|theta) + log p(theta))`` (the usual
mean cross-entropy plus ``weight_decay``-style prior / N_data). Sampling ``exp(-U / tau)`` with
``tau = 1 / N_data`` (:func:`posterior_temperature`) is the Bayesian posterior; ``tau = T /
N_data`` is the tempered posterior at temperature ``T``. The learning rate then stays meaningful
across dataset and batch sizes. For training, a small ``tau`` (1e-6 .. 1e-4) adds exploration.

Diagnostics (:meth:`LangevinSplitting.diagnostics`, tensors, no host sync in ``step``): per group
the kinetic temperature ``sum(p**2) / (m N)`` (of the stored, lagging momenta), the thermostat
``xi`` (adaptive groups) and, with ``track_configurational=True``, the configurational
(virial) temperature ``theta . grad U / N`` measured at the gradient's point (equal to ``tau``
in expectation at equilibrium for confining potentials). A one-time
:class:`NoisePrecisionWarning` is emitted on the first step of a low-precision (bf16/fp16)
group whose per-step noise increment is below half an ulp of the mean ``|theta|`` (one host
sync, once).

Fused path (``fused=True``, opt-in, optimizer-wide). For the common case -- every group has
``dynamics="langevin"`` and scheme ``"BAOAB"`` (or ``None``) -- a step can run the owed tail
``B``, then ``B A O A`` for each tensor in a single elementwise pass (one read of ``theta``, ``p``,
``grad`` and the noise, one write of ``theta`` and ``p``) instead of one ``torch._foreach_*`` pass
per operator. The pass is a function compiled with ``torch.compile(dynamic=True,
fullgraph=True)`` over flattened 1-D views, so the first step pays the compile time (about 15 s
on a CPU, with a C++ compiler; a few more graphs for 1-element tensors and new dtypes) and
later steps reuse it whatever the shapes. The operators, their order, the noise keys and the
state (``momentum``, pending tail) are those of the default path, so ``state_dict`` moves
freely between fused and unfused optimizers; the numbers equal the default path's to rounding
only (the compiler may contract multiply-adds into FMAs; measured differences are a few ulp
of the parameters). Tensors that are not contiguous (or whose gradient or momentum is not) take
the same pass uncompiled. ``fused=True`` with any other dynamics or scheme raises
``ValueError``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch

from torchvalley.dynamics import operators as ops
from torchvalley.noise import CounterNoise
from torchvalley.registry import Capabilities, Hyperparameter, register_optimizer

__all__ = [
    "DEFAULT_SCHEMES",
    "DYNAMICS",
    "LangevinSplitting",
    "NoisePrecisionWarning",
    "PhysicalParameters",
    "SGDParameters",
    "parse_scheme",
    "partition_by_layer",
    "physical_to_sgd",
    "posterior_temperature",
    "sgd_to_physical",
]

DYNAMICS = ("langevin", "overdamped", "adaptive", "sghmc", "sgld")
DEFAULT_SCHEMES = {
    "langevin": "BAOAB",
    "overdamped": "BAOAB",
    "adaptive": "BACDEDCAB",
    "sghmc": "FBA",
}
_ALLOWED = {
    "langevin": frozenset("ABO"),
    "overdamped": frozenset("ABO"),
    "sghmc": frozenset("ABF"),
    "adaptive": frozenset("ABCDE"),
}
_SLOTS = 16  # noise step key = 16 * step + slot; schemes have at most 16 letters


class NoisePrecisionWarning(UserWarning):
    """Langevin noise increments are below half an ulp of the parameters (rounded away)."""


class SGDParameters(NamedTuple):
    """SGD-style parameters: heavy-ball ``lr`` (eta), ``momentum`` (mu), position ``noise``."""

    lr: float
    momentum: float
    noise: float


class PhysicalParameters(NamedTuple):
    """Physical parameters: step ``lr`` (h), ``friction``, ``temperature``, ``mass``."""

    lr: float
    friction: float
    temperature: float
    mass: float


def physical_to_sgd(
    lr: float, friction: float, temperature: float, mass: float = 1.0
) -> SGDParameters:
    """Map BAOA/BAOAB ``(h, gamma, tau, m)`` to the heavy-ball form (see the module docstring).

    ``mu = exp(-gamma h)``, ``eta = h**2 (1 + mu) / (2 m)``,
    ``sigma = (h / 2) sqrt((1 - mu**2) tau / m)``.
    """
    mu = math.exp(-friction * lr)
    eta = lr * lr * (1.0 + mu) / (2.0 * mass)
    sigma = 0.5 * lr * math.sqrt((1.0 - mu * mu) * temperature / mass)
    return SGDParameters(eta, mu, sigma)


def sgd_to_physical(
    lr: float, momentum: float, noise: float = 0.0, mass: float = 1.0
) -> PhysicalParameters:
    """Inverse of :func:`physical_to_sgd` for a given mass (``0 < momentum < 1``).

    ``h = sqrt(2 m eta / (1 + mu))``, ``gamma = -log(mu) / h``,
    ``tau = 4 m sigma**2 / (h**2 (1 - mu**2))``.
    """
    if not 0.0 < momentum < 1.0:
        raise ValueError(f"momentum must be in (0, 1), got {momentum!r}")
    h = math.sqrt(2.0 * mass * lr / (1.0 + momentum))
    friction = -math.log(momentum) / h
    temperature = 4.0 * mass * noise * noise / (h * h * (1.0 - momentum * momentum))
    return PhysicalParameters(h, friction, temperature, mass)


def posterior_temperature(num_data: int, scale: float = 1.0) -> float:
    """``scale / num_data``: temperature sampling the (tempered) posterior of a mean loss."""
    if num_data < 1:
        raise ValueError(f"num_data must be >= 1, got {num_data!r}")
    return scale / num_data


def parse_scheme(scheme: str, dynamics: str = "langevin") -> tuple[list, list]:
    """Split ``scheme`` into ``(head, tail)`` lists of ``(letter, fraction, slot)``.

    Raises:
        ValueError: on unknown letters, a missing ``A``/``B``, ``B`` letters separated by an
            ``A`` within the step (two gradients needed), or more than 16 letters.
    """
    if not isinstance(scheme, str) or not scheme:
        raise ValueError(f"Invalid scheme: expected a non-empty string, got {scheme!r}")
    scheme = scheme.upper()
    allowed = _ALLOWED.get(dynamics, ops.LETTERS)
    bad = sorted(set(scheme) - allowed)
    if bad:
        raise ValueError(f"Invalid scheme {scheme!r} for {dynamics!r}: letters {bad} not allowed")
    if len(scheme) > _SLOTS:
        raise ValueError(f"Invalid scheme {scheme!r}: at most {_SLOTS} letters")
    if "A" not in scheme or "B" not in scheme:
        raise ValueError(f"Invalid scheme {scheme!r}: needs at least one A and one B")
    first, last = scheme.index("A"), scheme.rindex("A")
    if "B" in scheme[first:last]:
        raise ValueError(
            f"Invalid scheme {scheme!r}: a B lies between two A letters, so one gradient "
            "per step cannot serve every B"
        )
    counts = {letter: scheme.count(letter) for letter in set(scheme)}
    items = [(letter, 1.0 / counts[letter], slot) for slot, letter in enumerate(scheme)]
    return items[: last + 1], items[last + 1 :]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"Invalid seed: expected an integer in [0, 2**64), got {seed!r}")
    return seed


def _finite(name: str, value: Any, *, positive: bool = False, allow_inf: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and not math.isnan(value) and (allow_inf or math.isfinite(value))
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r}")


class LangevinSplitting(torch.optim.Optimizer):
    """Langevin samplers from splitting schemes, one gradient per ``step``, per-group dynamics.

    See the module docstring for the dynamics, schemes, the cyclic permutation, the noise keys,
    the conversions and the temperature convention.

    Args:
        params: parameters or param groups (each group is a partition and may override every
            hyperparameter below except ``seed`` and ``track_configurational``).
        lr: step ``h``.
        friction: ``gamma`` (``inf`` allowed for ``"overdamped"``; unused by adaptive/sgld).
        temperature: ``tau``.
        mass: ``m``.
        dynamics: one of :data:`DYNAMICS`.
        scheme: splitting string; ``None`` for the dynamics' default (:data:`DEFAULT_SCHEMES`).
        thermostat_init: ``xi_0`` (adaptive).
        thermostat_coupling: ``eps`` (adaptive).
        noise_scale: ``sigma_A`` (adaptive additive noise).
        seed: noise seed (:class:`~torchvalley.CounterNoise`).
        track_configurational: record ``theta . grad U / N`` per group in ``step``.
        fused: one compiled elementwise pass per tensor for BAOAB Langevin groups (see
            "Fused path" in the module docstring: compile time on the first step, numbers equal
            to the default path's to rounding). Every group must then be ``"langevin"`` with
            scheme ``"BAOAB"``/``None``, otherwise ``ValueError``.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = LangevinSplitting(model.parameters(), lr=0.1, friction=1.0, temperature=1e-4)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> opt.step()
        >>> sorted(opt.diagnostics()[0])
        ['kinetic_temperature']
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        friction: float = 1.0,
        temperature: float = 1e-4,
        mass: float = 1.0,
        dynamics: str = "langevin",
        scheme: str | None = None,
        thermostat_init: float = 0.1,
        thermostat_coupling: float = 0.05,
        noise_scale: float = 0.01,
        seed: int = 0,
        track_configurational: bool = False,
        fused: bool = False,
    ) -> None:
        self._seed = _check_seed(seed)
        if not isinstance(track_configurational, bool):
            raise ValueError(f"Invalid track_configurational: {track_configurational!r}")
        if not isinstance(fused, bool):
            raise ValueError(f"Invalid fused: expected a bool, got {fused!r}")
        self._track = track_configurational
        self._fused = fused
        defaults = {
            "lr": lr,
            "friction": friction,
            "temperature": temperature,
            "mass": mass,
            "dynamics": dynamics,
            "scheme": scheme,
            "thermostat_init": thermostat_init,
            "thermostat_coupling": thermostat_coupling,
            "noise_scale": noise_scale,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate_group(group)
            self._validate_fused(group)
        self._noise = CounterNoise(self._seed)
        self._warned = False
        self._configurational: dict[int, torch.Tensor] = {}
        self.state["langevin"] = {"step": 0, "groups": {}}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (a partition); ``seed``/``track_configurational`` are optimizer-wide."""
        for key in ("seed", "track_configurational", "fused"):
            if key in param_group:
                raise ValueError(f"Invalid {key}: it is optimizer-wide, not per param group")
        super().add_param_group(param_group)
        if hasattr(self, "_noise"):
            self._validate_group(self.param_groups[-1])
            self._validate_fused(self.param_groups[-1])

    def _validate_fused(self, group: Mapping[str, Any]) -> None:
        if not getattr(self, "_fused", False):
            return
        scheme = group["scheme"]
        if group["dynamics"] != "langevin" or (scheme is not None and scheme.upper() != "BAOAB"):
            raise ValueError(
                "Invalid fused=True: the fused path covers only dynamics='langevin' with scheme "
                f"'BAOAB' (or None), got dynamics={group['dynamics']!r}, scheme={scheme!r}; "
                "use fused=False"
            )

    @staticmethod
    def _validate_group(group: Mapping[str, Any]) -> None:
        if group["dynamics"] not in DYNAMICS:
            raise ValueError(f"Invalid dynamics: {group['dynamics']!r}; one of {DYNAMICS}")
        _finite("lr", group["lr"], positive=True)
        _finite("friction", group["friction"], allow_inf=group["dynamics"] == "overdamped")
        _finite("temperature", group["temperature"])
        _finite("mass", group["mass"], positive=True)
        _finite("thermostat_init", group["thermostat_init"])
        _finite("thermostat_coupling", group["thermostat_coupling"])
        _finite("noise_scale", group["noise_scale"])
        if group["dynamics"] != "sgld" and group["scheme"] is not None:
            parse_scheme(group["scheme"], group["dynamics"])
        if group["dynamics"] == "sgld" and group["scheme"] is not None:
            raise ValueError("Invalid scheme: sgld takes no scheme")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a copy of ``state_dict`` (the given dict is never mutated afterwards)."""
        super().load_state_dict(copy.deepcopy(state_dict))
        for group in self.param_groups:
            self._validate_group(group)
            self._validate_fused(group)

    # ------------------------------------------------------------------------------------
    def _draw(self, tensors: list[torch.Tensor], indices: list[int], key: int) -> list:
        return [
            self._noise.gaussian(t, step=key, index=i, dtype=torch.float32).to(t.dtype)
            for t, i in zip(tensors, indices, strict=True)
        ]

    def _check_precision(self, group: Mapping[str, Any], params: list[torch.Tensor]) -> None:
        if self._warned or params[0].dtype not in (torch.bfloat16, torch.float16):
            return
        h, tau, m = group["lr"], group["temperature"], group["mass"]
        if group["dynamics"] == "sgld":
            increment = math.sqrt(2.0 * h * tau)
        elif group["dynamics"] == "adaptive":
            increment = 0.5 * h / m * group["noise_scale"] * math.sqrt(h)
        else:
            increment = 0.5 * h * math.sqrt(tau / m)
        mean_abs = float(torch.stack([p.detach().float().abs().mean() for p in params]).mean())
        half_ulp = 0.5 * torch.finfo(params[0].dtype).eps * mean_abs
        if increment < half_ulp:
            self._warned = True
            warnings.warn(
                f"Langevin noise increment ~{increment:.3g} is below half an ulp ({half_ulp:.3g}) "
                f"of {params[0].dtype} parameters: it is rounded away; keep fp32 master weights",
                NoisePrecisionWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step (one gradient); see the module docstring for the cyclic permutation."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        shared = self.state["langevin"]
        k = shared["step"]
        group_states = dict(shared["groups"])
        position = 0
        for gi, group in enumerate(self.param_groups):
            originals, params, grads, indices = [], [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    originals.append(p)
                    params.append(_real(p))
                    grads.append(_real(p.grad))
                    indices.append(position)
                position += 1
            if not params:
                continue
            self._check_precision(group, params)
            if self._track:
                n = sum(p.numel() for p in params)
                dots = torch._foreach_mul(params, grads)
                self._configurational[gi] = torch.stack([d.sum() for d in dots]).sum() / n
            if group["dynamics"] == "sgld":
                self._sgld(group, params, grads, indices, k)
                continue
            gstate = dict(group_states.get(gi, {}))
            momenta = []
            for p in originals:
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momenta.append(_real(state["momentum"]))
            if group["dynamics"] == "adaptive" and "thermostat" not in gstate:
                gstate["thermostat"] = torch.tensor(
                    float(group["thermostat_init"]), dtype=params[0].dtype, device=params[0].device
                )
            head, tail = parse_scheme(
                group["scheme"] or DEFAULT_SCHEMES[group["dynamics"]], group["dynamics"]
            )
            ctx = (group, params, grads, momenta, indices, gstate)
            if self._fused:
                self._fused_baoab(group, params, grads, momenta, indices, gstate, k)
            else:
                if "pending_lr" in gstate:
                    self._run(tail, gstate["pending_lr"], gstate["pending_step"], *ctx)
                self._run(head, group["lr"], k, *ctx)
            gstate["pending_lr"] = group["lr"]
            gstate["pending_step"] = k
            group_states[gi] = gstate
        self.state["langevin"] = {"step": k + 1, "groups": group_states}
        return loss

    def _fused_baoab(
        self,
        group: Mapping[str, Any],
        params: list,
        grads: list,
        momenta: list,
        indices: list,
        gstate: dict[str, Any],
        k: int,
    ) -> None:
        """Owed tail ``B`` then ``B A O A`` of BAOAB, one elementwise pass per tensor."""
        h, m, tau = group["lr"], group["mass"], group["temperature"]
        c = ops.ou_coefficient(group["friction"], h)
        scale = math.sqrt(max(1.0 - c * c, 0.0) * m * tau)
        # No owed tail (first step): a zero tail kick, p - 0 * g == p for finite g.
        tail_h = 0.5 * gstate["pending_lr"] if "pending_lr" in gstate else 0.0
        coefficients = (tail_h, 0.5 * h, 0.5 * h / m, c)
        key = _SLOTS * k + 2  # the O letter's slot in "BAOAB"
        for theta, p, g, i in zip(params, momenta, grads, indices, strict=True):
            tensors = [theta, p, g]
            if scale:
                tensors.append(self._noise.gaussian(theta, step=key, index=i, dtype=torch.float32))
            args = (*coefficients, scale) if scale else coefficients
            if theta.numel() > 1 and all(t.is_contiguous() for t in tensors):
                # Flat non-view aliases: one graph for every shape (1-element tensors would be
                # specialised by the compiler, so they take the uncompiled pass).
                fn = _compiled_baoab(bool(scale))
                fn(*(t.view(-1).detach() for t in tensors), *args)
            else:
                (_baoab_pass if scale else _baoab_cold_pass)(*tensors, *args)

    def _sgld(self, group: Mapping[str, Any], params: list, grads: list, indices: list, k: int):
        h = group["lr"]
        torch._foreach_add_(params, grads, alpha=-h)
        scale = math.sqrt(2.0 * h * group["temperature"])
        if scale:
            torch._foreach_add_(params, self._draw(params, indices, _SLOTS * k), alpha=scale)

    def _run(
        self,
        items: list,
        h: float,
        k: int,
        group: Mapping[str, Any],
        params: list,
        grads: list,
        momenta: list,
        indices: list,
        gstate: dict[str, Any],
    ) -> None:
        m, tau, gamma = group["mass"], group["temperature"], group["friction"]
        if group["dynamics"] == "overdamped":
            gamma = math.inf
        for letter, fraction, slot in items:
            hh = h * fraction
            if letter == "A":
                ops.drift(params, momenta, hh, m)
            elif letter == "B":
                ops.kick(momenta, grads, hh)
            elif letter == "O":
                noise = self._draw(params, indices, _SLOTS * k + slot) if tau else []
                ops.ornstein_uhlenbeck(momenta, noise, ops.ou_coefficient(gamma, hh), m, tau)
            elif letter == "F":
                noise = self._draw(params, indices, _SLOTS * k + slot) if tau else []
                ops.euler_ou(momenta, noise, gamma, hh, m, tau)
            elif letter == "C":
                ops.thermostat_friction(momenta, gstate["thermostat"], hh)
            elif letter == "D":
                sigma = group["noise_scale"]
                noise = self._draw(params, indices, _SLOTS * k + slot) if sigma else []
                ops.additive_noise(momenta, noise, sigma, hh)
            else:  # "E"
                n = sum(p.numel() for p in params)
                ops.thermostat_update(
                    gstate["thermostat"], momenta, group["thermostat_coupling"], hh, m, tau, n
                )

    def diagnostics(self) -> list[dict[str, torch.Tensor]]:
        """Per group: ``kinetic_temperature``, and ``thermostat`` / ``configurational_temperature``
        where available (0-dim tensors; no host synchronisation)."""
        result = []
        groups = self.state["langevin"]["groups"]
        for gi, group in enumerate(self.param_groups):
            entry: dict[str, torch.Tensor] = {}
            momenta = [self.state[p].get("momentum") for p in group["params"] if p in self.state]
            momenta = [_real(mom) for mom in momenta if mom is not None]
            if momenta:
                n = sum(mom.numel() for mom in momenta)
                entry["kinetic_temperature"] = ops.kinetic_sum(momenta, group["mass"]) / n
            if "thermostat" in groups.get(gi, {}):
                entry["thermostat"] = groups[gi]["thermostat"]
            if gi in self._configurational:
                entry["configurational_temperature"] = self._configurational[gi]
            result.append(entry)
        return result


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor as its real pairs ``(..., 2)`` (a view), a real tensor as is.

    The real-pair convention: ``z = x + iy`` is the two real coordinates ``(x, y)``, each with
    the noise of a real parameter, so ``exp(-U(x, y) / tau)`` is stationary for a real loss
    (torch's gradient of a real loss is ``dU/dx + i dU/dy``). Complex ``randn`` would give each
    part variance 1/2 instead and sample ``exp(-2 U / tau)``.
    """
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _baoab_pass(
    theta: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    noise: torch.Tensor,
    tail_h: float,
    half_h: float,
    drift: float,
    c: float,
    scale: float,
) -> None:
    """In place: ``B_tail B A O A`` of BAOAB on one tensor, the default path's order."""
    q = p - tail_h * g
    q = q - half_h * g
    x = theta + drift * q
    q = c * q + scale * noise.to(p.dtype)
    theta.copy_(x + drift * q)
    p.copy_(q)


def _baoab_cold_pass(
    theta: torch.Tensor,
    p: torch.Tensor,
    g: torch.Tensor,
    tail_h: float,
    half_h: float,
    drift: float,
    c: float,
) -> None:
    """:func:`_baoab_pass` at zero temperature (no noise)."""
    q = p - tail_h * g
    q = q - half_h * g
    x = theta + drift * q
    q = c * q
    theta.copy_(x + drift * q)
    p.copy_(q)


_COMPILED: dict[bool, Any] = {}


def _compiled_baoab(noisy: bool) -> Any:
    """The compiled :func:`_baoab_pass` (``noisy``) or :func:`_baoab_cold_pass`, made lazily."""
    if noisy not in _COMPILED:
        fn = _baoab_pass if noisy else _baoab_cold_pass
        _COMPILED[noisy] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _COMPILED[noisy]


def partition_by_layer(
    model: torch.nn.Module,
    first: str = "adaptive",
    rest: str = "langevin",
    *,
    first_options: Mapping[str, Any] | None = None,
    rest_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Param groups per layer (module owning parameters directly), for LaLa/AdLaLa/LOL.

    The first layer (in ``model.named_modules()`` order) gets ``dynamics=first`` and
    ``first_options``; every later layer is its own group with ``dynamics=rest`` and
    ``rest_options`` (so each may then be tuned separately).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> [g["dynamics"] for g in partition_by_layer(net)]
        ['adaptive', 'langevin']
    """
    groups = []
    for _, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not params:
            continue
        options = (first_options if not groups else rest_options) or {}
        groups.append(
            {"params": params, "dynamics": first if not groups else rest, **dict(options)}
        )
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def _model_partition(params: Any, model: torch.nn.Module, first: str, rest: str) -> Any:
    """The registry factories' partition: :func:`partition_by_layer` restricted to ``params``.

    Explicit param groups (any ``dict`` in ``params``) are returned unchanged, as is a flat list
    holding a tensor that is not a trainable parameter of ``model`` (no layer to assign it to).
    Layers none of whose parameters are in ``params`` are dropped, so "the first layer" is the
    first layer (in ``model.named_modules()`` order) that has a parameter being optimized.
    """
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params)
    if not params or any(isinstance(p, Mapping) for p in params):
        return params
    wanted = {id(p) for p in params}
    owned = {id(p) for p in model.parameters() if p.requires_grad}
    if not wanted <= owned:
        return params
    groups: list[dict[str, Any]] = []
    for group in partition_by_layer(model, first, rest):
        kept = [p for p in group["params"] if id(p) in wanted]
        wanted -= {id(p) for p in kept}  # a parameter shared by two layers goes to the first
        if kept:
            dyn = first if not groups else rest
            groups.append({"params": kept, "dynamics": dyn})
    return groups


# ----------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------

_CAPS = Capabilities(noisy=True, separable=False)
_CAPS_MODEL = Capabilities(noisy=True, separable=False, accepts_model=True)
_DOCS = {
    "lr": ("positive", "step size h"),
    "friction": ("non_negative", "friction gamma"),
    "temperature": ("non_negative", "temperature tau (1/N_data: the posterior of a mean loss)"),
    "mass": ("positive", "mass m"),
    "scheme": ("any", "splitting string, e.g. 'BAOAB', 'OBABO', 'BAOA' (None: default)"),
    "thermostat_init": ("non_negative", "initial thermostat xi_0"),
    "thermostat_coupling": ("non_negative", "thermostat coupling eps"),
    "noise_scale": ("non_negative", "additive noise sigma_A"),
    "seed": ("any", "noise seed, an integer in [0, 2**64)"),
    "track_configurational": ("bool", "record theta . grad U / N per group"),
    "fused": (
        "bool",
        "one compiled pass per tensor (BAOAB langevin only; compiles on the first step; equal "
        "to the default path to rounding)",
    ),
}


def _hp(name: str, default: Any) -> Hyperparameter:
    kind, doc = _DOCS[name]
    return Hyperparameter(name, kind, default, doc)


def _register(
    name: str,
    dynamics: str,
    names: tuple[str, ...],
    defaults: Mapping[str, Any],
    summary: str,
    paper: str,
    example: Mapping[str, Any],
    group_example: Mapping[str, Any],
    dynamics_choices: tuple[str, ...] = (),
    partition: tuple[str, str] | None = None,
) -> None:
    fixed = {} if dynamics_choices else {"dynamics": dynamics}

    def factory(
        params: Any, model: torch.nn.Module | None = None, **kwargs: Any
    ) -> LangevinSplitting:
        if partition is not None and model is not None:
            params = _model_partition(params, model, *partition)
        return LangevinSplitting(params, **{"dynamics": dynamics, **defaults, **kwargs, **fixed})

    factory.__name__ = name
    factory.__doc__ = f"{summary} (:class:`LangevinSplitting` with dynamics={dynamics!r})."
    if partition is not None:
        factory.__doc__ += (
            f" Given ``model=`` and a flat parameter list, the params are split with "
            f":func:`partition_by_layer` (first layer {partition[0]!r}, every later layer its "
            f"own {partition[1]!r} group); explicit param groups are used as given."
        )
    base = LangevinSplitting.__init__.__defaults__
    init_defaults = dict(
        zip(LangevinSplitting.__init__.__code__.co_varnames[2:], base, strict=False)
    )
    hps = [_hp(n, defaults.get(n, init_defaults[n])) for n in names]
    if partition is not None:
        hps.append(
            Hyperparameter(
                "model", "any", None, "the module: a flat param list is partitioned per layer"
            )
        )
    if dynamics_choices:
        hps.insert(
            0,
            Hyperparameter(
                "dynamics", "choice", dynamics, "dynamics of a partition", dynamics_choices
            ),
        )
    register_optimizer(
        name,
        factory,
        capabilities=_CAPS_MODEL if partition is not None else _CAPS,
        hyperparameters=tuple(hps),
        summary=summary,
        family="langevin",
        paper=paper,
        example=example,
        group_example=group_example,
    )


_UNDER = ("lr", "friction", "temperature", "mass", "scheme", "seed", "track_configurational")
_ADAPT = ("thermostat_init", "thermostat_coupling", "noise_scale")
_LM = "Leimkuhler & Matthews, Rational construction of stochastic numerical methods, AMRX 2013"
_LMV = (
    "Leimkuhler, Matthews & Vlaar, Partitioned integrators for thermodynamic parameterization "
    "of neural networks, Foundations of Data Science 2019"
)
_EX = {"lr": 0.1, "friction": 1.0, "temperature": 1e-4, "seed": 0}

_register(
    "sgld",
    "sgld",
    ("lr", "temperature", "seed", "track_configurational"),
    {},
    "stochastic gradient Langevin dynamics: theta -= h g + sqrt(2 h tau) R",
    "Welling & Teh, Bayesian learning via stochastic gradient Langevin dynamics, ICML 2011",
    {"lr": 0.05, "temperature": 1e-4},
    {"lr": 0.01, "temperature": 1e-2},
)
_register(
    "baoab",
    "langevin",
    (*_UNDER, "fused"),
    {},
    "underdamped Langevin, BAOAB splitting (any scheme string), one gradient per step",
    _LM,
    _EX,
    {"lr": 0.05, "friction": 3.0, "temperature": 1e-2, "mass": 2.0, "scheme": "OBABO"},
)
_register(
    "sghmc",
    "sghmc",
    ("lr", "friction", "temperature", "mass", "seed", "track_configurational"),
    {},
    "stochastic gradient HMC (Euler-Maruyama friction/noise, heavy-ball form)",
    "Chen, Fox & Guestrin, Stochastic gradient Hamiltonian Monte Carlo, ICML 2014",
    _EX,
    {"lr": 0.05, "friction": 3.0, "temperature": 1e-2, "mass": 2.0},
)
_register(
    "sgnht",
    "adaptive",
    ("lr", "temperature", "mass", "scheme", "seed", "track_configurational", *_ADAPT),
    {},
    "SG Nose-Hoover thermostat / adaptive Langevin (ACDEDCAB), one thermostat per group",
    "Ding, Fang, Babbush, Chen, Skeel & Neven, Bayesian sampling using stochastic gradient "
    "thermostats, NeurIPS 2014",
    {"lr": 0.1, "temperature": 1e-4, "noise_scale": 0.01},
    {
        "lr": 0.05,
        "temperature": 1e-2,
        "mass": 2.0,
        "thermostat_init": 1.0,
        "thermostat_coupling": 0.5,
        "noise_scale": 0.1,
    },
)
_register(
    "lala",
    "langevin",
    _UNDER,
    {},
    "layer-wise Langevin (LaLa): each param group its own friction/temperature; with model=, "
    "one group per layer",
    _LMV,
    _EX,
    {"lr": 0.05, "friction": 3.0, "temperature": 1e-2, "mass": 2.0, "scheme": "OBABO"},
    partition=("langevin", "langevin"),
)
_register(
    "adlala",
    "langevin",
    _UNDER + _ADAPT,
    {},
    "AdLaLa: adaptive Langevin on some partitions (with model=: the first layer), Langevin on "
    "the rest",
    _LMV,
    {**_EX, "noise_scale": 0.01},
    {"dynamics": "adaptive", "temperature": 1e-2, "friction": 3.0, "lr": 0.05, "mass": 2.0},
    dynamics_choices=("langevin", "adaptive"),
    partition=("adaptive", "langevin"),
)
_register(
    "lol",
    "langevin",
    _UNDER,
    {},
    "LOL: Langevin on some partitions (with model=: the first layer), overdamped (BAOAB limit) "
    "Langevin on the rest",
    _LMV,
    _EX,
    {"dynamics": "overdamped", "temperature": 1e-2, "friction": 3.0, "lr": 0.05, "mass": 2.0},
    dynamics_choices=("langevin", "overdamped"),
    partition=("langevin", "overdamped"),
)
