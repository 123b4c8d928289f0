"""Fast/slow partitions for :class:`~torchvalley.optim.Multirate` (Vlaar & Leimkuhler 2022).

The paper's partitions, as helpers returning param groups with a ``"rate"`` key:

* :func:`head_partition`: transfer learning. The head (by default the last module that owns
  parameters, e.g. the final ``nn.Linear``) is fast; the pretrained backbone is slow and needs a
  full backward pass only once every ``k`` steps.
* :func:`bias_partition`: weights vs biases (``fast="biases"`` or ``fast="weights"``).
* :func:`random_fast_mask`: random subgroups of parameter tensors, re-drawn every cycle by the
  wrapper (``partition="random"``) from its own saved generator.

A parameter tensor is the unit of a partition: the backward pass is cut at tensors
(``backward(inputs=...)``), so element-wise subsets would save nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["bias_partition", "head_partition", "owners", "random_fast_mask"]

RATES = ("fast", "slow")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP/DataParallel wrapper (names without the ``module.`` prefix)."""
    return getattr(model, "module", model) if hasattr(model, "no_sync") else model


def owners(model: nn.Module) -> dict[torch.Tensor, str]:
    """Each parameter of ``model`` -> the qualified name of the module that owns it directly."""
    found: dict[torch.Tensor, str] = {}
    for name, module in _unwrap(model).named_modules():
        for p in module.parameters(recurse=False):
            found.setdefault(p, name)
    return found


def head_partition(
    model: nn.Module, head: nn.Module | str | Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Two param groups: the backbone (``rate="slow"``) and the head (``rate="fast"``).

    Args:
        model: the network.
        head: the head module, the qualified name(s) of its modules (``"fc"``,
            ``["layer4", "fc"]``: every parameter under them), or ``None``: the last module, in
            ``named_parameters`` order, that owns parameters directly.

    Raises:
        ValueError: if the head or the backbone would be empty.
    """
    named = list(_unwrap(model).named_parameters())
    if head is None:
        owner = owners(model)
        last = owner[named[-1][1]] if named else ""
        fast = {id(p) for p in owner if owner[p] == last}
    elif isinstance(head, nn.Module):
        fast = {id(p) for p in head.parameters()}
    else:
        prefixes = [head] if isinstance(head, str) else list(head)
        fast = {
            id(p) for n, p in named if any(n == pre or n.startswith(pre + ".") for pre in prefixes)
        }
    head_params = [p for _, p in named if id(p) in fast]
    backbone = [p for _, p in named if id(p) not in fast]
    if not head_params:
        raise ValueError(f"Invalid head: {head!r} selects no parameter of the model")
    if not backbone:
        raise ValueError(f"Invalid head: {head!r} selects every parameter; the slow part is empty")
    return [{"params": backbone, "rate": "slow"}, {"params": head_params, "rate": "fast"}]


def _is_bias(name: str | None, p: torch.Tensor) -> bool:
    return name.endswith("bias") if name is not None else p.dim() <= 1


def bias_partition(
    params: nn.Module | Iterable[torch.Tensor], fast: str = "biases"
) -> list[dict[str, Any]]:
    """Weights vs biases: two param groups, ``fast="biases"`` (default) or ``"weights"`` fast.

    A bias is a parameter whose name ends in ``bias`` (given a module) or a tensor with at most
    one dimension (given tensors).

    Raises:
        ValueError: for another ``fast``, or if either part is empty.
    """
    if fast not in ("biases", "weights"):
        raise ValueError(f"Invalid fast: {fast!r} (one of 'biases', 'weights')")
    if isinstance(params, nn.Module):
        named: list[tuple[str | None, torch.Tensor]] = list(_unwrap(params).named_parameters())
    else:
        named = [(None, p) for p in params]
    biases = [p for n, p in named if _is_bias(n, p)]
    weights = [p for n, p in named if not _is_bias(n, p)]
    fast_part, slow_part = (biases, weights) if fast == "biases" else (weights, biases)
    if not fast_part or not slow_part:
        raise ValueError(f"Invalid partition: fast={fast!r} leaves a part empty")
    return [{"params": slow_part, "rate": "slow"}, {"params": fast_part, "rate": "fast"}]


def random_fast_mask(n: int, fraction: float, generator: torch.Generator) -> list[bool]:
    """``round(fraction * n)`` tensors (at least one, at most ``n - 1``) drawn fast at random."""
    if n < 2:
        raise ValueError("Invalid partition: a random partition needs at least two tensors")
    count = min(max(round(fraction * n), 1), n - 1)
    chosen = set(torch.randperm(n, generator=generator)[:count].tolist())
    return [i in chosen for i in range(n)]
