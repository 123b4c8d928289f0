"""Other libraries' implementations of registered methods, timed as comparison rows.

Each :class:`Anchor` builds a zero-argument step function on a row's own tensors, with the
comparable registry entry's ``example`` hyperparameters mapped onto the library's arguments.
``benchmarks/step_overhead.py`` adds an anchor's row after the row of its registry name when the
library is installed (:data:`ANCHORS` is keyed by registry name).

A *workset* handed to a builder has ``params`` (the row's ``nn.Parameter`` list), ``ref_grads``
(the preset gradients) and ``closure()`` (re-sets the gradients, or a real forward+backward in
the training-step mode of ``step_overhead.py``).

Notes on what each row times:

* ``posteriors`` is functional: its SGLD ``update`` computes the gradient itself with
  ``torch.func``, so its row uses a linear log posterior ``<g, theta>`` whose gradient is the
  preset ``g``; that row therefore also includes one dot product and one gradient write.
* ``pytorch_optimizer``'s SAM expects the first gradient to be in ``.grad`` already, so its row
  calls the closure once before ``step(closure)`` (two closure calls per step, like ours).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from _harness import import_quietly
from torchvalley.registry import OptimizerEntry, resolve_base_optimizer

__all__ = ["ANCHORS", "ANCHOR_LIBRARIES", "Anchor", "StepFn", "optimizer_step"]

StepFn = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class Anchor:
    """Another library's implementation of a registered method, timed as a comparison row.

    Attributes:
        library: import name of the library (also its distribution name for the version).
        name: what the row calls it, e.g. ``"RiemannianSGD"``.
        build: ``build(workset, entry, foreach)`` returning a zero-argument step function
            (``workset`` as described in the module docstring);
            ``entry`` is the comparable registry entry, whose ``example`` gives the
            hyperparameters, and ``foreach`` is the forced flag (or ``None``).
        capabilities: short flags for the table.
        note: what makes it comparable, or where it differs.
    """

    library: str
    name: str
    build: Callable[[Any, OptimizerEntry, bool | None], StepFn]
    capabilities: tuple[str, ...] = ()
    note: str = ""

    @property
    def label(self) -> str:
        """``library:Class``."""
        return f"{self.library}:{self.name}"


def _pick(example: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: example[k] for k in keys if k in example}


def optimizer_step(opt: torch.optim.Optimizer, closure: Callable[[], Any] | None) -> StepFn:
    """``opt.step`` or, with a closure, ``lambda: opt.step(closure)``."""
    if closure is None:
        return opt.step
    return lambda: opt.step(closure)


def _geoopt_sgd(ws: Any, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    optim = import_quietly("geoopt.optim")
    keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    return optimizer_step(optim.RiemannianSGD(ws.params, **_pick(entry.example, keys)), None)


def _geoopt_adam(ws: Any, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    optim = import_quietly("geoopt.optim")
    keys = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    return optimizer_step(optim.RiemannianAdam(ws.params, **_pick(entry.example, keys)), None)


def _geoopt_amsgrad(ws: Any, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    # ramsgrad is radam with amsgrad=True (its registry example does not name it)
    optim = import_quietly("geoopt.optim")
    keys = ("lr", "betas", "eps", "weight_decay")
    opt = optim.RiemannianAdam(ws.params, amsgrad=True, **_pick(entry.example, keys))
    return optimizer_step(opt, None)


def _pytorch_optimizer_sgdw(ws: Any, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    po = import_quietly("pytorch_optimizer")
    kwargs = _pick(entry.example, ("lr", "momentum", "dampening", "weight_decay", "nesterov"))
    # weight_decouple=False: L2 added to the gradient, as torch.optim.SGD does.
    opt = po.SGDW(ws.params, weight_decouple=False, foreach=foreach, **kwargs)
    return optimizer_step(opt, None)


def _pytorch_optimizer_sam(ws: Any, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    po = import_quietly("pytorch_optimizer")
    example = dict(entry.example)
    base = resolve_base_optimizer(example.pop("base_optimizer", "sgd"))
    wrapper_kwargs = _pick(example, ("rho", "adaptive"))
    # the keys the wrapper does not document are the base optimizer's
    base_kwargs = {k: v for k, v in example.items() if entry.hyperparameter(k) is None}
    if foreach is not None:
        base_kwargs["foreach"] = foreach
    opt = po.SAM(ws.params, base, **wrapper_kwargs, **base_kwargs)
    closure = ws.closure

    def step() -> Any:
        # Its step(closure) is first_step, closure, second_step: it expects the first gradient
        # in .grad already, so the first pass is ours (as in its documented training loop).
        closure()
        return opt.step(closure)

    return step


def _posteriors_sgld(ws: Any, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    sgld = import_quietly("posteriors.sgmcmc.sgld")
    names = [f"p{i}" for i in range(len(ws.params))]
    grads = dict(zip(names, ws.ref_grads, strict=True))

    no_aux = torch.tensor([])

    def log_posterior(
        params: dict[str, torch.Tensor], batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # linear in the parameters, so its gradient is exactly the preset gradient
        value = torch.stack([torch.vdot(params[k].flatten(), grads[k].flatten()) for k in names])
        return value.sum(), no_aux

    kwargs = _pick(entry.example, ("lr", "temperature"))
    kwargs.setdefault("lr", 1e-3)
    transform = sgld.build(log_posterior, **kwargs)
    # posteriors' in-place update rebinds each leaf's ``.data`` to a freshly computed tensor (an
    # allocation per tensor and step, which is part of what this row times), so after the first
    # step the state no longer shares storage with ``ws.params``; only the timing matters here.
    state = transform.init({k: p.detach() for k, p in zip(names, ws.params, strict=True)})
    return lambda: transform.update(state, None, inplace=True)


# Keyed by registry name: a row is added only when that name is registered. geoopt's
# RiemannianSGD/Adam are listed both under sgd/adam (where they were first added, as the
# nearest method) and under the Riemannian family's rsgd/radam/ramsgrad.
# pytorch_optimizer's Adam, AdamW and SGD are re-exports of torch.optim's classes, so they are
# not listed (they would time the baseline itself); its SGDW with weight_decouple=False is its
# own implementation of SGD with momentum.
ANCHORS: dict[str, tuple[Anchor, ...]] = {
    "sgd": (
        Anchor(
            "geoopt",
            "RiemannianSGD",
            _geoopt_sgd,
            (),
            "Euclidean manifold, per-tensor loop with retraction + transport; its first "
            "momentum step differs from torch's (buffer starts at g and is updated at once)",
        ),
        Anchor(
            "pytorch_optimizer",
            "SGDW",
            _pytorch_optimizer_sgdw,
            ("foreach",),
            "weight_decouple=False (L2 like torch.optim.SGD)",
        ),
    ),
    "adam": (
        Anchor("geoopt", "RiemannianAdam", _geoopt_adam, (), "Euclidean manifold, per-tensor loop"),
    ),
    "rsgd": (
        Anchor(
            "geoopt",
            "RiemannianSGD",
            _geoopt_sgd,
            (),
            "plain tensors (Euclidean manifold), per-tensor loop with retraction + transport; "
            "same lr/momentum as rsgd",
        ),
    ),
    "radam": (
        Anchor(
            "geoopt",
            "RiemannianAdam",
            _geoopt_adam,
            (),
            "plain tensors (Euclidean manifold), per-tensor loop",
        ),
    ),
    "ramsgrad": (
        Anchor(
            "geoopt",
            "RiemannianAdam(amsgrad=True)",
            _geoopt_amsgrad,
            (),
            "plain tensors (Euclidean manifold), per-tensor loop",
        ),
    ),
    "sam": (
        Anchor(
            "pytorch_optimizer",
            "SAM",
            _pytorch_optimizer_sam,
            ("closure", "wrapper"),
            "base and rho from the sam example; the first closure call is made before "
            "step(closure), which expects the first gradient in .grad",
        ),
    ),
    "sgld": (
        Anchor(
            "posteriors",
            "sgmcmc.sgld",
            _posteriors_sgld,
            ("noisy", "functional"),
            "gradient via torch.func of a linear log posterior (one dot product + one write)",
        ),
    ),
}

ANCHOR_LIBRARIES = ("geoopt", "pytorch_optimizer", "posteriors")
