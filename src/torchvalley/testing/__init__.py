"""Testing utilities: the optimizer conformance contract, reusable outside torchvalley.

Example:
    >>> import torch, torchvalley
    >>> from torchvalley.testing import run_conformance
    >>> entry = torchvalley.OptimizerEntry(
    ...     name="my_sgd", factory=torch.optim.SGD,
    ...     capabilities=torchvalley.Capabilities(foreach=True),
    ...     hyperparameters=(
    ...         torchvalley.Hyperparameter("lr", "non_negative", 1e-3),
    ...         torchvalley.Hyperparameter("momentum", "unit_interval_open", 0.0),
    ...         torchvalley.Hyperparameter("foreach", "optional_bool", None),
    ...     ),
    ...     summary="SGD", family="baseline",
    ...     example={"lr": 0.05, "momentum": 0.9}, group_example={"lr": 0.01, "momentum": 0.5},
    ... )
    >>> run_conformance(entry)  # torch.optim.SGD does not check a foreign state dict: 1 skip
    {'passed': 12, 'skipped': 1}
"""

from torchvalley.registry import (
    validate_entry_hyperparameters as validate_entry_hyperparameters,
)
from torchvalley.testing.conformance import CONFORMANCE_CHECKS as CONFORMANCE_CHECKS
from torchvalley.testing.conformance import ConformanceCheck as ConformanceCheck
from torchvalley.testing.conformance import Problem as Problem
from torchvalley.testing.conformance import ProblemFactory as ProblemFactory
from torchvalley.testing.conformance import build_optimizer as build_optimizer
from torchvalley.testing.conformance import check_closure as check_closure
from torchvalley.testing.conformance import check_dtypes as check_dtypes
from torchvalley.testing.conformance import check_foreach as check_foreach
from torchvalley.testing.conformance import (
    check_foreign_state_dict as check_foreign_state_dict,
)
from torchvalley.testing.conformance import (
    check_invalid_hyperparameters as check_invalid_hyperparameters,
)
from torchvalley.testing.conformance import check_lr_scheduler as check_lr_scheduler
from torchvalley.testing.conformance import check_param_groups as check_param_groups
from torchvalley.testing.conformance import (
    check_state_dict_round_trip as check_state_dict_round_trip,
)
from torchvalley.testing.conformance import check_zero_grad as check_zero_grad
from torchvalley.testing.conformance import default_problem as default_problem
from torchvalley.testing.conformance import manifold_problem as manifold_problem
from torchvalley.testing.conformance import problem_for as problem_for
from torchvalley.testing.conformance import run_conformance as run_conformance
