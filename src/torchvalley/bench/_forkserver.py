"""What the forkserver of a parallel sweep imports before it forks any worker.

One torch intra-op thread is set *first*, before anything computes: a forkserver that ran a
parallel region (an OpenMP or MKL thread team) would hand its workers a thread pool whose
threads do not exist in the child, and the first matrix product there waits forever (seen with
``digits_mlp``). Then the harness and the tasks are imported once, and the data of the tasks
named in ``TORCHVALLEY_FORKSERVER_TASKS`` (``name:data_seed,...``, set by the sweep that starts
the server) are loaded, so workers start with their libraries imported and their data in memory
instead of importing scikit-learn and friends each (tens of seconds on a loaded machine).
Workers set their own thread count per run.
"""

import contextlib
import os

import torch

torch.set_num_threads(1)

import torchvalley.bench.parallel  # noqa: E402, F401
from torchvalley.bench.tasks import get_task  # noqa: E402

for _item in filter(None, os.environ.get("TORCHVALLEY_FORKSERVER_TASKS", "").split(",")):
    _name, _, _seed = _item.rpartition(":")
    with contextlib.suppress(Exception):  # a worker reports what fails, with its run
        get_task(_name).data(int(_seed))
