"""torchvalley: optimizers, samplers and diagnostics for the valleys of loss landscapes."""

from torchvalley import manifolds as manifolds
from torchvalley import optim  # noqa: F401  (importing registers the optimizers)
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
