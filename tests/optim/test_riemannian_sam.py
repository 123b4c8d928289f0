"""Riemannian SAM (``ascent="riemannian"``, registry ``lorentz_sam``): Yun & Yang, NeurIPS 2023.

rest.md §12 and §14 item 23. Oracles: Euclidean SAM (the same wrapper with ``ascent="sam"``)
and a two-closure reference SAM written here; the manifolds' own closed forms (``dist``,
``norm``, ``transp``, ``egrad2rgrad``) recomputed from the saved points; a base optimizer that
records the point and gradient it is handed. Everything is float64 with fixed seeds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchvalley
from torchvalley.manifolds import Lorentz, Manifold, ManifoldParameter, PoincareBall, Sphere
from torchvalley.optim import SAM

DTYPE = torch.float64


# -- helpers ------------------------------------------------------------------------------------


class RecordingRiemannianSGD(torch.optim.Optimizer):
    """Plain Riemannian SGD, ``x <- retr(x, -lr egrad2rgrad(x, grad))``, that records the point
    and the gradient it is handed at every step (a reference base independent of ``rsgd``)."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.seen.append((p.detach().clone(), p.grad.detach().clone()))
                manifold = getattr(p, "manifold", None)
                if manifold is None:
                    p.add_(p.grad, alpha=-group["lr"])
                else:
                    r = manifold.egrad2rgrad(p, p.grad)
                    p.copy_(manifold.retr(p, -group["lr"] * r))
        return loss


def _loss_fn(manifold: Manifold, seed: int, shape: tuple[int, ...]):
    """A smooth non-quadratic loss of one point tensor with a minimum on the manifold (squared
    ambient distances to two random points of it, plus a tanh term): its gradient varies with
    the point, so the transport matters."""
    gen = torch.Generator().manual_seed(seed)
    anchors = [manifold.random(*shape, generator=gen, dtype=DTYPE) for _ in range(2)]
    a = torch.randn(shape[-1], 4, generator=gen, dtype=DTYPE)
    b = torch.randn(*shape[:-1], 4, generator=gen, dtype=DTYPE)

    def loss(x: torch.Tensor) -> torch.Tensor:
        pull = sum(((x - y) ** 2).sum() for y in anchors)
        return 0.5 * pull + (torch.tanh(x @ a) * b).sum()

    return loss


def _problem(manifold: Manifold, shape: tuple[int, ...], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = ManifoldParameter(manifold.random(*shape, generator=gen, dtype=DTYPE), manifold)
    loss_fn = _loss_fn(manifold, seed + 1, shape)
    return x, loss_fn


def _closure(opt: torch.optim.Optimizer, x: torch.Tensor, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        return loss

    return closure


def _expected_ascent(manifold: Manifold, x: torch.Tensor, g: torch.Tensor, rho: float):
    """u = rho r / ||r||_x (metric norm over the whole tensor) and R_x(u)."""
    r = manifold.egrad2rgrad(x, g)
    norm = manifold.inner(x, r).sum().sqrt()
    u = rho * r / norm
    return u, manifold.retr(x, u)


def _has_rsgd() -> bool:
    return "rsgd" in torchvalley.list_optimizers()


needs_rsgd = pytest.mark.skipif(not _has_rsgd(), reason="rsgd is not registered")


# -- (a) Euclidean parameters: exactly SAM ---------------------------------------------------------


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DTYPE)


def _data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=gen, dtype=DTYPE), torch.randn(
        16, 2, generator=gen, dtype=DTYPE
    )


def _reference_sam_run(net: nn.Module, inputs, targets, rho: float, steps: int) -> None:
    """Two-closure SAM from the paper's equations, torch SGD with momentum as the base."""
    params = list(net.parameters())
    base = torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def grads():
        base.zero_grad()
        nn.functional.mse_loss(net(inputs), targets).backward()
        return [p.grad.clone() for p in params]

    for _ in range(steps):
        g = grads()
        norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, gi in zip(params, g, strict=True):
                p.add_(rho * gi / norm)
        grads()
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
        base.step()


def _wrapper_run(net: nn.Module, inputs, targets, rho: float, steps: int, ascent: str) -> None:
    opt = SAM(net.parameters(), "sgd", rho=rho, ascent=ascent, lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(inputs), targets)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)


def test_euclidean_parameters_equal_sam_and_reference():
    inputs, targets = _data(0)
    nets = {name: _net(1) for name in ("riemannian", "sam", "reference")}
    _wrapper_run(nets["riemannian"], inputs, targets, 0.05, 5, "riemannian")
    _wrapper_run(nets["sam"], inputs, targets, 0.05, 5, "sam")
    _reference_sam_run(nets["reference"], inputs, targets, 0.05, 5)
    riemannian = list(nets["riemannian"].parameters())
    for other in ("sam", "reference"):
        for a, b in zip(riemannian, nets[other].parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert not torch.equal(riemannian[0], _net(1)[0].weight)  # it did train


def test_mixed_group_takes_the_global_metric_norm():
    """A plain tensor and a Lorentz point in one group: one norm sqrt(||g||^2 + ||r||_x^2)."""
    manifold = Lorentz()
    x, loss_fn = _problem(manifold, (3, 4), seed=2)
    w = nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=DTYPE))
    opt = SAM([w, x], RecordingRiemannianSGD, rho=0.2, ascent="riemannian", lr=0.1)
    x0, w0 = x.detach().clone(), w.detach().clone()
    opt.zero_grad()
    (loss_fn(x) + (w.sin() * w).sum()).backward()
    g_x, g_w = x.grad.clone(), w.grad.clone()
    opt.first_step(zero_grad=True)
    r = manifold.egrad2rgrad(x0, g_x)
    norm = torch.sqrt((g_w * g_w).sum() + manifold.inner(x0, r).sum())
    torch.testing.assert_close(w.detach() - w0, 0.2 * g_w / norm, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(x.detach(), manifold.retr(x0, 0.2 * r / norm), atol=1e-13, rtol=0)
    opt.restore()
    assert torch.equal(x.detach(), x0) and torch.equal(w.detach(), w0)


# -- (b) Sphere ------------------------------------------------------------------------------------


def _sphere_ascent(rho: float, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    manifold = Sphere()
    x, loss_fn = _problem(manifold, (6,), seed=seed)
    opt = SAM([x], RecordingRiemannianSGD, rho=rho, ascent="riemannian", lr=0.1)
    x0 = x.detach().clone()
    _closure(opt, x, loss_fn)()
    opt.first_step(zero_grad=True)
    ascent = x.detach().clone()
    opt.restore()
    assert torch.equal(x.detach(), x0)
    return x0, ascent


def test_sphere_ascent_point_is_on_the_sphere_at_distance_rho():
    manifold = Sphere()
    rhos = [10.0 ** (-3 + 0.25 * i) for i in range(9)]  # 1e-3 ... 1e-1
    errors = []
    for rho in rhos:
        x0, ascent = _sphere_ascent(rho)
        ok, why = manifold.check_point(ascent, explain=True, atol=1e-12, rtol=1e-12)
        assert ok, why
        dist = float(manifold.dist(x0, ascent))
        torch.testing.assert_close(
            manifold.logmap(x0, ascent).norm(), torch.tensor(dist, dtype=DTYPE)
        )
        # retr(x, u) = (x + u)/||x + u|| lands at geodesic distance arctan(||u||) = arctan(rho).
        assert abs(dist - math.atan(rho)) < 1e-12
        errors.append(abs(dist / rho - 1.0))
    lr = torch.tensor([math.log(r) for r in rhos], dtype=DTYPE)
    le = torch.tensor([math.log(e) for e in errors], dtype=DTYPE)
    lr, le = lr - lr.mean(), le - le.mean()
    slope = float((lr * le).sum() / (lr * lr).sum())
    assert 1.9 <= slope <= 2.1, (slope, errors)  # |d/rho - 1| = rho^2/3 + O(rho^4)


# -- (c) Lorentz and (d) Poincaré: ascent, exact restore, the gradient handed to the base -------


HYPERBOLIC = [
    pytest.param(Lorentz(), (3, 4), id="lorentz"),
    pytest.param(Lorentz(2.0), (2, 3), id="lorentz-k2"),
    pytest.param(PoincareBall(), (3, 3), id="poincare"),
    pytest.param(PoincareBall(0.5), (2, 4), id="poincare-c0.5"),
]


@pytest.mark.parametrize("swap_storage", [False, True], ids=["copy", "swap"])
@pytest.mark.parametrize(("manifold", "shape"), HYPERBOLIC)
def test_hyperbolic_step_is_the_transported_riemannian_gradient(manifold, shape, swap_storage):
    rho = 0.3
    x, loss_fn = _problem(manifold, shape, seed=5)
    opt = SAM(
        [x],
        RecordingRiemannianSGD,
        rho=rho,
        ascent="riemannian",
        swap_storage=swap_storage,
        lr=0.1,
    )
    x0 = x.detach().clone()
    closure = _closure(opt, x, loss_fn)
    closure()
    g = x.grad.clone()
    opt.first_step(zero_grad=True)
    ascent = x.detach().clone()

    # The ascent point: on the manifold, R_x(rho r / ||r||_x), at metric radius rho.
    ok, why = manifold.check_point(ascent, explain=True, atol=1e-12, rtol=1e-12)
    assert ok, why
    u, expected = _expected_ascent(manifold, x0, g, rho)
    torch.testing.assert_close(ascent, expected, atol=1e-13, rtol=0)
    torch.testing.assert_close(manifold.inner(x0, u).sum().sqrt(), torch.tensor(rho, dtype=DTYPE))
    if isinstance(manifold, Lorentz):  # retr = expmap: the geodesic distances have norm rho
        torch.testing.assert_close(
            manifold.dist(x0, ascent).square().sum().sqrt(), torch.tensor(rho, dtype=DTYPE)
        )
    else:  # retr(x, u) = x + u inside the ball: the step's lambda_x-metric norm is rho
        torch.testing.assert_close(
            manifold.norm(x0, ascent - x0).square().sum().sqrt(), torch.tensor(rho, dtype=DTYPE)
        )

    closure()
    g_tilde = x.grad.clone()
    opt.second_step()
    ((point, handed),) = opt.base_optimizer.seen

    assert torch.equal(point, x0)  # restored bit for bit before the base step
    transported = manifold.transp(ascent, x0, manifold.egrad2rgrad(ascent, g_tilde))
    ok, why = manifold.check_vector(x0, transported, explain=True, atol=1e-10, rtol=1e-10)
    assert ok, why
    torch.testing.assert_close(
        manifold.egrad2rgrad(x0, handed), transported, atol=1e-10, rtol=1e-10
    )
    torch.testing.assert_close(
        x.detach(), manifold.retr(x0, -0.1 * transported), atol=1e-12, rtol=1e-12
    )


@pytest.mark.parametrize(("manifold", "shape"), HYPERBOLIC)
def test_swap_storage_gives_the_same_numbers(manifold, shape):
    finals = []
    for swap in (False, True):
        x, loss_fn = _problem(manifold, shape, seed=6)
        opt = SAM([x], RecordingRiemannianSGD, rho=0.2, ascent="riemannian", swap_storage=swap)
        closure = _closure(opt, x, loss_fn)
        for _ in range(3):
            opt.step(closure)
        finals.append(x.detach().clone())
    assert torch.equal(finals[0], finals[1])


def test_grad_scaler_path_matches_unscaled():
    manifold = Lorentz()
    finals = []
    for scaled in (False, True):
        x, loss_fn = _problem(manifold, (3, 4), seed=7)
        opt = SAM([x], RecordingRiemannianSGD, rho=0.2, ascent="riemannian", lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=scaled)

        def closure(opt=opt, x=x, loss_fn=loss_fn, scaler=scaler):
            opt.zero_grad()
            loss = loss_fn(x)
            scaler.scale(loss).backward()
            return loss

        for _ in range(3):
            opt.step(closure, grad_scaler=scaler)
        finals.append(x.detach().clone())
    torch.testing.assert_close(finals[0], finals[1], atol=1e-13, rtol=1e-13)


def _violation(manifold: Manifold, x: torch.Tensor) -> float:
    if isinstance(manifold, Lorentz):
        return float((Lorentz.ldot(x, x) + manifold.k).abs().max())
    return max(0.0, float((x.norm(dim=-1) * math.sqrt(manifold.c)).max()) - 1.0)


@pytest.mark.parametrize("base", ["reference", pytest.param("rsgd", marks=needs_rsgd)])
@pytest.mark.parametrize(("manifold", "shape"), HYPERBOLIC)
def test_training_stays_on_the_manifold(manifold, shape, base):
    x, loss_fn = _problem(manifold, shape, seed=8)
    if base == "rsgd":
        opt = torchvalley.create_optimizer("lorentz_sam", [x], rho=0.1, lr=0.05, momentum=0.9)
    else:
        opt = SAM([x], RecordingRiemannianSGD, rho=0.1, ascent="riemannian", lr=0.05)
    closure = _closure(opt, x, loss_fn)
    first = float(closure().detach())
    for _ in range(40):
        opt.step(closure)
        assert _violation(manifold, x.detach()) <= 1e-10
        ok, why = manifold.check_point(x.detach(), explain=True, atol=1e-10, rtol=1e-10)
        assert ok, why
    assert float(loss_fn(x.detach())) < first


# -- (e) rho = 0 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["reference", pytest.param("rsgd", marks=needs_rsgd)])
@pytest.mark.parametrize(
    ("manifold", "shape"),
    [*HYPERBOLIC, pytest.param(Sphere(), (3, 5), id="sphere")],
)
def test_rho_zero_is_the_base_step(manifold, shape, base):
    finals = []
    for wrapped in (False, True):
        x, loss_fn = _problem(manifold, shape, seed=9)
        if base == "rsgd":
            kwargs = {"lr": 0.05, "momentum": 0.9}
            plain = torchvalley.create_optimizer("rsgd", [x], **kwargs)
            sam = torchvalley.create_optimizer("lorentz_sam", [x], rho=0.0, **kwargs)
        else:
            plain = RecordingRiemannianSGD([x], lr=0.05)
            sam = SAM([x], RecordingRiemannianSGD, rho=0.0, ascent="riemannian", lr=0.05)
        opt = sam if wrapped else plain
        closure = _closure(opt, x, loss_fn)
        for _ in range(4):
            opt.step(closure)
        finals.append(x.detach().clone())
    assert torch.equal(finals[0], finals[1])


# -- registry and validation -----------------------------------------------------------------------


def test_riemannian_is_an_ascent_choice_of_the_sam_entries():
    for name in ("sam", "asam"):
        spec = torchvalley.get_optimizer_entry(name).hyperparameter("ascent")
        assert "riemannian" in spec.choices


@needs_rsgd
def test_lorentz_sam_entry():
    entry = torchvalley.get_optimizer_entry("lorentz_sam")
    assert entry.capabilities.manifold_aware and entry.capabilities.wraps_base
    assert entry.hyperparameter("base_optimizer").default == "rsgd"
    assert entry.hyperparameter("ascent").default == "riemannian"
    assert "Yun & Yang" in entry.paper
    x, _ = _problem(Lorentz(), (2, 3))
    opt = torchvalley.create_optimizer("lorentz_sam", [x], lr=0.1)
    assert opt.param_groups[0]["ascent"] == "riemannian"
    assert type(opt.base_optimizer).__name__ != "SGD"
