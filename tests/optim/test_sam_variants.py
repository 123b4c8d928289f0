"""GSAM, WSAM, Friendly-SAM and gradient centralization against independent oracles.

Oracles: SAM itself, bit for bit, at each method's reduction (GSAM ``alpha = 0``, WSAM
``gamma = 1/2`` coupled, F-SAM ``sigma = 0``; for every flat ascent geometry and an Adam base);
functional re-derivations in float64 (``torch.func.functional_call`` + ``torch.autograd.grad``,
written from the papers' equations and sharing no code with the optimizers) of several steps
of each method over SGD with momentum; the geometric identity of GSAM's decomposition; and a
hand computation of gradient centralization on a convolution and a linear layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import torchvalley
from torchvalley.optim import SAM
from torchvalley.optim.sam.variants import GSAM, WSAM, FriendlySAM

LR, MOMENTUM, RHO = 0.1, 0.9, 0.1


def _model(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _batches(n=5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 5, generator=generator, dtype=dtype),
            torch.randint(0, 3, (16,), generator=generator),
        )
        for _ in range(n)
    ]


def _closure(model, optimizer, x, y):
    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _train(cls, ascent="sam", base="sgd", dtype=torch.float64, **kwargs):
    model = _model(dtype)
    hyper = {"lr": LR, "momentum": MOMENTUM} if base == "sgd" else {"lr": 1e-2}
    optimizer = cls(model.parameters(), base, rho=RHO, ascent=ascent, **{**hyper, **kwargs})
    for x, y in _batches(dtype=dtype):
        optimizer.step(_closure(model, optimizer, x, y))
    return [p.detach().clone() for p in model.parameters()]


def _assert_bitwise(a, b):
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# -- reductions to SAM, bit for bit -------------------------------------------------------------


@pytest.mark.parametrize("ascent", ["sam", "asam", "fisher", "monge"])
@pytest.mark.parametrize(
    ("cls", "reduction"),
    [
        (GSAM, {"alpha": 0.0}),
        (WSAM, {"gamma": 0.5, "decouple": False}),
        (FriendlySAM, {"sigma": 0.0}),
    ],
)
def test_reduces_to_sam_bit_for_bit(cls, reduction, ascent):
    expected = _train(SAM, ascent=ascent, dtype=torch.float32)
    _assert_bitwise(_train(cls, ascent=ascent, dtype=torch.float32, **reduction), expected)


@pytest.mark.parametrize(
    ("cls", "reduction"),
    [
        (GSAM, {"alpha": 0.0}),
        (WSAM, {"gamma": 0.5, "decouple": False}),
        (FriendlySAM, {"sigma": 0}),
    ],
)
def test_reduces_to_sam_over_adam(cls, reduction):
    _assert_bitwise(_train(cls, base="adam", **reduction), _train(SAM, base="adam"))


def test_wsam_decoupled_at_one_half_over_plain_sgd_is_sam_to_round_off():
    # a = 1: w - lr g - lr (g_s - g) = w - lr g_s, up to the rounding of two extra additions.
    ours = _train(WSAM, gamma=0.5, decouple=True, momentum=0.0)
    model = _model()
    sam = SAM(model.parameters(), "sgd", rho=RHO, lr=LR)
    for x, y in _batches():
        sam.step(_closure(model, sam, x, y))
    for a, b in zip(ours, model.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-14)


def _sphere_run(cls, **kwargs):
    from torchvalley.manifolds import ManifoldParameter, Sphere

    generator = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    a = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    a = a + a.T
    x = ManifoldParameter(x0 / x0.norm(dim=-1, keepdim=True), manifold=Sphere())
    optimizer = cls([x], "rsgd", rho=RHO, ascent="riemannian", lr=0.05, **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = torch.einsum("ni,ij,nj->", x, a, x)
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return x.detach().clone(), float(Sphere().violation(x.detach()))


@pytest.mark.parametrize(
    ("cls", "kwargs", "reduction"),
    [
        (GSAM, {"alpha": 0.5}, {"alpha": 0.0}),
        (WSAM, {"gamma": 0.8, "decouple": False}, {"gamma": 0.5, "decouple": False}),
        (FriendlySAM, {"sigma": 1.0}, {"sigma": 0.0}),
    ],
)
def test_riemannian_ascent_on_the_sphere(cls, kwargs, reduction):
    sam, _ = _sphere_run(SAM)
    reduced, _ = _sphere_run(cls, **reduction)
    assert torch.equal(reduced, sam)
    moved, violation = _sphere_run(cls, **kwargs)
    assert violation < 1e-12  # the base's retraction keeps it on the sphere
    assert float((moved - sam).abs().max()) > 1e-8  # and the variant does change the step


# -- re-derivations from the papers' equations ---------------------------------------------------


def _grad(model, params: dict, x, y) -> dict:
    names = list(params)
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return dict(zip(names, grads, strict=True))


def _flat_dot(a: dict, b: dict) -> torch.Tensor:
    return sum((a[n] * b[n]).sum() for n in a)


def _ascend(params: dict, direction: dict) -> dict:
    norm = _flat_dot(direction, direction).sqrt()
    return {n: (params[n] + RHO * direction[n] / norm).detach().requires_grad_() for n in params}


def _reference(rule, steps=5):
    """SGD with momentum (torch's convention: buf = m buf + d, w -= lr buf) on the method's
    descent direction ``rule(state, w, g, x, y) -> (d, extra)``; ``extra`` is added to ``w``
    after the step (WSAM's decoupled term)."""
    model = _model()
    w = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    buf, state = None, {}
    for x, y in _batches(steps):
        g = _grad(model, w, x, y)
        d, extra = rule(state, model, w, g, x, y)
        buf = d if buf is None else {n: MOMENTUM * buf[n] + d[n] for n in d}
        w = {n: (w[n] - LR * buf[n] + extra.get(n, 0)).detach().requires_grad_() for n in w}
    return list(w.values())


def _sam_gradient(model, w, direction, x, y):
    return _grad(model, _ascend(w, direction), x, y)


def test_gsam_matches_the_papers_update():
    alpha = 0.3

    def rule(state, model, w, g, x, y):
        g_s = _sam_gradient(model, w, g, x, y)
        coefficient = _flat_dot(g, g_s) / _flat_dot(g_s, g_s)
        g_perp = {n: g[n] - coefficient * g_s[n] for n in g}  # orthogonal to g_s
        return {n: g_s[n] - alpha * g_perp[n] for n in g}, {}

    expected = _reference(rule)
    ours = _train(GSAM, alpha=alpha)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)


def test_gsam_descends_the_perturbed_loss_as_sam_does():
    # <d, g_s> = ||g_s||^2 for every alpha: the surrogate-gap term is orthogonal to g_s.
    model = _model()
    x, y = _batches(1)[0]
    captured = {}

    class Probe(GSAM):
        def _combine(self, params, g, g_s):
            captured["g_s"] = [t.clone() for t in g_s]
            super()._combine(params, g, g_s)
            captured["d"] = [t.clone() for t in g_s]

    optimizer = Probe(model.parameters(), "sgd", rho=RHO, lr=LR, alpha=0.8)
    optimizer.step(_closure(model, optimizer, x, y))
    g_s, d = captured["g_s"], captured["d"]
    dot = sum((a * b).sum() for a, b in zip(d, g_s, strict=True))
    norm2 = sum((a * a).sum() for a in g_s)
    torch.testing.assert_close(dot, norm2, rtol=1e-12, atol=0)
    assert max(float((a - b).abs().max()) for a, b in zip(d, g_s, strict=True)) > 1e-6


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_matches_the_papers_update(decouple):
    gamma = 0.8
    a = gamma / (1 - gamma)

    def rule(state, model, w, g, x, y):
        g_s = _sam_gradient(model, w, g, x, y)
        if decouple:  # base step with g, then w -= lr a (g_s - g)
            return g, {n: -LR * a * (g_s[n] - g[n]) for n in g}
        return {n: g[n] + a * (g_s[n] - g[n]) for n in g}, {}

    expected = _reference(rule)
    ours = _train(WSAM, gamma=gamma, decouple=decouple)
    for x, y in zip(ours, expected, strict=True):
        torch.testing.assert_close(x, y.detach(), rtol=0, atol=1e-12)


def test_friendly_sam_matches_the_official_update():
    sigma, lmbda = 0.7, 0.6

    def rule(state, model, w, g, x, y):
        if "m" not in state:  # m_0 = g_1; the first ascent follows g_1
            state["m"], direction = {n: g[n].clone() for n in g}, g
        else:
            direction = {n: g[n] - sigma * state["m"][n] for n in g}
            state["m"] = {n: lmbda * state["m"][n] + (1 - lmbda) * g[n] for n in g}
        return _sam_gradient(model, w, direction, x, y), {}

    expected = _reference(rule)
    ours = _train(FriendlySAM, sigma=sigma, lmbda=lmbda)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)


def test_gsam_radius_follows_the_learning_rate():
    model = _model()
    optimizer = GSAM(
        model.parameters(), "sgd", rho=0.2, lr=1.0, rho_min=0.05, lr_min=0.0, diagnostics=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 - 0.25 * epoch)
    for step, (x, y) in enumerate(_batches(4)):
        optimizer.step(_closure(model, optimizer, x, y))
        lr = 1.0 - 0.25 * step
        expected = 0.05 + (0.2 - 0.05) * lr  # rho_min + (rho - rho_min)(lr - 0)/(1 - 0)
        norm = float(optimizer.last_diagnostics["perturbation_norm"])
        assert norm == pytest.approx(expected, rel=1e-12)
        scheduler.step()


# -- gradient centralization ---------------------------------------------------------------------


def test_gradient_centralization_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2)).double()
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    y = torch.randint(0, 2, (4,))
    reference = copy.deepcopy(model)
    optimizer = SAM(model.parameters(), "sgd", rho=RHO, lr=LR, gradient_centralization=True)
    optimizer.step(_closure(model, optimizer, x, y))

    w = {n: p.detach().clone().requires_grad_() for n, p in reference.named_parameters()}
    g = _grad(reference, w, x, y)
    g_s = _sam_gradient(reference, w, g, x, y)
    for (name, p), q in zip(reference.named_parameters(), model.parameters(), strict=True):
        grad = g_s[name]
        if grad.dim() == 3:  # conv weight (out, in, k): mean over in and k
            grad = grad - grad.mean(dim=(1, 2), keepdim=True)
        elif grad.dim() == 2:  # linear weight (out, in): mean over in
            grad = grad - grad.mean(dim=1, keepdim=True)
        # biases (1-D) keep their gradient
        torch.testing.assert_close(q.detach(), p.detach() - LR * grad, rtol=0, atol=1e-14)


def test_gradient_centralization_off_by_default_and_on_every_variant():
    assert SAM([torch.zeros(2, 2, requires_grad=True)]).gradient_centralization is False
    for name in ("gsam", "wsam", "friendly_sam", "looksam"):
        opt = torchvalley.create_optimizer(
            name, [torch.zeros(2, 2, requires_grad=True)], lr=0.1, gradient_centralization=True
        )
        assert opt.gradient_centralization is True


# -- refusals and state --------------------------------------------------------------------------


def _params():
    return [nn.Parameter(torch.randn(3, 2))]


@pytest.mark.parametrize(
    ("cls", "bad", "name"),
    [
        (GSAM, {"alpha": 1.5}, "alpha"),
        (GSAM, {"alpha": -0.1}, "alpha"),
        (GSAM, {"rho_min": -1.0}, "rho_min"),
        (GSAM, {"lr_min": -1.0}, "lr_min"),
        (WSAM, {"gamma": 1.0}, "gamma"),
        (WSAM, {"decouple": 1}, "decouple"),
        (FriendlySAM, {"sigma": -1.0}, "sigma"),
        (FriendlySAM, {"lmbda": 1.5}, "lmbda"),
        (SAM, {"gradient_centralization": "yes"}, "gradient_centralization"),
    ],
)
def test_bad_settings_raise_naming_them(cls, bad, name):
    with pytest.raises(ValueError, match=name):
        cls(_params(), "sgd", lr=0.1, **bad)


@pytest.mark.parametrize("cls", [GSAM, WSAM, FriendlySAM])
def test_grad_scaler_and_micro_batches_are_refused(cls):
    params = _params()
    optimizer = cls(params, "sgd", lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = params[0].square().sum()
        loss.backward()
        return loss

    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ValueError, match="grad_scaler"):
        optimizer.step(closure, grad_scaler=scaler)
    with pytest.raises(ValueError, match="step_micro_batches"):
        optimizer.step_micro_batches([closure])


def test_wsam_decoupled_needs_an_lr():
    class NoLR(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            return None

    with pytest.raises(ValueError, match="decouple"):
        WSAM(_params(), NoLR)
    WSAM(_params(), NoLR, decouple=False)


def test_friendly_sam_state_dict_resumes_bit_for_bit():
    batches = _batches(6)
    model = _model()
    optimizer = FriendlySAM(model.parameters(), "sgd", rho=RHO, lr=LR, momentum=MOMENTUM)
    for x, y in batches[:3]:
        optimizer.step(_closure(model, optimizer, x, y))
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    for x, y in batches[3:]:
        optimizer.step(_closure(model, optimizer, x, y))

    resumed = _model()
    resumed.load_state_dict(saved_model)
    other = FriendlySAM(resumed.parameters(), "sgd", rho=RHO, lr=LR, momentum=MOMENTUM)
    other.load_state_dict(saved)
    for x, y in batches[3:]:
        other.step(_closure(resumed, other, x, y))
    _assert_bitwise(list(resumed.parameters()), list(model.parameters()))
    with pytest.raises(ValueError, match="friendly_sam"):
        other.load_state_dict(SAM(resumed.parameters(), "sgd", lr=LR).state_dict())


# -- bSAM ----------------------------------------------------------------------------------------


def test_bsam_matches_the_official_update():
    # The formulas of team-approx-bayes/bayesian-sam optim.py (build_bsam_optimizer), with the
    # optimizer's noise reproduced from a generator seeded alike (float32 draws per parameter).
    from torchvalley.optim.sam.bsam import BSAM

    n_data, lr, rho, (b1, b2), delta, damping, s_init = 200, 0.05, 0.02, (0.8, 0.99), 1e-3, 0.5, 2.0
    model = _model()
    optimizer = BSAM(
        model.parameters(),
        num_data=n_data,
        lr=lr,
        betas=(b1, b2),
        weight_decay=delta,
        rho=rho,
        damping=damping,
        s_init=s_init,
        seed=7,
    )
    batches = _batches(4)
    for x, y in batches:
        optimizer.step(_closure(model, optimizer, x, y))

    reference = _model()
    w = {n: p.detach().clone() for n, p in reference.named_parameters()}
    s = {n: torch.full_like(t, s_init) for n, t in w.items()}
    m = {n: torch.zeros_like(t) for n, t in w.items()}
    generator = torch.Generator().manual_seed(7)
    for x, y in batches:
        noise = {
            n: torch.randn(t.shape, generator=generator, dtype=torch.float32).double()
            for n, t in w.items()
        }
        sample = {n: (w[n] + (1.0 / (n_data * s[n])).sqrt() * noise[n]).requires_grad_() for n in w}
        g = _grad(reference, sample, x, y)
        ascent = {n: (w[n] + rho * g[n] / s[n]).requires_grad_() for n in w}
        g_a = _grad(reference, ascent, x, y)
        gs = {n: (s[n] * g[n] ** 2).sqrt() for n in w}
        m = {n: b1 * m[n] + (1 - b1) * (g_a[n] + delta * w[n]) for n in w}
        w = {n: w[n] - lr * m[n] / s[n] for n in w}
        s = {n: b2 * s[n] + (1 - b2) * (gs[n] + damping + delta) for n in w}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w[name], rtol=0, atol=1e-12)
        torch.testing.assert_close(optimizer.state[p]["precision"], s[name], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            optimizer.posterior_variance(p), 1.0 / (n_data * s[name]), rtol=1e-12, atol=0
        )


def test_bsam_refuses_bad_settings_and_no_closure():
    from torchvalley.optim.sam.bsam import BSAM

    for bad, name in (
        ({"num_data": 0}, "num_data"),
        ({"rho": -1.0}, "rho"),
        ({"s_init": 0.0}, "s_init"),
        ({"seed": 1.5}, "seed"),
        ({"betas": (1.0, 0.9)}, "betas"),
    ):
        with pytest.raises(ValueError, match=name):
            BSAM(_params(), **bad)
    with pytest.raises(RuntimeError, match="closure"):
        BSAM(_params()).step()


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (GSAM, {"alpha": 0.5}),
        (WSAM, {"gamma": 0.8}),
        (WSAM, {"gamma": 0.8, "decouple": False}),
        (FriendlySAM, {"sigma": 1.0}),
    ],
)
def test_manual_first_and_second_step_equal_step(cls, kwargs):
    # first_step(zero_grad=False) leaves .grad the raw clean gradient (F-SAM swaps its
    # direction in only for the ascent), and the manual protocol gives step()'s numbers.
    expected = _train(cls, **kwargs)
    model = _model()
    optimizer = cls(model.parameters(), "sgd", rho=RHO, lr=LR, momentum=MOMENTUM, **kwargs)
    for x, y in _batches():
        closure = _closure(model, optimizer, x, y)
        closure()
        raw = [p.grad.clone() for p in model.parameters()]
        optimizer.first_step(zero_grad=False)
        _assert_bitwise([p.grad for p in model.parameters()], raw)
        closure()
        optimizer.second_step(zero_grad=True)
    _assert_bitwise([p.detach() for p in model.parameters()], expected)
