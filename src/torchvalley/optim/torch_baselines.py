"""The hyperparameter declarations of torch.optim's SGD, Adam and AdamW: the baselines every
method is compared against. The classes are torch's own; :mod:`torchvalley.catalog` registers
them with these records, which add validation (torch accepts ``lr=nan``)."""

from __future__ import annotations

from torchvalley.registry import Hyperparameter

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

#: torch.optim.Adam's and AdamW's shared hyperparameters (weight decay differs).
ADAM_HYPERPARAMETERS = (
    Hyperparameter("lr", "non_negative", 1e-3, "learning rate"),
    Hyperparameter("betas", "betas", (0.9, 0.999), "decay rates of the two moment estimates"),
    Hyperparameter("eps", "non_negative", 1e-8, "added to the denominator"),
    Hyperparameter("amsgrad", "bool", False, "use the running maximum of the second moment"),
)
