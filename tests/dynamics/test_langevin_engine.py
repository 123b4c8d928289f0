"""The chunked engine (the default path) against the reference: one foreach pass per operator.

The reference (``LangevinSplitting._chunked = False``) applies each letter to every tensor with
``torch._foreach_*`` over freshly drawn noise (:mod:`torchvalley.dynamics.operators`'s order);
the default path runs every letter of a segment on one chunk at a time, with the noise drawn
into a scratch buffer. Same operations, same order, same noise: on one intra-op thread the
trajectories agree bitwise (more threads may split a tensor at other points, moving FMA
remainders by an ulp, so the comparison pins one thread).
"""

from __future__ import annotations

import pytest
import torch

from torchvalley.dynamics import LangevinSplitting, engine

CASES = {
    "baoab": {},
    "obabo": {"scheme": "OBABO"},
    "baoa": {"scheme": "BAOA"},
    "abobab": {"scheme": "BOBAB"},
    "overdamped": {"dynamics": "overdamped"},
    "sghmc": {"dynamics": "sghmc"},
    "sgnht": {"dynamics": "adaptive", "noise_scale": 0.3, "thermostat_coupling": 0.1},
    "sgnht-scheme": {"dynamics": "adaptive", "scheme": "BADCECDAB", "noise_scale": 0.3},
    "sgld": {"dynamics": "sgld"},
    "cold": {"temperature": 0.0},
}


# float32: the fold changes which product is rounded before an FMA. Measured max differences
# over these 6 steps: <= 4.8e-7 absolute (values O(1), a few ulp) for every scheme, and 3.4e-5
# relative for sgnht, whose thermostat feeds the kinetic energy back (it amplifies the ulps).
# A wrong coefficient or noise key moves the numbers by 1e-2 or more.
F32_TOL = {"rtol": 1e-4, "atol": 2e-6}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(5000,), (7, 300), (3,), (1,), (40, 25)]
    values = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    params = [torch.nn.Parameter(v.to(dtype)) for v in values]
    params[4] = torch.nn.Parameter(values[4].to(dtype).t())  # not contiguous: whole-tensor path
    return params


def _trajectory(chunked: bool, dtype: torch.dtype, steps: int = 6, **hp) -> list[torch.Tensor]:
    params = _params(dtype)
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": 0.05}]
    opt = LangevinSplitting(groups, **{"lr": 0.1, "temperature": 0.3, "seed": 7, **hp})
    opt._chunked = chunked
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        for i, p in enumerate(params):
            # p[1] misses its gradient on step 2 (it skips that step and its owed tail)
            skip = i == 1 and k == 2
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad = None if skip else (p.detach() * 0.7 + 0.1 * noise).contiguous()
        opt.step()
    out = [p.detach().clone() for p in params]
    out += [opt.state[p]["momentum"].clone() for p in params if "momentum" in opt.state[p]]
    out += [d[key] for d in opt.diagnostics() for key in sorted(d)]
    return out


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.filterwarnings("ignore::torchvalley.dynamics.NoisePrecisionWarning")
def test_chunked_equals_reference_bitwise(monkeypatch, one_thread, name, dtype) -> None:
    # small, unaligned chunks: several chunks per tensor, shards that cut noise blocks; only
    # the 1- and 3-element tensors (and the non-contiguous one) take the batched foreach path
    monkeypatch.setattr(engine, "CHUNK", 1000)
    monkeypatch.setattr(engine, "SMALL", 100)
    hp = CASES[name]
    fast, ref = _trajectory(True, dtype, **hp), _trajectory(False, dtype, **hp)
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        if dtype == torch.float32:  # engine.fold: merged kicks, O in one pass (an ulp each)
            torch.testing.assert_close(a, b, **F32_TOL)
        else:
            assert torch.equal(a, b), (name, dtype, (a - b).abs().max())


def test_chunked_equals_reference_at_the_default_chunk(one_thread) -> None:
    def run(chunked: bool) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(2)
        p = torch.nn.Parameter(torch.randn(engine.CHUNK + 70_001, generator=gen))
        z = torch.nn.Parameter(torch.randn(300, 11, dtype=torch.complex64, generator=gen))
        opt = LangevinSplitting([p, z], temperature=0.1, scheme="OBABO")
        opt._chunked = chunked
        for _ in range(3):
            p.grad, z.grad = p.detach().clone(), z.detach().clone()
            opt.step()
        return p.detach().clone(), z.detach().clone()

    for a, b in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(a, b, **F32_TOL)


def test_scratch_is_reused_not_reallocated() -> None:
    p = torch.nn.Parameter(torch.zeros(engine.CHUNK * 2 + 5))
    opt = LangevinSplitting([p], temperature=1.0)
    p.grad = torch.zeros_like(p)
    opt.step()
    buffer = opt._scratch[torch.float32]
    # bounded by the chunk (CHUNK elements per intra-op thread), not by the parameter
    assert buffer.numel() == min(p.numel(), engine.CHUNK * torch.get_num_threads())
    opt.step()
    assert opt._scratch[torch.float32] is buffer
