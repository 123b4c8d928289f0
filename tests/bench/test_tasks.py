"""The built-in benchmark tasks: registry entries, data, models, losses and metrics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from torchvalley.bench import builtin_tasks
from torchvalley.bench.builtin_tasks import (
    binary_accuracy,
    classification_accuracy,
    load_digits_data,
    load_mnist1d,
    load_quadratic,
    load_spirals,
    quadratic_problem,
    two_spirals,
)
from torchvalley.bench.tasks import Task, TaskData, get_task, list_tasks

BUILTIN = ("digits_cnn", "digits_mlp", "mnist1d_cnn", "mnist1d_mlp", "quadratic", "spirals")
CLASSIFICATION = ("digits_cnn", "digits_mlp", "mnist1d_cnn", "mnist1d_mlp")
LOADERS = (load_digits_data, load_mnist1d, load_quadratic, load_spirals)

# (train inputs, test inputs) shapes of each task's default data set.
SHAPES = {
    "mnist1d_mlp": ((4000, 40), (1000, 40)),
    "mnist1d_cnn": ((4000, 40), (1000, 40)),
    "digits_mlp": ((1437, 64), (360, 64)),
    "digits_cnn": ((1437, 64), (360, 64)),
    "spirals": ((500, 2), (1000, 2)),
    "quadratic": ((2000, 50), (50, 50)),
}


def _snapshot_global_rngs() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _assert_same_global_rngs(before: tuple, after: tuple) -> None:
    assert before[0] == after[0]
    numpy_before, numpy_after = before[1], after[1]
    assert numpy_before[0] == numpy_after[0]
    np.testing.assert_array_equal(numpy_before[1], numpy_after[1])
    assert numpy_before[2:] == numpy_after[2:]
    assert torch.equal(before[2], after[2])


def _perturb_global_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _assert_data_equal(first: TaskData, second: TaskData) -> None:
    for split_a, split_b in ((first.train, second.train), (first.test, second.test)):
        for tensor_a, tensor_b in zip(split_a, split_b, strict=True):
            assert tensor_a.dtype == tensor_b.dtype
            assert torch.equal(tensor_a, tensor_b)


# --------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_task_is_registered_with_sane_fields(name: str) -> None:
    assert name in list_tasks()
    task = get_task(name)
    assert isinstance(task, Task)
    assert task.name == name
    for text in (task.description, task.model_name, task.reference):
        assert isinstance(text, str) and text.strip()
    for function in (task.build_model, task.load_data, task.loss_fn, task.metric_fn):
        assert callable(function)
    assert task.metric_name == ("excess_loss" if name == "quadratic" else "accuracy")
    assert task.higher_is_better is (name != "quadratic")
    assert task.batch_size > 0 and task.default_epochs > 0
    assert isinstance(task.default_data_seed, int)
    if task.higher_is_better:
        assert 0.0 < task.target < 1.0
        assert task.reached(task.target) and not task.reached(task.target - 0.01)
    else:
        assert task.target > 0.0
        assert task.reached(task.target) and not task.reached(task.target * 1.01)


def test_task_constants() -> None:
    assert get_task("mnist1d_cnn").default_data_seed == 42
    assert get_task("mnist1d_mlp").default_data_seed == 42
    assert get_task("mnist1d_cnn").batch_size == 100
    assert get_task("spirals").batch_size == 25
    assert get_task("quadratic").batch_size == 50


# --------------------------------------------------------------------------------------------
# Data: shapes, dtypes, determinism, global RNG
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_data_shapes_and_dtypes(name: str) -> None:
    task = get_task(name)
    data = task.data()
    (train_x, train_y), (test_x, test_y) = data.train, data.test
    assert (tuple(train_x.shape), tuple(test_x.shape)) == SHAPES[name]
    assert train_y.shape == (len(train_x),) and test_y.shape == (len(test_x),)
    assert train_x.dtype == test_x.dtype == torch.float32
    assert torch.isfinite(train_x).all() and torch.isfinite(test_x).all()
    if name in CLASSIFICATION:
        assert train_y.dtype == test_y.dtype == torch.int64
        for labels in (train_y, test_y):
            counts = torch.bincount(labels, minlength=10)
            assert len(counts) == 10
            # Roughly balanced: every class within 25 % of len / 10.
            assert counts.min() >= 0.75 * len(labels) / 10
            assert counts.max() <= 1.25 * len(labels) / 10
    elif name == "spirals":
        assert train_y.dtype == test_y.dtype == torch.float32
        assert torch.equal(torch.unique(train_y), torch.tensor([0.0, 1.0]))
        assert int(train_y.sum()) == 250 and int(test_y.sum()) == 500
    else:
        assert torch.equal(train_y, torch.zeros(2000)) and torch.equal(test_y, torch.zeros(50))


@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
def test_data_is_deterministic_and_leaves_global_rng_untouched(loader) -> None:
    _perturb_global_rngs(1)
    before = _snapshot_global_rngs()
    first = loader(5)
    _assert_same_global_rngs(before, _snapshot_global_rngs())
    _perturb_global_rngs(2)
    second = loader(5)
    _assert_data_equal(first, second)
    other = loader(6)
    assert not torch.equal(first.train[0], other.train[0])


def test_mnist1d_is_the_canonical_generated_data_set() -> None:
    # Pinned from mnist1d.data.make_dataset(get_dataset_args()) (seed 42, the published set).
    data = get_task("mnist1d_cnn").data()
    expected_row = [-0.33200568, -0.47191036, -0.77869707, -1.00974083, -0.88235259, 0.10393481]
    torch.testing.assert_close(data.train[0][0, :6], torch.tensor(expected_row))
    torch.testing.assert_close(
        data.test[0][-1, -3:], torch.tensor([0.65987563, 0.87773436, 1.1931518])
    )
    assert data.train[1][:10].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]
    assert data.test[1][:10].tolist() == [2, 6, 3, 9, 4, 3, 1, 9, 5, 2]
    # Standardised signals: the whole data set has mean 0 and standard deviation 1.
    everything = torch.cat([data.train[0], data.test[0]]).double()
    assert abs(everything.mean().item()) < 1e-5
    assert abs(everything.std(correction=0).item() - 1.0) < 1e-5
    mlp_data = get_task("mnist1d_mlp").data()
    _assert_data_equal(data, mlp_data)


def test_digits_split_is_stratified_and_scaled() -> None:
    from sklearn.datasets import load_digits

    data = get_task("digits_cnn").data()
    (train_x, train_y), (test_x, test_y) = data.train, data.test
    assert train_x.min() >= 0.0 and train_x.max() <= 1.0 and train_x.max() == 1.0
    digits = load_digits()
    # The split is a partition of the 1797 images (as multisets of rows and labels).
    rows = torch.cat([train_x, test_x]) * 16
    expected = torch.as_tensor(digits.data, dtype=torch.float32)
    assert torch.equal(rows.sum(0), expected.sum(0))
    labels = torch.cat([train_y, test_y])
    assert torch.equal(torch.bincount(labels), torch.bincount(torch.as_tensor(digits.target)))
    # Stratified: per-class test share within one image of 20 %.
    for label in range(10):
        total = int((labels == label).sum())
        assert abs(int((test_y == label).sum()) - 0.2 * total) <= 1


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_model_seed_determinism_and_global_rng(name: str) -> None:
    task = get_task(name)
    _perturb_global_rngs(321)
    before = _snapshot_global_rngs()
    first, again, other = task.model(0), task.model(0), task.model(1)
    _assert_same_global_rngs(before, _snapshot_global_rngs())
    state, state_again, state_other = first.state_dict(), again.state_dict(), other.state_dict()
    assert state.keys() == state_again.keys() == state_other.keys()
    assert all(torch.equal(state[key], state_again[key]) for key in state)
    assert any(not torch.equal(state[key], state_other[key]) for key in state)


@pytest.mark.parametrize("name", BUILTIN)
def test_forward_loss_backward_on_a_batch(name: str) -> None:
    task = get_task(name)
    inputs, targets = task.data().train
    batch_x, batch_y = inputs[: task.batch_size], targets[: task.batch_size]
    model = task.model(0)
    outputs = model(batch_x)
    if name in CLASSIFICATION:
        assert outputs.shape == (task.batch_size, 10)
    elif name == "spirals":
        assert outputs.reshape(-1).shape == (task.batch_size,)
    else:
        assert outputs.shape == (task.batch_size, 50)
    loss = task.loss_fn(outputs, batch_y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for parameter in model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    metric = task.metric_fn(outputs.detach(), batch_y)
    assert isinstance(metric, float) and math.isfinite(metric)


def test_mnist1d_cnn_has_batchnorm() -> None:
    model = get_task("mnist1d_cnn").model(0)
    assert any(isinstance(module, torch.nn.BatchNorm1d) for module in model.modules())


def test_short_training_run_learns_digits() -> None:
    task = get_task("digits_mlp")
    (train_x, train_y), (test_x, test_y) = task.data().train, task.data().test
    model = task.model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(train_x), task.batch_size):
            index = order[start : start + task.batch_size]
            optimizer.zero_grad()
            task.loss_fn(model(train_x[index]), train_y[index]).backward()
            optimizer.step()
    with torch.no_grad():
        assert task.metric_fn(model(test_x), test_y) > 0.8


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_classification_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 3.0], [1.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([0, 2, 0, 1])
    assert classification_accuracy(logits, targets) == 0.5
    assert get_task("mnist1d_cnn").metric_fn(logits, targets) == 0.5


def test_binary_accuracy_is_round_of_sigmoid() -> None:
    logits = torch.tensor([-3.0, -0.1, 0.2, 5.0, 1.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    expected = (torch.round(torch.sigmoid(logits)) == targets).float().mean().item()
    assert binary_accuracy(logits, targets) == pytest.approx(expected) == pytest.approx(0.6)
    assert binary_accuracy(logits[:, None], targets) == pytest.approx(0.6)


def test_spirals_loss_is_sigmoid_plus_bce() -> None:
    logits = torch.tensor([-3.0, -0.1, 0.2, 5.0, 1.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    loss_fn = get_task("spirals").loss_fn
    expected = torch.nn.BCELoss()(torch.sigmoid(logits), targets)
    torch.testing.assert_close(loss_fn(logits, targets), expected)
    torch.testing.assert_close(loss_fn(logits[:, None], targets), expected)


# --------------------------------------------------------------------------------------------
# Two spirals
# --------------------------------------------------------------------------------------------


def test_two_spirals_noiseless_points_lie_on_the_analytic_spiral() -> None:
    turns, p, a = 4, 0.5, 2.0
    points, labels = two_spirals(401, noise=0.0, rng=np.random.default_rng(3))
    half = 200
    assert points.shape == (2 * half, 2) and labels.shape == (2 * half,)
    np.testing.assert_array_equal(labels, np.repeat([0.0, 1.0], half))
    arm, other_arm = points[:half], points[half:]
    np.testing.assert_array_equal(other_arm, -arm)
    # r = a t^p with t ~ U[0, 1) drawn first from the generator, and angle = 2π turns t^p.
    t = np.random.default_rng(3).random((half, 1))[:, 0]
    radius = np.hypot(arm[:, 0], arm[:, 1])
    np.testing.assert_allclose(radius, a * t**p, rtol=1e-12, atol=1e-12)
    assert radius.max() <= a
    angle = 2 * np.pi * turns * radius / a
    np.testing.assert_allclose(arm[:, 0], radius * np.cos(angle), atol=1e-12)
    np.testing.assert_allclose(arm[:, 1], radius * np.sin(angle), atol=1e-12)


def test_two_spirals_noise_is_additive_gaussian() -> None:
    clean, _ = two_spirals(20000, noise=0.0, rng=np.random.default_rng(4))
    noisy, _ = two_spirals(20000, noise=0.05, rng=np.random.default_rng(4))
    residual = noisy - clean
    assert abs(residual.mean()) < 0.002
    assert residual.std() == pytest.approx(0.05, rel=0.03)


def test_two_spirals_parameters() -> None:
    points, _ = two_spirals(1000, turns=1, noise=0.0, a=3.0, p=1.0, rng=np.random.default_rng(0))
    radius = np.hypot(points[:, 0], points[:, 1])
    assert radius.max() <= 3.0 and radius.max() > 2.9
    angle = np.arctan2(points[:500, 1], points[:500, 0])
    expected = np.angle(np.exp(1j * 2 * np.pi * radius[:500] / 3.0))
    np.testing.assert_allclose(angle, expected, atol=1e-9)


def test_spirals_train_and_test_are_independent_draws() -> None:
    data = get_task("spirals").data()
    train_x, test_x = data.train[0].double(), data.test[0].double()
    assert torch.cdist(train_x, test_x).min() > 0
    # Noise 0.02 per coordinate: every point stays within a few noise widths of radius 2.
    assert torch.linalg.vector_norm(torch.cat([train_x, test_x]), dim=1).max() < 2.2
    # Shuffled: the classes are mixed along the data order.
    assert 0.3 < data.train[1][:100].mean().item() < 0.7


# --------------------------------------------------------------------------------------------
# Quadratic
# --------------------------------------------------------------------------------------------


def test_quadratic_problem_structure() -> None:
    hessian, theta_star, eigenvalues, q = quadratic_problem(0)
    assert hessian.dtype == torch.float64 and hessian.shape == (50, 50)
    torch.testing.assert_close(q.T @ q, torch.eye(50, dtype=torch.float64))
    torch.testing.assert_close(hessian, hessian.T, rtol=0, atol=0)
    torch.testing.assert_close(hessian @ q, q * eigenvalues)
    expected = 10.0 ** torch.linspace(-2, 0, 50, dtype=torch.float64)
    torch.testing.assert_close(eigenvalues, expected)
    torch.testing.assert_close(torch.linalg.eigvalsh(hessian), expected)
    info = get_task("quadratic").info
    torch.testing.assert_close(torch.tensor(info["hessian_eigenvalues"]).double(), expected)
    torch.testing.assert_close(torch.tensor(info["minimizer"]).double(), theta_star)
    assert not torch.equal(quadratic_problem(1)[0], hessian)
    assert quadratic_problem(0, dim=7)[0].shape == (7, 7)


def test_quadratic_hessian_of_the_training_loss_is_exact() -> None:
    task = get_task("quadratic")
    hessian = quadratic_problem(task.info["problem_seed"])[0]
    inputs, targets = task.data().train
    batch = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(1))[:50]
    model = task.model(0)

    def loss_at(theta: torch.Tensor) -> torch.Tensor:
        outputs = torch.func.functional_call(model, {"theta": theta}, (inputs[batch],))
        return task.loss_fn(outputs, targets[batch])

    # Reverse-over-reverse (torch.func.hessian's forward AD warns under -W error).
    computed = torch.func.jacrev(torch.func.jacrev(loss_at))(model.theta.detach().clone())
    torch.testing.assert_close(computed.double(), hessian, rtol=0, atol=1e-5)
    eigenvalues = torch.linalg.eigvalsh(computed.double())
    expected = torch.tensor(task.info["hessian_eigenvalues"], dtype=torch.float64)
    torch.testing.assert_close(eigenvalues, expected, rtol=0, atol=1e-5)


def test_quadratic_training_data_is_centred_on_the_minimizer() -> None:
    task = get_task("quadratic")
    theta_star = torch.tensor(task.info["minimizer"], dtype=torch.float32)
    inputs, targets = task.data().train
    torch.testing.assert_close(inputs.mean(0), theta_star, rtol=0, atol=1e-5)
    # Unit-variance noise around θ*.
    variances = inputs.double().var(0)
    assert abs(variances.mean().item() - 1.0) < 0.05
    # The full training loss has zero gradient at θ*.
    model = task.model(0)
    with torch.no_grad():
        model.theta.copy_(theta_star)
    task.loss_fn(model(inputs), targets).backward()
    assert model.theta.grad.abs().max() < 1e-4
    # Other data seeds change the noise only; the test set is the same.
    other = task.load_data(1)
    assert not torch.equal(other.train[0], inputs)
    assert torch.equal(other.test[0], task.data().test[0])


def test_quadratic_metric_is_the_exact_excess_loss() -> None:
    task = get_task("quadratic")
    hessian, theta_star = quadratic_problem(task.info["problem_seed"])[:2]
    test_x, test_y = task.data().test
    model = task.model(0)
    with torch.no_grad():
        model.theta.copy_(theta_star.float())
        assert task.metric_fn(model(test_x), test_y) == 0.0
        theta = torch.randn(50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        model.theta.copy_(theta.float())
        residual = model.theta.double() - theta_star.float().double()
        expected = 0.5 * residual @ hessian @ residual
        assert task.metric_fn(model(test_x), test_y) == pytest.approx(expected.item(), rel=1e-5)
        # On the test set the loss and the metric agree.
        assert task.loss_fn(model(test_x), test_y).item() == pytest.approx(expected.item(), 1e-5)


def test_quadratic_sgd_reduces_the_excess_loss() -> None:
    task = get_task("quadratic")
    (train_x, train_y), (test_x, test_y) = task.data().train, task.data().test
    model = task.model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with torch.no_grad():
        start = task.metric_fn(model(test_x), test_y)
    for begin in range(0, len(train_x), task.batch_size):
        optimizer.zero_grad()
        end = begin + task.batch_size
        task.loss_fn(model(train_x[begin:end]), train_y[begin:end]).backward()
        optimizer.step()
    with torch.no_grad():
        assert task.metric_fn(model(test_x), test_y) < 0.2 * start


def test_public_names_are_exported() -> None:
    for name in builtin_tasks.__all__:
        assert hasattr(builtin_tasks, name)
