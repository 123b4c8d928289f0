"""Benchmark tasks: a model, a loss, offline data, a metric and a target for time-to-target.

Data and model are seeded separately: ``task.data(data_seed)`` always generates the same data
set for the same ``data_seed``, and ``task.model(seed)`` the same initial weights for the same
``seed``, without touching the global RNG state of the caller.

Tasks register themselves with :func:`register_task`; later issues add tasks the same way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["Task", "TaskData", "get_task", "list_tasks", "register_task", "task_entries"]


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Train and test tensors: ``(inputs, targets)`` each, on the CPU."""

    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Task:
    """A benchmark task.

    Attributes:
        name: registry name, e.g. ``"mnist1d_cnn"``.
        description: one line.
        model_name: what the model is (``"1-D CNN 32-32-32 + BatchNorm"``).
        build_model: ``() -> nn.Module``; called under a seeded RNG by :meth:`model`.
        load_data: ``(data_seed) -> TaskData``; must not download anything.
        loss_fn: ``(outputs, targets) -> scalar``, the mean loss over the batch.
        metric_name: ``"accuracy"`` or e.g. ``"excess_loss"``.
        metric_fn: ``(outputs, targets) -> float`` over a whole evaluation set.
        higher_is_better: direction of the metric.
        target: the test-metric value that counts as "reached" for time-to-target.
        batch_size: training batch size.
        default_epochs: epochs of a standard run.
        default_data_seed: the data seed used unless one is given.
        reference: where the task comes from (paper / data set).
        info: task-specific facts (e.g. the quadratic's Hessian eigenvalues).
    """

    name: str
    description: str
    model_name: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[int], TaskData]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric_name: str
    metric_fn: Callable[[torch.Tensor, torch.Tensor], float]
    higher_is_better: bool
    target: float
    batch_size: int
    default_epochs: int
    default_data_seed: int = 0
    reference: str = ""
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same ``seed`` gives the same weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build_model()

    def data(self, data_seed: int | None = None) -> TaskData:
        """The task's data for ``data_seed`` (default: ``default_data_seed``), cached."""
        seed = self.default_data_seed if data_seed is None else int(data_seed)
        return _cached_data(self.name, seed)

    def reached(self, value: float) -> bool:
        """Whether a test-metric value meets the target."""
        return value >= self.target if self.higher_is_better else value <= self.target


_TASKS: dict[str, Task] = {}


@functools.lru_cache(maxsize=16)
def _cached_data(name: str, data_seed: int) -> TaskData:
    return get_task(name).load_data(data_seed)


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add a task to the registry."""
    if task.name in _TASKS and not replace:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    _cached_data.cache_clear()
    return task


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` listing the known tasks otherwise."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; registered: {', '.join(sorted(_TASKS))}"
        ) from None


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_TASKS)


def task_entries() -> list[Task]:
    """All registered tasks, sorted by name."""
    return [_TASKS[name] for name in sorted(_TASKS)]


# The built-in tasks register themselves on import (kept in their own module for size).
from torchvalley.bench import builtin_tasks  # noqa: E402,F401
