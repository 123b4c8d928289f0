"""Tests for torchvalley.noise.CounterNoise: determinism, sharding, statistics, processes, state."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import subprocess
import sys

import pytest
import torch

from torchvalley.noise import DEFAULT_BLOCK_SIZE, CounterNoise, splitmix64

B = DEFAULT_BLOCK_SIZE


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_splitmix64_reference_values() -> None:
    # First outputs of the SplitMix64 generator seeded with 0 (state advanced by the constant).
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_same_key_is_bitwise_identical() -> None:
    noise = CounterNoise(3)
    a = noise.gaussian((7, 11, 3), step=5, index=2)
    b = CounterNoise(3).gaussian((7, 11, 3), step=5, index=2)
    assert a.shape == (7, 11, 3) and a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("seed", "step", "index"), [(1, 0, 0), (0, 1, 0), (0, 0, 1), (2**63, 0, 0), (0, 2**40, 3)]
)
def test_different_keys_are_uncorrelated(seed: int, step: int, index: int) -> None:
    n = 2 * B + 123
    ref = CounterNoise(0).gaussian(n, step=0, index=0)
    other = CounterNoise(seed).gaussian(n, step=step, index=index)
    assert not torch.equal(ref, other)
    assert abs(_corr(ref, other)) < 4 / math.sqrt(n)


def test_blocks_are_uncorrelated() -> None:
    x = CounterNoise(11).gaussian(4 * B, step=0, index=0).view(4, B)
    for i in range(3):
        assert abs(_corr(x[i], x[i + 1])) < 4 / math.sqrt(B)


def test_independent_of_global_rng() -> None:
    noise = CounterNoise(42)
    torch.manual_seed(0)
    a = noise.gaussian(B + 5, step=9, index=1)
    torch.manual_seed(12345)
    torch.randn(1000)
    b = noise.gaussian(B + 5, step=9, index=1)
    state = torch.get_rng_state()
    noise.gaussian(100, step=0, index=0)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not advanced


def test_tensor_argument_and_gaussian_like() -> None:
    noise = CounterNoise(5)
    params = [torch.zeros(3, 4), torch.zeros(B + 1, dtype=torch.float64), torch.zeros(2)]
    out = noise.gaussian_like(params, step=2, indices=[10, 11, 12])
    for p, z, i in zip(params, out, [10, 11, 12], strict=True):
        assert z.shape == p.shape and z.dtype == p.dtype
        assert torch.equal(z, noise.gaussian(p.shape, step=2, index=i, dtype=p.dtype))
    default = noise.gaussian_like(params, step=2)
    assert torch.equal(default[2], noise.gaussian(2, step=2, index=2))


@pytest.mark.parametrize("numel_total", [1, 15, 17, 1000, B, B + 1, 3 * B + 777])
def test_random_sharding_equals_full_draw(numel_total: int) -> None:
    noise = CounterNoise(7)
    full = noise.gaussian(numel_total, step=3, index=4)
    rng = torch.Generator().manual_seed(numel_total)
    for _ in range(5):
        k = int(torch.randint(0, min(numel_total, 6), (1,), generator=rng)) + 1
        cuts = torch.randperm(numel_total - 1, generator=rng)[: k - 1] + 1
        bounds = [0, *sorted(int(c) for c in cuts), numel_total]
        shards = [
            noise.gaussian(hi - lo, step=3, index=4, offset=lo, numel_total=numel_total)
            for lo, hi in itertools.pairwise(bounds)
        ]
        assert torch.equal(torch.cat(shards), full)


def test_shards_crossing_block_boundaries() -> None:
    noise = CounterNoise(8, block_size=1000)
    total = 5321
    full = noise.gaussian(total, step=1, index=0)
    for lo, hi in [(999, 1001), (500, 3500), (0, 1000), (1000, 2000), (4999, 5321), (5000, 5321)]:
        shard = noise.gaussian(hi - lo, step=1, index=0, offset=lo, numel_total=total)
        assert torch.equal(shard, full[lo:hi])
    half = noise.gaussian((4, 5), step=1, index=0, offset=100, numel_total=total)
    assert torch.equal(half.flatten(), full[100:120])


def test_dtypes() -> None:
    noise = CounterNoise(1)
    f32 = noise.gaussian(B + 3, step=0, index=0)
    f64 = noise.gaussian(B + 3, step=0, index=0, dtype=torch.float64)
    bf16 = noise.gaussian(B + 3, step=0, index=0, dtype=torch.bfloat16)
    assert f64.dtype == torch.float64 and bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, f32.to(torch.bfloat16))
    shard64 = noise.gaussian(8, step=0, index=0, offset=B - 5, numel_total=B + 3, dtype=f64.dtype)
    assert torch.equal(shard64, f64[B - 5 : B + 3])
    assert abs(float(f64.mean())) < 4 / math.sqrt(B + 3)


def test_normal_moments_and_ks() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    n = 10**6
    x = CounterNoise(2024).gaussian(n, step=17, index=3).double()
    mean, var = float(x.mean()), float(x.var())
    assert abs(mean) < 4 / math.sqrt(n)  # SE of the mean: 1/sqrt(n)
    assert abs(var - 1) < 4 * math.sqrt(2 / n)  # SE of the variance of N(0,1): sqrt(2/n)
    # Kolmogorov: P(sqrt(n) D > 1.95) ~= 0.001, so D < 1.95/sqrt(n) (~0.002 at n=1e6) is a
    # fixed-seed test at the 0.1 % level; a biased sampler (e.g. 1 % scale error) gives D ~ 0.004.
    result = scipy_stats.kstest(x.numpy(), "norm")
    assert result.statistic < 1.95 / math.sqrt(n)


_CHILD = """
import hashlib, sys, torch
torch.manual_seed(int(sys.argv[1]))
torch.randn(int(sys.argv[1]) % 97 + 1)
from torchvalley.noise import CounterNoise
z = CounterNoise(99).gaussian(70000, step=12, index=5)
print(hashlib.sha256(z.numpy().tobytes()).hexdigest())
"""


def test_two_processes_draw_identical_noise() -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(seed)], stdout=subprocess.PIPE, text=True
        )
        for seed in (1, 777)
    ]
    digests = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        digests.append(out.strip())
    here = CounterNoise(99).gaussian(70000, step=12, index=5)
    assert digests[0] == digests[1] == hashlib.sha256(here.numpy().tobytes()).hexdigest()


def test_state_dict_round_trip_weights_only() -> None:
    noise = CounterNoise(2**64 - 1, block_size=4096)
    buffer = io.BytesIO()
    torch.save({"noise": noise.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["noise"]
    assert state == {"seed": 2**64 - 1, "block_size": 4096, "version": 1}
    restored = CounterNoise(0)
    restored.load_state_dict(state)
    assert restored.seed == noise.seed and restored.block_size == 4096
    assert torch.equal(
        restored.gaussian(9000, step=4, index=1), noise.gaussian(9000, step=4, index=1)
    )
    with pytest.raises(ValueError, match="lacks"):
        restored.load_state_dict({"seed": 1})
    with pytest.raises(ValueError, match="version"):
        restored.load_state_dict({"seed": 1, "block_size": 8, "version": 2})


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, "3", True, None])
def test_bad_seed(bad: object) -> None:
    with pytest.raises(ValueError):
        CounterNoise(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, True, "0"])
def test_bad_step_and_index(bad: object) -> None:
    noise = CounterNoise(0)
    with pytest.raises(ValueError):
        noise.gaussian(3, step=bad, index=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        noise.gaussian(3, step=0, index=bad)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    noise = CounterNoise(0)
    with pytest.raises(ValueError, match="block_size"):
        CounterNoise(0, block_size=0)
    with pytest.raises(ValueError, match="numel_total is required"):
        noise.gaussian(3, step=0, index=0, offset=2)
    with pytest.raises(ValueError, match="exceeds"):
        noise.gaussian(3, step=0, index=0, offset=2, numel_total=4)
    with pytest.raises(ValueError, match="offset"):
        noise.gaussian(3, step=0, index=0, offset=-1, numel_total=4)
    with pytest.raises(ValueError, match="dtype"):
        noise.gaussian(3, step=0, index=0, dtype=torch.int64)
    with pytest.raises(ValueError, match="shape"):
        noise.gaussian((2, -1), step=0, index=0)
    with pytest.raises(ValueError, match="indices"):
        noise.gaussian_like([torch.zeros(2)], step=0, indices=[0, 1])
    assert noise.gaussian(0, step=0, index=0).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fill_in_place_equals_the_allocating_draw(dtype: torch.dtype) -> None:
    noise = CounterNoise(11, block_size=64)
    total = 1000
    full = noise.gaussian(total, step=4, index=9, dtype=dtype)
    buffer = torch.full((total,), math.nan, dtype=dtype)
    assert noise.gaussian_(buffer, step=4, index=9) is buffer
    assert torch.equal(buffer, full)
    for offset, n in ((0, 128), (128, 256), (100, 37), (960, 40)):  # aligned and unaligned
        shard = torch.empty(n, dtype=dtype)
        noise.gaussian_(shard, step=4, index=9, offset=offset, numel_total=total)
        assert torch.equal(shard, full[offset : offset + n]), (offset, n)
    with pytest.raises(ValueError, match="float32/float64 CPU"):
        noise.gaussian_(torch.empty(3, dtype=torch.float16), step=0, index=0)
    with pytest.raises(ValueError, match="contiguous"):
        noise.gaussian_(torch.empty(4, 4).t(), step=0, index=0)
    with pytest.raises(ValueError, match="exceeds numel_total"):
        noise.gaussian_(torch.empty(5), step=0, index=0, offset=3, numel_total=7)
