"""Benchmark harness: tasks, runner, results store, report."""
