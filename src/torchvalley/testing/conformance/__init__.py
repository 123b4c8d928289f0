"""The optimizer conformance contract as reusable check functions.

Every registry entry must pass these checks; ``tests/conformance`` runs them over
:func:`torchvalley.optimizer_entries`. They are public so that a third party can run the same
contract on an optimizer of their own (wrap it in an :class:`~torchvalley.OptimizerEntry`, no
registration needed) and so that meta-tests can feed them deliberately broken optimizers.

Each check takes an entry (plus a dtype or a variant where relevant), raises
:class:`AssertionError` with a message naming the entry and the broken clause, and raises
:class:`unittest.SkipTest` (which pytest reports as a skip) when a clause does not apply to the
entry's declared :class:`~torchvalley.Capabilities`. The checks reseed the global torch RNG
on a fork of it, so the caller's RNG state is unchanged.

All optimizers are driven the same way: ``opt.step(closure)`` with a closure ``opt.zero_grad();
loss = problem.loss(); loss.backward(); return loss`` (the closure clause proves this equals
``closure(); opt.step()`` for entries that do not need a closure). Optimizers are built from
``entry.example`` with :func:`build_optimizer` and the global torch RNG is seeded with
:data:`SEED` just before each construction, so a noisy optimizer that seeds its own generator
from the global RNG is still deterministic and the bitwise comparisons apply to it too.

Layout: :mod:`.problems` (the test problems), :mod:`.harness` (building and driving),
:mod:`.compare` (bitwise comparisons), :mod:`.clauses` (one module per clause) and
:mod:`.suite` (:data:`CONFORMANCE_CHECKS`, :func:`run_conformance`).

Example:
    >>> import torchvalley
    >>> from torchvalley.testing import check_state_dict_round_trip, run_conformance
    >>> check_state_dict_round_trip(torchvalley.get_optimizer_entry("adam"))
    >>> run_conformance(torchvalley.get_optimizer_entry("sgd"))
    {'passed': 12, 'skipped': 1}
"""

from torchvalley.registry import validate_entry_hyperparameters as validate_entry_hyperparameters
from torchvalley.testing.conformance.clauses import check_closure as check_closure
from torchvalley.testing.conformance.clauses import check_dtypes as check_dtypes
from torchvalley.testing.conformance.clauses import check_foreach as check_foreach
from torchvalley.testing.conformance.clauses import (
    check_foreign_state_dict as check_foreign_state_dict,
)
from torchvalley.testing.conformance.clauses import (
    check_invalid_hyperparameters as check_invalid_hyperparameters,
)
from torchvalley.testing.conformance.clauses import check_lr_scheduler as check_lr_scheduler
from torchvalley.testing.conformance.clauses import check_param_groups as check_param_groups
from torchvalley.testing.conformance.clauses import (
    check_state_dict_round_trip as check_state_dict_round_trip,
)
from torchvalley.testing.conformance.clauses import check_zero_grad as check_zero_grad
from torchvalley.testing.conformance.harness import OTHER_SEED as OTHER_SEED
from torchvalley.testing.conformance.harness import SEED as SEED
from torchvalley.testing.conformance.harness import STEPS as STEPS
from torchvalley.testing.conformance.harness import build_optimizer as build_optimizer
from torchvalley.testing.conformance.problems import Problem as Problem
from torchvalley.testing.conformance.problems import ProblemFactory as ProblemFactory
from torchvalley.testing.conformance.problems import default_problem as default_problem
from torchvalley.testing.conformance.problems import manifold_problem as manifold_problem
from torchvalley.testing.conformance.problems import problem_for as problem_for
from torchvalley.testing.conformance.suite import CONFORMANCE_CHECKS as CONFORMANCE_CHECKS
from torchvalley.testing.conformance.suite import ConformanceCheck as ConformanceCheck
from torchvalley.testing.conformance.suite import run_conformance as run_conformance

__all__ = [
    "CONFORMANCE_CHECKS",
    "OTHER_SEED",
    "SEED",
    "STEPS",
    "ConformanceCheck",
    "Problem",
    "ProblemFactory",
    "build_optimizer",
    "check_closure",
    "check_dtypes",
    "check_foreach",
    "check_foreign_state_dict",
    "check_invalid_hyperparameters",
    "check_lr_scheduler",
    "check_param_groups",
    "check_state_dict_round_trip",
    "check_zero_grad",
    "default_problem",
    "manifold_problem",
    "problem_for",
    "run_conformance",
    "validate_entry_hyperparameters",
]
