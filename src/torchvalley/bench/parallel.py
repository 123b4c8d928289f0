"""Parallel sweeps: the runs of a sweep spread over local worker processes or a Ray cluster.

Each run (task, spec, seed) is one unit of work. Every worker opens the store itself (a file
on this machine, or a PostgreSQL URL that every node reaches) and streams its epochs into it,
exactly as a serial sweep does; the driver only hands out runs, shows progress, and collects
one :class:`~torchvalley.bench.runner.RunResult` per run. The numbers do not depend on where
a run ran: a run's RNG streams derive from its seed alone (see :mod:`torchvalley.bench.runner`)
and each worker uses one torch thread, so a parallel sweep stores the same losses, bit for bit,
as the serial one (tested).

Failures:

* a run that raises is recorded as ``failed`` by its worker (as in a serial sweep);
* a worker that dies (killed, out of memory, a lost node) loses nothing and duplicates
  nothing: each hand-out carries a *claim* token stored with the run; when the driver sees a
  worker die it releases the claims of that worker's unfinished runs
  (:meth:`Store.release_claim <torchvalley.bench.store.Store.release_claim>`, which deletes
  only ``running`` rows with that token, partial epochs included) and hands the runs out again,
  up to ``max_retries`` times; the store's claims keep two workers from running one run.

Local workers are forked from a ``forkserver`` that has imported torch and torchvalley and
computed nothing (``spawn`` where there is no forkserver); a dead one breaks Python's process
pool, so the driver starts a new pool for the runs still to do. Runs the store already holds as
done are read back in the driver and never handed out.
With Ray, each run is a task with ``num_cpus=1``; ``ray="local"`` starts a private local
instance (``num_cpus=workers``), ``"auto"`` or an address joins a running cluster.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from tqdm import tqdm

from torchvalley.bench.runner import (
    EpochCallback,
    RunResult,
    _check_seed,
    _config,
    _progress_line,
    _resolve_spec,
    _resolve_task,
    _store_row_to_result,
    check_specs,
)
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.bench.store import DONE_STATUSES, Store, is_url
from torchvalley.bench.tasks import Task, get_task

__all__ = ["Job", "execute_job", "run_parallel"]


@dataclasses.dataclass(frozen=True)
class Job:
    """One run handed to a worker: everything it needs, by name (picklable)."""

    index: int
    task: str
    spec: str
    seed: int
    epochs: int
    data_seed: int
    batch_size: int
    store: str
    claim: str
    num_threads: int
    callbacks: tuple[EpochCallback, ...] = ()
    warmup: bool = True


_WARMED_UP: set[tuple[str, int, int]] = set()


def execute_job(job: Job) -> RunResult:
    """Run one job in this process (a worker): open the store, warm up once per task, train.

    The trained model is dropped; the result travels back to the driver.
    """
    from torchvalley.bench.runner import run_one, warm_up

    task = get_task(job.task)
    key = (job.task, job.data_seed, job.batch_size)
    with Store(job.store) as store:
        if job.warmup and key not in _WARMED_UP and not store.is_finished(_job_config(job)):
            warm_up(task, data_seed=job.data_seed, batch_size=job.batch_size)
            _WARMED_UP.add(key)
        result = run_one(
            task,
            job.spec,
            job.seed,
            epochs=job.epochs,
            data_seed=job.data_seed,
            batch_size=job.batch_size,
            store=store,
            progress=False,
            raise_errors=False,
            num_threads=job.num_threads,
            callbacks=job.callbacks,
            claim=job.claim,
        )
    result.model = None
    return result


def _job_config(job: Job) -> Any:
    return _config(
        get_task(job.task),
        OptimizerSpec.parse(job.spec),
        job.seed,
        job.epochs,
        job.data_seed,
        job.batch_size,
    )


def _plan(
    tasks: Iterable[Task | str],
    specs: Iterable[OptimizerSpec | str],
    seeds: Iterable[int],
    epochs: int | None,
    data_seed: int | None,
    batch_size: int | None,
) -> list[tuple[Task, OptimizerSpec, Any]]:
    task_list = [_resolve_task(task) for task in tasks]
    for task in task_list:
        try:
            registered = get_task(task.name)
        except ValueError:
            registered = None
        if registered is not task:
            raise ValueError(
                f"task {task.name!r} is not the registered task of that name; a parallel sweep "
                "hands tasks to workers by name (register it with register_task in a module "
                "the workers import)"
            )
    spec_list = list({spec.label: spec for spec in map(_resolve_spec, specs)}.values())
    seed_list = [_check_seed("seed", seed) for seed in seeds]
    return [
        (task, spec, _config(task, spec, seed, epochs, data_seed, batch_size))
        for task in task_list
        for spec in spec_list
        for seed in seed_list
    ]


def run_parallel(
    tasks: Iterable[Task | str],
    specs: Iterable[OptimizerSpec | str],
    seeds: Iterable[int],
    *,
    store: str,
    workers: int = 2,
    ray: str | None = None,
    epochs: int | None = None,
    data_seed: int | None = None,
    batch_size: int | None = None,
    progress: bool | None = True,
    num_threads: int = 1,
    max_retries: int = 2,
    callbacks: Sequence[EpochCallback] = (),
    warmup: bool = True,
) -> list[RunResult]:
    """:func:`~torchvalley.bench.runner.run_sweep` over ``workers`` processes, or over Ray.

    Args:
        tasks, specs, seeds, epochs, data_seed, batch_size, callbacks, warmup: as for
            ``run_sweep`` (tasks must be registered: workers look them up by name; callbacks
            must be picklable).
        store: where every worker writes: a file path (this machine) or a database URL (a
            cluster). Not ``":memory:"``.
        workers: local worker processes (with ``ray="local"``: the CPUs of the private Ray
            instance).
        ray: ``None`` for local processes; ``"local"`` for a private local Ray instance;
            ``"auto"`` or an address (``"ray://head:10001"``, ``"host:6379"``) to join a
            cluster.
        progress: a bar over runs on stderr; ``None``: only on a terminal, and a line per
            finished run on stdout when stdout is a log; ``False``: nothing.
        num_threads: torch threads per run (default 1: one core per worker).
        max_retries: how often a run whose worker died is handed out again.

    Returns:
        One ``RunResult`` per (task, spec, seed), in order task, spec, seed, as ``run_sweep``.

    Raises:
        ValueError: for a bad spec, seed or setting, an unregistered task, or a spec that
            cannot be built (checked in the driver before any worker starts).
    """
    if str(store) == ":memory:" or not str(store).strip():
        raise ValueError("Invalid store: a parallel sweep needs a file or a database URL")
    if isinstance(workers, bool) or int(workers) < 1:
        raise ValueError(f"Invalid workers: {workers!r} (must be >= 1)")
    if int(max_retries) < 0:
        raise ValueError(f"Invalid max_retries: {max_retries!r} (must be >= 0)")
    store = str(store)
    plan = _plan(tasks, specs, seeds, epochs, data_seed, batch_size)
    sweep = uuid.uuid4().hex[:12]
    with Store(store) as opened:  # created (or checked) once, before the workers open it
        pending = [config for _, _, config in plan if not opened.is_finished(config)]
        for task in {task.name: task for task, _, _ in plan}.values():
            todo = [spec for t, spec, c in plan if t is task and c in pending]
            if todo:
                check_specs(
                    task, todo, data_seed=next(c for t, _, c in plan if t is task).data_seed
                )
    jobs = [
        Job(
            index=index,
            task=task.name,
            spec=spec.legacy_label,  # every key as written: the worker builds the same spec
            seed=config.seed,
            epochs=config.epochs,
            data_seed=config.data_seed,
            batch_size=config.batch_size,
            store=store if is_url(store) else str(_absolute(store)),
            claim=f"{sweep}:{index}:0",
            num_threads=int(num_threads),
            callbacks=tuple(callbacks),
            warmup=warmup,
        )
        for index, (task, spec, config) in enumerate(plan)
    ]
    results: list[RunResult | None] = [None] * len(jobs)
    with Store(store) as opened:
        for job, (_, _, config) in zip(jobs, plan, strict=True):
            row = opened.run_by_key(config)
            if row is not None and row["status"] in DONE_STATUSES:
                results[job.index] = _store_row_to_result(row, opened, config)
    jobs = [job for job in jobs if results[job.index] is None]
    disable = None if progress is None else not progress
    lines = progress is None and not sys.stdout.isatty()
    finished_before = len(plan) - len(jobs)
    with tqdm(
        total=len(plan),
        initial=finished_before,
        desc="runs",
        unit="run",
        disable=disable,
        file=sys.stderr,
    ) as bar:

        def done(job: Job, result: RunResult) -> None:
            results[job.index] = result
            bar.update(1)
            if lines:
                print(_progress_line(bar.n, len(plan), result), flush=True)

        if jobs:
            backend = _run_local if ray is None else _run_ray
            backend(jobs, done, store, int(workers), ray, int(max_retries), plan)
    return [result for result in results if result is not None]


def _absolute(path: str) -> Any:
    from pathlib import Path

    return Path(path).expanduser().resolve()


def _retry(job: Job) -> Job:
    sweep, index, attempt = job.claim.split(":")
    return dataclasses.replace(job, claim=f"{sweep}:{index}:{int(attempt) + 1}")


def _attempt(job: Job) -> int:
    return int(job.claim.rsplit(":", 1)[1])


def _given_up(job: Job, plan: list, reason: str) -> RunResult:
    """The result of a run whose worker died more often than allowed: recorded as failed."""
    task, _, config = plan[job.index]
    with Store(job.store) as store:
        run_id = store.begin_run(
            config,
            metric_name=task.metric_name,
            higher_is_better=task.higher_is_better,
            target=task.target,
            claim=job.claim,
        )
        if run_id is not None:
            store.finish_run(run_id, "failed", error=reason)
    return RunResult(config, task.metric_name, status="failed", error=reason, run_id=run_id)


def _context() -> Any:
    """``forkserver`` where there is one: a clean server process that has imported torch and
    torchvalley once, with one intra-op thread and no computation, forks each worker (no
    re-import per worker, no inherited thread pools: :mod:`torchvalley.bench._forkserver`);
    ``spawn`` elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torchvalley.bench._forkserver"])
        return context
    return multiprocessing.get_context("spawn")


def _run_local(jobs, done, store, workers, ray, max_retries, plan) -> None:
    """Local processes; a dead worker breaks the pool: release, start a new pool, go on."""
    del ray
    # The forkserver (started once per process, at the first pool) loads these tasks' data.
    os.environ.setdefault(
        "TORCHVALLEY_FORKSERVER_TASKS",
        ",".join(sorted({f"{job.task}:{job.data_seed}" for job in jobs})),
    )
    context = _context()
    queue = list(jobs)
    while queue:
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(queue)), mp_context=context
        ) as pool:
            futures = {pool.submit(execute_job, job): job for job in queue}
            queue = []
            broken: list[Job] = []
            for future in concurrent.futures.as_completed(futures):
                job = futures[future]
                try:
                    done(job, future.result())
                except concurrent.futures.process.BrokenProcessPool:
                    broken.append(job)
        if broken:
            queue = _after_death(broken, done, store, max_retries, plan)


def _after_death(broken: list[Job], done, store, max_retries, plan) -> list[Job]:
    """Release the claims of the runs a dead worker left; the ones to hand out again."""
    again = []
    with Store(store) as opened:
        for job in broken:
            started = opened.release_claim(job.claim) > 0  # it was running when the worker died
            job_next = _retry(job) if started else job
            if _attempt(job_next) > max_retries:
                reason = f"its worker died {_attempt(job_next)} times (max_retries={max_retries})"
                done(job, _given_up(job_next, plan, reason))
            else:
                again.append(job_next)
    return again


def _run_ray(jobs, done, store, workers, ray_address, max_retries, plan) -> None:
    """One Ray task per run (num_cpus=1); a dead worker's task is released and resubmitted."""
    import ray

    started_here = False
    if not ray.is_initialized():
        if ray_address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute_job)
        running = {remote.remote(job): job for job in jobs}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for reference in ready:
                job = running.pop(reference)
                try:
                    done(job, ray.get(reference))
                except (
                    ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError,
                    ray.exceptions.RayActorError,
                    ray.exceptions.LocalRayletDiedError,
                ):
                    for retry in _after_death([job], done, store, max_retries, plan):
                        running[remote.remote(retry)] = retry
    finally:
        if started_here:
            ray.shutdown()
