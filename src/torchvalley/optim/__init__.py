"""Optimizers: the algorithm modules (:mod:`torchvalley.catalog` registers them).

The public names below are loaded on first use, so importing one module of this package (say
``torchvalley.optim.torch_baselines``) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "A2Grad": "torchvalley.optim.a2grad",
    "Multirate": "torchvalley.optim.multirate",
    "RiemannianAdagrad": "torchvalley.optim.riemannian",
    "RiemannianAdam": "torchvalley.optim.riemannian",
    "RiemannianSGD": "torchvalley.optim.riemannian",
    "SAM": "torchvalley.optim.sam",
    "normalization_parameters": "torchvalley.optim.sam",
}
_SUBMODULES = ("a2grad", "fgsgd", "riemannian", "sam", "torch_baselines")

__all__ = [*_SUBMODULES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
