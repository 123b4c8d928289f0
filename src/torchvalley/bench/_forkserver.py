"""What the forkserver of a parallel sweep imports before it forks any worker.

One torch intra-op thread is set *first*, before anything computes: a forkserver that ran a
parallel region (an OpenMP or MKL thread team) would hand its workers a thread pool whose
threads do not exist in the child, and the first matrix product there waits forever (seen with
``digits_mlp``). Then the harness, the tasks and the store's SQL layer are imported once, and
for each task named in ``TORCHVALLEY_FORKSERVER_TASKS`` (``name:data_seed,...``, set by the
sweep that starts the server) the data are loaded and a throw-away model takes a few steps
(:func:`~torchvalley.bench.runner.warm_up`), so workers start with their libraries imported,
their data in memory and the first pass's one-off costs paid, instead of paying them each.
Workers set their own thread count per run.
"""

import contextlib
import os

import torch

torch.set_num_threads(1)

import torchvalley.bench.parallel  # noqa: E402, F401
from torchvalley.bench.runner import warm_up  # noqa: E402
from torchvalley.bench.store import Store  # noqa: E402
from torchvalley.bench.tasks import get_task  # noqa: E402

Store(":memory:").close()  # imports SQLAlchemy and its SQLite dialect once, here

for _item in filter(None, os.environ.get("TORCHVALLEY_FORKSERVER_TASKS", "").split(",")):
    _name, _, _seed = _item.rpartition(":")
    with contextlib.suppress(Exception):  # a worker reports what fails, with its run
        get_task(_name).data(int(_seed))
        # One-off costs of the first forward and backward pass, paid here once (one thread).
        warm_up(get_task(_name), data_seed=int(_seed))
