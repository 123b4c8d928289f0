"""Multirate (Vlaar & Leimkuhler 2022) against independent oracles.

* k = 1 is the base optimizer bit for bit (SGD-momentum, Adam, BAOAB with the same seed);
* with linear drift off and the fast part frozen (lr 0), the slow part is the base optimizer
  run on the slow part, one base step per k multirate steps, bit for bit;
* a separable quadratic whose iterates have a hand-derived closed form (docstring below);
* a backward hook on the backbone fires exactly on the full passes the counter reports;
* bad partitions and settings raise ValueError naming the problem;
* a state_dict saved mid-cycle resumes bit-identically.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from torchvalley.optim import Multirate
from torchvalley.optim.multirate_partitions import bias_partition, head_partition


def _net(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).to(dtype)


def _data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g).to(dtype), torch.randn(32, 3, generator=g).to(dtype)


def _train(model: nn.Module, opt, steps: int, batches: bool = True, use_backward: bool = True):
    x, y = _data(next(model.parameters()).dtype)
    for i in range(steps):
        xb, yb = (x[(i % 4) * 8 : (i % 4 + 1) * 8], y[(i % 4) * 8 : (i % 4 + 1) * 8])
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(xb if batches else x), yb if batches else y)
        if use_backward and isinstance(opt, Multirate):
            opt.backward(loss)
        else:
            loss.backward()
        opt.step()


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize(
    ("base", "settings"),
    [
        ("sgd", {"lr": 0.1, "momentum": 0.9}),
        ("adam", {"lr": 0.01}),
        ("baoab", {"lr": 0.05, "friction": 1.0, "temperature": 1e-3, "seed": 7}),
    ],
)
def test_k1_is_the_base_optimizer_bit_for_bit(base: str, settings: dict) -> None:
    reference, model = _net(), _net()
    groups = head_partition(reference)
    plain = [{"params": g["params"]} for g in groups]
    base_opt = torchvalley.create_optimizer(base, plain, **settings)
    multi = Multirate(head_partition(model), base_optimizer=base, k=1, **settings)
    _train(reference, base_opt, 12)
    _train(model, multi, 12)
    assert _same(reference, model)
    assert multi.backward_passes == {"full": 12, "partial": 0}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_frozen_fast_part_without_drift_is_the_base_on_the_slow_part(k: int) -> None:
    """Fast group at lr 0 never moves, so every cycle starts where the base on the slow part
    alone would be: its one slow step per cycle must be the base's step, bit for bit."""
    reference, model = _net(), _net()
    ref_groups = head_partition(reference)
    base_opt = torch.optim.SGD(ref_groups[0]["params"], lr=0.1, momentum=0.9)
    groups = head_partition(model)
    groups[1]["lr"] = 0.0
    multi = Multirate(groups, k=k, linear_drift=False, lr=0.1, momentum=0.9)
    head_before = [p.detach().clone() for p in groups[1]["params"]]
    x, y = _data()
    for cycle in range(4):
        base_opt.zero_grad()
        F.mse_loss(reference(x), y).backward()
        base_opt.step()
        for _ in range(k):
            multi.zero_grad()
            multi.backward(F.mse_loss(model(x), y))
            multi.step()
        assert _same(reference, model), f"cycle {cycle}"
    assert all(torch.equal(p, q) for p, q in zip(groups[1]["params"], head_before, strict=True))


def test_frozen_fast_part_with_drift_matches_at_cycle_ends() -> None:
    """With drift the slow step is spread as k increments of Δ/k: equal up to rounding."""
    reference, model = _net(torch.float64), _net(torch.float64)
    base_opt = torch.optim.SGD(head_partition(reference)[0]["params"], lr=0.1, momentum=0.9)
    groups = head_partition(model)
    groups[1]["lr"] = 0.0
    multi = Multirate(groups, k=4, lr=0.1, momentum=0.9)
    x, y = _data(torch.float64)
    for _ in range(5):
        base_opt.zero_grad()
        F.mse_loss(reference(x), y).backward()
        base_opt.step()
        for _ in range(4):
            multi.zero_grad()
            multi.backward(F.mse_loss(model(x), y))
            multi.step()
        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("drift", [True, False])
def test_two_time_scale_quadratic_closed_form(drift: bool) -> None:
    r"""L(s, f) = a s²/2 + b f²/2, s slow, f fast; SGD heavy ball μ, lr h, k fast steps per cycle.

    Slow part, cycle n (s_n, p_n: value and momentum at the cycle start; p_{-1} = 0):
        p_n = μ p_{n-1} + a s_n,   s_{n+1} = s_n - h p_n,
    i.e. (s_{n+1}, p_n)ᵀ = M_S (s_n, p_{n-1})ᵀ with M_S = [[1 - h a, -h μ], [a, μ]], so
    (s_n, p_{n-1})ᵀ = M_S^n (s_0, 0)ᵀ. Within the cycle, after step i = 1..k:
        with linear drift  s = s_n - (i/k) h p_n   (k increments of -(h/k) p_n),
        without drift      s = s_{n+1}             (the whole step on the cycle's first step).
    Fast part, every step with lr h/k: (f_{t+1}, q_t)ᵀ = M_F (f_t, q_{t-1})ᵀ,
    M_F = [[1 - (h/k) b, -(h/k) μ], [b, μ]], so (f_t, q_{t-1})ᵀ = M_F^t (f_0, 0)ᵀ.
    The slow momentum is refreshed once per k steps (k fast steps per refresh, not k - 1).
    """
    a, b, h, mu, k = 0.8, 3.0, 0.3, 0.7, 4
    s = nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    f = nn.Parameter(torch.tensor([-2.0], dtype=torch.float64))
    opt = Multirate(
        [{"params": [s], "rate": "slow"}, {"params": [f], "rate": "fast"}],
        k=k,
        linear_drift=drift,
        lr=h,
        momentum=mu,
    )
    m_s = torch.tensor([[1 - h * a, -h * mu], [a, mu]], dtype=torch.float64)
    m_f = torch.tensor([[1 - h / k * b, -h / k * mu], [b, mu]], dtype=torch.float64)
    start_s = torch.tensor([1.5, 0.0], dtype=torch.float64)
    start_f = torch.tensor([-2.0, 0.0], dtype=torch.float64)
    for t in range(1, 6 * k + 3):
        opt.zero_grad()
        opt.backward(0.5 * a * s.pow(2).sum() + 0.5 * b * f.pow(2).sum())
        opt.step()
        n, i = divmod(t - 1, k)  # step t is step i + 1 of cycle n
        s_n, _ = torch.linalg.matrix_power(m_s, n) @ start_s
        s_next, p_n = torch.linalg.matrix_power(m_s, n + 1) @ start_s
        expected_s = s_n - (i + 1) / k * h * p_n if drift else s_next
        expected_f = (torch.linalg.matrix_power(m_f, t) @ start_f)[0]
        torch.testing.assert_close(s.detach()[0], expected_s, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(f.detach()[0], expected_f, rtol=1e-12, atol=1e-14)
    assert opt.backward_passes == {"full": 6 + 1, "partial": 6 * (k - 1) + 1}


@pytest.mark.parametrize("api", ["backward", "closure"])
def test_backbone_backward_runs_only_on_full_passes(api: str) -> None:
    model = _net()
    opt = Multirate(head_partition(model), k=3, lr=0.05, momentum=0.9)
    module_calls, weight_calls = [], []
    # the backbone's first layer (its weight's gradient node) and its second layer (a module
    # hook: the input of the first has no gradient to hook)
    model[0].weight.register_hook(lambda grad: weight_calls.append(1))
    model[2].register_full_backward_hook(lambda *args: module_calls.append(1))
    x, y = _data()
    for step in range(10):
        partial = opt.next_step_is_partial

        def closure():
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            opt.backward(loss)
            return loss

        if api == "closure":
            opt.step(closure)
        else:
            closure()
            # the backward walk stopped at the head: the backbone has no gradient
            assert all((p.grad is None) == partial for p in model[:4].parameters()), step
            opt.step()
    passes = opt.backward_passes
    assert passes == {"full": 4, "partial": 6}  # steps 0, 3, 6, 9 are full (k = 3)
    assert len(module_calls) == len(weight_calls) == passes["full"]


def test_loop_calling_loss_backward_is_counted_and_correct() -> None:
    """A loop that calls loss.backward() itself gets the same iterates (no saving)."""
    a, b = _net(), _net()
    opt_a = Multirate(head_partition(a), k=3, lr=0.05, momentum=0.9)
    opt_b = Multirate(head_partition(b), k=3, lr=0.05, momentum=0.9)
    _train(a, opt_a, 8)
    _train(b, opt_b, 8, use_backward=False)
    assert _same(a, b)
    assert opt_b.backward_passes == {"full": 8, "partial": 0}


def test_backward_inputs_for_frameworks_that_run_backward_themselves() -> None:
    """loss.backward(inputs=opt.backward_inputs) == opt.backward(loss), counted alike."""
    a, b = _net(), _net()
    opt_a = Multirate(head_partition(a), k=3, lr=0.05, momentum=0.9)
    opt_b = Multirate(head_partition(b), k=3, lr=0.05, momentum=0.9)
    _train(a, opt_a, 7)
    x, y = _data()
    for i in range(7):
        opt_b.zero_grad()
        loss = F.mse_loss(b(x[(i % 4) * 8 : (i % 4 + 1) * 8]), y[(i % 4) * 8 : (i % 4 + 1) * 8])
        assert (opt_b.backward_inputs is None) == (i % 3 == 0)
        loss.backward(inputs=opt_b.backward_inputs)
        opt_b.step()
    assert _same(a, b)
    assert opt_b.backward_passes == opt_a.backward_passes == {"full": 3, "partial": 4}


def test_partitions_by_name_and_random_redraw() -> None:
    model = _net()
    groups = bias_partition(model)
    assert all(p.dim() == 1 for p in groups[1]["params"])
    by_name = Multirate(model.parameters(), model=model, partition="biases", k=2, lr=0.1)
    assert [p.dim() == 1 for p in by_name._fast_params()] == [True] * 3
    head = Multirate(model.parameters(), model=model, k=2, lr=0.1)
    assert head._fast_params() == list(model[4].parameters())
    rand = Multirate(
        model.parameters(), model=model, partition="random", fast_fraction=0.5, k=2, lr=0.1
    )
    draws = set()
    for _ in range(8):
        _train(model, rand, 2)
        draws.add(tuple(rand._fast))
        assert sum(rand._fast) == 3  # round(0.5 * 6) tensors fast, re-drawn every cycle
    assert len(draws) > 1


def test_two_time_scales_is_multirate_with_k_the_ratio() -> None:
    a, b = _net(), _net()
    opt_a = Multirate.two_time_scales(head_partition(a), fast_lr=0.004, slow_lr=0.1, momentum=0.9)
    opt_b = Multirate(head_partition(b), k=25, lr=0.1, momentum=0.9)
    assert opt_a.k == 25
    _train(a, opt_a, 30)
    _train(b, opt_b, 30)
    assert _same(a, b)
    with pytest.raises(ValueError, match="integer"):
        Multirate.two_time_scales(head_partition(a), fast_lr=0.03, slow_lr=0.1)


def test_bad_input_names_the_problem() -> None:
    model = _net()
    backbone, head = (g["params"] for g in head_partition(model))
    with pytest.raises(ValueError, match="more than one parameter group"):
        Multirate([{"params": backbone, "rate": "slow"}, {"params": backbone + head}], lr=0.1)
    with pytest.raises(ValueError, match="fast part is empty"):
        Multirate([{"params": backbone + head, "rate": "slow"}], lr=0.1)
    with pytest.raises(ValueError, match="slow part is empty"):
        Multirate([{"params": backbone + head, "rate": "fast"}], lr=0.1)
    with pytest.raises(ValueError, match="is empty"):
        Multirate([{"params": [], "rate": "fast"}, {"params": backbone}], lr=0.1)
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="Invalid k"):
            Multirate(head_partition(model), k=k, lr=0.1)
    with pytest.raises(ValueError, match="Invalid rate"):
        Multirate([{"params": backbone, "rate": "medium"}, {"params": head}], lr=0.1)
    with pytest.raises(ValueError, match="needs model"):
        Multirate(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Invalid k: a setting of the whole"):
        Multirate([{"params": backbone, "k": 2}, {"params": head, "rate": "fast"}], lr=0.1)
    with pytest.raises(ValueError, match="momentm"):
        Multirate(head_partition(model), lr=0.1, momentm=0.9)
    # a fast group the loss never reaches: on the full and on a partial pass
    unused = nn.Linear(3, 3)
    opt = Multirate(
        [
            {"params": list(model.parameters()), "rate": "slow"},
            {"params": unused.parameters(), "rate": "fast"},
        ],
        k=2,
        lr=0.1,
    )
    x, y = _data()
    for _ in range(2):  # step 1: full pass; step 2: partial pass
        with pytest.raises(ValueError, match=r"param_groups\[1\] are not reachable from the"):
            opt.backward(F.mse_loss(model(x), y))
        opt.step()


@pytest.mark.parametrize(
    ("base", "settings", "extra"),
    [
        ("sgd", {"lr": 0.1, "momentum": 0.9}, {}),
        ("adam", {"lr": 0.01}, {"linear_drift": False}),
        ("baoab", {"lr": 0.05, "friction": 1.0, "temperature": 1e-3, "seed": 3}, {}),
        ("sgd", {"lr": 0.1, "momentum": 0.9}, {"partition": "random", "partition_seed": 5}),
    ],
)
def test_state_dict_mid_cycle_resumes_bit_identically(base, settings, extra) -> None:
    model = _net()
    make = lambda m: Multirate(  # noqa: E731
        m.parameters(), model=m, base_optimizer=base, k=3, **extra, **settings
    )
    opt = make(model)
    _train(model, opt, 4)  # position 1 of the second cycle
    assert opt.next_step_is_partial
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    _train(model, opt, 7)
    buffer.seek(0)
    resumed = make(resumed_model)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    torch.manual_seed(999)  # the resumed run must not depend on the global RNG
    _train(resumed_model, resumed, 7)
    assert _same(model, resumed_model)
    assert resumed.backward_passes == opt.backward_passes


def test_state_dict_from_another_k_is_refused() -> None:
    model = _net()
    saved = Multirate(head_partition(model), k=3, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="k=3"):
        Multirate(head_partition(model), k=4, lr=0.1).load_state_dict(saved)


def test_lr_scheduler_scales_both_time_scales() -> None:
    """StepLR halves group['lr'] = h: the fast part then steps h/(2k), the slow h/2."""
    s = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    f = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = Multirate(
        [{"params": [s]}, {"params": [f], "rate": "fast"}],
        k=2,
        lr=0.4,
        linear_drift=False,
        rate="slow",
    )
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    fs, ss = [], []
    for _ in range(4):
        opt.zero_grad()
        opt.backward(0.5 * (s.pow(2) + f.pow(2)).sum())
        opt.step()
        scheduler.step()
        fs.append(f.item())
        ss.append(s.item())
    # gradient = value; no momentum: f *= (1 - lr/k), s *= (1 - lr) on each cycle start
    expected_f = [0.8, 0.64, 0.64 * 0.9, 0.64 * 0.81]
    expected_s = [0.6, 0.6, 0.6 * 0.8, 0.6 * 0.8]
    assert fs == pytest.approx(expected_f, rel=1e-12)
    assert ss == pytest.approx(expected_s, rel=1e-12)
