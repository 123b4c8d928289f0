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

# ---------------------------------------------------------------------------- sharpness-aware
import dataclasses  # noqa: E402

from torchvalley.optim.sam import SAM  # noqa: E402


def _sam_hyperparameters(**defaults: object) -> tuple[Hyperparameter, ...]:
    """:attr:`SAM.HYPERPARAMETERS` with an entry's own defaults (one declaration)."""
    return tuple(
        dataclasses.replace(h, default=defaults[h.name]) if h.name in defaults else h
        for h in SAM.HYPERPARAMETERS
    )


def _sam_preset(**fixed: object):
    """A factory building :class:`SAM` with ``fixed`` arguments (overridable) preset."""

    def factory(params, **hyperparameters):
        return SAM(params, **{**fixed, **hyperparameters})

    return factory


_SAM = Capabilities(
    needs_closure=True, passes_per_step=2, wraps_base=True, separable=False, accepts_model=True
)

# name, fixed constructor arguments, default rho (ASAM and SAM-ON work at larger radii), summary,
# paper. Each entry's example uses its default rho; the second group takes a larger one.
for _name, _fixed, _rho, _summary, _paper in (
    (
        "sam",
        {},
        0.05,
        "sharpness-aware minimization over any base optimizer",
        "Foret, Kleiner, Mobahi, Neyshabur, Sharpness-Aware Minimization, ICLR 2021",
    ),
    (
        "asam",
        {"ascent": "asam"},
        0.5,
        "adaptive SAM: scale-invariant ascent T = |w| + eta (official element-wise)",
        "Kwon, Kim, Park, Choi, ASAM, ICML 2021",
    ),
    (
        "fisher_sam",
        {"ascent": "fisher"},
        0.1,
        "Fisher SAM: ascent in the diagonal-Fisher ellipsoid (eps^T F eps = gamma^2)",
        "Kim, Li, Hu, Hospedales, Fisher SAM, ICML 2022",
    ),
    (
        "sam_on",
        {"perturb": "norm"},
        0.5,
        "SAM-ON: perturb only normalization-layer affine parameters (any ascent)",
        "Mueller, Vlaar, Rolnick, Hein, Normalization Layers Are All That SAM Needs, NeurIPS 2023",
    ),
    (
        "monge_sam",
        {"ascent": "monge"},
        0.05,
        "Monge SAM: reparametrization-invariant ascent under G = I + g g^T",
        "Jacobsen & Arvanitidis, Monge SAM, 2025 (arXiv 2502.08448)",
    ),
):
    register_optimizer(
        _name,
        _sam_preset(**_fixed) if _fixed else SAM,
        capabilities=_SAM,
        hyperparameters=_sam_hyperparameters(rho=_rho, **_fixed),
        summary=_summary,
        family="sharpness-aware",
        paper=_paper,
        example={"base_optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "rho": _rho},
        group_example={"rho": 10 * _rho if _rho < 0.5 else 4 * _rho, "lr": 0.01},
    )

# Riemannian SAM's named instance: Lorentz SAM over Riemannian SGD (registered above).
register_optimizer(
    "lorentz_sam",
    _sam_preset(ascent="riemannian", base_optimizer="rsgd"),
    capabilities=dataclasses.replace(_SAM, manifold_aware=True),
    hyperparameters=_sam_hyperparameters(rho=0.05, ascent="riemannian", base_optimizer="rsgd"),
    summary=(
        "Riemannian SAM (Lorentz SAM): metric-norm ascent by retraction, gradient "
        "transported back; Riemannian SGD base"
    ),
    family="sharpness-aware",
    paper=(
        "Yun & Yang, Riemannian SAM: Sharpness-Aware Minimization on Riemannian Manifolds, "
        "NeurIPS 2023"
    ),
    example={"base_optimizer": "rsgd", "lr": 0.05, "momentum": 0.9, "rho": 0.05},
    group_example={"rho": 0.5, "lr": 0.01},
)
from torchvalley.optim import fgsgd as _fgsgd  # noqa: E402,F401

# isort: on

# ----------------------------------------------------------------------------------- Langevin
# isort: off
import dataclasses  # noqa: E402

from torchvalley.dynamics.langevin import LangevinSplitting  # noqa: E402
from torchvalley.dynamics.partitions import sampler_factory  # noqa: E402

# isort: on

_NOISY = Capabilities(noisy=True, separable=False)
_NOISY_WITH_MODEL = Capabilities(noisy=True, separable=False, accepts_model=True)
_MOMENTUM_SETTINGS = ("lr", "friction", "temperature", "mass", "scheme", "seed")
_THERMOSTAT_SETTINGS = ("thermostat_init", "thermostat_coupling", "noise_scale")
_PARTITION_MODEL = Hyperparameter(
    "model", "any", None, "the module: a flat param list is partitioned per layer"
)
_PARTITIONED_PAPER = (
    "Leimkuhler, Matthews & Vlaar, Partitioned integrators for thermodynamic parameterization "
    "of neural networks, Foundations of Data Science 2019"
)
_LANGEVIN_EXAMPLE = {"lr": 0.1, "friction": 1.0, "temperature": 1e-4, "seed": 0}
_LANGEVIN_GROUP_EXAMPLE = {"lr": 0.05, "friction": 3.0, "temperature": 1e-2, "mass": 2.0}


def _partitioned(choices: tuple[str, ...], *names: str) -> tuple[Hyperparameter, ...]:
    """A partitioned entry's settings: the dynamics among ``choices`` (if any), ``model``."""
    (dynamics,) = LangevinSplitting.declared("dynamics")
    head = (dataclasses.replace(dynamics, choices=choices),) if choices else ()
    return (*head, *LangevinSplitting.declared(*names), _PARTITION_MODEL)


register_optimizer(
    "sgld",
    sampler_factory("sgld", "sgld"),
    capabilities=_NOISY,
    hyperparameters=LangevinSplitting.declared(
        "lr", "temperature", "seed", "track_configurational"
    ),
    summary="stochastic gradient Langevin dynamics: theta -= h g + sqrt(2 h tau) R",
    family="langevin",
    paper="Welling & Teh, Bayesian learning via stochastic gradient Langevin dynamics, ICML 2011",
    example={"lr": 0.05, "temperature": 1e-4},
    group_example={"lr": 0.01, "temperature": 1e-2},
)
register_optimizer(
    "baoab",
    sampler_factory("baoab", "langevin"),
    capabilities=_NOISY,
    hyperparameters=LangevinSplitting.declared(
        *_MOMENTUM_SETTINGS, "track_configurational", "fused"
    ),
    summary="underdamped Langevin, BAOAB splitting (any scheme string), one gradient per step",
    family="langevin",
    paper=(
        "Leimkuhler & Matthews, Rational construction of stochastic numerical methods for "
        "molecular sampling, AMRX 2013"
    ),
    example=_LANGEVIN_EXAMPLE,
    group_example={**_LANGEVIN_GROUP_EXAMPLE, "scheme": "OBABO"},
)
register_optimizer(
    "sghmc",
    sampler_factory("sghmc", "sghmc"),
    capabilities=_NOISY,
    hyperparameters=LangevinSplitting.declared(
        "lr", "friction", "temperature", "mass", "seed", "track_configurational"
    ),
    summary="stochastic gradient HMC (Euler-Maruyama friction/noise, heavy-ball form)",
    family="langevin",
    paper="Chen, Fox & Guestrin, Stochastic gradient Hamiltonian Monte Carlo, ICML 2014",
    example=_LANGEVIN_EXAMPLE,
    group_example=_LANGEVIN_GROUP_EXAMPLE,
)
register_optimizer(
    "sgnht",
    sampler_factory("sgnht", "adaptive"),
    capabilities=_NOISY,
    hyperparameters=LangevinSplitting.declared(
        "lr",
        "temperature",
        "mass",
        "scheme",
        "seed",
        "track_configurational",
        *_THERMOSTAT_SETTINGS,
    ),
    summary="SG Nose-Hoover thermostat / adaptive Langevin (ACDEDCAB), one thermostat per group",
    family="langevin",
    paper=(
        "Ding, Fang, Babbush, Chen, Skeel & Neven, Bayesian sampling using stochastic gradient "
        "thermostats, NeurIPS 2014"
    ),
    example={"lr": 0.1, "temperature": 1e-4, "noise_scale": 0.01},
    group_example={
        "lr": 0.05,
        "temperature": 1e-2,
        "mass": 2.0,
        "thermostat_init": 1.0,
        "thermostat_coupling": 0.5,
        "noise_scale": 0.1,
    },
)
register_optimizer(
    "lala",
    sampler_factory("lala", "langevin", partition=("langevin", "langevin")),
    capabilities=_NOISY_WITH_MODEL,
    hyperparameters=_partitioned((), *_MOMENTUM_SETTINGS, "track_configurational"),
    summary="layer-wise Langevin (LaLa): each param group its own friction/temperature; with "
    "model=, one group per layer",
    family="langevin",
    paper=_PARTITIONED_PAPER,
    example=_LANGEVIN_EXAMPLE,
    group_example={**_LANGEVIN_GROUP_EXAMPLE, "scheme": "OBABO"},
)
register_optimizer(
    "adlala",
    sampler_factory(
        "adlala", "langevin", partition=("adaptive", "langevin"), dynamics_per_group=True
    ),
    capabilities=_NOISY_WITH_MODEL,
    hyperparameters=_partitioned(
        ("langevin", "adaptive"),
        *_MOMENTUM_SETTINGS,
        "track_configurational",
        *_THERMOSTAT_SETTINGS,
    ),
    summary="AdLaLa: adaptive Langevin on some partitions (with model=: the first layer), "
    "Langevin on the rest",
    family="langevin",
    paper=_PARTITIONED_PAPER,
    example={**_LANGEVIN_EXAMPLE, "noise_scale": 0.01},
    group_example={**_LANGEVIN_GROUP_EXAMPLE, "dynamics": "adaptive"},
)
register_optimizer(
    "lol",
    sampler_factory(
        "lol", "langevin", partition=("langevin", "overdamped"), dynamics_per_group=True
    ),
    capabilities=_NOISY_WITH_MODEL,
    hyperparameters=_partitioned(
        ("langevin", "overdamped"), *_MOMENTUM_SETTINGS, "track_configurational"
    ),
    summary="LOL: Langevin on some partitions (with model=: the first layer), overdamped (BAOAB "
    "limit) Langevin on the rest",
    family="langevin",
    paper=_PARTITIONED_PAPER,
    example=_LANGEVIN_EXAMPLE,
    group_example={**_LANGEVIN_GROUP_EXAMPLE, "dynamics": "overdamped"},
)
