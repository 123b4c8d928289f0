"""The catalog: every optimizer torchvalley ships, registered in one place.

The algorithm modules define classes and their hyperparameter declarations and register
nothing; this module imports them and adds one :func:`~torchvalley.registry.register_optimizer`
call per entry, in the order of dependency (baselines, Riemannian, the sharpness-aware family,
FG-SGD, the Langevin family), so that no import order elsewhere matters. ``import torchvalley``
imports it once. Adding an optimizer is one module plus one entry here
(``docs/adding-an-optimizer.md``).
"""

from __future__ import annotations

import torch

from torchvalley.optim.torch_baselines import (
    ADAM_HYPERPARAMETERS,
    COMMON_FLAGS,
    SGD_HYPERPARAMETERS,
)
from torchvalley.registry import Capabilities, Hyperparameter, register_optimizer

# ---------------------------------------------------------------------------------- baselines
_BASELINE = Capabilities(foreach=True, separable=True)

register_optimizer(
    "sgd",
    torch.optim.SGD,
    capabilities=_BASELINE,
    hyperparameters=(*SGD_HYPERPARAMETERS, *COMMON_FLAGS),
    summary="stochastic gradient descent with (Nesterov) momentum (torch.optim.SGD)",
    family="baseline",
    paper="Robbins & Monro 1951; Polyak 1964; Sutskever et al., ICML 2013",
    example={"lr": 0.05, "momentum": 0.9},
    group_example={"lr": 0.01, "momentum": 0.5, "weight_decay": 0.01},
)

register_optimizer(
    "adam",
    torch.optim.Adam,
    capabilities=_BASELINE,
    hyperparameters=(
        *ADAM_HYPERPARAMETERS,
        Hyperparameter("weight_decay", "non_negative", 0.0, "L2 penalty added to the gradient"),
        *COMMON_FLAGS,
    ),
    summary="Adam (torch.optim.Adam)",
    family="baseline",
    paper="Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015",
    example={"lr": 1e-3},
    group_example={"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.01},
)

register_optimizer(
    "adamw",
    torch.optim.AdamW,
    capabilities=_BASELINE,
    hyperparameters=(
        *ADAM_HYPERPARAMETERS,
        Hyperparameter("weight_decay", "non_negative", 1e-2, "decoupled weight decay"),
        *COMMON_FLAGS,
    ),
    summary="Adam with decoupled weight decay (torch.optim.AdamW)",
    family="baseline",
    paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
    example={"lr": 1e-3, "weight_decay": 0.01},
    group_example={"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.1},
)

# ------------------------------------------------------- the families (classes register below)
# isort: off
from torchvalley.optim import riemannian as _riemannian  # noqa: E402,F401
from torchvalley.optim import sam as _sam  # noqa: E402,F401
from torchvalley.optim import fgsgd as _fgsgd  # noqa: E402,F401
from torchvalley import dynamics as _dynamics  # noqa: E402,F401

# isort: on
