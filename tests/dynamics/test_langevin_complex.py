"""Complex parameters: the real-pair convention (each of Re z and Im z is a real coordinate).

For ``z = x + iy`` and a real loss ``U(x, y)``, torch's gradient is ``dU/dx + i dU/dy``; the
samplers treat ``z`` as the pair ``(x, y)``, so ``exp(-U / tau)`` is stationary and each of ``x``
and ``y`` gets the noise of a real parameter. Oracles: (1) a complex parameter of ``n`` elements
steps exactly as a real ``(n, 2)`` parameter holding ``(x, y)`` at the same position (same noise
keys); (2) on ``U = k/2 |z|^2`` the stationary variances of ``x`` and ``y`` are the closed forms
``tau / k`` (BAOAB: exact for any stable step; Leimkuhler & Matthews 2013) and
``tau / (k (1 - h k / 2))`` (SGLD: the exact discrete AR(1) variance).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchvalley.dynamics import LangevinSplitting

K = 1.0  # curvature of U = K/2 |z|^2
CONFIGS = {
    "baoab": {"lr": 0.3, "friction": 1.0},
    "obabo": {"lr": 0.3, "friction": 1.0, "scheme": "OBABO"},
    "baoa": {"lr": 0.3, "friction": 1.0, "scheme": "BAOA"},
    "overdamped": {"lr": 0.3, "friction": 1.0, "dynamics": "overdamped"},
    "sghmc": {"lr": 0.1, "friction": 2.0, "dynamics": "sghmc"},
    "sgnht": {"lr": 0.1, "dynamics": "adaptive", "noise_scale": 1.0, "thermostat_coupling": 1e-3},
    "sgld": {"lr": 0.1, "dynamics": "sgld"},
}


def _loss(z: torch.Tensor) -> torch.Tensor:
    if z.is_complex():
        return 0.5 * K * (z.real**2 + z.imag**2).sum()
    return 0.5 * K * (z**2).sum()


def _run(param: torch.nn.Parameter, steps: int, **hp) -> LangevinSplitting:
    opt = LangevinSplitting([param], temperature=0.5, seed=3, **hp)
    for _ in range(steps):
        opt.zero_grad()
        _loss(param).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("name", [*CONFIGS, pytest.param("fused", marks=pytest.mark.slow)])
# torch 2.13's inductor imports modules that use torch.jit.script_method on the first compile.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_complex_parameter_steps_as_its_real_pair(name: str) -> None:
    hp = {"lr": 0.3, "friction": 1.0, "fused": True} if name == "fused" else CONFIGS[name]
    start = torch.randn(64, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    z = torch.nn.Parameter(start.clone())
    pair = torch.nn.Parameter(torch.view_as_real(start).clone())
    opt_z, opt_pair = _run(z, 20, **hp), _run(pair, 20, **hp)
    torch.testing.assert_close(torch.view_as_real(z.detach()), pair.detach(), rtol=0, atol=0)
    # the diagnostics count both coordinates: equal to the real pair's
    for a, b in zip(opt_z.diagnostics(), opt_pair.diagnostics(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("baoab", 0.5 / K),
        ("sgld", 0.5 / (K * (1.0 - 0.1 * K / 2.0))),
    ],
)
def test_complex_stationary_variance_of_real_and_imaginary_parts(name, expected) -> None:
    chains, burn, thin, snapshots = 4000, 100, 25, 16
    z = torch.nn.Parameter(torch.zeros(chains, dtype=torch.complex128))
    opt = LangevinSplitting([z], temperature=0.5, seed=1, **CONFIGS[name])
    real, imag = [], []
    for k in range(burn + thin * snapshots):
        opt.zero_grad()
        _loss(z).backward()
        opt.step()
        if k >= burn and (k - burn) % thin == thin - 1:
            real.append(z.detach().real.pow(2).mean().item())
            imag.append(z.detach().imag.pow(2).mean().item())
    # thin steps apart the snapshots are nearly independent: each mean of squares of `chains`
    # Gaussians has relative sd sqrt(2 / chains); 5 sd of the mean over the snapshots
    tol = 5.0 * expected * math.sqrt(2.0 / (chains * snapshots)) * 2.0  # x2: residual correlation
    for part in (real, imag):
        assert abs(sum(part) / len(part) - expected) < tol, (name, part, expected)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in ("baoab", "sgld")])
def test_every_scheme_gives_real_and_imaginary_parts_the_same_variance(name: str) -> None:
    chains, steps = 4000, 300
    z = torch.nn.Parameter(torch.zeros(chains, dtype=torch.complex128))
    _run(z, steps, **CONFIGS[name])
    var_re, var_im = z.detach().real.var().item(), z.detach().imag.var().item()
    # both parts near tau / K = 0.5 (discretisation bias of these steps is a few percent) and
    # equal to each other within 6 sd of a variance estimate from `chains` samples
    assert abs(var_re / var_im - 1.0) < 6.0 * math.sqrt(4.0 / chains), (var_re, var_im)
    assert 0.4 < var_im < 0.6, (var_re, var_im)
