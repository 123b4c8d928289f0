"""The benchmark runner against hand-written training loops, and sweep resumability."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.nn import functional

import torchvalley.registry
from torchvalley.bench import tasks as tasks_module
from torchvalley.bench.runner import global_seed, run_one, run_sweep, shuffle_seed, warm_up
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.bench.store import Store
from torchvalley.bench.tasks import Task, TaskData, register_task
from torchvalley.registry import Capabilities, Hyperparameter, register_optimizer

N_TRAIN = 70  # with batch size 16: 4 full batches and one of 6, so 5 steps per epoch
BATCH_SIZE = 16
STEPS_PER_EPOCH = 5
EPOCHS = 3


def _blobs(data_seed: int) -> TaskData:
    generator = torch.Generator().manual_seed(1000 + data_seed)
    labels = torch.randint(0, 2, (N_TRAIN + 32,), generator=generator)
    inputs = torch.randn(N_TRAIN + 32, 2, generator=generator) * 0.8
    inputs += (2.0 * labels.float() - 1.0)[:, None]
    return TaskData(
        train=(inputs[:N_TRAIN], labels[:N_TRAIN]), test=(inputs[N_TRAIN:], labels[N_TRAIN:])
    )


def _line(data_seed: int) -> TaskData:
    generator = torch.Generator().manual_seed(2000 + data_seed)
    inputs = torch.randn(N_TRAIN + 32, 3, generator=generator)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1
    return TaskData(
        train=(inputs[:N_TRAIN], targets[:N_TRAIN]), test=(inputs[N_TRAIN:], targets[N_TRAIN:])
    )


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return (outputs.argmax(dim=1) == targets).float().mean().item()


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return functional.mse_loss(outputs, targets).item()


class _CountingBuilder:
    """A ``build_model`` that counts how many models were built (i.e. runs executed)."""

    def __init__(self, build):
        self.build = build
        self.calls = 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        return self.build()


def _make_tasks() -> tuple[Task, Task]:
    blobs = Task(
        name="test_runner_blobs",
        description="two Gaussian blobs",
        model_name="linear 2 -> 2",
        build_model=_CountingBuilder(lambda: nn.Linear(2, 2)),
        load_data=_blobs,
        loss_fn=functional.cross_entropy,
        metric_name="accuracy",
        metric_fn=_accuracy,
        higher_is_better=True,
        target=0.8,
        batch_size=BATCH_SIZE,
        default_epochs=EPOCHS,
    )
    line = Task(
        name="test_runner_line",
        description="noise-free linear regression",
        model_name="linear 3 -> 1",
        build_model=_CountingBuilder(lambda: nn.Linear(3, 1)),
        load_data=_line,
        loss_fn=functional.mse_loss,
        metric_name="mse",
        metric_fn=_mse,
        higher_is_better=False,
        target=1e-3,
        batch_size=BATCH_SIZE,
        default_epochs=EPOCHS,
    )
    return blobs, line


@pytest.fixture
def toy_tasks():
    blobs, line = _make_tasks()
    register_task(blobs)
    register_task(line)
    yield blobs, line
    for task in (blobs, line):
        tasks_module._TASKS.pop(task.name, None)
    tasks_module._cached_data.cache_clear()


class TwoPassSGD(torch.optim.Optimizer):
    """SAM-like: gradient at ``p + rho * g / |g|`` (a second closure call), then an SGD step."""

    def __init__(self, params, lr: float = 0.1, rho: float = 0.05) -> None:
        super().__init__(params, {"lr": lr, "rho": rho})

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            loss = closure()
        params = [p for group in self.param_groups for p in group["params"]]
        norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
        perturbations = []
        for group in self.param_groups:
            for p in group["params"]:
                perturbation = group["rho"] * p.grad / norm
                p.add_(perturbation)
                perturbations.append(perturbation)
        with torch.enable_grad():
            closure()
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(perturbations.pop(0))
                p.sub_(group["lr"] * p.grad)
        return loss


class BrokenOptimizer(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("boom from the optimizer")


@pytest.fixture
def toy_optimizers():
    names = ("test_two_pass", "test_broken")
    register_optimizer(
        "test_two_pass",
        TwoPassSGD,
        capabilities=Capabilities(needs_closure=True, passes_per_step=2, separable=False),
        hyperparameters=(
            Hyperparameter("lr", "non_negative", 0.1),
            Hyperparameter("rho", "non_negative", 0.05),
        ),
        summary="two closure calls per step (test only)",
        family="test",
        replace=True,
    )
    register_optimizer(
        "test_broken",
        BrokenOptimizer,
        capabilities=Capabilities(),
        hyperparameters=(Hyperparameter("lr", "non_negative", 0.1),),
        summary="raises in step (test only)",
        family="test",
        replace=True,
    )
    yield
    for name in names:
        torchvalley.registry._REGISTRY.pop(name, None)


def _evaluate(model, loss_fn, metric_fn, inputs, targets):
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
        loss, metric = float(loss_fn(outputs, targets)), float(metric_fn(outputs, targets))
    model.train()
    return loss, metric


def _reference_history(task: Task, seed: int, step_fn) -> list[dict[str, float]]:
    """Per-epoch numbers from an independent loop; ``step_fn(model, x, y) -> first loss``."""
    train_inputs, train_targets = task.load_data(0).train
    test_inputs, test_targets = task.load_data(0).test
    model = task.model(seed)
    generator = torch.Generator().manual_seed(shuffle_seed(seed))
    step = step_fn(model)
    history = []
    for epoch in range(EPOCHS + 1):
        losses = []
        if epoch > 0:
            order = torch.randperm(N_TRAIN, generator=generator)
            for start in range(0, N_TRAIN, BATCH_SIZE):
                index = order[start : start + BATCH_SIZE]
                losses.append(step(train_inputs[index], train_targets[index]))
        train_loss, train_metric = _evaluate(
            model, task.loss_fn, task.metric_fn, train_inputs, train_targets
        )
        test_loss, test_metric = _evaluate(
            model, task.loss_fn, task.metric_fn, test_inputs, test_targets
        )
        history.append(
            {
                "train_loss": sum(losses) / len(losses) if losses else train_loss,
                "train_metric": train_metric,
                "test_loss": test_loss,
                "test_metric": test_metric,
            }
        )
    return history


def _sgd_step(task: Task, lr: float, momentum: float):
    def make(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

        def step(inputs, targets):
            optimizer.zero_grad()
            loss = task.loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            return loss.item()

        return step

    return make


def _two_pass_step(task: Task, lr: float, rho: float):
    def make(model):
        params = list(model.parameters())

        def step(inputs, targets):
            first = task.loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(first, params)
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            perturbations = [rho * g / norm for g in grads]
            with torch.no_grad():
                for p, e in zip(params, perturbations, strict=True):
                    p.add_(e)
            grads = torch.autograd.grad(task.loss_fn(model(inputs), targets), params)
            with torch.no_grad():
                for p, e, g in zip(params, perturbations, grads, strict=True):
                    p.sub_(e)
                    p.sub_(lr * g)
            return first.item()

        return step

    return make


def _assert_history_matches(records, reference) -> None:
    assert len(records) == len(reference) == EPOCHS + 1
    for record, expected in zip(records, reference, strict=True):
        got = {key: getattr(record, key) for key in expected}
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), record.epoch


def _store_epochs_equal_history(store: Store, result) -> None:
    rows = store.epochs(result.run_id)
    assert [row["epoch"] for row in rows] == list(range(EPOCHS + 1))
    for row, record in zip(rows, result.history, strict=True):
        assert row == {"run_id": result.run_id, **dataclasses.asdict(record)}


def test_recorded_epochs_match_a_hand_written_sgd_loop(toy_tasks):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        result = run_one(blobs, "sgd:lr=0.2,momentum=0.5", seed=7, store=store, progress=False)
        assert result.status == "finished"
        _assert_history_matches(
            result.history, _reference_history(blobs, 7, _sgd_step(blobs, 0.2, 0.5))
        )
        _store_epochs_equal_history(store, result)
        (run,) = store.runs()
        assert run["status"] == "finished"
        assert run["steps"] == run["forward_passes"] == run["backward_passes"] == 15
        assert run["test_metric"] == result.history[-1].test_metric
        assert run["best_test_metric"] == max(record.test_metric for record in result.history)
        assert run["train_loss"] == result.history[-1].train_loss
        assert run["train_time_s"] == pytest.approx(result.history[-1].train_time_s)
        assert run["wall_time_s"] >= run["train_time_s"] > 0
    for epoch, record in enumerate(result.history):
        assert record.steps == record.forward_passes == record.backward_passes
        assert record.steps == STEPS_PER_EPOCH * epoch
    times = [record.train_time_s for record in result.history]
    assert times[0] == 0.0 and times == sorted(times)


def test_two_pass_optimizer_counts_its_closure_calls(toy_tasks, toy_optimizers):
    blobs, _ = toy_tasks
    result = run_one(blobs, "test_two_pass:lr=0.3,rho=0.1", seed=1, progress=False)
    assert result.steps == EPOCHS * STEPS_PER_EPOCH
    assert result.forward_passes == result.backward_passes == 2 * result.steps
    for record in result.history:
        assert record.forward_passes == record.backward_passes == 2 * record.steps
    # The recorded training loss is the first closure evaluation's, not the perturbed one's.
    _assert_history_matches(
        result.history, _reference_history(blobs, 1, _two_pass_step(blobs, 0.3, 0.1))
    )


def test_time_to_target(toy_tasks):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        reached = run_one(blobs, "sgd:lr=0.2", seed=0, store=store, progress=False)
        first = next(r for r in reached.history if blobs.reached(r.test_metric))
        assert first.epoch > 0  # the untrained model misses the target, so this is a real check
        assert reached.epoch_to_target == first.epoch
        assert reached.time_to_target_s == first.train_time_s
        assert reached.steps_to_target == first.steps

        unreachable = dataclasses.replace(blobs, name="test_runner_blobs_hard", target=1.01)
        missed = run_one(unreachable, "sgd:lr=0.2", seed=0, store=store, progress=False)
        assert missed.status == "finished"
        assert (missed.time_to_target_s, missed.steps_to_target, missed.epoch_to_target) == (
            None,
            None,
            None,
        )
        # An unregistered Task object gets its own data and the same numbers.
        assert [r.test_metric for r in missed.history] == [r.test_metric for r in reached.history]
        by_task = {run["task"]: run for run in store.runs()}
        assert by_task[blobs.name]["time_to_target_s"] == first.train_time_s
        assert by_task[blobs.name]["epoch_to_target"] == first.epoch
        hard = by_task[unreachable.name]
        assert (hard["time_to_target_s"], hard["steps_to_target"], hard["epoch_to_target"]) == (
            None,
            None,
            None,
        )


def test_huge_learning_rate_diverges(toy_tasks):
    _, line = toy_tasks
    with Store(":memory:") as store:
        result = run_one(line, "sgd:lr=1e12", seed=0, store=store, progress=False)
        assert result.status == "diverged"
        assert not math.isfinite(result.train_loss)
        assert result.test_metric is None
        assert result.steps < EPOCHS * STEPS_PER_EPOCH
        (run,) = store.runs()
        assert run["status"] == "diverged"
        assert run["steps"] == result.steps
        # Only the epochs that completed are recorded (here: the evaluation before training).
        assert [row["epoch"] for row in store.epochs(run["id"])] == [0]
        assert (
            store.begin_run(
                task=line.name,
                optimizer="sgd",
                spec_label=result.spec_label,
                hyperparameters={},
                seed=0,
                data_seed=0,
                epochs=EPOCHS,
                batch_size=BATCH_SIZE,
                metric_name="mse",
            )
            is None
        )  # diverged counts as done


def test_failure_is_recorded_and_the_sweep_goes_on(toy_tasks, toy_optimizers):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        results = run_sweep(
            [blobs], ["test_broken:lr=0.1", "sgd:lr=0.1"], [0], store=store, progress=False
        )
        assert [r.status for r in results] == ["failed", "finished"]
        assert "RuntimeError: boom from the optimizer" in results[0].error
        failed = store.runs(status="failed")
        assert len(failed) == 1 and "boom from the optimizer" in failed[0]["error"]
        assert [row["epoch"] for row in store.epochs(failed[0]["id"])] == [0]
    # Without a store nothing would keep the error, so run_one re-raises by default.
    with pytest.raises(RuntimeError, match="boom"):
        run_one(blobs, "test_broken:lr=0.1", seed=0, progress=False)
    assert run_one(blobs, "test_broken", 0, progress=False, raise_errors=False).status == "failed"


def test_rerunning_a_sweep_skips_what_is_done(toy_tasks, tmp_path):
    blobs, line = toy_tasks
    specs = [OptimizerSpec.parse("sgd:lr=0.1"), "adam:lr=0.05"]
    path = tmp_path / "sweep.sqlite"
    first = run_sweep(["test_runner_blobs", line], specs, [0, 1], store=path, progress=False)
    assert [r.status for r in first] == ["finished"] * 8
    # 4 runs per task, plus the throw-away model of the task's spec check and warm-up
    assert blobs.build_model.calls == line.build_model.calls == 5

    second = run_sweep(["test_runner_blobs", line], specs, [0, 1], store=path, progress=False)
    assert blobs.build_model.calls == line.build_model.calls == 5  # nothing was trained again
    assert [r.status for r in second] == ["skipped"] * 8
    assert {r.recorded_status for r in second} == {"finished"}
    for old, new in zip(first, second, strict=True):
        assert (new.run_id, new.test_metric, new.steps) == (old.run_id, old.test_metric, old.steps)
        assert [r.test_loss for r in new.history] == [r.test_loss for r in old.history]
    with Store(path) as store:
        assert len(store.runs()) == 8


def test_a_killed_run_is_redone_from_scratch(toy_tasks):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        run_sweep([blobs], ["sgd:lr=0.1"], [0], store=store, progress=False)
        # A run killed after two epochs: begun and recorded, never finished.
        killed_id = store.begin_run(
            task=blobs.name,
            optimizer="sgd",
            spec_label="sgd:lr=0.1",
            hyperparameters={"lr": 0.1},
            seed=1,
            data_seed=0,
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            metric_name="accuracy",
        )
        store.record_epoch(killed_id, 0, train_loss=123.0)
        store.record_epoch(killed_id, 1, train_loss=456.0)
        calls = blobs.build_model.calls

        results = run_sweep(
            [blobs], ["sgd:lr=0.1"], [0, 1], store=store, progress=False, warmup=False
        )
        assert [r.status for r in results] == ["skipped", "finished"]
        # The spec check's throw-away model, and the killed run (the finished one is skipped).
        assert blobs.build_model.calls == calls + 2
        redone = results[1]
        assert redone.run_id != killed_id and store.epochs(killed_id) == []
        assert len(store.epochs(redone.run_id)) == EPOCHS + 1
        fresh = run_one(blobs, "sgd:lr=0.1", seed=1, progress=False)
        assert [r.train_loss for r in redone.history] == [r.train_loss for r in fresh.history]
        assert [run["status"] for run in store.runs()] == ["finished", "finished"]


def test_an_interrupted_sweep_resumes(toy_tasks, monkeypatch):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        record_epoch = store.record_epoch

        def interrupt_seed_1_at_epoch_2(run_id, epoch, **values):
            # The runner passes its EpochRecord whole.
            if store.run(run_id)["seed"] == 1 and epoch.epoch == 2:
                raise KeyboardInterrupt
            record_epoch(run_id, epoch, **values)

        monkeypatch.setattr(store, "record_epoch", interrupt_seed_1_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            run_sweep([blobs], ["sgd:lr=0.1"], [0, 1, 2], store=store, progress=False)
        assert [(run["seed"], run["status"]) for run in store.runs()] == [
            (0, "finished"),
            (1, "running"),
        ]
        interrupted = store.runs(status="running")[0]
        assert [row["epoch"] for row in store.epochs(interrupted["id"])] == [0, 1]

        monkeypatch.setattr(store, "record_epoch", record_epoch)
        calls = blobs.build_model.calls
        results = run_sweep(
            [blobs], ["sgd:lr=0.1"], [0, 1, 2], store=store, progress=False, warmup=False
        )
        assert [r.status for r in results] == ["skipped", "finished", "finished"]
        # The spec check's throw-away model, and the two unfinished runs.
        assert blobs.build_model.calls == calls + 3
        for result in results:
            assert len(store.epochs(result.run_id)) == EPOCHS + 1
        assert {run["status"] for run in store.runs()} == {"finished"}


def test_runs_are_reproducible_and_leave_global_state_alone(toy_tasks):
    blobs, _ = toy_tasks
    torch.manual_seed(123)
    rng_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    first = run_one(blobs, "sgd:lr=0.1", seed=4, progress=False, num_threads=1)
    warm_up(blobs)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads
    second = run_one(blobs, "sgd:lr=0.1", seed=4, progress=False)
    other_seed = run_one(blobs, "sgd:lr=0.1", seed=5, progress=False)
    losses = [[r.train_loss for r in result.history] for result in (first, second, other_seed)]
    assert losses[0] == losses[1] != losses[2]
    assert shuffle_seed(4) != 4 and global_seed(4) not in (4, shuffle_seed(4))


def test_invalid_spec_fails_before_anything_runs(toy_tasks):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        with pytest.raises(ValueError, match="lr"):
            run_sweep([blobs], ["sgd:lr=0.1", "sgd:lr=-1"], [0], store=store, progress=False)
        assert store.runs() == []
    assert blobs.build_model.calls == 0


def test_progress_bars_go_to_stderr(toy_tasks, capsys):
    blobs, _ = toy_tasks
    with Store(":memory:") as store:
        run_sweep([blobs], ["sgd:lr=0.1"], [0], epochs=1, store=store, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "runs" in captured.err and "epoch" in captured.err


def test_runner_lets_multirate_stop_the_backward_at_the_fast_parameters():
    # The runner's closure calls ``optimizer.backward(loss)`` where the optimizer has one, so a
    # multirate run does partial backward passes (only k-th steps go through the slow part).
    from torchvalley.bench.runner import run_one

    seen: list[dict[str, int]] = []

    def record(context):
        seen.append(dict(context.optimizer.backward_passes))
        return None

    run_one(
        "spirals",
        "multirate:base_optimizer=sgd,lr=0.05,momentum=0.9,k=4,partition=head",
        0,
        epochs=1,
        callbacks=[record],
    )
    full, partial = seen[-1]["full"], seen[-1]["partial"]
    assert partial == 3 * full > 0
