"""NGHF / HF / NG against dense linear algebra and against each other (float64).

Oracles: Newton's step on a quadratic (least squares solved by ``torch.linalg.lstsq``); the
damped systems ``(C + λI) x = −g`` solved densely with ``G = Σ Jᵀ H_z J`` and the empirical Fisher
``(1/N) Σ g_i g_iᵀ`` built from plain autograd; the reductions (``hf`` = ``nghf`` without the
inner CG, ``ng`` = ``hf`` when the Fisher is the Gauss–Newton matrix).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.optim.nghf import NGHF, _Curvature, _Observer

DTYPE = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _classifier(n: int = 24):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(n, 3, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def _closure(opt, model, loss_fn, x, y):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    return closure


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _dense_ggn_and_fisher(model, x, y):
    """G = (1/N) Σ_i J_iᵀ H_i J_i and F = (1/N) Σ_i g_i g_iᵀ, per example by autograd."""
    params = list(model.parameters())
    rows_g, rows_f = [], []
    for i in range(x.shape[0]):
        z = model(x[i : i + 1])
        jac = torch.stack(
            [
                torch.cat(
                    [t.reshape(-1) for t in torch.autograd.grad(z[0, k], params, retain_graph=True)]
                )
                for k in range(z.shape[1])
            ]
        )
        p = torch.softmax(z.detach()[0], 0)
        h = torch.diag(p) - torch.outer(p, p)
        rows_g.append(jac.T @ h @ jac)
        e = torch.zeros(3, dtype=DTYPE)
        e[y[i]] = 1.0
        g = jac.T @ (p - e)
        rows_f.append(torch.outer(g, g))
    return sum(rows_g) / x.shape[0], sum(rows_f) / x.shape[0]


def _gradient(model, x, y) -> torch.Tensor:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


_PLAIN = {  # the solve alone: no adaptation, no backtracking, no line search, CG to convergence
    "adapt_damping": False,
    "backtrack": False,
    "line_search": False,
    "preconditioner_exponent": 0.0,
    "cg_max_iter": 200,
    "cg_tol": 1e-12,
    "warm_start": 0.0,
}


def test_hf_with_exact_curvature_is_newton_on_a_quadratic():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=DTYPE)
    y = torch.randn(40, 1, generator=g, dtype=DTYPE)
    model = nn.Linear(5, 1).double()
    opt = NGHF(
        model.parameters(),
        model=model,
        loss_fn=F.mse_loss,
        mode="hf",
        damping=1e-12,
        min_damping=0.0,
        cg_tol=1e-12,
    )
    opt.step(_closure(opt, model, F.mse_loss, x, y), curvature_batch=(x, y))
    design = torch.cat([x, torch.ones(40, 1, dtype=DTYPE)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution[:, 0]
    torch.testing.assert_close(_flat_params(model), solution, rtol=1e-8, atol=1e-10)
    state = opt.state[model.weight]
    assert state["step_size"] == 1.0 and abs(state["rho"] - 1.0) < 1e-6
    assert state["damping"] < 1e-12  # ρ = 1 > 3/4: λ shrinks


@pytest.mark.parametrize(("mode", "which"), [("hf", "ggn"), ("ng", "fisher")])
def test_one_step_solves_the_damped_system_on_the_curvature_batch(mode, which):
    model, x, y = _classifier()
    sub = (x[:10], y[:10])
    ggn, fisher = _dense_ggn_and_fisher(model, *sub)
    matrix = ggn if which == "ggn" else fisher
    gradient = _gradient(model, x, y)  # on the whole (gradient) batch
    before = _flat_params(model)
    damping = 0.3
    opt = NGHF(
        model.parameters(),
        model=model,
        loss_fn=F.cross_entropy,
        mode=mode,
        damping=damping,
        **_PLAIN,
    )
    opt.step(_closure(opt, model, F.cross_entropy, x, y), curvature_batch=sub)
    expected = -torch.linalg.solve(matrix + damping * torch.eye(len(before), dtype=DTYPE), gradient)
    torch.testing.assert_close(_flat_params(model) - before, expected, rtol=1e-7, atol=1e-10)


def test_nghf_first_iterate_is_the_gauss_newton_line_minimum_along_the_natural_gradient():
    model, x, y = _classifier()
    ggn, fisher = _dense_ggn_and_fisher(model, x, y)
    gradient = _gradient(model, x, y)
    before = _flat_params(model)
    damping = 0.3
    eye = torch.eye(len(before), dtype=DTYPE)
    natural = -torch.linalg.solve(fisher + damping * eye, gradient)
    alpha = -(gradient @ natural) / (natural @ (ggn + damping * eye) @ natural)
    opt = NGHF(
        model.parameters(),
        model=model,
        loss_fn=F.cross_entropy,
        mode="nghf",
        damping=damping,
        ng_cg_max_iter=200,
        **{**_PLAIN, "cg_max_iter": 1},
    )
    opt.step(_closure(opt, model, F.cross_entropy, x, y), curvature_batch=(x, y))
    torch.testing.assert_close(_flat_params(model) - before, alpha * natural, rtol=1e-7, atol=1e-10)
    # run to convergence, the outer CG reaches HF's solution whatever the seed
    model2, _, _ = _classifier()
    opt = NGHF(
        model2.parameters(),
        model=model2,
        loss_fn=F.cross_entropy,
        mode="nghf",
        damping=damping,
        ng_cg_max_iter=200,
        **_PLAIN,
    )
    opt.step(_closure(opt, model2, F.cross_entropy, x, y), curvature_batch=(x, y))
    newton = -torch.linalg.solve(ggn + damping * eye, gradient)
    torch.testing.assert_close(_flat_params(model2) - before, newton, rtol=1e-6, atol=1e-9)


def _trajectory(steps: int, exact: bool, **hyperparameters):
    model, x, y = _classifier()
    opt = NGHF(model.parameters(), model=model, loss_fn=F.cross_entropy, **hyperparameters)
    closure = _closure(opt, model, F.cross_entropy, x, y)
    states = []
    for _ in range(steps):
        opt.step(closure, curvature_batch=(x[:12], y[:12]) if exact else None)
        states.append(_flat_params(model))
    return torch.stack(states), opt


@pytest.mark.parametrize("exact", [True, False])
def test_hf_is_nghf_without_the_inner_cg_bit_for_bit(exact):
    hf, _ = _trajectory(3, exact, mode="hf")
    reduced, _ = _trajectory(3, exact, mode="nghf", ng_cg_max_iter=0)
    seeded, _ = _trajectory(3, exact, mode="nghf")
    assert torch.equal(hf, reduced)
    assert not torch.equal(hf, seeded)


def test_ng_with_the_true_fisher_is_hf_when_fisher_equals_gauss_newton():
    # softmax cross-entropy: the true Fisher is the GGN (computed by another route)
    hf, _ = _trajectory(3, True, mode="hf")
    ng, _ = _trajectory(3, True, mode="ng", fisher="true", likelihood="categorical")
    torch.testing.assert_close(ng, hf, rtol=1e-9, atol=1e-11)
    empirical, _ = _trajectory(3, True, mode="ng")
    assert not torch.allclose(empirical, hf)


def test_damping_increases_on_a_rejected_step_and_decreases_on_a_good_one():
    model, x, y = _classifier()
    # curvature from inputs shrunk 1000x: the model thinks the loss is nearly flat and takes
    # a huge step, which the true loss refuses
    flat_batch = (x[:12] * 1e-3, y[:12])
    opt = NGHF(
        model.parameters(),
        model=model,
        loss_fn=F.cross_entropy,
        mode="hf",
        damping=1e-4,
        preconditioner_exponent=0.0,
        backtrack=False,
    )
    before = _flat_params(model)
    opt.step(_closure(opt, model, F.cross_entropy, x, y), curvature_batch=flat_batch)
    state = opt.state[next(model.parameters())]
    assert state["rho"] < 0.25
    assert state["damping"] == pytest.approx(1e-4 * 1.5)
    if state["step_size"] == 0.0:  # the line search rejected the step: nothing moved
        assert torch.equal(_flat_params(model), before)
    # a quadratic with exact curvature: ρ = 1, λ shrinks by 2/3
    g = torch.Generator().manual_seed(1)
    xs, ys = (
        torch.randn(40, 5, generator=g, dtype=DTYPE),
        torch.randn(40, 1, generator=g, dtype=DTYPE),
    )
    linear = nn.Linear(5, 1).double()
    opt = NGHF(linear.parameters(), model=linear, loss_fn=F.mse_loss, mode="hf", damping=0.5)
    opt.step(_closure(opt, linear, F.mse_loss, xs, ys), curvature_batch=(xs, ys))
    assert opt.state[linear.weight]["damping"] == pytest.approx(0.5 * 2 / 3)


def test_a_line_search_that_finds_no_decrease_rejects_the_step():
    model, x, y = _classifier()
    opt = NGHF(
        model.parameters(),
        model=model,
        loss_fn=F.cross_entropy,
        mode="hf",
        damping=1e-4,
        line_search_max=1,
        backtrack=False,
        preconditioner_exponent=0.0,
    )
    before = _flat_params(model)
    opt.step(_closure(opt, model, F.cross_entropy, x, y), curvature_batch=(x[:12] * 1e-3, y[:12]))
    assert opt.state[next(model.parameters())]["step_size"] == 0.0
    assert torch.equal(_flat_params(model), before)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_closure_curvature_equals_exact_operators(loss):
    # the hooks' products (exact forward-over-reverse for CE, central differences for MSE)
    # against CurvatureOperator on the same batch
    model, x, y = _classifier()
    loss_fn = F.cross_entropy
    if loss == "mse":
        y = torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
        loss_fn = F.mse_loss
    names = [n for n, _ in model.named_parameters()]

    def closure():
        model.zero_grad()
        value = loss_fn(model(x), y)
        value.backward()
        return value

    observer = _Observer(model)
    observer.call(closure)
    common = {"seed": 0, "closure": closure, "fisher": "empirical", "likelihood": None}
    hooked = _Curvature(model, names, loss_fn=None, batch=None, observer=observer, **common)
    exact = _Curvature(model, names, loss_fn=loss_fn, batch=(x, y), observer=None, **common)
    v = torch.randn(
        sum(p.numel() for p in model.parameters()),
        generator=torch.Generator().manual_seed(3),
        dtype=DTYPE,
    )
    tolerance = {"rtol": 1e-9, "atol": 1e-11} if loss == "ce" else {"rtol": 1e-6, "atol": 1e-8}
    torch.testing.assert_close(hooked.gauss_newton(v), exact.gauss_newton(v), **tolerance)
    torch.testing.assert_close(hooked.fisher(v), exact.fisher(v), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(
        hooked.empirical_fisher_diagonal(), exact.empirical_fisher_diagonal(), rtol=1e-9, atol=1e-12
    )


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_preconditioner_diagonal_matches_backpack_per_example_gradients():
    backpack = pytest.importorskip("backpack", reason="BackPACK oracle not installed")
    from backpack.extensions import BatchGrad

    model, x, y = _classifier()
    names = [n for n, _ in model.named_parameters()]
    ours = _Curvature(
        model,
        names,
        seed=0,
        loss_fn=F.cross_entropy,
        batch=(x, y),
        observer=None,
        closure=lambda: None,
        fisher="empirical",
        likelihood=None,
    ).empirical_fisher_diagonal()
    extended = backpack.extend(model)
    loss_module = backpack.extend(nn.CrossEntropyLoss())
    with backpack.backpack(BatchGrad()):
        loss_module(extended(x), y).backward()
    # BatchGrad holds the per-example terms of the *mean* loss: g_i / N
    per_example = (
        torch.cat([p.grad_batch.reshape(x.shape[0], -1) for p in model.parameters()], dim=1)
        * x.shape[0]
    )
    torch.testing.assert_close(ours, per_example.pow(2).mean(0), rtol=1e-10, atol=1e-14)


def test_resume_from_a_state_dict_is_bit_identical():
    model, x, y = _classifier()
    opt = NGHF(model.parameters(), model=model, loss_fn=F.cross_entropy, mode="nghf")
    closure = _closure(opt, model, F.cross_entropy, x, y)
    for _ in range(2):
        opt.step(closure, curvature_batch=(x[:12], y[:12]))
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = opt.state_dict()
    for _ in range(2):
        opt.step(closure, curvature_batch=(x[:12], y[:12]))
    reference = _flat_params(model)

    model2, _, _ = _classifier()
    model2.load_state_dict(saved_model)
    opt2 = NGHF(model2.parameters(), model=model2, loss_fn=F.cross_entropy, mode="nghf")
    opt2.load_state_dict(saved)
    closure2 = _closure(opt2, model2, F.cross_entropy, x, y)
    for _ in range(2):
        opt2.step(closure2, curvature_batch=(x[:12], y[:12]))
    assert torch.equal(_flat_params(model2), reference)


def test_invalid_use_raises_value_error():
    model, x, y = _classifier()
    with pytest.raises(ValueError, match="model"):
        NGHF(model.parameters())
    with pytest.raises(ValueError, match="mode"):
        NGHF(model.parameters(), model=model, mode="newton")
    with pytest.raises(ValueError, match="ng_cg_max_iter"):
        NGHF(model.parameters(), model=model, ng_cg_max_iter=-1)
    with pytest.raises(ValueError, match="damping_increase"):
        NGHF(model.parameters(), model=model, damping_increase=1.0)
    with pytest.raises(ValueError, match="likelihood"):
        NGHF(model.parameters(), model=model, fisher="true")
    with pytest.raises(ValueError, match="params"):
        NGHF([nn.Parameter(torch.zeros(2))], model=model)
    opt = NGHF(model.parameters(), model=model)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="loss_fn"):
        opt.step(_closure(opt, model, F.cross_entropy, x, y), curvature_batch=(x, y))
    opt.param_groups[0]["cg_max_iter"] = 0
    with pytest.raises(ValueError, match="cg_max_iter"):
        opt.step(_closure(opt, model, F.cross_entropy, x, y))
