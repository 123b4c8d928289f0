"""Groups mutated after construction are validated at step time; foreign state dicts refused."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import torchvalley
from torchvalley.dynamics import LangevinSplitting

LANGEVIN = ("sgld", "baoab", "sghmc", "sgnht", "lala", "adlala", "lol")

# a value the constructor refuses, set on the group after construction (as a scheduler would)
BAD_GROUP_VALUES = [
    ("temperature", -1.0),
    ("temperature", math.nan),
    ("lr", 0.0),
    ("lr", -0.1),
    ("friction", -1.0),
    ("friction", math.inf),
    ("mass", 0.0),
    ("noise_scale", -1.0),
    ("thermostat_coupling", math.nan),
    ("dynamics", "bogus"),
    ("scheme", "ABA"),
    ("scheme", "BAXAB"),
]


def _opt(name: str) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torchvalley.create_optimizer(name, [p], **torchvalley.get_optimizer_entry(name).example)
    p.grad = torch.full_like(p, 0.5)
    return p, opt


@pytest.mark.parametrize("name", LANGEVIN)
@pytest.mark.parametrize(("key", "value"), BAD_GROUP_VALUES)
def test_group_mutated_after_construction_is_refused_at_step(name, key, value) -> None:
    p, opt = _opt(name)
    opt.step()  # a valid step first: later steps must re-check, not only the first
    before = p.detach().clone()
    if name == "sgld" and key == "scheme":
        value = "BAOAB"  # sgld takes no scheme at all
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=f"Invalid {key}"):
        opt.step()
    assert torch.equal(p.detach(), before)  # refused before anything moved


def test_sgnht_negative_temperature_through_param_groups() -> None:
    # the reproduction
    p = torch.nn.Parameter(torch.ones(4))
    opt = torchvalley.create_optimizer("sgnht", [p], lr=0.1, temperature=1e-4)
    opt.param_groups[0]["temperature"] = -1e-3
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"Invalid temperature: -0\.001"):
        opt.step()


def test_scheduled_values_are_used_and_overdamped_accepts_infinite_friction() -> None:
    # a scheduler's lr is taken at the next step: equal to an optimizer built with that lr
    def run(lr_after: float, schedule: bool) -> torch.Tensor:
        p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5, dtype=torch.float64))
        opt = LangevinSplitting([p], lr=0.1 if schedule else lr_after, temperature=1e-2)
        for _ in range(3):
            if schedule:
                opt.param_groups[0]["lr"] = lr_after
            p.grad = p.detach().clone()
            opt.step()
        return p.detach()

    torch.testing.assert_close(run(0.05, True), run(0.05, False), rtol=0, atol=0)
    q = torch.nn.Parameter(torch.ones(2))
    opt = LangevinSplitting([q], dynamics="overdamped", friction=math.inf)
    q.grad = torch.ones_like(q)
    opt.step()  # friction is irrelevant to (and may be inf for) the overdamped limit


def test_hyperparameters_are_declared_once_with_the_signature_defaults() -> None:
    signature = inspect.signature(LangevinSplitting.__init__).parameters
    declared = {h.name: h.default for h in LangevinSplitting.HYPERPARAMETERS}
    assert declared == {n: p.default for n, p in signature.items() if n not in ("self", "params")}
    for name in LANGEVIN:
        for h in torchvalley.get_optimizer_entry(name).hyperparameters:
            if h.name != "model":
                assert h.default == declared[h.name], (name, h.name)


@pytest.mark.parametrize(
    ("factory", "missing"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "dynamics"),
        (lambda ps: torch.optim.Adam(ps), "dynamics"),
        (lambda ps: torchvalley.create_optimizer("radam", ps), "dynamics"),
    ],
)
def test_state_dict_of_another_optimizer_is_refused_at_load(factory, missing) -> None:
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    other = factory(params)
    for p in params:
        p.grad = torch.ones_like(p)
    other.step()
    opt = LangevinSplitting(params)
    with pytest.raises(ValueError, match=f"not a LangevinSplitting state_dict.*'{missing}'"):
        opt.load_state_dict(other.state_dict())
    opt.step()  # the optimizer is untouched and still steps


def test_state_dict_with_mismatched_momentum_or_shared_state_is_refused() -> None:
    a = [torch.nn.Parameter(torch.ones(3))]
    source = LangevinSplitting(a)
    a[0].grad = torch.ones(3)
    source.step()
    state = source.state_dict()
    b = [torch.nn.Parameter(torch.ones(4))]  # same layout, another shape
    with pytest.raises(ValueError, match=r"momentum of parameter 0 has shape \(3,\), not \(4,\)"):
        LangevinSplitting(b).load_state_dict(state)
    del state["state"]["langevin"]
    with pytest.raises(ValueError, match="lacks the sampler state 'langevin'"):
        LangevinSplitting(a).load_state_dict(state)
    state = source.state_dict()
    state["param_groups"][0]["temperature"] = -1.0
    with pytest.raises(ValueError, match="Invalid temperature"):
        LangevinSplitting(a).load_state_dict(state)
