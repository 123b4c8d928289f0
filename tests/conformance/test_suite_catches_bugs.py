"""Meta-tests: each conformance check fails on an optimizer with the bug it is meant to catch.

Every broken optimizer is a small variation of :class:`ToySGD`, a from-scratch SGD that passes
the whole suite (as does ``torch.optim.SGD``); each is wrapped in an
:class:`~torchvalley.OptimizerEntry` built directly, never registered, so the checks build it
through their own validation path (:func:`torchvalley.testing.build_optimizer`).
"""

from __future__ import annotations

import dataclasses
import inspect
import unittest
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
import torch

import torchvalley
from torchvalley import Capabilities, Hyperparameter, OptimizerEntry
from torchvalley.registry import resolve_base_optimizer
from torchvalley.testing import (
    CONFORMANCE_CHECKS,
    check_closure,
    check_dtypes,
    check_foreach,
    check_foreign_state_dict,
    check_invalid_hyperparameters,
    check_lr_scheduler,
    check_param_groups,
    check_state_dict_round_trip,
    check_zero_grad,
    run_conformance,
)

# --------------------------------------------------------------------------------------------
# A correct toy optimizer and its entry
# --------------------------------------------------------------------------------------------


class ToySGD(torch.optim.Optimizer):
    """SGD with heavy-ball momentum and L2 weight decay; a per-tensor and a multi-tensor path.

    The broken variants below override one small piece of it each.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, {**defaults, "foreach": foreach})

    def _lr(self, group: dict[str, Any]) -> float:
        return group["lr"]

    def _before_update(self, group: dict[str, Any]) -> None:
        """Hook run on every group before its update."""

    def _evaluate(self, closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = self._evaluate(closure)
        self._update()
        return loss

    def _update(self) -> None:
        for group in self.param_groups:
            self._before_update(group)
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                update = self._foreach_update if group["foreach"] else self._single_update
                update(group, params)

    def _single_update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        for p in params:
            direction = p.grad if weight_decay == 0 else p.grad.add(p, alpha=weight_decay)
            if momentum != 0:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = self._new_buffer(direction)
                else:
                    state["momentum_buffer"].mul_(momentum).add_(direction)
                direction = state["momentum_buffer"]
            p.add_(direction, alpha=-self._lr(group))
            self._after_param_update(p)

    def _foreach_update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        directions = [p.grad for p in params]
        if weight_decay != 0:
            directions = torch._foreach_add(directions, params, alpha=weight_decay)
        if momentum != 0:
            old = [
                (self.state[p]["momentum_buffer"], d)
                for p, d in zip(params, directions, strict=True)
                if "momentum_buffer" in self.state[p]
            ]
            if old:
                buffers, fresh = (list(t) for t in zip(*old, strict=True))
                self._foreach_momentum(buffers, fresh, momentum)
            for p, d in zip(params, directions, strict=True):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = self._new_buffer(d)
            directions = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_add_(params, directions, alpha=-self._lr(group))
        for p in params:
            self._after_param_update(p)

    def _foreach_momentum(
        self, buffers: list[torch.Tensor], directions: list[torch.Tensor], momentum: float
    ) -> None:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions)

    def _new_buffer(self, direction: torch.Tensor) -> torch.Tensor:
        return direction.clone()

    def _after_param_update(self, p: torch.Tensor) -> None:
        """Hook run on every updated parameter."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a dict this optimizer did not save (unknown group keys or state)."""
        for group in state_dict["param_groups"]:
            unknown = set(group) - {"params", *self.defaults}
            if unknown:
                raise ValueError(f"not a ToySGD state dict: param group keys {sorted(unknown)}")
        for state in state_dict["state"].values():
            if set(state) - {"momentum_buffer"}:
                raise ValueError(f"not a ToySGD state dict: state keys {sorted(state)}")
        super().load_state_dict(state_dict)


TOY_HYPERPARAMETERS = (
    Hyperparameter("lr", "non_negative", 1e-3),
    Hyperparameter("momentum", "unit_interval_open", 0.0),
    Hyperparameter("weight_decay", "non_negative", 0.0),
    Hyperparameter("foreach", "optional_bool", None),
)


def toy_entry(
    factory: Callable[..., torch.optim.Optimizer] = ToySGD,
    *,
    hyperparameters: tuple[Hyperparameter, ...] = TOY_HYPERPARAMETERS,
    **capabilities: Any,
) -> OptimizerEntry:
    """An unregistered entry for ``factory`` with the toy's hyperparameters and examples."""
    return OptimizerEntry(
        name=f"toy_{getattr(factory, '__name__', 'factory').lower()}",
        factory=factory,
        capabilities=Capabilities(**{"foreach": True, **capabilities}),
        hyperparameters=hyperparameters,
        summary="a toy SGD for the conformance meta-tests",
        family="test",
        example={"lr": 0.05, "momentum": 0.9},
        group_example={"lr": 0.01, "momentum": 0.5, "weight_decay": 0.01},
    )


TORCH_SGD_ENTRY = OptimizerEntry(
    name="reference_sgd",
    factory=torch.optim.SGD,
    capabilities=Capabilities(foreach=True),
    hyperparameters=(
        *TOY_HYPERPARAMETERS,
        Hyperparameter("dampening", "unit_interval", 0.0),
        Hyperparameter("nesterov", "bool", False),
        Hyperparameter("maximize", "bool", False),
    ),
    summary="torch.optim.SGD, unregistered",
    family="test",
    example={"lr": 0.05, "momentum": 0.9},
    group_example={"lr": 0.01, "momentum": 0.5, "weight_decay": 0.01},
)

ALL_CASES = [
    pytest.param(check.function, kwargs, id=case)
    for check in CONFORMANCE_CHECKS
    for case, kwargs in check.cases()
]


# --------------------------------------------------------------------------------------------
# Correct references pass
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("check", "kwargs"), ALL_CASES)
@pytest.mark.parametrize("entry", [TORCH_SGD_ENTRY, toy_entry()], ids=["torch_sgd", "toy_sgd"])
def test_reference_passes(
    entry: OptimizerEntry, check: Callable[..., None], kwargs: Mapping[str, Any]
) -> None:
    check(entry, **kwargs)


class RequiresClosure(ToySGD):
    """Correct ``needs_closure`` optimizer: refuses ``step()`` with a clear ValueError."""

    def _evaluate(self, closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        if closure is None:
            raise ValueError("RequiresClosure.step needs a closure that re-evaluates the loss")
        return super()._evaluate(closure)


def test_reference_needing_a_closure_passes() -> None:
    counts = run_conformance(toy_entry(RequiresClosure, needs_closure=True))
    assert counts == {"passed": sum(len(c.variants) for c in CONFORMANCE_CHECKS), "skipped": 0}


def test_checks_restore_the_global_rng() -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    check_state_dict_round_trip(TORCH_SGD_ENTRY)
    assert torch.equal(torch.get_rng_state(), before)


def test_inapplicable_checks_skip() -> None:
    with pytest.raises(unittest.SkipTest):
        check_param_groups(toy_entry(supports_param_groups=False))
    with pytest.raises(unittest.SkipTest):
        check_foreach(toy_entry(foreach=False))


def test_run_conformance_reports_every_failure() -> None:
    with pytest.raises(AssertionError, match=r"conformance check\(s\) failed") as caught:
        run_conformance(toy_entry(UpdatesParamsWithoutGrad))
    assert "zero_grad: [toy_updatesparamswithoutgrad]" in str(caught.value)


# --------------------------------------------------------------------------------------------
# 1. Param groups
# --------------------------------------------------------------------------------------------


class IgnoresGroupLr(ToySGD):
    """Reads the constructor's lr instead of the group's."""

    def _lr(self, group: dict[str, Any]) -> float:
        return self.defaults["lr"]


class OverwritesGroupMomentum(ToySGD):
    """Forces the constructor's momentum onto every group."""

    def __init__(self, params: Iterable[Any], **hyperparameters: Any) -> None:
        super().__init__(params, **hyperparameters)
        for group in self.param_groups:
            group["momentum"] = self.defaults["momentum"]


class ClipsAcrossGroups(ToySGD):
    """Clips the gradient norm over all groups: not separable, though declared so."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = self._evaluate(closure)
        every = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(every, max_norm=1e-2)
        self._update()
        return loss


def test_param_groups_catches_a_group_lr_that_is_ignored() -> None:
    # Declared non-separable so that clause (c), one override at a time, is what fails.
    entry = toy_entry(IgnoresGroupLr, separable=False)
    with pytest.raises(AssertionError, match=r"lr=0\.01 on the second group does not change"):
        check_param_groups(entry)


def test_param_groups_catches_an_ignored_group_lr_through_separability() -> None:
    with pytest.raises(AssertionError, match="declared separable"):
        check_param_groups(toy_entry(IgnoresGroupLr))


def test_param_groups_catches_an_overwritten_group_value() -> None:
    with pytest.raises(AssertionError, match=r"lost its hyperparameters(.|\n)*momentum"):
        check_param_groups(toy_entry(OverwritesGroupMomentum))


def test_param_groups_catches_a_false_separable_claim() -> None:
    with pytest.raises(AssertionError, match="declared separable"):
        check_param_groups(toy_entry(ClipsAcrossGroups))
    check_param_groups(toy_entry(ClipsAcrossGroups, separable=False))


# --------------------------------------------------------------------------------------------
# 2. state_dict round trip
# --------------------------------------------------------------------------------------------


class DropsMomentumInStateDict(ToySGD):
    """Leaves the momentum buffers out of ``state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        # New dicts: torch's state_dict shares the per-parameter dicts with self.state.
        state_dict["state"] = {
            key: {k: v for k, v in state.items() if k != "momentum_buffer"}
            for key, state in state_dict["state"].items()
        }
        return state_dict


class GlobalRngNoise(ToySGD):
    """Adds noise drawn from the global RNG, whose state is not in ``state_dict``."""

    def _after_param_update(self, p: torch.Tensor) -> None:
        p.add_(torch.randn_like(p), alpha=1e-3)


class MutatesLoadedStateDict(ToySGD):
    """Pops its own key out of the dict given to ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "toy_format": 1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.pop("toy_format") != 1:
            raise ValueError("unknown format")
        super().load_state_dict(state_dict)


@dataclasses.dataclass
class ToySchedule:
    """A Python object that torch.load(weights_only=True) refuses to unpickle."""

    warmup: int = 10


class SavesPythonObject(ToySGD):
    """Puts an arbitrary Python object into ``state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "schedule": ToySchedule()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "schedule"})


class KeepsLoadedDictByReference(ToySGD):
    """Keeps a dict of the loaded state dict by reference and updates it while stepping."""

    def __init__(self, params: Iterable[Any], **hyperparameters: Any) -> None:
        super().__init__(params, **hyperparameters)
        self._counter = {"steps": 0}

    def _update(self) -> None:
        super()._update()
        self._counter["steps"] += 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "counter": dict(self._counter)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "counter"})
        self._counter = state_dict["counter"]


class IgnoresLoadedState(ToySGD):
    """Loads the param groups but not the per-parameter state."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "state": {}})


def test_state_dict_catches_missing_momentum() -> None:
    with pytest.raises(AssertionError, match="resumed parameters differ"):
        check_state_dict_round_trip(toy_entry(DropsMomentumInStateDict))


def test_state_dict_catches_global_rng_noise() -> None:
    entry = toy_entry(GlobalRngNoise, noisy=True)
    with pytest.raises(AssertionError, match="resumed parameters differ"):
        check_state_dict_round_trip(entry)


def test_state_dict_catches_a_mutated_input() -> None:
    with pytest.raises(AssertionError, match="mutated the dict it was given"):
        check_state_dict_round_trip(toy_entry(MutatesLoadedStateDict))


def test_state_dict_catches_a_python_object() -> None:
    with pytest.raises(AssertionError, match="weights_only=True"):
        check_state_dict_round_trip(toy_entry(SavesPythonObject))


def test_state_dict_catches_a_loaded_dict_changed_while_stepping() -> None:
    with pytest.raises(AssertionError, match=r"continuing after load_state_dict(.|\n)*steps"):
        check_state_dict_round_trip(toy_entry(KeepsLoadedDictByReference))


def test_state_dict_catches_state_not_loaded() -> None:
    with pytest.raises(AssertionError, match="right after load_state_dict differs"):
        check_state_dict_round_trip(toy_entry(IgnoresLoadedState))


# --------------------------------------------------------------------------------------------
# 3. LR scheduler
# --------------------------------------------------------------------------------------------


class SwapsStepLazily(ToySGD):
    """Replaces ``self.step`` on first use (e.g. by a "compiled" step): the scheduler's wrapper
    is lost and torch warns."""

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        self.step = self._fast_step  # type: ignore[method-assign]
        return self._fast_step(closure)

    @torch.no_grad()
    def _fast_step(self, closure: Callable[[], torch.Tensor] | None = None) -> Any:
        loss = self._evaluate(closure)
        self._update()
        return loss


class CachesLr(ToySGD):
    """Keeps the lr given at construction and never reads ``group["lr"]``."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **hyperparameters: Any) -> None:
        super().__init__(params, lr=lr, **hyperparameters)
        self._cached_lr = lr

    def _lr(self, group: dict[str, Any]) -> float:
        return self._cached_lr


@pytest.mark.parametrize("scheduler", ["step", "lambda"])
def test_lr_scheduler_catches_a_replaced_step(scheduler: str) -> None:
    with pytest.raises(AssertionError, match="a warning was raised"):
        check_lr_scheduler(toy_entry(SwapsStepLazily), scheduler=scheduler)


@pytest.mark.parametrize("scheduler", ["step", "lambda"])
def test_lr_scheduler_catches_a_cached_lr(scheduler: str) -> None:
    with pytest.raises(AssertionError, match="had no effect"):
        check_lr_scheduler(toy_entry(CachesLr), scheduler=scheduler)


# --------------------------------------------------------------------------------------------
# 4. zero_grad
# --------------------------------------------------------------------------------------------


class UpdatesParamsWithoutGrad(ToySGD):
    """Applies a decoupled decay to every parameter, before looking at its grad."""

    def _before_update(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            p.mul_(1 - self._lr(group) * 1e-2)


class ZeroGradKeepsTensors(ToySGD):
    """Zeroes the grads in place even when asked to set them to None."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


def test_zero_grad_catches_an_update_without_grad() -> None:
    with pytest.raises(AssertionError, match="grad is None was changed"):
        check_zero_grad(toy_entry(UpdatesParamsWithoutGrad))


def test_zero_grad_catches_grads_not_set_to_none() -> None:
    with pytest.raises(AssertionError, match="grad is not None after zero_grad"):
        check_zero_grad(toy_entry(ZeroGradKeepsTensors))


# --------------------------------------------------------------------------------------------
# 5. dtypes
# --------------------------------------------------------------------------------------------


class Float32Momentum(ToySGD):
    """Keeps its momentum in float32 whatever the parameter dtype."""

    def _new_buffer(self, direction: torch.Tensor) -> torch.Tensor:
        return direction.to(torch.float32, copy=True)


class RoundsFloat32ThroughBfloat16(ToySGD):
    """Rounds float32 parameters through bfloat16 after each update (a "mixed precision"
    shortcut without an fp32 master copy)."""

    def _after_param_update(self, p: torch.Tensor) -> None:
        if p.dtype == torch.float32:
            p.copy_(p.to(torch.bfloat16))


def test_dtypes_catches_state_in_the_wrong_dtype() -> None:
    with pytest.raises(
        AssertionError, match=r"changed dtype(.|\n)*momentum_buffer'\] is torch\.float32"
    ):
        check_dtypes(toy_entry(Float32Momentum))


def test_dtypes_catches_a_lossy_float32_path() -> None:
    with pytest.raises(AssertionError, match="float32 trajectory drifted"):
        check_dtypes(toy_entry(RoundsFloat32ThroughBfloat16))


# --------------------------------------------------------------------------------------------
# 6. foreach
# --------------------------------------------------------------------------------------------


class ForeachDampens(ToySGD):
    """Its multi-tensor path dampens the momentum; the per-tensor path does not."""

    def _foreach_momentum(
        self, buffers: list[torch.Tensor], directions: list[torch.Tensor], momentum: float
    ) -> None:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, directions, alpha=1 - momentum)


class ForeachOffByAnUlp(ToySGD):
    """Its multi-tensor path nudges the lr by about 30 float32 ulps: within no tolerance."""

    def _foreach_update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        super()._foreach_update({**group, "lr": group["lr"] * (1 + 4e-6)}, params)


@pytest.mark.parametrize("broken", [ForeachDampens, ForeachOffByAnUlp])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_catches_diverging_paths(broken: type, dtype: torch.dtype) -> None:
    with pytest.raises(AssertionError, match="foreach=True and foreach=False differ"):
        check_foreach(toy_entry(broken), dtype=dtype)


def test_foreach_catches_an_undocumented_flag() -> None:
    hyperparameters = tuple(h for h in TOY_HYPERPARAMETERS if h.name != "foreach")
    with pytest.raises(AssertionError, match="not a documented hyperparameter"):
        check_foreach(toy_entry(hyperparameters=hyperparameters))


# --------------------------------------------------------------------------------------------
# 7. closure
# --------------------------------------------------------------------------------------------


class ClosureCrashes(ToySGD):
    """Needs a closure but does not say so when it is missing (``mode`` picks how it fails)."""

    mode = "attribute"

    def _evaluate(self, closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        if self.mode == "attribute":
            loss = super()._evaluate(closure)
            self.state["last_loss"] = loss.detach()  # AttributeError on None
            return loss
        if self.mode == "type":
            with torch.enable_grad():
                return closure()  # TypeError: 'NoneType' object is not callable
        if self.mode == "assert":
            assert closure is not None, "needs it"  # gone under python -O, and not a ValueError
        if self.mode == "vague" and closure is None:
            raise ValueError("missing argument")
        return super()._evaluate(closure)


class ReturnsNoLoss(ToySGD):
    """Calls the closure but returns None."""

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:
        super().step(closure)


class EvaluatesClosureAfterUpdate(ToySGD):
    """Updates with the old gradients, then calls the closure "for logging"."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        self._update()
        return self._evaluate(closure)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("attribute", "got AttributeError"),
        ("type", "got TypeError"),
        ("assert", "got AssertionError"),
        ("vague", "does not mention the closure"),
    ],
)
def test_closure_catches_an_unclear_error_without_closure(mode: str, message: str) -> None:
    broken = type(f"ClosureCrashes_{mode}", (ClosureCrashes,), {"mode": mode})
    with pytest.raises(AssertionError, match=message):
        check_closure(toy_entry(broken, needs_closure=True))


def test_closure_catches_a_missing_raise() -> None:
    with pytest.raises(AssertionError, match="did not raise"):
        check_closure(toy_entry(needs_closure=True))


def test_closure_catches_a_loss_not_returned() -> None:
    with pytest.raises(AssertionError, match="must return the closure's loss"):
        check_closure(toy_entry(ReturnsNoLoss))


def test_closure_catches_step_closure_differing_from_closure_then_step() -> None:
    with pytest.raises(AssertionError, match="give different trajectories"):
        check_closure(toy_entry(EvaluatesClosureAfterUpdate))


# --------------------------------------------------------------------------------------------
# 8. invalid hyperparameters
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HandRolledCheck(Hyperparameter):
    """A hand-written check: ``value < 0`` is False for NaN, so NaN (and inf, and True) pass."""

    def check(self, value: Any) -> Any:
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"Invalid {self.name}: {value!r}")
        return value


def toy_sgd_factory(params: Iterable[Any], **hyperparameters: Any) -> torch.optim.Optimizer:
    """ToySGD behind a ``**kwargs`` signature: the registry cannot check names against it."""
    return ToySGD(params, **hyperparameters)


def lenient_wrapper(
    params: Iterable[Any], base_optimizer: Any = toy_sgd_factory, **hyperparameters: Any
) -> torch.optim.Optimizer:
    """A wrapper factory that drops whatever ToySGD does not accept, typos included."""
    base = resolve_base_optimizer(base_optimizer)
    accepted = inspect.signature(ToySGD).parameters
    return base(params, **{k: v for k, v in hyperparameters.items() if k in accepted})


def test_invalid_hyperparameters_catches_nan_accepted() -> None:
    hyperparameters = (HandRolledCheck("lr", "non_negative", 1e-3), *TOY_HYPERPARAMETERS[1:])
    with pytest.raises(AssertionError, match=r"lr=nan: accepted"):
        check_invalid_hyperparameters(toy_entry(hyperparameters=hyperparameters))


def test_invalid_hyperparameters_catches_an_invalid_default() -> None:
    hyperparameters = (
        TOY_HYPERPARAMETERS[0],
        Hyperparameter("momentum", "unit_interval_open", 1.0),
        *TOY_HYPERPARAMETERS[2:],
    )
    with pytest.raises(AssertionError, match=r"default momentum=1\.0: refused"):
        check_invalid_hyperparameters(toy_entry(hyperparameters=hyperparameters))


def test_invalid_hyperparameters_catches_a_dropped_unknown_name() -> None:
    entry = toy_entry(
        lenient_wrapper,
        hyperparameters=(
            Hyperparameter("base_optimizer", "optimizer", toy_sgd_factory),
            *TOY_HYPERPARAMETERS,
        ),
        wraps_base=True,
    )
    with pytest.raises(AssertionError, match=r"no_such_hyperparameter=0\.1: accepted") as caught:
        check_invalid_hyperparameters(entry)
    # The wrapper's own documented hyperparameters, base_optimizer included, are still refused.
    assert "base_optimizer" not in str(caught.value)


def test_invalid_hyperparameters_catches_documented_names_the_factory_lacks() -> None:
    # sgd's documentation over ToySGD, which has no dampening/nesterov/maximize. The replaced
    # copy is not the registered object, so the check builds it with its own factory even
    # though its name is registered.
    entry = dataclasses.replace(torchvalley.get_optimizer_entry("sgd"), factory=ToySGD)
    with pytest.raises(AssertionError, match=r"default dampening=0\.0: refused with TypeError"):
        check_invalid_hyperparameters(entry)


# --------------------------------------------------------------------------------------------
# 9. A state dict from another optimizer
# --------------------------------------------------------------------------------------------


class AcceptsAnyStateDict(ToySGD):
    """torch's own load_state_dict: any dict with the right group and parameter counts."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.optim.Optimizer.load_state_dict(self, state_dict)


class KeyErrorOnForeignStateDict(ToySGD):
    """Checks the format, but fails with a bare KeyError."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for group in state_dict["param_groups"]:
            _ = group["lr"]  # the bare KeyError is the bug
        super().load_state_dict(state_dict)


@pytest.mark.parametrize("broken", [AcceptsAnyStateDict, KeyErrorOnForeignStateDict])
def test_foreign_state_dict_catches_a_dict_from_another_optimizer(broken: type) -> None:
    with pytest.raises(AssertionError, match="foreign state dict"):
        check_foreign_state_dict(toy_entry(broken))


def test_foreign_state_dict_skips_torch_classes() -> None:
    with pytest.raises(unittest.SkipTest, match=r"torch\.optim"):
        check_foreign_state_dict(TORCH_SGD_ENTRY)
