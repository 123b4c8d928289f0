"""Validation checks: every invalid example of a kind is rejected with the name in the message;
typical valid values pass unchanged."""

import pytest
import torch

from torchvalley.validation import CHECKS, INVALID_EXAMPLES

VALID = {
    "non_negative": (0.0, 0.1, 3, torch.tensor(0.5)),
    "positive": (1e-12, 2.0, 7),
    "unit_interval": (0.0, 0.5, 1.0),
    "unit_interval_open": (0.0, 0.99),
    "betas": ((0.9, 0.999), [0.0, 0.5]),
    "bool": (True, False),
    "optional_bool": (None, True, False),
    "positive_int": (1, 10),
    "optional_positive": (None, 0.5),
    "optional_positive_int": (None, 1, 4500),
    "any": (None, object()),
}


def test_every_kind_has_valid_and_invalid_examples():
    # "choice" is checked by the Hyperparameter itself (against its choices), not by CHECKS.
    assert set(CHECKS) == set(INVALID_EXAMPLES) - {"choice"} == set(VALID)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_invalid_values_rejected(kind):
    for value in INVALID_EXAMPLES[kind]:
        with pytest.raises(ValueError, match=r"Invalid the_name"):
            CHECKS[kind]("the_name", value)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_valid_values_accepted(kind):
    for value in VALID[kind]:
        CHECKS[kind]("the_name", value)


def test_tensor_with_several_elements_rejected():
    with pytest.raises(ValueError, match="one element"):
        CHECKS["non_negative"]("lr", torch.tensor([0.1, 0.2]))
