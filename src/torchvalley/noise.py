"""Counter-based Gaussian noise for Langevin optimizers, identical on every (DDP/FSDP) rank.

Why: under ``DistributedDataParallel`` every rank runs ``optimizer.step()`` on its own, so noise
drawn inside ``step()`` must be bit-identical on all ranks, or the replicas drift apart silently.
Training codes often seed the global RNG per rank (``seed + rank``), so the default generator
cannot be used. Sharded optimizers (FSDP/ZeRO) also break "one generator advanced identically",
because each rank draws only its shard. :class:`CounterNoise` therefore makes the noise a *pure
function* of ``(seed, step, index, element position)``: no generator state is carried from one
call to the next, the global RNG is neither read nor advanced, and any shard of a parameter can
draw exactly the numbers of the corresponding slice of the full draw.

Stream definition (version 1; changing any item changes the numbers):

* ``mix(z)`` is the SplitMix64 finalizer on 64-bit unsigned integers
  (``z += 0x9E3779B97F4A7C15``; ``z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9``;
  ``z = (z ^ z >> 27) * 0x94D049BB133111EB``; ``z ^= z >> 31``, all modulo ``2**64``).
* Parameter key: ``h = mix(mix(mix(seed) ^ step) ^ index)``. ``seed``, ``step`` and ``index`` are
  integers in ``[0, 2**64)``; ``index`` should be a *global* parameter id (the same on every
  rank, e.g. the position of the parameter in the unsharded model).
* A parameter of ``N`` elements (flattened, row-major) is cut into blocks of ``B = block_size``
  elements (default ``2**16``); block ``b`` covers ``[b*B, min((b+1)*B, N))``.
* Block key: ``k = mix(h ^ b)``, folded to 32 bits: ``k32 = (k ^ (k >> 32)) & 0xFFFFFFFF``.
* Block values: ``torch.randn(len_b, generator=g, dtype=D)`` with ``g`` a fresh CPU
  ``torch.Generator`` after ``g.manual_seed(k32)``, where ``D`` is ``float64`` when float64 is
  requested and ``float32`` otherwise. float64 noise is therefore a *different* stream from
  float32 noise (same keys, torch's double-precision sampler); ``float16``/``bfloat16`` noise is
  the float32 stream rounded to that dtype.
* The samples are produced on the CPU and then moved to the requested device, so the numbers do
  not depend on the device: CUDA tensors receive the CPU stream (at the cost of a host-to-device
  copy per call).

Sharding: a shard ``[offset, offset + n)`` of a parameter with ``numel_total`` elements draws only
the blocks it overlaps and slices them, so it equals ``full.flatten()[offset:offset + n]``
bitwise for any shard boundaries (the block lengths depend on ``numel_total``, never on the
shard). Backends:

* DDP / single process / any number of processes: call :meth:`CounterNoise.gaussian` (or
  :meth:`CounterNoise.gaussian_like`) with the full parameter; every rank gets the same numbers.
* FSDP / ZeRO (flat-parameter shards): pass ``offset`` and ``numel_total`` of the rank's slice of
  the flattened *original* parameter, and the parameter's global ``index``. Shards made of
  several parameters (FSDP's ``FlatParameter``) draw one slice per original parameter. Padding
  elements are not part of any parameter and must be filled by the caller.
* CUDA: supported by drawing on the CPU and copying (tested only on CPU here). A native option
  would be CUDA's Philox generator, which supports seeking with ``Generator.set_offset``; it
  would define a different stream and is not implemented.

Why blocks: the CPU generator is an mt19937 with no cheap skip-ahead (``set_offset`` raises for
it), so reaching element ``offset`` of one long stream would cost drawing all elements before
it. Re-seeding costs about 1 µs while drawing a block of ``2**16`` float32 normals costs about
150 µs, so per-block seeding is below 1 % overhead and throughput matches ``torch.randn``
(see ``benchmarks/noise_throughput.py``); a shard wastes at most two partial blocks.

Limits (documented, not hidden):

* torch's CPU mt19937 uses only the low 32 bits of its seed, so distinct
  ``(seed, step, index, block)`` tuples map to ``2**32`` possible block streams. Because the
  keys pass through a 64-bit mixer the collisions are pseudo-random (birthday bound: about
  ``K**2 / 2**33`` identical block pairs among ``K`` block draws, e.g. ~0.2 pairs for
  ``K = 4e4``), never systematic aliasing such as ``seed + step == seed' + step'``.
* Bitwise identity across processes assumes the same torch build and CPU capability
  (torch's vectorized normal sampler may take a different code path on AVX2 vs AVX-512 vs
  scalar CPUs); DDP ranks normally share both.

State: the object holds only ``seed`` and ``block_size``; :meth:`CounterNoise.state_dict` returns
plain ints, safe for ``torch.load(weights_only=True)``. The step counter belongs to the caller
(the optimizer), which saves it in its own state.

Example:
    >>> noise = CounterNoise(seed=1234)
    >>> z = noise.gaussian((3, 4), step=0, index=7)
    >>> shard = noise.gaussian(5, step=0, index=7, offset=4, numel_total=12)
    >>> bool(torch.equal(shard, z.flatten()[4:9]))
    True
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["DEFAULT_BLOCK_SIZE", "STREAM_VERSION", "CounterNoise", "splitmix64"]

STREAM_VERSION = 1
DEFAULT_BLOCK_SIZE = 2**16
_MASK64 = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """SplitMix64 finalizer: a bijective, well-mixing map of 64-bit unsigned integers.

    Args:
        z: an integer; only its low 64 bits are used.

    Returns:
        The mixed value in ``[0, 2**64)``.
    """
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _check_shard(offset: int, n: int, numel_total: int | None) -> tuple[int, int]:
    """Validate a shard ``[offset, offset + n)`` of a ``numel_total``-element tensor."""
    offset = _check_uint("offset", offset, 1 << 63)
    if numel_total is None:
        if offset != 0:
            raise ValueError("numel_total is required when offset != 0 (sharded draw)")
        numel_total = n
    numel_total = _check_uint("numel_total", numel_total, 1 << 63)
    if offset + n > numel_total:
        raise ValueError(f"shard [{offset}, {offset + n}) exceeds numel_total={numel_total}")
    return offset, numel_total


def _check_uint(name: str, value: Any, upper: int = 1 << 64) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got bool {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    if not 0 <= result < upper:
        raise ValueError(f"{name} must be in [0, {upper}), got {result}")
    return result


def _shape_of(shape: int | Sequence[int] | torch.Size) -> tuple[int, ...]:
    if isinstance(shape, bool):
        raise ValueError(f"shape must be an int or a sequence of ints, got {shape!r}")
    if isinstance(shape, int):
        shape = (shape,)
    dims = tuple(_check_uint("shape entry", d, 1 << 63) for d in shape)
    return dims


class CounterNoise:
    """Stateless, counter-based N(0, 1) noise keyed by ``(seed, step, index, element)``.

    See the module docstring for the exact stream definition, the sharding contract and the
    limits.

    Args:
        seed: base seed, an integer in ``[0, 2**64)``.
        block_size: elements per independently seeded block (part of the stream definition:
            changing it changes the numbers). Default ``2**16``.

    Raises:
        ValueError: if ``seed`` or ``block_size`` is not a valid integer.
    """

    def __init__(self, seed: int, *, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self._seed = _check_uint("seed", seed)
        self._block_size = _check_uint("block_size", block_size, 1 << 62)
        if self._block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self._seed_key = splitmix64(self._seed)

    @property
    def seed(self) -> int:
        """The base seed."""
        return self._seed

    @property
    def block_size(self) -> int:
        """Elements per independently seeded block."""
        return self._block_size

    def __repr__(self) -> str:
        return f"CounterNoise(seed={self._seed}, block_size={self._block_size})"

    def parameter_key(self, *, step: int, index: int) -> int:
        """The 64-bit key ``h = mix(mix(mix(seed) ^ step) ^ index)`` of one parameter draw.

        Args:
            step: optimizer step, in ``[0, 2**64)``.
            index: global parameter id, in ``[0, 2**64)``.

        Returns:
            The key in ``[0, 2**64)``.

        Raises:
            ValueError: for negative, too large or non-integer ``step`` or ``index``.
        """
        return self._key(_check_uint("step", step), _check_uint("index", index))

    def _key(self, step: int, index: int) -> int:
        """:meth:`parameter_key` without the checks (callers that made the keys themselves)."""
        return splitmix64(splitmix64(self._seed_key ^ step) ^ index)

    @staticmethod
    def block_seed(parameter_key: int, block: int) -> int:
        """The 32-bit generator seed of block ``block``: ``k = mix(h ^ block)`` folded.

        Args:
            parameter_key: the key from :meth:`parameter_key`.
            block: block number (element ``e`` lies in block ``e // block_size``).

        Returns:
            ``(k ^ (k >> 32)) & 0xFFFFFFFF``.
        """
        k = splitmix64(parameter_key ^ block)
        return (k ^ (k >> 32)) & 0xFFFFFFFF

    def gaussian(
        self,
        shape_or_tensor: int | Sequence[int] | torch.Size | torch.Tensor,
        *,
        step: int,
        index: int,
        offset: int = 0,
        numel_total: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw N(0, 1) samples for elements ``[offset, offset + n)`` of parameter ``index``.

        Args:
            shape_or_tensor: output shape (int or sequence), or a tensor whose shape (and, by
                default, dtype and device) the output takes. ``n`` is the product of the
                shape; the elements are filled in row-major order.
            step: optimizer step, in ``[0, 2**64)``.
            index: global parameter id (the same on every rank), in ``[0, 2**64)``.
            offset: position of the first element in the flattened full parameter.
            numel_total: number of elements of the full parameter. Required when
                ``offset != 0``; defaults to ``n`` otherwise.
            dtype: floating dtype of the output (default: the tensor's dtype, else float32).
                float64 uses torch's double-precision sampler (a different stream); other
                dtypes receive the float32 stream, rounded.
            device: output device (default: the tensor's device, else CPU). The samples are
                drawn on the CPU and copied, so they do not depend on the device.

        Returns:
            A tensor of the requested shape, dtype and device, equal bitwise to
            ``full.flatten()[offset:offset + n]`` where ``full`` is the draw of the whole
            parameter with the same ``(seed, step, index)``.

        Raises:
            ValueError: for invalid step, index, offset, numel_total, shape or dtype.
        """
        if isinstance(shape_or_tensor, torch.Tensor):
            shape = tuple(shape_or_tensor.shape)
            dtype = shape_or_tensor.dtype if dtype is None else dtype
            device = shape_or_tensor.device if device is None else device
        else:
            shape = _shape_of(shape_or_tensor)
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a real floating dtype, got {dtype!r}")
        n = math.prod(shape)
        offset, numel_total = _check_shard(offset, n, numel_total)
        key = self.parameter_key(step=step, index=index)
        draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        flat = self._draw(key, offset, n, numel_total, draw_dtype)
        out = flat.view(shape)
        if dtype != draw_dtype:
            out = out.to(dtype)
        if device is not None and torch.device(device) != out.device:
            out = out.to(device)
        return out

    def gaussian_(
        self,
        out: torch.Tensor,
        *,
        step: int,
        index: int,
        offset: int = 0,
        numel_total: int | None = None,
        std: float = 1.0,
    ) -> torch.Tensor:
        """Fill ``out`` in place with the draw :meth:`gaussian` would return for its shape.

        The allocation-free form for callers that reuse a buffer (the Langevin samplers draw
        each chunk of a parameter into one scratch buffer): a fresh tensor per draw costs page
        faults that can exceed the sampling itself.

        Args:
            out: a contiguous CPU tensor of dtype float32 or float64 (the two streams).
            step: optimizer step, in ``[0, 2**64)``.
            index: global parameter id, in ``[0, 2**64)``.
            offset: position of ``out``'s first element in the flattened full parameter.
            numel_total: elements of the full parameter (default ``offset + out.numel()``
                when ``offset == 0``).
            std: scale the samples inside the sampler (``normal_(0, std)``: each value is
                ``std * z`` rounded once, at no extra pass over ``out``).

        Returns:
            ``out``, equal bitwise to ``gaussian(out.shape, step=step, index=index,
            offset=offset, numel_total=numel_total, dtype=out.dtype)`` (times ``std``).

        Raises:
            ValueError: for an unsupported ``out`` or invalid keys, offset or numel_total.
        """
        if out.dtype not in (torch.float32, torch.float64) or out.device.type != "cpu":
            raise ValueError(
                f"out must be a float32/float64 CPU tensor, got {out.dtype} {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")
        n = out.numel()
        offset, numel_total = _check_shard(offset, n, numel_total)
        key = self.parameter_key(step=step, index=index)
        self._fill(out.view(-1), key, offset, numel_total, float(std))
        return out

    def gaussian_like(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        step: int,
        indices: Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[torch.Tensor]:
        """Full draws shaped like each tensor (one call per optimizer step, foreach-friendly).

        Args:
            tensors: the parameters (or any tensors); each output has its shape, device and
                (unless ``dtype`` is given) dtype.
            step: optimizer step, in ``[0, 2**64)``.
            indices: global parameter ids, one per tensor (default ``0, 1, ...``).
            dtype: optional floating dtype for every output.

        Returns:
            ``[gaussian(t, step=step, index=i, dtype=dtype) for t, i in zip(tensors, indices)]``.

        Raises:
            ValueError: if ``indices`` has the wrong length or invalid entries.
        """
        tensors = list(tensors)
        indices = list(range(len(tensors))) if indices is None else list(indices)
        if len(indices) != len(tensors):
            raise ValueError(f"got {len(indices)} indices for {len(tensors)} tensors")
        return [
            self.gaussian(t, step=step, index=i, dtype=dtype)
            for t, i in zip(tensors, indices, strict=True)
        ]

    def state_dict(self) -> dict[str, int]:
        """The noise source's state: plain ints (``torch.load(weights_only=True)``-safe).

        Returns:
            ``{"seed": ..., "block_size": ..., "version": STREAM_VERSION}``.
        """
        return {"seed": self._seed, "block_size": self._block_size, "version": STREAM_VERSION}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the seed and block size saved by :meth:`state_dict`.

        Args:
            state_dict: a mapping with ``seed``, ``block_size`` and ``version``.

        Raises:
            ValueError: if a key is missing, a value is invalid, or the stream version differs.
        """
        missing = {"seed", "block_size", "version"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        version = _check_uint("version", state_dict["version"])
        if version != STREAM_VERSION:
            raise ValueError(f"stream version {version} is not {STREAM_VERSION}")
        other = CounterNoise(state_dict["seed"], block_size=state_dict["block_size"])
        self._seed, self._block_size, self._seed_key = (
            other._seed,
            other._block_size,
            other._seed_key,
        )

    def _draw(
        self, key: int, offset: int, n: int, numel_total: int, dtype: torch.dtype
    ) -> torch.Tensor:
        return self._fill(torch.empty(n, dtype=dtype), key, offset, numel_total)

    def _fill(
        self, out: torch.Tensor, key: int, offset: int, numel_total: int, std: float = 1.0
    ) -> torch.Tensor:
        n = out.numel()
        if n == 0:
            return out
        size = self._block_size
        end = offset + n
        generator = _generator()  # reseeded for every block: one per thread is enough
        if offset % size == 0 and (end == numel_total or n % size == 0):
            # whole blocks (the common case): one view per block from a single split
            for block, view in enumerate(out.split(size), start=offset // size):
                generator.manual_seed(self.block_seed(key, block))
                view.normal_(0.0, std, generator=generator)
            return out
        for block in range(offset // size, (end - 1) // size + 1):
            start = block * size
            length = min(size, numel_total - start)
            lo, hi = max(offset, start), min(end, start + length)
            generator.manual_seed(self.block_seed(key, block))
            if lo == start and hi == start + length:
                out[lo - offset : hi - offset].normal_(0.0, std, generator=generator)
            else:
                values = torch.empty(length, dtype=out.dtype).normal_(0.0, std, generator=generator)
                out[lo - offset : hi - offset] = values[lo - start : hi - start]
        return out


_LOCAL = threading.local()


def _generator() -> torch.Generator:
    """This thread's CPU generator (creating one costs more than seeding it)."""
    generator = getattr(_LOCAL, "generator", None)
    if generator is None:
        generator = _LOCAL.generator = torch.Generator()
    return generator
