"""A2Grad (Deng, Cheng & Lan 2018): the h_k recursions, the reference code, the rate.

Oracles: hand-computed h_k sequences (below, in exact fractions); a plain-Python transcription
of the paper's Algorithm 7 with one scalar h_k per tensor (what the reference code
severilov/A2Grad_optimizer and jettify's ``A2GradUni/Inc/Exp`` compute), and jettify's classes
themselves when ``torch_optimizer`` is installed (2e-16 in float64 when written);
pytorch_optimizer's ``A2Grad``, which is the same recursion with the iteration index shifted by
one; 1-element tensors, where per-coordinate and per-tensor h_k coincide; the averaged iterate's
defining recursion x̄_{k+1} = (1−α_k) x̄_k + α_k x_{k+1}; and the accelerated rate on a
quadratic.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from torchvalley.optim.a2grad import A2Grad

# A scripted gradient sequence on one scalar parameter and the h_k it produces, by hand:
#   k:   0    1     2       3
#   G:   1    3    -2      2/3
#   g̃:  1    2    2/3     2/3          (running mean)
#   δ:   0    1   -8/3      0
#   δ²:  0    1   64/9      0
# uni: v = Σ δ²                       -> 0, 1, 73/9, 73/9
# inc: v = (k/(k+1))² v + δ²          -> 0, 1, (2/3)²·1 + 64/9 = 68/9, (3/4)²·68/9 = 17/4
#      (= (1/(k+1))² Σ (τ+1)² δ_τ²: k = 3: (4 + 64)/16 = 17/4)
# exp (ρ = 1/2): ṽ = ρ ṽ + (1−ρ) δ² -> 0, 1/2, 1/4 + 32/9 = 137/36, 137/72
#      v = max(ṽ, v)                  -> 0, 1/2, 137/36, 137/36 (the max holds v at k = 3)
#      h = √((k+1) v)
_GRADIENTS = (1.0, 3.0, -2.0, 2.0 / 3.0)
_H = {
    "uni": (0.0, 1.0, math.sqrt(73 / 9), math.sqrt(73 / 9)),
    "inc": (0.0, 1.0, math.sqrt(68 / 9), math.sqrt(17 / 4)),
    "exp": (0.0, math.sqrt(2 * 0.5), math.sqrt(3 * 137 / 36), math.sqrt(4 * 137 / 36)),
}
_V = {
    "uni": (0.0, 1.0, 73 / 9, 73 / 9),
    # inc stores w_k = (k+1)² v_k = Σ (τ+1)² δ_τ² (no decay pass): 0, 4·1, 9·68/9, 16·17/4
    "inc": (0.0, 4.0, 68.0, 68.0),
    "exp": (0.0, 0.5, 137 / 36, 137 / 36),
}


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_h_recursions_match_the_hand_computed_sequence(variant, per_tensor, foreach):
    lips, beta = 1.5, 2.0
    y = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = A2Grad(
        [y], lips=lips, beta=beta, variant=variant, rho=0.5, per_tensor=per_tensor, foreach=foreach
    )
    for k, gradient in enumerate(_GRADIENTS):
        x_before = optimizer.state[y]["x"].clone() if optimizer.state[y] else y.detach().clone()
        y.grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
        state = optimizer.state[y]
        assert state["step"] == k + 1
        assert float(state["v"]) == pytest.approx(_V[variant][k], rel=1e-14, abs=1e-15)
        # x_{k+1} = x_k − G_k/(γ_k + β h_k), γ_k = 2L/(k+1)
        denominator = 2 * lips / (k + 1) + beta * _H[variant][k]
        assert float(x_before - state["x"]) == pytest.approx(gradient / denominator, rel=1e-13)


def _paper_per_tensor(params, gradients, *, variant, lips, beta, rho, shift=0):
    """Algorithm 7 with one h_k per tensor, in plain Python floats (as the reference code).

    ``shift=1`` is pytorch_optimizer's indexing: every k is k+1 (γ = 2L/(k+2), α_{k+1} =
    2/(k+4), inc's factor ((k+1)/(k+2))²), except α_0 = 1, and ``inc`` also gets exp's
    √(k+2).
    """
    ys = [p.clone() for p in params]
    xs = [p.clone() for p in params]
    averages = [torch.zeros_like(p) for p in params]
    v = [0.0] * len(params)
    smoothed = [0.0] * len(params)
    alpha = 1.0
    for k, grads in enumerate(gradients):
        j = k + shift
        gamma, alpha_next = 2 * lips / (j + 1), 2 / (j + 3)
        for i, g in enumerate(grads):
            averages[i] = (k * averages[i] + g) / (k + 1)
            square = float(((g - averages[i]) ** 2).sum())
            if variant == "exp":
                smoothed[i] = square if k == 0 else rho * smoothed[i] + (1 - rho) * square
                v[i] = max(smoothed[i], v[i])
            else:
                v[i] = (j / (j + 1)) ** 2 * v[i] + square if variant == "inc" else v[i] + square
            h = math.sqrt(v[i])
            if variant == "exp" or (shift and variant == "inc"):
                h *= math.sqrt(j + 1)
            step = g / (gamma + beta * h)
            xs[i] = xs[i] - step
            ys[i] = (1 - alpha_next) * (ys[i] - alpha * step) + alpha_next * xs[i]
        alpha = alpha_next
    return ys


def _gradient_sequence(shapes, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
        for _ in range(steps)
    ]


def _run(optimizer, params, gradients):
    for grads in gradients:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in params]


_SHAPES = ((3, 4), (4,), (2, 2, 3))


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_per_tensor_option_is_the_reference_code(variant, foreach):
    gradients = _gradient_sequence(_SHAPES, 12)
    start = [torch.randn(s, dtype=torch.float64) for s in _SHAPES]
    params = [p.clone().requires_grad_() for p in start]
    hyper = {"lips": 2.0, "beta": 0.7, "rho": 0.3}
    optimizer = A2Grad(params, variant=variant, per_tensor=True, foreach=foreach, **hyper)
    ours = _run(optimizer, params, gradients)
    oracle = _paper_per_tensor(start, gradients, variant=variant, **hyper)
    for a, b in zip(ours, oracle, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_pytorch_optimizer_a2grad_is_the_same_recursion_shifted_by_one(variant):
    """pytorch_optimizer's A2Grad (float64, 1e-12) is the oracle above with k -> k+1, so it is
    not the paper's algorithm, and our per-tensor option differs from it on purpose."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="anchor library")
    gradients = _gradient_sequence(_SHAPES, 8, seed=3)
    start = [torch.randn(s, dtype=torch.float64) for s in _SHAPES]
    hyper = {"lips": 2.0, "beta": 0.7, "rho": 0.3}
    params = [p.clone().requires_grad_() for p in start]
    theirs = _run(
        pytorch_optimizer.A2Grad(params, variant=variant, foreach=False, **hyper),
        params,
        gradients,
    )
    shifted = _paper_per_tensor(start, gradients, variant=variant, shift=1, **hyper)
    for a, b in zip(theirs, shifted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    params = [p.clone().requires_grad_() for p in start]
    ours = _run(A2Grad(params, variant=variant, per_tensor=True, **hyper), params, gradients)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)) > 1e-3


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_per_coordinate_equals_per_tensor_on_one_element_tensors_only(variant):
    gradients = _gradient_sequence(((1,), (1, 1)), 10)
    start = [torch.randn(1, dtype=torch.float64), torch.randn(1, 1, dtype=torch.float64)]
    runs = []
    for per_tensor in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        runs.append(_run(A2Grad(params, variant=variant, per_tensor=per_tensor), params, gradients))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    # On a real tensor the two differ: one h_k per coordinate.
    gradients = _gradient_sequence(_SHAPES, 5)
    start = [torch.randn(s, dtype=torch.float64) for s in _SHAPES]
    runs = []
    for per_tensor in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        runs.append(_run(A2Grad(params, variant=variant, per_tensor=per_tensor), params, gradients))
    assert not torch.allclose(runs[0][0], runs[1][0])


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_multi_tensor_path_matches_per_tensor_path(variant, per_tensor, maximize):
    gradients = _gradient_sequence(_SHAPES, 10, seed=5)
    start = [torch.randn(s, dtype=torch.float64) for s in _SHAPES]
    runs, states = [], []
    for foreach in (True, False):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = A2Grad(
            params, variant=variant, per_tensor=per_tensor, maximize=maximize, foreach=foreach
        )
        runs.append(_run(optimizer, params, gradients))
        states.append(optimizer.state_dict()["state"])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    for key in states[0]:
        assert states[0][key].keys() == states[1][key].keys()
        for name, value in states[0][key].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, states[1][key][name], rtol=1e-13, atol=1e-15)
    if maximize:  # maximize is minimizing the negated objective
        params = [p.clone().requires_grad_() for p in start]
        negated = [[-g for g in grads] for grads in gradients]
        plain = _run(A2Grad(params, variant=variant, per_tensor=per_tensor), params, negated)
        for a, b in zip(runs[0], plain, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_averaged_iterate_follows_its_defining_recursion_and_swaps_back_exactly():
    gradients = _gradient_sequence(_SHAPES, 7, seed=2)
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in _SHAPES]
    optimizer = A2Grad(params, variant="inc", lips=1.0, beta=0.5)
    before = optimizer.averaged()
    for p in params:  # x̄_0 = x_0 = y_0
        assert torch.equal(before[p], p.detach())
    averaged = [p.detach().clone() for p in params]
    for k, grads in enumerate(gradients):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        alpha = 2 / (k + 2)  # x̄_{k+1} = (1−α_k) x̄_k + α_k x_{k+1}
        averaged = [
            (1 - alpha) * a + alpha * optimizer.state[p]["x"]
            for a, p in zip(averaged, params, strict=True)
        ]
        reported = optimizer.averaged()
        for a, p in zip(averaged, params, strict=True):
            torch.testing.assert_close(reported[p], a, rtol=1e-12, atol=1e-12)
    current = [p.detach().clone() for p in params]
    with optimizer.swap_averaged():
        for a, p in zip(averaged, params, strict=True):
            torch.testing.assert_close(p.detach(), a, rtol=1e-12, atol=1e-12)
    for c, p in zip(current, params, strict=True):
        assert torch.equal(c, p.detach())


def test_no_item_calls_no_cpu_sync_state_stays_tensor():
    p = torch.randn(5, requires_grad=True)
    optimizer = A2Grad([p], per_tensor=True)
    p.grad = torch.randn(5)
    optimizer.step()
    assert isinstance(optimizer.state[p]["v"], torch.Tensor)
    assert optimizer.state[p]["v"].dim() == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("lips", 0.0), ("beta", -1.0), ("variant", "cubic"), ("rho", 1.5), ("lr", -0.1)],
)
def test_bad_hyperparameters_are_refused_by_name(name, value):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        A2Grad([torch.zeros(2, requires_grad=True)], **{name: value})


# ----------------------------------------------------------------------------- the rate
_EIGENVALUES = torch.logspace(-4, 0, 20, dtype=torch.float64)  # L = 1, ill-conditioned


def _quadratic_run(steps, checkpoints, *, beta, sigma, variant, seed):
    """f(x) = ½ xᵀ diag(λ) x, x_0 = 1, gradients + N(0, σ²); f(x̄_K) at the checkpoints."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.ones(20, dtype=torch.float64, requires_grad=True)
    optimizer = A2Grad([x], lips=1.0, beta=beta, variant=variant)
    values = {}
    for k in range(1, steps + 1):
        noise = torch.randn(20, generator=generator, dtype=torch.float64)
        x.grad = _EIGENVALUES * x.detach() + sigma * noise
        optimizer.step()
        if k in checkpoints:
            average = optimizer.averaged()[x]
            values[k] = 0.5 * float((_EIGENVALUES * average * average).sum())
    return values


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_noise_free_rate_is_accelerated(variant):
    """β = 0, σ = 0: the AC-SA bound f(x̄_K) − f* ≤ 4 L V(x_0, x*)/(K(K+1)), V = ½‖x_0−x*‖²
    (Lan 2012, the L/K² term of Theorem 2). Measured: ≈ 0.17 of the bound up to K = 128, so
    also the 1/K² order (K² (f − f*) stays within a factor 1.3 from K = 16 to 128, before the
    strong convexity of the smallest eigenvalues takes over)."""
    checkpoints = {16, 32, 64, 128, 256}
    values = _quadratic_run(256, checkpoints, beta=0.0, sigma=0.0, variant=variant, seed=0)
    distance = 0.5 * 20  # V(x_0, x*) = ½ ‖1‖²
    for k, value in values.items():
        assert value <= 4 * 1.0 * distance / (k * (k + 1))
    scaled = [values[k] * k * k for k in (16, 32, 64, 128)]
    assert max(scaled) / min(scaled) < 1.3


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["uni", "exp"])
def test_noisy_rate_is_one_over_square_root(variant):
    """σ = 0.1, β = 1: the σ/√K term dominates; from K = 400 to 6400 the error falls by
    16^{-1/2} = 0.25 in theory. Mean over 5 seeds; measured 0.26 (uni), 0.30 (exp). The window
    [0.15, 0.45] (slopes −0.68 to −0.29) leaves room for the seed-to-seed spread (≈ 15% per run,
    ≈ 7% for the mean of 5) while refusing a constant step (no decay) or a 1/K rate."""
    checkpoints = {400, 6400}
    means = dict.fromkeys(checkpoints, 0.0)
    for seed in range(5):
        values = _quadratic_run(6400, checkpoints, beta=1.0, sigma=0.1, variant=variant, seed=seed)
        for k in checkpoints:
            means[k] += values[k] / 5
    assert 0.15 <= means[6400] / means[400] <= 0.45


def test_minimizes_a_small_regression_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    inputs, targets = torch.randn(64, 4), torch.randn(64, 1)
    optimizer = A2Grad(model.parameters(), lips=1.0, beta=1.0)
    snapshot = copy.deepcopy(model)

    def loss_of(m):
        return torch.nn.functional.mse_loss(m(inputs), targets)

    def value_of(m):
        with torch.no_grad():
            return float(loss_of(m))

    first = value_of(snapshot)
    for _ in range(200):
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()
    with optimizer.swap_averaged():
        averaged = value_of(model)
    assert value_of(model) < 0.7 * first
    assert averaged < 0.7 * first


def _reference_code_classes():
    """jettify/pytorch-optimizer's A2GradUni/Inc/Exp (the reference code's algorithm), loaded
    from the installed ``torch_optimizer`` without its package ``__init__`` (which imports
    ``pytorch_ranger``); skipped when that package is not installed."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("torch_optimizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch_optimizer (jettify/pytorch-optimizer) is not installed")
    package = types.ModuleType("torch_optimizer")
    package.__path__ = list(spec.submodule_search_locations)
    saved = {name: sys.modules.get(name) for name in ("torch_optimizer", "torch_optimizer.a2grad")}
    sys.modules["torch_optimizer"] = package
    try:
        location = f"{package.__path__[0]}/a2grad.py"
        module_spec = importlib.util.spec_from_file_location("torch_optimizer.a2grad", location)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules["torch_optimizer.a2grad"] = module
        module_spec.loader.exec_module(module)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return {"uni": module.A2GradUni, "inc": module.A2GradInc, "exp": module.A2GradExp}


@pytest.mark.parametrize("variant", ["uni", "inc", "exp"])
def test_per_tensor_option_matches_the_reference_implementation(variant):
    """Against jettify's classes (float64, 1e-12 over 20 steps of a small network); measured
    2e-16 when written."""
    reference = _reference_code_classes()[variant]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    net = net.double()
    twin = copy.deepcopy(net)
    hyper = {"lips": 2.0, "beta": 0.5, **({"rho": 0.7} if variant == "exp" else {})}
    ours = A2Grad(net.parameters(), variant=variant, per_tensor=True, **hyper)
    theirs = reference(twin.parameters(), **hyper)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        inputs = torch.randn(16, 5, generator=generator, dtype=torch.float64)
        targets = torch.randn(16, 3, generator=generator, dtype=torch.float64)
        for model, optimizer in ((net, ours), (twin, theirs)):
            optimizer.zero_grad()
            ((model(inputs) - targets) ** 2).mean().backward()
            optimizer.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
