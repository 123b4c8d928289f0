"""Step-overhead benchmark: the cost of ``optimizer.step()`` for every registered optimizer.

Times ``step()`` on the parameter shapes of a ResNet-18 (CIFAR variant: 3x3 stem, 10 classes;
11,173,962 float32 parameters in 62 tensors at the default width) with gradients preset to fixed
random values, and reports each optimizer's median milliseconds per step and its ratio to
``torch.optim.SGD(lr=0.05, momentum=0.9)`` measured in the same run.

What is timed, per kind of optimizer:

* Plain optimizers (no closure): ``K`` consecutive calls of ``optimizer.step()``; the preset
  gradients stay attached (``.grad`` values are set once; timing does not depend on them).
* Optimizers that need a closure or make several passes (``needs_closure`` or
  ``passes_per_step > 1``, e.g. SAM): ``optimizer.step(closure)`` where the closure runs no
  forward or backward. It re-attaches each parameter's gradient buffer if ``zero_grad`` dropped
  it and copies the preset gradient into it (a stand-in for the gradient write a backward pass
  would make), then returns a constant loss tensor. Two numbers are reported:

  - *ms/step* and its ratio: everything, the closure calls included;
  - *optimizer-side* ms and ratio: the same blocks minus the time spent inside the closure,
    which the closure measures itself (``time.perf_counter`` at its entry and exit, summed over
    the block). For SAM this is exactly the work of ``first_step`` + ``second_step`` (ascent,
    save, perturb, restore, BatchNorm-buffer snapshot, base update) plus the few Python lines of
    ``step`` around them, and it is the number comparable to the reference, whose step makes no
    gradient write either. No separately measured median is subtracted; the row
    ``closure alone`` (added whenever a timed row uses the closure) still shows what one call
    costs on its own.

  The JSON output records how many closure calls each step made.
* Optimizers that accept a model (``accepts_model``, e.g. the SAM family: BatchNorm statistics,
  SAM-ON's normalization layers) get ``model=`` a :class:`CifarResNet18` whose parameters *are*
  the row's benchmark parameters (the module tree is built on the ``meta`` device and the row's
  ``nn.Parameter`` objects are registered in it; its BatchNorm running statistics are real CPU
  buffers), so module-type lookups (``perturb="norm"``) find the 40 BatchNorm affine tensors
  (9,600 parameters at width 64) and the BatchNorm snapshot of SAM's clean pass is timed.
* Noisy optimizers (Langevin samplers): timed like plain ones, noise generation included.
* Wrappers (``wraps_base``): built from their registry ``example`` (which names the base); the
  base's update is part of the step.
* Second-order optimizers: skipped (their closure needs a real autograd graph).
* Anchors (other libraries' implementations of a registered method, ``benchmarks/anchors.py``):
  the same, with that method's ``example`` hyperparameters mapped onto the library's arguments.
* Variants: ``--row SPEC`` (repeatable) adds a row built from an optimizer spec in the grammar of
  ``torchvalley bench`` (``name:key=value,...``, e.g. ``--row "sam:swap_storage=True"``): the
  entry's ``example`` with the spec's hyperparameters on top, labelled by the spec. ``--optimizers``
  takes names or specs. Without ``--optimizers``, ``--row`` rows are timed alone (with the
  reference); without either, every registered optimizer is.

Measurement (``benchmarks/_harness.py``): every row owns its parameters, gradients and optimizer
state. After ``W`` warm-up steps per row, ``R`` repeats each time every row for a block of ``K``
steps (``time.perf_counter``, garbage collector off), round-robin with the starting row rotated
each repeat so that load drift on a shared machine affects all rows alike. The table shows the
median and inter-quartile range of the ``R`` per-step times; ratio = median(row) /
median(reference). The JSON output also has the raw per-repeat times, the minimum, and the
median of the per-repeat paired ratios row/reference (more robust to drift).

A "Parity ratios" section (and ``parity`` in the JSON) divides the rows of methods that must
match a torch optimizer by that optimizer's row from the same run: radam/adam, rsgd/sgd, and
ramsgrad/adam(amsgrad), radagrad/adagrad when such rows exist (else listed as skipped), and
geoopt's RiemannianAdam/RiemannianSGD anchors over torch's rows and over ours, as the ratio of
medians and the median of per-repeat paired ratios. ``--optimizers NAME ...`` restricts the
step-mode rows to those registered optimizers (and their anchors).

``--training-step`` mode times a *full* training step instead (forward, loss, backward and the
optimizer, on a real model and fixed random batches) for the reference SGD-momentum (one
closure call, then ``step()``) and every non-second-order optimizer that needs a closure or
makes several passes (the SAM family; ``--train-optimizers`` picks others), with the same
interleaved measurement. Models: ``mnist1d_cnn`` (the ``mnist1d_cnn`` task's 1-D CNN with
BatchNorm, 9,802 parameters, inputs of shape ``(B, 40)``, default batch 100) or ``resnet18``
(:class:`CifarResNet18` at ``--width``, inputs ``(B, 3, 32, 32)``, default batch 32). The
report splits each step into forward+backward (time inside the closure) and optimizer-side
time.

Usage::

    python benchmarks/step_overhead.py [--quick] [--out FILE.md] [--json FILE]
        [--threads N] [--foreach {default,true,false}] [--repeats R] [--steps K]
        [--warmup W] [--width C] [--no-anchors] [--optimizers NAME|SPEC ...] [--row SPEC ...]
    python benchmarks/step_overhead.py --training-step [--train-model {mnist1d_cnn,resnet18}]
        [--train-batch B] [--train-optimizers NAME|SPEC ...] [--quick] [--out ...] [--json ...]
        [--threads N] [--repeats R] [--steps K] [--warmup W] [--width C] [--no-anchors]

For example, SAM's optimizer side with and without ``swap_storage`` in one run::

    python benchmarks/step_overhead.py --threads 1 --no-anchors --optimizers sgd sam \\
        --row "sam:swap_storage=True"
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from _harness import (
    TimedRow,
    library_version,
    machine_facts,
    measure_round_robin,
    paired_ratio_median,
    time_summary,
    torch_threads,
    write_outputs,
)
from anchors import ANCHOR_LIBRARIES, ANCHORS, Anchor, StepFn, optimizer_step
from step_report import (  # the report's labels and columns are re-exported (X as X)
    ADAGRAD_LABEL as ADAGRAD_LABEL,
)
from step_report import ADAM_AMSGRAD_LABEL as ADAM_AMSGRAD_LABEL
from step_report import GEOOPT_RADAM as GEOOPT_RADAM
from step_report import GEOOPT_RAMSGRAD as GEOOPT_RAMSGRAD
from step_report import GEOOPT_RSGD as GEOOPT_RSGD
from step_report import OPTIMIZER_RATIO_COLUMN as OPTIMIZER_RATIO_COLUMN
from step_report import RATIO_COLUMN as RATIO_COLUMN
from step_report import (
    REFERENCE_LABEL,
    TRAIN_REFERENCE_LABEL,
    parity_ratios,
    render_markdown,
    render_training_markdown,
)
from step_report import TRAIN_RATIO_COLUMN as TRAIN_RATIO_COLUMN
from torchvalley.bench.machine import load_average
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.registry import OptimizerEntry, build_from_entry, get_optimizer_entry

__all__ = [
    "ANCHORS",
    "ANCHOR_LIBRARIES",
    "Anchor",
    "Variant",
    "library_version",
    "main",
    "parity_ratios",
    "render_markdown",
]

# Full-size and --quick measurement settings: (warm-up steps, repeats, steps per repeat).
FULL_SETTINGS = (5, 21, 10)
QUICK_SETTINGS = (2, 5, 3)
# The same for --training-step (a step is a forward+backward or two, so fewer).
TRAIN_FULL_SETTINGS = (3, 15, 3)
TRAIN_QUICK_SETTINGS = (1, 3, 1)
TRAIN_MODELS = ("mnist1d_cnn", "resnet18")
TRAIN_DEFAULT_BATCH = {"mnist1d_cnn": 100, "resnet18": 32}
# Distinct random batches cycled through by the training-step rows.
TRAIN_BATCHES = 4


# --------------------------------------------------------------------------------------------
# Workload: the parameter shapes of a ResNet-18
# --------------------------------------------------------------------------------------------


def resnet18_shapes(width: int = 64, num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of a CIFAR-style ResNet-18 (3x3 stem, no max-pool), in module order.

    Conv layers have no bias (they are followed by batch norm); every batch norm contributes a
    weight and a bias; the classifier is a linear layer with bias. At ``width=64`` and
    ``num_classes=10`` this is 11,173,962 parameters in 62 tensors. Smaller widths keep the
    tensor count and shrink the parameter count roughly by ``(width / 64) ** 2``.

    Args:
        width: channels of the first stage (the stages have ``width * (1, 2, 4, 8)``).
        num_classes: outputs of the final linear layer.

    Returns:
        The shapes, conv weights as ``(out, in, k, k)``.
    """
    if width < 1 or num_classes < 1:
        raise ValueError(f"width and num_classes must be positive, got {width}, {num_classes}")
    shapes: list[tuple[int, ...]] = []

    def conv_bn(c_out: int, c_in: int, k: int) -> None:
        shapes.append((c_out, c_in, k, k))
        shapes.extend([(c_out,), (c_out,)])

    conv_bn(width, 3, 3)
    c_in = width
    for stage, c_out in enumerate(width * m for m in (1, 2, 4, 8)):
        for block in range(2):
            downsample = block == 0 and stage > 0
            conv_bn(c_out, c_in, 3)
            conv_bn(c_out, c_out, 3)
            if downsample:
                conv_bn(c_out, c_in, 1)
            c_in = c_out
    shapes.extend([(num_classes, c_in), (num_classes,)])
    return shapes


def make_reference_tensors(
    shapes: Sequence[tuple[int, ...]], seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fixed random parameter values (scale 0.05) and gradients (standard normal), float32."""
    generator = torch.Generator().manual_seed(seed)
    params = [0.05 * torch.randn(s, generator=generator) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    return params, grads


class BasicBlock(nn.Module):
    """ResNet basic block: conv3-BN-ReLU-conv3-BN plus the (1x1 conv + BN when downsampling)
    shortcut, then ReLU. Convolutions have no bias."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(inputs))


class CifarResNet18(nn.Module):
    """The CIFAR-style ResNet-18 whose parameter shapes :func:`resnet18_shapes` lists, in the
    same order (``model.parameters()`` yields exactly those shapes).

    Args:
        width: channels of the first stage.
        num_classes: outputs of the classifier.
    """

    def __init__(self, width: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate(width * m for m in (1, 2, 4, 8)):
            for block in range(2):
                blocks.append(BasicBlock(c_in, c_out, 2 if block == 0 and stage > 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, num_classes)`` for images of shape ``(B, 3, H, W)``."""
        out = self.layers(F.relu(self.bn1(self.conv1(inputs))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def bind_parameters(model: nn.Module, params: Sequence[nn.Parameter]) -> nn.Module:
    """Register ``params`` in ``model`` in place of its own parameters, in module order.

    Afterwards ``list(model.parameters())`` are the very objects in ``params`` (identity, so
    storage is shared and set lookups such as SAM-ON's find them).

    Raises:
        ValueError: when the count or a shape differs.
    """
    slots = [
        (module, name)
        for module in model.modules()
        for name, p in module._parameters.items()
        if p is not None
    ]
    if len(slots) != len(params):
        raise ValueError(f"model has {len(slots)} parameters, {len(params)} given")
    for (module, name), p in zip(slots, params, strict=True):
        own = module._parameters[name]
        assert own is not None
        if own.shape != p.shape:
            raise ValueError(f"shape mismatch at {name}: {tuple(own.shape)} vs {tuple(p.shape)}")
        setattr(module, name, p)
    return model


def resnet18_owning(params: Sequence[nn.Parameter], width: int = 64) -> CifarResNet18:
    """A :class:`CifarResNet18` (train mode) that owns ``params`` (:func:`bind_parameters`).

    The module tree is built on the ``meta`` device (no 11M-parameter initialisation) and its
    buffers (BatchNorm running statistics) are then materialised on the CPU and reset.
    """
    with torch.device("meta"):
        model = CifarResNet18(width)
    bind_parameters(model, params)
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.zeros_like(buffer, device="cpu")
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.reset_running_stats()
    return model.train()


class _TimedClosure:
    """Counts its calls and the seconds spent inside them (``perf_counter`` at entry and exit)."""

    closure_calls: int = 0
    closure_seconds: float = 0.0


class Workset(_TimedClosure):
    """One row's own parameters and gradient buffers, plus the closure handed to its step.

    Args:
        ref_params: initial parameter values (cloned).
        ref_grads: the preset gradients; cloned into this row's buffers and read (not written)
            by :meth:`closure`.
        width: when given, :attr:`model` is a :class:`CifarResNet18` of that width owning
            :attr:`params` (for optimizers that take ``model=``).
    """

    def __init__(
        self,
        ref_params: Sequence[torch.Tensor],
        ref_grads: Sequence[torch.Tensor],
        width: int | None = None,
    ):
        self.params = [torch.nn.Parameter(p.clone()) for p in ref_params]
        self.grads = [g.clone() for g in ref_grads]
        self.ref_grads = list(ref_grads)
        self.loss = torch.tensor(1.0)
        self.closure_calls = 0
        self.closure_seconds = 0.0
        self.model = None if width is None else resnet18_owning(self.params, width)
        self.reattach()

    def reattach(self) -> None:
        """Point every ``.grad`` at this row's buffer again if something replaced or dropped it."""
        for p, g in zip(self.params, self.grads, strict=True):
            if p.grad is not g:
                p.grad = g

    def closure(self) -> torch.Tensor:
        """Stand-in for forward+backward: re-set the preset gradients, return a constant loss."""
        start = time.perf_counter()
        self.closure_calls += 1
        for p, g, ref in zip(self.params, self.grads, self.ref_grads, strict=True):
            if p.grad is not g:
                p.grad = g
            g.copy_(ref)
        self.closure_seconds += time.perf_counter() - start
        return self.loss


class TrainSet(_TimedClosure):
    """One training-step row's own model copy, fixed batches and forward+backward closure.

    Args:
        model: the initial model (deep-copied, so every row starts from the same weights).
        batches: ``(inputs, targets)`` pairs, cycled through one per training step.
    """

    def __init__(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        self.model = copy.deepcopy(model).train()
        self.params = list(self.model.parameters())
        self.batches = list(batches)
        self.index = 0
        self.closure_calls = 0
        self.closure_seconds = 0.0

    def reattach(self) -> None:
        """Nothing to do (the gradients come from backward)."""

    def advance(self) -> None:
        """Move to the next batch (called once per training step, not per closure call)."""
        self.index = (self.index + 1) % len(self.batches)

    def closure(self) -> torch.Tensor:
        """Zero the gradients, forward, cross-entropy loss, backward; return the loss."""
        start = time.perf_counter()
        self.closure_calls += 1
        inputs, targets = self.batches[self.index]
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = F.cross_entropy(self.model(inputs), targets)
            loss.backward()
        self.closure_seconds += time.perf_counter() - start
        return loss.detach()


class _Holder(Protocol):
    params: list[torch.nn.Parameter]
    closure_calls: int
    closure_seconds: float

    def reattach(self) -> None: ...

    def closure(self) -> torch.Tensor: ...


def make_training_workload(
    name: str, *, width: int, batch_size: int, seed: int
) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]], str]:
    """The model, :data:`TRAIN_BATCHES` random batches and a description for ``--training-step``.

    Inputs are standard normal and targets uniform over 10 classes, drawn from a generator
    seeded with ``seed``; the model is initialised under ``torch.manual_seed(seed)`` (global
    RNG state restored afterwards).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mnist1d_cnn":
            from torchvalley.bench.builtin_tasks import Mnist1dCNN

            model: nn.Module = Mnist1dCNN()
            shape: tuple[int, ...] = (batch_size, 40)
            text = "the mnist1d_cnn task's 1-D CNN (32-32-32 + BatchNorm)"
        elif name == "resnet18":
            model = CifarResNet18(width)
            shape = (batch_size, 3, 32, 32)
            text = f"CIFAR ResNet-18 (width {width}), 32x32 images"
        else:
            raise ValueError(f"unknown training model {name!r} (one of {', '.join(TRAIN_MODELS)})")
    batches = [
        (
            torch.randn(shape, generator=generator),
            torch.randint(0, 10, (batch_size,), generator=generator),
        )
        for _ in range(TRAIN_BATCHES)
    ]
    count = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    description = (
        f"{text}: {count:,} parameters in {tensors} tensors, batch {batch_size} "
        f"(random inputs, {TRAIN_BATCHES} fixed batches cycled), cross-entropy, train mode"
    )
    return model, batches, description


# --------------------------------------------------------------------------------------------
# Rows and measurement
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row(TimedRow):
    """One line of the table: what it times; what was measured is in ``samples_ms``.

    Each sample is ``(ms per step, ms per step spent inside the row's closure)``.
    """

    label: str
    kind: str  # "reference", "registry", "anchor" or "closure"
    family: str
    capabilities: str
    registry_name: str | None = None
    workset: _Holder | None = None
    step: StepFn | None = None
    passes: int = 1
    steps_run: int = 0

    def run(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps; return the seconds they took and the seconds inside closures."""
        assert self.step is not None and self.workset is not None
        step = self.step
        workset = self.workset
        workset.reattach()
        inside_before = workset.closure_seconds
        start = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - start
        self.steps_run += steps
        return elapsed, workset.closure_seconds - inside_before

    def fail(self, error: BaseException) -> None:
        """Mark the row as failed, keeping the error's text, and free its tensors."""
        super().fail(error)
        self.step = None
        self.workset = None

    @property
    def closure_ms(self) -> list[float]:
        """Milliseconds per step spent inside the closure, per repeat."""
        return [sample[1] for sample in self.samples_ms]


@dataclasses.dataclass(frozen=True)
class Variant:
    """A registry row to time: the entry, the hyperparameters it is built with, and its label.

    Registered entries are timed with their ``example``; a spec (``--row``) puts its own
    hyperparameters on top and is labelled by the spec. Only plain entries get anchor rows (an
    anchor maps the entry's ``example``, not a variant's settings).
    """

    label: str
    entry: OptimizerEntry
    hyperparameters: Mapping[str, Any]
    anchors: bool = True

    @classmethod
    def of(cls, entry: OptimizerEntry) -> Variant:
        """The entry as registered (its ``example``)."""
        return cls(entry.name, entry, dict(entry.example))

    @classmethod
    def parse(cls, text: str) -> Variant:
        """A variant from an optimizer spec ``name:key=value,...`` (validated by the registry)."""
        spec = OptimizerSpec.parse(text)
        entry = get_optimizer_entry(spec.name)
        if not spec.hyperparameters:
            return cls.of(entry)
        return cls(spec.label, entry, {**entry.example, **spec.hyperparameters}, anchors=False)


def select_variants(
    entries: Sequence[OptimizerEntry],
    names: Sequence[str] | None,
    option: str = "--optimizers",
    *,
    default: Sequence[OptimizerEntry] | None = None,
) -> list[Variant]:
    """The rows ``names`` ask for, in that order: a plain name picks the entry of that name from
    ``entries``; a spec with hyperparameters (``sam:swap_storage=True``) builds a variant of a
    registered entry. Without ``names``: ``default`` (every entry when ``None``).

    Raises:
        ValueError: for names not among ``entries`` (``unknown optimizer(s) for OPTION: ...``)
            and for specs the registry rejects.
    """
    if not names:
        return [Variant.of(entry) for entry in (entries if default is None else default)]
    by_name = {entry.name: entry for entry in entries}
    missing = [name for name in names if ":" not in name and name not in by_name]
    if missing:
        raise ValueError(f"unknown optimizer(s) for {option}: {', '.join(missing)}")
    return [Variant.of(by_name[name]) if ":" not in name else Variant.parse(name) for name in names]


def _capability_text(entry: OptimizerEntry) -> str:
    flags = entry.capabilities.flags()
    if entry.capabilities.passes_per_step > 1:
        flags.append(f"{entry.capabilities.passes_per_step} passes")
    return ", ".join(flags) or "—"


def _uses_closure(entry: OptimizerEntry) -> bool:
    caps = entry.capabilities
    return caps.needs_closure or caps.passes_per_step > 1


def _foreach_applies(entry: OptimizerEntry, hyperparameters: Mapping[str, Any]) -> bool:
    """Whether a forced ``foreach`` flag can be passed to ``entry`` (or to its registered base)."""
    if entry.capabilities.foreach:
        return True
    if not entry.capabilities.wraps_base:
        return False
    spec = entry.hyperparameter("base_optimizer")
    base = hyperparameters.get("base_optimizer", spec.default if spec else None)
    if not isinstance(base, str):
        return False
    try:
        return get_optimizer_entry(base).capabilities.foreach
    except ValueError:
        return False


def _name_registered(name: str) -> bool:
    try:
        get_optimizer_entry(name)
    except ValueError:
        return False
    return True


def _note(hyperparameters: Mapping[str, Any], model: nn.Module | None) -> str:
    text = ", ".join(f"{k}={v}" for k, v in hyperparameters.items())
    if model is not None:
        text += ", model=<the module owning the parameters>"
    return text


def _build(variant: Variant, holder: _Holder, model: nn.Module | None, **forced: Any) -> Any:
    """The variant's optimizer over ``holder.params`` (``model=`` goes where it is accepted)."""
    return build_from_entry(
        variant.entry, holder.params, model=model, **variant.hyperparameters, **forced
    )


def _registry_row(variant: Variant, **fields: Any) -> Row:
    entry = variant.entry
    return Row(
        variant.label, "registry", entry.family, _capability_text(entry), entry.name, **fields
    )


def _anchor_row(anchor: Anchor, entry: OptimizerEntry, **fields: Any) -> Row:
    caps = ", ".join(anchor.capabilities) or "—"
    label = f"{anchor.label} (comparable to {entry.name})"
    return Row(label, "anchor", entry.family, caps, entry.name, note=anchor.note, **fields)


def _quiet_build(
    anchor: Anchor, holder: Any, entry: OptimizerEntry, foreach: bool | None
) -> StepFn:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return anchor.build(holder, entry, foreach)


def build_rows(
    variants: Sequence[Variant],
    ref_params: Sequence[torch.Tensor],
    ref_grads: Sequence[torch.Tensor],
    *,
    foreach: bool | None,
    anchors: bool,
    width: int = 64,
) -> tuple[list[Row], list[str]]:
    """Build every row's optimizer on its own copy of the tensors.

    Entries with ``capabilities.accepts_model`` also get ``model=`` a :class:`CifarResNet18`
    of ``width`` that owns the row's parameters (``ref_params`` must have its shapes).

    Returns:
        The rows (reference first, each registry row followed by its anchors, the
        closure-alone row last when used) and note lines about anchors not shown.
    """

    def new_workset(with_model: bool = False) -> Workset:
        return Workset(ref_params, ref_grads, width if with_model else None)

    ws = new_workset()
    rows = [
        Row(
            REFERENCE_LABEL,
            "reference",
            "baseline",
            "—",
            note="lr=0.05, foreach=None (torch's default: the per-tensor loop on CPU)",
            workset=ws,
            step=torch.optim.SGD(ws.params, lr=0.05, momentum=0.9).step,
        )
    ]
    any_closure = False
    for variant in variants:
        entry = variant.entry
        row = _registry_row(variant)
        rows.append(row)
        if entry.capabilities.second_order:
            row.status, row.note = "skipped", "second-order: needs a real autograd graph"
        elif entry.capabilities.needs_real_loss:
            row.status, row.note = "skipped", "needs the real loss (timed in --training-step)"
        else:
            forced = {}
            if foreach is not None and _foreach_applies(entry, variant.hyperparameters):
                forced["foreach"] = foreach
            try:
                row.workset = workset = new_workset(entry.capabilities.accepts_model)
                opt = _build(variant, workset, workset.model, **forced)
                closure = workset.closure if _uses_closure(entry) else None
                any_closure = any_closure or closure is not None
                row.step = optimizer_step(opt, closure)
                row.note = _note({**variant.hyperparameters, **forced}, workset.model)
            except Exception as error:
                row.fail(error)
        if not (anchors and variant.anchors):
            continue
        for anchor in ANCHORS.get(entry.name, ()):
            if library_version(anchor.library) is None:
                continue  # reported once in the header
            anchor_row = _anchor_row(anchor, entry)
            rows.append(anchor_row)
            anchor_foreach = foreach if "foreach" in anchor.capabilities else None
            try:
                anchor_row.workset = new_workset()
                anchor_row.step = _quiet_build(anchor, anchor_row.workset, entry, anchor_foreach)
                any_closure = any_closure or "closure" in anchor.capabilities
            except Exception as error:
                anchor_row.fail(error)
    notes: list[str] = []
    if anchors:
        registered = {variant.entry.name for variant in variants}
        waiting = [
            f"{anchor.label} ({name})"
            for name, group in ANCHORS.items()
            if name not in registered and not _name_registered(name)
            for anchor in group
        ]
        if waiting:
            notes.append(
                "Anchors waiting for their method to be registered: " + ", ".join(waiting) + "."
            )
    if any_closure:
        ws = new_workset()
        rows.append(
            Row(
                "closure alone (re-set preset gradients)",
                "closure",
                "—",
                "—",
                note="what each closure call costs inside the closure rows",
                workset=ws,
                step=ws.closure,
            )
        )
    return rows, notes


def training_variants(
    entries: Sequence[OptimizerEntry], names: Sequence[str] | None
) -> list[Variant]:
    """The rows ``--training-step`` times: ``names`` if given (names or specs, in that order),
    else every non-second-order entry that needs a closure or makes several passes."""
    default = [e for e in entries if _uses_closure(e) and not e.capabilities.second_order]
    return select_variants(entries, names, "--train-optimizers", default=default)


def build_training_rows(
    variants: Sequence[Variant],
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    anchors: bool,
) -> list[Row]:
    """Rows of full training steps, each on its own copy of ``model`` (same initial weights).

    The reference and plain optimizers run ``closure(); step()``; closure optimizers run
    ``step(closure)``; anchors are added only for libraries whose row takes a closure (their
    plain rows would add nothing a training step changes). Every step first moves to the next
    batch.
    """

    def training_step(ts: TrainSet, inner: StepFn) -> StepFn:
        def step() -> Any:
            ts.advance()
            return inner()

        return step

    def plain(ts: TrainSet, opt: torch.optim.Optimizer) -> StepFn:
        # The separate closure call is deliberate: it times the plain loop users write.
        def inner() -> Any:
            ts.closure()
            return opt.step()

        return training_step(ts, inner)

    ts = TrainSet(model, batches)
    rows = [
        Row(
            TRAIN_REFERENCE_LABEL,
            "reference",
            "baseline",
            "—",
            note="lr=0.05, foreach=None; closure() then step()",
            workset=ts,
            step=plain(ts, torch.optim.SGD(ts.params, lr=0.05, momentum=0.9)),
        )
    ]
    for variant in variants:
        entry = variant.entry
        row = _registry_row(variant)
        rows.append(row)
        if entry.capabilities.second_order:
            row.status, row.note = "skipped", "second-order (not timed in this mode)"
            continue
        try:
            row.workset = ts = TrainSet(model, batches)
            opt = _build(variant, ts, ts.model)
            if _uses_closure(entry):
                row.step = training_step(ts, optimizer_step(opt, ts.closure))
            else:
                row.step = plain(ts, opt)
            row.passes = entry.capabilities.passes_per_step
            with_model = ts.model if entry.capabilities.accepts_model else None
            row.note = _note(variant.hyperparameters, with_model)
        except Exception as error:
            row.fail(error)
        if not (anchors and variant.anchors):
            continue
        for anchor in ANCHORS.get(entry.name, ()):
            if "closure" not in anchor.capabilities or library_version(anchor.library) is None:
                continue
            anchor_row = _anchor_row(anchor, entry, passes=row.passes)
            rows.append(anchor_row)
            try:
                anchor_row.workset = ts = TrainSet(model, batches)
                anchor_row.step = training_step(ts, _quiet_build(anchor, ts, entry, None))
            except Exception as error:
                anchor_row.fail(error)
    return rows


def summarize(row: Row, reference: Row) -> dict[str, Any]:
    """Statistics of one row (median, quartiles, IQR, min, ratios) for the table and JSON.

    ``optimizer_*`` keys describe the per-repeat times minus the time spent inside the row's
    closure (equal to the totals for rows that take no closure); the closure-alone row has none.
    """
    out: dict[str, Any] = {
        "label": row.label,
        "kind": row.kind,
        "registry_name": row.registry_name,
        "family": row.family,
        "capabilities": row.capabilities,
        "status": row.status,
        "note": row.note,
        "passes_per_step": row.passes,
        "ms_per_step": row.times_ms,
        "closure_ms_per_step": row.closure_ms,
    }
    if row.workset is not None and row.steps_run:
        calls = row.workset.closure_calls / row.steps_run
        out["closure_calls_per_step"] = calls if row.kind != "closure" else None
    times = row.times_ms
    if row.status != "ok" or not times:
        return out
    out.update(time_summary(times))
    out["closure_median_ms"] = statistics.median(row.closure_ms)
    own = [t - c for t, c in zip(times, row.closure_ms, strict=True)]
    if row.kind != "closure":
        out["optimizer_ms_per_step"] = own
        out["optimizer_median_ms"] = statistics.median(own)
    ref = reference.times_ms
    if reference.status == "ok" and ref:
        out["ratio"] = out["median_ms"] / statistics.median(ref)
        out["paired_ratio_median"] = paired_ratio_median(times, ref)
        if row.kind != "closure":
            ref_own = [t - c for t, c in zip(ref, reference.closure_ms, strict=True)]
            out["optimizer_ratio"] = out["optimizer_median_ms"] / statistics.median(ref_own)
            out["optimizer_paired_ratio_median"] = paired_ratio_median(own, ref_own)
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and steps ({} warm-up, {}×{}; with --training-step {}, {}×{})".format(
            *QUICK_SETTINGS, *TRAIN_QUICK_SETTINGS
        ),
    )
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--foreach",
        choices=("default", "true", "false"),
        default="default",
        help="force the foreach flag of entries with the foreach capability",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per row (R)")
    parser.add_argument("--steps", type=int, help="steps per timed repeat (K)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per row")
    parser.add_argument(
        "--width", type=int, default=64, help="ResNet-18 base width (64: 11.2M parameters; 4: ~44k)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the preset tensors")
    parser.add_argument("--no-anchors", action="store_true", help="skip other libraries' rows")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        metavar="NAME",
        help="step mode: time only these registered optimizers (and their anchors), or specs "
        "such as 'sam:swap_storage=True'; default: every registered one (none with --row)",
    )
    parser.add_argument(
        "--row",
        action="append",
        metavar="SPEC",
        help="add a row built from an optimizer spec, e.g. 'sam:swap_storage=True' "
        "(repeatable; in both modes)",
    )
    training = parser.add_argument_group("full training step (--training-step)")
    training.add_argument(
        "--training-step",
        action="store_true",
        help="time forward+backward+step on a real model instead of step() alone",
    )
    training.add_argument(
        "--train-model", choices=TRAIN_MODELS, default="mnist1d_cnn", help="the model to train"
    )
    training.add_argument(
        "--train-batch",
        type=int,
        help="batch size (default: {})".format(
            ", ".join(f"{k} {v}" for k, v in TRAIN_DEFAULT_BATCH.items())
        ),
    )
    training.add_argument(
        "--train-optimizers",
        nargs="+",
        metavar="NAME",
        help="registered optimizers or specs to time (default: those that need a closure or "
        "make several passes, second-order ones excepted)",
    )
    args = parser.parse_args(argv)
    if args.training_step:
        settings = TRAIN_QUICK_SETTINGS if args.quick else TRAIN_FULL_SETTINGS
    else:
        settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    warmup, repeats, steps = settings
    args.warmup = warmup if args.warmup is None else args.warmup
    args.repeats = repeats if args.repeats is None else args.repeats
    args.steps = steps if args.steps is None else args.steps
    if args.train_batch is None:
        args.train_batch = TRAIN_DEFAULT_BATCH[args.train_model]
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.train_batch < 1:
        parser.error("--train-batch must be >= 1")
    return args


def main(
    argv: Sequence[str] | None = None, *, entries: Sequence[OptimizerEntry] | None = None
) -> int:
    """Run the benchmark; print the report, write ``--out``/``--json``.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        entries: the optimizers to time (default: every registered one); unregistered entries
            are built from their factory with their ``example``.

    Returns:
        0, or 1 when some row failed to build or step.
    """
    args = parse_args(argv)
    with torch_threads(args.threads):
        return _run(args, entries)


def _measurement(args: argparse.Namespace) -> dict[str, Any]:
    return {"warmup": args.warmup, "repeats": args.repeats, "steps": args.steps}


def _anchor_text(args: argparse.Namespace) -> tuple[str, dict[str, str | None]]:
    versions = {lib: library_version(lib) for lib in ANCHOR_LIBRARIES}
    text = "; ".join(f"{lib} {v}" if v else f"{lib} not installed" for lib, v in versions.items())
    if args.no_anchors:
        text = "skipped (--no-anchors)"
    return text, versions


def _run(args: argparse.Namespace, entries: Sequence[OptimizerEntry] | None) -> int:
    """:func:`main` after the thread count is set."""
    entries = list(torchvalley.optimizer_entries() if entries is None else entries)
    if args.training_step:
        return _run_training(args, entries)
    variants = select_variants(entries, args.optimizers, default=[] if args.row else None)
    variants += [Variant.parse(text) for text in args.row or ()]
    foreach = {"default": None, "true": True, "false": False}[args.foreach]
    shapes = resnet18_shapes(args.width)
    ref_params, ref_grads = make_reference_tensors(shapes, args.seed)

    anchor_text, versions = _anchor_text(args)
    load_start = load_average()
    rows, notes = build_rows(
        variants,
        ref_params,
        ref_grads,
        foreach=foreach,
        anchors=not args.no_anchors,
        width=args.width,
    )
    measure_round_robin(rows, warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    results = [summarize(row, rows[0]) for row in rows]

    machine = {
        **machine_facts(load_start),
        **_measurement(args),
        "mode": "step",
        "workload": f"ResNet-18 parameter shapes (CIFAR variant, width {args.width})",
        "param_count": sum(p.numel() for p in ref_params),
        "tensor_count": len(ref_params),
        "foreach": args.foreach,
        "anchor_libraries": anchor_text,
        "anchor_versions": versions,
        "notes": notes,
    }
    payload = {"machine": machine, "rows": results, "parity": parity_ratios(results)}
    write_outputs(render_markdown(machine, results), payload, args.out, args.json)
    return 1 if any(row.status == "error" for row in rows) else 0


def _run_training(args: argparse.Namespace, entries: Sequence[OptimizerEntry]) -> int:
    """``--training-step``: full training steps on a real model."""
    chosen = training_variants(entries, args.train_optimizers)
    chosen += [Variant.parse(text) for text in args.row or ()]
    model, batches, description = make_training_workload(
        args.train_model, width=args.width, batch_size=args.train_batch, seed=args.seed
    )
    anchor_text, versions = _anchor_text(args)
    load_start = load_average()
    rows = build_training_rows(chosen, model, batches, anchors=not args.no_anchors)
    measure_round_robin(rows, warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    results = [summarize(row, rows[0]) for row in rows]
    notes = []
    if args.foreach != "default":
        notes.append("--foreach is ignored in --training-step mode (the examples' defaults).")
    machine = {
        **machine_facts(load_start),
        **_measurement(args),
        "mode": "training-step",
        "workload": description,
        "train_model": args.train_model,
        "train_batch": args.train_batch,
        "param_count": sum(p.numel() for p in model.parameters()),
        "tensor_count": len(list(model.parameters())),
        "anchor_libraries": anchor_text,
        "anchor_versions": versions,
        "notes": notes,
    }
    payload = {"machine": machine, "rows": results}
    write_outputs(render_training_markdown(machine, results), payload, args.out, args.json)
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
