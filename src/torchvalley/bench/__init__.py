"""Benchmark harness: tasks, runner, results store, report.

* :mod:`~torchvalley.bench.task` (``Task``, ``TaskData``, the registry; imports no task) and
  :mod:`~torchvalley.bench.tasks` (the built-in tasks, one module per family);
* :mod:`~torchvalley.bench.specs` (``"name:key=value"`` specs, canonical labels) and
  :mod:`~torchvalley.bench.run_config` (``RunConfig``: a run's identity, named once);
* :mod:`~torchvalley.bench.runner` (``run_one``, ``run_sweep``), :mod:`~torchvalley.bench.store`
  (SQLite or PostgreSQL through SQLAlchemy, resumable, shared by concurrent sweeps),
  :mod:`~torchvalley.bench.report`;
* :mod:`~torchvalley.bench.names` (the CLI's choices, light to import) and
  :mod:`~torchvalley.bench.demo` (the demo suites);
* :mod:`~torchvalley.bench.parallel` (``run_parallel``: local worker processes or Ray),
  :mod:`~torchvalley.bench.holdout` (``<task>@validation`` splits) and
  :mod:`~torchvalley.bench.tune` (fair tuning with Optuna, the tuning report).
"""
