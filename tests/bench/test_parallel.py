"""Parallel sweeps: local worker processes and a local Ray instance store exactly what a serial
sweep stores; a killed worker's run is redone, not lost and not duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchvalley.bench.parallel import run_parallel
from torchvalley.bench.runner import run_sweep
from torchvalley.bench.store import Store
from torchvalley.testing.faults import KillOnce

TASKS = ["quadratic"]
SPECS = ["adam:lr=0.01", "sgd:lr=0.05,momentum=0.9"]
SEEDS = [0]
EPOCHS = 2


def _stored(path: Path) -> dict:
    """(spec, seed) -> the numbers of every epoch, timing columns left out."""
    with Store(path) as store:
        runs = store.runs()
        table = {}
        for run in runs:
            epochs = [
                (e["epoch"], e["train_loss"], e["train_metric"], e["test_loss"], e["test_metric"])
                for e in store.epochs(run["id"])
            ]
            table[(run["spec_label"], run["seed"])] = (run["status"], run["test_metric"], epochs)
    return table, len(runs)


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("serial") / "serial.db"
    run_sweep(TASKS, SPECS, SEEDS, epochs=EPOCHS, store=path, progress=False, warmup=False)
    return _stored(path)


def test_two_local_workers_with_a_killed_worker_store_what_the_serial_sweep_stores(
    serial, tmp_path
):
    """One worker is SIGKILLed after the first epoch of a run: that run is released and redone,
    every run is stored once with every epoch, and the numbers equal the serial sweep's."""
    path = tmp_path / "killed.db"
    fault = KillOnce(str(tmp_path / "killed-once"), epoch=1)
    results = run_parallel(
        TASKS,
        SPECS,
        SEEDS,
        epochs=EPOCHS,
        store=str(path),
        workers=2,
        progress=False,
        callbacks=[fault],
    )
    assert fault.fired  # a worker really died in the middle of a run
    assert [r.status for r in results] == ["finished"] * len(SPECS) * len(SEEDS)
    assert [(r.spec_label, r.seed) for r in results] == [
        (spec, seed) for spec in SPECS for seed in SEEDS
    ]
    assert _stored(path) == serial  # bit for bit: same losses and metrics at every epoch
    again = run_parallel(TASKS, SPECS, SEEDS, epochs=EPOCHS, store=str(path), progress=False)
    assert {r.status for r in again} == {"skipped"}  # resumable; nothing handed out again


def test_parallel_sweep_refuses_what_workers_cannot_share(tmp_path):
    with pytest.raises(ValueError, match="store"):
        run_parallel(TASKS, SPECS, SEEDS, store=":memory:")
    with pytest.raises(ValueError, match="workers"):
        run_parallel(TASKS, SPECS, SEEDS, store=str(tmp_path / "x.db"), workers=0)
    with pytest.raises(ValueError, match="cannot be built"):
        run_parallel(TASKS, ["sgd:lr=0.1,nesterov=True"], SEEDS, store=str(tmp_path / "y.db"))


@pytest.mark.slow  # ~80 s on the shared 2-core machine: Ray's start-up dominates
def test_local_ray_instance_stores_what_the_serial_sweep_stores(serial, tmp_path):
    """A private local Ray instance on 2 CPUs, one worker killed mid-run: same numbers."""
    pytest.importorskip("ray", reason="ray (the cluster extra) not installed")
    path = tmp_path / "ray.db"
    fault = KillOnce(str(tmp_path / "ray-killed-once"), epoch=1)
    results = run_parallel(
        TASKS,
        SPECS,
        SEEDS,
        epochs=EPOCHS,
        store=str(path),
        workers=2,
        ray="local",
        progress=False,
        callbacks=[fault],
    )
    assert fault.fired
    assert [r.status for r in results] == ["finished"] * len(SPECS) * len(SEEDS)
    assert _stored(path) == serial
