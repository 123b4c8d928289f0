"""A benchmark task (model, loss, offline data, metric, target) and the registry of tasks.

Data and model are seeded separately: ``task.data(data_seed)`` always generates the same data
set for the same ``data_seed``, and ``task.model(seed)`` the same initial weights for the same
``seed``, without touching the global RNG state of the caller.

This module imports no task. The built-in tasks live in :mod:`torchvalley.bench.tasks`, one
module per family, each registering its tasks with :func:`register_task`; the lookups here
import that package on first use, so ``get_task("mnist1d_cnn")`` works from anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "Task",
    "TaskData",
    "get_task",
    "list_tasks",
    "register_task",
    "require_extra",
    "task_entries",
]


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


def _load_builtins() -> None:
    # Importing the package registers the built-in tasks (once; Python caches the import).
    importlib.import_module("torchvalley.bench.tasks")


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` listing the known tasks otherwise."""
    _load_builtins()
    try:
        return _TASKS[name]
    except KeyError:
        if "+" in name:  # a quantized variant "<task>+<method>:w<b>a<b>"
            from torchvalley.bench.quant_study import quant_task

            return quant_task(name)
        if name.endswith("@validation"):  # a validation split "<task>@validation"
            from torchvalley.bench.holdout import validation_task

            return validation_task(name)
        raise ValueError(
            f"unknown task {name!r}; registered: {', '.join(sorted(_TASKS))}"
        ) from None


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    _load_builtins()
    return sorted(_TASKS)


def task_entries() -> list[Task]:
    """All registered tasks, sorted by name."""
    _load_builtins()
    return [_TASKS[name] for name in sorted(_TASKS)]


@contextlib.contextmanager
def require_extra(module: str, package: str, what: str, extra: str = "bench") -> Iterator[None]:
    """Turn a missing optional package into an ``ImportError`` that says what to install.

    Example:
        >>> with require_extra("sklearn", "scikit-learn", "load_digits_data"):
        ...     import sklearn  # doctest: +SKIP
    """
    try:
        yield
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != module:
            raise
        raise ImportError(
            f"{what} needs {package}, which is not installed: pip install -e '.[{extra}]' "
            f"(from the repository; or pip install {package})"
        ) from error
