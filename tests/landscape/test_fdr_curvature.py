"""The Hessian's magnitude from the fluctuation-dissipation relations (Yaida 2019, second use).

Oracle: the exact stationary second moments of torch's SGD (heavy ball, dampening, weight
decay) on a diagonal quadratic F(θ) = ½ Σ a_i θ_i² with Gaussian minibatch noise of variance
σ². Per coordinate, x_t = (θ_t, b_t) is the linear recursion x_{t+1} = M x_t + n ξ_t with

    M = [[1 - η(1-δ)a, -ημ], [(1-δ)a, μ]],   n = σ(1-δ) (-η, 1),

so the stationary covariance solves the discrete Lyapunov equation S = M S Mᵀ + n nᵀ (solved
here as a 4x4 linear system, independently of the FDR derivation). From S:
⟨‖∇F‖²⟩ = Σ a_i² S_θθ, ⟨θ·∇F⟩ = Σ a_i S_θθ, ⟨bᵀHb⟩ = Σ a_i S_bb, ⟨‖b‖²⟩ = Σ S_bb, and the
three estimators of :meth:`FDRMonitor.curvature_estimate` all converge to the same number
h_v = Σ a_i S_bb / Σ S_bb (checked exactly on the closed forms, then statistically on a run).

Statistical tolerance: each estimate carries a batch-means interval (15 batches of 20
samples taken 5 steps apart, ~5 relaxation times of the slowest mode, over 2000 independent
chains; Student-t with 14 df); we require the closed-form value inside the 99.9 % interval (a
fixed-seed run; the interval's level bounds the chance that a correct estimator fails) and a
half-width below 3 % (so the check has power: a wrong coefficient, e.g. ignoring momentum in
``kinetic``, is 50 % off here and is rejected by the same interval).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchvalley.curvature.function import ParameterFunction
from torchvalley.landscape.gradient_statistics.fdr import FDRMonitor, fdr1_coefficient

F64 = torch.float64
LR, MOMENTUM, DAMPENING, WD = 0.05, 0.5, 0.2, 0.1
SAMPLES, BATCHES = 300, 15


def stationary_moments(a: torch.Tensor, lr, momentum, dampening, sigma=1.0):
    """(⟨θ_i²⟩, ⟨b_i²⟩) of torch's SGD on ½ Σ a_i θ_i² + Gaussian noise (Lyapunov equation)."""
    damp = dampening if momentum else 0.0
    thetas, buffers = [], []
    for ai in a.tolist():
        m = torch.tensor(
            [[1 - lr * (1 - damp) * ai, -lr * momentum], [(1 - damp) * ai, momentum]], dtype=F64
        )
        n = sigma * (1 - damp) * torch.tensor([-lr, 1.0], dtype=F64)
        system = torch.eye(4, dtype=F64) - torch.kron(m, m)
        s = torch.linalg.solve(system, torch.outer(n, n).reshape(-1)).reshape(2, 2)
        thetas.append(float(s[0, 0]))
        buffers.append(float(s[1, 1]))
    return torch.tensor(thetas, dtype=F64), torch.tensor(buffers, dtype=F64)


def test_closed_form_relations_hold_exactly():
    """FDR1 and FDR2 are exact for a quadratic: the three curvature forms coincide."""
    a = torch.logspace(-0.5, 0.5, 7, dtype=F64)
    for lr, mu, damp in [(0.05, 0.0, 0.0), (0.05, 0.9, 0.0), (0.02, 0.5, 0.2), (0.1, 0.8, 0.8)]:
        s_theta, s_b = stationary_moments(a, lr, mu, damp)
        c = fdr1_coefficient(lr, mu, damp)
        assert float((a * s_theta).sum()) == pytest.approx(c * float(s_b.sum()), rel=1e-10)
        assert float((a**2 * s_theta).sum()) == pytest.approx(c * float((a * s_b).sum()), rel=1e-10)
        h_v = float((a * s_b).sum() / s_b.sum())
        assert float((a**2 * s_theta).sum() / (a * s_theta).sum()) == pytest.approx(h_v, 1e-10)
        assert a.min() < h_v < a.max()


class _Quadratic(torch.nn.Module):
    def __init__(self, theta: torch.nn.Parameter) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.theta


def _run(hessian_monitor: bool = True):
    chains, dim = 2000, 8
    h = torch.logspace(-0.3, 0.3, dim, dtype=F64)
    theta = torch.nn.Parameter(torch.zeros(chains, dim, dtype=F64))
    model = _Quadratic(theta)

    def loss_fn(outputs, targets):
        return 0.5 * (outputs * h * outputs).sum()

    function = ParameterFunction(model, loss_fn, (torch.zeros(1, 1), torch.zeros(1)))
    opt = torch.optim.SGD([theta], lr=LR, momentum=MOMENTUM, dampening=DAMPENING, weight_decay=WD)
    gen = torch.Generator().manual_seed(11)
    monitor = FDRMonitor(opt, attach=False)
    cheap = FDRMonitor(opt, attach=False)
    for step in range(300 + SAMPLES * 5):
        theta.grad = theta.detach() * h + torch.randn(theta.shape, generator=gen, dtype=F64)
        opt.step()
        if step >= 300 and step % 5 == 4:
            monitor.observe_fdr2(function)
            cheap.observe_fdr2(function, hessian=False)
    return h + WD, monitor, cheap


# torch warns once, when forward-mode AD (ParameterFunction.hvp) first loads its
# decompositions through torch.jit.script; not ours to fix here.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_curvature_estimates_match_the_stationary_closed_form():
    a, monitor, cheap = _run()
    s_theta, s_b = stationary_moments(a.double(), LR, MOMENTUM, DAMPENING)
    exact = float((a * s_b).sum() / s_b.sum())
    assert float((a**2 * s_theta).sum() / (a * s_theta).sum()) == pytest.approx(exact, 1e-10)
    result = monitor.curvature_estimate(n_batches=BATCHES, confidence=0.999)
    for name in ("fluctuation", "kinetic", "direct"):
        estimate = getattr(result, name)
        assert estimate.n == SAMPLES
        assert estimate.lower <= exact <= estimate.upper, (name, exact, estimate)
        assert estimate.halfwidth < 0.03 * exact, (name, estimate)
    assert abs(result.anharmonicity) < 0.03
    # the fluctuation forms need no Hessian product: identical from the cheap monitor
    other = cheap.curvature_estimate(n_batches=BATCHES, confidence=0.999)
    assert other.direct is None and math.isnan(other.anharmonicity)
    assert other.fluctuation == result.fluctuation and other.kinetic == result.kinetic
    assert all(math.isnan(r) for r in cheap._fdr2[1])
    # negative control: the plain-SGD coefficient (η/2) instead of c is rejected
    c = fdr1_coefficient(LR, MOMENTUM, DAMPENING)
    wrong = result.kinetic.ratio * c / (0.5 * LR)
    assert not result.kinetic.lower <= wrong <= result.kinetic.upper
    # state_dict round trip keeps the extra records
    fresh = FDRMonitor(monitor.optimizer, attach=False)
    fresh.load_state_dict(monitor.state_dict())
    assert fresh.curvature_estimate(n_batches=BATCHES, confidence=0.999) == result
    monitor.reset()
    assert monitor.curvature_estimate().fluctuation.n == 0


def test_curvature_estimate_needs_common_settings():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        FDRMonitor(opt, attach=False).curvature_estimate()
