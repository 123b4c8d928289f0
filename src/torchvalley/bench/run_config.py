"""The identity of a benchmark run, named once: :class:`RunConfig` and its :attr:`~RunConfig.key`.

A run's numbers are determined by the task, the optimizer spec (its canonical label), the model
seed, the data seed, the number of epochs and the batch size. :class:`RunConfig` holds exactly
these (plus the optimizer name and hyperparameters the label stands for, which the store keeps
for reading); the runner builds one, passes it whole to :meth:`Store.begin_run
<torchvalley.bench.store.Store.begin_run>` and embeds it in its :class:`RunResult
<torchvalley.bench.runner.RunResult>`.

Example:
    >>> config = RunConfig("toy", "sgd", "sgd:lr=0.1", {"lr": 0.1}, 0, 0, 5, 32)
    >>> config.key == make_run_key("toy", "sgd:lr=0.1", 0, 0, 5, 32)
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["RunConfig", "make_run_key"]


def make_run_key(
    task: str, spec_label: str, seed: int, data_seed: int, epochs: int, batch_size: int
) -> str:
    """The identity of a run: a SHA-256 of the canonical JSON of what determines its numbers.

    ``spec_label`` is canonical (hyperparameters sorted, defaults dropped), so equal specs give
    equal keys.
    """
    canonical = json.dumps(
        {
            "task": task,
            "spec": spec_label,
            "seed": int(seed),
            "data_seed": int(data_seed),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What determines a run's numbers (frozen; :attr:`key` is its store identity).

    Attributes:
        task: the task's registry name.
        optimizer: the optimizer's registry name.
        spec_label: the canonical spec text (:attr:`OptimizerSpec.label
            <torchvalley.bench.specs.OptimizerSpec.label>`).
        hyperparameters: the spec's hyperparameters (stored for reading; the label identifies).
        seed: model-initialisation seed.
        data_seed: data-generation seed.
        epochs: training epochs.
        batch_size: training batch size.
        legacy_labels: earlier spellings of the same spec (labels written before specs were
            canonicalised); a store that holds the run under one of them finds it.
    """

    task: str
    optimizer: str
    spec_label: str
    hyperparameters: Mapping[str, Any]
    seed: int
    data_seed: int
    epochs: int
    batch_size: int
    legacy_labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The run key (:func:`make_run_key`)."""
        return make_run_key(
            self.task, self.spec_label, self.seed, self.data_seed, self.epochs, self.batch_size
        )

    @property
    def legacy_keys(self) -> tuple[str, ...]:
        """Run keys under the :attr:`legacy_labels` (other than :attr:`key`)."""
        keys = (
            make_run_key(self.task, label, self.seed, self.data_seed, self.epochs, self.batch_size)
            for label in self.legacy_labels
            if label != self.spec_label
        )
        return tuple(dict.fromkeys(keys))
