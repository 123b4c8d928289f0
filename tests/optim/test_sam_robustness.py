"""SAM used wrongly or interrupted: the weights are never left at ``w + eps``.

Issue 20 items 1, 2, 16 and 21. Oracles: bitwise copies of the parameters and BatchNorm
buffers taken before the step; a fresh optimizer stepping from the same state (a following step
after an interrupted one must equal it bit for bit); the raw gradients copied before
``first_step``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchvalley.manifolds import ManifoldParameter, Sphere
from torchvalley.optim import SAM

VARIANTS = {
    "sam": {},
    "asam": {"ascent": "asam"},
    "fisher": {"ascent": "fisher"},
    "monge": {"ascent": "monge"},
    "sam_on": {"perturb": "norm"},
    "riemannian": {"ascent": "riemannian"},
}


class _Net(nn.Module):
    """Linear, BatchNorm, a point on the sphere (a curved parameter for ``riemannian``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        self.direction = ManifoldParameter(Sphere().random(3), Sphere())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.direction


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _sam(model: nn.Module, variant: str, swap: bool) -> SAM:
    return SAM(
        model.parameters(),
        "sgd",
        rho=0.1,
        model=model,
        swap_storage=swap,
        lr=0.05,
        momentum=0.9,
        **VARIANTS[variant],
    )


def _closure(model: nn.Module, opt: SAM, fail_on: int | None = None, error=RuntimeError):
    inputs, targets = _data()
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        if calls[0] == fail_on:  # after the perturbed forward: BatchNorm has moved too
            raise error("data loader died")
        return loss

    return closure


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _storages(model: nn.Module) -> list[int]:
    return [p.untyped_storage().data_ptr() for p in model.parameters()]


@pytest.mark.parametrize("swap", [False, True], ids=["copy", "swap"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_perturbed_pass_restores_w(variant, swap, error):
    model = _Net()
    opt = _sam(model, variant, swap)
    opt.step(_closure(model, opt))  # a normal step first: momentum, saved buffers exist
    before = _state(model)
    storages = _storages(model)
    # The clean pass alone (on a copy) gives the BatchNorm statistics to expect.
    reference = copy.deepcopy(model)
    _closure(reference, _sam(reference, variant, swap))()

    with pytest.raises(error, match="data loader died"):
        opt.step(_closure(model, opt, fail_on=2, error=error))

    expected = _state(reference)
    for key, value in _state(model).items():
        wanted = before[key] if key in dict(model.named_parameters()) else expected[key]
        assert torch.equal(value, wanted), key
    assert _storages(model) == storages  # swap_storage: every parameter back on its storage

    # The next step equals a fresh optimizer's from the same state (momentum loaded).
    twin = copy.deepcopy(model)
    fresh = _sam(twin, variant, swap)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch would share the buffers
    opt.step(_closure(model, opt))
    fresh.step(_closure(twin, fresh))
    for (key, value), twin_value in zip(_state(model).items(), _state(twin).values(), strict=True):
        assert torch.equal(value, twin_value), key


@pytest.mark.parametrize("swap", [False, True], ids=["copy", "swap"])
def test_a_failing_micro_batch_restores_w(swap):
    model = _Net()
    opt = _sam(model, "sam", swap)
    before = _state(model)
    good, bad = _closure(model, opt), _closure(model, opt, fail_on=2)
    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step_micro_batches([good, bad])
    params = dict(model.named_parameters())
    for key, value in _state(model).items():
        if key in params:
            assert torch.equal(value, before[key]), key


# -- item 2: the two halves in the wrong order -------------------------------------------------


def _manual(model: nn.Module, opt: SAM) -> None:
    _closure(model, opt)()
    opt.first_step(zero_grad=True)
    _closure(model, opt)()


def test_second_step_twice_is_refused_and_changes_nothing():
    model = _Net()
    opt = _sam(model, "sam", False)
    _manual(model, opt)
    opt.second_step()
    after = _state(model)
    with pytest.raises(RuntimeError, match=r"second_step\(\) called twice"):
        opt.second_step()
    for key, value in _state(model).items():
        assert torch.equal(value, after[key]), key


def test_second_step_without_first_step_is_refused():
    model = _Net()
    opt = _sam(model, "sam", False)
    _closure(model, opt)()
    before = _state(model)
    with pytest.raises(RuntimeError, match=r"second_step\(\) without first_step\(\)"):
        opt.second_step()
    for key, value in _state(model).items():
        assert torch.equal(value, before[key]), key
    # The proper order still works afterwards, and again after a step(closure).
    _manual(model, opt)
    opt.second_step()
    opt.step(_closure(model, opt))
    _manual(model, opt)
    opt.second_step()


def test_second_step_after_an_interrupted_step_is_refused():
    model = _Net()
    opt = _sam(model, "sam", False)
    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(_closure(model, opt, fail_on=2))
    with pytest.raises(RuntimeError, match=r"second_step\(\) without first_step\(\)"):
        opt.second_step()


# -- item 21: .grad stays the raw gradient -------------------------------------------------------


@pytest.mark.parametrize("diagnostics", [False, True], ids=["plain", "diagnostics"])
@pytest.mark.parametrize("swap", [False, True], ids=["copy", "swap"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_first_step_leaves_the_raw_gradient_in_grad(variant, swap, diagnostics):
    model = _Net()
    opt = SAM(
        model.parameters(),
        "sgd",
        rho=0.1,
        model=model,
        swap_storage=swap,
        diagnostics=diagnostics,
        lr=0.05,
        **VARIANTS[variant],
    )
    _closure(model, opt)()
    raw = {name: p.grad.clone() for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    assert opt.first_step(zero_grad=False) is True
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())  # it climbed
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, raw[name]), name


# -- item 16: inputs SAM cannot handle, and foreign state ---------------------------------------


def test_sparse_gradients_are_refused_and_w_is_kept():
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 4, sparse=True)
    opt = SAM(embedding.parameters(), "sgd", rho=0.1, lr=0.1)
    before = embedding.weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = embedding(torch.tensor([1, 2, 3])).square().sum()
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="dense gradients"):
        opt.step(closure)
    assert torch.equal(embedding.weight, before)


def test_complex_parameters_are_refused_with_a_clear_error():
    z = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex parameters"):
        SAM([z], "sgd", lr=0.1)
    opt = SAM([nn.Parameter(torch.randn(3))], "sgd", lr=0.1)
    with pytest.raises(ValueError, match="complex parameters"):
        opt.add_param_group({"params": [z]})


def _trained(base: str, **hyper):
    model = _Net()
    opt = SAM(model.parameters(), base, rho=0.1, model=model, **hyper)
    opt.step(_closure(model, opt))
    return model, opt


def test_a_state_dict_from_another_base_is_refused_at_load():
    _, adam = _trained("adam", lr=1e-3)
    model, sgd = _trained("sgd", lr=0.05, momentum=0.9)
    kept = copy.deepcopy(sgd.state_dict())
    with pytest.raises(ValueError, match="saved by SAM over Adam, loaded into SAM over SGD"):
        sgd.load_state_dict(adam.state_dict())
    # Plain torch.optim.Adam's state (no "sam" entry): its groups lack SGD's momentum.
    torch_adam = torch.optim.Adam(_Net().parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="lack dampening, momentum, which SGD needs"):
        sgd.load_state_dict(torch_adam.state_dict())
    # Nothing was changed by the refused loads: the next step runs and the state is intact.
    state = sgd.state_dict()
    for index, saved in kept["state"].items():
        assert torch.equal(state["state"][index]["momentum_buffer"], saved["momentum_buffer"])
    sgd.step(_closure(model, sgd))


def test_the_base_optimizers_own_state_dict_still_loads():
    model, sam = _trained("sgd", lr=0.05, momentum=0.9)
    twin = _Net()
    plain = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    _closure(twin, plain)()
    plain.step()
    sam.load_state_dict(plain.state_dict())
    assert sam.param_groups[0]["rho"] == 0.1  # SAM's settings kept
    sam.step(_closure(model, sam))


# -- item 24: a misspelt setting --------------------------------------------------------------


@pytest.mark.parametrize("base", ["sgd", torch.optim.SGD], ids=["name", "class"])
def test_a_misspelt_setting_names_both_lists_and_suggests(base):
    with pytest.raises(ValueError) as caught:
        SAM(_Net().parameters(), base, rhoo=0.05, lr=0.1)
    message = str(caught.value)
    assert "Unknown hyperparameter 'rhoo'" in message
    assert "did you mean 'rho'?" in message
    assert "swap_storage" in message and "momentum" in message  # SAM's and SGD's settings


@pytest.mark.parametrize("base", ["sgd", torch.optim.SGD], ids=["name", "class"])
@pytest.mark.parametrize("entry", ["sam", "asam", "lorentz_sam"])
def test_a_misspelt_setting_through_the_registry_blames_the_right_optimizer(entry, base):
    import torchvalley

    with pytest.raises(ValueError) as caught:
        torchvalley.create_optimizer(entry, _Net().parameters(), base_optimizer=base, rhoo=0.05)
    message = str(caught.value)
    assert f"Unknown hyperparameter 'rhoo' for optimizer '{entry}' over " in message
    assert "did you mean 'rho'?" in message
    assert f"{entry}'s: base_optimizer, rho" in message and "momentum" in message
    with pytest.raises(ValueError, match="did you mean 'momentum'"):
        torchvalley.create_optimizer(entry, _Net().parameters(), base_optimizer=base, momentun=0.9)
