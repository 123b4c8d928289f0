"""The built-in benchmark tasks, kept as an import path (they live in ``bench/tasks/``).

Each family has its own module there (``mnist1d``, ``digits``, ``spirals``, ``quadratic``,
``poincare_tree``); this module re-exports their public names, so
``from torchvalley.bench.builtin_tasks import load_mnist1d`` keeps working.
"""

from torchvalley.bench.tasks._common import binary_accuracy, classification_accuracy
from torchvalley.bench.tasks.digits import DIGITS_CLASSES, DigitsCNN, load_digits_data
from torchvalley.bench.tasks.mnist1d import (
    MNIST1D_CLASSES,
    MNIST1D_LENGTH,
    Mnist1dCNN,
    load_mnist1d,
)
from torchvalley.bench.tasks.quadratic import (
    QUADRATIC_DIM,
    QUADRATIC_PROBLEM_SEED,
    QUADRATIC_TEST,
    QUADRATIC_TRAIN,
    QuadraticModel,
    load_quadratic,
    quadratic_problem,
)
from torchvalley.bench.tasks.spirals import SPIRALS_TEST, SPIRALS_TRAIN, load_spirals, two_spirals

__all__ = [
    "DIGITS_CLASSES",
    "MNIST1D_CLASSES",
    "MNIST1D_LENGTH",
    "QUADRATIC_DIM",
    "QUADRATIC_PROBLEM_SEED",
    "QUADRATIC_TEST",
    "QUADRATIC_TRAIN",
    "SPIRALS_TEST",
    "SPIRALS_TRAIN",
    "DigitsCNN",
    "Mnist1dCNN",
    "QuadraticModel",
    "binary_accuracy",
    "classification_accuracy",
    "load_digits_data",
    "load_mnist1d",
    "load_quadratic",
    "load_spirals",
    "quadratic_problem",
    "two_spirals",
]
