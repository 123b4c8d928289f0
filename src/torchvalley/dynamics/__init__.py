"""Langevin dynamics: the splitting engine (:mod:`.operators`) and the samplers (:mod:`.langevin`).

Importing this package registers ``sgld``, ``baoab``, ``sghmc``, ``sgnht``, ``lala``, ``adlala``
and ``lol`` (family ``"langevin"``).
"""

from torchvalley.dynamics import operators as operators
from torchvalley.dynamics.langevin import (
    DEFAULT_SCHEMES,
    DYNAMICS,
    LangevinSplitting,
    NoisePrecisionWarning,
    PhysicalParameters,
    SGDParameters,
    parse_scheme,
    partition_by_layer,
    physical_to_sgd,
    posterior_temperature,
    sgd_to_physical,
)

__all__ = [
    "DEFAULT_SCHEMES",
    "DYNAMICS",
    "LangevinSplitting",
    "NoisePrecisionWarning",
    "PhysicalParameters",
    "SGDParameters",
    "operators",
    "parse_scheme",
    "partition_by_layer",
    "physical_to_sgd",
    "posterior_temperature",
    "sgd_to_physical",
]
