"""``swap_storage=True`` is a faster way to perturb: it must give the very same numbers as the
default copy-aside path, never write ``w`` during the step, and leave every parameter on its
original storage afterwards."""

import copy

import pytest
import torch
from torch import nn

from torchvalley.optim import SAM


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _train(model, optimizer, steps=4):
    inputs, targets = _data()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)


@pytest.mark.parametrize("ascent", ["sam", "asam", "fisher", "monge"])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_swap_equals_copy_bit_for_bit(ascent, base):
    runs = []
    for swap in (False, True):
        model = _model()
        hyper = {"lr": 0.05, "momentum": 0.9} if base == "sgd" else {"lr": 1e-2}
        optimizer = SAM(
            model.parameters(),
            base,
            rho=0.1,
            ascent=ascent,
            model=model,
            swap_storage=swap,
            **hyper,
        )
        _train(model, optimizer)
        runs.append(model.state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_parameters_keep_their_storage_and_w_is_never_written():
    model = _model()
    optimizer = SAM(model.parameters(), "sgd", rho=0.1, lr=0.0, model=model, swap_storage=True)
    pointers = [p.data_ptr() for p in model.parameters()]
    before = copy.deepcopy(model.state_dict())
    seen = []
    original_step = optimizer.base_optimizer.step

    def watch_step(*args, **kwargs):
        # At the base step w must be back, bit for bit, on its own storage.
        seen.append([p.data_ptr() for p in model.parameters()])
        return original_step(*args, **kwargs)

    optimizer.base_optimizer.step = watch_step
    _train(model, optimizer, steps=2)
    assert seen and all(ptrs == pointers for ptrs in seen)
    assert [p.data_ptr() for p in model.parameters()] == pointers
    after = model.state_dict()
    for key, value in before.items():
        if "running" not in key and "num_batches" not in key:  # lr = 0: weights unchanged
            assert torch.equal(after[key], value), key


def test_parameter_without_second_gradient_is_restored():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    extra = nn.Parameter(torch.ones(3))
    optimizer = SAM([*model.parameters(), extra], "sgd", rho=0.5, lr=0.0, swap_storage=True)
    pointer = extra.data_ptr()
    _train_extra(model, optimizer, extra)
    assert extra.data_ptr() == pointer
    assert torch.equal(extra.detach(), torch.ones(3))


def _train_extra(model, optimizer, extra):
    inputs = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        optimizer.zero_grad()
        loss = model(inputs).pow(2).mean()
        if calls["n"] == 1:  # only the clean pass uses (and so perturbs) the extra parameter
            loss = loss + extra.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)


def test_swap_storage_is_validated():
    with pytest.raises(ValueError, match="Invalid swap_storage"):
        SAM(nn.Linear(2, 1).parameters(), "sgd", lr=0.1, swap_storage="yes")
