"""Optimizer spec strings: parsing, canonical labels, validation errors."""

import doctest

import pytest
import torch

from torchvalley.bench import specs
from torchvalley.bench.specs import OptimizerSpec


def test_parse_values_and_label_round_trip():
    spec = OptimizerSpec.parse("SGD: lr=0.1, momentum=0.9 ,nesterov=true")
    assert spec.name == "sgd"
    assert spec.hyperparameters == {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    assert spec.label == "sgd:lr=0.1,momentum=0.9,nesterov=True"
    # The label is canonical: parsing it gives the same spec.
    assert OptimizerSpec.parse(spec.label) == spec
    assert OptimizerSpec.parse("sgd:nesterov=True,momentum=0.9,lr=0.1").label == spec.label


def test_bracketed_values_keep_their_commas():
    spec = OptimizerSpec.parse("adam:betas=(0.8,0.95),lr=3e-4")
    assert spec.hyperparameters == {"betas": (0.8, 0.95), "lr": 3e-4}


def test_bare_name_and_none():
    assert OptimizerSpec.parse("adam").hyperparameters == {}
    assert OptimizerSpec.parse("adam:foreach=None").hyperparameters == {"foreach": None}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("nope:lr=1", "unknown optimizer 'nope'"),
        ("sgd:lr=-1", "Invalid lr"),
        ("sgd:lr=nan", "Invalid lr"),
        ("sgd:lr", "expected key=value"),
        ("sgd:lr=0.1,lr=0.2", "given twice"),
        ("adam:betas=(0.9,0.99", "unbalanced"),
        ("sgd:learning_rate=0.1", "Unknown hyperparameter 'learning_rate'"),
    ],
)
def test_errors_are_one_clear_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        OptimizerSpec.parse(text)


def test_spec_builds_the_optimizer_it_names():
    import torchvalley

    spec = OptimizerSpec.parse("sgd:lr=0.1,momentum=0.9")
    optimizer = torchvalley.create_optimizer(
        spec.name, [torch.nn.Parameter(torch.zeros(1))], **spec.hyperparameters
    )
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_docstring_examples():
    assert doctest.testmod(specs).failed == 0


@pytest.mark.parametrize(
    ("texts", "label"),
    [
        (
            ("sgd:lr=0.1", "sgd:lr=1e-1,momentum=0", "sgd:momentum=0.0,lr=0.1,nesterov=False"),
            "sgd:lr=0.1",
        ),
        (("sgd:lr=1", "sgd:lr=1.0"), "sgd:lr=1.0"),
        (("adam", "adam:lr=0.001,betas=(0.9,0.999)", "adam:betas=[0.9,0.999]"), "adam"),
        # A wrapper's own defaults and its base's defaults both drop out.
        (
            ("sam:base_optimizer=sgd,lr=0.05,rho=0.05,momentum=0", "sam:lr=5e-2"),
            "sam:lr=0.05",
        ),
    ],
)
def test_label_is_canonical_against_the_declared_defaults(texts, label):
    """Issue 20 item 13: one configuration is one run, however it is written."""
    assert {OptimizerSpec.parse(text).label for text in texts} == {label}


def test_legacy_label_keeps_the_old_spelling_and_values_as_written():
    spec = OptimizerSpec.parse("sgd:momentum=0,lr=0.1")
    assert spec.hyperparameters == {"momentum": 0, "lr": 0.1}  # built exactly as written
    assert spec.legacy_label == "sgd:lr=0.1,momentum=0"
    assert spec.label == "sgd:lr=0.1"
    # A non-default flag stays: nesterov=True is not the default False.
    label = OptimizerSpec.parse("sgd:lr=0.1,momentum=0.9,nesterov=True").label
    assert label == "sgd:lr=0.1,momentum=0.9,nesterov=True"
