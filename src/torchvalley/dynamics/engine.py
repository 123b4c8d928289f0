"""The splitting engine: a step's operator letters as one program, run chunk by chunk.

A step of a scheme (the owed tail of step ``k-1`` and the head of step ``k``, see
:mod:`.langevin`) is compiled into a *program*: one :class:`Op` per letter with its
coefficients folded (``A``: ``theta += (h/m) p``; ``B``: ``p += (-h) g``; ``O``/``F``:
``p = a p + s R``; ``C``: ``p *= exp(-xi h)``; ``D``: ``p += s R``; SGLD's ``G``:
``theta += (-h) g`` and ``N``: ``theta += s R``), cut into *segments* at the
thermostat letters ``E``, which need every momentum of the group (a reduction).

:func:`run_segment` applies a segment to each tensor in chunks of :data:`CHUNK` elements per
intra-op thread (a multiple of the noise block size, so a chunk draws whole noise blocks): every
letter of the segment runs on a chunk while it is in cache, and the noise of a chunk is drawn
into one scratch buffer (:meth:`~torchvalley.CounterNoise.gaussian_`) instead of a fresh tensor
per parameter.
Against one ``torch._foreach_*`` pass per letter over freshly allocated noise this saves most
memory traffic and all page faults of the noise; the operations, their order and the noise are
the reference's (:func:`run_reference`, :mod:`.operators`), so the numbers are equal: bitwise
for float64 on one thread (intra-op threads may split a chunk at other points than a whole
tensor, which moves FMA-contracted remainders), and for float32 up to the rounding of
:func:`fold`, which merges adjacent kicks and folds ``O`` into one pass (a few ulp).

Small tensors (under :data:`SMALL` elements), and tensors that are not contiguous, not on the
CPU, not float32/float64 (real or complex), or whose gradient or momentum is not contiguous take
the reference's operations, one foreach call per letter for all of them, with allocated draws.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from torchvalley.dynamics import operators as ops
from torchvalley.noise import CounterNoise
from torchvalley.sharding import local_shard

__all__ = [
    "CHUNK",
    "SGLD",
    "SLOTS",
    "SMALL",
    "Op",
    "fold",
    "program",
    "run_reference",
    "run_segment",
    "segments",
    "thermostat",
]

#: elements per chunk and intra-op thread (4 noise blocks of 2**16; 1 MiB of float32 per operand)
CHUNK = 1 << 18
#: noise step key = SLOTS * step + slot; schemes have at most SLOTS letters
SLOTS = 16


# bf16/fp16 elementwise kernels round differently at vector remainders (chunk boundaries)
_CHUNKED_DTYPES = (torch.float32, torch.float64)
#: tensors with fewer elements take one foreach call per letter together (Python overhead)
SMALL = 1 << 14


class Op(NamedTuple):
    """One letter with folded coefficients: ``p = a p + s R`` and friends (see module doc)."""

    letter: str
    a: Any = 0.0  # A: h/m; B, G: -h; O/F: the friction factor; C, E: h
    s: float = 0.0  # the noise scale of O/F/D (0: no draw)
    key: int = 0  # the noise step key of O/F/D


def program(items: Sequence[tuple], h: float, k: int, group: Mapping[str, Any]) -> list[Op]:
    """The :class:`Op` list of ``items`` (``(letter, fraction, slot)``) at step ``k``, lr ``h``."""
    m, tau, gamma = group["mass"], group["temperature"], group["friction"]
    if group["dynamics"] == "overdamped":
        gamma = math.inf
    result = []
    for letter, fraction, slot in items:
        hh, key = h * fraction, SLOTS * k + slot
        if letter == "A":
            result.append(Op("A", hh / m))
        elif letter == "B":
            result.append(Op("B", -hh))
        elif letter == "O":
            c = ops.ou_coefficient(gamma, hh)
            result.append(Op("O", c, math.sqrt(max(1.0 - c * c, 0.0) * m * tau), key))
        elif letter == "F":
            result.append(Op("O", 1.0 - gamma * hh, math.sqrt(2.0 * gamma * hh * m * tau), key))
        elif letter == "D":
            result.append(Op("D", 0.0, group["noise_scale"] * math.sqrt(hh), key))
        elif letter == "G":
            result.append(Op("G", -hh))
        elif letter == "N":
            result.append(Op("N", 0.0, math.sqrt(2.0 * hh * tau), key))
        else:  # "C", "E": the thermostat's, resolved when the segment runs
            result.append(Op(letter, hh))
    return result


#: SGLD as a scheme of the engine's own letters: ``G`` (``theta -= h g``) and ``N``
#: (``theta += sqrt(2 h tau) R``, noise slot 0)
SGLD = (("G", 1.0, 0), ("N", 1.0, 0))


def segments(prog: list[Op]) -> list[list[Op] | Op]:
    """``prog`` cut at its ``E`` letters: runs of chunkable ops, and the ``E`` ops alone."""
    result: list[list[Op] | Op] = [[]]
    for op in prog:
        if op.letter == "E":
            result += [op, []]
        else:
            result[-1].append(op)  # type: ignore[union-attr]
    return [part for part in result if part != []]


def run_segment(
    segment: list[Op],
    tensors: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]],
    noise: CounterNoise,
    scratch: dict[torch.dtype, torch.Tensor],
    xi: torch.Tensor | None = None,
) -> None:
    """Apply ``segment`` to every ``(theta, p, g, index)``, chunk by chunk where possible.

    ``scratch`` holds the reusable noise buffers (created here, one per dtype); ``xi`` is the
    group's thermostat (for ``C``).
    """
    # C multiplies by exp(-xi h) with xi as the segment starts (after the preceding E)
    ops_ = [Op("M", torch.exp(xi * -op.a)) if op.letter == "C" else op for op in segment]
    folded = fold(ops_)
    # CHUNK elements per intra-op thread: each op is one parallel region, whose fixed cost
    # (a barrier) must stay small against the work of each thread
    step = CHUNK * max(1, torch.get_num_threads())
    batch = []  # small or unchunkable tensors: one foreach call per letter for all of them
    shards = []  # (offset, full numel) of each batched tensor's elements in its parameter
    for theta, p, g, index in tensors:
        n = offset = 0
        shard = local_shard(theta)
        if shard is not None:  # FSDP2: this rank's rows, drawing the full parameter's noise
            theta, offset, n = shard
            p, g = p.to_local(), g.to_local()
        n = n or theta.numel()
        if (
            n < SMALL
            or theta.device.type != "cpu"
            or theta.dtype not in _CHUNKED_DTYPES
            or not (theta.is_contiguous() and p.is_contiguous() and g.is_contiguous())
        ):
            batch.append((theta, p, g, index))
            shards.append((offset, n))
            continue
        flat = theta.view(-1), p.view(-1), g.view(-1)
        chunk_ops = folded if theta.dtype == torch.float32 else ops_
        for start in range(0, theta.numel(), step):
            size = min(step, theta.numel() - start)
            chunk = [[t[start : start + size]] for t in flat]
            draw = functools.partial(
                _chunk_noise, noise, scratch, theta.dtype, index, offset + start, n, size
            )
            _apply(chunk_ops, *chunk, draw)
    if batch:
        thetas, momenta, grads, indices = (list(column) for column in zip(*batch, strict=True))
        draw = functools.partial(_whole, noise, thetas, indices, shards=shards)
        _apply(ops_, thetas, momenta, grads, draw)


def fold(ops_: list[Op]) -> list[Op]:
    """The float32 program with fewer passes: adjacent kicks merged into one
    (``p += (a1 + a2) g``: the owed tail kick and the new half kick share the gradient), and
    ``O`` as one pass ``p = c p + (s R)`` over noise drawn already scaled (``Q``). Equal to
    ``ops_`` up to rounding: each changes which product is rounded before an FMA (an ulp)."""
    result: list[Op] = []
    for op in ops_:
        if op.letter == "B" and result and result[-1].letter == "B":
            result[-1] = Op("B", result[-1].a + op.a)
        elif op.letter == "O" and op.s:
            result.append(op._replace(letter="Q"))
        else:
            result.append(op)
    return result


def _apply(ops_: list[Op], theta: list, p: list, g: list, draw) -> None:
    """The letters on lists of tensors (or one chunk); ``draw(key[, std])`` gives their noise.

    The same ``torch._foreach_*`` calls as the reference (:func:`run_reference`), so equal
    bitwise per element (``Q`` is :func:`fold`'s one-pass ``O``).
    """
    for op in ops_:
        letter = op.letter
        if letter == "A":
            torch._foreach_add_(theta, p, alpha=op.a)  # theta += (h/m) p
        elif letter == "B":
            torch._foreach_add_(p, g, alpha=op.a)  # p -= h g
        elif letter == "Q":  # p = (s R) + c p in one pass, the noise drawn scaled by s
            for noise, q in zip(draw(op.key, op.s), p, strict=True):
                torch.add(noise, q, alpha=op.a, out=q)
        elif letter == "O":
            torch._foreach_mul_(p, op.a)  # p = c p ...
            if op.s:
                torch._foreach_add_(p, draw(op.key), alpha=op.s)  # ... + s R
        elif letter == "D":
            if op.s:
                torch._foreach_add_(p, draw(op.key), alpha=op.s)  # p += sigma sqrt(h) R
        elif letter == "G":
            torch._foreach_add_(theta, g, alpha=op.a)  # SGLD: theta -= h g ...
        elif letter == "N":
            if op.s:
                torch._foreach_add_(theta, draw(op.key), alpha=op.s)  # ... + sqrt(2 h tau) R
        else:  # "M": the thermostat friction factor exp(-xi h), a 0-dim tensor
            torch._foreach_mul_(p, op.a)


def _whole(
    noise: CounterNoise,
    thetas: list[torch.Tensor],
    indices: list[int],
    key: int,
    *,
    shards: list[tuple[int, int]] | None = None,
) -> list[torch.Tensor]:
    """The draws of whole tensors, allocated (the reference's); ``shards``: where each tensor's
    elements sit in its full parameter (a shard's noise is the full draw's slice)."""
    shards = shards or [(0, t.numel()) for t in thetas]
    return [
        noise.gaussian(
            t, step=key, index=i, offset=o, numel_total=n or t.numel(), dtype=torch.float32
        ).to(t.dtype)
        for t, i, (o, n) in zip(thetas, indices, shards, strict=True)
    ]


def _chunk_noise(
    noise: CounterNoise,
    scratch: dict[torch.dtype, torch.Tensor],
    dtype: torch.dtype,
    index: int,
    start: int,
    numel: int,
    size: int,
    key: int,
    std: float = 1.0,
) -> torch.Tensor:
    """Elements ``[start, start + size)`` of the tensor's draw (times ``std``), in a reused
    scratch buffer."""
    buffer = scratch_buffer(scratch, torch.float32, size)
    noise._fill(buffer, noise._key(key, index), start, numel, std)  # gaussian_, unchecked
    if dtype == torch.float32:
        return [buffer]
    return [scratch_buffer(scratch, dtype, size).copy_(buffer)]  # the reference's cast


def scratch_buffer(buffers: dict[torch.dtype, torch.Tensor], dtype: torch.dtype, n: int) -> Any:
    """``n`` elements of the reused buffer of ``dtype`` in ``buffers`` (grown when too small)."""
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < n:
        buffer = buffers[dtype] = torch.empty(max(n, 1024), dtype=dtype)
    return buffer[:n]


def run_reference(
    passes: Sequence[tuple[Sequence[tuple], float, int]],
    params: list[torch.Tensor],
    momenta: list[torch.Tensor],
    grads: list[torch.Tensor],
    indices: list[int],
    noise: CounterNoise,
    xi: torch.Tensor | None,
    group: Mapping[str, Any],
) -> None:
    """The reference: each letter of ``passes`` (``(items, h, k)``: the owed tail, the head) as
    one :mod:`.operators` call over all tensors, with freshly drawn noise. The chunked path
    (:func:`program`, :func:`run_segment`) is tested against it; SGLD's letters are ``G N``
    (:func:`sgld_program`)."""

    def draw(key: int) -> list[torch.Tensor]:
        return _whole(noise, params, indices, key)

    m, tau, gamma = group["mass"], group["temperature"], group["friction"]
    if group["dynamics"] == "overdamped":
        gamma = math.inf
    for items, h, k in passes:
        for letter, fraction, slot in items:
            hh, key = h * fraction, SLOTS * k + slot
            if letter == "G":  # sgld: theta -= h g ...
                torch._foreach_add_(params, grads, alpha=-hh)
            elif letter == "N":  # ... + sqrt(2 h tau) R
                if math.sqrt(2.0 * hh * tau):
                    torch._foreach_add_(params, draw(key), alpha=math.sqrt(2.0 * hh * tau))
            elif letter == "A":
                ops.drift(params, momenta, hh, m)
            elif letter == "B":
                ops.kick(momenta, grads, hh)
            elif letter == "O":
                c = ops.ou_coefficient(gamma, hh)
                ops.ornstein_uhlenbeck(momenta, draw(key) if tau else [], c, m, tau)
            elif letter == "F":
                ops.euler_ou(momenta, draw(key) if tau else [], gamma, hh, m, tau)
            elif letter == "C":
                ops.thermostat_friction(momenta, xi, hh)
            elif letter == "D":
                sigma = group["noise_scale"]
                ops.additive_noise(momenta, draw(key) if sigma else [], sigma, hh)
            else:  # "E"
                n = sum(p.numel() for p in params)
                ops.thermostat_update(xi, momenta, group["thermostat_coupling"], hh, m, tau, n)


def thermostat(op: Op, momenta: list[torch.Tensor], xi: Any, group: Mapping, numel: int) -> None:
    """``E``: ``xi += eps h (sum(p**2)/m - N tau)`` (:func:`.operators.thermostat_update`)."""
    coupling, m, tau = group["thermostat_coupling"], group["mass"], group["temperature"]
    ops.thermostat_update(xi, momenta, coupling, op.a, m, tau, numel)
