"""Langevin dynamics: the splitting engine (:mod:`.operators`), the samplers (:mod:`.langevin`),
partitions (:mod:`.partitions`) and parameterizations (:mod:`.parameters`); constrained
Langevin, CoLA (:mod:`.constrained`, with the papers' param groups in :mod:`.constrained_groups`:
entries ``cola_ud`` and ``cola_od``).

The registry entries ``sgld``, ``baoab``, ``sghmc``, ``sgnht``, ``lala``, ``adlala`` and ``lol``
(family ``"langevin"``) are registered by :mod:`torchvalley.catalog`.
"""

from torchvalley.dynamics import operators as operators
from torchvalley.dynamics.constrained import ConstrainedLangevin as ConstrainedLangevin
from torchvalley.dynamics.constrained_groups import constrain_model as constrain_model
from torchvalley.dynamics.langevin import DEFAULT_SCHEMES as DEFAULT_SCHEMES
from torchvalley.dynamics.langevin import DYNAMICS as DYNAMICS
from torchvalley.dynamics.langevin import LangevinSplitting as LangevinSplitting
from torchvalley.dynamics.langevin import NoisePrecisionWarning as NoisePrecisionWarning
from torchvalley.dynamics.langevin import parse_scheme as parse_scheme
from torchvalley.dynamics.parameters import PhysicalParameters as PhysicalParameters
from torchvalley.dynamics.parameters import SGDParameters as SGDParameters
from torchvalley.dynamics.parameters import physical_to_sgd as physical_to_sgd
from torchvalley.dynamics.parameters import posterior_temperature as posterior_temperature
from torchvalley.dynamics.parameters import sgd_to_physical as sgd_to_physical
from torchvalley.dynamics.partitions import partition_by_layer as partition_by_layer
