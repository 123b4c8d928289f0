"""SAM's API: which parameters are perturbed (SAM-ON by module type, predicates, parameter
lists, ``perturbed=False`` groups), the registry entries, manual loops with LR schedulers, and
argument validation.

Oracles: which parameters ``first_step`` actually moves (compared bitwise with copies taken
before), the scheduler's closed-form learning rate, and the messages of the raised errors.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import torchvalley
from torchvalley.optim import SAM

NORM_PARAMETERS = {"bn.weight", "bn.bias", "ln.weight", "ln.bias", "gn.weight", "gn.bias"}


class _Net(nn.Module):
    """Norm layers of three types next to look-alikes that are *not* normalization layers."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(4, 6, bias=False)  # a bias before BatchNorm gets no gradient
        self.bn = nn.BatchNorm1d(6)
        self.subnet_bn = nn.Linear(6, 6)  # a Linear whose name mentions "bn"
        self.ln = nn.LayerNorm(6)
        self.gn = nn.GroupNorm(2, 6)
        self.layer_norm_scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))  # "norm" in the name
        self.head = nn.Linear(6, 3)
        with torch.no_grad():  # non-trivial affine parameters
            for norm in (self.bn, self.ln, self.gn):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = torch.relu(self.bn(self.fc(x)))
        h = self.gn(self.ln(self.subnet_bn(h))) * self.layer_norm_scale
        return self.head(h)


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _moved_in_first_step(net, opt):
    """Names of the parameters that ``first_step`` changes, and those the whole step changes."""
    x, y = _data()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    opt.first_step(zero_grad=True)
    perturbed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    nn.functional.cross_entropy(net(x), y).backward()
    opt.second_step(zero_grad=True)
    updated = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    return perturbed, updated


ALL = {n for n, _ in _Net().named_parameters()}


# -- 8. scope of the perturbation --------------------------------------------------------------


def test_perturb_norm_selects_normalization_layers_by_type():
    net = _Net()
    opt = SAM(net.parameters(), "sgd", rho=0.5, perturb="norm", model=net, lr=0.1)
    perturbed, updated = _moved_in_first_step(net, opt)
    assert perturbed == NORM_PARAMETERS
    assert updated == ALL  # the base still updates everything


def test_sam_on_registry_entry_perturbs_norm_layers():
    net = _Net()
    opt = torchvalley.create_optimizer("sam_on", net.parameters(), model=net, lr=0.1)
    assert isinstance(opt, SAM)
    perturbed, updated = _moved_in_first_step(net, opt)
    assert perturbed == NORM_PARAMETERS and updated == ALL


@pytest.mark.parametrize("name", ["sam", "asam", "fisher_sam", "monge_sam"])
def test_registry_entries_perturb_everything(name):
    net = _Net()
    opt = torchvalley.create_optimizer(name, net.parameters(), model=net, lr=0.1)
    ascent = {"sam": "sam", "asam": "asam", "fisher_sam": "fisher", "monge_sam": "monge"}[name]
    assert opt.param_groups[0]["ascent"] == ascent
    perturbed, updated = _moved_in_first_step(net, opt)
    assert perturbed == updated == ALL


def test_perturb_predicate_with_model_names():
    net = _Net()
    opt = SAM(
        net.parameters(),
        "sgd",
        perturb=lambda name, p: name.startswith("head") or (p.dim() == 1 and name[:2] == "ln"),
        model=net,
        lr=0.1,
    )
    perturbed, updated = _moved_in_first_step(net, opt)
    assert perturbed == {"head.weight", "head.bias", "ln.weight", "ln.bias"}
    assert updated == ALL


def test_perturb_predicate_with_named_parameters():
    net = _Net()
    opt = SAM(net.named_parameters(), "sgd", perturb=lambda name, p: "subnet" in name, lr=0.1)
    perturbed, _ = _moved_in_first_step(net, opt)
    assert perturbed == {"subnet_bn.weight", "subnet_bn.bias"}


def test_perturb_predicate_without_names_is_rejected():
    net = _Net()
    with pytest.raises(ValueError, match="Invalid perturb"):
        SAM(net.parameters(), "sgd", perturb=lambda name, p: True, lr=0.1)


def test_perturb_parameter_list():
    net = _Net()
    opt = SAM(net.parameters(), "sgd", perturb=[net.fc.weight, net.ln.bias], lr=0.1)
    perturbed, updated = _moved_in_first_step(net, opt)
    assert perturbed == {"fc.weight", "ln.bias"}
    assert updated == ALL


def test_group_with_perturbed_false_is_updated_not_perturbed():
    net = _Net()
    frozen = [net.fc.weight, net.head.weight, net.head.bias]
    rest = [p for p in net.parameters() if all(p is not q for q in frozen)]
    opt = SAM([{"params": frozen, "perturbed": False}, {"params": rest}], "sgd", model=net, lr=0.1)
    perturbed, updated = _moved_in_first_step(net, opt)
    assert perturbed == ALL - {"fc.weight", "head.weight", "head.bias"}
    assert updated == ALL


def test_perturbed_false_default_perturbs_nothing_and_equals_base():
    net = _Net()
    plain = copy.deepcopy(net)
    opt = SAM(net.parameters(), "sgd", perturbed=False, model=net, lr=0.1, momentum=0.9)
    perturbed, _ = _moved_in_first_step(net, opt)
    assert perturbed == set()
    x, y = _data()
    base = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(plain(x), y).backward()
    base.step()
    for a, b in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


# -- 9. manual loop with a scheduler, closure errors, validation ---------------------------------


def test_manual_loop_with_step_lr_reaches_base_without_warning():
    net = _Net()
    opt = SAM(net.parameters(), "sgd", rho=0.05, model=net, lr=0.4, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(1, 4):
            nn.functional.cross_entropy(net(x), y).backward()
            opt.first_step(zero_grad=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.second_step(zero_grad=True)
            scheduler.step()
            assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.4 * 0.5**step)
    assert scheduler.get_last_lr() == [pytest.approx(0.05)]


def test_manual_second_step_uses_the_scheduled_lr():
    # rho = 0 and plain SGD: the update is exactly -lr_t * g, so the scheduled lr is the one used.
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = SAM([w], "sgd", rho=0.0, lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.1 * (epoch + 1))
    for step in range(3):
        before = w.detach().clone()
        (w**2).sum().backward()
        opt.first_step(zero_grad=True)
        (w**2).sum().backward()
        opt.second_step(zero_grad=True)
        scheduler.step()
        torch.testing.assert_close(w.detach(), before - 0.1 * (step + 1) * 2 * before)


def test_step_without_closure_raises():
    net = _Net()
    opt = SAM(net.parameters(), "sgd", lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rho": -1.0}, "rho"),
        ({"ascent": "nope"}, "ascent"),
        ({"perturb": "norm"}, "perturb"),
        ({"perturb": "everything"}, "perturb"),
        ({"maximize": True}, "maximize"),
        ({"bn_statistics": "x"}, "bn_statistics"),
        ({"perturbation_sync": "x"}, "perturbation_sync"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"eta": -0.1}, "eta"),
        ({"fisher_eta": -1.0}, "fisher_eta"),
        ({"base_optimizer": "no_such_optimizer"}, "base_optimizer"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    net = _Net()
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        SAM(net.parameters(), **{"lr": 0.1, **kwargs})


def test_invalid_group_override_is_rejected():
    net = _Net()
    with pytest.raises(ValueError, match="Invalid ascent"):
        SAM([{"params": net.parameters(), "ascent": "nope"}], "sgd", lr=0.1)
    with pytest.raises(ValueError, match="Invalid rho"):
        SAM([{"params": net.parameters(), "rho": -0.5}], "sgd", lr=0.1)
