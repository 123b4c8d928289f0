"""The opt-in fused BAOAB path (``fused=True``): equal to the default path to rounding.

The fused pass is compiled (``torch.compile``); the compiler may contract multiply-adds into
FMAs, so positions and momenta match the default path to a few ulp, not bitwise. Measured on a
small MLP over 20 steps: max |diff| ~6e-8 (float32, parameters O(0.1..1)) and ~7e-17 (float64).
The tolerances below leave an order of magnitude or more of margin over that.
Tests that compile are marked slow (the first compile takes several seconds on a CPU).
"""

from __future__ import annotations

import copy

import pytest
import torch

import torchvalley
from torchvalley.dynamics import LangevinSplitting

# torch 2.13's inductor imports modules that use torch.jit.script_method on the first compile.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-14},
}


def _net(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3), torch.nn.Linear(3, 1)
    ).to(dtype)


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    net(x).pow(2).mean().backward()
    opt.step()


def _assert_same(nets, opts, dtype):
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
        torch.testing.assert_close(
            opts[0].state[a]["momentum"], opts[1].state[b]["momentum"], **TOL[dtype]
        )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1e-2, 0.0])
def test_fused_matches_unfused_trajectory(dtype, temperature):
    net = _net(dtype)
    nets = [net, copy.deepcopy(net)]
    kwargs = {"lr": 0.05, "friction": 1.0, "temperature": temperature, "mass": 2.0, "seed": 3}
    opts = [
        LangevinSplitting(n.parameters(), fused=f, **kwargs)
        for n, f in zip(nets, (False, True), strict=True)
    ]
    x = torch.randn(32, 5, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for k in range(12):
        if k == 6:  # a changed lr: the owed tail keeps the previous step's lr
            for opt in opts:
                opt.param_groups[0]["lr"] = 0.03
        for n, opt in zip(nets, opts, strict=True):
            _step(n, opt, x)
        _assert_same(nets, opts, dtype)
    assert opts[1].state["langevin"] == opts[0].state["langevin"]


@pytest.mark.slow
def test_fused_non_contiguous_and_missing_grads():
    theta = [torch.nn.Parameter(torch.randn(6, 4).t()), torch.nn.Parameter(torch.randn(7))]
    twins = [torch.nn.Parameter(t.detach().clone()) for t in theta]
    opts = [
        LangevinSplitting(ps, lr=0.1, temperature=1e-2, fused=f)
        for ps, f in ((theta, False), (twins, True))
    ]
    for k in range(5):
        for ps, opt in zip((theta, twins), opts, strict=True):
            for j, p in enumerate(ps):
                p.grad = None if (k == 2 and j == 1) else torch.sin(p.detach() + k)
            opt.step()
        for a, b in zip(theta, twins, strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.slow
def test_fused_resume_from_state_dict():
    dtype = torch.float32
    x = torch.randn(32, 5, dtype=dtype, generator=torch.Generator().manual_seed(1))
    kwargs = {"lr": 0.05, "friction": 1.0, "temperature": 1e-2, "seed": 7}
    ref = _net(dtype)
    ref_opt = LangevinSplitting(ref.parameters(), fused=True, **kwargs)
    for _ in range(4):
        _step(ref, ref_opt, x)
    for fused in (True, False):  # the state moves between fused and unfused optimizers
        net = copy.deepcopy(ref)
        opt = LangevinSplitting(net.parameters(), fused=fused, **kwargs)
        opt.load_state_dict(ref_opt.state_dict())
        nets, opts = [copy.deepcopy(ref), net], [None, opt]
        opts[0] = LangevinSplitting(nets[0].parameters(), fused=True, **kwargs)
        opts[0].load_state_dict(ref_opt.state_dict())
        for _ in range(3):
            for n, o in zip(nets, opts, strict=True):
                _step(n, o, x)
        _assert_same(nets, opts, dtype)
        if fused:
            for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
                assert torch.equal(a, b)  # same compiled pass: bitwise


@pytest.mark.slow
def test_fused_through_registry():
    net = _net(torch.float32)
    opt = torchvalley.create_optimizer("baoab", net.parameters(), lr=0.05, fused=True)
    _step(net, opt, torch.ones(2, 5))
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "OBABO"},
        {"scheme": "BAOA"},
        {"dynamics": "overdamped"},
        {"dynamics": "adaptive"},
        {"dynamics": "sghmc"},
        {"dynamics": "sgld"},
    ],
)
def test_fused_rejects_uncovered_scheme_or_dynamics(kwargs):
    with pytest.raises(ValueError, match="fused"):
        LangevinSplitting([torch.nn.Parameter(torch.zeros(3))], fused=True, **kwargs)


def test_fused_rejects_uncovered_group_and_bad_flag():
    opt = LangevinSplitting([torch.nn.Parameter(torch.zeros(3))], fused=True, scheme="baoab")
    with pytest.raises(ValueError, match="fused"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "scheme": "OBABO"})
    with pytest.raises(ValueError, match="fused"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "fused": False})
    with pytest.raises(ValueError, match="fused"):
        LangevinSplitting([torch.nn.Parameter(torch.zeros(3))], fused=1)
    hp = {h.name: h for h in torchvalley.get_optimizer_entry("baoab").hyperparameters}
    assert hp["fused"].kind == "bool" and hp["fused"].default is False
