"""Multirate training: fast and slow parameters on two time scales (Vlaar & Leimkuhler 2022).

The parameters are split into a fast part θ_F and a slow part θ_S. Over a cycle of ``k``
optimizer steps the fast part takes ``k`` steps of size h_F = h/k; the slow part takes one step
of size h_S = h from the gradient at the start of the cycle. Algorithm 1 of the paper
(SGD with momentum, heavy-ball form, with linear drift)::

    p_S := μ p_S + ∇_S L(θ_S, θ_F)          # once per cycle (the full backward pass)
    for i = 1..k:                            # k fast steps per refresh (not k-1)
        p_F := μ p_F + ∇_F L(θ_S, θ_F)       # steps 2..k: backward stops at θ_F
        θ_F := θ_F - (h/k) p_F
        θ_S := θ_S - (h/k) p_S               # linear drift

For any base optimizer the slow step is the base's own step of size h on the cycle's first
gradient; with linear drift its displacement Δ_S is spread evenly over the cycle (Δ_S/k per
step), without drift it is applied at once. So ``k = 1`` is the base optimizer, and the first
step of a cycle computes the slow refresh and the first fast step from one full backward pass.
The other ``k - 1`` steps need only ∇_F: :meth:`Multirate.backward` runs
``loss.backward(inputs=fast)``, whose graph walk stops at the fast tensors (the saving; nothing
toggles ``requires_grad``, so DDP's buckets stay valid).

Usage (replace ``loss.backward()`` by ``optimizer.backward(loss)``)::

    opt = Multirate(head_partition(model), base_optimizer="sgd", lr=0.1, momentum=0.9, k=5)
    for x, y in loader:
        opt.zero_grad()
        with opt.pass_context():          # only needed under DDP (no_sync on partial steps)
            loss = criterion(model(x), y)
        opt.backward(loss)
        opt.step()

or ``opt.step(closure)`` with a closure that calls ``opt.backward(loss)`` and returns the loss
(the closure runs inside :meth:`~Multirate.pass_context`). A closure or loop that calls
``loss.backward()`` itself is correct too, it only forgoes the saving.

The "latent multiple time scales" variant (the whole network trained at two step sizes, h_F
small and h_S large, on a partition) is the same algorithm with k = h_S / h_F:
:meth:`Multirate.two_time_scales`.

Fixes against the reference code (``TiffanyVlaar/MultirateTrainingOfNNs``): ``k`` fast steps per
slow refresh (the README loop does ``k - 1``), no ``weight_decay`` NameError on the first slow
step, no ``requires_grad`` toggling.

Paper: T. Vlaar & B. Leimkuhler, Multirate Training of Neural Networks, ICML 2022
(arXiv:2106.10771).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from torchvalley.optim._profiling import profile_hook_step
from torchvalley.optim.multirate_partitions import (
    RATES,
    _unwrap,
    bias_partition,
    head_partition,
    owners,
    random_fast_mask,
)
from torchvalley.registry import (
    Hyperparameter,
    get_optimizer_entry,
    resolve_base_optimizer,
    validate_group,
)

__all__ = ["Multirate", "bias_partition", "head_partition"]

_PARTITIONS = ("head", "biases", "weights", "random")
# Settings of the whole wrapper (the cycle is global), refused in a param group.
_WRAPPER_WIDE = ("k", "linear_drift", "partition", "fast_fraction", "partition_seed", "model")


class Multirate(torch.optim.Optimizer):
    """Multirate wrapper over any registered base optimizer (Algorithm 1 for ``"sgd"``).

    Args:
        params: parameters or param groups; a group's ``"rate"`` key (``"fast"`` or ``"slow"``)
            places it, other parameters are placed by ``partition``.
        base_optimizer: registry name (``"sgd"``, ``"adam"``, ``"baoab"``, ...) or optimizer
            class; it sees h/k as the fast groups' ``lr`` and h as the slow groups'.
        k: fast steps per slow step (h_F = lr / k, h_S = lr).
        linear_drift: spread the slow displacement over the cycle (paper default) or apply it
            at once on the cycle's first step.
        partition: for parameters without a ``"rate"``: ``"head"`` (the last module owning
            parameters is fast; needs ``model``), ``"biases"``/``"weights"`` (that kind fast),
            ``"random"`` (``fast_fraction`` of the tensors fast, re-drawn every cycle).
        fast_fraction: share of tensors drawn fast by ``partition="random"``.
        partition_seed: seed of the random partition's generator (saved in ``state_dict``);
            ``seed`` goes to the base (a Langevin sampler's noise).
        rate: the default of the groups' ``"rate"`` (``None``: placed by ``partition``).
        model: the module: names for the partitions; under DDP, :meth:`pass_context` uses its
            ``no_sync`` on partial steps and the fast gradients are averaged here.
        **base_hyperparameters: the base optimizer's settings (``lr``, ``momentum``, ...).

    Raises:
        ValueError: bad settings, overlapping groups, an empty fast or slow part.
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("base_optimizer", "optimizer", "sgd", "registry name or optimizer class"),
        Hyperparameter("k", "positive_int", 5, "fast steps per slow step: h_F = lr/k, h_S = lr"),
        Hyperparameter("linear_drift", "bool", True, "slow part drifts by Δ_S/k every step"),
        Hyperparameter(
            "partition", "choice", "head", "parameters without a rate", choices=_PARTITIONS
        ),
        Hyperparameter("fast_fraction", "unit_interval_open", 0.5, "partition='random' share"),
        Hyperparameter("partition_seed", "any", 0, "random partition's generator seed (int >= 0)"),
        Hyperparameter("rate", "any", None, "per param group: 'fast' | 'slow' | None"),
        Hyperparameter("model", "any", None, "the module: partitions, DDP no_sync"),
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        k: int = 5,
        linear_drift: bool = True,
        partition: str = "head",
        fast_fraction: float = 0.5,
        partition_seed: int = 0,
        rate: str | None = None,
        *,
        model: nn.Module | None = None,
        **base_hyperparameters: Any,
    ) -> None:
        settings = validate_group(
            self.HYPERPARAMETERS,
            {
                "base_optimizer": base_optimizer,
                "k": k,
                "linear_drift": linear_drift,
                "partition": partition,
                "fast_fraction": fast_fraction,
            },
        )
        if (
            isinstance(partition_seed, bool)
            or not isinstance(partition_seed, int)
            or partition_seed < 0
        ):
            raise ValueError(f"Invalid partition_seed: {partition_seed!r} (an int >= 0)")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        _check_base_settings(base_optimizer, base_hyperparameters)
        self.k: int = settings["k"]
        self.linear_drift: bool = settings["linear_drift"]
        self.partition: str = settings["partition"]
        self.fast_fraction: float = settings["fast_fraction"]
        self.model = model
        if rate is not None and rate not in RATES:
            raise ValueError(f"Invalid rate: {rate!r} (one of 'fast', 'slow', or None)")
        super().__init__(params, {"rate": rate})
        self._factory = resolve_base_optimizer(base_optimizer)
        self._base_hyperparameters = dict(base_hyperparameters)
        self._generator = torch.Generator().manual_seed(partition_seed)
        self._owner = owners(model) if model is not None else {}
        self._position = 0  # place in the cycle; 0: the full (refresh) step
        self._passes = {"full": 0, "partial": 0}
        self._backward_seen = False
        self._in_context = False
        self._drift: dict[torch.Tensor, torch.Tensor] = {}
        self._fast = self._draw_fast()
        self.base_optimizer = self._factory(self._derived_groups(), **base_hyperparameters)
        self.state = self.base_optimizer.state
        for group in self.param_groups:  # the base's defaults, so schedulers find "lr"
            for key, value in self.base_optimizer.defaults.items():
                group.setdefault(key, value)

    # -- partition ------------------------------------------------------------------------------

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _draw_fast(self) -> list[bool]:
        """Whether each parameter (in param_groups order) is fast in this cycle."""
        groups = self.param_groups
        explicit = [group["rate"] for group in groups for _ in group["params"]]
        free = [i for i, rate in enumerate(explicit) if rate is None]
        fast = [rate == "fast" for rate in explicit]
        if free:
            params = self._params()
            chosen = self._choose([params[i] for i in free])
            for i, is_fast in zip(free, chosen, strict=True):
                fast[i] = is_fast
        if not any(fast):
            raise ValueError("Invalid partition: the fast part is empty (no parameter is fast)")
        if all(fast):
            raise ValueError("Invalid partition: the slow part is empty (every parameter is fast)")
        return fast

    def _choose(self, params: list[torch.Tensor]) -> list[bool]:
        if self.partition == "random":
            return random_fast_mask(len(params), self.fast_fraction, self._generator)
        if self.partition in ("biases", "weights"):
            names = {p: n for n, p in _named(self.model)} if self.model is not None else {}
            bias = [names[p].endswith("bias") if p in names else p.dim() <= 1 for p in params]
            return bias if self.partition == "biases" else [not b for b in bias]
        if self.model is None:
            raise ValueError(
                "Invalid partition: partition='head' needs model= (or a 'rate' key on the param "
                "groups, e.g. from head_partition(model))"
            )
        present = [self._owner[p] for p in params if p in self._owner]
        if not present:
            raise ValueError("Invalid model: none of the parameters belongs to it")
        # The head: the last module (in named_parameters order) that owns one of the params.
        order = {p: i for i, (_, p) in enumerate(_named(self.model))}
        last = self._owner[max((p for p in params if p in order), key=order.__getitem__)]
        return [self._owner.get(p) == last for p in params]

    def _derived_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's groups: each user group split by rate (non-empty parts only)."""
        derived, self._parent, self._rate = [], [], []
        fast = iter(self._fast)
        for index, group in enumerate(self.param_groups):
            flags = [next(fast) for _ in group["params"]]
            hyper = {key: v for key, v in group.items() if key not in ("params", "rate")}
            for rate in ("slow", "fast"):
                members = [
                    p for p, f in zip(group["params"], flags, strict=True) if f == (rate == "fast")
                ]
                if not members:
                    continue
                derived.append({**hyper, "params": members})
                self._parent.append(index)
                self._rate.append(rate)
        return derived

    def _fast_params(self) -> list[torch.Tensor]:
        return [p for p, f in zip(self._params(), self._fast, strict=True) if f]

    def _slow_params(self) -> list[torch.Tensor]:
        return [p for p, f in zip(self._params(), self._fast, strict=True) if not f]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (its ``"rate"`` places it); the base optimizer gets its parts."""
        for key in _WRAPPER_WIDE:
            if key in param_group:
                raise ValueError(
                    f"Invalid {key}: a setting of the whole Multirate wrapper, not of a param group"
                )
        rate = param_group.get("rate")
        if rate is not None and rate not in RATES:
            raise ValueError(f"Invalid rate: {rate!r} (one of 'fast', 'slow', or None)")
        params = param_group["params"]
        if not isinstance(params, torch.Tensor):
            param_group["params"] = params = list(params)  # a generator is read once
        if not isinstance(params, torch.Tensor) and not params:
            raise ValueError(f"Invalid params: param group {len(self.param_groups)} is empty")
        super().add_param_group(param_group)  # refuses a parameter in two groups (ValueError)
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            return
        group = self.param_groups[-1]
        for key, value in self.base_optimizer.defaults.items():
            group.setdefault(key, value)
        try:
            self._fast = self._draw_fast()
        except ValueError:
            self.param_groups.pop()
            raise
        self._rebuild()

    def _rebuild(self) -> None:
        """Re-split the base's groups after the partition changed (state is per parameter)."""
        self.base_optimizer.param_groups = [
            {**self.base_optimizer.defaults, **group} for group in self._derived_groups()
        ]

    # -- the training-loop API ------------------------------------------------------------------

    @property
    def next_step_is_partial(self) -> bool:
        """Whether the coming step needs only the fast gradients (steps 2..k of a cycle)."""
        return self._position != 0

    @property
    def backward_inputs(self) -> list[torch.Tensor] | None:
        """``inputs=`` for the coming backward pass: the fast tensors on a partial step, ``None``
        on a full one. For frameworks that run the backward themselves, e.g. Lightning's
        ``self.manual_backward(loss, inputs=opt.backward_inputs)``; :meth:`step` then counts
        the pass from the gradients it finds."""
        if not self.next_step_is_partial:
            return None
        return [p for p in self._fast_params() if p.requires_grad]

    @property
    def backward_passes(self) -> dict[str, int]:
        """Backward passes so far: ``{"full": ..., "partial": ...}`` (partial: stops at θ_F)."""
        return dict(self._passes)

    def _ddp(self) -> Any:
        return self.model if self.model is not None and hasattr(self.model, "no_sync") else None

    @contextlib.contextmanager
    def pass_context(self) -> Iterator[None]:
        """Run the forward pass in this: under DDP a partial step's pass runs in ``no_sync``."""
        ddp = self._ddp() if self.next_step_is_partial else None
        self._in_context = True  # until the step: backward may come after the block
        with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
            yield

    def backward(self, loss: torch.Tensor, *, retain_graph: bool | None = None) -> None:
        """``loss.backward()`` on a full step, ``loss.backward(inputs=fast)`` on a partial one.

        Raises:
            ValueError: a fast param group got no gradient (not reachable from the loss).
            RuntimeError: under DDP, a partial step whose forward ran outside
                :meth:`pass_context` (DDP would wait for the slow gradients).
        """
        if self.next_step_is_partial:
            if self._ddp() is not None and not self._in_context:
                raise RuntimeError(
                    "Multirate under DDP: run the forward of a partial step inside "
                    "optimizer.pass_context() (or use optimizer.step(closure))"
                )
            loss.backward(inputs=self.backward_inputs, retain_graph=retain_graph)
            self._passes["partial"] += 1
        else:
            loss.backward(retain_graph=retain_graph)
            self._passes["full"] += 1
        self._backward_seen = True
        self._check_fast_reached()

    def _check_fast_reached(self) -> None:
        for derived, (parent, rate) in enumerate(zip(self._parent, self._rate, strict=True)):
            params = self.base_optimizer.param_groups[derived]["params"]
            if rate == "fast" and all(p.grad is None for p in params):
                raise ValueError(
                    f"Invalid partition: the fast parameters of param_groups[{parent}] are not "
                    "reachable from the loss (none got a gradient)"
                )

    # -- the step -------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Copy the user groups' values into the base's groups; fast lr = h/k, slow lr = h."""
        for group in self.param_groups:  # schedulers and users edit groups
            if group["rate"] is not None and group["rate"] not in RATES:
                raise ValueError(f"Invalid rate: {group['rate']!r} (one of 'fast', 'slow', None)")
        for derived, parent, rate in zip(
            self.base_optimizer.param_groups, self._parent, self._rate, strict=True
        ):
            source = self.param_groups[parent]
            for key, value in source.items():
                if key not in ("params", "rate"):
                    derived[key] = value
            derived["lr"] = source["lr"] / self.k if rate == "fast" else source["lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One multirate step with the gradients in ``.grad`` (see the module docstring).

        Args:
            closure: optional; zeroes the gradients, computes the loss, calls
                ``optimizer.backward(loss)`` (or ``loss.backward()``: correct, no saving) and
                returns the loss. It runs inside :meth:`pass_context`.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad(), self.pass_context():
                loss = closure()
        partial = self.next_step_is_partial
        if not partial and self.partition == "random" and self._has_free():
            self._fast = self._draw_fast()  # re-drawn every cycle
            self._rebuild()
        self._sync()
        if not self._backward_seen:  # the loop called loss.backward() itself
            full = any(p.grad is not None for p in self._slow_params())
            self._passes["full" if full else "partial"] += 1
        self._backward_seen = False
        self._in_context = False
        if partial:
            self._fast_step()
        else:
            self._refresh_step()
        self._position = (self._position + 1) % self.k
        return loss

    def _has_free(self) -> bool:
        return any(group["rate"] is None for group in self.param_groups)

    def _refresh_step(self) -> None:
        """Slow refresh and first fast step from one gradient: one base step (fast lr h/k)."""
        slow = [p for p in self._slow_params() if p.grad is not None]
        drift = self.linear_drift and self.k > 1
        start = [p.detach().clone() for p in slow] if drift else []
        self.base_optimizer.step()
        self._drift = {}
        for p, s in zip(slow if drift else (), start, strict=True):
            delta = (p - s) / self.k  # the slow step Δ_S, spread over the k steps
            p.copy_(s + delta)
            self._drift[p] = delta

    def _fast_step(self) -> None:
        """A fast step (lr h/k); the slow part only drifts, its gradients are not used."""
        ddp = self._ddp()
        fast = [p for p in self._fast_params() if p.grad is not None]
        if ddp is not None and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in fast:  # no_sync skipped DDP's reduction: average the fast gradients here
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
        stashed = [(p, p.grad) for p in self._slow_params() if p.grad is not None]
        for p, _ in stashed:
            p.grad = None
        try:
            self.base_optimizer.step()
        finally:
            for p, grad in stashed:
                p.grad = grad
        if self._drift:  # θ_S += Δ_S / k, one multi-tensor kernel
            torch._foreach_add_(list(self._drift), list(self._drift.values()))

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base's ``state_dict``, the groups, and the cycle (position, drift, partition)."""
        index = {p: i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for group in self.param_groups:
            packed = {key: v for key, v in group.items() if key != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        return {
            "state": {},
            "param_groups": groups,
            "base": self.base_optimizer.state_dict(),
            "multirate": {
                "version": 1,
                "base": type(self.base_optimizer).__name__,
                "k": self.k,
                "position": self._position,
                "passes": dict(self._passes),
                "fast": [i for i, f in enumerate(self._fast) if f],
                "drift": {index[p]: d.clone() for p, d in self._drift.items()},
                "generator": self._generator.get_state(),
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; resumes bit-identically, mid-cycle included.

        Raises:
            ValueError: the dict was not saved by a Multirate over the same base, with the same
                ``k`` and the same parameter layout.
        """
        saved = state_dict.get("multirate")
        base = type(self.base_optimizer).__name__
        if not isinstance(saved, dict) or saved.get("version") != 1:
            raise ValueError("Invalid state_dict: not saved by Multirate")
        if saved["base"] != base or saved["k"] != self.k:
            raise ValueError(
                f"Invalid state_dict: saved by Multirate over {saved['base']} with k="
                f"{saved['k']}, loaded into Multirate over {base} with k={self.k}"
            )
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("Invalid state_dict: its param groups have other sizes")
        params = self._params()
        fast = set(saved["fast"])
        previous = (self._fast, self._parent, self._rate)
        self._fast = [i in fast for i in range(len(params))]
        old_groups = self.base_optimizer.param_groups
        self._rebuild()
        try:
            self.base_optimizer.load_state_dict(state_dict["base"])
        except Exception:
            self._fast, self._parent, self._rate = previous
            self.base_optimizer.param_groups = old_groups
            raise
        self.state = self.base_optimizer.state
        for group, packed in zip(self.param_groups, groups, strict=True):
            group.clear()
            group.update({key: v for key, v in packed.items() if key != "params"})
            group["params"] = params[packed["params"][0] : packed["params"][-1] + 1]
        self._position = int(saved["position"])
        self._passes = dict(saved["passes"])
        self._drift = {params[i]: d.detach().clone() for i, d in saved["drift"].items()}
        self._generator.set_state(saved["generator"].clone())

    # -- the latent-time-scales variant ---------------------------------------------------------

    @classmethod
    def two_time_scales(
        cls, params: Any, fast_lr: float, slow_lr: float, **kwargs: Any
    ) -> Multirate:
        """The whole network at two step sizes: fast part h_F = ``fast_lr``, slow h_S = ``slow_lr``.

        The paper's latent multiple time scales (e.g. h_F = 0.004, h_S = 0.1 on WideResNet-16):
        Algorithm 1 with ``k = slow_lr / fast_lr``, which must be an integer.

        Raises:
            ValueError: if ``slow_lr / fast_lr`` is not a positive integer.
        """
        for name, value in (("fast_lr", fast_lr), ("slow_lr", slow_lr)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Invalid {name}: {value!r} (must be > 0)")
        ratio = slow_lr / fast_lr
        k = round(ratio)
        if k < 1 or abs(ratio - k) > 1e-9 * ratio:
            raise ValueError(
                f"Invalid fast_lr/slow_lr: slow_lr / fast_lr = {ratio:g} must be an integer k >= 1"
            )
        return cls(params, k=k, lr=slow_lr, **kwargs)

    def __repr__(self) -> str:
        base = getattr(self, "base_optimizer", None)
        return f"Multirate(k={self.k}, linear_drift={self.linear_drift}, base={base!r})"


def _named(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(_unwrap(model).named_parameters())


def _check_base_settings(base: Any, settings: dict[str, Any]) -> None:
    """A setting that is neither Multirate's nor the base's: ValueError naming both lists."""
    if isinstance(base, str):
        accepted = [h.name for h in get_optimizer_entry(base).hyperparameters]
    else:
        try:
            parameters = inspect.signature(base).parameters.values()
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return
        accepted = [p.name for p in parameters if p.name not in ("self", "params")]
    unknown = [key for key in settings if key not in accepted]
    if unknown:
        ours = [h.name for h in Multirate.HYPERPARAMETERS]
        raise ValueError(
            f"Unknown hyperparameter {', '.join(map(repr, unknown))} for Multirate over {base!r} "
            f"(Multirate's: {', '.join(ours)}; the base's: {', '.join(accepted)})"
        )
