"""FGSM and PGD: the ε-ball, the closed-form worst case of a linear model, clean BatchNorm.

Oracle: for a linear score s(x) = wᵀx + b, a label y ∈ {−1, +1} and the logistic loss
ℓ(y s) = log(1 + e^{−y s}) (decreasing in the margin), the loss over ‖δ‖∞ ≤ ε is largest at
δ* = −ε y sign(w), where the margin drops by exactly ε‖w‖₁ (Hölder). FGSM's sign of the input
gradient is that δ*; PGD started anywhere in the ball reaches it (every step moves each
coordinate by α towards it, then projects).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchvalley.attacks import eval_mode, fgsm, pgd


def _linear_problem(n=32, d=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=generator, dtype=torch.float64))
        model.bias.fill_(0.3)
    inputs = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1

    def loss_fn(outputs, targets):  # mean logistic loss of the margins y s(x)
        return nn.functional.softplus(-targets * outputs.squeeze(-1)).mean()

    return model, loss_fn, inputs, labels


def _per_example_losses(model, inputs, labels):
    with torch.no_grad():
        return nn.functional.softplus(-labels * model(inputs).squeeze(-1))


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.3])
def test_fgsm_is_the_closed_form_optimum_of_a_linear_model(epsilon):
    model, loss_fn, inputs, labels = _linear_problem()
    adversarial = fgsm(model, loss_fn, inputs, labels, epsilon)
    w = model.weight.detach().squeeze(0)
    optimum = inputs - epsilon * labels[:, None] * w.sign()[None, :]
    torch.testing.assert_close(adversarial, optimum, rtol=0, atol=1e-15)
    assert float((adversarial - inputs).abs().max()) <= epsilon + 1e-15
    # The margin falls by exactly ε‖w‖₁, so each example's loss is ℓ(m − ε‖w‖₁).
    with torch.no_grad():
        margins = labels * model(inputs).squeeze(-1)
    expected = nn.functional.softplus(-(margins - epsilon * w.abs().sum()))
    losses = _per_example_losses(model, adversarial, labels)
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-14)
    if epsilon > 0:
        assert bool((losses > _per_example_losses(model, inputs, labels)).all())


def test_pgd_reaches_the_optimum_from_a_random_start_and_stays_in_the_ball():
    model, loss_fn, inputs, labels = _linear_problem(seed=1)
    epsilon = 0.2
    generator = torch.Generator().manual_seed(0)
    adversarial = pgd(model, loss_fn, inputs, labels, epsilon, steps=10, generator=generator)
    assert float((adversarial - inputs).abs().max()) <= epsilon + 1e-15
    w = model.weight.detach().squeeze(0)
    optimum = inputs - epsilon * labels[:, None] * w.sign()[None, :]
    # α = 2.5 ε / 10 per step, 10 steps: any start in the ball is ≤ 2ε from the corner.
    torch.testing.assert_close(adversarial, optimum, rtol=0, atol=1e-14)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_perturbation_within_epsilon_and_loss_increases_on_a_network(attack):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    inputs, targets = torch.randn(64, 5), torch.randint(0, 3, (64,))
    loss_fn = nn.functional.cross_entropy
    epsilon = 0.1
    if attack == "fgsm":
        adversarial = fgsm(model, loss_fn, inputs, targets, epsilon)
    else:
        adversarial = pgd(model, loss_fn, inputs, targets, epsilon, steps=5)
    assert float((adversarial - inputs).abs().max()) <= epsilon * (1 + 1e-6)
    with torch.no_grad():
        assert float(loss_fn(model(adversarial), targets)) > float(loss_fn(model(inputs), targets))
    if attack == "pgd":  # PGD is at least as strong as FGSM here
        with torch.no_grad():
            one_step = fgsm(model, loss_fn, inputs, targets, epsilon)
            assert float(loss_fn(model(adversarial), targets)) >= float(
                loss_fn(model(one_step), targets)
            )


@pytest.mark.parametrize("attack", [fgsm, pgd])
def test_batchnorm_statistics_modes_and_parameter_gradients_untouched(attack):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[2].eval()  # a submodule in its own mode: restored as it was
    inputs, targets = torch.randn(16, 4), torch.randint(0, 2, (16,))
    model(inputs).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    running = (model[1].running_mean.clone(), model[1].running_var.clone())
    batches = int(model[1].num_batches_tracked)
    attack(model, nn.functional.cross_entropy, inputs, targets, 0.1)
    assert torch.equal(model[1].running_mean, running[0])
    assert torch.equal(model[1].running_var, running[1])
    assert int(model[1].num_batches_tracked) == batches
    assert model.training and model[1].training and not model[2].training
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_bounds_clamp_and_batch_bounds():
    model, loss_fn, inputs, labels = _linear_problem()
    clamped = fgsm(model, loss_fn, inputs, labels, 5.0, bounds="batch")
    assert float(clamped.min()) >= float(inputs.min())
    assert float(clamped.max()) <= float(inputs.max())
    boxed = pgd(model, loss_fn, inputs, labels, 5.0, bounds=(-1.0, 1.0), steps=2)
    assert float(boxed.abs().max()) <= 1.0


def test_eval_mode_restores_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training and model[1].training


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 0.1, "bounds": (1.0, 0.0)}, "bounds"),
        ({"epsilon": 0.1, "steps": 0}, "steps"),
        ({"epsilon": 0.1, "step_size": -1.0}, "step_size"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, name):
    model, loss_fn, inputs, labels = _linear_problem()
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        pgd(model, loss_fn, inputs, labels, **kwargs)
