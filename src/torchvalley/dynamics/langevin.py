"""Langevin samplers from splitting schemes: one gradient per ``step``, dynamics per group.

``theta`` parameters, ``p`` momenta, ``U`` the loss, ``m`` mass, ``gamma`` friction, ``tau``
temperature, ``h`` the step ``lr``, ``R ~ N(0, I)``; the target density is ``exp(-U / tau)``.

* ``"langevin"``: ``dtheta = p/m dt``, ``dp = -grad U dt - gamma p dt + sqrt(2 gamma m tau) dW``;
  default scheme ``"BAOAB"`` (Leimkuhler & Matthews, Rational construction of stochastic
  numerical methods for molecular sampling, AMRX 2013).
* ``"overdamped"``: ``gamma = inf`` (``O`` refreshes ``p = sqrt(m tau) R``); with BAOAB the
  "BAOAB limit method" ``theta' = theta - h**2/(2m) grad U + (h/2) sqrt(tau/m) (R_n + R_{n+1})``.
* ``"adaptive"`` (adaptive Langevin / SG Nose-Hoover; Ding et al., NeurIPS 2014):
  ``dp = -grad U dt - xi p dt + sigma_A dW``, ``dxi = eps (p.p/m - N tau) dt``, one ``xi`` per
  group (``N`` its elements with a gradient); default scheme ``"BACDEDCAB"``.
* ``"sghmc"`` (Chen, Fox & Guestrin, ICML 2014), scheme ``"FBA"``:
  ``p = (1 - gamma h) p - h grad U + sqrt(2 gamma h m tau) R``, ``theta += h p / m``.
* ``"sgld"`` (Welling & Teh, ICML 2011): ``theta = theta - h grad U + sqrt(2 h tau) R``.

Schemes are strings of operator letters (:mod:`.operators`); a letter covers ``h / k`` with
``k`` its count: ``"BAOAB"`` is ``B_{h/2} A_{h/2} O_h A_{h/2} B_{h/2}``, ``"OBABO"`` is
``O_{h/2} B_{h/2} A_h B_{h/2} O_{h/2}``, ``"BAOA"`` posteriors' ``B_h A_{h/2} O_h A_{h/2}``.

Algorithm (one gradient per step by a cyclic permutation). Split the scheme after its last
``A`` into a head and a tail (BAOAB: ``BAOA | B``). Step ``k`` receives ``g = grad U(theta_k)``:

    tail of step k-1, with its lr and noise keys     # BAOAB: B_{h/2}, the owed half kick
    head of step k                                   # BAOAB: B_{h/2} A_{h/2} O_h A_{h/2}

Every ``B`` thus sees the gradient at the current ``theta`` (so all ``B`` letters must lie in
one cyclic run free of ``A``: ``"ABA"`` is refused), the positions after each step are those of
the full scheme, and the stored momenta lag by the tail. The first step starts from ``p = 0``
with no tail (BAOAB: an initial half kick).

Complex parameters follow the real-pair convention: ``z = x + iy`` is two real coordinates,
each with the noise of a real parameter, so ``exp(-U(x, y) / tau)`` is stationary.

Elsewhere: partitions (LaLa, AdLaLa, LOL) in :mod:`.partitions`; the SGD parameterization and
the temperature convention in :mod:`.parameters`; the noise keys and missing gradients at
:meth:`LangevinSplitting.step`; the compiled path at the ``fused`` argument.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from torchvalley.dynamics import engine
from torchvalley.dynamics import operators as ops
from torchvalley.dynamics.parameters import (
    PhysicalParameters as PhysicalParameters,
)
from torchvalley.dynamics.parameters import (
    SGDParameters as SGDParameters,
)
from torchvalley.dynamics.parameters import (
    physical_to_sgd as physical_to_sgd,
)
from torchvalley.dynamics.parameters import (
    posterior_temperature as posterior_temperature,
)
from torchvalley.dynamics.parameters import (
    sgd_to_physical as sgd_to_physical,
)
from torchvalley.dynamics.partitions import partition_by_layer as partition_by_layer
from torchvalley.noise import CounterNoise
from torchvalley.optim._profiling import profile_hook_step
from torchvalley.registry import Hyperparameter, validate_group

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
_SLOTS = engine.SLOTS  # noise step key = 16 * step + slot; schemes have at most 16 letters
# the per-group values: checked when a group is added, loaded, or changed before a step
_GROUP_KEYS = (
    "lr",
    "friction",
    "temperature",
    "mass",
    "dynamics",
    "scheme",
    "thermostat_init",
    "thermostat_coupling",
    "noise_scale",
)


class NoisePrecisionWarning(UserWarning):
    """Langevin noise increments are below half an ulp of the parameters (rounded away)."""


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


class LangevinSplitting(torch.optim.Optimizer):
    """Langevin samplers from splitting schemes, one gradient per ``step``, per-group dynamics.

    See the module docstring for the dynamics, the schemes and the cyclic permutation.

    Args:
        params: parameters or param groups (each group is a partition and may override every
            hyperparameter below except ``seed``, ``track_configurational`` and ``fused``).
        lr: step ``h``.
        friction: ``gamma`` (unused by adaptive/sgld; ignored, and may be ``inf``, for
            ``"overdamped"``).
        temperature: ``tau``.
        mass: ``m``.
        dynamics: one of :data:`DYNAMICS`.
        scheme: splitting string; ``None`` for the dynamics' default (:data:`DEFAULT_SCHEMES`).
        thermostat_init: ``xi_0`` (adaptive).
        thermostat_coupling: ``eps`` (adaptive).
        noise_scale: ``sigma_A`` (adaptive additive noise).
        seed: noise seed, an integer in ``[0, 2**64)`` (:class:`~torchvalley.CounterNoise`).
        track_configurational: record ``theta . grad U / N`` per group in ``step``.
        fused: run the owed tail ``B`` and ``B A O A`` of each tensor as one elementwise pass
            compiled with ``torch.compile(dynamic=True, fullgraph=True)`` over flattened views
            (opt-in). Every group must then be ``"langevin"`` with scheme ``"BAOAB"``/``None``
            (else ``ValueError``). The first step pays the compile (about 15 s on a CPU with a
            C++ compiler; a few more graphs for new dtypes); non-contiguous tensors and
            1-element tensors take the same pass uncompiled. The noise of a tensor is drawn
            into a buffer reused across tensors (as large as the largest tensor). The
            operators, their order, the noise keys and the state are the reference's, so
            ``state_dict`` moves freely between fused and unfused optimizers; the numbers
            equal the default path's up to FMA rounding (a few ulp).

    Raises:
        ValueError: for an invalid hyperparameter (also when a group is changed after
            construction, at the next ``step``), scheme, or ``fused`` with another scheme.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = LangevinSplitting(model.parameters(), lr=0.1, friction=1.0, temperature=1e-4)
        >>> model(torch.ones(2, 3)).sum().backward()
        >>> opt.step()
        >>> sorted(opt.diagnostics()[0])
        ['kinetic_temperature']
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    _chunked: ClassVar[bool] = True  # False: one foreach pass per operator (the reference)
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("lr", "positive", 0.1, "step size h"),
        Hyperparameter("friction", "non_negative", 1.0, "friction gamma"),
        Hyperparameter(
            "temperature",
            "non_negative",
            1e-4,
            "temperature tau (1/N_data: the posterior of a mean loss)",
        ),
        Hyperparameter("mass", "positive", 1.0, "mass m"),
        Hyperparameter("dynamics", "choice", "langevin", "dynamics of a partition", DYNAMICS),
        Hyperparameter(
            "scheme", "any", None, "splitting string, e.g. 'BAOAB', 'OBABO', 'BAOA' (None: default)"
        ),
        Hyperparameter("thermostat_init", "non_negative", 0.1, "initial thermostat xi_0"),
        Hyperparameter("thermostat_coupling", "non_negative", 0.05, "thermostat coupling eps"),
        Hyperparameter("noise_scale", "non_negative", 0.01, "additive noise sigma_A"),
        Hyperparameter("seed", "any", 0, "noise seed, an integer in [0, 2**64)"),
        Hyperparameter("track_configurational", "bool", False, "record theta . grad U / N"),
        Hyperparameter(
            "fused",
            "bool",
            False,
            "one compiled pass per tensor (BAOAB langevin only; compiles on the first step; "
            "equal to the default path up to FMA rounding)",
        ),
    )

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
        flags = {"track_configurational": track_configurational, "fused": fused}
        validate_group(self.HYPERPARAMETERS, flags)
        try:
            self._noise = CounterNoise(seed)
        except ValueError:
            raise ValueError(
                f"Invalid seed: expected an integer in [0, 2**64), got {seed!r}"
            ) from None
        self._track, self._fused = track_configurational, fused
        self._warned = False
        self._configurational: dict[int, torch.Tensor] = {}
        # group index -> (the values last checked, the parsed scheme): re-checked on change
        self._checked: dict[int, tuple[tuple, Any]] = {}
        self._scratch: dict[torch.dtype, torch.Tensor] = {}  # the engine's noise buffers
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
        self.state["langevin"] = {"step": 0, "groups": {}}

    @classmethod
    def declared(cls, *names: str) -> tuple[Hyperparameter, ...]:
        """The declarations of ``names``, in that order (a registry entry's hyperparameters)."""
        by_name = {h.name: h for h in cls.HYPERPARAMETERS}
        return tuple(by_name[name] for name in names)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (a partition); ``seed``/``track_configurational``/``fused`` are
        optimizer-wide."""
        for key in ("seed", "track_configurational", "fused"):
            if key in param_group:
                raise ValueError(f"Invalid {key}: it is optimizer-wide, not per param group")
        super().add_param_group(param_group)
        self._plan(len(self.param_groups) - 1, self.param_groups[-1])

    def _check_group(self, group: Mapping[str, Any]) -> tuple | None:
        """Validate one group's values; return its parsed scheme (``None`` for sgld)."""
        missing = [key for key in _GROUP_KEYS if key not in group]
        if missing:
            raise ValueError(f"Invalid param group: it lacks {missing}")
        declared = self.HYPERPARAMETERS
        if group["dynamics"] == "overdamped" and group["friction"] == math.inf:
            declared = tuple(h for h in declared if h.name != "friction")  # the limit gamma=inf
        validate_group(declared, group)  # type: ignore[arg-type]
        dynamics, scheme = group["dynamics"], group["scheme"]
        if self._fused and (dynamics != "langevin" or (scheme or "BAOAB").upper() != "BAOAB"):
            raise ValueError(
                "Invalid fused=True: the fused path covers only dynamics='langevin' with scheme "
                f"'BAOAB' (or None), got dynamics={dynamics!r}, scheme={scheme!r}; "
                "use fused=False"
            )
        if dynamics == "sgld":
            if scheme is not None:
                raise ValueError(f"Invalid scheme: sgld takes no scheme, got {scheme!r}")
            return None
        return parse_scheme(scheme or DEFAULT_SCHEMES[dynamics], dynamics)

    def _plan(self, index: int, group: Mapping[str, Any]) -> tuple | None:
        """The group's parsed scheme, re-validating only when one of its values changed.

        Schedulers (and users) assign new values to ``param_groups`` between steps; an
        identity comparison of the values against those last checked costs well under a
        microsecond, so the full check runs only after a change.
        """
        values = tuple(group.get(key) for key in _GROUP_KEYS)
        checked = self._checked.get(index)
        if checked is None or any(a is not b for a, b in zip(checked[0], values, strict=True)):
            plan = self._check_group(group)
            checked = self._checked[index] = (tuple(group[key] for key in _GROUP_KEYS), plan)
        return checked[1]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a copy of ``state_dict`` (the given dict is never mutated afterwards).

        Raises:
            ValueError: if ``state_dict`` is not a LangevinSplitting state (e.g. another
                optimizer's: its groups lack the sampler's values), holds invalid values, or a
                momentum does not fit its parameter; the optimizer is then left unchanged.
        """
        state_dict = copy.deepcopy(state_dict)
        self._check_state_dict(state_dict)
        super().load_state_dict(state_dict)
        self._checked.clear()
        for index, group in enumerate(self.param_groups):
            self._plan(index, group)

    def _check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups, state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(state, Mapping):
            raise ValueError(
                "Invalid state_dict: expected an optimizer's 'state' and 'param_groups'"
            )
        for index, saved in enumerate(groups):
            missing = [key for key in _GROUP_KEYS if key not in saved]
            if missing:
                found = sorted(key for key in saved if key != "params")
                raise ValueError(
                    f"Invalid state_dict: not a LangevinSplitting state_dict (param group {index} "
                    f"lacks {missing} and has {found}: saved by another optimizer?)"
                )
            self._check_group(dict(saved))
        shared = state.get("langevin")
        if not isinstance(shared, Mapping) or not {"step", "groups"} <= set(shared):
            raise ValueError(
                "Invalid state_dict: it lacks the sampler state 'langevin' (step counter, pending "
                "tails, thermostats): not a LangevinSplitting state_dict"
            )
        saved_ids = [i for saved in groups for i in saved.get("params", ())]
        params = [p for group in self.param_groups for p in group["params"]]
        if len(saved_ids) != len(params):
            return  # torch's load_state_dict names the size mismatch
        for position, (i, p) in enumerate(zip(saved_ids, params, strict=True)):
            entry = state.get(i, {})
            unknown = sorted(set(entry) - {"momentum"})
            if unknown:
                raise ValueError(
                    f"Invalid state_dict: parameter {position} has state {unknown}, not "
                    "LangevinSplitting's 'momentum' (saved by another optimizer?)"
                )
            momentum = entry.get("momentum")
            if momentum is not None and tuple(momentum.shape) != tuple(p.shape):
                raise ValueError(
                    f"Invalid state_dict: momentum of parameter {position} has shape "
                    f"{tuple(momentum.shape)}, not {tuple(p.shape)}"
                )

    # ------------------------------------------------------------------ the engine
    def _check_precision(self, group: Mapping[str, Any], params: list[torch.Tensor]) -> None:
        """Warn once when a bf16/fp16 group's noise increment is below half an ulp of its
        mean ``|theta|`` (one host sync, on the first such step)."""
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
        """One step with the gradients in ``.grad`` (see the module docstring's algorithm).

        Every group's values are validated first (a scheduler may have changed them), so a bad
        value raises ``ValueError`` before any parameter moves.

        Noise. Every draw is ``CounterNoise(seed).gaussian(p, step=16 * k + slot, index=i,
        dtype=float32)`` cast to the parameter dtype, with ``k`` the optimizer step the
        operator belongs to, ``slot`` the letter's position in the scheme and ``i`` the
        parameter's position in the optimizer (global across groups). The noise is thus
        rank-invariant, independent of the global RNG, identical for float32 and float64
        parameters, and resumes bit-exactly from ``state_dict``.

        Missing gradients. A parameter whose ``grad`` is ``None`` on step ``k`` is left
        untouched (no drift, kick, friction or noise; its momentum keeps its value) and does
        not receive the tail it owed from step ``k-1``: when it next has a gradient, on step
        ``k'``, it receives the tail of step ``k'-1`` and the head of ``k'``. Other parameters'
        noise keys are unaffected. If no parameter of a group has a gradient, the group is
        skipped and its pending tail kept for its next step with gradients. ``sgld`` has no
        tail. The adaptive thermostat's ``N`` counts the elements with a gradient on the step.

        Implementation (:mod:`.engine`): the step's letters run chunk by chunk (2**18
        elements, in cache) with the noise drawn into a reused buffer; for float32 adjacent
        kicks are merged and ``O`` is one pass (:func:`.engine.fold`). The numbers equal the
        one-pass-per-operator reference (:mod:`.operators`) bitwise for float64 and bf16/fp16,
        and up to rounding (a few ulp) for float32.

        Diagnostics (:meth:`diagnostics`) are recorded as tensors: no host sync here.
        """
        plans = [self._plan(gi, group) for gi, group in enumerate(self.param_groups)]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        shared = self.state["langevin"]
        k = shared["step"]
        group_states = dict(shared["groups"])
        position = 0
        for gi, (group, plan) in enumerate(zip(self.param_groups, plans, strict=True)):
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
            if plan is None:  # sgld
                passes = [(engine.SGLD, group["lr"], k)]
                self._execute(passes, params, [], grads, indices, None, group)
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
            head, tail = plan
            if self._fused:
                self._fused_baoab(group, params, grads, momenta, indices, gstate, k)
            else:
                passes = [(head, group["lr"], k)]
                if "pending_lr" in gstate:  # the owed tail of the group's previous step
                    passes.insert(0, (tail, gstate["pending_lr"], gstate["pending_step"]))
                xi = gstate.get("thermostat")
                self._execute(passes, params, momenta, grads, indices, xi, group)
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
            noise = None
            if scale:  # the tensor's draw, in a buffer reused across tensors and steps
                noise = engine.scratch_buffer(self._scratch, torch.float32, theta.numel())
                noise = self._noise.gaussian_(noise, step=key, index=i).view(theta.shape)
            tensors = [t for t in (theta, p, g, noise) if t is not None]
            if theta.numel() > 1 and all(t.is_contiguous() for t in tensors):
                # Flat non-view aliases: one graph for every shape (1-element tensors would be
                # specialised by the compiler, so they take the uncompiled pass).
                flat = [None if t is None else t.view(-1).detach() for t in (theta, p, g, noise)]
                _compiled_baoab()(*flat, *coefficients, scale)
            else:
                _baoab_pass(theta, p, g, noise, *coefficients, scale)

    def _execute(
        self,
        passes: list[tuple[Any, float, int]],
        params: list[torch.Tensor],
        momenta: list[torch.Tensor],
        grads: list[torch.Tensor],
        indices: list[int],
        xi: torch.Tensor | None,
        group: Mapping[str, Any],
    ) -> None:
        """Run ``passes`` (``(letters, lr, step)``): chunk by chunk (:mod:`.engine`), or one
        operator pass per letter (``_chunked = False``: the reference)."""
        if not self._chunked:
            noise = self._noise
            engine.run_reference(passes, params, momenta, grads, indices, noise, xi, group)
            return
        prog = [op for items, h, k in passes for op in engine.program(items, h, k, group)]
        momenta = momenta or params  # sgld: its letters touch only theta
        tensors = list(zip(params, momenta, grads, indices, strict=True))
        numel = sum(p.numel() for p in params)
        for part in engine.segments(prog):
            if isinstance(part, engine.Op):  # E: a reduction over the group's momenta
                engine.thermostat(part, momenta, xi, group, numel)
            else:
                engine.run_segment(part, tensors, self._noise, self._scratch, xi)

    def diagnostics(self) -> list[dict[str, torch.Tensor]]:
        """Per group, as 0-dim tensors (no host synchronisation):

        * ``kinetic_temperature``: ``sum(p**2) / (m N)`` of the stored momenta (which lag by
          the scheme's tail, see the module docstring);
        * ``thermostat``: ``xi`` (adaptive groups);
        * ``configurational_temperature`` (with ``track_configurational=True``): the virial
          ``theta . grad U / N`` at the gradient's point, ``tau`` in expectation at
          equilibrium for confining potentials.

        ``N`` counts real coordinates (a complex element is two).
        """
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
    noise: torch.Tensor | None,
    tail_h: float,
    half_h: float,
    drift: float,
    c: float,
    scale: float,
) -> None:
    """In place: ``B_tail B A O A`` of BAOAB on one tensor, the default path's order.

    ``noise`` is ``None`` at zero temperature (the compiler specializes on it).
    """
    q = p - tail_h * g
    q = q - half_h * g
    x = theta + drift * q
    q = c * q if noise is None else c * q + scale * noise.to(p.dtype)
    theta.copy_(x + drift * q)
    p.copy_(q)


_COMPILED: list[Any] = []


def _compiled_baoab() -> Any:
    """:func:`_baoab_pass` compiled, made lazily on the first fused step."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(_baoab_pass, dynamic=True, fullgraph=True))
    return _COMPILED[0]
