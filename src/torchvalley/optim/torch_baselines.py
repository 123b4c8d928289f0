"""torch.optim's SGD, Adam and AdamW as registry entries: the baselines every method is
compared against. The classes are torch's own; the registry adds validation (torch accepts
``lr=nan``) and the capability record."""

from __future__ import annotations

import torch

from torchvalley.registry import Capabilities, Hyperparameter, register_optimizer

#: ``maximize`` and ``foreach``, as torch's optimizers have them.
COMMON_FLAGS = (
    Hyperparameter("maximize", "bool", False, "maximize the objective instead of minimizing"),
    Hyperparameter(
        "foreach",
        "optional_bool",
        None,
        "multi-tensor (True) or per-tensor (False) path; None lets torch choose",
    ),
)

#: torch.optim.SGD's hyperparameters (shared with the optimizers that equal it on Euclidean
#: parameters, e.g. ``rsgd``).
SGD_HYPERPARAMETERS = (
    Hyperparameter("lr", "non_negative", 1e-3, "learning rate"),
    Hyperparameter("momentum", "unit_interval_open", 0.0, "heavy-ball momentum factor"),
    Hyperparameter("dampening", "unit_interval", 0.0, "dampening of the momentum"),
    Hyperparameter("weight_decay", "non_negative", 0.0, "L2 penalty added to the gradient"),
    Hyperparameter("nesterov", "bool", False, "Nesterov momentum"),
)

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

_ADAM_HYPERPARAMETERS = (
    Hyperparameter("lr", "non_negative", 1e-3, "learning rate"),
    Hyperparameter("betas", "betas", (0.9, 0.999), "decay rates of the two moment estimates"),
    Hyperparameter("eps", "non_negative", 1e-8, "added to the denominator"),
    Hyperparameter("amsgrad", "bool", False, "use the running maximum of the second moment"),
)

register_optimizer(
    "adam",
    torch.optim.Adam,
    capabilities=_BASELINE,
    hyperparameters=(
        *_ADAM_HYPERPARAMETERS,
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
        *_ADAM_HYPERPARAMETERS,
        Hyperparameter("weight_decay", "non_negative", 1e-2, "decoupled weight decay"),
        *COMMON_FLAGS,
    ),
    summary="Adam with decoupled weight decay (torch.optim.AdamW)",
    family="baseline",
    paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
    example={"lr": 1e-3, "weight_decay": 0.01},
    group_example={"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 0.1},
)
