"""Launch a script as a small gloo process group on this machine, for DDP tests.

Each rank runs ``python <script> --ddp-worker --world-size W --rank r --out <folder>`` with
``MASTER_ADDR=127.0.0.1`` and a free port, and is expected to ``torch.save`` its results to
``<folder>/rank{r}.pt``. Subprocesses rather than ``torch.multiprocessing.spawn``: a test module
imported by pytest (importlib mode) cannot be re-imported by spawned children by name, while a
script path always can.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["free_port", "launch_workers"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_workers(
    script: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    world_size: int = 2,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> list[Any]:
    """Run ``script`` as ``world_size`` ranks and return each rank's saved results.

    Raises:
        AssertionError: if a rank exits non-zero (with the end of its output).
    """
    out = Path(out)
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, str(script), "--ddp-worker", "--world-size", str(world_size)]
    workers = [
        subprocess.Popen(
            [*command, "--rank", str(rank), "--out", str(out), *extra_args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(world_size)
    ]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for worker in workers:  # only the processes started here
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for rank, worker in enumerate(workers):
        assert worker.returncode == 0, f"rank {rank} failed:\n{logs[rank][-4000:]}"
    return [torch.load(out / f"rank{rank}.pt") for rank in range(world_size)]
