"""Empty batches and random masks (issue 20, item 14).

* An empty batch carries no weight in the batch-size weighted mean: results with and without it
  are identical; data with no example at all is a ``ValueError``.
* With ``bn_mode="train"`` and dropout, the loss is one fixed function of the parameters (masks
  drawn from the seed on a forked RNG): equal seeds give equal results, the caller's global RNG
  is untouched, and the curvature operator is one fixed symmetric matrix, the dense Hessian of
  the loss with those masks (independent oracle: ``torch.autograd.functional.hessian`` with the
  RNG seeded the documented way).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.landscape import (
    CurvatureOperator,
    ParameterFunction,
    hessian_eigenvalues,
    hessian_trace,
    linear_interpolation,
    random_direction_slice_1d,
    sharpness,
    spectral_density,
)

DTYPE = torch.float64


def _dropout_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3), nn.BatchNorm1d(3)
    ).to(DTYPE)


def _data(seed: int = 1, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 4, generator=generator, dtype=DTYPE)
    return inputs, torch.randint(0, 3, (n,), generator=generator)


def _empty(batch):
    return batch[0][:0], batch[1][:0]


# -- empty batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["worst", "average"])
def test_sharpness_ignores_an_empty_batch(kind):
    model, batch = _dropout_model(), _data()
    alone = sharpness(model, F.cross_entropy, [batch], 0.1, kind=kind, n_samples=5)
    mixed = sharpness(model, F.cross_entropy, [batch, _empty(batch)], 0.1, kind=kind, n_samples=5)
    assert mixed.value == alone.value
    assert mixed.loss == alone.loss


def test_slice_ignores_an_empty_batch():
    model, batch = _dropout_model(), _data()
    first, second = batch[0][:10], batch[1][:10]
    rest = batch[0][10:], batch[1][10:]
    alone = random_direction_slice_1d(model, F.cross_entropy, [(first, second), rest], steps=5)
    mixed = random_direction_slice_1d(
        model, F.cross_entropy, [(first, second), _empty(batch), rest], steps=5
    )
    assert torch.isfinite(mixed.losses).all()
    torch.testing.assert_close(mixed.losses, alone.losses, rtol=0, atol=0)


def test_curvature_and_interpolation_ignore_an_empty_batch():
    model, batch = _dropout_model(), _data()
    data = [batch, _empty(batch)]
    a = hessian_eigenvalues(model, F.cross_entropy, [batch], seed=0).eigenvalues
    b = hessian_eigenvalues(model, F.cross_entropy, data, seed=0).eigenvalues
    torch.testing.assert_close(a, b)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = linear_interpolation(model, state, state, F.cross_entropy, data, steps=3)
    assert torch.isfinite(path.losses).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: sharpness(m, F.cross_entropy, d, 0.1),
        lambda m, d: random_direction_slice_1d(m, F.cross_entropy, d, steps=3),
        lambda m, d: hessian_trace(m, F.cross_entropy, d, samples=2, seed=0),
    ],
    ids=["sharpness", "slice", "trace"],
)
@pytest.mark.parametrize("how", ["one-empty-batch", "two-empty-batches"])
def test_no_examples_at_all_is_a_value_error(call, how):
    model, batch = _dropout_model(), _data()
    data = _empty(batch) if how == "one-empty-batch" else [_empty(batch), _empty(batch)]
    with pytest.raises(ValueError, match="no examples"):
        call(model, data)


# -- random masks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: sharpness(m, F.cross_entropy, d, 0.1, bn_mode="train").value,
        lambda m, d: sharpness(m, F.cross_entropy, d, 0.1, "average", bn_mode="train").value,
        lambda m, d: (
            random_direction_slice_1d(m, F.cross_entropy, d, steps=3, bn_mode="train").losses
        ),
        lambda m, d: (
            hessian_eigenvalues(m, F.cross_entropy, d, bn_mode="train", seed=3).eigenvalues
        ),
        lambda m, d: (
            hessian_trace(m, F.cross_entropy, d, samples=4, bn_mode="train", seed=3).values
        ),
        lambda m, d: (
            spectral_density(m, F.cross_entropy, d, lanczos_steps=5, bn_mode="train", seed=3).nodes
        ),
    ],
    ids=["worst", "average", "slice", "eigenvalues", "trace", "density"],
)
def test_train_mode_is_deterministic_and_leaves_the_global_rng_alone(call):
    model, batch = _dropout_model(), _data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = call(model, batch)
    assert torch.equal(torch.get_rng_state(), before), "the caller's global RNG was consumed"
    torch.manual_seed(456)  # a different global state must not change the result either
    second = call(model, batch)
    torch.testing.assert_close(torch.as_tensor(first), torch.as_tensor(second), rtol=0, atol=0)


def _dense_hessian_with_masks(model, batch, seed):
    """The oracle: the Hessian of the train-mode loss with the global RNG seeded by ``seed``
    before the forward pass (the documented convention for batch 0)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def loss(flat):
        parts = torch.split(flat, numels)
        state = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        state.update({n: b.clone() for n, b in buffers.items()})
        torch.manual_seed(seed)
        outputs = torch.func.functional_call(model.train(), state, (batch[0],))
        return F.cross_entropy(outputs, batch[1])

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with torch.random.fork_rng(devices=[]):
        return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize(
    "strategy", ["double_backward", "double_backward_per_batch", "forward_over_reverse"]
)
def test_train_mode_operator_is_the_hessian_with_fixed_masks(strategy):
    model, batch = _dropout_model(), _data()
    dense = _dense_hessian_with_masks(model, batch, seed=7)
    function = ParameterFunction(model, F.cross_entropy, batch, bn_mode="train", seed=7)
    op = CurvatureOperator(function, strategy=strategy)
    basis = torch.eye(op.dimension, dtype=DTYPE)
    columns = torch.stack([op.matvec_flat(e) for e in basis], dim=1)
    torch.testing.assert_close(columns, dense, rtol=1e-9, atol=1e-10)
    batched = op.matmat_flat(basis[:5])
    torch.testing.assert_close(batched, dense[:5], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("curvature", ["gauss_newton", "fisher"])
def test_train_mode_ggn_and_fisher_are_fixed_symmetric_matrices(curvature):
    model, batch = _dropout_model(), _data()
    function = ParameterFunction(model, F.cross_entropy, batch, bn_mode="train", seed=5)
    op = CurvatureOperator(function, curvature=curvature)
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, op.dimension, generator=generator, dtype=DTYPE)
    # symmetric (the two forward passes of a product use the same masks) and repeatable
    torch.testing.assert_close(u @ op.matvec_flat(v), v @ op.matvec_flat(u), rtol=1e-10, atol=0)
    torch.testing.assert_close(op.matvec_flat(v), op.matvec_flat(v), rtol=0, atol=0)


def test_batches_get_different_masks():
    """Batch i uses seed + i: two equal batches are two independent mask draws."""
    model, batch = _dropout_model(), _data()
    function = ParameterFunction(model, F.cross_entropy, [batch, batch], bn_mode="train", seed=0)
    first, second = (function.outputs(function.point(), b) for b in function.batches)
    assert not torch.equal(first, second)


def test_batchnorm_recompute_along_a_path_is_deterministic_and_keeps_the_global_rng():
    """The train-mode passes that recompute BatchNorm statistics run dropout on a forked,
    seeded RNG: equal results whatever the global state, which they leave untouched."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)
    ).to(DTYPE)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    end = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _data()
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        path = linear_interpolation(model, start, end, F.cross_entropy, batch, steps=4)
        assert torch.equal(torch.get_rng_state(), before)
        results.append(path.losses)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
