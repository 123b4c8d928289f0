"""Small helpers for parameters sharded with FSDP2 (``DTensor``), shared by the optimizers.

torch 2.13 has no DTensor sharding rule for ``torch._foreach_copy_``, and a counter-based noise
draw must know where a shard sits in its full parameter to draw the same numbers as one
process. Both are answered here, without importing ``torch.distributed`` for plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["foreach_copy_", "is_dtensor", "local_shard"]


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (FSDP2's parameters)."""
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


def foreach_copy_(destinations: Sequence[torch.Tensor], sources: Sequence[torch.Tensor]) -> None:
    """``torch._foreach_copy_``, or one ``copy_`` per tensor where DTensors are involved."""
    if any(map(is_dtensor, destinations)) or any(map(is_dtensor, sources)):
        for destination, source in zip(destinations, sources, strict=True):
            destination.copy_(source)
    else:
        torch._foreach_copy_(list(destinations), list(sources))


def local_shard(tensor: torch.Tensor) -> tuple[torch.Tensor, int, int] | None:
    """``(local tensor, flat offset, full numel)`` of a DTensor sharded along dim 0 only (FSDP2),
    ``None`` for a plain tensor: the local elements are elements ``[offset, offset + n)`` of the
    flattened full tensor.

    Raises:
        NotImplementedError: for other placements (the local part is not one flat range).
    """
    if not is_dtensor(tensor):
        return None
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape = tuple(tensor.shape)
    local_shape, offset = compute_local_shape_and_global_offset(
        tensor.shape, tensor.device_mesh, tensor.placements
    )
    placements_ok = all(
        isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0) for p in tensor.placements
    )
    if not placements_ok or tuple(local_shape[1:]) != shape[1:]:
        raise NotImplementedError(
            f"a DTensor with placements {tensor.placements} is not one flat range of its "
            "parameter; only dim-0 sharding (FSDP2's fully_shard) is supported"
        )
    row = math.prod(shape[1:])
    return tensor.to_local(), int(offset[0]) * row if shape else 0, tensor.numel()
