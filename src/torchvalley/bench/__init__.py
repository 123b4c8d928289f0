"""Benchmark harness: tasks, runner, results store, report.

* :mod:`~torchvalley.bench.task` (``Task``, ``TaskData``, the registry; imports no task) and
  :mod:`~torchvalley.bench.tasks` (the built-in tasks, one module per family);
* :mod:`~torchvalley.bench.specs` (``"name:key=value"`` specs, canonical labels) and
  :mod:`~torchvalley.bench.run_config` (``RunConfig``: a run's identity, named once);
* :mod:`~torchvalley.bench.runner` (``run_one``, ``run_sweep``), :mod:`~torchvalley.bench.store`
  (SQLite, resumable, shared by concurrent sweeps), :mod:`~torchvalley.bench.report`;
* :mod:`~torchvalley.bench.names` (the CLI's choices, light to import) and
  :mod:`~torchvalley.bench.demo` (the demo suites).
"""
