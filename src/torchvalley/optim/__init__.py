"""Optimizers. Importing this package registers every optimizer torchvalley ships.

The order matters: wrappers validate their example base optimizers (``"sgd"``) at registration,
so the baselines are registered first.
"""

# isort: off
from torchvalley.optim import torch_baselines as torch_baselines
from torchvalley.optim import sam as sam
from torchvalley import dynamics as dynamics

# isort: on
from torchvalley.optim.sam import SAM as SAM
from torchvalley.optim.sam import normalization_parameters as normalization_parameters
