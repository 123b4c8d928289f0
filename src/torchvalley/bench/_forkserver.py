"""What the forkserver of a parallel sweep imports before it forks any worker.

One torch intra-op thread is set *first*, before anything computes: a forkserver that ran a
parallel region (an OpenMP or MKL thread team) would hand its workers a thread pool whose
threads do not exist in the child, and the first matrix product there waits forever (seen with
``digits_mlp``). Then the harness and the tasks are imported once, so workers start at once.
Workers set their own thread count per run.
"""

import torch

torch.set_num_threads(1)

import torchvalley.bench.parallel  # noqa: E402, F401
import torchvalley.bench.tasks  # noqa: E402, F401
