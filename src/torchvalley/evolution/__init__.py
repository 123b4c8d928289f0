"""Population methods: sep-CEM over a network's flattened parameters and its hybrid with
gradient steps (CEM-RL, Pourchot & Sigaud, ICLR 2019).

- :mod:`~torchvalley.evolution.cem`: :class:`SepCEM` (ask / tell), :func:`run_cem`, batched
  population evaluation (:func:`population_call`, :func:`population_loss`).
- :mod:`~torchvalley.evolution.hybrid`: :class:`GradientHybrid` (gradient steps on half the
  population with any registered optimizer), :class:`SupervisedHybrid`.
- :mod:`~torchvalley.evolution.td3`: TD3 (twin critics, target smoothing, delayed actor).
- :mod:`~torchvalley.evolution.rl`: :class:`CEMRL`, :class:`TD3Runner` on gymnasium
  environments (imported lazily), results-store logging and return plots.
"""

from __future__ import annotations

from torchvalley.evolution.cem import ParameterLayout as ParameterLayout
from torchvalley.evolution.cem import SepCEM as SepCEM
from torchvalley.evolution.cem import cem_weights as cem_weights
from torchvalley.evolution.cem import population_call as population_call
from torchvalley.evolution.cem import population_loss as population_loss
from torchvalley.evolution.cem import run_cem as run_cem
from torchvalley.evolution.hybrid import GradientHybrid as GradientHybrid
from torchvalley.evolution.hybrid import SupervisedHybrid as SupervisedHybrid
from torchvalley.evolution.td3 import TD3 as TD3
from torchvalley.evolution.td3 import ReplayBuffer as ReplayBuffer
from torchvalley.evolution.td3 import td3_target as td3_target

__all__ = [
    "TD3",
    "GradientHybrid",
    "ParameterLayout",
    "ReplayBuffer",
    "SepCEM",
    "SupervisedHybrid",
    "cem_weights",
    "population_call",
    "population_loss",
    "run_cem",
    "td3_target",
]
