"""Values assigned to ``param_groups`` after construction (as schedulers and users do) are
validated at the next step, before any parameter moves, for the Riemannian optimizers and
FG-SGD (the SAM and Langevin families have their own tests)."""

from __future__ import annotations

import pytest
import torch

import torchvalley
from torchvalley.manifolds import ManifoldParameter, Sphere


def _problem():
    torch.manual_seed(0)
    x = ManifoldParameter(Sphere().random(3, 4), Sphere())
    w = torch.nn.Parameter(torch.randn(3, 4))
    return x, w


@pytest.mark.parametrize(
    ("name", "key", "bad"),
    [
        ("rsgd", "lr", -0.1),
        ("rsgd", "momentum", 1.5),
        ("radam", "lr", float("nan")),
        ("radam", "betas", (0.9, 1.2)),
        ("ramsgrad", "eps", -1.0),
        ("radagrad", "lr_decay", -0.5),
        ("fgsgd", "lr", -0.1),
        ("fgsgd", "momentum", 2.0),
    ],
)
def test_invalid_value_set_after_construction_is_refused_at_step(name, key, bad):
    x, w = _problem()
    params = [w] if name == "fgsgd" else [x, w]
    optimizer = torchvalley.create_optimizer(name, params, lr=0.05)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.param_groups[0][key] = bad
    with pytest.raises(ValueError, match=f"Invalid {key}"):
        optimizer.step()
    for p, old in zip(params, before, strict=True):
        assert torch.equal(p.detach(), old)


def test_valid_schedule_changes_pass_and_take_effect():
    _, w = _problem()
    optimizer = torchvalley.create_optimizer("rsgd", [w], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    w.grad = torch.ones_like(w)
    start = w.detach().clone()
    optimizer.step()
    scheduler.step()
    optimizer.step()
    torch.testing.assert_close(w.detach(), start - 0.15 * torch.ones_like(w))


@pytest.mark.parametrize(("key", "bad"), [("rho", -1.0), ("ascent", "nosuch"), ("lr", -0.1)])
def test_sam_refuses_a_changed_group_before_anything_moves(key, bad):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torchvalley.create_optimizer("sam", model.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = model(torch.ones(4, 3)).square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.param_groups[0][key] = bad
    with pytest.raises(ValueError, match=f"Invalid {key}"):
        optimizer.step(closure)
    for p, old in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), old)
