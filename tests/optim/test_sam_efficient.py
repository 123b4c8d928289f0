"""LookSAM, ESAM and MESA against independent oracles, and the swap_storage default.

Oracles: SAM itself (bit for bit) for LookSAM with ``k = 1`` and ESAM with ``beta = gamma =
1``; and functional re-derivations in float64 (``torch.func.functional_call`` +
``torch.autograd.grad``, written from the papers' equations, sharing no code with the
optimizers) for LookSAM's reuse step, ESAM's weight and data selection and MESA's gradient.
"""

from __future__ import annotations

import copy as copy_module
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from torchvalley.optim import SAM
from torchvalley.optim.sam import systems
from torchvalley.optim.sam.esam import ESAM, per_example_closure
from torchvalley.optim.sam.looksam import LookSAM
from torchvalley.optim.sam.mesa import MESA

LR, RHO = 0.1, 0.2


def _model(dtype=torch.float32, norm=True) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 8), nn.BatchNorm1d(8) if norm else nn.Identity(), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(8, 3)).to(dtype)


def _data(dtype=torch.float32, n=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator, dtype=dtype)
    return x, torch.randint(0, 3, (n,), generator=generator)


def _closure(model, optimizer, x, y, calls=None):
    def closure():
        if calls is not None:
            calls.append(1)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _train(cls, steps=7, base="sgd", protocol=False, **kwargs):
    model = _model()
    hyper = {"lr": 0.05, "momentum": 0.9} if base == "sgd" else {"lr": 1e-2}
    optimizer = cls(model.parameters(), base, rho=0.1, model=model, **hyper, **kwargs)
    batches = [_data(seed=s) for s in range(steps)]
    for x, y in batches:
        if protocol:
            optimizer.step(per_example_closure(optimizer, model, F.cross_entropy, x, y))
        else:
            optimizer.step(_closure(model, optimizer, x, y))
    return model.state_dict(), optimizer


def _assert_same(a, b):
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- reductions to SAM, bit for bit ------------------------------------------------------------


@pytest.mark.parametrize("ascent", ["sam", "asam", "fisher"])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_looksam_k1_is_sam_bit_for_bit(ascent, base):
    reference, _ = _train(SAM, base=base, ascent=ascent)
    looked, optimizer = _train(LookSAM, base=base, ascent=ascent, k=1)
    _assert_same(reference, looked)
    assert optimizer.looksam_steps == 7


@pytest.mark.parametrize("protocol", [False, True], ids=["plain", "per_example"])
@pytest.mark.parametrize("ascent", ["sam", "asam"])
def test_esam_full_subsets_is_sam_bit_for_bit(ascent, protocol):
    reference, _ = _train(SAM, ascent=ascent)
    esam, _ = _train(ESAM, ascent=ascent, beta=1.0, gamma=1.0, protocol=protocol)
    _assert_same(reference, esam)


def test_mesa_without_the_term_is_the_base_optimizer_bit_for_bit():
    model = _model()
    reference = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    other = _model()
    mesa = MESA(other.parameters(), "sgd", model=other, lam=0.0, lr=0.05, momentum=0.9)
    for seed in range(5):
        x, y = _data(seed=seed)
        for m, opt in ((model, reference), (other, mesa)):
            _closure(m, opt, x, y)()
            opt.step()
    _assert_same(model.state_dict(), other.state_dict())


# -- LookSAM: the reuse step against the paper's equations --------------------------------------


def _grad(model, params, x, y, reduction="mean"):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = F.cross_entropy(functional_call(model, leaves, (x,)), y, reduction=reduction)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def _norm(d):
    return torch.sqrt(sum(t.square().sum() for t in d.values()))


def _dot(a, b):
    return sum((a[k] * b[k]).sum() for k in a)


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_looksam_reuse_steps_follow_algorithm_1(alpha):
    model = _model(torch.float64, norm=False)
    optimizer = LookSAM(model.parameters(), "sgd", rho=RHO, k=3, alpha=alpha, lr=LR)
    batches = [_data(torch.float64, seed=s) for s in range(4)]
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    g_v = None
    for step, (x, y) in enumerate(batches):
        optimizer.step(_closure(model, optimizer, x, y))
        g = _grad(model, params, x, y)
        if step % 3 == 0:  # SAM step; g_v = g_s - (<g_s, g> / |g|^2) g
            eps = {k: RHO * t / _norm(g) for k, t in g.items()}
            g_s = _grad(model, {k: params[k] + eps[k] for k in params}, x, y)
            g_v = {k: g_s[k] - _dot(g_s, g) / _norm(g) ** 2 * g[k] for k in g}
            update = g_s
        else:  # g + alpha |g| / |g_v| g_v
            update = {k: g[k] + alpha * _norm(g) / _norm(g_v) * g_v[k] for k in g}
        params = {k: params[k] - LR * update[k] for k in params}
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[name], atol=1e-12, rtol=0)
    assert abs(float(_dot(g_v, g))) > 0  # g_v was taken against the older g, not this one


def test_looksam_costs_one_plus_one_over_k_passes():
    model = _model()
    optimizer = LookSAM(model.parameters(), "sgd", rho=0.1, k=3, lr=0.05, model=model)
    calls: list = []
    x, y = _data()
    for _ in range(6):
        optimizer.step(_closure(model, optimizer, x, y, calls))
    assert len(calls) == 6 + 2  # SAM steps 0 and 3 take two passes


def test_looksam_resume_is_bit_identical_and_refuses_a_sam_dict():
    model = _model()
    optimizer = LookSAM(model.parameters(), "sgd", rho=0.1, k=3, lr=0.05, momentum=0.9)
    batches = [_data(seed=s) for s in range(8)]
    for x, y in batches[:4]:
        optimizer.step(_closure(model, optimizer, x, y))
    saved = copy_module.deepcopy(optimizer.state_dict())  # torch adopts tensors uncopied
    copy = _model()
    copy.load_state_dict(model.state_dict())
    resumed = LookSAM(copy.parameters(), "sgd", rho=0.1, k=3, lr=0.05, momentum=0.9)
    resumed.load_state_dict(saved)
    for x, y in batches[4:]:
        optimizer.step(_closure(model, optimizer, x, y))
        resumed.step(_closure(copy, resumed, x, y))
    _assert_same(model.state_dict(), copy.state_dict())
    plain = SAM(copy.parameters(), "sgd", lr=0.05, momentum=0.9)
    with pytest.raises(ValueError, match="LookSAM"):
        resumed.load_state_dict(plain.state_dict())


def test_looksam_invalid_settings():
    params = nn.Linear(2, 1).parameters()
    with pytest.raises(ValueError, match="Invalid k"):
        LookSAM(params, "sgd", lr=0.1, k=0)
    with pytest.raises(ValueError, match="Invalid alpha"):
        LookSAM(nn.Linear(2, 1).parameters(), "sgd", lr=0.1, alpha=-1.0)


# -- ESAM: SWP and data selection against the paper's equations ----------------------------------


def test_esam_weight_and_data_selection_follow_the_algorithm():
    model = _model(torch.float64, norm=False)
    beta, gamma, seed = 0.5, 0.25, 3
    optimizer = ESAM(model.parameters(), "sgd", rho=RHO, beta=beta, gamma=gamma, seed=seed, lr=LR)
    names = [k for k, _ in model.named_parameters()]
    draws = torch.Generator().manual_seed(seed)  # the same stream, drawn independently
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    for step in range(3):
        x, y = _data(torch.float64, seed=step)
        optimizer.step(per_example_closure(optimizer, model, F.cross_entropy, x, y))
        chosen = [
            k
            for k, u in zip(names, torch.rand(len(names), generator=draws), strict=True)
            if u < beta
        ]
        g = _grad(model, params, x, y)
        g_chosen = {k: g[k] for k in chosen}
        eps = {
            k: RHO / beta * g_chosen[k] / _norm(g_chosen) if k in chosen else 0 * g[k] for k in g
        }
        perturbed = {k: params[k] + eps[k] for k in params}
        with torch.no_grad():
            before = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
            after = F.cross_entropy(functional_call(model, perturbed, (x,)), y, reduction="none")
        keep = torch.topk(after - before, math.ceil(gamma * len(y))).indices
        update = _grad(model, perturbed, x[keep], y[keep])
        params = {k: params[k] - LR * update[k] for k in params}
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[name], atol=1e-12, rtol=0)


def test_esam_clean_pass_skips_the_gradients_of_tensors_not_drawn():
    model = _model()
    optimizer = ESAM(model.parameters(), "sgd", rho=0.1, beta=0.5, gamma=1.0, lr=0.05)
    x, y = _data()
    seen = []

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        seen.append([p.grad is not None for p in model.parameters()])
        return loss

    optimizer.step(closure)
    clean, perturbed = seen
    assert not all(clean) and any(clean)  # seed 0 draws some tensors, not all
    assert all(perturbed)  # every tensor is updated from the perturbed pass
    assert all(p.requires_grad for p in model.parameters())


def test_esam_data_selection_needs_per_example_losses():
    model = _model()
    optimizer = ESAM(model.parameters(), "sgd", rho=0.1, gamma=0.5, lr=0.05)
    x, y = _data()
    with pytest.raises(ValueError, match="subset="):
        optimizer.step(_closure(model, optimizer, x, y))
    for name, value in (("beta", 0.0), ("gamma", 1.5), ("seed", "1")):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            ESAM(model.parameters(), "sgd", lr=0.1, **{name: value})


def test_esam_resume_with_data_selection_is_bit_identical():
    def build(model):
        return ESAM(model.parameters(), "sgd", rho=0.1, beta=0.6, lr=0.05, momentum=0.9, seed=5)

    model = _model()
    optimizer = build(model)
    batches = [_data(seed=s) for s in range(6)]

    def step(m, opt, x, y):
        opt.step(per_example_closure(opt, m, F.cross_entropy, x, y))

    for x, y in batches[:3]:
        step(model, optimizer, x, y)
    saved = copy_module.deepcopy(optimizer.state_dict())  # torch adopts tensors uncopied
    copy = _model()
    copy.load_state_dict(model.state_dict())
    resumed = build(copy)
    resumed.load_state_dict(saved)
    for x, y in batches[3:]:
        step(model, optimizer, x, y)
        step(copy, resumed, x, y)
    _assert_same(model.state_dict(), copy.state_dict())


# -- MESA: the added gradient is that of the trajectory loss -------------------------------------


def test_mesa_gradient_is_the_kl_term_against_the_ema_model():
    lam, tau, decay = 0.8, 3.0, 0.5
    model = _model(torch.float64)
    optimizer = MESA(
        model.parameters(), "sgd", model=model, lam=lam, tau=tau, ema_decay=decay, lr=LR
    )
    ema = {k: p.detach().clone() for k, p in model.named_parameters()}
    for step in range(3):
        x, y = _data(torch.float64, seed=step)
        params = {k: p.detach().clone() for k, p in model.named_parameters()}
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        with torch.no_grad():
            teacher = functional_call(
                model, {**ema, **{k: b.clone() for k, b in buffers.items()}}, (x,)
            )
        leaves = {k: v.requires_grad_(True) for k, v in params.items()}
        z = functional_call(model, {**leaves, **buffers}, (x,))
        kl = F.kl_div(
            F.log_softmax(z / tau, 1),
            F.log_softmax(teacher / tau, 1),
            reduction="batchmean",
            log_target=True,
        )
        expected = torch.autograd.grad(F.cross_entropy(z, y) + lam * kl, list(leaves.values()))
        _closure(model, optimizer, x, y)()
        for (name, p), e in zip(model.named_parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, e, atol=1e-12, rtol=0, msg=name)
        optimizer.step()
        ema = {k: decay * ema[k] + (1 - decay) * p.detach() for k, p in model.named_parameters()}
        for name, p in model.named_parameters():
            torch.testing.assert_close(optimizer.ema[p], ema[name], atol=1e-14, rtol=0)


def test_mesa_leaves_the_live_batchnorm_statistics_alone_and_needs_a_model():
    x, _ = _data()
    plain, hooked = _model(), _model()
    MESA(hooked.parameters(), "sgd", model=hooked, lr=0.1)
    plain(x), hooked(x)
    for a, b in zip(plain.buffers(), hooked.buffers(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Invalid model"):
        MESA(plain.parameters(), "sgd", lr=0.1)
    with pytest.raises(ValueError, match="Invalid grad_scaler"):
        MESA(plain.parameters(), "sgd", model=plain, lr=0.1).step(grad_scaler=object())


# -- the swap_storage default --------------------------------------------------------------------


def test_default_swaps_where_safe_and_gives_the_copy_paths_numbers():
    model = _model()
    assert isinstance(SAM(model.parameters(), "sgd", lr=0.1)._backup, systems.SwapBackup)
    default, _ = _train(SAM)
    copied, _ = _train(SAM, swap_storage=False)
    _assert_same(default, copied)


def test_default_copies_for_flat_parameters_and_in_compiled_steps(monkeypatch):
    flat = torch.zeros(20, dtype=torch.float32)
    weight = nn.Parameter(flat[:15].view(3, 5))
    optimizer = SAM([weight], "sgd", lr=0.1)
    assert "storage" in optimizer.swap_unsafe_reason
    assert isinstance(optimizer._backup, systems.CopyBackup)
    assert not isinstance(optimizer._backup, systems.SwapBackup)

    model = _model()
    optimizer = SAM(model.parameters(), "sgd", lr=0.1, rho=0.1)
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    during = []
    x, y = _data()

    def closure():
        during.append([p.untyped_storage().data_ptr() for p in model.parameters()])
        return _closure(model, optimizer, x, y)()

    monkeypatch.setattr(systems, "fixed_storage_needed", lambda: True)
    optimizer.step(closure)
    assert during[1] == storages  # perturbed in place: storage fixed all along
    monkeypatch.setattr(systems, "fixed_storage_needed", lambda: False)
    during.clear()
    optimizer.step(closure)
    assert during[1] != storages  # swapped for the perturbed pass
    assert [p.untyped_storage().data_ptr() for p in model.parameters()] == storages


def test_swap_unsafe_reason_names_fsdp_modules():
    class FullyShardedDataParallel(nn.Module):  # stands for torch's, by name
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

    model = nn.Sequential(FullyShardedDataParallel())
    optimizer = SAM(model.parameters(), "sgd", lr=0.1, model=model)
    assert "FSDP" in optimizer.swap_unsafe_reason
    assert SAM(model.parameters(), "sgd", lr=0.1, model=model, swap_storage=True)._backup


def test_the_runner_gives_esam_its_data_selection_and_counts_the_passes(tmp_path):
    pytest.importorskip("sklearn", reason="digits needs scikit-learn")
    from torchvalley.bench.runner import run_sweep

    store = tmp_path / "runs.sqlite"
    (result,) = run_sweep(["digits_mlp"], ["esam:gamma=0.5"], [0], epochs=1, store=store)
    assert result.status == "finished", result.error
    # per step: clean forward+backward, forward at w + eps, forward+backward on half the batch
    assert result.forward_passes == 3 * result.steps
    assert result.backward_passes == 2 * result.steps
