"""Oracle tests of the curvature-vector products against dense matrices (float64).

The oracles are built here, independently of :mod:`torchvalley.landscape`: the loss as a function
of one flat parameter vector through ``torch.func.functional_call`` (with the model's BatchNorm
mode set explicitly and its buffers cloned), differentiated densely by
``torch.autograd.functional`` (``hessian``, ``jacobian``).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from torchvalley.curvature.bn_fold import FoldedEvalBatchNorm
from torchvalley.curvature.function import ParameterFunction
from torchvalley.curvature.products import (
    CurvatureOperator,
    fisher_vector_product,
    gauss_newton_vector_product,
    hessian_vector_product,
)

DTYPE = torch.float64
STRATEGIES = ["forward_over_reverse", "double_backward", "double_backward_per_batch"]
# (network, loss, bn_mode)
CASES = [
    ("mlp", "mse", "eval"),
    ("mlp", "ce", "eval"),
    ("bn", "mse", "eval"),
    ("bn", "mse", "train"),
    ("bn", "ce", "train"),
    ("conv", "ce", "eval"),
    ("conv", "mse", "train"),
    ("tanh_bn", "mse", "eval"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _ConvNet(nn.Module):
    """(B, 6) signals → grouped conv (no bias) + BN + tanh → conv + BN + tanh → linear."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 4, 3, groups=2, bias=False),
            nn.BatchNorm1d(4),
            nn.Tanh(),
            nn.Conv1d(4, 2, 2, padding=1),
            nn.BatchNorm1d(2),
            nn.Tanh(),
        )
        self.classifier = nn.Linear(2 * 2, outputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.features(inputs.reshape(inputs.shape[0], 2, -1))
        return self.classifier(features.flatten(1))


def _network(kind: str, outputs: int) -> nn.Module:
    """A 2-layer tanh MLP (3-8-out), the same with BatchNorm after the first linear layer
    (``"bn"``) or after its tanh (``"tanh_bn"``), or a small 1-D CNN with BatchNorm after each
    convolution; 40–60 parameters. In eval mode the double-backward strategies fold the
    BatchNorm of ``"bn"`` and ``"conv"`` into the layer before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "mlp":
            model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, outputs))
        elif kind == "bn":
            model = nn.Sequential(
                nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, outputs)
            )
        elif kind == "tanh_bn":
            model = nn.Sequential(
                nn.Linear(3, 6), nn.Tanh(), nn.BatchNorm1d(6), nn.Linear(6, outputs)
            )
        else:
            model = _ConvNet(outputs)
        with torch.no_grad():  # running statistics unlike the batch's, so eval ≠ train
            for module in model.modules():
                if isinstance(module, nn.BatchNorm1d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.3, 0.3)
    return model.to(DTYPE)


def _loss(kind: str):
    return F.mse_loss if kind == "mse" else F.cross_entropy


def _per_example(kind: str):
    if kind == "mse":
        return lambda outputs, targets: ((outputs - targets) ** 2).mean(dim=1)
    return lambda outputs, targets: F.cross_entropy(outputs, targets, reduction="none")


def _data(loss: str, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, 3, generator=generator, dtype=DTYPE)
    if loss == "mse":
        return inputs, torch.randn(n, 2, generator=generator, dtype=DTYPE)
    return inputs, torch.randint(0, 3, (n,), generator=generator)


def _setup(net: str, loss: str):
    model = _network(net, 2 if loss == "mse" else 3)
    inputs, targets = _data(loss)
    if net == "conv":  # two channels of length 3
        inputs = torch.cat([inputs, inputs.flip(1) ** 2], dim=1)
    return model, _loss(loss), (inputs, targets)


def _flat(vector) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vector])


def _unflat(flat: torch.Tensor, like) -> tuple[torch.Tensor, ...]:
    parts = torch.split(flat, [t.numel() for t in like])
    return tuple(p.reshape(t.shape) for p, t in zip(parts, like, strict=True))


def _outputs_fn(model: nn.Module, inputs: torch.Tensor, bn_mode: str, names=None):
    """Model outputs as a function of the flat vector of the parameters ``names``."""
    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    like = [named[n] for n in names]

    def outputs(theta: torch.Tensor) -> torch.Tensor:
        state = {n: p.detach() for n, p in named.items()}
        state.update(dict(zip(names, _unflat(theta, like), strict=True)))
        state.update({n: b.clone() for n, b in model.named_buffers()})
        was = model.training
        model.train(bn_mode == "train")
        try:
            return functional_call(model, state, (inputs,))
        finally:
            model.train(was)

    return outputs, _flat([p.detach() for p in like])


@functools.cache
def _dense(net: str, loss: str, bn_mode: str):
    """Dense Hessian, GGN and empirical Fisher of the case's loss at the model's point."""
    model, loss_fn, (inputs, targets) = _setup(net, loss)
    outputs, theta = _outputs_fn(model, inputs, bn_mode)
    hessian = torch.autograd.functional.hessian(lambda t: loss_fn(outputs(t), targets), theta)
    z = outputs(theta).detach()
    jacobian = torch.autograd.functional.jacobian(outputs, theta).reshape(z.numel(), -1)
    output_hessian = torch.autograd.functional.hessian(
        lambda flat: loss_fn(flat.reshape(z.shape), targets), z.reshape(-1)
    )
    ggn = jacobian.T @ output_hessian @ jacobian
    per_example = _per_example(loss)
    grads = torch.autograd.functional.jacobian(
        lambda t: per_example(outputs(t), targets), theta
    )  # (N, P): every example's loss gradient, batch statistics included
    fisher = grads.T @ grads / inputs.shape[0]
    return hessian, ggn, fisher


def _random_vector(model: nn.Module, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(p.shape, generator=generator, dtype=DTYPE) for p in model.parameters())


# -- Hessian --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("net", "loss", "bn_mode"), CASES)
def test_hvp_equals_dense_hessian_times_vector(net, loss, bn_mode, strategy):
    model, loss_fn, data = _setup(net, loss)
    hessian, _, _ = _dense(net, loss, bn_mode)
    vector = _random_vector(model, 2)
    product = hessian_vector_product(
        model, loss_fn, data, vector, bn_mode=bn_mode, strategy=strategy
    )
    assert [p.shape for p in product] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(_flat(product), hessian @ _flat(vector), rtol=0, atol=1e-10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hvp_is_symmetric(strategy):
    model, loss_fn, data = _setup("bn", "ce")
    u, v = _random_vector(model, 3), _random_vector(model, 4)
    hu = hessian_vector_product(model, loss_fn, data, u, bn_mode="train", strategy=strategy)
    hv = hessian_vector_product(model, loss_fn, data, v, bn_mode="train", strategy=strategy)
    torch.testing.assert_close(_flat(u) @ _flat(hv), _flat(v) @ _flat(hu), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hvp_on_a_parameter_subset_is_the_sub_block(strategy):
    model, loss_fn, (inputs, targets) = _setup("bn", "mse")
    names = ["0.weight", "1.weight"]
    outputs, theta = _outputs_fn(model, inputs, "eval", names)
    block = torch.autograd.functional.hessian(lambda t: loss_fn(outputs(t), targets), theta)
    named = dict(model.named_parameters())
    vector = tuple(torch.ones_like(named[n]) for n in names)
    product = hessian_vector_product(
        model, loss_fn, (inputs, targets), vector, parameters=names, strategy=strategy
    )
    torch.testing.assert_close(_flat(product), block @ _flat(vector), rtol=0, atol=1e-10)


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.unused = nn.Parameter(torch.ones(4))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(inputs))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hvp_of_an_unused_parameter_is_zero(strategy):
    model = _WithUnused().to(DTYPE)
    data = _data("mse")
    vector = _random_vector(model, 5)
    product = hessian_vector_product(model, F.mse_loss, data, vector, strategy=strategy)
    names = [name for name, _ in model.named_parameters()]
    used = [i for i, name in enumerate(names) if name != "unused"]
    reference = hessian_vector_product(
        model,
        F.mse_loss,
        data,
        tuple(vector[i] for i in used),
        parameters=[names[i] for i in used],
    )
    assert torch.equal(product[names.index("unused")], torch.zeros(4, dtype=DTYPE))
    torch.testing.assert_close(
        _flat(product[i] for i in used), _flat(reference), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batched_products_equal_single_products(strategy):
    model, loss_fn, data = _setup("bn", "ce")
    function = ParameterFunction(model, loss_fn, data, bn_mode="eval")
    operator = CurvatureOperator(function, strategy=strategy)
    vectors = torch.randn(3, operator.dimension, generator=torch.Generator().manual_seed(6))
    vectors = vectors.to(DTYPE)
    batched = operator.matmat_flat(vectors)
    single = torch.stack([operator.matvec_flat(v) for v in vectors])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)
    assert operator.products == 6


def _graph_nodes(tensor: torch.Tensor) -> list[str]:
    """The class names of the autograd nodes of ``tensor``'s graph (each node once)."""
    seen, stack, names = set(), [tensor.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize(
    ("net", "folded_layers"),
    [("conv", ("ConvolutionBackward0", 2)), ("bn", ("AddmmBackward0", 2)), ("tanh_bn", None)],
)
def test_eval_batch_norm_is_folded_or_affine_in_the_double_backward_graph(net, folded_layers):
    model, loss_fn, data = _setup(net, "mse")
    model.eval()
    plain = loss_fn(model(data[0]), data[1])
    with FoldedEvalBatchNorm():
        rewritten = loss_fn(model(data[0]), data[1])
    torch.testing.assert_close(rewritten, plain, rtol=1e-14, atol=0)
    assert any("BatchNorm" in name for name in _graph_nodes(plain))
    nodes = _graph_nodes(rewritten)
    assert not any("BatchNorm" in name for name in nodes)
    if folded_layers is not None:  # BN(conv(x, W, b)) = conv(x, W·a, b·a + c): only folded ones
        name, count = folded_layers
        assert nodes.count(name) == count


class _LinearOverFeatures(nn.Module):
    """Linear on the last axis of (B, C, F) then BatchNorm over C (= out features, by chance):
    BatchNorm's channels are not the linear layer's outputs, so nothing may be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(inputs.reshape(inputs.shape[0], 3, 4))).flatten(1)


def test_batch_norm_after_an_in_place_change_is_not_folded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv1d(1, 2, 3), nn.ReLU(inplace=True), nn.BatchNorm1d(2), nn.Flatten()
        )
        model = model.to(DTYPE).eval()
        with torch.no_grad():
            model[2].running_mean.fill_(0.3)
    inputs = torch.randn(4, 1, 5, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    plain = model(inputs).square().mean()
    with FoldedEvalBatchNorm():
        rewritten = model(inputs).square().mean()
    torch.testing.assert_close(rewritten, plain, rtol=1e-14, atol=0)


def test_batch_norm_over_another_axis_is_not_folded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _LinearOverFeatures().to(DTYPE).eval()
        with torch.no_grad():
            model.norm.running_mean.uniform_(-1, 1)
            model.norm.running_var.uniform_(0.5, 2.0)
            model.norm.weight.uniform_(0.5, 1.5)
    inputs = torch.randn(5, 12, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    targets = torch.zeros(5, 9, dtype=DTYPE)
    plain = F.mse_loss(model(inputs), targets)
    with FoldedEvalBatchNorm():
        rewritten = F.mse_loss(model(inputs), targets)
    torch.testing.assert_close(rewritten, plain, rtol=1e-14, atol=0)
    outputs, theta = _outputs_fn(model, inputs, "eval")
    hessian = torch.autograd.functional.hessian(lambda t: F.mse_loss(outputs(t), targets), theta)
    vector = _random_vector(model, 14)
    product = hessian_vector_product(model, F.mse_loss, (inputs, targets), vector)
    torch.testing.assert_close(_flat(product), hessian @ _flat(vector), rtol=0, atol=1e-10)


# -- Gauss–Newton and Fisher -------------------------------------------------------------------


@pytest.mark.parametrize(("net", "loss", "bn_mode"), CASES)
def test_gnvp_equals_dense_jt_h_j(net, loss, bn_mode):
    model, loss_fn, data = _setup(net, loss)
    _, ggn, _ = _dense(net, loss, bn_mode)
    vector = _random_vector(model, 7)
    product = gauss_newton_vector_product(model, loss_fn, data, vector, bn_mode=bn_mode)
    torch.testing.assert_close(_flat(product), ggn @ _flat(vector), rtol=0, atol=1e-10)


def test_ggn_is_positive_semidefinite_for_convex_losses():
    for loss in ("mse", "ce"):
        _, ggn, _ = _dense("bn", loss, "eval")
        assert torch.linalg.eigvalsh(ggn).min() > -1e-12


@pytest.mark.parametrize(("net", "loss", "bn_mode"), CASES)
def test_fisher_vector_product_equals_dense_empirical_fisher(net, loss, bn_mode):
    model, loss_fn, data = _setup(net, loss)
    _, _, fisher = _dense(net, loss, bn_mode)
    vector = _random_vector(model, 8)
    product = fisher_vector_product(model, loss_fn, data, vector, bn_mode=bn_mode)
    torch.testing.assert_close(_flat(product), fisher @ _flat(vector), rtol=0, atol=1e-10)
    explicit = fisher_vector_product(
        model, loss_fn, data, vector, bn_mode=bn_mode, per_example_loss=_per_example(loss)
    )
    torch.testing.assert_close(_flat(explicit), _flat(product), rtol=0, atol=1e-12)


def test_fisher_rejects_a_loss_that_is_not_a_mean():
    model, _, data = _setup("mlp", "mse")

    def summed(outputs, targets):
        return F.mse_loss(outputs, targets, reduction="sum")

    with pytest.raises(ValueError, match="per_example_loss"):
        fisher_vector_product(model, summed, data, _random_vector(model, 9))
    with pytest.raises(ValueError, match="shape"):
        fisher_vector_product(
            model, F.mse_loss, data, _random_vector(model, 9), per_example_loss=F.mse_loss
        )


# -- batches ------------------------------------------------------------------------------------


def _split(data, sizes=(5, 7, 4)):
    inputs, targets = data
    return list(zip(inputs.split(list(sizes)), targets.split(list(sizes)), strict=True))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_batches_average_to_the_concatenated_batch_in_eval_mode(loss):
    model, loss_fn, data = _setup("bn", loss)
    batches = _split(data)
    vector = _random_vector(model, 10)
    for strategy in STRATEGIES:
        whole = hessian_vector_product(model, loss_fn, data, vector, strategy=strategy)
        parts = hessian_vector_product(model, loss_fn, batches, vector, strategy=strategy)
        torch.testing.assert_close(_flat(parts), _flat(whole), rtol=0, atol=1e-12)
    for product in (gauss_newton_vector_product, fisher_vector_product):
        whole = product(model, loss_fn, data, vector)
        parts = product(model, loss_fn, iter(batches), vector)
        torch.testing.assert_close(_flat(parts), _flat(whole), rtol=0, atol=1e-12)


def test_strategies_agree_on_several_batches_in_train_mode():
    model, loss_fn, data = _setup("bn", "ce")
    batches = _split(data)
    vector = _random_vector(model, 11)
    products = [
        hessian_vector_product(model, loss_fn, batches, vector, bn_mode="train", strategy=strategy)
        for strategy in STRATEGIES
    ]
    for other in products[1:]:
        torch.testing.assert_close(_flat(other), _flat(products[0]), rtol=0, atol=1e-12)
    # train mode: the weighted mean of per-batch Hessians, not the concatenated batch's
    whole = hessian_vector_product(model, loss_fn, data, vector, bn_mode="train")
    assert not torch.allclose(_flat(products[0]), _flat(whole))


def test_auto_keeps_one_batch_graph_and_rebuilds_several():
    model, loss_fn, data = _setup("mlp", "mse")
    one = CurvatureOperator(ParameterFunction(model, loss_fn, data))
    several = CurvatureOperator(ParameterFunction(model, loss_fn, _split(data)))
    assert one.strategy == "double_backward"
    assert several.strategy == "double_backward_per_batch"


# -- the model is left alone --------------------------------------------------------------------


def test_products_leave_the_model_untouched():
    model, loss_fn, data = _setup("bn", "mse")
    model.train()
    before_params = [p.detach().clone() for p in model.parameters()]
    before_buffers = [b.clone() for b in model.buffers()]
    vector = _random_vector(model, 12)
    for bn_mode in ("eval", "train"):
        for strategy in STRATEGIES:
            hessian_vector_product(model, loss_fn, data, vector, bn_mode=bn_mode, strategy=strategy)
        gauss_newton_vector_product(model, loss_fn, data, vector, bn_mode=bn_mode)
        fisher_vector_product(model, loss_fn, data, vector, bn_mode=bn_mode)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for a, b in zip(before_params, model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(before_buffers, model.buffers(), strict=True):
        assert torch.equal(a, b)


# -- errors -------------------------------------------------------------------------------------


def test_invalid_arguments_raise_value_error():
    model, loss_fn, data = _setup("mlp", "mse")
    vector = _random_vector(model, 13)
    with pytest.raises(ValueError, match="bn_mode"):
        hessian_vector_product(model, loss_fn, data, vector, bn_mode="batch")
    with pytest.raises(ValueError, match="bn_mode"):
        gauss_newton_vector_product(model, loss_fn, data, vector, bn_mode="batch")
    with pytest.raises(ValueError, match="bn_mode"):
        fisher_vector_product(model, loss_fn, data, vector, bn_mode="batch")
    with pytest.raises(ValueError, match="strategy"):
        hessian_vector_product(model, loss_fn, data, vector, strategy="reverse_over_forward")
    with pytest.raises(ValueError, match="vector"):
        hessian_vector_product(model, loss_fn, data, vector[:-1])
    with pytest.raises(ValueError, match="vector"):
        hessian_vector_product(model, loss_fn, data, (vector[0].T, *vector[1:]))
    with pytest.raises(ValueError, match="parameters"):
        hessian_vector_product(model, loss_fn, data, vector, parameters=["nope"])
    function = ParameterFunction(model, loss_fn, data)
    with pytest.raises(ValueError, match="curvature"):
        CurvatureOperator(function, curvature="kfac")
    operator = CurvatureOperator(function)
    with pytest.raises(ValueError, match="shape"):
        operator.matvec_flat(torch.zeros(operator.dimension + 1, dtype=DTYPE))
    with pytest.raises(ValueError, match="shape"):
        operator.matmat_flat(torch.zeros(operator.dimension, dtype=DTYPE))
