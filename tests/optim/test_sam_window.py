"""WindowSAM against independent oracles.

Oracles: SAM itself (bit for bit) for a window covering every step; the base optimizer itself
(``torch.optim.SGD`` / ``AdamW``, bit for bit) for an empty window; and, for a partial window,
the same run spliced from the two: a SAM optimizer on the window's steps and a plain SGD
optimizer on the others, sharing one momentum buffer (the base optimizer's state carries over).
"""

from __future__ import annotations

import copy as copy_module

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from torchvalley.optim import SAM
from torchvalley.optim.sam.window import WindowSAM

STEPS = 8


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


def _batches(n=STEPS):
    out = []
    for seed in range(n):
        generator = torch.Generator().manual_seed(seed)
        out.append(
            (
                torch.randn(16, 5, generator=generator),
                torch.randint(0, 3, (16,), generator=generator),
            )
        )
    return out


def _closure(model, optimizer, x, y, calls=None):
    def closure():
        if calls is not None:
            calls.append(1)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _hyper(base):
    return {"lr": 0.05, "momentum": 0.9} if base == "sgd" else {"lr": 1e-2}


def _run(model, optimizer, batches, calls=None):
    for x, y in batches:
        if isinstance(optimizer, torch.optim.Optimizer) and not isinstance(optimizer, SAM):
            _closure(model, optimizer, x, y, calls)()
            optimizer.step()
        else:
            optimizer.step(_closure(model, optimizer, x, y, calls))


def _assert_same(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("window", ["early", "late"])
@pytest.mark.parametrize("ascent", ["sam", "asam"])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_full_window_is_sam_bit_for_bit(window, ascent, base):
    reference, model = _model(), _model()
    sam = SAM(reference.parameters(), base, rho=0.1, ascent=ascent, model=reference, **_hyper(base))
    windowed = WindowSAM(
        model.parameters(),
        base,
        rho=0.1,
        ascent=ascent,
        model=model,
        fraction=1.0,
        window=window,
        total_steps=STEPS,
        **_hyper(base),
    )
    _run(reference, sam, _batches())
    _run(model, windowed, _batches())
    _assert_same(reference, model)
    assert windowed.window_steps == STEPS


@pytest.mark.parametrize("window", ["early", "late"])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_empty_window_is_the_base_optimizer_bit_for_bit(window, base):
    reference, model = _model(), _model()
    plain_cls = torch.optim.SGD if base == "sgd" else torch.optim.AdamW
    plain = plain_cls(reference.parameters(), **_hyper(base))
    windowed = WindowSAM(
        model.parameters(), base, rho=0.1, model=model, fraction=0.0, window=window,
        total_steps=STEPS, **_hyper(base),
    )  # fmt: skip
    calls: list = []
    _run(reference, plain, _batches())
    _run(model, windowed, _batches(), calls)
    _assert_same(reference, model)
    assert len(calls) == STEPS  # one pass per step


@pytest.mark.parametrize(
    ("window", "fraction", "sam_steps"),
    [("early", 0.25, {0, 1}), ("late", 0.25, {6, 7}), ("late", 0.3, {6, 7})],
)
def test_partial_window_splices_sam_and_sgd_steps(window, fraction, sam_steps):
    # Oracle: a SAM wrapper and a bare torch SGD sharing the parameters and one momentum
    # buffer, SAM on the window's steps (round(0.3 * 8) = 2 steps: the last two).
    reference, model = _model(), _model()
    sam = SAM(reference.parameters(), "sgd", rho=0.1, model=reference, lr=0.05, momentum=0.9)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    sgd.state = sam.base_optimizer.state  # the same momentum buffers
    windowed = WindowSAM(
        model.parameters(), "sgd", rho=0.1, model=model, fraction=fraction, window=window,
        total_steps=STEPS, lr=0.05, momentum=0.9,
    )  # fmt: skip
    calls: list = []
    for t, (x, y) in enumerate(_batches()):
        assert windowed.in_window() == (t in sam_steps)
        if t in sam_steps:
            sam.step(_closure(reference, sam, x, y))
        else:
            _closure(reference, sgd, x, y)()
            sgd.step()
        windowed.step(_closure(model, windowed, x, y, calls))
        _assert_same(reference, model)
    assert len(calls) == STEPS + len(sam_steps)  # 1 + f passes per step on average


def test_late_window_stays_on_after_total_steps_and_early_stays_off():
    def make(**kwargs):
        return WindowSAM(nn.Linear(2, 1).parameters(), "sgd", lr=0.1, **kwargs)

    late, early = (
        make(fraction=0.5, total_steps=4),
        make(fraction=0.5, total_steps=4, window="early"),
    )
    assert [late.in_window(t) for t in range(7)] == [False] * 2 + [True] * 5
    assert [early.in_window(t) for t in range(7)] == [True] * 2 + [False] * 5
    full_early = make(fraction=1.0, total_steps=3, window="early")  # the registry's example
    assert [full_early.in_window(t) for t in range(5)] == [True] * 3 + [False] * 2
    assert all(make(fraction=1.0).in_window(t) for t in range(5))  # no total: every step
    assert not any(make(fraction=0.0).in_window(t) for t in range(5))


@pytest.mark.parametrize("window", ["early", "late"])
def test_resume_mid_run_is_bit_identical_and_refuses_a_sam_dict(window):
    def build(model):
        return WindowSAM(
            model.parameters(), "sgd", rho=0.1, model=model, fraction=0.5, window=window,
            total_steps=STEPS, lr=0.05, momentum=0.9,
        )  # fmt: skip

    model = _model()
    optimizer = build(model)
    batches = _batches()
    _run(model, optimizer, batches[:3])  # mid-run: the window switches at step 4
    saved = copy_module.deepcopy(optimizer.state_dict())
    copy = _model()
    copy.load_state_dict(model.state_dict())
    resumed = build(copy)
    resumed.load_state_dict(saved)
    assert resumed.window_steps == 3
    _run(model, optimizer, batches[3:])
    _run(copy, resumed, batches[3:])
    _assert_same(model, copy)
    plain = SAM(copy.parameters(), "sgd", lr=0.05, momentum=0.9)
    with pytest.raises(ValueError, match="WindowSAM"):
        resumed.load_state_dict(plain.state_dict())


def test_invalid_settings_are_refused_by_name():
    def make(**kwargs):
        return WindowSAM(nn.Linear(2, 1).parameters(), "sgd", lr=0.1, **kwargs)

    with pytest.raises(ValueError, match="Invalid total_steps"):
        make(fraction=0.25)  # missing
    for bad in (0, -3, 1.5, "10", True):
        with pytest.raises(ValueError, match="Invalid total_steps"):
            make(fraction=0.25, total_steps=bad)
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="Invalid fraction"):
            make(fraction=bad, total_steps=10)
    with pytest.raises(ValueError, match="Invalid window"):
        make(fraction=0.25, total_steps=10, window="middle")
    with pytest.raises(ValueError, match="Invalid total_steps"):
        torchvalley.create_optimizer("window_sam", nn.Linear(2, 1).parameters(), fraction=0.5)
    make(fraction=0.0)  # the whole-run windows need no total
    make(fraction=1.0)
    with pytest.raises(RuntimeError, match="closure"):
        make().step()


def test_registry_entry_builds_and_runs():
    model = _model()
    optimizer = torchvalley.create_optimizer(
        "window_sam", model.parameters(), model=model, lr=0.05, fraction=0.25, total_steps=4
    )
    assert isinstance(optimizer, WindowSAM) and optimizer.model is model
    _run(model, optimizer, _batches(4))
    assert "WindowSAM(fraction=0.25" in repr(optimizer)


def test_base_steps_with_a_grad_scaler_match_the_base_optimizer_with_that_scaler():
    reference, model = _model(), _model()
    plain = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    windowed = WindowSAM(
        model.parameters(), "sgd", rho=0.1, fraction=0.0, total_steps=STEPS, lr=0.05, momentum=0.9
    )
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8) for _ in range(2)]
    for x, y in _batches():
        plain.zero_grad()
        scalers[0].scale(F.cross_entropy(reference(x), y)).backward()
        scalers[0].step(plain)
        scalers[0].update()

        def closure(x=x, y=y):
            windowed.zero_grad()
            loss = F.cross_entropy(model(x), y)
            scalers[1].scale(loss).backward()
            return loss

        windowed.step(closure, grad_scaler=scalers[1])
    _assert_same(reference, model)
    assert scalers[0].get_scale() == scalers[1].get_scale()
