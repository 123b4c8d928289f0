"""The CEM-gradient hybrid: zero gradient steps is CEM bit for bit; trained members equal a
hand-written Adam loop over the same minibatches; untouched members are unchanged; resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchvalley.evolution import GradientHybrid, SepCEM, SupervisedHybrid, population_loss, run_cem


def regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 1, generator=g)
    x = torch.randn(96, 4, generator=g)
    y = torch.tanh(x @ w) + 0.05 * torch.randn(96, 1, generator=g)
    return (x[:64], y[:64]), (x[64:], y[64:])


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))


CEM_OPTIONS = {"population_size": 6, "sigma_init": 1e-2}


def test_zero_gradient_steps_is_cem_bit_for_bit() -> None:
    train, validation = regression()
    hybrid = SupervisedHybrid(
        model(), nn.functional.mse_loss, train, validation, gradient_steps=0, seed=3,
        **CEM_OPTIONS,
    )  # fmt: skip
    hybrid.run(6)
    net = model()
    cem = SepCEM(net, seed=3, **CEM_OPTIONS)
    run_cem(cem, lambda pop: population_loss(net, pop, nn.functional.mse_loss, *validation), 6)
    assert torch.equal(hybrid.cem.mean, cem.mean)
    assert torch.equal(hybrid.cem.variance, cem.variance)
    assert hybrid.gradient_step_count == 0


def test_trained_members_equal_a_hand_written_adam_loop() -> None:
    train, validation = regression()
    hybrid = SupervisedHybrid(
        model(), nn.functional.mse_loss, train, validation, gradient_steps=3, batch_size=16,
        seed=0, optimizer_hyperparameters={"lr": 0.01}, **CEM_OPTIONS,
    )  # fmt: skip
    minibatches = torch.Generator()
    minibatches.set_state(hybrid.generator.get_state())
    population = hybrid.cem.ask()
    improved = hybrid.hybrid.improve(population, hybrid._train_member)
    layout = hybrid.cem.layout
    for k in range(3):  # the first K // 2 members: fresh Adam, 3 minibatch steps each
        net = model()
        layout.write_(net, population[k])
        adam = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(3):
            batch = torch.randint(64, (16,), generator=minibatches)
            adam.zero_grad()
            nn.functional.mse_loss(net(train[0][batch]), train[1][batch]).backward()
            adam.step()
        assert torch.allclose(improved[k], layout.flatten(net), atol=1e-6)
        assert not torch.equal(improved[k], population[k])
    assert torch.equal(improved[3:], population[3:])  # the other half is untouched


def test_gradient_steps_help_on_a_smooth_supervised_problem() -> None:
    # not an oracle test, a smoke check of direction: the same budget of generations with 20
    # Adam steps per trained member reaches a lower validation loss than CEM alone.
    train, validation = regression()
    losses = {}
    for steps in (0, 20):
        hybrid = SupervisedHybrid(
            model(), nn.functional.mse_loss, train, validation, gradient_steps=steps,
            optimizer_hyperparameters={"lr": 0.02}, seed=0, **CEM_OPTIONS,
        )  # fmt: skip
        losses[steps] = hybrid.run(8)[-1]
    assert losses[20] < 0.5 * losses[0], losses


def test_any_registered_optimizer_and_resume() -> None:
    train, validation = regression()

    def build() -> SupervisedHybrid:
        return SupervisedHybrid(
            model(), nn.functional.mse_loss, train, validation, gradient_steps=2,
            optimizer="sgd", optimizer_hyperparameters={"lr": 0.1, "momentum": 0.9}, seed=1,
            **CEM_OPTIONS,
        )  # fmt: skip

    straight = build()
    straight.run(4)
    first = build()
    first.run(2)
    state = first.state_dict()
    resumed = build()
    resumed.load_state_dict(state)
    resumed.run(2)
    assert torch.equal(straight.cem.mean, resumed.cem.mean)
    assert torch.equal(straight.cem.variance, resumed.cem.variance)


def test_invalid_hybrid_settings() -> None:
    net = model()
    cem = SepCEM(net, population_size=4)
    with pytest.raises(ValueError, match="Invalid gradient_members"):
        GradientHybrid(cem, net, gradient_members=5)
    with pytest.raises(ValueError, match="lr"):
        GradientHybrid(cem, net, optimizer_hyperparameters={"lr": -1.0})
    with pytest.raises(ValueError, match="Invalid module"):
        GradientHybrid(cem, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Invalid gradient_steps"):
        SupervisedHybrid(net, nn.functional.mse_loss, *regression(), gradient_steps=-1)
