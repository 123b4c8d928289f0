"""Langevin splitting engine: reductions, exact stationary variances, thermostats, noise."""

from __future__ import annotations

import math

import pytest
import torch

import torchvalley
from torchvalley.dynamics import (
    LangevinSplitting,
    NoisePrecisionWarning,
    parse_scheme,
    partition_by_layer,
    physical_to_sgd,
    posterior_temperature,
    sgd_to_physical,
)

F64 = torch.float64


def _quadratic_run(opt_factory, lam, steps, chains, burn, noise_sd=0.0, init_sd=0.0):
    """Run ``chains`` independent 1-D chains on U = lam/2 theta^2; per-chain time averages."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.nn.Parameter(init_sd * torch.randn(chains, generator=gen, dtype=F64))
    opt = opt_factory([theta])
    acc = torch.zeros(chains, dtype=F64)
    kin = []
    for k in range(steps):
        grad = lam * theta.detach()
        if noise_sd:
            grad = grad + noise_sd * torch.randn(chains, generator=gen, dtype=F64)
        theta.grad = grad
        opt.step()
        if k >= burn:
            acc += theta.detach() ** 2
            kin.append(opt.diagnostics()[0].get("kinetic_temperature"))
    per_chain = acc / (steps - burn)
    return per_chain, kin


def _assert_mean(per_chain: torch.Tensor, expected: float, z: float = 4.0) -> float:
    # independent chains: the standard error comes from their spread (ESS = number of chains
    # times the per-chain ESS, estimated directly by the between-chain variance)
    mean, se = per_chain.mean().item(), per_chain.std().item() / math.sqrt(per_chain.numel())
    assert abs(mean - expected) < z * se, (mean, expected, se)
    return se


def test_zero_temperature_baoa_equals_sgd_momentum() -> None:
    h, gamma, m = 0.3, 0.7, 1.5
    sgd = physical_to_sgd(h, gamma, 0.0, m)
    torch.manual_seed(0)
    target = torch.randn(5, dtype=F64)
    a = torch.nn.Parameter(torch.randn(5, dtype=F64))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = LangevinSplitting([a], lr=h, friction=gamma, temperature=0.0, mass=m, scheme="BAOA")
    opt_b = torch.optim.SGD([b], lr=sgd.lr, momentum=sgd.momentum)
    for _ in range(50):
        for p, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            (((p - target) ** 2).sum() + torch.cos(3 * p).sum()).backward()
            o.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-12)


def test_conversion_round_trip() -> None:
    phys = (0.2, 0.5, 3e-3, 2.0)
    sgd = physical_to_sgd(*phys)
    back = sgd_to_physical(sgd.lr, sgd.momentum, sgd.noise, mass=2.0)
    for x, y in zip(back, phys, strict=True):
        assert math.isclose(x, y, rel_tol=1e-12)
    assert posterior_temperature(1000) == 1e-3
    with pytest.raises(ValueError, match="momentum"):
        sgd_to_physical(0.1, 1.0)


def test_adlala_all_langevin_equals_baoab() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net = net.double()
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    other = other.double()
    other.load_state_dict(net.state_dict())
    x = torch.randn(8, 3, dtype=F64)
    kw = {"lr": 0.1, "friction": 1.0, "temperature": 1e-2}
    opt_a = torchvalley.create_optimizer(
        "adlala", partition_by_layer(net, first="langevin", rest="langevin"), **kw
    )
    opt_b = torchvalley.create_optimizer("baoab", other.parameters(), **kw)
    for _ in range(20):
        for model, opt in ((net, opt_a), (other, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(net.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)


def test_sgld_exact_discrete_variance() -> None:
    lam, h, tau = 1.0, 0.5, 0.1
    per_chain, _ = _quadratic_run(
        lambda ps: LangevinSplitting(ps, lr=h, temperature=tau, dynamics="sgld"),
        lam,
        600,
        4000,
        50,
    )
    _assert_mean(per_chain, tau / (lam * (1 - h * lam / 2)))


@pytest.mark.parametrize("h", [0.3, 1.2])
def test_baoab_position_variance_is_exact(h: float) -> None:
    lam, tau = 1.0, 0.1
    per_chain, _ = _quadratic_run(
        lambda ps: LangevinSplitting(ps, lr=h, friction=1.0, temperature=tau),
        lam,
        600,
        4000,
        100,
        init_sd=math.sqrt(tau / lam),
    )
    _assert_mean(per_chain, tau / lam)


def test_euler_underdamped_variance_depends_on_h() -> None:
    # negative control: SGHMC (Euler-Maruyama) is biased at large h
    lam, tau, h = 1.0, 0.1, 0.8
    per_chain, _ = _quadratic_run(
        lambda ps: LangevinSplitting(ps, lr=h, friction=1.0, temperature=tau, dynamics="sghmc"),
        lam,
        600,
        4000,
        100,
        init_sd=math.sqrt(tau / lam),
    )
    se = per_chain.std().item() / math.sqrt(per_chain.numel())
    assert abs(per_chain.mean().item() - tau / lam) > 10 * se


def test_lala_equipartition_per_partition() -> None:
    lam, h = 1.0, 0.1
    a = torch.nn.Parameter(torch.zeros(2000, dtype=F64))
    b = torch.nn.Parameter(torch.zeros(2000, dtype=F64))
    groups = [{"params": [a], "temperature": 0.01}, {"params": [b], "temperature": 0.1}]
    opt = torchvalley.create_optimizer("lala", groups, lr=h, friction=2.0)
    kin = []
    for k in range(800):
        a.grad, b.grad = lam * a.detach(), lam * b.detach()
        opt.step()
        if k >= 200:
            kin.append([d["kinetic_temperature"] for d in opt.diagnostics()])
    means = torch.tensor(kin).mean(0)
    # stored momenta lag by the final half kick: O(h^2) bias, ~1e-2 relative here
    torch.testing.assert_close(means, torch.tensor([0.01, 0.1], dtype=F64), rtol=0.03, atol=0)


def test_sgnht_holds_temperature_under_gradient_noise() -> None:
    lam, h, tau, noise = 1.0, 0.01, 0.01, math.sqrt(10.0)
    common = {"lr": h, "temperature": tau}

    def thermo(ps):
        return torchvalley.create_optimizer(
            "sgnht", ps, **common, noise_scale=0.0, thermostat_coupling=1e-2
        )

    def plain(ps):
        return torchvalley.create_optimizer("baoab", ps, **common, friction=1.0)

    # the stored momenta follow the final C_{h/2} (factor exp(-xi h) ~ 0.95 in p^2 here)
    _, kin_t = _quadratic_run(thermo, lam, 3000, 2000, 1500, noise_sd=noise)
    _, kin_p = _quadratic_run(plain, lam, 3000, 2000, 1500, noise_sd=noise)
    kt, kp = torch.stack(kin_t).mean().item(), torch.stack(kin_p).mean().item()
    assert abs(kt - tau) < 0.25 * tau, kt  # ~0.0118: finite-h bias + slow thermostat
    # plain Langevin heats by about h * noise^2 / (2 gamma) = 0.05 = 5 tau
    assert kp > 3 * tau, kp


def test_noise_independent_of_global_rng() -> None:
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        p = torch.nn.Parameter(torch.ones(10))
        opt = torchvalley.create_optimizer("baoab", [p], lr=0.1, temperature=1.0, seed=3)
        for _ in range(5):
            p.grad = p.detach().clone()
            opt.step()
        return p.detach().clone()

    assert torch.equal(run(1), run(2))
    other = torch.nn.Parameter(torch.ones(10))
    opt = torchvalley.create_optimizer("baoab", [other], lr=0.1, temperature=1.0, seed=4)
    other.grad = torch.ones(10)
    opt.step()
    assert not torch.equal(other.detach(), run(1))


def test_float32_and_float64_draw_the_same_noise() -> None:
    out = []
    for dtype in (torch.float32, torch.float64):
        p = torch.nn.Parameter(torch.zeros(50, dtype=dtype))
        opt = LangevinSplitting([p], dynamics="sgld", lr=0.5, temperature=1.0)
        p.grad = torch.zeros_like(p)
        opt.step()
        out.append(p.detach().double())
    torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-7)


def test_adaptive_thermostat_and_configurational_diagnostics() -> None:
    p = torch.nn.Parameter(torch.ones(100, dtype=F64))
    opt = LangevinSplitting(
        [p], dynamics="adaptive", lr=0.1, temperature=0.01, track_configurational=True
    )
    p.grad = p.detach().clone()
    opt.step()
    diag = opt.diagnostics()[0]
    assert set(diag) == {"kinetic_temperature", "thermostat", "configurational_temperature"}
    assert diag["configurational_temperature"].item() == pytest.approx(1.0)
    assert diag["thermostat"].dim() == 0


def test_bf16_noise_below_ulp_warns_once() -> None:
    p = torch.nn.Parameter(torch.full((10,), 100.0, dtype=torch.bfloat16))
    opt = LangevinSplitting([p], lr=0.01, temperature=1e-8)
    p.grad = torch.zeros_like(p)
    with pytest.warns(NoisePrecisionWarning):
        opt.step()
    opt.step()  # no second warning (filterwarnings=error would raise)


def test_partition_and_scheme_validation() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    groups = partition_by_layer(net, rest_options={"temperature": 1e-3})
    assert [g["dynamics"] for g in groups] == ["adaptive", "langevin"]
    assert groups[1]["temperature"] == 1e-3 and len(groups[0]["params"]) == 2
    head, tail = parse_scheme("OBABO")
    assert [x[0] for x in head] == ["O", "B", "A"] and [x[0] for x in tail] == ["B", "O"]
    for bad in ("ABA", "BOB", "BAXAB", ""):
        with pytest.raises(ValueError):
            parse_scheme(bad)
    with pytest.raises(ValueError, match="optimizer-wide"):
        LangevinSplitting([{"params": [torch.nn.Parameter(torch.ones(1))], "seed": 1}])


def test_overdamped_partition_is_baoab_limit_method() -> None:
    # LOL's overdamped partition: theta' = theta - h^2/(2m) g + (h/2) sqrt(tau/m)(R_n + R_{n+1})
    lam, h, tau = 1.0, 0.5, 0.1
    per_chain, _ = _quadratic_run(
        lambda ps: LangevinSplitting(ps, lr=h, temperature=tau, dynamics="overdamped"),
        lam,
        600,
        4000,
        50,
        init_sd=math.sqrt(tau / lam),
    )
    _assert_mean(per_chain, tau / lam)
