"""Fault injection for the parallel-sweep tests: a worker that dies in the middle of a run.

:class:`KillOnce` is an epoch callback (see :data:`torchvalley.bench.runner.EpochCallback`)
that, the first time any process reaches ``epoch`` of a run, creates ``marker`` and kills its
own process with ``SIGKILL`` (no clean-up, no exception: what the OOM killer or a lost node
does). Later runs, in any process, find the marker and go on. It is a plain picklable object,
so it reaches local worker processes and Ray workers alike.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path
from typing import Any

__all__ = ["KillOnce"]


@dataclasses.dataclass(frozen=True)
class KillOnce:
    """Kill the process the first time a run reaches ``epoch`` (once across all processes).

    Attributes:
        marker: a file path; its existence means "already killed once".
        epoch: the epoch at whose end the process dies (1: after the first training epoch,
            so the store holds a partial run).
    """

    marker: str
    epoch: int = 1

    def __call__(self, context: Any) -> None:
        if context.epoch != self.epoch:
            return None
        try:
            descriptor = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None  # somebody died already
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        os.kill(os.getpid(), signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        return None  # pragma: no cover - not reached

    @property
    def fired(self) -> bool:
        """Whether some process has been killed by this fault."""
        return Path(self.marker).exists()
