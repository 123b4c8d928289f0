"""Names the command line offers as choices, in a module that imports nothing heavy.

``torchvalley --help`` builds its parser from these, so it imports no landscape module and no
task. The modules that act on the names (the landscape study, :mod:`torchvalley.bench.demo`)
use the same tuples; a test checks that they agree.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SUITES", "DEMO_SUITES", "MEASURES", "QUANT_BITS", "QUANT_METHODS"]

#: What ``torchvalley landscape --measure`` can measure.
MEASURES: tuple[str, ...] = (
    "eigenvalues",
    "trace",
    "sharpness",
    "interpolation",
    "layerwise",
    "density",
)

#: The demo suites by name (``torchvalley demo --suite NAME``).
DEMO_SUITES: tuple[str, ...] = ("mnist1d", "spirals")

#: What ``torchvalley demo`` (and ``make demo``) runs without ``--suite``.
DEFAULT_SUITES: tuple[str, ...] = ("mnist1d", "spirals")

#: What ``torchvalley quant --method`` offers: the float model and the methods of
#: :data:`torchvalley.quant.METHODS` (a test checks they agree).
QUANT_METHODS: tuple[str, ...] = (
    "float",
    "round",
    "lsq",
    "torchao",
    "brevitas",
    "rq",
    "rq_st",
)

#: The bit widths (weights = activations) ``torchvalley quant`` sweeps by default.
QUANT_BITS: tuple[int, ...] = (8, 4, 3, 2)
