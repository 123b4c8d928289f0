"""DiMS (torchvalley.dynamics.dims) against closed forms on 2-D valleys with known minimum sets.

Oracles: the ring (|θ|² − 1)² (minimum set: the unit circle) and the hyperbola (1 − θ₁θ₂)²
(minimum set: θ₁θ₂ = 1); a ReLU pair with the rescaling symmetry; the energy
E = ½θ̇ᵀMθ̇ + ½ż² + gz, conserved to O(h²) without friction (the error ratio for h and h/2 is
≈ 4) and non-increasing with it; the kinetic energy of the Monge metric ½θ̇ᵀ(I + ∇L∇Lᵀ)θ̇,
computed independently; the ride height κ²s⁴/(2g²λ) of motion along a curved set.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from torchvalley.dynamics.dims import DiMS


def ring(theta: torch.Tensor) -> torch.Tensor:
    return (theta.pow(2).sum() - 1) ** 2


def hyperbola(theta: torch.Tensor) -> torch.Tensor:
    return (1 - theta[0] * theta[1]) ** 2


def run(loss_fn, start, steps, **hyper):
    theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = DiMS([theta], **hyper)

    def closure():
        opt.zero_grad()
        loss = loss_fn(theta)
        loss.backward()
        return loss

    path, losses, energies = [], [], []
    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
        path.append(theta.detach().clone())
        energies.append(opt.energy())
    return torch.stack(path), torch.tensor(losses), torch.tensor(energies), opt, closure


def test_ring_settles_onto_the_circle_and_keeps_going_around_it_uniformly():
    # g = 200: the ride height of circling at speed s is s⁴/(16 g²) (module docstring).
    path, losses, _, opt, _ = run(
        ring, [1.02, 0.0], 5_000, lr=0.02, gravity=200.0, friction=5.0, energy=2.0, seed=3
    )
    settled = slice(1_000, None)
    assert losses[settled].max() <= 1e-6
    speed = math.sqrt(2 * opt.kinetic_energy())
    assert speed > 0.1  # it did not stop
    # The ride height matches the centripetal balance: loss ≈ s⁴ / (16 g²).
    assert losses[-1] == pytest.approx(speed**4 / (16 * 200.0**2), rel=0.1)
    # Theory: once the across motion is gone the energy is conserved and the particle moves
    # along the circle at constant speed, so the time spent per angle bin is uniform: over R
    # turns (the last one partial) a bin's share is off 1/B by at most 1/(B R). Margin 2×, plus
    # two samples' share for the bin edges.
    angles = torch.atan2(path[settled, 1], path[settled, 0])
    turning = (angles.diff() + math.pi).remainder(2 * math.pi) - math.pi
    turns = float(turning.sum().abs()) / (2 * math.pi)
    assert turns > 5
    bins = 12
    fractions = torch.histc(angles, bins=bins, min=-math.pi, max=math.pi) / len(angles)
    assert (fractions - 1 / bins).abs().max() <= 2 / (turns * bins) + 2 / len(angles)


def test_sgld_spreads_off_the_ring_and_gradient_descent_stops_at_one_point():
    torch.manual_seed(0)
    _, dims_losses, _, _, _ = run(
        ring, [1.4, 0.2], 2_000, lr=0.01, gravity=100.0, friction=5.0, energy=2.0
    )
    # SGLD at the same budget, at a temperature giving the same typical loss scale E₀:
    theta = torch.tensor([1.4, 0.2], dtype=torch.float64, requires_grad=True)
    sgld_losses = []
    for _ in range(2_000):
        loss = ring(theta)
        (grad,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta += -0.001 * grad + math.sqrt(2 * 0.001 * 0.01) * torch.randn(
                2, dtype=torch.float64
            )
        sgld_losses.append(float(loss.detach()))
    sgld = torch.tensor(sgld_losses[1_000:])
    assert sgld.mean() > 100 * dims_losses[1_000:].max()  # SGLD lives off the set
    # Gradient descent: stops at one point of the set (its angle freezes).
    theta = torch.tensor([1.4, 0.2], dtype=torch.float64, requires_grad=True)
    angles = []
    for _ in range(3_000):
        (grad,) = torch.autograd.grad(ring(theta), theta)
        with torch.no_grad():
            theta -= 0.01 * grad
        angles.append(math.atan2(theta[1].item(), theta[0].item()))
    assert abs(angles[-1] - angles[-1000]) < 1e-9


def test_hyperbola_moves_along_the_set_at_constant_speed():
    path, losses, *_ = run(
        hyperbola, [1.5, 1.0], 3_000, lr=0.005, gravity=100.0, friction=5.0, energy=1.0, seed=1
    )
    settled = slice(1_000, None)
    assert losses[settled].max() <= 1e-6
    product = path[settled, 0] * path[settled, 1]
    assert (product - 1).abs().max() <= 1e-3  # on θ₁θ₂ = 1
    steps = (path[1:] - path[:-1]).norm(dim=1)[1_000:]
    assert steps.mean() > 1e-4  # moving
    assert steps.std() / steps.mean() <= 0.05  # at constant speed (a geodesic of the set)
    assert (path[-1] - path[1_000]).norm() > 1.0  # and far along it
    # (Further out the normal curvature 2|θ|² grows and h must shrink: at θ₂ ≈ 29 this h is
    # past the stability limit and the step raises, see test_too_large_a_step_fails_newton.)


def test_relu_rescaling_orbit_is_explored_at_minimal_loss():
    # f(x) = w2 relu(w1 x) on x > 0 fits y = 2x exactly whenever w1 w2 = 2, w1 > 0: the
    # minimum set is the rescaling orbit (w1, w2) -> (a w1, w2 / a).
    x = torch.linspace(0.1, 1.0, 16, dtype=torch.float64)
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = DiMS([w], lr=0.005, gravity=100.0, friction=5.0, energy=0.5, seed=2)

    def closure():
        opt.zero_grad()
        loss = torch.mean((w[1] * torch.relu(w[0] * x) - 2 * x) ** 2)
        loss.backward()
        return loss

    products, losses, first = [], [], []
    for _ in range(2_000):
        losses.append(float(opt.step(closure).detach()))
        products.append(float(w[0].detach() * w[1].detach()))
        first.append(float(w[0].detach()))
    assert max(losses[500:]) <= 1e-6
    assert max(abs(p - 2) for p in products[500:]) <= 1e-3
    assert max(first) - min(first) > 0.3  # it moved along the orbit


@pytest.mark.parametrize("mass", [1.0, 3.0])
def test_energy_conserved_to_second_order_without_friction(mass):
    def drift(h):
        theta = torch.nn.Parameter(torch.tensor([1.3, 0.4], dtype=torch.float64))
        opt = DiMS([{"params": [theta], "mass": mass}], lr=h, gravity=2.0, friction=0.0, energy=1.0)

        def closure():
            opt.zero_grad()
            loss = ring(theta)
            loss.backward()
            return loss

        energies = []
        for _ in range(round(2.0 / h)):  # the same physical time
            opt.step(closure)
            energies.append(opt.energy())
        e = torch.tensor(energies)
        return float((e - e[0]).abs().max())

    coarse, fine = drift(0.004), drift(0.002)
    assert 3.0 <= coarse / fine <= 5.0  # O(h²): halving h quarters the error


def test_energy_decreases_with_friction_and_only_across_level_sets():
    _, _, energies, opt, _ = run(
        ring, [1.4, 0.2], 1_500, lr=0.01, gravity=10.0, friction=1.0, energy=1.0
    )
    increases = energies.diff()
    assert increases.max() <= 1e-9 * energies.abs().max()  # non-increasing (Newton tol slack)
    # The friction operator alone: the along-level-set part of θ̇ is untouched.
    grad = [torch.tensor([0.6, 0.8], dtype=torch.float64)]
    v = [torch.tensor([1.0, -2.0], dtype=torch.float64)]
    n = [g / 2.0 for g in grad]  # mass 2
    tangent = v[0] - (v[0] @ grad[0]) / (grad[0] @ n[0]) * n[0]
    opt._friction(v, grad, n, 0.7)
    new_tangent = v[0] - (v[0] @ grad[0]) / (grad[0] @ n[0]) * n[0]
    torch.testing.assert_close(new_tangent, tangent, rtol=0, atol=1e-15)


def test_friction_scales_the_across_component_by_exp_minus_gamma_t():
    grad = [torch.tensor([0.6, 0.8], dtype=torch.float64)]
    v = [torch.tensor([1.0, -2.0], dtype=torch.float64)]
    n = [g / 2.0 for g in grad]
    across = float(v[0] @ grad[0])
    theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    returned = DiMS([theta])._friction(v, grad, n, 0.7)
    assert returned == pytest.approx(across * math.exp(-0.7), rel=1e-12)  # ż = ∇L·θ̇


def test_kinetic_energy_is_the_monge_metrics():
    _, _, _, opt, _ = run(ring, [1.2, -0.5], 50, lr=0.01, gravity=1.0, friction=0.5, energy=0.7)
    (theta,) = opt.param_groups[0]["params"]
    v = opt.state[theta]["velocity"]
    grad = opt.state[theta]["grad"]
    monge = 0.5 * (v @ v + (grad @ v) ** 2)  # ½ θ̇ᵀ(I + ∇L∇Lᵀ)θ̇
    assert opt.kinetic_energy() == pytest.approx(float(monge), rel=1e-12)
    torch.testing.assert_close(grad, 4 * (theta.detach().pow(2).sum() - 1) * theta.detach())


def test_initial_kinetic_energy_is_e0_and_seeded():
    a = run(ring, [1.2, -0.5], 1, lr=1e-4, gravity=1.0, friction=0.0, energy=0.7, seed=5)[3]
    b = run(ring, [1.2, -0.5], 1, lr=1e-4, gravity=1.0, friction=0.0, energy=0.7, seed=5)[3]
    c = run(ring, [1.2, -0.5], 1, lr=1e-4, gravity=1.0, friction=0.0, energy=0.7, seed=6)[3]
    p = [a.param_groups[0]["params"][0], b.param_groups[0]["params"][0]]
    assert torch.equal(p[0], p[1])
    assert not torch.equal(p[0], c.param_groups[0]["params"][0])
    # after one tiny step the kinetic energy is E₀ up to the work of gravity over h
    assert a.kinetic_energy() == pytest.approx(0.7, rel=1e-2)


def test_resume_mid_run_is_bit_identical():
    _, _, _, opt, closure = run(
        ring, [1.4, 0.2], 40, lr=0.01, gravity=3.0, friction=1.0, energy=1.0
    )
    state = copy.deepcopy(opt.state_dict())  # torch's state dict holds live tensors
    (theta,) = opt.param_groups[0]["params"]
    saved = theta.detach().clone()
    for _ in range(20):
        opt.step(closure)
    expected = theta.detach().clone()
    other = torch.nn.Parameter(saved.clone())
    resumed = DiMS([other], lr=0.01, gravity=3.0, friction=1.0, energy=1.0)
    resumed.load_state_dict(state)

    def closure2():
        resumed.zero_grad()
        loss = ring(other)
        loss.backward()
        return loss

    for _ in range(20):
        resumed.step(closure2)
    assert torch.equal(other.detach(), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gravity": 0.0}, "gravity"),
        ({"gravity": -1.0}, "gravity"),
        ({"friction": -0.1}, "friction"),
        ({"energy": -1.0}, "energy"),
        ({"lr": 0.0}, "lr"),
        ({"mass": 0.0}, "mass"),
        ({"max_newton": 0}, "max_newton"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiMS([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_closures_and_groups_raise():
    theta = torch.nn.Parameter(torch.tensor([1.2, 0.1], dtype=torch.float64))
    opt = DiMS([theta])
    with pytest.raises(ValueError, match="closure"):
        opt.step()

    def vector_loss():
        opt.zero_grad()
        loss = theta.pow(2)
        loss.sum().backward()
        return loss

    with pytest.raises(ValueError, match="scalar"):
        opt.step(vector_loss)
    other = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="Invalid gravity: param_groups\\[1\\]"):
        DiMS([{"params": [theta]}, {"params": [other], "gravity": 2.0}]).step(lambda: theta.sum())


def test_non_finite_loss_stops_with_the_parameters_restored():
    theta = torch.nn.Parameter(torch.tensor([1.2, 0.1], dtype=torch.float64))
    opt = DiMS([theta], lr=0.01)
    calls = [0]

    def closure():
        opt.zero_grad()
        calls[0] += 1
        loss = ring(theta) * (float("nan") if calls[0] > 3 else 1.0)
        loss.backward()
        return loss

    opt.step(closure)
    before = theta.detach().clone()
    with pytest.raises(RuntimeError, match="not finite"):
        for _ in range(5):
            before = theta.detach().clone()
            opt.step(closure)
    assert torch.equal(theta.detach(), before)


def test_too_large_a_step_fails_newton_clearly():
    theta = torch.nn.Parameter(torch.tensor([3.0, 0.1], dtype=torch.float64))
    opt = DiMS([theta], lr=2.0, gravity=50.0, max_newton=3)

    def closure():
        opt.zero_grad()
        loss = ring(theta)
        loss.backward()
        return loss

    start = theta.detach().clone()
    with pytest.raises(RuntimeError, match="reduce lr"):
        opt.step(closure)
    assert torch.equal(theta.detach(), start)


def test_refresh_follows_a_closure_over_changing_batches():
    # Two "batches": rings of radius 1 and 1.1. Without refresh the height carried over from
    # the other batch is off by far more than a step can absorb; with refresh each step starts
    # from the new batch's loss and gradient, and the energy of each step is consistent.
    theta = torch.nn.Parameter(torch.tensor([1.05, 0.1], dtype=torch.float64))
    radii = iter([1.0, 1.1] * 200)
    opt = DiMS([theta], lr=0.01, gravity=10.0, friction=1.0, energy=0.1, refresh=True)
    current = [1.0]

    def closure():
        opt.zero_grad()
        loss = (theta.pow(2).sum() - current[0] ** 2) ** 2
        loss.backward()
        return loss

    for _ in range(200):
        current[0] = next(radii)
        opt.step(closure)
        assert opt.system["height"] == pytest.approx(float(closure().detach()), abs=1e-12)
    assert 0.95 < float(theta.detach().norm()) < 1.15  # between the two valleys
