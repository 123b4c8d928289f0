"""Shared test set-up."""

import os

import torch

# Under pytest-xdist each worker is a process; one intra-op thread each avoids oversubscribing
# the 2-core CI machine (which makes timing-free tests slow, not wrong).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
