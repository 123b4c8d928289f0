"""The registry: names, capability records, validation before construction, wrappers."""

import doctest
import math

import pytest
import torch

import torchvalley
from torchvalley import registry
from torchvalley.registry import Capabilities, Hyperparameter, register_optimizer


@pytest.fixture
def scratch_registry(monkeypatch):
    """A registry copy so tests can register entries without leaking them."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def _params():
    return [torch.nn.Parameter(torch.ones(3))]


def test_torch_baselines_registered_with_capabilities():
    assert {"sgd", "adam", "adamw"} <= set(torchvalley.list_optimizers())
    entry = torchvalley.get_optimizer_entry("SGD")  # names are case-insensitive
    assert entry.factory is torch.optim.SGD
    assert entry.capabilities.foreach and not entry.capabilities.needs_closure
    assert entry.family == "baseline"
    assert torchvalley.list_optimizers(family="baseline") == ["adam", "adamw", "sgd"]


def test_create_optimizer_equals_direct_construction():
    # Oracle: the registry must build exactly torch's optimizer with the given hyperparameters.
    built = torchvalley.create_optimizer("adamw", _params(), lr=0.01, betas=[0.8, 0.9])
    direct = torch.optim.AdamW(_params(), lr=0.01, betas=(0.8, 0.9))
    assert type(built) is torch.optim.AdamW
    assert built.param_groups[0]["betas"] == (0.8, 0.9)  # lists are normalised to tuples
    for key, value in direct.param_groups[0].items():
        if key != "params":
            assert built.param_groups[0][key] == value, key


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"lr": math.nan}, "Invalid lr"),
        ({"lr": -0.1}, "Invalid lr"),
        ({"lr": "0.1"}, "Invalid lr"),
        ({"momentum": 1.0}, "Invalid momentum"),
        ({"nesterov": "yes"}, "Invalid nesterov"),
        ({"lrate": 0.1}, "Unknown hyperparameter 'lrate'"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(hyperparameters, message):
    with pytest.raises(ValueError, match=message):
        torchvalley.create_optimizer("sgd", _params(), **hyperparameters)


def test_param_group_overrides_are_validated():
    groups = [{"params": _params()}, {"params": _params(), "lr": math.inf}]
    with pytest.raises(ValueError, match="Invalid lr"):
        torchvalley.create_optimizer("sgd", groups, lr=0.1)


def test_tensor_lr_accepted():
    opt = torchvalley.create_optimizer("adam", _params(), lr=torch.tensor(0.01))
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.01)


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match=r"unknown optimizer 'nope'.*sgd"):
        torchvalley.create_optimizer("nope", _params())


def test_duplicate_registration_rejected(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer(
            "sgd",
            torch.optim.SGD,
            capabilities=Capabilities(),
            hyperparameters=(),
            summary="",
            family="baseline",
        )


def test_registration_validates_examples(scratch_registry):
    with pytest.raises(ValueError, match="Invalid lr"):
        register_optimizer(
            "bad_example",
            torch.optim.SGD,
            capabilities=Capabilities(),
            hyperparameters=(Hyperparameter("lr", "non_negative", 0.1),),
            summary="",
            family="test",
            example={"lr": -1.0},
        )
    assert "bad_example" not in scratch_registry


class _Wrapper(torch.optim.Optimizer):
    """A minimal wrapper: it builds its base from a name or class, like SAM will."""

    def __init__(self, params, base_optimizer="sgd", scale=1.0, **base_hyperparameters):
        factory = registry.resolve_base_optimizer(base_optimizer)
        self.base = factory(params, **base_hyperparameters)
        self.scale = scale
        super().__init__(self.base.param_groups, {"scale": scale})


def test_wrapper_base_given_by_name_or_class(scratch_registry):
    register_optimizer(
        "toy_wrapper",
        _Wrapper,
        capabilities=Capabilities(wraps_base=True, separable=False),
        hyperparameters=(
            Hyperparameter("base_optimizer", "optimizer", "sgd"),
            Hyperparameter("scale", "positive", 1.0),
        ),
        summary="",
        family="test",
        example={"base_optimizer": "sgd", "lr": 0.1},
    )
    by_name = torchvalley.create_optimizer("toy_wrapper", _params(), base_optimizer="adam", lr=0.1)
    assert type(by_name.base) is torch.optim.Adam
    by_class = torchvalley.create_optimizer(
        "toy_wrapper", _params(), base_optimizer=torch.optim.Adam, lr=0.1
    )
    assert type(by_class.base) is torch.optim.Adam
    # The base's hyperparameters are validated against the base's registry entry.
    with pytest.raises(ValueError, match="Invalid betas"):
        torchvalley.create_optimizer(
            "toy_wrapper", _params(), base_optimizer="adam", betas=(0.9, 2.0)
        )
    with pytest.raises(ValueError, match="Unknown hyperparameter 'momentum'"):
        torchvalley.create_optimizer("toy_wrapper", _params(), base_optimizer="adam", momentum=0.9)
    with pytest.raises(ValueError, match="Invalid base_optimizer"):
        torchvalley.create_optimizer("toy_wrapper", _params(), base_optimizer="no_such")
    with pytest.raises(ValueError, match="Invalid scale"):
        torchvalley.create_optimizer("toy_wrapper", _params(), scale=0.0)


def test_registry_docstring_examples():
    failures, _ = doctest.testmod(registry)
    assert failures == 0
