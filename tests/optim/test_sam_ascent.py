"""SAM ascent geometry: every rule's single perturbation against closed forms and an independent
constrained maximiser, ASAM's rescaling invariance, per-group radii and diagnostics.

Oracles: the ellipsoid solution eps = rho M^-1 g / sqrt(g^T M^-1 g) written out per rule, scipy
SLSQP on max g^T eps s.t. eps^T M eps <= rho^2, random points on the ellipsoid surface, and
losses/gradients recomputed on deep copies with plain autograd. Everything is float64.
"""

import copy

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from torchvalley.optim import SAM

DTYPE = torch.float64


def _named_instance(seed, grad_scale=1.0):
    """Random named parameters (a weight matrix, its bias, a 1-D *weight* like LayerNorm's, a
    second bias) with random gradients."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"fc.weight": (3, 4), "fc.bias": (3,), "ln.weight": (3,), "head.bias": (2,)}
    named = [(n, torch.randn(s, generator=gen, dtype=DTYPE)) for n, s in shapes.items()]
    grads = [grad_scale * torch.randn(p.shape, generator=gen, dtype=DTYPE) for _, p in named]
    return named, grads


def _ascend(named, grads, **sam_kwargs):
    """Run ``first_step`` with the given gradients; return (w, eps) measured from the parameters
    (eps = w_after - w_before)."""
    params = [p for _, p in named]
    opt = SAM(named, "sgd", lr=0.1, **sam_kwargs)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    before = [p.detach().clone() for p in params]
    assert opt.first_step() is True
    eps = [p.detach() - w for p, w in zip(params, before, strict=True)]
    return before, eps


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _asam_t(named, weights, eta, normalize_bias):
    """T = |w| + eta for weights, 1 for biases (unless normalize_bias), bias = name ends with
    "bias"."""
    return [
        torch.ones_like(w) if name.endswith("bias") and not normalize_bias else w.abs() + eta
        for (name, _), w in zip(named, weights, strict=True)
    ]


# -- 1. closed forms ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sam_perturbation_has_euclidean_norm_rho_along_gradient(seed):
    named, grads = _named_instance(seed)
    _, eps = _ascend(named, grads, rho=0.07)
    e, g = _flat(eps), _flat(grads)
    assert torch.linalg.vector_norm(e).item() == pytest.approx(0.07, rel=1e-10)
    torch.testing.assert_close(e, 0.07 * g / g.norm(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asam_official_radius_in_t_metric(seed):
    # Official element-wise ASAM: T = |w| + eta on weights (including the 1-D "ln.weight"),
    # T = 1 on biases.
    named, grads = _named_instance(seed)
    w, eps = _ascend(named, grads, rho=0.5, ascent="asam", eta=0.01)
    t = _asam_t(named, w, eta=0.01, normalize_bias=False)
    scaled = _flat([e / ti for e, ti in zip(eps, t, strict=True)])
    assert torch.linalg.vector_norm(scaled).item() == pytest.approx(0.5, rel=1e-10)
    # The direction is T^2 g (biases: plain g).
    direction = _flat([ti * ti * g for ti, g in zip(t, grads, strict=True)])
    torch.testing.assert_close(_flat(eps) / _flat(eps).norm(), direction / direction.norm())


@pytest.mark.parametrize("seed", [0, 1])
def test_asam_normalize_bias_eta_zero_is_davda54_variant(seed):
    named, grads = _named_instance(seed)
    w, eps = _ascend(named, grads, rho=2.0, ascent="asam", eta=0.0, normalize_bias=True)
    t = [wi.abs() for wi in w]  # T = |w| on every parameter, biases included
    scaled = _flat([e / ti for e, ti in zip(eps, t, strict=True)])
    assert torch.linalg.vector_norm(scaled).item() == pytest.approx(2.0, rel=1e-10)
    direction = _flat([ti * ti * g for ti, g in zip(t, grads, strict=True)])
    torch.testing.assert_close(_flat(eps) / _flat(eps).norm(), direction / direction.norm())


def test_asam_bias_detection_without_names_uses_dimension():
    # Unnamed parameters: 1-D tensors are biases (T = 1), the rest weights.
    named, grads = _named_instance(3)
    unnamed = [p.clone() for _, p in named]
    for p, g in zip(unnamed, grads, strict=True):
        p.grad = g.clone()
    before = [p.clone() for p in unnamed]
    SAM(unnamed, "sgd", lr=0.1, rho=0.5, ascent="asam", eta=0.01).first_step()
    eps = [p - w for p, w in zip(unnamed, before, strict=True)]
    t = [w.abs() + 0.01 if w.dim() > 1 else torch.ones_like(w) for w in before]
    direction = _flat([ti * ti * g for ti, g in zip(t, grads, strict=True)])
    torch.testing.assert_close(
        _flat(eps), 0.5 * direction / _flat([ti * g for ti, g in zip(t, grads, strict=True)]).norm()
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fisher_perturbation_lies_on_fisher_ellipsoid(seed):
    named, grads = _named_instance(seed, grad_scale=3.0)  # large g: F far from the identity
    _, eps = _ascend(named, grads, rho=0.1, ascent="fisher", fisher_eta=2.0)
    e, g = _flat(eps), _flat(grads)
    fisher = 1.0 + 2.0 * g * g
    assert (e * fisher * e).sum().item() == pytest.approx(0.1**2, rel=1e-9)
    assert torch.linalg.vector_norm(e).item() < 0.1 * 0.9  # clearly inside the Euclidean ball


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monge_perturbation_radius(seed):
    named, grads = _named_instance(seed)
    _, eps = _ascend(named, grads, rho=0.3, ascent="monge")
    e, g = _flat(eps), _flat(grads)
    gnorm = g.norm().item()
    assert (e @ e + (g @ e) ** 2).item() == pytest.approx(0.3**2, rel=1e-9)  # eps^T(I+gg^T)eps
    assert e.norm().item() == pytest.approx(0.3 / np.sqrt(1.0 + gnorm**2), rel=1e-10)
    assert gnorm > 2.0  # so the two radii differ by more than a factor sqrt(5)


# -- 1b. brute force: eps maximises g^T eps over {eps^T M eps <= rho^2} -------------------------


def _metric(ascent, named, weights, grads, eta=0.01, fisher_eta=1.5):
    """The dense metric M of each rule (numpy)."""
    g = _flat(grads).numpy()
    if ascent == "sam":
        return np.eye(g.size)
    if ascent == "asam":
        t = _flat(_asam_t(named, weights, eta, normalize_bias=False)).numpy()
        return np.diag(t**-2)
    if ascent == "fisher":
        return np.diag(1.0 + fisher_eta * g * g)
    return np.eye(g.size) + np.outer(g, g)  # monge


@pytest.mark.parametrize("ascent", ["sam", "asam", "fisher", "monge"])
@pytest.mark.parametrize("seed", [10, 11])
def test_perturbation_maximises_linear_gain_over_ellipsoid(ascent, seed):
    rho = 0.4
    named, grads = _named_instance(seed, grad_scale=1.5)
    named = named[:2]  # 15 dimensions: fc.weight and fc.bias
    grads = grads[:2]
    w, eps = _ascend(named, grads, rho=rho, ascent=ascent, eta=0.01, fisher_eta=1.5)
    m = _metric(ascent, named, w, grads)
    g = _flat(grads).numpy()
    e_hat = _flat(eps).numpy()
    gain = g @ e_hat

    # On the surface of the ellipsoid.
    assert e_hat @ m @ e_hat == pytest.approx(rho**2, rel=1e-9)

    # An independent constrained solver finds the same maximiser.
    rng = np.random.default_rng(seed)
    result = scipy.optimize.minimize(
        lambda x: -(g @ x),
        x0=rng.normal(size=g.size) * 1e-3,
        jac=lambda x: -g,
        constraints=[
            {"type": "ineq", "fun": lambda x: rho**2 - x @ m @ x, "jac": lambda x: -2 * m @ x}
        ],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    # Status 8 ("positive directional derivative for linesearch") is SLSQP stopping at the
    # optimum under the tight tolerance; the checks below decide whether it got there.
    assert result.status in (0, 8), result.message
    assert result.x @ m @ result.x <= rho**2 * (1 + 1e-8)
    assert -result.fun <= gain * (1 + 1e-7)
    np.testing.assert_allclose(result.x, e_hat, atol=1e-5 * rho)

    # No point sampled on the ellipsoid surface does better.
    u = rng.normal(size=(20000, g.size))
    evals, evecs = np.linalg.eigh(m)
    m_inv_sqrt = evecs @ np.diag(evals**-0.5) @ evecs.T
    points = rho * (u / np.linalg.norm(u, axis=1, keepdims=True)) @ m_inv_sqrt
    assert np.allclose(np.einsum("ij,jk,ik->i", points, m, points), rho**2)
    assert (points @ g).max() <= gain * (1 + 1e-12)


# -- 3. ASAM invariance under function-preserving ReLU rescaling ---------------------------------


def _relu_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).to(DTYPE)


def _perturbed_loss(net, x, y, **sam_kwargs):
    """L(w + eps) after one ascent with ``net``'s gradient at (x, y)."""
    opt = SAM(net.parameters(), "sgd", lr=0.1, model=net, **sam_kwargs)
    opt.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    opt.first_step(zero_grad=True)
    with torch.no_grad():
        loss = nn.functional.mse_loss(net(x), y).item()
    opt.second_step(zero_grad=True)
    return loss


def test_asam_perturbed_loss_invariant_under_relu_rescaling():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 5, generator=gen, dtype=DTYPE)
    y = torch.randn(32, 3, generator=gen, dtype=DTYPE)
    net = _relu_net(0)
    rescaled = copy.deepcopy(net)
    a = torch.tensor([0.1, 0.5, 2.0, 7.0, 0.3, 12.0, 1.5], dtype=DTYPE)
    with torch.no_grad():
        rescaled[0].weight.mul_(a[:, None])
        rescaled[0].bias.mul_(a)
        rescaled[2].weight.div_(a[None, :])
    with torch.no_grad():
        torch.testing.assert_close(rescaled(x), net(x), rtol=0, atol=1e-14)  # same function

    asam = {"rho": 0.5, "ascent": "asam", "eta": 0.0, "normalize_bias": True}
    original = _perturbed_loss(copy.deepcopy(net), x, y, **asam)
    transformed = _perturbed_loss(copy.deepcopy(rescaled), x, y, **asam)
    with torch.no_grad():
        clean = nn.functional.mse_loss(net(x), y).item()
    assert original > clean + 1e-3  # the ascent did climb
    assert transformed == pytest.approx(original, abs=1e-10)

    # Negative control: plain SAM's perturbed loss depends on the parametrisation.
    sam_original = _perturbed_loss(copy.deepcopy(net), x, y, rho=0.5)
    sam_transformed = _perturbed_loss(copy.deepcopy(rescaled), x, y, rho=0.5)
    assert abs(sam_original - sam_transformed) > 1e-2


# -- 8b. per-group rho and ascent: block-diagonal metric ------------------------------------------


def test_per_group_rho_and_ascent_use_one_global_norm():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DTYPE)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 4, generator=gen, dtype=DTYPE)
    y = torch.randn(16, 2, generator=gen, dtype=DTYPE)
    opt = SAM(
        [
            {"params": net[0].parameters(), "rho": 0.1, "ascent": "sam"},
            {"params": net[2].parameters(), "rho": 0.3, "ascent": "asam"},
        ],
        "sgd",
        model=net,
        lr=0.1,
        eta=0.01,
    )
    nn.functional.mse_loss(net(x), y).backward()
    names = dict(net.named_parameters())
    w = {n: p.detach().clone() for n, p in names.items()}
    g = {n: p.grad.clone() for n, p in names.items()}
    opt.first_step()
    eps = {n: p.detach() - w[n] for n, p in names.items()}

    group_a, group_b = ["0.weight", "0.bias"], ["2.weight", "2.bias"]
    t = {"2.weight": w["2.weight"].abs() + 0.01, "2.bias": torch.ones_like(w["2.bias"])}
    total = sum((g[n] ** 2).sum() for n in group_a) + sum(
        ((t[n] * g[n]) ** 2).sum() for n in group_b
    )
    norm = total.sqrt()
    for n in group_a:
        torch.testing.assert_close(eps[n], 0.1 * g[n] / norm, rtol=1e-9, atol=1e-13)
    for n in group_b:
        torch.testing.assert_close(eps[n], 0.3 * t[n] ** 2 * g[n] / norm, rtol=1e-9, atol=1e-13)


# -- 11. diagnostics ------------------------------------------------------------------------------


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DTYPE)


@pytest.mark.parametrize("ascent", ["sam", "monge"])
def test_diagnostics_match_independent_computation(ascent):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(16, 4, generator=gen, dtype=DTYPE)
    y = torch.randint(0, 3, (16,), generator=gen)
    net = _mlp(6)
    reference = copy.deepcopy(net)
    rho = 0.2
    opt = SAM(net.parameters(), "sgd", rho=rho, ascent=ascent, diagnostics=True, lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    measured_eps, calls = [], []

    def closure():
        if len(calls) == 1:  # second call: the parameters are at w + eps
            measured_eps.extend(
                p.detach() - w for p, w in zip(net.parameters(), before, strict=True)
            )
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y, reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    assert len(calls) == 2 and measured_eps

    # Independent: gradient at w, the rule's eps, and the loss at w + eps.
    params = list(reference.parameters())
    clean = nn.functional.cross_entropy(reference(x), y, reduction="sum")  # ||g|| > 1
    grads = torch.autograd.grad(clean, params)
    gnorm = _flat(grads).norm()
    radius = rho if ascent == "sam" else rho / torch.sqrt(1 + gnorm**2)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(g * (radius / gnorm))
        perturbed = nn.functional.cross_entropy(reference(x), y, reduction="sum")

    d = opt.last_diagnostics
    assert all(isinstance(v, torch.Tensor) for v in d.values())
    torch.testing.assert_close(d["grad_norm"], gnorm, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        d["perturbation_norm"], _flat(measured_eps).norm(), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(d["perturbation_norm"], torch.as_tensor(radius, dtype=DTYPE))
    torch.testing.assert_close(d["sam_gap"], (perturbed - clean).detach(), rtol=1e-9, atol=1e-14)
    assert d["sam_gap"].item() > 0
    if ascent == "monge":
        torch.testing.assert_close(d["effective_radius"], rho / torch.sqrt(1 + gnorm**2))
        assert d["effective_radius"].item() < 0.9 * rho
    else:
        assert "effective_radius" not in d


def test_diagnostics_grad_norm_with_zero_asam_scale():
    # ASAM with eta = 0 and normalize_bias: T = |w| is exactly 0 on a zero-initialised bias.
    # The reported Euclidean gradient norm must still be ||g|| (not 0/0 = nan).
    net = _mlp(7)
    with torch.no_grad():
        net[0].bias.zero_()
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, 4, generator=gen, dtype=DTYPE), torch.randint(0, 3, (8,), generator=gen)
    opt = SAM(
        net.parameters(),
        "sgd",
        rho=0.5,
        ascent="asam",
        eta=0.0,
        normalize_bias=True,
        diagnostics=True,
        lr=0.1,
    )
    nn.functional.cross_entropy(net(x), y).backward()
    gnorm = _flat([p.grad for p in net.parameters()]).norm()
    assert net[0].bias.grad.abs().min() > 0
    opt.first_step()
    torch.testing.assert_close(opt.last_diagnostics["grad_norm"], gnorm, rtol=1e-12, atol=0)


def test_monge_group_beside_zero_asam_scale_stays_finite():
    # Monge's factor uses the Euclidean ||g|| over all perturbed groups; an ASAM group with a
    # zero T must not turn it (and hence eps) into nan.
    net = _mlp(8)
    with torch.no_grad():
        net[0].bias.zero_()
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(8, 4, generator=gen, dtype=DTYPE), torch.randint(0, 3, (8,), generator=gen)
    opt = SAM(
        [
            {"params": net[0].parameters(), "ascent": "asam", "eta": 0.0, "normalize_bias": True},
            {"params": net[2].parameters(), "ascent": "monge"},
        ],
        "sgd",
        model=net,
        rho=0.1,
        lr=0.1,
    )
    nn.functional.cross_entropy(net(x), y).backward()
    gnorm = _flat([p.grad for p in net.parameters()]).norm()
    g_head = [p.grad.clone() for p in net[2].parameters()]
    w_head = [p.detach().clone() for p in net[2].parameters()]
    opt.first_step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # eps on the Monge group: rho g / (||u|| sqrt(1 + ||g||^2)), ||u|| the block-diagonal norm.
    eps_head = [p.detach() - w for p, w in zip(net[2].parameters(), w_head, strict=True)]
    ratio = _flat(eps_head) / _flat(g_head)
    assert torch.isfinite(ratio).all() and ratio.min() > 0
    torch.testing.assert_close(ratio.max(), ratio.min(), rtol=1e-8, atol=0)  # along g
    assert gnorm > 0
