"""Validation splits: a task's training set split into training and held-out validation data.

Tuning must never look at the test set. :func:`validation_task` derives, from a registered task
``name``, the task ``name@validation``: the same model, loss and metric, whose *training* data
are the base task's training set minus a held-out part and whose *test* data are that held-out
part (the validation set). The base task's test set is not touched, so a configuration chosen
on ``name@validation`` and then re-run on ``name`` reports test numbers that played no part in
choosing it. The base task itself is unchanged (its numbers stay what they were).

The held-out part is a fixed random subset of :data:`VALIDATION_FRACTION` of the training
examples (at least one; at least one left to train on), drawn with a generator seeded from
the data seed, so ``name@validation`` is as reproducible as ``name``.

Example:
    >>> from torchvalley.bench.tasks import get_task
    >>> held_out = get_task("quadratic@validation")
    >>> base = get_task("quadratic").data()
    >>> data = held_out.data()
    >>> len(data.train[0]) + len(data.test[0]) == len(base.train[0])
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import torch

from torchvalley.bench.task import Task, TaskData, get_task, register_task

__all__ = ["VALIDATION_FRACTION", "VALIDATION_SUFFIX", "split_validation", "validation_task"]

#: The suffix of a derived validation task's name.
VALIDATION_SUFFIX = "@validation"
#: The share of the training set held out for validation.
VALIDATION_FRACTION = 0.2


def split_validation(
    data: TaskData, data_seed: int, fraction: float = VALIDATION_FRACTION
) -> TaskData:
    """``TaskData(train=kept training examples, test=held-out validation examples)``."""
    inputs, targets = data.train
    count = inputs.shape[0]
    if count < 2:
        raise ValueError(f"cannot hold out validation data from {count} training example(s)")
    held = min(max(1, round(fraction * count)), count - 1)
    digest = hashlib.sha256(f"torchvalley-validation-{int(data_seed)}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    order = torch.randperm(count, generator=generator)
    # Sorted indices keep the kept examples in their original order.
    keep, hold = order[held:].sort().values, order[:held].sort().values
    return TaskData(train=(inputs[keep], targets[keep]), test=(inputs[hold], targets[hold]))


def _load(base_name: str, data_seed: int) -> TaskData:
    return split_validation(get_task(base_name).data(data_seed), data_seed)


def validation_task(task: Task | str) -> Task:
    """The task ``<name>@validation`` (registered on first use; the same object afterwards)."""
    from torchvalley.bench import task as task_module

    base_name = task if isinstance(task, str) else task.name
    base_name = base_name.removesuffix(VALIDATION_SUFFIX)
    name = base_name + VALIDATION_SUFFIX
    if name in task_module._TASKS:
        return task_module._TASKS[name]
    base = get_task(base_name)
    derived = dataclasses.replace(
        base,
        name=name,
        description=f"{base.description}; validation split ({VALIDATION_FRACTION:.0%} of train)",
        load_data=functools.partial(_load, base_name),
        info={**base.info, "validation_of": base_name, "validation_fraction": VALIDATION_FRACTION},
    )
    return register_task(derived)
