"""Beyond one process: wall-clock of a 2-worker local sweep vs the serial sweep, Ray's overhead
per run, and results-store writes per second on SQLite and PostgreSQL (issue 18).

    nice -n 5 .venv/bin/python benchmarks/parallel_sweep.py --repeats 3 --out /tmp/parallel.json

* Sweep: ``digits_mlp`` x {sgd, adam} x seeds 0..3 (8 runs, 3 epochs, one torch thread per
  run), into a fresh SQLite store each time; serial (``run_sweep``) and 2 local workers
  (``run_parallel``) interleaved round-robin, ``--repeats`` times; speed-up = serial / parallel
  wall-clock (median and each repeat). Worker start-up is included: that is what a user waits.
* Ray: the same sweep on a private local Ray instance with 2 CPUs (``ray.init`` timed
  separately) against the 2 local workers; overhead per run = (Ray wall - local wall) / runs.
* Store: ``record_epoch`` (one transaction each: an epoch row and the run's heartbeat) from
  one writer, then from 2 concurrent writer processes, on an SQLite file and on a PostgreSQL
  server started by ``pgserver`` on a Unix socket; writes/s = transactions / wall-clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from torchvalley.bench.machine import cpu_model, load_average
from torchvalley.bench.parallel import run_parallel
from torchvalley.bench.runner import run_sweep
from torchvalley.bench.store import Store

TASKS = ["digits_mlp"]
SPECS = ["sgd:lr=0.05,momentum=0.9", "adam:lr=0.003"]
SEEDS = [0, 1, 2, 3]
EPOCHS = 3
RUNS = len(TASKS) * len(SPECS) * len(SEEDS)


def _sweep(kind: str, folder: Path) -> float:
    store = str(folder / f"{kind}-{time.monotonic_ns()}.db")
    start = time.perf_counter()
    if kind == "serial":
        run_sweep(TASKS, SPECS, SEEDS, epochs=EPOCHS, store=store, progress=False)
    elif kind == "local2":
        run_parallel(TASKS, SPECS, SEEDS, epochs=EPOCHS, store=store, workers=2, progress=False)
    else:
        run_parallel(
            TASKS,
            SPECS,
            SEEDS,
            epochs=EPOCHS,
            store=store,
            workers=2,
            ray="local",
            progress=False,
        )
    return time.perf_counter() - start


_WRITER = """
import sys, time
from torchvalley.bench.run_config import RunConfig
from torchvalley.bench.store import Store
location, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Store(location) as store:
    config = RunConfig("bench-" + tag, "sgd", "sgd:lr=0.1", {"lr": 0.1}, 0, 0, count, 16)
    run_id = store.begin_run(config, metric_name="accuracy")
    start = time.perf_counter()
    for epoch in range(count):
        store.record_epoch(run_id, epoch, train_loss=0.5, test_loss=0.5, test_metric=0.9,
                           steps=epoch, wall_time_s=0.1 * epoch)
    print(time.perf_counter() - start)
"""


def _writes(location: str, writers: int, count: int) -> float:
    Store(location).close()
    tag = str(time.monotonic_ns())
    command = [sys.executable, "-c", _WRITER, location]
    processes = [
        subprocess.Popen([*command, f"{tag}-{i}", str(count)], stdout=subprocess.PIPE, text=True)
        for i in range(writers)
    ]
    start = time.perf_counter()
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    del start
    if any(p.returncode for p in processes):
        raise RuntimeError("a writer failed")
    # Concurrent writers: total transactions over the longest writer's own write loop.
    return writers * count / max(float(out.strip()) for out in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    facts = {"cpu": cpu_model(), "load_start": load_average(), "torch": torch.__version__}
    result: dict = {"facts": facts, "runs": RUNS, "epochs": EPOCHS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        kinds = ["serial", "local2"] + ([] if args.skip_ray else ["ray2"])
        if not args.skip_ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            result["ray_init_s"] = time.perf_counter() - start
        times = {kind: [] for kind in kinds}
        for _ in range(args.repeats):
            for kind in kinds:  # round-robin: a load change hits every kind alike
                times[kind].append(_sweep(kind, folder))
                print(kind, f"{times[kind][-1]:.1f} s", flush=True)
        result["sweep_s"] = times
        result["speedup_each"] = [
            s / p for s, p in zip(times["serial"], times["local2"], strict=True)
        ]
        result["speedup_median"] = statistics.median(result["speedup_each"])
        if not args.skip_ray:
            import ray

            ray.shutdown()
            per_run = [(r - p) / RUNS for r, p in zip(times["ray2"], times["local2"], strict=True)]
            result["ray_overhead_per_run_s"] = per_run
        writes = {}
        writes["sqlite_1"] = _writes(str(folder / "w.db"), 1, args.writes)
        writes["sqlite_2"] = _writes(str(folder / "w.db"), 2, args.writes)
        try:
            from torchvalley.testing.postgres import fresh_database, postgres_server

            with postgres_server(folder / "pg") as url:
                database = fresh_database(url)
                writes["postgresql_1"] = _writes(database, 1, args.writes)
                writes["postgresql_2"] = _writes(database, 2, args.writes)
        except Exception as error:  # reported, not hidden
            writes["postgresql_error"] = f"{type(error).__name__}: {error}"
        result["writes_per_s"] = writes
    facts["load_end"] = load_average()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
