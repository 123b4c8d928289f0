"""The two-layer ReLU NTK of Du, Zhai, Póczos & Singh (ICLR 2019): ``ntk_gram``, ``ntk_lambda0``,
``TwoLayerReLU`` and the gradient-descent harness ``train_two_layer_relu``.

Oracles:

* ``H∞`` against Monte Carlo: the finite-width ``H(0)`` with ``m = 10⁶`` Gaussian neurons is an
  average of ``m`` i.i.d. terms ``x_iᵀx_j·Bernoulli(p_ij)``, ``p_ij = (π − θ_ij)/(2π)``, so by
  the CLT each entry is ``H∞_ij + N(0, (x_iᵀx_j)² p(1−p)/m)``; 21 standardised errors are all
  below 6 except with probability ≈ 21·2e-9 (and Hoeffding's inequality, which needs no CLT,
  bounds every entry by ``|x_iᵀx_j|·√(ln(2·21/δ)/(2m)) ≈ 5e-3`` at δ = 1e-9);
* closed-form entries (diagonal ``‖x‖²/2``, orthogonal and antiparallel pairs 0);
* the finite-width ``H`` against the Jacobian Gram ``J Jᵀ`` of the network (``torch.func``) and
  the closed-form gradient step against autograd;
* exact linear dynamics: on a step where no activation pattern changes, ``u`` is linear in
  ``W``, so ``y − u(k+1) = (I − ηH(k))(y − u(k))`` exactly (Du et al.'s decomposition without
  the pattern-change term);
* the gradient-descent theorem's contraction ``‖y − u(k+1)‖² ≤ (1 − ηλ₀/2)‖y − u(k)‖²`` for
  every step at the paper's step size ``η = λ₀/n²``, with its hypothesis
  ``λ_min(H(k)) ≥ λ₀/2`` checked too;
* the ``1/√m`` shrinking of ``max_r ‖w_r − w_r(0)‖`` (the bound ``R' ∝ ‖y − u(0)‖/√m``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from torchvalley.landscape.theory.ntk import (
    NTKTrajectory,
    TwoLayerReLU,
    ntk_gram,
    ntk_lambda0,
    train_two_layer_relu,
)

DT = torch.float64
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ntk_two_layer.py"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are small: on a loaded 2-core machine, OpenMP threads that wait for each
    other make every step cost a scheduler time slice (40× slower measured), so use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def _problem(n: int = 8, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs uniform on the sphere and Gaussian targets, as in the paper's Section 5."""
    x = _sphere(n, d, seed)
    y = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=DT)
    return x, y


def test_closed_form_entries() -> None:
    e = torch.eye(3, dtype=DT)
    x = torch.stack([e[0], e[1], -e[0], 2 * (e[0] + e[1]) / math.sqrt(2)])
    h = ntk_gram(x)
    # diagonal ‖x‖²/2; orthogonal → 0; antiparallel → angle π → 0
    assert torch.allclose(h.diagonal(), torch.tensor([0.5, 0.5, 0.5, 2.0], dtype=DT))
    assert h[0, 1] == 0 and h[0, 2] == 0
    # x₀ vs 2·(e₀+e₁)/√2: inner product √2, angle π/4 → √2·(3π/4)/(2π) = 3√2/8
    assert h[0, 3].item() == pytest.approx(3 * math.sqrt(2) / 8, rel=1e-14)
    assert torch.equal(h, h.T)
    # nearly parallel unit inputs: the angle must be accurate (arccos would be off by ~1e-9)
    theta = 1e-7
    pair = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)]], dtype=DT)
    expected = math.cos(theta) * (math.pi - theta) / (2 * math.pi)
    assert ntk_gram(pair)[0, 1].item() == pytest.approx(expected, rel=1e-14)


def test_closed_form_matches_monte_carlo() -> None:
    x = _sphere(6, 5, seed=1)
    m = 10**6
    w = torch.randn(m, 5, generator=torch.Generator().manual_seed(2), dtype=DT)
    h_inf, h_mc = ntk_gram(x), ntk_gram(x, w)
    cosine = (x @ x.T).clamp(-1, 1)
    p = (math.pi - torch.arccos(cosine)) / (2 * math.pi)
    std = cosine.abs() * torch.sqrt(p * (1 - p) / m)
    z = (h_mc - h_inf).abs() / std
    assert float(z.max()) < 6.0
    assert float((h_mc - h_inf).abs().max()) < 5e-3  # the Hoeffding bound, CLT-free
    # the error is of the CLT scale, not smaller (a wrong p could hide behind a loose bound)
    assert float(z.max()) > 0.5


def test_psd_and_lambda0_positive_unless_parallel() -> None:
    # n = 30 points in d = 3: the linear kernel has rank 3, but H∞ is positive definite
    x = _sphere(30, 3, seed=3)
    h = ntk_gram(x)
    eigenvalues = torch.linalg.eigvalsh(h)
    lambda0 = ntk_lambda0(x)
    assert lambda0 == pytest.approx(float(eigenvalues[0]), rel=1e-12)
    rounding = 1e3 * torch.finfo(DT).eps * float(eigenvalues[-1])
    assert lambda0 > rounding  # Du et al. (Section 3): no two inputs parallel ⇒ λ₀ > 0
    # a repeated input (parallel, and the same point scaled) makes H∞ singular
    parallel = torch.cat([x, x[:1]])
    assert abs(ntk_lambda0(parallel)) < 1e-12
    scaled = torch.cat([x, 3 * x[:1]])
    assert float(torch.linalg.eigvalsh(ntk_gram(scaled))[0]) > -1e-12  # still PSD
    assert abs(ntk_lambda0(scaled)) < 1e-3 * lambda0
    # general norms: H∞ only depends on directions through the angle
    radii = torch.linspace(0.5, 2.0, 30, dtype=DT)[:, None]
    assert torch.allclose(ntk_gram(radii * x), (radii * radii.T) * h, atol=1e-14)


def test_finite_width_gram_is_the_jacobian_gram() -> None:
    x, _ = _problem(n=5, d=4)
    net = TwoLayerReLU(4, 50, generator=torch.Generator().manual_seed(0), dtype=DT)
    params = {"weight": net.weight.detach()}
    jacobian = torch.func.jacrev(lambda p: torch.func.functional_call(net, p, (x,)))(params)
    j = jacobian["weight"].reshape(5, -1)
    assert torch.allclose(ntk_gram(x, net), j @ j.T, atol=1e-13)
    assert torch.equal(ntk_gram(x, net), ntk_gram(x, net.weight))


def test_module_matches_the_paper_parametrisation() -> None:
    net = TwoLayerReLU(3, 7, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert [name for name, _ in net.named_parameters()] == ["weight"]  # a is not trained
    a = net.output_weights
    assert set(a.tolist()) <= {-1.0, 1.0}
    x = _sphere(4, 3, seed=0)
    by_hand = torch.stack(
        [
            sum(a[r] * max(0.0, float(net.weight[r].detach() @ xi)) for r in range(7))
            / math.sqrt(7)
            for xi in x
        ]
    )
    assert torch.allclose(net(x), by_hand.to(DT), atol=1e-14)
    assert torch.equal(net.activation_pattern(x), x @ net.weight.detach().T >= 0)


def test_gradient_step_matches_autograd() -> None:
    x, y = _problem(n=6, d=5)
    net = TwoLayerReLU(5, 40, generator=torch.Generator().manual_seed(0), dtype=DT)
    before = net.weight.detach().clone()
    loss = 0.5 * ((net(x) - y) ** 2).sum()
    (gradient,) = torch.autograd.grad(loss, [net.weight])
    trajectory = train_two_layer_relu(net, x, y, steps=1, lr=0.3)
    assert trajectory.loss[0] == pytest.approx(loss.item(), rel=1e-14)
    assert torch.allclose(net.weight.detach(), before - 0.3 * gradient, atol=1e-14)
    with torch.no_grad():
        after = 0.5 * float(((net(x) - y) ** 2).sum())
    assert trajectory.loss[1] == pytest.approx(after, rel=1e-14)


def test_residual_follows_gram_dynamics_exactly_without_pattern_changes() -> None:
    x, y = _problem()
    net = TwoLayerReLU(10, 200, generator=torch.Generator().manual_seed(3), dtype=DT)
    lr = 4 * ntk_lambda0(x) / x.shape[0] ** 2
    checked = 0
    for _ in range(20):
        pattern, gram = net.activation_pattern(x), ntk_gram(x, net)
        residual = y - net(x).detach()
        train_two_layer_relu(net, x, y, steps=1, lr=lr)
        if not torch.equal(net.activation_pattern(x), pattern):
            continue
        predicted = residual - lr * gram @ residual
        assert torch.allclose(y - net(x).detach(), predicted, atol=1e-13)
        checked += 1
    assert checked >= 10


def test_linear_convergence_at_the_paper_step_size() -> None:
    x, y = _problem()
    net = TwoLayerReLU(10, 1000, generator=torch.Generator().manual_seed(0), dtype=DT)
    trajectory = train_two_layer_relu(net, x, y, steps=2000, record_every=100)
    assert isinstance(trajectory, NTKTrajectory)
    lambda0 = ntk_lambda0(x)
    assert trajectory.lambda0 == lambda0
    assert trajectory.lr == pytest.approx(lambda0 / 64)  # η = λ₀/n²
    rate = 1 - trajectory.lr * lambda0 / 2
    assert trajectory.rate == pytest.approx(rate)
    loss = np.array(trajectory.loss)
    assert len(loss) == 2001 and trajectory.record_steps[-1] == 2000
    # the GD theorem, per step (as proved by induction) up to rounding
    assert np.all(loss[1:] <= rate * loss[:-1] * (1 + 1e-12))
    assert np.all(loss <= np.array(trajectory.rate_bound()) * (1 + 1e-12))
    slope = np.polyfit(np.arange(len(loss)), np.log(loss), 1)[0]
    assert slope <= math.log(rate)
    assert loss[-1] < 0.05 * loss[0]  # the bound alone only promises ≈ 0.69
    # the hypothesis behind the rate: H(k) stays near H∞, λ_min(H(k)) ≥ λ₀/2
    assert min(trajectory.lambda_min) >= lambda0 / 2
    assert max(trajectory.pattern_change) < 0.05


def test_weights_move_less_as_width_grows() -> None:
    """``max_r ‖w_r(k) − w_r(0)‖ ∝ ‖y − u(0)‖/√m``: log-log slope −½ against the width.

    Tolerances, calibrated on 20 seeds of this set-up (n = 8, d = 10, η = λ₀/n², 1000 steps,
    m ∈ {100, 1000, 10000}): the raw slope was −0.48 ± 0.06 (range −0.59..−0.37), because
    ``‖y − u(0)‖`` is redrawn with each width; divided by ``‖y − u(0)‖``, as in the paper's
    bound R', it was −0.494 ± 0.018 (range −0.52..−0.45). We allow ±0.2 (≈3σ) and ±0.1 (≈5σ).
    """
    x, y = _problem()
    widths = [100, 1000, 10000]
    movement, normalised, patterns, frobenius = [], [], [], []
    for width in widths:
        net = TwoLayerReLU(10, width, generator=torch.Generator().manual_seed(width), dtype=DT)
        trajectory = train_two_layer_relu(net, x, y, steps=1000, record_every=1000)
        assert trajectory.loss[-1] < 0.5 * trajectory.loss[0]
        movement.append(trajectory.max_movement[-1])
        normalised.append(movement[-1] / math.sqrt(2 * trajectory.loss[0]))
        patterns.append(trajectory.pattern_change[-1])
        frobenius.append(trajectory.frobenius_movement[-1])
    assert movement[0] > movement[1] > movement[2]
    logs = np.log(widths)
    assert np.polyfit(logs, np.log(movement), 1)[0] == pytest.approx(-0.5, abs=0.2)
    assert np.polyfit(logs, np.log(normalised), 1)[0] == pytest.approx(-0.5, abs=0.1)
    assert patterns[2] < patterns[0]  # fewer activation patterns flip (probability O(R))
    # while each neuron moves O(1/√m), the whole matrix moves O(1)
    assert max(frobenius) < 3 * min(frobenius)


def test_validation() -> None:
    x, y = _problem(n=4, d=3)
    net = TwoLayerReLU(3, 5, dtype=DT)
    with pytest.raises(ValueError, match="zero input"):
        ntk_gram(torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="hidden weights"):
        ntk_gram(x, torch.ones(5, 4, dtype=DT))
    with pytest.raises(ValueError, match="targets"):
        train_two_layer_relu(net, x, y[:3], steps=1)
    with pytest.raises(ValueError, match="lr"):
        train_two_layer_relu(net, x, y, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="sizes"):
        TwoLayerReLU(0, 5)


def test_example_script_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("ntk_two_layer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "ntk_two_layer.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "| 10000 |" in out and "bound L(0)(1−ηλ₀/2)^k" in out
