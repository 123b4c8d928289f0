"""sep-CEM: optimum of known functions, the update against hand-computed weighted statistics,
antithetic sampling, the ε schedule, resume, batched population evaluation, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchvalley.evolution import SepCEM, cem_weights, population_call, population_loss, run_cem


def quadratic(center: torch.Tensor):
    return lambda population: (population - center).square().sum(-1)


def rastrigin(population: torch.Tensor) -> torch.Tensor:
    d = population.shape[-1]
    return 10 * d + (population.square() - 10 * torch.cos(2 * math.pi * population)).sum(-1)


def test_finds_shifted_quadratic_optimum() -> None:
    center = torch.tensor([1.5, -2.0, 0.5, 3.0, -1.0], dtype=torch.float64)
    cem = SepCEM(torch.zeros(5, dtype=torch.float64), population_size=20, sigma_init=1.0, seed=0)
    run_cem(cem, quadratic(center), 80)
    # the variance floor is ε_limit = 1e-5 (std 3e-3), so μ lands within a few std of c
    assert torch.allclose(cem.mean, center, atol=0.02), cem.mean
    assert float(cem.variance.max()) < 1e-3


def test_finds_rastrigin_global_minimum_at_small_dimension() -> None:
    # 2-D Rastrigin has a local minimum at every integer point; a wide start (std 2) and a
    # large population let the elites find the basin of the global minimum 0 at the origin.
    cem = SepCEM(
        torch.tensor([2.3, -1.7], dtype=torch.float64),
        population_size=60,
        elites=12,
        sigma_init=4.0,
        seed=0,
    )
    run_cem(cem, rastrigin, 100)
    assert torch.allclose(cem.mean, torch.zeros(2, dtype=torch.float64), atol=0.02), cem.mean
    assert float(rastrigin(cem.mean[None])[0]) < 0.1


@pytest.mark.parametrize("covariance", ["paper", "reference"])
@pytest.mark.parametrize("maximize", [False, True])
def test_update_equals_hand_computed_weighted_statistics(covariance: str, maximize: bool) -> None:
    K, elites = 8, 3
    mean0 = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    cem = SepCEM(
        mean0.clone(), population_size=K, elites=elites, sigma_init=0.5, covariance=covariance,
        maximize=maximize, epsilon_init=1e-2, epsilon_limit=1e-4, epsilon_decay=0.9, seed=3,
    )  # fmt: skip
    population = cem.ask()
    fitness = [3.0, -1.0, 7.0, 2.0, 0.5, 9.0, -4.0, 1.0]
    cem.tell(population, fitness)
    # by hand: rank, log weights, weighted mean and the variance about the old mean
    ranked = sorted(range(K), key=lambda k: fitness[k], reverse=maximize)[:elites]
    raw = [math.log((elites + 1) / i) for i in range(1, elites + 1)]
    weights = [w / sum(raw) for w in raw]
    mean = sum(w * population[k] for w, k in zip(weights, ranked, strict=True))
    epsilon = 0.9 * 1e-2 + 0.1 * 1e-4
    spread = sum(w * (population[k] - mean0) ** 2 for w, k in zip(weights, ranked, strict=True))
    if covariance == "reference":
        spread = spread / elites
    assert torch.allclose(cem.mean, mean, rtol=1e-14, atol=1e-15)
    assert torch.allclose(cem.variance, spread + epsilon, rtol=1e-14, atol=1e-15)
    assert cem.epsilon == pytest.approx(epsilon, rel=1e-15)


def test_reference_covariance_is_elites_times_smaller() -> None:
    runs = {}
    for rule in ("paper", "reference"):
        cem = SepCEM(torch.zeros(6), population_size=10, epsilon_init=0.0, epsilon_limit=0.0,
                     covariance=rule, seed=1)  # fmt: skip
        population = cem.ask()
        cem.tell(population, torch.arange(10.0))
        runs[rule] = cem.variance
    assert torch.allclose(runs["paper"], 5 * runs["reference"], rtol=1e-6)


def test_log_weights() -> None:
    weights = cem_weights(5)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-15)
    assert torch.all(weights[:-1] > weights[1:])
    assert float(weights[0] / weights[-1]) == pytest.approx(math.log(6) / math.log(6 / 5))


def test_antithetic_pairs_are_exact_negatives() -> None:
    cem = SepCEM(torch.randn(7), population_size=10, sigma_init=0.3, seed=0)
    population = cem.ask()
    assert cem.antithetic
    assert torch.equal(cem.noise[5:], -cem.noise[:5])  # bit-exact negatives
    # and the samples are reflections through μ (up to the rounding of μ ± σn)
    assert torch.allclose(population[5:] - cem.mean, -(population[:5] - cem.mean), atol=1e-6)
    odd = SepCEM(torch.zeros(3), population_size=5)
    assert not odd.antithetic and odd.ask().shape == (5, 3)


def test_epsilon_decays_geometrically_to_its_limit() -> None:
    cem = SepCEM(torch.zeros(2, dtype=torch.float64), population_size=4, seed=0)
    for n in range(1, 30):
        cem.tell(cem.ask(), torch.rand(4))
        assert cem.epsilon == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.95**n, rel=1e-12)


def test_resume_mid_run_is_exact() -> None:
    fitness = quadratic(torch.ones(5))
    straight = SepCEM(torch.zeros(5), population_size=6, sigma_init=0.1, seed=4)
    run_cem(straight, fitness, 10)
    first = SepCEM(torch.zeros(5), population_size=6, sigma_init=0.1, seed=4)
    run_cem(first, fitness, 4)
    state = first.state_dict()
    torch.manual_seed(123)  # the global RNG plays no part
    resumed = SepCEM(torch.zeros(5), population_size=6, sigma_init=0.1, seed=99)
    resumed.load_state_dict(state)
    run_cem(resumed, fitness, 6)
    assert torch.equal(resumed.mean, straight.mean)
    assert torch.equal(resumed.variance, straight.variance)
    assert resumed.epsilon == straight.epsilon and resumed.generation == 10
    other = SepCEM(torch.zeros(5), population_size=8)
    with pytest.raises(ValueError, match="Invalid state"):
        other.load_state_dict(state)


def test_module_parameters_round_trip() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    cem = SepCEM(model, population_size=4)
    assert cem.dimension == sum(p.numel() for p in model.parameters())
    cem.mean = cem.mean + 1.0
    cem.write_mean_(model)
    assert torch.equal(cem.layout.flatten(model), cem.mean)


def test_population_call_batched_equals_one_by_one_and_the_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    cem = SepCEM(model, population_size=6, sigma_init=0.1)
    population = cem.ask()
    x = torch.randn(7, 3)
    batched = population_call(model, population, x)
    single = population_call(model, population, x, batched=False)
    assert batched.shape == (6, 7, 2)
    assert torch.allclose(batched, single, atol=1e-6)
    cem.layout.write_(model, population[2])
    assert torch.allclose(model(x), batched[2], atol=1e-6)
    per_member = population_call(model, population, torch.randn(6, 3), per_member_inputs=True)
    assert per_member.shape == (6, 2)
    loss = population_loss(model, population, nn.functional.mse_loss, x, torch.zeros(7, 2))
    assert torch.allclose(loss, single.square().mean((1, 2)), atol=1e-6)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"population_size": 1}, "population_size"),
        ({"population_size": 4, "elites": 5}, "elites"),
        ({"elites": 0}, "elites"),
        ({"sigma_init": 0.0}, "sigma_init"),
        ({"sigma_init": -1e-3}, "sigma_init"),
        ({"epsilon_init": -1.0}, "epsilon_init"),
        ({"epsilon_decay": 1.0}, "epsilon_decay"),
        ({"covariance": "full"}, "covariance"),
        ({"population_size": 5, "antithetic": True}, "antithetic"),
    ],
)
def test_invalid_settings_raise(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {match}"):
        SepCEM(torch.zeros(3), **options)


def test_invalid_tell_raises() -> None:
    cem = SepCEM(torch.zeros(3), population_size=4)
    population = cem.ask()
    with pytest.raises(ValueError, match="Invalid fitness"):
        cem.tell(population, [1.0, 2.0])
    with pytest.raises(ValueError, match="Invalid fitness"):
        cem.tell(population, [1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(ValueError, match="Invalid population"):
        cem.tell(population[:3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="Invalid mean"):
        SepCEM(torch.zeros(2, 2))
