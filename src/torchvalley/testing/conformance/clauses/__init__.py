"""The clauses of the conformance contract, one module each.

Each ``check_*`` takes an entry (plus a dtype or a variant where relevant), raises
:class:`AssertionError` naming the entry and the broken clause, and raises
:class:`unittest.SkipTest` when the clause does not apply to the entry's declared capabilities.
"""

from torchvalley.testing.conformance.clauses.closure import check_closure as check_closure
from torchvalley.testing.conformance.clauses.dtypes import check_dtypes as check_dtypes
from torchvalley.testing.conformance.clauses.foreach import check_foreach as check_foreach
from torchvalley.testing.conformance.clauses.foreign_state_dict import (
    check_foreign_state_dict as check_foreign_state_dict,
)
from torchvalley.testing.conformance.clauses.invalid_hyperparameters import (
    check_invalid_hyperparameters as check_invalid_hyperparameters,
)
from torchvalley.testing.conformance.clauses.lr_scheduler import SCHEDULERS as SCHEDULERS
from torchvalley.testing.conformance.clauses.lr_scheduler import (
    check_lr_scheduler as check_lr_scheduler,
)
from torchvalley.testing.conformance.clauses.param_groups import (
    check_param_groups as check_param_groups,
)
from torchvalley.testing.conformance.clauses.state_dict import (
    check_state_dict_round_trip as check_state_dict_round_trip,
)
from torchvalley.testing.conformance.clauses.zero_grad import check_zero_grad as check_zero_grad
