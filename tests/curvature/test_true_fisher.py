"""True (exact and Monte-Carlo) Fisher products against dense matrices and curvlinops/BackPACK.

Oracles (float64, tiny networks): the definition ``F = (1/N) Σ_i Σ_c p_ic g_ic g_icᵀ`` from
per-example, per-class gradients by plain autograd; the empirical Fisher of the sampled targets
from per-example gradients; curvlinops' ``GGNLinearOperator``/``EFLinearOperator``/
``FisherMCLinearOperator`` and BackPACK's ``DiagGGNExact`` where installed (test-only oracles).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.curvature import CurvatureOperator

DTYPE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(loss: str, n: int = 8):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(n, 3, generator=g, dtype=DTYPE)
    if loss == "ce":
        return model, F.cross_entropy, (x, torch.randint(0, 3, (n,), generator=g))
    return model, F.mse_loss, (x, torch.randn(n, 3, generator=g, dtype=DTYPE))


def _dense(op: CurvatureOperator) -> torch.Tensor:
    return torch.stack([op.matvec_flat(e) for e in torch.eye(op.dimension, dtype=DTYPE)], dim=1)


def _example_grad(model, loss_fn, x, y) -> torch.Tensor:
    model.zero_grad()
    loss_fn(model(x[None]), y[None]).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def test_exact_true_fisher_is_its_definition_for_softmax_cross_entropy():
    model, loss_fn, (x, y) = _problem("ce")
    op = CurvatureOperator.of(
        model, loss_fn, (x, y), curvature="fisher_true", likelihood="categorical"
    )
    oracle = torch.zeros(op.dimension, op.dimension, dtype=DTYPE)
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)
    for i in range(x.shape[0]):
        for c in range(3):
            g = _example_grad(model, loss_fn, x[i], torch.tensor(c))
            oracle += probabilities[i, c] * torch.outer(g, g)
    oracle /= x.shape[0]
    assert _relative(_dense(op), oracle) < 1e-10


@pytest.mark.parametrize(("loss", "likelihood"), [("ce", "categorical"), ("mse", "gaussian")])
def test_exact_true_fisher_equals_the_gauss_newton_matrix(loss, likelihood):
    # two routes to one matrix: the closed-form expectation vs the loss's output Hessian
    model, loss_fn, data = _problem(loss)
    true = _dense(
        CurvatureOperator.of(model, loss_fn, data, curvature="fisher_true", likelihood=likelihood)
    )
    ggn = _dense(CurvatureOperator.of(model, loss_fn, data, curvature="gauss_newton"))
    assert _relative(true, ggn) < 1e-10


@pytest.mark.parametrize(("loss", "likelihood"), [("ce", "categorical"), ("mse", "gaussian")])
def test_sampled_fisher_is_the_empirical_fisher_of_its_sampled_targets(loss, likelihood):
    model, loss_fn, (x, _) = _problem(loss)
    op = CurvatureOperator.of(
        model,
        loss_fn,
        (x, _),
        curvature="fisher_mc",
        likelihood=likelihood,
        mc_samples=3,
        mc_seed=7,
    )
    draws = op.sampled_targets()
    assert draws.shape[:2] == (3, x.shape[0])
    oracle = torch.zeros(op.dimension, op.dimension, dtype=DTYPE)
    for targets in draws:
        for i in range(x.shape[0]):
            g = _example_grad(model, loss_fn, x[i], targets[i])
            oracle += torch.outer(g, g)
    oracle /= 3 * x.shape[0]
    assert _relative(_dense(op), oracle) < 1e-10
    # the same seed draws the same targets; another seed others
    again = CurvatureOperator.of(
        model,
        loss_fn,
        (x, _),
        curvature="fisher_mc",
        likelihood=likelihood,
        mc_samples=3,
        mc_seed=7,
    )
    assert torch.equal(again.sampled_targets(), draws)
    other = CurvatureOperator.of(
        model,
        loss_fn,
        (x, _),
        curvature="fisher_mc",
        likelihood=likelihood,
        mc_samples=3,
        mc_seed=8,
    )
    assert not torch.equal(other.sampled_targets(), draws)


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "likelihood"), [("ce", "categorical"), ("mse", "gaussian")])
def test_sampled_fisher_converges_to_the_true_fisher(loss, likelihood):
    # The MC estimate averages M·N rank-one terms; its relative Frobenius error has standard
    # deviation ≈ c/√M with c = O(1) for these tiny nets (measured c ≈ 0.3-0.6 over seeds), so
    # 4/√M is beyond 6 standard deviations for M = 800.
    samples = 800
    model, loss_fn, data = _problem(loss)
    true = _dense(
        CurvatureOperator.of(model, loss_fn, data, curvature="fisher_true", likelihood=likelihood)
    )
    mc = _dense(
        CurvatureOperator.of(
            model,
            loss_fn,
            data,
            curvature="fisher_mc",
            likelihood=likelihood,
            mc_samples=samples,
            mc_seed=0,
        )
    )
    assert _relative(mc, true) < 4 / math.sqrt(samples)
    few = _dense(
        CurvatureOperator.of(
            model,
            loss_fn,
            data,
            curvature="fisher_mc",
            likelihood=likelihood,
            mc_samples=1,
            mc_seed=0,
        )
    )
    assert _relative(few, true) > _relative(mc, true)


def test_likelihood_is_validated():
    model, loss_fn, data = _problem("ce")
    with pytest.raises(ValueError, match="likelihood"):
        CurvatureOperator.of(model, loss_fn, data, curvature="fisher_true")
    with pytest.raises(ValueError, match="likelihood"):
        CurvatureOperator.of(model, loss_fn, data, curvature="fisher_true", likelihood="poisson")
    with pytest.raises(ValueError, match="likelihood"):
        CurvatureOperator.of(model, loss_fn, data, curvature="hessian", likelihood="gaussian")
    with pytest.raises(ValueError, match="likelihood"):
        CurvatureOperator.of(
            model, loss_fn, data, curvature="fisher_true", likelihood=lambda z, g: z
        )
    with pytest.raises(ValueError, match="mc_samples"):
        CurvatureOperator.of(
            model, loss_fn, data, curvature="fisher_mc", likelihood="categorical", mc_samples=0
        )
    with pytest.raises(ValueError, match="mc_seed"):
        CurvatureOperator.of(
            model, loss_fn, data, curvature="fisher_mc", likelihood="categorical", mc_seed=1.5
        )


def test_a_sampler_callable_defines_the_likelihood():
    model, loss_fn, data = _problem("ce")

    def sample(outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(torch.softmax(outputs, 1), 1, generator=generator)[:, 0]

    op = CurvatureOperator.of(
        model, loss_fn, data, curvature="fisher_mc", likelihood=sample, mc_samples=2, mc_seed=3
    )
    assert op.sampled_targets().shape == (2, 8)
    assert torch.all(torch.isfinite(_dense(op)))


# -- curvlinops and BackPACK as oracles (test-only dependencies) ------------------------------


# MSE is left out: curvlinops normalises MSELoss(reduction="mean") by the batch size only
# (the Gaussian NLL of each example), torch's mse_loss by the batch size times the outputs.
@pytest.mark.parametrize("loss", ["ce"])
def test_gauss_newton_and_empirical_fisher_match_curvlinops(loss):
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops oracle not installed")
    model, loss_fn, data = _problem(loss)
    module_loss = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    params = list(model.parameters())
    eye = torch.eye(sum(p.numel() for p in params), dtype=DTYPE)
    for ours, theirs in (
        ("gauss_newton", curvlinops.GGNLinearOperator),
        ("fisher", curvlinops.EFLinearOperator),
    ):
        oracle = theirs(model, module_loss, params, [data]) @ eye
        mine = _dense(CurvatureOperator.of(model, loss_fn, data, curvature=ours))
        assert _relative(mine, torch.as_tensor(oracle)) < 1e-10, ours


@pytest.mark.slow
def test_true_fisher_matches_curvlinops_monte_carlo_fisher():
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops oracle not installed")
    model, loss_fn, data = _problem("ce")
    params = list(model.parameters())
    eye = torch.eye(sum(p.numel() for p in params), dtype=DTYPE)
    samples = 800  # the bound of test_sampled_fisher_converges_to_the_true_fisher
    oracle = (
        curvlinops.FisherMCLinearOperator(
            model, nn.CrossEntropyLoss(), params, [data], mc_samples=samples, seed=1
        )
        @ eye
    )
    true = _dense(
        CurvatureOperator.of(
            model, loss_fn, data, curvature="fisher_true", likelihood="categorical"
        )
    )
    assert _relative(torch.as_tensor(oracle), true) < 4 / math.sqrt(samples)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_gauss_newton_diagonal_matches_backpack():
    backpack = pytest.importorskip("backpack", reason="BackPACK oracle not installed")
    from backpack.extensions import DiagGGNExact

    model, loss_fn, data = _problem("ce")
    mine = torch.diagonal(
        _dense(CurvatureOperator.of(model, loss_fn, data, curvature="gauss_newton"))
    )
    extended = backpack.extend(model)
    loss_module = backpack.extend(nn.CrossEntropyLoss())
    with backpack.backpack(DiagGGNExact()):
        loss_module(extended(data[0]), data[1]).backward()
    oracle = torch.cat([p.diag_ggn_exact.reshape(-1) for p in extended.parameters()])
    torch.testing.assert_close(mine, oracle, rtol=1e-10, atol=1e-12)
