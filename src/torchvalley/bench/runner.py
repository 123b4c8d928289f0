"""The benchmark runner: train one (task, optimizer spec, seed) run, or a resumable sweep of them.

How a run trains (so that its numbers can be recomputed by hand):

* ``model = task.model(seed)``; the data is ``task.data(data_seed)``.
* The training set is shuffled every epoch with ``torch.randperm`` drawn from one
  ``torch.Generator`` seeded with :func:`shuffle_seed` ``(seed)`` at the start of the run, a seed
  derived from ``seed`` but different from it, so that the shuffling stream is not the stream
  that initialised the model. The last, smaller batch of an epoch is kept.
* The global torch RNG (dropout, noise-injecting optimizers) is forked for the run and seeded
  with :func:`global_seed` ``(seed)``; the caller's RNG state is restored afterwards.
* The optimizer is ``create_optimizer(name, model.parameters(), model=model, **hyperparameters)``
  (the registry passes ``model`` on only where the entry accepts it).
* Each step builds a closure (zero grads, forward, loss, backward; it counts its own calls) and
  calls ``optimizer.step(closure)`` (the conformance suite checks that this equals
  ``closure(); optimizer.step()`` for one-pass optimizers). Forward/backward passes are counted
  closure calls.
* An optimizer that carries a training-loop schedule (ABS/ABSA, :mod:`torchvalley.schedules`)
  gets each batch first (``inputs, targets = optimizer.prepare_batch(inputs, targets,
  loss_fn)``: adversarial examples, whose passes are not counted here) and the end of each
  epoch (``optimizer.epoch_end(context)``, timed as training; the numbers it returns are stored
  as measurements).
* An epoch's ``train_loss`` is the mean over its steps of the loss of the *first* closure
  evaluation of each step (the loss at the point the step starts from). ``train_metric`` is the
  metric over the whole training set evaluated in ``model.eval()`` at the end of the epoch
  (exact rather than a running average over a moving model). Epoch 0 is the evaluation of the
  initial model; it has no steps, so its ``train_loss`` is the eval-mode loss over the whole
  training set.
* Evaluation runs under ``torch.no_grad()`` in ``model.eval()`` in chunks of
  :data:`EVAL_CHUNK_SIZE` whose outputs are concatenated, so the loss and metric are over the
  whole set; then ``model.train()``. Evaluation time is excluded from ``train_time_s`` and
  included in ``wall_time_s``. Both, like steps and passes, are cumulative since the start.
* ``cpu_time_s`` is the process CPU time (all threads) over the same span as ``train_time_s``;
  with ``num_threads`` it tells a run that computed from one that waited for a shared CPU.
* Time to target: ``train_time_s`` at the end of the first epoch whose test metric
  ``task.reached(...)`` (0 if the initial model already does), with its steps and epoch.
* A non-finite training loss stops the run: status ``diverged``. An exception raised while
  training (model, optimizer, loss, ...) makes it ``failed``, with the traceback stored. A
  ``KeyboardInterrupt`` propagates and leaves the run ``running`` in the store, which the next
  sweep redoes from scratch.

A sweep checks everything it can before the first run: specs are parsed and validated, each
task's data is loaded, and every spec's optimizer is built once on a throw-away model of each
task (so a spec that validates but cannot be built, e.g. ``sgd:nesterov=True`` without momentum,
fails at once with a ``ValueError``). Sweeps run one torch thread per run unless told otherwise:
on a shared CPU, runs with several threads each were up to 20x slower per step (measured).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from torchvalley.bench.run_config import RunConfig
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.bench.store import Store
from torchvalley.bench.tasks import Task, TaskData, get_task
from torchvalley.registry import create_optimizer

__all__ = [
    "EVAL_CHUNK_SIZE",
    "SWEEP_THREADS",
    "EpochCallback",
    "EpochContext",
    "EpochRecord",
    "RunConfig",
    "RunResult",
    "check_specs",
    "global_seed",
    "run_one",
    "run_sweep",
    "shuffle_seed",
    "warm_up",
]

#: Samples per forward pass during evaluation (bounds memory; results do not depend on it).
EVAL_CHUNK_SIZE = 4096

#: Torch threads per run in :func:`run_sweep` unless ``num_threads`` says otherwise. One thread
#: per run was faster on every task measured on a shared 2-core machine (mnist1d_cnn 6.4 vs
#: 133 ms/step, digits_mlp 0.64 vs 3.1, spirals 0.59 vs 0.52), and it keeps timings comparable.
SWEEP_THREADS = 1

#: Seeds are stored as SQLite integers (signed 64 bits).
_SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """The numbers recorded at the end of one epoch (epoch 0: before training).

    Times, steps and passes are cumulative since the start of the run.
    """

    epoch: int
    train_loss: float
    train_metric: float
    test_loss: float
    test_metric: float
    train_time_s: float
    wall_time_s: float
    steps: int
    forward_passes: int
    backward_passes: int
    cpu_time_s: float | None = None


@dataclasses.dataclass(frozen=True)
class EpochContext:
    """What an epoch callback sees at the end of an epoch (epoch 0: before training).

    Attributes:
        task, spec, seed, epoch: which run and when.
        model: the model being trained (in train mode; a callback must leave it as it found it).
        optimizer: the run's optimizer.
        data: the task's train and test tensors.
        batch_size: the run's batch size.
    """

    task: Task
    spec: OptimizerSpec
    seed: int
    epoch: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: TaskData
    batch_size: int


#: An epoch callback: ``callback(context) -> {name: value}`` (or ``None`` to record nothing).
#: Its time counts in the wall time, not the training time; its numbers go to the store's
#: ``measurements`` table and to ``RunResult.measurements``.
EpochCallback = Callable[[EpochContext], Mapping[str, float] | None]


@dataclasses.dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        config: what identifies the run (task, spec, seeds, epochs, batch size); ``task``,
            ``spec_label``, ``optimizer``, ``seed``, ``data_seed``, ``epochs`` and
            ``batch_size`` read through to it.
        status: ``"finished"``, ``"diverged"``, ``"failed"``, or ``"skipped"`` when the store
            already held the run as done, or another sweep is executing it (its recorded
            numbers are then filled in from the store and ``recorded_status`` says whether it
            had finished, diverged or is ``running`` elsewhere).
        history: the recorded epochs, epoch 0 first.
        train_loss: the last epoch's mean training loss (the non-finite one if it diverged).
        test_loss, test_metric: after the last epoch; ``None`` if it diverged or failed.
        best_test_metric: the best test metric of any evaluated epoch (epoch 0 included).
        time_to_target_s, steps_to_target, epoch_to_target: ``None`` if the target was never
            reached.
        run_id: the row id in the store, or ``None`` without a store.
        error: the traceback of a failed run.
        measurements: ``(epoch, name, value)`` from the epoch callbacks.
        model: the trained model when ``keep_model=True`` (not stored).
        num_threads: torch threads the run used.
        cpu_time_s: process CPU time (all threads) while training.
    """

    config: RunConfig
    metric_name: str
    status: str
    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    steps: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    train_loss: float | None = None
    test_loss: float | None = None
    test_metric: float | None = None
    best_test_metric: float | None = None
    time_to_target_s: float | None = None
    steps_to_target: int | None = None
    epoch_to_target: int | None = None
    run_id: int | None = None
    error: str | None = None
    measurements: list[tuple[int, str, float]] = dataclasses.field(default_factory=list)
    model: torch.nn.Module | None = None
    recorded_status: str | None = None
    num_threads: int | None = None
    cpu_time_s: float = 0.0

    task = property(lambda self: self.config.task, doc="The task's name.")
    spec_label = property(lambda self: self.config.spec_label, doc="The canonical spec label.")
    optimizer = property(lambda self: self.config.optimizer, doc="The optimizer's name.")
    seed = property(lambda self: self.config.seed, doc="The model seed.")
    data_seed = property(lambda self: self.config.data_seed, doc="The data seed.")
    epochs = property(lambda self: self.config.epochs, doc="Training epochs.")
    batch_size = property(lambda self: self.config.batch_size, doc="Training batch size.")


def _derived_seed(purpose: str, seed: int) -> int:
    digest = hashlib.sha256(f"torchvalley-{purpose}-{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def shuffle_seed(seed: int) -> int:
    """The seed of the ``torch.Generator`` that shuffles the training set of run ``seed``."""
    return _derived_seed("shuffle", seed)


def global_seed(seed: int) -> int:
    """The seed the (forked, restored afterwards) global torch RNG gets for run ``seed``."""
    return _derived_seed("global", seed)


def _resolve_task(task: Task | str) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def _settings(
    task: Task, epochs: int | None, data_seed: int | None, batch_size: int | None
) -> tuple[int, int, int]:
    """(epochs, data_seed, batch_size) with the task's defaults filled in, checked."""
    epochs = task.default_epochs if epochs is None else int(epochs)
    data_seed = task.default_data_seed if data_seed is None else int(data_seed)
    batch_size = task.batch_size if batch_size is None else int(batch_size)
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    _check_seed("data_seed", data_seed)
    return epochs, data_seed, batch_size


def _check_seed(name: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Invalid {name}: {seed!r} (expected an integer)")
    low, high = _SEED_RANGE
    if not low <= seed <= high:
        raise ValueError(f"Invalid {name}: {seed} (must lie in [-2**63, 2**63 - 1])")
    return int(seed)


def _config(
    task: Task,
    spec: OptimizerSpec,
    seed: int,
    epochs: int | None,
    data_seed: int | None,
    batch_size: int | None,
) -> RunConfig:
    epochs, data_seed, batch_size = _settings(task, epochs, data_seed, batch_size)
    return RunConfig(
        task=task.name,
        optimizer=spec.name,
        spec_label=spec.label,
        hyperparameters=spec.hyperparameters,
        seed=_check_seed("seed", seed),
        data_seed=data_seed,
        epochs=epochs,
        batch_size=batch_size,
        legacy_labels=(spec.legacy_label,),
    )


def warm_up(
    task: Task | str,
    *,
    data_seed: int | None = None,
    batch_size: int | None = None,
    steps: int = 3,
    model: nn.Module | None = None,
) -> None:
    """Take a few untimed training steps and one evaluation on a throw-away model.

    The first forward and backward passes in a process pay one-off costs (allocator growth,
    kernel selection, lazy initialisation) that would otherwise be charged to whichever run
    comes first. The model, the optimizer (plain SGD with ``lr=0``) and the RNG state are all
    discarded; errors are ignored, since the real run will report them. ``model``: a
    throw-away model of the task to use instead of building one.
    """
    task = _resolve_task(task)
    _, data_seed, batch_size = _settings(task, 0, data_seed, batch_size)
    # Errors are the real run's to report.
    with contextlib.suppress(Exception), torch.random.fork_rng(devices=[]):
        data = _task_data(task, data_seed)
        inputs, targets = data.train
        model = task.model(0) if model is None else model
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            task.loss_fn(model(inputs[:batch_size]), targets[:batch_size]).backward()
            optimizer.step()
        _evaluate(model, task, *data.test)


def _resolve_spec(spec: OptimizerSpec | str) -> OptimizerSpec:
    return spec if isinstance(spec, OptimizerSpec) else OptimizerSpec.parse(spec)


def check_specs(
    task: Task | str,
    specs: Iterable[OptimizerSpec | str],
    *,
    data_seed: int | None = None,
    model: nn.Module | None = None,
) -> nn.Module:
    """Load ``task``'s data and build every spec's optimizer once on a throw-away model.

    What validation cannot see fails here, before a sweep starts: a spec whose values are each
    valid but do not go together (``sgd:lr=0.1,nesterov=True`` without momentum), a bad
    ``scheme`` or ``perturb`` that only the constructor reads, a wrapper around a wrapper; and
    data that cannot be loaded (a missing extra). The global RNG is left as it was.

    Args:
        task: a :class:`Task` or a registered task name.
        specs: the specs to build.
        data_seed: the data to load (default: the task's).
        model: the throw-away model to build on (default: ``task.model(0)``).

    Returns:
        The throw-away model (a sweep warms up on it).

    Raises:
        ValueError: naming the spec and the task, with the constructor's message.
        ImportError: if the task's data needs a package that is not installed.
    """
    task = _resolve_task(task)
    _task_data(task, task.default_data_seed if data_seed is None else data_seed)
    with torch.random.fork_rng(devices=[]):
        model = task.model(0) if model is None else model
        for spec in specs:
            spec = _resolve_spec(spec)
            if "model" in spec.hyperparameters:
                raise ValueError(
                    f"optimizer spec {spec.label!r}: 'model' is set by the harness (the task's "
                    "model); leave it out of the spec"
                )
            try:
                create_optimizer(spec.name, model.parameters(), model=model, **spec.hyperparameters)
            except Exception as error:
                raise ValueError(
                    f"optimizer spec {spec.label!r} cannot be built for task {task.name!r}: "
                    f"{type(error).__name__}: {error}"
                ) from error
    return model


def _task_data(task: Task, data_seed: int) -> TaskData:
    # Task.data caches by task *name*; use it only when this very object is the registered one,
    # so an unregistered (or shadowed) Task object still gets its own data.
    try:
        registered = get_task(task.name)
    except ValueError:
        registered = None
    return task.data(data_seed) if registered is task else task.load_data(data_seed)


@torch.no_grad()
def _evaluate(
    model: nn.Module, task: Task, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    """(mean loss, metric) over a whole set, in eval mode; leaves the model in train mode."""
    model.eval()
    try:
        outputs = torch.cat([model(chunk) for chunk in torch.split(inputs, EVAL_CHUNK_SIZE)], dim=0)
        loss = float(task.loss_fn(outputs, targets))
        metric = float(task.metric_fn(outputs, targets))
    finally:
        model.train()
    return loss, metric


@contextlib.contextmanager
def _num_threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Counters:
    """Steps and closure calls (forward and backward passes) so far."""

    def __init__(self) -> None:
        self.steps = 0
        self.forward = 0
        self.backward = 0


class _Diverged(Exception):
    """Raised inside the training loop when the training loss is not finite."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss}")
        self.loss = loss


def _store_row_to_result(row: dict[str, Any], store: Store, config: RunConfig) -> RunResult:
    fields = [field.name for field in dataclasses.fields(EpochRecord)]
    history = [
        EpochRecord(**{name: record.get(name) for name in fields})
        for record in store.epochs(row["id"])
    ]
    return RunResult(
        config=config,
        metric_name=row["metric_name"],
        status="skipped",
        recorded_status=row["status"],
        history=history,
        train_time_s=row["train_time_s"] or 0.0,
        wall_time_s=row["wall_time_s"] or 0.0,
        steps=row["steps"] or 0,
        forward_passes=row["forward_passes"] or 0,
        backward_passes=row["backward_passes"] or 0,
        train_loss=row["train_loss"],
        test_loss=row["test_loss"],
        test_metric=row["test_metric"],
        best_test_metric=row["best_test_metric"],
        time_to_target_s=row["time_to_target_s"],
        steps_to_target=row["steps_to_target"],
        epoch_to_target=row["epoch_to_target"],
        run_id=row["id"],
        error=row["error"],
        num_threads=row.get("num_threads"),
        cpu_time_s=row.get("cpu_time_s") or 0.0,
    )


def run_one(
    task: Task | str,
    spec: OptimizerSpec | str,
    seed: int,
    *,
    epochs: int | None = None,
    data_seed: int | None = None,
    batch_size: int | None = None,
    store: Store | None = None,
    progress: bool | None = None,
    raise_errors: bool | None = None,
    num_threads: int | None = None,
    callbacks: Sequence[EpochCallback] = (),
    keep_model: bool = False,
    claim: str | None = None,
) -> RunResult:
    """Train one run and (with a store) record it epoch by epoch.

    Args:
        task: a :class:`Task` or a registered task name.
        spec: an :class:`OptimizerSpec` or its text (``"sgd:lr=0.1,momentum=0.9"``).
        seed: model-initialisation seed; the shuffling and global-RNG seeds derive from it.
        epochs: default ``task.default_epochs``.
        data_seed: default ``task.default_data_seed``.
        batch_size: default ``task.batch_size``.
        store: where to record the run. If it already holds this run as finished or
            diverged, or another process is executing it, nothing is trained and the result
            has status ``"skipped"``.
        progress: show a per-run epoch bar on stderr; ``None`` shows it only on a terminal.
        raise_errors: re-raise an exception from training after recording the failure.
            Default: re-raise only when there is no store (nothing else would keep it); with
            a store the failure is recorded and returned as status ``"failed"``.
        num_threads: ``torch.set_num_threads`` for the run (restored afterwards); default:
            leave it as it is.
        callbacks: :data:`EpochCallback` s called at the end of every epoch (and at epoch 0),
            e.g. the landscape measurements of :mod:`torchvalley.bench.measurements`.
        keep_model: keep the trained model in ``RunResult.model``.
        claim: the token a parallel sweep hands its worker with this run (stored with the
            run; see :meth:`Store.release_claim <torchvalley.bench.store.Store.release_claim>`).

    Returns:
        The :class:`RunResult`.
    """
    task = _resolve_task(task)
    spec = _resolve_spec(spec)
    config = _config(task, spec, seed, epochs, data_seed, batch_size)
    if num_threads is not None and (isinstance(num_threads, bool) or int(num_threads) < 1):
        raise ValueError(f"Invalid num_threads: {num_threads!r} (must be >= 1)")
    if raise_errors is None:
        raise_errors = store is None

    result = RunResult(config=config, metric_name=task.metric_name, status="running")
    if store is not None:
        run_id = store.begin_run(
            config,
            metric_name=task.metric_name,
            higher_is_better=task.higher_is_better,
            target=task.target,
            claim=claim,
        )
        if run_id is None:  # done, or claimed by another sweep right now
            row = store.run_by_key(config)
            if row is None:  # the other sweep's run failed and was cleared meanwhile
                return RunResult(
                    config, task.metric_name, status="skipped", recorded_status="running"
                )
            return _store_row_to_result(row, store, config)
        result.run_id = run_id

    def record(epoch_record: EpochRecord) -> None:
        result.history.append(epoch_record)
        if store is not None and result.run_id is not None:
            store.record_epoch(result.run_id, epoch_record)

    def measure(context: EpochContext, extra: Mapping[str, float] | None = None) -> None:
        values: dict[str, float] = dict(extra or {})
        for callback in callbacks:
            values.update(callback(context) or {})
        if not values:
            return
        result.measurements.extend((context.epoch, k, float(v)) for k, v in values.items())
        if store is not None and result.run_id is not None:
            store.record_measurements(result.run_id, context.epoch, values)

    bar = tqdm(
        total=config.epochs,
        desc=f"{task.name} {spec.label} seed={seed}",
        unit="epoch",
        leave=False,
        disable=None if progress is None else not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    counters = _Counters()
    wall_start = time.perf_counter()
    try:
        with _num_threads(num_threads), torch.random.fork_rng(devices=[]), bar:
            result.num_threads = torch.get_num_threads()
            torch.manual_seed(global_seed(config.seed))
            _train(
                task,
                spec,
                config,
                counters,
                result,
                record,
                wall_start,
                bar,
                measure,
            )
        result.status = "finished"
    except _Diverged as diverged:
        result.status = "diverged"
        result.train_loss = diverged.loss
    except Exception as error:
        result.status = "failed"
        result.error = "".join(traceback.format_exception(error)).rstrip()
        if not raise_errors and progress is not False:
            tqdm.write(
                f"run failed: {task.name} {spec.label} seed={seed}: "
                f"{type(error).__name__}: {error}",
                file=sys.stderr,
            )
        _finish(store, result, counters, wall_start, task.higher_is_better)
        result.model = None
        if raise_errors:
            raise
        return result
    _finish(store, result, counters, wall_start, task.higher_is_better)
    if not keep_model:
        result.model = None
    return result


def _finish(
    store: Store | None,
    result: RunResult,
    counters: _Counters,
    wall_start: float,
    higher_is_better: bool,
) -> None:
    """Fill in the run's totals and final numbers, and write them to the store."""
    result.wall_time_s = time.perf_counter() - wall_start
    result.steps = counters.steps
    result.forward_passes = counters.forward
    result.backward_passes = counters.backward
    evaluated = [record.test_metric for record in result.history]
    if evaluated:
        result.best_test_metric = _best(evaluated, higher_is_better)
    if result.status == "finished" and result.history:
        last = result.history[-1]
        result.train_loss = last.train_loss
        result.test_loss = last.test_loss
        result.test_metric = last.test_metric
    elif result.status == "failed" and result.history:
        result.train_loss = result.history[-1].train_loss
    if store is None or result.run_id is None:
        return
    store.finish_run(
        result.run_id,
        result.status,
        train_time_s=result.train_time_s,
        wall_time_s=result.wall_time_s,
        steps=result.steps,
        forward_passes=result.forward_passes,
        backward_passes=result.backward_passes,
        time_to_target_s=result.time_to_target_s,
        steps_to_target=result.steps_to_target,
        epoch_to_target=result.epoch_to_target,
        train_loss=result.train_loss,
        test_loss=result.test_loss,
        test_metric=result.test_metric,
        best_test_metric=result.best_test_metric,
        error=result.error,
        num_threads=result.num_threads,
        cpu_time_s=result.cpu_time_s,
    )


def _best(values: Sequence[float], higher_is_better: bool) -> float | None:
    finite = [value for value in values if value is not None and not math.isnan(value)]
    if not finite:
        return None
    return max(finite) if higher_is_better else min(finite)


def _train(
    task: Task,
    spec: OptimizerSpec,
    config: RunConfig,
    counters: _Counters,
    result: RunResult,
    record: Callable[[EpochRecord], None],
    wall_start: float,
    bar: tqdm,
    measure: Callable[..., None] | None = None,
) -> None:
    """The training loop; fills ``result`` and calls ``record`` (and ``measure``) once per
    evaluated epoch."""
    seed, batch_size = config.seed, config.batch_size
    data = _task_data(task, config.data_seed)
    train_inputs, train_targets = data.train
    test_inputs, test_targets = data.test
    model = task.model(seed)
    model.train()
    # Module-aware optimizers (SAM: BatchNorm statistics, SAM-ON's norm layers) get the model.
    optimizer = create_optimizer(spec.name, model.parameters(), model=model, **spec.hyperparameters)
    # An optimizer that decides how far the backward pass goes (Multirate: only to the fast
    # parameters on fast-only steps) exposes ``backward(loss)``; everything else takes autograd's.
    backward = getattr(optimizer, "backward", torch.Tensor.backward)
    # A training-loop schedule carried by the optimizer (ABS/ABSA, torchvalley.schedules) sees
    # each batch before its step (``prepare_batch``: adversarial examples) and the end of each
    # epoch (``epoch_end(context)``: the batch-size schedule, timed as training; the numbers it
    # returns are stored as measurements).
    prepare_batch = getattr(optimizer, "prepare_batch", None)
    epoch_end = getattr(optimizer, "epoch_end", None)
    result.model = model  # dropped again by run_one unless keep_model
    generator = torch.Generator().manual_seed(shuffle_seed(seed))
    n_train = train_inputs.shape[0]

    def evaluate_and_record(
        epoch: int, train_loss: float | None, extra: Mapping[str, float] | None = None
    ) -> None:
        eval_train_loss, train_metric = _evaluate(model, task, train_inputs, train_targets)
        test_loss, test_metric = _evaluate(model, task, test_inputs, test_targets)
        epoch_record = EpochRecord(
            epoch=epoch,
            train_loss=eval_train_loss if train_loss is None else train_loss,
            train_metric=train_metric,
            test_loss=test_loss,
            test_metric=test_metric,
            train_time_s=result.train_time_s,
            wall_time_s=time.perf_counter() - wall_start,
            steps=counters.steps,
            forward_passes=counters.forward,
            backward_passes=counters.backward,
            cpu_time_s=result.cpu_time_s,
        )
        record(epoch_record)
        if measure is not None:
            context = EpochContext(task, spec, seed, epoch, model, optimizer, data, batch_size)
            measure(context, extra)
        if result.epoch_to_target is None and task.reached(test_metric):
            result.time_to_target_s = result.train_time_s
            result.steps_to_target = counters.steps
            result.epoch_to_target = epoch
        bar.set_postfix(
            {
                task.metric_name: f"{test_metric:.4g}",
                "train_loss": f"{epoch_record.train_loss:.4g}",
            },
            refresh=False,
        )

    evaluate_and_record(0, None)
    for epoch in range(1, config.epochs + 1):
        loss_sum = 0.0
        epoch_steps = 0
        epoch_start = time.perf_counter()
        cpu_start = time.process_time()
        schedule_values = None
        try:
            permutation = torch.randperm(n_train, generator=generator)
            for start in range(0, n_train, batch_size):
                index = permutation[start : start + batch_size]
                inputs, targets = train_inputs[index], train_targets[index]
                if prepare_batch is not None:
                    inputs, targets = prepare_batch(inputs, targets, task.loss_fn)
                first_loss: list[torch.Tensor] = []

                def closure(
                    subset: torch.Tensor | None = None,
                    backward: bool = True,
                    per_example: bool = False,
                    inputs: torch.Tensor = inputs,
                    targets: torch.Tensor = targets,
                    first_loss: list[torch.Tensor] = first_loss,
                    run_backward: Callable[[torch.Tensor], Any] = backward,
                ) -> torch.Tensor:
                    # Called with no argument by every optimizer; ESAM's data selection asks for
                    # per-example losses, a forward-only pass and a sub-batch (optim/sam/esam.py).
                    if subset is not None:
                        inputs, targets = inputs[subset], targets[subset]
                    if backward:
                        optimizer.zero_grad(set_to_none=True)
                    outputs = model(inputs)
                    losses = (
                        task.loss_fn(outputs, targets, reduction="none") if per_example else None
                    )
                    loss = task.loss_fn(outputs, targets) if losses is None else losses.mean()
                    counters.forward += 1
                    if backward:
                        run_backward(loss)
                        counters.backward += 1
                    if not first_loss:
                        first_loss.append(loss.detach())
                    return losses.detach() if per_example else loss

                optimizer.step(closure)
                counters.steps += 1
                epoch_steps += 1
                loss_value = float(first_loss[0]) if first_loss else math.nan
                if not math.isfinite(loss_value):
                    raise _Diverged(loss_value)
                loss_sum += loss_value
            if epoch_end is not None:
                context = EpochContext(task, spec, seed, epoch, model, optimizer, data, batch_size)
                schedule_values = epoch_end(context)
        finally:
            result.train_time_s += time.perf_counter() - epoch_start
            result.cpu_time_s += time.process_time() - cpu_start
        evaluate_and_record(epoch, loss_sum / max(epoch_steps, 1), schedule_values)
        bar.update(1)


def _progress_line(done: int, total: int, result: RunResult) -> str:
    """One line per finished run, for logs (``make demo | tee log``)."""
    if result.status == "skipped":
        state = f"skipped ({result.recorded_status} in the store)"
    elif result.status == "finished":
        metric = "—" if result.test_metric is None else f"{result.test_metric:.4g}"
        state = f"finished: test {result.metric_name} {metric}, {result.wall_time_s:.1f} s"
    else:
        state = result.status
        if result.error:
            state += ": " + result.error.strip().splitlines()[-1]
    return f"[{done}/{total}] {result.task} {result.spec_label} seed={result.seed}: {state}"


def run_sweep(
    tasks: Iterable[Task | str],
    specs: Iterable[OptimizerSpec | str],
    seeds: Iterable[int],
    *,
    epochs: int | None = None,
    data_seed: int | None = None,
    batch_size: int | None = None,
    store: Store | str | Path,
    progress: bool | None = True,
    num_threads: int | None = SWEEP_THREADS,
    warmup: bool = True,
    callbacks: Sequence[EpochCallback] = (),
) -> list[RunResult]:
    """Run every (task, spec, seed) combination, recording into ``store``; resumable.

    Runs already finished or diverged in the store, or executed right now by another sweep on
    the same store, are not trained and come back with status ``"skipped"``; killed or
    ``failed`` ones are redone from scratch. A run that fails is recorded and the sweep goes
    on. Before anything runs, specs are parsed and validated, and every spec still to run is
    built once on a throw-away model of each task (:func:`check_specs`), so a typo or a spec
    the optimizer refuses fails at once. Specs with equal labels run once.

    Args:
        tasks: :class:`Task` objects or registered task names.
        specs: :class:`OptimizerSpec` objects or spec strings.
        seeds: model seeds; each (task, spec) pair runs once per seed.
        epochs, data_seed, batch_size: overrides of the tasks' defaults (see :func:`run_one`).
        store: a :class:`Store`, or a path to open one at (closed again at the end).
        progress: bars over runs and over each run's epochs on stderr; ``None``: bars only when
            stderr is a terminal, and one line per finished run on stdout when stdout is not a
            terminal (a log); ``False``: nothing.
        num_threads: ``torch.set_num_threads`` for the sweep (restored afterwards); default
            :data:`SWEEP_THREADS`; ``None`` leaves the process's setting.
        callbacks: epoch callbacks for every run (see :func:`run_one`).
        warmup: before the first run of a task that is not skipped, take a few untimed steps
            on a throw-away model (see :func:`warm_up`), so that the first timed run does not
            pay the process's one-off costs and look slower than the others.

    Returns:
        One :class:`RunResult` per combination, in order task, then spec, then seed.

    Raises:
        ValueError: for a bad spec, seed or setting, or a spec that cannot be built.
    """
    task_list = [_resolve_task(task) for task in tasks]
    spec_list = list({spec.label: spec for spec in map(_resolve_spec, specs)}.values())
    seed_list = [_check_seed("seed", seed) for seed in seeds]
    if num_threads is not None and (isinstance(num_threads, bool) or int(num_threads) < 1):
        raise ValueError(f"Invalid num_threads: {num_threads!r} (must be >= 1)")
    plan = [
        (task, spec, _config(task, spec, seed, epochs, data_seed, batch_size))
        for task in task_list
        for spec in spec_list
        for seed in seed_list
    ]
    owns_store = not isinstance(store, Store)
    opened = Store(store) if owns_store else store
    total = len(plan)
    disable = None if progress is None else not progress
    lines = progress is None and not sys.stdout.isatty()
    results: list[RunResult] = []
    try:
        # Everything that can fail before training fails here, before the first run.
        throwaway: dict[str, nn.Module] = {}
        for task in task_list:
            pending = {
                spec.label: (spec, config)
                for planned, spec, config in plan
                if planned is task and not opened.is_finished(config)
            }
            if pending:
                data_seed_of_task = next(iter(pending.values()))[1].data_seed
                throwaway[task.name] = check_specs(
                    task, [spec for spec, _ in pending.values()], data_seed=data_seed_of_task
                )
        with (
            _num_threads(num_threads),
            tqdm(
                total=total,
                desc="runs",
                unit="run",
                disable=disable,
                file=sys.stderr,
                dynamic_ncols=True,
            ) as bar,
        ):
            warmed_up = set() if warmup else {task.name for task in task_list}
            for task, spec, config in plan:
                bar.set_postfix_str(f"{task.name} {spec.label} seed={config.seed}", refresh=True)
                if task.name not in warmed_up and not opened.is_finished(config):
                    warm_up(
                        task,
                        data_seed=config.data_seed,
                        batch_size=config.batch_size,
                        model=throwaway.get(task.name),
                    )
                    warmed_up.add(task.name)
                result = run_one(
                    task,
                    spec,
                    config.seed,
                    epochs=epochs,
                    data_seed=data_seed,
                    batch_size=batch_size,
                    store=opened,
                    progress=progress,
                    raise_errors=False,
                    callbacks=callbacks,
                )
                results.append(result)
                bar.update(1)
                if lines:
                    print(_progress_line(len(results), total, result), flush=True)
    finally:
        if owns_store:
            opened.close()
    return results
