"""Optimizers. Importing this package registers every optimizer torchvalley ships.

The order matters: wrappers validate their example base optimizers (``"sgd"``) at registration,
so the baselines (and the Riemannian optimizers, Riemannian SAM's base) are registered first.
"""

# isort: off
from torchvalley.optim import torch_baselines as torch_baselines
from torchvalley.optim import riemannian as riemannian
from torchvalley.optim import sam as sam
from torchvalley.optim import fgsgd as fgsgd
from torchvalley import dynamics as dynamics

# isort: on
from torchvalley.optim.riemannian import RiemannianAdagrad as RiemannianAdagrad
from torchvalley.optim.riemannian import RiemannianAdam as RiemannianAdam
from torchvalley.optim.riemannian import RiemannianSGD as RiemannianSGD
from torchvalley.optim.sam import SAM as SAM
from torchvalley.optim.sam import normalization_parameters as normalization_parameters
