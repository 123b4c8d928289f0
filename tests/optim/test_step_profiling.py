"""The step wrapper of the Riemannian optimizers (``torchvalley.optim._profiling``): the same
hooks as ``torch.optim``'s, and the ``Optimizer.step#<Class>.step`` profiler label while a
profiler runs (the oracle: ``torch.optim.SGD`` under the same hooks)."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from torchvalley import ManifoldParameter
from torchvalley.manifolds import Stiefel
from torchvalley.optim import RiemannianAdam, RiemannianSGD


def _stiefel_param():
    generator = torch.Generator().manual_seed(0)
    p = ManifoldParameter(Stiefel().random(6, 3, generator=generator), Stiefel())
    p.grad = torch.randn(6, 3, generator=generator)
    return p


@pytest.mark.parametrize("cls", [RiemannianAdam, RiemannianSGD])
def test_the_profiler_sees_the_step_label(cls):
    p = _stiefel_param()
    optimizer = cls([p], lr=0.01)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step()
    names = {event.name for event in profile.events()}
    assert f"Optimizer.step#{cls.__name__}.step" in names


def _record_hooks(optimizer, calls):
    def pre(opt, args, kwargs):
        calls.append(("pre", type(opt).__name__, args, dict(kwargs)))

    def post(opt, args, kwargs):
        calls.append(("post", type(opt).__name__, args, dict(kwargs)))

    return [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]


def test_step_hooks_run_as_torch_optims_do():
    """Per-optimizer and global pre/post hooks, in torch's order, with the same arguments."""
    p = _stiefel_param()
    ours = RiemannianAdam([p], lr=0.01)
    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    logs = {}
    for name, optimizer in (("ours", ours), ("torch", reference)):
        calls = []
        handles = _record_hooks(optimizer, calls)
        handles.append(
            register_optimizer_step_pre_hook(lambda o, a, k, log=calls: log.append(("gpre",)))
        )
        handles.append(
            register_optimizer_step_post_hook(lambda o, a, k, log=calls: log.append(("gpost",)))
        )
        try:
            optimizer.step()
        finally:
            for handle in handles:
                handle.remove()
        logs[name] = [call[0] for call in calls]
    assert logs["ours"] == logs["torch"] == ["gpre", "pre", "post", "gpost"]


def test_a_pre_hook_can_replace_the_arguments_and_a_bad_return_is_refused():
    p = _stiefel_param()
    optimizer = RiemannianAdam([p], lr=0.01)
    seen = []

    def closure():
        seen.append(1)
        return torch.tensor(1.0)

    handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: ((opt, closure), {}))
    loss = optimizer.step()
    handle.remove()
    assert seen == [1] and float(loss) == 1.0
    handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: "bad")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        optimizer.step()
    handle.remove()


@pytest.mark.parametrize("name", ["sam", "baoab", "sgld", "a2grad", "cola_ud", "mesa", "bsam"])
def test_every_family_keeps_the_label_and_the_hooks(name):
    import torchvalley

    model = torch.nn.Linear(3, 2)
    optimizer = torchvalley.create_optimizer(name, model.parameters(), model=model)

    def closure():
        optimizer.zero_grad()
        loss = model(torch.ones(4, 3)).square().mean()
        loss.backward()
        return loss

    calls = []
    _record_hooks(optimizer, calls)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step(closure)
    assert [call[0] for call in calls] == ["pre", "post"]
    assert any(event.name.startswith("Optimizer.step#") for event in profile.events())


@pytest.mark.parametrize("outer", [True, False])
def test_the_step_runs_without_grad_and_restores_the_mode_on_every_exit(outer):
    """``no_grad_step`` (the hot step's replacement for ``@torch.no_grad()``): grad is off
    inside the step (the closure turns it on for itself), and the caller's mode is back after a
    normal return and after an exception."""
    p = _stiefel_param()
    optimizer = RiemannianAdam([p], lr=0.01)
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        return torch.zeros(())

    def failing():
        raise RuntimeError("closure failed")

    pre_modes = []
    optimizer.register_step_pre_hook(lambda *a: pre_modes.append(torch.is_grad_enabled()))
    with torch.set_grad_enabled(outer):
        optimizer.step(closure)
        assert torch.is_grad_enabled() is outer
        with pytest.raises(RuntimeError, match="closure failed"):
            optimizer.step(failing)
        assert torch.is_grad_enabled() is outer
    assert seen == [True]  # the closure evaluates with grad, as in torch.optim
    assert pre_modes == [outer, outer]  # hooks run outside the no-grad scope, as torch's do
    assert not p.requires_grad or p.grad_fn is None  # the update was not recorded


@pytest.mark.parametrize("kind", ["global_pre", "global_post", "pre", "post"])
def test_a_single_hook_of_any_kind_still_runs(kind):
    """The wrapper skips the hook chains only when there are no hooks at all."""
    p = _stiefel_param()
    optimizer = RiemannianSGD([p], lr=0.01)
    calls = []
    register = {
        "global_pre": register_optimizer_step_pre_hook,
        "global_post": register_optimizer_step_post_hook,
        "pre": optimizer.register_step_pre_hook,
        "post": optimizer.register_step_post_hook,
    }[kind]
    handle = register(lambda *a: calls.append(kind))
    try:
        optimizer.step()
    finally:
        handle.remove()
    optimizer.step()
    assert calls == [kind]
