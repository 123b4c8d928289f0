"""ABS / ABSA: the schedule from a scripted eigenvalue sequence, accumulation as a large batch,
the adversarial share, exact resume, and the benchmark harness's hooks.

Oracles: the schedule worked out by hand from the rules in the module docstring (table below);
one SGD step on the concatenated large batch with the scaled learning rate (for a model
without BatchNorm the mean of equal-sized micro-batch mean gradients is the large batch's mean
gradient); :func:`torchvalley.attacks.fgsm` on the replaced rows; an uninterrupted run (resume);
the real Lanczos eigenvalue against a dense Hessian.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import torchvalley.schedules.abs as abs_module
from torchvalley.attacks import fgsm
from torchvalley.bench.runner import run_one
from torchvalley.bench.task import Task, TaskData
from torchvalley.bench.tasks._common import CLASSIFICATION
from torchvalley.schedules import AdaptiveBatchSchedule, AdaptiveBatchSize

# max_ratio 8, growth 2, duration 3, a = 0.2. Epoch: λ -> (r, lr_scale, a, reason):
#  1: 10   first measurement, reference 10                       (1, 1, 0.2,  None)
#  2: 8    > 10/2, stale 1                                        (1, 1, 0.2,  None)
#  3: 4.9  <= 5: grow, reference 4.9                              (2, 2, 0.1,  flatter)
#  4: 4    > 2.45, stale 1                                        (2, 2, 0.1,  None)
#  5: 3    stale 2                                                (2, 2, 0.1,  None)
#  6: 2.4  <= 2.45: grow, reference 2.4                           (4, 4, 0.05, flatter)
#  7: 2.5  stale 1;  8: 2.6 stale 2                               (4, 4, 0.05, None)
#  9: 2.0  > 1.2, stale 3 = duration: forced; r = 8 = max, a = 0  (8, 8, 0,    duration)
# 10: not measured any more                                       (8, 8, 0,    None)
_EIGENVALUES = (10.0, 8.0, 4.9, 4.0, 3.0, 2.4, 2.5, 2.6, 2.0, None)
_EXPECTED = (
    (1, 1.0, 0.2, None),
    (1, 1.0, 0.2, None),
    (2, 2.0, 0.1, "flatter"),
    (2, 2.0, 0.1, None),
    (2, 2.0, 0.1, None),
    (4, 4.0, 0.05, "flatter"),
    (4, 4.0, 0.05, None),
    (4, 4.0, 0.05, None),
    (8, 8.0, 0.0, "duration"),
    (8, 8.0, 0.0, None),
)


def test_scripted_eigenvalues_drive_exactly_the_expected_schedule():
    schedule = AdaptiveBatchSchedule(max_ratio=8, duration=3, adversarial_fraction=0.2)
    for eigenvalue, (ratio, lr_scale, fraction, reason) in zip(
        _EIGENVALUES, _EXPECTED, strict=True
    ):
        assert schedule.tracking == (ratio < 8 or reason == "duration")
        assert schedule.end_epoch(eigenvalue) == reason
        assert (schedule.ratio, schedule.lr_scale) == (ratio, lr_scale)
        assert schedule.adversarial_fraction == pytest.approx(fraction, abs=1e-15)
    assert not schedule.tracking


def test_adversarial_training_stops_at_the_given_epoch_and_lr_scaling_can_be_off():
    schedule = AdaptiveBatchSchedule(
        max_ratio=8, duration=3, adversarial_fraction=0.2, adversarial_epochs=5, scale_lr=False
    )
    fractions = []
    for eigenvalue in _EIGENVALUES:
        schedule.end_epoch(eigenvalue)
        fractions.append(schedule.adversarial_fraction)
    assert fractions[:4] == pytest.approx([0.2, 0.2, 0.1, 0.1])
    assert fractions[4:] == [0.0] * 6  # epoch 5 = epochs // 2 of a 10-epoch run
    assert schedule.ratio == 8 and schedule.lr_scale == 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"growth": 1.0}, "growth"),
        ({"max_ratio": 0}, "max_ratio"),
        ({"duration": 0}, "duration"),
        ({"max_ratio": 2, "initial_ratio": 4}, "initial_ratio"),
        ({"adversarial_fraction": 1.5}, "adversarial_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        AdaptiveBatchSize([torch.zeros(2, requires_grad=True)], lr=0.1, **kwargs)


def test_bases_that_need_a_closure_are_refused_and_model_aware_bases_get_the_model():
    with pytest.raises(ValueError, match="Invalid base_optimizer"):
        AdaptiveBatchSize([torch.zeros(2, requires_grad=True)], base_optimizer="sam", lr=0.1)
    model = nn.Sequential(nn.Linear(3, 2), nn.Bilinear(2, 2, 2))
    model.forward = lambda x: model[1](model[0](x), model[0](x))
    optimizer = AdaptiveBatchSize(model.parameters(), base_optimizer="fgsgd", model=model, lr=0.1)
    # FG-SGD saw the model: the Bilinear weight (not a Linear/Conv layer's) stays Euclidean.
    assert optimizer.base_optimizer._euclidean == {id(model[1].weight)}
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert optimizer.updates == 1


def _regression(seed=0, n=16, d=3):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    inputs = torch.randn(n, d, generator=generator, dtype=torch.float64)
    targets = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    return model, inputs, targets


def _script(monkeypatch, values):
    """Replace the Lanczos eigenvalue by a scripted sequence (and count the calls)."""
    calls = []

    def scripted(model, loss_fn, batch, *, max_iter, tol, seed):
        calls.append(seed)
        return values[len(calls) - 1]

    monkeypatch.setattr(abs_module, "top_hessian_eigenvalue", scripted)
    return calls


def test_accumulated_steps_equal_sgd_on_the_large_batch_with_scaled_lr(monkeypatch):
    _script(monkeypatch, [1.0, 0.4])  # second epoch: flatter -> r = 2, lr x2
    model, inputs, targets = _regression()
    reference = copy.deepcopy(model)
    loss_fn = nn.functional.mse_loss
    optimizer = AdaptiveBatchSize(model.parameters(), model=model, lr=0.05, momentum=0.9)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    micro = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 16, 4)]
    for epoch in range(2):  # r = 1: one SGD step per micro-batch
        for x, y in micro:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            sgd.zero_grad()
            loss_fn(reference(x), y).backward()
            sgd.step()
        optimizer.end_epoch(loss_fn, (inputs, targets))
        del epoch
    assert optimizer.schedule.ratio == 2 and optimizer.updates == 8
    for group in sgd.param_groups:
        group["lr"] = 0.05 * 2  # linear scaling
    for i in range(0, 4, 2):  # r = 2: one SGD step per pair of micro-batches
        for x, y in micro[i : i + 2]:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        sgd.zero_grad()
        large = (
            torch.cat([micro[i][0], micro[i + 1][0]]),
            torch.cat([micro[i][1], micro[i + 1][1]]),
        )
        loss_fn(reference(large[0]), large[1]).backward()
        sgd.step()
    assert optimizer.updates == 10
    assert optimizer.param_groups[0]["lr"] == 0.05  # the group keeps the unscaled lr
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_adversarial_share_of_the_batch_is_fgsm_on_the_first_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    inputs, targets = torch.randn(20, 5), torch.randint(0, 3, (20,))
    loss_fn = nn.functional.cross_entropy
    optimizer = AdaptiveBatchSize(
        model.parameters(), model=model, lr=0.1, adversarial_fraction=0.2, epsilon=0.1
    )
    running = model[1].running_mean.clone()
    batch, labels = optimizer.prepare_batch(inputs, targets, loss_fn)
    expected = fgsm(model, loss_fn, inputs[:4], targets[:4], 0.1, bounds="batch")
    assert torch.equal(batch[:4], expected)
    assert torch.equal(batch[4:], inputs[4:]) and torch.equal(labels, targets)
    assert torch.equal(model[1].running_mean, running) and model.training
    assert optimizer.adversarial_examples == 4
    optimizer.schedule.adversarial_fraction = 1 / 20  # a <= 1/n: nothing replaced (reference)
    batch, _ = optimizer.prepare_batch(inputs, targets, loss_fn)
    assert batch is inputs


def _train(optimizer, model, micro, steps, loss_fn):
    for i in range(steps):
        x, y = micro[i % len(micro)]
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def test_resume_mid_schedule_and_mid_accumulation_is_exact(monkeypatch):
    values = [1.0, 0.4, 0.3, 0.15, 0.1]
    _script(monkeypatch, values)
    model, inputs, targets = _regression(seed=1)
    loss_fn = nn.functional.mse_loss
    micro = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 16, 4)]
    optimizer = AdaptiveBatchSize(
        model.parameters(), model=model, lr=0.05, momentum=0.9, max_ratio=8, duration=2
    )
    for _ in range(3):  # three epochs: r = 1 -> 2 (epoch 2) -> stays (epoch 3: stale 1)
        _train(optimizer, model, micro, 4, loss_fn)
        optimizer.end_epoch(loss_fn, (inputs, targets))
    _train(optimizer, model, micro, 1, loss_fn)  # one micro-batch into an accumulation
    assert optimizer.schedule.ratio == 2 and optimizer._micro_batches == 1
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    twin = copy.deepcopy(model)
    # The uninterrupted run.
    _train(optimizer, model, micro, 3, loss_fn)
    optimizer.end_epoch(loss_fn, (inputs, targets))
    _train(optimizer, model, micro, 4, loss_fn)
    # The resumed one.
    _script(monkeypatch, values[3:])
    buffer.seek(0)
    resumed = AdaptiveBatchSize(
        twin.parameters(), model=twin, lr=0.05, momentum=0.9, max_ratio=8, duration=2
    )
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _train(resumed, twin, micro, 3, loss_fn)
    resumed.end_epoch(loss_fn, (inputs, targets))
    _train(resumed, twin, micro, 4, loss_fn)
    assert resumed.schedule == optimizer.schedule
    assert resumed.schedule.ratio == 4 and resumed.updates == optimizer.updates
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_foreign_state_dict_is_refused():
    p = torch.zeros(2, requires_grad=True)
    sgd = torch.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="not saved by AdaptiveBatchSize"):
        AdaptiveBatchSize([p], lr=0.1).load_state_dict(sgd.state_dict())


def test_the_eigenvalue_is_lanczos_lambda_max_of_the_dense_hessian():
    model, inputs, targets = _regression(seed=2)
    loss_fn = nn.functional.mse_loss
    value = abs_module.top_hessian_eigenvalue(
        model, loss_fn, (inputs, targets), max_iter=40, tol=1e-8, seed=0
    )
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vector):
        pieces, start = [], 0
        for shape in shapes:
            size = int(torch.Size(shape).numel())
            pieces.append(vector[start : start + size].reshape(shape))
            start += size
        names = [name for name, _ in model.named_parameters()]
        outputs = torch.func.functional_call(model, dict(zip(names, pieces, strict=True)), inputs)
        return loss_fn(outputs, targets)

    dense = torch.autograd.functional.hessian(loss_of, flat)
    assert value == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-6)


# ------------------------------------------------------------------------- the harness
def _toy_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(48, 4, generator=generator)
    targets = (inputs[:, 0] > 0).long()
    data = TaskData(train=(inputs[:40], targets[:40]), test=(inputs[40:], targets[40:]))
    return Task(
        name="abs_toy",
        description="toy",
        model_name="MLP 4-8-2",
        build_model=lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        load_data=lambda seed: data,
        **CLASSIFICATION,
        target=0.99,
        batch_size=4,
        default_epochs=4,
    )


def test_the_harness_runs_absa_with_its_hooks(monkeypatch):
    """10 micro-batches per epoch; eigenvalues 1, 0.4 (grow to 2), 0.3, 0.1 (grow to 4).
    Base steps per epoch: 10, 10, 5, 5 -> cumulative 10, 20, 25, 30."""
    calls = _script(monkeypatch, [1.0, 0.4, 0.3, 0.1])
    result = run_one(
        _toy_task(),
        "absa:lr=0.05,momentum=0.9,max_ratio=8,epsilon=0.05",
        seed=0,
        progress=False,
        raise_errors=True,
    )
    assert result.status == "finished" and result.steps == 40
    assert calls == [0, 1, 2, 3]  # one eigenvalue per epoch, seed + epoch
    measured = {(epoch, name): value for epoch, name, value in result.measurements}
    assert [measured[(e, "abs_ratio")] for e in (1, 2, 3, 4)] == [1.0, 2.0, 2.0, 4.0]
    assert [measured[(e, "abs_batch_size")] for e in (1, 2, 3, 4)] == [4.0, 8.0, 8.0, 16.0]
    assert [measured[(e, "abs_updates")] for e in (1, 2, 3, 4)] == [10.0, 20.0, 25.0, 30.0]
    assert [measured[(e, "abs_lambda_max")] for e in (1, 2, 3, 4)] == [1.0, 0.4, 0.3, 0.1]
    # ABSA's 20% of a batch of 4 is 0 rows (a <= 1/n): HessianFlow's rule, no FGSM here.
    assert measured[(4, "abs_adversarial_examples")] == 0.0
    _script(monkeypatch, [1.0])
    result = run_one(
        _toy_task(),
        "absa:lr=0.05,momentum=0.9,max_ratio=8,adversarial_fraction=0.5",
        seed=0,
        epochs=1,
        progress=False,
        raise_errors=True,
    )
    measured = {(epoch, name): value for epoch, name, value in result.measurements}
    assert measured[(1, "abs_adversarial_examples")] == 20.0  # 2 of 4 rows, 10 batches
