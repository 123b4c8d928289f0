"""Oracle tests of the Hessian spectrum tools: eigenvalues, Hutchinson trace, SLQ (float64).

Oracles: quadratic losses with a known, indefinite spectrum; dense Hessians of small networks
(``torch.autograd.functional.hessian`` over a flat parameter vector, independent of the library)
and ``torch.linalg.eigvalsh``; the ``quadratic`` benchmark task's published eigenvalues.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from torchvalley.bench.tasks import get_task
from torchvalley.landscape.spectrum import (
    HessianEigenResult,
    HessianTrace,
    SpectralDensity,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)
from torchvalley.landscape.surfaces.plots import plot_spectral_density

DTYPE = torch.float64

# An indefinite spectrum whose largest-magnitude eigenvalue is negative.
SPECTRUM = torch.tensor([-6.0, 4.0, 2.0, 1.2, *torch.linspace(-0.9, 0.9, 26).tolist()], dtype=DTYPE)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- problems -----------------------------------------------------------------------------------


class Residual(nn.Module):
    """``forward(x) = θ − x``: a loss of the residuals is a loss of ``θ``."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.theta - inputs


def _indefinite_quadratic():
    """``L(θ) = mean_i ½ (θ − x_i)ᵀ A (θ − x_i)`` with ``A = Q diag(SPECTRUM) Qᵀ``: ``H = A``."""
    generator = torch.Generator().manual_seed(0)
    d = SPECTRUM.numel()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=DTYPE))
    matrix = (q * SPECTRUM) @ q.T
    matrix = (matrix + matrix.T) / 2

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((outputs @ matrix) * outputs).sum(dim=1).mean()

    model = Residual(torch.randn(d, generator=generator, dtype=DTYPE))
    data = (torch.randn(8, d, generator=generator, dtype=DTYPE), torch.zeros(8, dtype=DTYPE))
    return model, loss_fn, data, matrix


def _bn_network() -> nn.Module:
    """3-6-BatchNorm-tanh-2: 50 parameters, running statistics unlike the batch's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 2.0)
            model[1].weight.uniform_(0.5, 1.5)
    return model.to(DTYPE)


def _bn_data(n: int = 16):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 3, generator=generator, dtype=DTYPE),
        torch.randn(n, 2, generator=generator, dtype=DTYPE),
    )


def _flat_loss(model: nn.Module, loss_fn, data, bn_mode: str):
    named = dict(model.named_parameters())
    shapes = [p.shape for p in named.values()]
    inputs, targets = data

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, [math.prod(s) for s in shapes])
        state = {n: p.reshape(s) for n, p, s in zip(named, parts, shapes, strict=True)}
        state.update({n: b.clone() for n, b in model.named_buffers()})
        was = model.training
        model.train(bn_mode == "train")
        try:
            return loss_fn(functional_call(model, state, (inputs,)), targets)
        finally:
            model.train(was)

    return loss, torch.cat([p.detach().reshape(-1) for p in named.values()])


@functools.cache
def _bn_dense(bn_mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense Hessian, GGN and empirical Fisher of the BatchNorm network's MSE."""
    model, data = _bn_network(), _bn_data()
    loss, theta = _flat_loss(model, F.mse_loss, data, bn_mode)
    hessian = torch.autograd.functional.hessian(loss, theta)
    outputs, _ = _flat_loss(model, lambda z, t: z, data, bn_mode)
    z = outputs(theta).detach()
    jacobian = torch.autograd.functional.jacobian(outputs, theta).reshape(z.numel(), -1)
    output_hessian = torch.autograd.functional.hessian(
        lambda flat: F.mse_loss(flat.reshape(z.shape), data[1]), z.reshape(-1)
    )
    grads = torch.autograd.functional.jacobian(
        lambda t: ((outputs(t) - data[1]) ** 2).mean(dim=1), theta
    )  # per-example loss gradients, (N, P)
    return hessian, jacobian.T @ output_hessian @ jacobian, grads.T @ grads / grads.shape[0]


def _top(values: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    keys = values if mode == "algebraic" else values.abs()
    return values[torch.argsort(keys, descending=True)][:k]


def _flat(vector) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vector])


# -- eigenvalues --------------------------------------------------------------------------------


def test_the_oracle_has_a_dominant_negative_eigenvalue():
    *_, matrix = _indefinite_quadratic()
    values = torch.linalg.eigvalsh(matrix)
    assert values[0] == pytest.approx(-6.0) and values[-1] == pytest.approx(4.0)
    assert values.abs().argmax() == 0


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize(
    ("mode", "expected"), [("algebraic", [4.0, 2.0, 1.2]), ("magnitude", [-6.0, 4.0, 2.0])]
)
def test_top_eigenvalues_of_an_indefinite_hessian(method, mode, expected):
    model, loss_fn, data, matrix = _indefinite_quadratic()
    result = hessian_eigenvalues(
        model,
        loss_fn,
        data,
        k=3,
        method=method,
        mode=mode,
        tol=1e-12,
        max_iter=500,
        return_vectors=True,
        seed=0,
    )
    assert isinstance(result, HessianEigenResult)
    assert result.method == method and result.mode == mode
    assert all(result.converged)
    torch.testing.assert_close(
        result.eigenvalues, torch.tensor(expected, dtype=DTYPE), rtol=1e-6, atol=0
    )
    assert result.eigenvectors is not None
    for value, vector, reported in zip(
        result.eigenvalues, result.eigenvectors, result.residuals, strict=True
    ):
        v = _flat(vector)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-12)
        residual = float(torch.linalg.vector_norm(matrix @ v - value * v))
        assert residual <= (1e-8 if method == "lanczos" else 1e-4) * 6.0
        assert float(reported) == pytest.approx(residual, rel=1e-3, abs=1e-9)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("mode", ["algebraic", "magnitude"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_of_a_batchnorm_network_match_eigvalsh(method, mode, bn_mode):
    hessian, *_ = _bn_dense(bn_mode)
    result = hessian_eigenvalues(
        _bn_network(),
        F.mse_loss,
        _bn_data(),
        k=2,
        method=method,
        mode=mode,
        bn_mode=bn_mode,
        tol=1e-12,
        max_iter=1000,
        seed=1,
    )
    expected = _top(torch.linalg.eigvalsh(hessian), 2, mode)
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-6, atol=0)
    assert result.eigenvectors is None


def test_strategies_give_the_same_lanczos_eigenvalues():
    results = [
        hessian_eigenvalues(
            _bn_network(),
            F.mse_loss,
            _bn_data(),
            k=3,
            bn_mode="train",
            strategy=strategy,
            seed=2,
        )
        for strategy in ("forward_over_reverse", "double_backward", "double_backward_per_batch")
    ]
    for other in results[1:]:
        torch.testing.assert_close(other.eigenvalues, results[0].eigenvalues, rtol=1e-10, atol=0)
        assert other.hvp_count == results[0].hvp_count


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_quadratic_task_top_eigenvalues_match_its_known_spectrum(method):
    task = get_task("quadratic")
    model = task.model(0).to(DTYPE)
    inputs, targets = task.data().train
    data = (inputs[:100].to(DTYPE), targets[:100].to(DTYPE))
    known = torch.tensor(task.info["hessian_eigenvalues"], dtype=DTYPE).flip(0)[:4]
    result = hessian_eigenvalues(
        model, task.loss_fn, data, k=4, method=method, tol=1e-12, max_iter=2000, seed=0
    )
    # the task's loss uses H rounded to float32: eigenvalues agree to ~1e-8
    torch.testing.assert_close(result.eigenvalues, known, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_a_low_rank_hessian_restarts_and_finds_repeated_zeros(method):
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(3, 10, generator=generator, dtype=DTYPE)
    model = nn.Linear(10, 1, bias=False).to(DTYPE)
    data = (inputs, torch.randn(3, 1, generator=generator, dtype=DTYPE))
    expected = _top(torch.linalg.eigvalsh(2 * inputs.T @ inputs / 3), 5, "algebraic")
    result = hessian_eigenvalues(
        model, F.mse_loss, data, k=5, method=method, tol=1e-12, max_iter=500, seed=0
    )
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-6, atol=1e-10)


def test_gauss_newton_eigenvalues_match_the_dense_ggn():
    _, ggn, _ = _bn_dense("eval")
    result = hessian_eigenvalues(
        _bn_network(), F.mse_loss, _bn_data(), k=2, curvature="gauss_newton", tol=1e-10, seed=0
    )
    expected = _top(torch.linalg.eigvalsh(ggn), 2, "algebraic")
    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-6, atol=0)


def test_fisher_spectrum_and_trace_match_the_dense_empirical_fisher():
    *_, fisher = _bn_dense("train")
    model, data = _bn_network(), _bn_data()
    options = {"curvature": "fisher", "bn_mode": "train"}
    top = hessian_eigenvalues(model, F.mse_loss, data, k=2, tol=1e-10, seed=0, **options)
    expected = _top(torch.linalg.eigvalsh(fisher), 2, "algebraic")
    torch.testing.assert_close(top.eigenvalues, expected, rtol=1e-6, atol=0)
    trace = hessian_trace(model, F.mse_loss, data, samples=100, seed=0, **options)
    assert abs(trace.estimate - float(fisher.trace())) <= 3 * trace.standard_error


def test_seed_and_generator_are_reproducible():
    model, loss_fn, data, _ = _indefinite_quadratic()

    def run(**kwargs):
        return hessian_eigenvalues(
            model, loss_fn, data, k=2, method="power", tol=1e-3, **kwargs
        ).eigenvalues

    assert torch.equal(run(seed=5), run(seed=5))
    assert torch.equal(run(seed=5), run(generator=torch.Generator().manual_seed(5)))
    torch.manual_seed(7)
    first = run()
    torch.manual_seed(7)
    assert torch.equal(first, run())


def test_power_with_tol_zero_runs_exactly_max_iter():
    model, loss_fn, data, _ = _indefinite_quadratic()
    result = hessian_eigenvalues(
        model, loss_fn, data, method="power", mode="magnitude", max_iter=17, tol=0.0, seed=0
    )
    assert result.hvp_count == 17 and result.converged == (False,)


def test_the_model_is_left_untouched():
    model, data = _bn_network(), _bn_data()
    model.train()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    for strategy in ("double_backward", "double_backward_per_batch", "forward_over_reverse"):
        hessian_eigenvalues(model, F.mse_loss, data, bn_mode="train", strategy=strategy, seed=0)
        hessian_trace(model, F.mse_loss, data, samples=2, bn_mode="train", strategy=strategy)
    spectral_density(model, F.mse_loss, data, lanczos_steps=3, bn_mode="train")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


# -- trace --------------------------------------------------------------------------------------


def test_hutchinson_trace_is_within_three_standard_errors():
    hessian, *_ = _bn_dense("eval")
    result = hessian_trace(_bn_network(), F.mse_loss, _bn_data(), samples=200, seed=0)
    assert isinstance(result, HessianTrace)
    assert result.samples == 200 and result.values.shape == (200,) and result.dimension == 50
    assert result.estimate == pytest.approx(float(result.values.mean()), rel=1e-14)
    assert result.standard_error == pytest.approx(float(result.values.std() / math.sqrt(200)))
    assert abs(result.estimate - float(hessian.trace())) <= 3 * result.standard_error


def test_hutchinson_standard_error_shrinks_like_one_over_root_n():
    model, loss_fn, data, matrix = _indefinite_quadratic()
    small = hessian_trace(model, loss_fn, data, samples=50, seed=1)
    large = hessian_trace(model, loss_fn, data, samples=800, seed=2)
    assert 2.5 <= small.standard_error / large.standard_error <= 6.4  # √16 = 4
    # a Rademacher draw's variance is 2 Σ_{a≠b} A_ab²
    off_diagonal = matrix - torch.diag(torch.diagonal(matrix))
    expected_sd = math.sqrt(2 * float((off_diagonal**2).sum()))
    assert large.standard_error * math.sqrt(800) == pytest.approx(expected_sd, rel=0.15)
    assert abs(large.estimate - float(SPECTRUM.sum())) <= 3 * large.standard_error


@pytest.mark.parametrize(
    "strategy", ["double_backward", "double_backward_per_batch", "forward_over_reverse"]
)
def test_probes_per_pass_does_not_change_the_result(strategy):
    model, data = _bn_network(), _bn_data()
    one = hessian_trace(model, F.mse_loss, data, samples=9, seed=3, strategy=strategy)
    many = hessian_trace(
        model, F.mse_loss, data, samples=9, seed=3, probes_per_pass=4, strategy=strategy
    )
    torch.testing.assert_close(many.values, one.values, rtol=0, atol=1e-12)


# -- spectral density ---------------------------------------------------------------------------


def test_slq_rules_reproduce_the_probes_quadratic_forms():
    # Gauss quadrature with m nodes is exact up to degree 2m − 1: for the unit probe z/√P,
    # Σ w θ = zᵀHz/P (Hutchinson's draw with the same probe) and Σ w θ² = ‖Hz‖²/P.
    model, data = _bn_network(), _bn_data()
    hessian, *_ = _bn_dense("eval")
    density = spectral_density(model, F.mse_loss, data, n_probes=6, lanczos_steps=4, seed=4)
    trace = hessian_trace(model, F.mse_loss, data, samples=6, seed=4)
    assert isinstance(density, SpectralDensity) and density.nodes.shape == (6, 4)
    torch.testing.assert_close(density.weights.sum(dim=1), torch.ones(6, dtype=DTYPE))
    assert (density.weights >= 0).all()
    torch.testing.assert_close(density.moment(1), trace.values / 50, rtol=1e-10, atol=0)
    generator = torch.Generator().manual_seed(4)
    for probe in range(6):
        z = torch.randint(0, 2, (50,), generator=generator).to(DTYPE) * 2 - 1
        assert float(density.moment(2)[probe]) == pytest.approx(
            float((hessian @ z).square().sum() / 50), rel=1e-10
        )


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_slq_moments_match_the_normalised_traces(bn_mode):
    hessian, *_ = _bn_dense(bn_mode)
    density = spectral_density(
        _bn_network(),
        F.mse_loss,
        _bn_data(),
        n_probes=40,
        lanczos_steps=8,
        bn_mode=bn_mode,
        seed=5,
    )
    power = torch.eye(50, dtype=DTYPE)
    for j in range(3):
        estimates = density.moment(j)
        exact = float(torch.trace(power)) / 50
        error = float(estimates.std() / math.sqrt(40)) if j else 1e-12
        assert abs(float(estimates.mean()) - exact) <= 4 * error + 1e-12
        power = power @ hessian


def test_full_lanczos_recovers_the_whole_spectrum():
    model, loss_fn, data, matrix = _indefinite_quadratic()
    density = spectral_density(model, loss_fn, data, n_probes=2, lanczos_steps=100, seed=6)
    assert density.nodes.shape == (2, 30)
    expected = torch.linalg.eigvalsh(matrix)
    for probe in range(2):
        torch.testing.assert_close(density.nodes[probe], expected, rtol=0, atol=1e-8)


def test_density_integrates_to_one_and_is_the_gaussian_mixture():
    model, loss_fn, data, _ = _indefinite_quadratic()
    density = spectral_density(model, loss_fn, data, n_probes=3, lanczos_steps=10, seed=7)
    grid = density.grid(20001)
    values = density.density(grid)
    assert (values >= 0).all()
    assert float(torch.trapezoid(values, grid)) == pytest.approx(1.0, abs=1e-6)
    sigma = 0.3
    wide = torch.linspace(-12, 10, 20001, dtype=DTYPE)
    assert float(torch.trapezoid(density.density(wide, sigma), wide)) == pytest.approx(
        1.0, abs=1e-6
    )
    point = 0.25
    mixture = sum(
        float(w) * math.exp(-0.5 * ((point - float(t)) / sigma) ** 2)
        for w, t in zip(density.weights.flatten(), density.nodes.flatten(), strict=True)
    ) / (3 * sigma * math.sqrt(2 * math.pi))
    assert float(density.density([point], sigma)[0]) == pytest.approx(mixture, rel=1e-12)
    assert density.default_sigma() == pytest.approx(
        math.sqrt(1e-5 * float(density.nodes.max() - density.nodes.min()))
    )


def test_plot_spectral_density_writes_a_png(tmp_path):
    model, loss_fn, data, _ = _indefinite_quadratic()
    density = spectral_density(model, loss_fn, data, n_probes=2, lanczos_steps=10, seed=8)
    path = plot_spectral_density(density, tmp_path / "plots" / "esd.png", points=500)
    assert path == tmp_path / "plots" / "esd.png"
    content = path.read_bytes()
    assert content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) > 1000


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k"),
        ({"k": -1}, "k"),
        ({"k": 1.5}, "k"),
        ({"k": True}, "k"),
        ({"k": 31}, "k"),
        ({"method": "arnoldi"}, "method"),
        ({"mode": "smallest"}, "mode"),
        ({"bn_mode": "batch"}, "bn_mode"),
        ({"strategy": "reverse_over_forward"}, "strategy"),
        ({"curvature": "kfac"}, "curvature"),
        ({"max_iter": 0}, "max_iter"),
        ({"k": 3, "max_iter": 2}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"seed": 0, "generator": torch.Generator()}, "generator or seed"),
    ],
)
def test_invalid_eigenvalue_arguments_raise(kwargs, match):
    model, loss_fn, data, _ = _indefinite_quadratic()
    with pytest.raises(ValueError, match=match):
        hessian_eigenvalues(model, loss_fn, data, **kwargs)


def test_invalid_trace_and_density_arguments_raise():
    model, loss_fn, data, _ = _indefinite_quadratic()
    for kwargs, match in [
        ({"samples": 1}, "samples"),
        ({"probes_per_pass": 0}, "probes_per_pass"),
        ({"bn_mode": "batch"}, "bn_mode"),
        ({"strategy": "x"}, "strategy"),
    ]:
        with pytest.raises(ValueError, match=match):
            hessian_trace(model, loss_fn, data, **kwargs)
    for kwargs, match in [
        ({"n_probes": 0}, "n_probes"),
        ({"lanczos_steps": 0}, "lanczos_steps"),
        ({"bn_mode": "batch"}, "bn_mode"),
        ({"curvature": "x"}, "curvature"),
    ]:
        with pytest.raises(ValueError, match=match):
            spectral_density(model, loss_fn, data, **kwargs)
    density = spectral_density(model, loss_fn, data, lanczos_steps=3, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        density.density([0.0], sigma=0.0)
