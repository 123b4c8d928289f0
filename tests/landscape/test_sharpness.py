"""Oracle tests of ρ-sharpness: closed forms on linear and quadratic losses (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.landscape.sharpness import SharpnessResult, sharpness

DTYPE = torch.float64


def _least_squares(seed: int, n: int = 40, d: int = 5, at_minimum: bool = False):
    """A bias-free linear model with MSE: L(w) = mean((Xw − y)²), Hessian H = 2XᵀX/n."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, generator=generator, dtype=DTYPE)
    # Distinct curvatures, so the top eigenvector is well separated.
    inputs = inputs * torch.linspace(0.5, 2.0, d, dtype=DTYPE)
    model = nn.Linear(d, 1, bias=False).to(DTYPE)
    if at_minimum:
        targets = torch.randn(n, 1, generator=generator, dtype=DTYPE)
        solution = torch.linalg.lstsq(inputs, targets).solution
        with torch.no_grad():
            model.weight.copy_(solution.T)
    else:
        targets = torch.zeros(n, 1, dtype=DTYPE)
        with torch.no_grad():
            model.weight.zero_()
    hessian = 2.0 * inputs.T @ inputs / n
    return model, (inputs, targets), hessian


class Point(nn.Module):
    """The parameters themselves as the output: any loss of ``outputs`` is a loss of ``w``."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(value.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.w


def _quadratic_about(hessian: torch.Tensor):
    """``loss(w, c) = ½ (w − c)ᵀ H (w − c)``: minimum c, Hessian H."""

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        r = outputs - targets
        return 0.5 * r @ hessian @ r

    return loss_fn


@pytest.mark.parametrize("at_minimum", [False, True], ids=["w=0", "least-squares-minimum"])
@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_worst_case_on_a_quadratic_is_half_rho_squared_lambda_max(at_minimum, rho):
    model, data, hessian = _least_squares(seed=1, at_minimum=at_minimum)
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
    expected = 0.5 * rho**2 * float(eigenvalues[-1])

    result = sharpness(model, F.mse_loss, data, rho, n_iters=100)

    assert isinstance(result, SharpnessResult) and result.kind == "worst"
    assert result.value == pytest.approx(expected, rel=1e-4)
    assert result.value <= expected * (1 + 1e-9)  # an ascent gives a lower bound
    assert result.perturbed_loss - result.loss == pytest.approx(result.value, abs=1e-15)
    # The maximizer lies on the sphere, along the top eigenvector (either sign).
    delta = result.delta[0].reshape(-1)
    assert result.delta_norm == pytest.approx(rho, rel=1e-12)
    cosine = abs(float(delta @ eigenvectors[:, -1])) / float(delta.norm())
    assert cosine >= 1 - 1e-4


@pytest.mark.parametrize("rho", [0.01, 0.3, 2.0])
def test_worst_case_on_a_linear_loss_is_rho_times_gradient_norm(rho):
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(30, 4, generator=generator, dtype=DTYPE)
    model = nn.Linear(4, 1).to(DTYPE)  # L(w, b) = x̄·w + b: gradient (x̄, 1) everywhere

    def mean_output(outputs, targets):
        return outputs.mean()

    gradient = torch.cat([inputs.mean(0), torch.ones(1, dtype=DTYPE)])

    result = sharpness(model, mean_output, (inputs, torch.zeros(30, 1, dtype=DTYPE)), rho)

    assert result.value == pytest.approx(rho * float(gradient.norm()), rel=1e-12)
    delta = torch.cat([d.reshape(-1) for d in result.delta])
    # The value is flat to second order at the maximizer: δ is accurate to about √eps.
    assert torch.allclose(delta, rho * gradient / gradient.norm(), rtol=0, atol=1e-6 * rho)


def test_adaptive_on_a_linear_loss_is_rho_times_scaled_gradient_norm():
    # max over ‖δ / T‖ ≤ ρ of g·δ, δ = T u: ρ ‖T g‖ with T = |w| + η.
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(30, 4, generator=generator, dtype=DTYPE)
    model = nn.Linear(4, 1, bias=False).to(DTYPE)
    eta, rho = 0.01, 0.2
    scale = model.weight.detach().abs().reshape(-1) + eta

    def mean_output(outputs, targets):
        return outputs.mean()

    result = sharpness(model, mean_output, (inputs, inputs[:, :1]), rho, kind="adaptive", eta=eta)

    assert result.kind == "adaptive"
    assert result.value == pytest.approx(rho * float((scale * inputs.mean(0)).norm()), rel=1e-12)


@pytest.mark.parametrize("diagonal", [True, False], ids=["diagonal-H", "dense-H"])
def test_adaptive_on_a_quadratic_is_half_rho_squared_lambda_max_of_THT(diagonal):
    # At the minimum c of ½(w − c)ᵀH(w − c), with δ = T u (T = diag(|c| + η)), the rise is
    # ½ uᵀ (T H T) u, whose max over ‖u‖ ≤ ρ is ½ ρ² λ_max(T H T).
    generator = torch.Generator().manual_seed(4)
    d, eta, rho = 5, 0.01, 0.3
    if diagonal:
        hessian = torch.diag(torch.tensor([1.0, 4.0, 0.5, 2.0, 3.0], dtype=DTYPE))
    else:
        factor = torch.randn(d, d, generator=generator, dtype=DTYPE)
        hessian = factor @ factor.T / d + 0.1 * torch.eye(d, dtype=DTYPE)
    centre = torch.tensor([0.3, -0.1, 2.0, 0.05, -1.0], dtype=DTYPE)
    model = Point(centre)
    scale = centre.abs() + eta
    scaled = scale[:, None] * hessian * scale[None, :]
    expected = 0.5 * rho**2 * float(torch.linalg.eigvalsh(scaled)[-1])
    if diagonal:
        assert expected == pytest.approx(0.5 * rho**2 * float((hessian.diag() * scale**2).max()))

    result = sharpness(
        model,
        _quadratic_about(hessian),
        (torch.zeros(1), centre),
        rho,
        kind="adaptive",
        eta=eta,
        n_iters=100,
    )

    assert result.value == pytest.approx(expected, rel=1e-4)
    # The maximizer satisfies the scaled constraint ‖δ / T‖ = ρ.
    assert float((result.delta[0] / scale).norm()) == pytest.approx(rho, rel=1e-12)


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_average_case_on_a_quadratic_matches_the_trace_within_three_standard_errors(
    distribution,
):
    # E[½ δᵀHδ] = ½ σ² tr(H) for δ ~ N(0, σ²I), σ = ρ/√d; ½ ρ² tr(H)/d on the sphere ‖δ‖ = ρ.
    model, data, hessian = _least_squares(seed=5)
    rho, d = 0.4, hessian.shape[0]
    trace = float(hessian.trace())
    expected = 0.5 * (rho / math.sqrt(d)) ** 2 * trace  # the same value for both

    result = sharpness(
        model,
        F.mse_loss,
        data,
        rho,
        kind="average",
        distribution=distribution,
        n_samples=400,
        generator=torch.Generator().manual_seed(6),
    )

    assert result.kind == "average" and result.n_samples == 400 and result.iterations == 400
    assert result.std_error > 0
    assert abs(result.value - expected) <= 3 * result.std_error
    if distribution == "sphere":
        assert result.delta_norm == pytest.approx(rho, rel=1e-12)
    else:  # E‖δ‖ is a little below ρ = √E‖δ‖²
        assert 0.5 * rho < result.delta_norm < rho


def test_average_case_is_below_worst_case():
    model, data, _ = _least_squares(seed=7)
    worst = sharpness(model, F.mse_loss, data, 0.3, n_iters=50)
    average = sharpness(model, F.mse_loss, data, 0.3, kind="average", n_samples=50)
    assert 0 < average.value < worst.value


def test_batches_give_the_value_of_the_concatenated_data():
    model, (inputs, targets), _ = _least_squares(seed=8, at_minimum=True)
    whole = sharpness(model, F.mse_loss, (inputs, targets), 0.2, n_iters=30)
    split = [(inputs[:10], targets[:10]), (inputs[10:], targets[10:])]
    batched = sharpness(model, F.mse_loss, split, 0.2, n_iters=30)
    assert batched.value == pytest.approx(whole.value, rel=1e-10)


def test_deterministic_given_a_generator_and_restarts_only_help():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(DTYPE)
    generator = torch.Generator().manual_seed(9)
    data = (torch.randn(20, 3, generator=generator, dtype=DTYPE), torch.zeros(20, 1, dtype=DTYPE))

    def run(restarts):
        return sharpness(
            model,
            F.mse_loss,
            data,
            0.5,
            n_iters=5,
            n_restarts=restarts,
            generator=torch.Generator().manual_seed(10),
        )

    one, again, three = run(1), run(1), run(3)
    assert one == again  # the dataclass compares every number
    assert three.value >= one.value
    assert three.iterations > one.iterations


def test_model_is_unchanged_and_zero_radius_gives_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).to(DTYPE)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = (torch.randn(8, 3, dtype=DTYPE), torch.zeros(8, 1, dtype=DTYPE))

    for kind in ("worst", "adaptive", "average"):
        sharpness(model, F.mse_loss, data, 0.1, kind=kind, n_iters=3, n_samples=3)
    sharpness(model, F.mse_loss, data, 0.1, bn_mode="train", n_iters=3)
    zero = sharpness(model, F.mse_loss, data, 0.0)

    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert zero.value == 0.0 and zero.iterations == 0 and zero.delta_norm == 0.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"kind": "sam"}, "kind"),
        ({"n_iters": 0}, "n_iters"),
        ({"n_restarts": 0}, "n_restarts"),
        ({"step_size": 0.0}, "step_size"),
        ({"eta": -1.0}, "eta"),
        ({"n_samples": 1}, "n_samples"),
        ({"distribution": "uniform"}, "distribution"),
        ({"bn_mode": "frozen"}, "bn_mode"),
        ({"parameters": ["nope"]}, "parameters"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(kwargs, name):
    model, data, _ = _least_squares(seed=11)
    arguments = {"rho": 0.1, **kwargs}
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        sharpness(model, F.mse_loss, data, **arguments)
