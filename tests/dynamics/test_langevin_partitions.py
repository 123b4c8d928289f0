"""The registry's LaLa/AdLaLa/LOL factories build the paper's per-layer partition from model=."""

from __future__ import annotations

import pytest
import torch

import torchvalley
from torchvalley.registry import get_optimizer_entry

ADLALA = {
    "lr": 0.25,
    "friction": 0.1,
    "temperature": 1e-4,
    "noise_scale": 0.01,
    "thermostat_coupling": 0.05,
    "thermostat_init": 0.1,
}


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
    )


def _layout(optimizer: torch.optim.Optimizer) -> list[tuple[str, list[int]]]:
    return [(g["dynamics"], [id(p) for p in g["params"]]) for g in optimizer.param_groups]


def _layers(model: torch.nn.Module) -> list[list[int]]:
    return [[id(p) for p in model[i].parameters()] for i in (0, 2, 3)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("adlala", ["adaptive", "langevin", "langevin"]),
        ("lol", ["langevin", "overdamped", "overdamped"]),
        ("lala", ["langevin", "langevin", "langevin"]),
    ],
)
def test_model_gives_the_papers_partition(name, expected):
    model = _mlp()
    hps = ADLALA if name == "adlala" else {"lr": 0.25, "friction": 0.1, "temperature": 1e-4}
    opt = torchvalley.create_optimizer(name, model.parameters(), model=model, **hps)
    assert _layout(opt) == list(zip(expected, _layers(model), strict=True))
    assert get_optimizer_entry(name).capabilities.accepts_model
    # The flat hyperparameters apply to every group.
    assert all(g["lr"] == 0.25 and g["temperature"] == 1e-4 for g in opt.param_groups)


def test_adlala_first_group_adaptive_with_model_flat_langevin_without():
    model = _mlp()
    with_model = torchvalley.create_optimizer("adlala", model.parameters(), model=model, **ADLALA)
    assert with_model.param_groups[0]["dynamics"] == "adaptive"
    assert [id(p) for p in with_model.param_groups[0]["params"]] == _layers(model)[0]
    without = torchvalley.create_optimizer("adlala", model.parameters(), **ADLALA)
    assert [g["dynamics"] for g in without.param_groups] == ["langevin"]
    assert len(without.param_groups[0]["params"]) == len(list(model.parameters()))


def test_explicit_param_groups_take_precedence():
    model = _mlp()
    groups = [
        {"params": list(model[0].parameters()) + list(model[2].parameters())},
        {"params": list(model[3].parameters()), "dynamics": "adaptive"},
    ]
    opt = torchvalley.create_optimizer("adlala", groups, model=model, **ADLALA)
    assert [g["dynamics"] for g in opt.param_groups] == ["langevin", "adaptive"]
    assert [len(g["params"]) for g in opt.param_groups] == [4, 2]


def test_subset_of_the_models_params_is_partitioned_among_its_layers():
    model = _mlp()
    params = list(model[2].parameters()) + list(model[3].parameters())  # first layer frozen
    opt = torchvalley.create_optimizer("lol", params, model=model, lr=0.1)
    assert _layout(opt) == [("langevin", _layers(model)[1]), ("overdamped", _layers(model)[2])]
    # A tensor the model does not own: no layer to assign it to, so flat as without a model.
    extra = torch.nn.Parameter(torch.zeros(3))
    opt = torchvalley.create_optimizer("lol", [*model.parameters(), extra], model=model, lr=0.1)
    assert [g["dynamics"] for g in opt.param_groups] == ["langevin"]


def test_partitioned_adlala_trains_and_thermostats_the_first_layer():
    model = _mlp()
    opt = torchvalley.create_optimizer("adlala", model.parameters(), model=model, **ADLALA)
    x, y = torch.randn(32, 2), torch.randn(32, 1)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    diagnostics = opt.diagnostics()
    assert "thermostat" in diagnostics[0]
    assert all("thermostat" not in entry for entry in diagnostics[1:])
    assert all(torch.isfinite(p).all() for p in model.parameters())
