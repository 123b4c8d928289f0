"""torchvalley: optimizers, samplers and diagnostics for the valleys of loss landscapes.

``import torchvalley`` registers every optimizer (:mod:`torchvalley.catalog`) and stays light:
the subpackages that are not needed for that (``landscape``, ``bench``, ``testing``,
``integrations``, ...) are imported on first attribute access, so ``torchvalley.landscape.…``
works without an explicit ``import torchvalley.landscape``.
"""

from __future__ import annotations

import importlib
from typing import Any

from torchvalley import catalog as catalog
from torchvalley import manifolds as manifolds
from torchvalley import optim as optim
from torchvalley.manifolds import ManifoldParameter as ManifoldParameter
from torchvalley.noise import CounterNoise as CounterNoise
from torchvalley.registry import Capabilities as Capabilities
from torchvalley.registry import Hyperparameter as Hyperparameter
from torchvalley.registry import OptimizerEntry as OptimizerEntry
from torchvalley.registry import create_optimizer as create_optimizer
from torchvalley.registry import get_optimizer_entry as get_optimizer_entry
from torchvalley.registry import list_optimizers as list_optimizers
from torchvalley.registry import optimizer_entries as optimizer_entries
from torchvalley.registry import register_optimizer as register_optimizer

__version__ = "0.1.0.dev0"

#: subpackages and modules imported on first attribute access
_LAZY_SUBMODULES = frozenset(
    {
        "bench",
        "cli",
        "dynamics",
        "evolution",
        "integrations",
        "landscape",
        "noise",
        "quant",
        "registry",
        "testing",
        "validation",
    }
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)
