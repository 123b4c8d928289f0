"""The SAM wrapper: two half-steps around any base optimizer.

The maths is in :mod:`~torchvalley.optim.sam.ascent`, the training set-ups (DDP, AMP, the
backup of ``w``, BatchNorm, micro-batches) in :mod:`~torchvalley.optim.sam.systems`.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchvalley.manifolds.parameter import manifold_of
from torchvalley.optim._profiling import profile_hook_step
from torchvalley.optim.sam import systems
from torchvalley.optim.sam.ascent import ASCENT_RULES, Part, Riemannian
from torchvalley.registry import (
    Hyperparameter,
    get_optimizer_entry,
    resolve_base_optimizer,
    revalidate_changed_groups,
    validate_group,
)

__all__ = ["NORMALIZATION_TYPES", "SAM", "normalization_parameters"]

#: Module types whose affine parameters SAM-ON perturbs (BatchNorm*, SyncBatchNorm,
#: InstanceNorm* via ``_NormBase``, LayerNorm, GroupNorm, RMSNorm).
NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def normalization_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of every normalization layer in ``model`` (found by module type,
    not by name, so e.g. a parameter called ``subnet.weight`` is never mistaken for one)."""
    found: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, NORMALIZATION_TYPES):
            found.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
    return found


#: The settings a param group carries (and may override).
_GROUP_HYPERPARAMETERS = (
    Hyperparameter("rho", "non_negative", 0.05, "radius of the ascent step"),
    Hyperparameter("ascent", "choice", "sam", "ascent geometry", choices=tuple(ASCENT_RULES)),
    Hyperparameter("perturbed", "bool", True, "param-group flag: perturb this group"),
    Hyperparameter("eta", "non_negative", 0.01, "ASAM's offset in T = |w| + eta"),
    Hyperparameter("normalize_bias", "bool", False, "ASAM: apply T to biases too"),
    Hyperparameter("fisher_eta", "non_negative", 1.0, "Fisher-SAM: F = 1 + eta g^2"),
)


class SAM(torch.optim.Optimizer):
    """Sharpness-aware wrapper over any base optimizer (see :mod:`torchvalley.optim.sam`).

    Args:
        params: parameters or param groups (``(name, tensor)`` pairs are accepted; names are
            used to tell biases from weights for ASAM).
        base_optimizer: a registry name (``"sgd"``, ``"adamw"``, ...), an optimizer class, or
            a factory ``f(param_groups, **hyperparameters)``.
        rho: radius of the ascent step in the method's metric (Fisher-SAM's gamma).
        ascent: ``"sam"``, ``"asam"``, ``"fisher"``, ``"monge"`` or ``"riemannian"``.
        perturb: ``"all"``, ``"norm"`` (SAM-ON; needs ``model``), a predicate
            ``(name, parameter) -> bool`` (needs names: ``model`` or named params), or an
            iterable of parameters. Every parameter with a gradient is updated regardless.
        model: the module being trained. Optional; enables ``perturb="norm"``, clean-pass
            BatchNorm statistics and DDP ``no_sync`` in ``"local"`` mode.
        eta: ASAM's offset in :math:`T_w = |w| + \\eta` (official default 0.01).
        normalize_bias: ASAM: apply :math:`T_w` to biases too (davda54's variant).
        fisher_eta: Fisher-SAM's strength :math:`\\eta_F` in :math:`1 + \\eta_F g^2`.
        max_grad_norm: clip the *final* (second-pass) gradient to this global norm before the
            base step; ``None`` for no clipping.
        gradient_centralization: centralize the *final* gradient before clipping and the base
            step: for every tensor of two or more dimensions subtract its mean over all
            dimensions but the first (Yong et al., ECCV 2020); the ascent is unchanged.
        perturbation_sync: ``"local"`` (each DDP replica perturbs with its own gradient:
            m-sharpness, as in the paper; Fisher and Monge then use the replica's gradient) or
            ``"global"`` (all-reduced first gradient, identical perturbations). ``"local"``
            needs ``model`` to be the DDP module, and is refused with Riemannian ascent on
            manifold parameters (see :meth:`first_step`).
        bn_statistics: ``"clean"`` keeps BatchNorm running statistics from the clean pass only
            (the JAX reference), ``"both"`` lets both passes update them (davda54's default).
        diagnostics: record ``last_diagnostics`` every step (tensors, no host sync).
        perturbed: default of the param-group flag ``perturbed`` (a group with ``False`` is
            updated but never perturbed).
        swap_storage: perturb in a spare buffer that the parameters point at during the
            perturbed pass (two memory passes fewer, same numbers, ``w`` never written).
            ``None`` (the default) swaps wherever it is safe and copies ``w`` aside in place
            otherwise: parameters that are views of a larger storage (flat parameters),
            DTensors or a model holding FSDP modules copy for the whole run
            (:func:`~torchvalley.optim.sam.systems.swap_unsafe_reason`), and a step traced
            by ``torch.compile`` or captured in a CUDA graph copies for that step. ``True``
            forces swapping, ``False`` the in-place copy (fixed storage all along).
        **base_hyperparameters: passed to the base optimizer (``lr``, ``momentum``, ...).

    Raises:
        ValueError: for a bad or misspelt setting (the message lists SAM's settings and the
            base's, with the closest match), or complex parameters.
    """

    #: torch.optim's step hooks, with the profiler label only while a profiler runs
    profile_hook_step = staticmethod(profile_hook_step)

    #: Every setting, declared once (the registry entries and the checks use it).
    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter("base_optimizer", "optimizer", "sgd", "registry name or optimizer class"),
        *_GROUP_HYPERPARAMETERS,
        Hyperparameter("perturb", "any", "all", "all | norm | predicate | parameters"),
        Hyperparameter("model", "any", None, "the module (BatchNorm stats, SAM-ON, DDP)"),
        Hyperparameter("max_grad_norm", "optional_positive", None, "clip the final gradient"),
        Hyperparameter("gradient_centralization", "bool", False, "centralize the final gradient"),
        Hyperparameter(
            "perturbation_sync", "choice", "local", "DDP perturbation", choices=("local", "global")
        ),
        Hyperparameter(
            "bn_statistics",
            "choice",
            "clean",
            "BatchNorm statistics from",
            choices=("clean", "both"),
        ),
        Hyperparameter("diagnostics", "bool", False, "record last_diagnostics each step"),
        Hyperparameter(
            "swap_storage", "optional_bool", None, "perturb in a spare buffer (None: where safe)"
        ),
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        model: nn.Module | None = None,
        eta: float = 0.01,
        normalize_bias: bool = False,
        fisher_eta: float = 1.0,
        max_grad_norm: float | None = None,
        gradient_centralization: bool = False,
        perturbation_sync: str = "local",
        bn_statistics: str = "clean",
        diagnostics: bool = False,
        perturbed: bool = True,
        swap_storage: bool | None = None,
        **base_hyperparameters: Any,
    ) -> None:
        settings = validate_group(
            self.HYPERPARAMETERS,
            {
                "base_optimizer": base_optimizer,
                "rho": rho,
                "ascent": ascent,
                "perturbed": perturbed,
                "eta": eta,
                "normalize_bias": normalize_bias,
                "fisher_eta": fisher_eta,
                "max_grad_norm": max_grad_norm,
                "gradient_centralization": gradient_centralization,
                "perturbation_sync": perturbation_sync,
                "bn_statistics": bn_statistics,
                "diagnostics": diagnostics,
                "swap_storage": swap_storage,
            },
        )
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        _check_base_settings(base_optimizer, base_hyperparameters)
        factory = resolve_base_optimizer(base_optimizer)
        defaults = {h.name: settings[h.name] for h in _GROUP_HYPERPARAMETERS}
        # id(group) -> its declared values when last validated (revalidate_changed_groups),
        # SAM's own and, for a registered base, the base's (the groups are shared).
        self._checked_values: dict[int, tuple] = {}
        base_records = (
            get_optimizer_entry(base_optimizer).hyperparameters
            if isinstance(base_optimizer, str)
            else ()
        )
        self._group_records = (*_GROUP_HYPERPARAMETERS, *base_records)
        super().__init__(params, defaults)
        for group in self.param_groups:
            validate_group(_GROUP_HYPERPARAMETERS, group)
        _refuse_complex(self.param_groups)
        # The base optimizer adopts the very same group dicts: lr, momentum, rho, ... live in one
        # place, so schedulers and param-group edits reach both.
        self.base_optimizer = factory(self.param_groups, **base_hyperparameters)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        if any(group.get("maximize", False) for group in self.param_groups):
            raise ValueError("Invalid maximize: SAM minimizes; a maximizing base is not supported")

        self.model = model
        self.max_grad_norm = settings["max_grad_norm"]
        self.gradient_centralization = settings["gradient_centralization"]
        self.perturbation_sync = settings["perturbation_sync"]
        self.bn_statistics = settings["bn_statistics"]
        self.diagnostics = settings["diagnostics"]
        self.swap_storage = settings["swap_storage"]
        #: Why the default (``swap_storage=None``) copies ``w`` aside instead of swapping
        #: (``None``: it swaps, except in steps being compiled or graph-captured).
        self.swap_unsafe_reason = (
            systems.swap_unsafe_reason(self.param_groups, model)
            if self.swap_storage is None
            else None
        )
        self.last_diagnostics: dict[str, Tensor] = {}
        self._names = self._parameter_names()
        self._selected = self._resolve_perturb(perturb)
        # Where w waits during the perturbed pass (scratch of one step, not in state_dict).
        swap = self.swap_storage if self.swap_storage is not None else not self.swap_unsafe_reason
        self._swap_backup = systems.SwapBackup() if swap else None
        self._copy_backup = systems.CopyBackup() if self.swap_storage is not True else None
        self._backup = self._swap_backup or self._copy_backup
        self._bn_backup = systems.BatchNormBackup(model, self.bn_statistics == "clean")
        self._workspace = systems.Workspace()  # the ascent rules' scratch
        # "idle" -> first_step -> "ascended" -> second_step -> "stepped": catches a second
        # second_step (the base update applied twice) and one without a first_step.
        self._phase = "idle"
        #: Whether the last first_step found a non-finite (scaled) gradient and skipped the ascent.
        self.first_pass_overflowed = False

    # -- the two halves of a step -----------------------------------------------------------------

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> bool:
        """Climb from ``w`` to ``w + eps`` using the gradients now in ``.grad``.

        ``.grad`` is left as it is (the raw clean-pass gradient, unscaled with a
        ``grad_scaler``), or ``None`` with ``zero_grad=True``; zero it before the perturbed
        backward, as every closure does. With a ``grad_scaler``, if the gradients are not
        finite nothing is perturbed and ``False`` is returned: skip the perturbed pass and
        call :meth:`second_step`, which skips the update and backs off the scale. If this
        raises, ``w`` is back in place.

        Returns:
            Whether the parameters were perturbed.

        Raises:
            ValueError: sparse gradients; or ``perturbation_sync="local"`` under DDP with
                Riemannian ascent on manifold parameters (each replica would transport the
                all-reduced gradient from its own ascent point): use ``"global"`` or
                :meth:`step_micro_batches`, which transports before its single all-reduce.
        """
        self.restore()
        self._phase = "idle"
        self._backup = self._backup_for_this_step()
        with self._restored_on_error():
            climbed = self._ascend(zero_grad, grad_scaler)
        self._phase = "ascended"
        return climbed

    def _ascend(self, zero_grad: bool, grad_scaler: Any, micro_batch: bool = False) -> bool:
        with self._zero_grad_on_exit(zero_grad):
            parts = self._collect()  # (group, rule, params, grads); the curved split made once
            riemannian = any(isinstance(part.rule, Riemannian) for part in parts)
            if riemannian and not micro_batch and self._local_ddp() is not None:
                raise systems.refuse_local_riemannian()
            grads = [g for part in parts for g in part.grads]
            self.first_pass_overflowed = (
                grad_scaler is not None
                and bool(grads)
                and not (systems.unscale_first_pass(grads, grad_scaler, self._local_ddp()))
            )
            if not parts or self.first_pass_overflowed:
                self.last_diagnostics = {}
                return False
            # Norms in float32 at least (fp16/bf16 overflow), float64 for float64 models.
            dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
            norms = [p.rule.precondition(p, self._is_bias, dtype) for p in parts]  # ||M^-1/2 g||
            metric_norm = _global_norm([n for part_norms in norms for n in part_norms])
            inverse = metric_norm.clamp_min(torch.finfo(dtype).tiny).reciprocal()  # g = 0: eps = 0
            euclidean = self._euclidean_norm(parts, norms, dtype)  # ||g|| (Monge, diagnostics)
            fold = not self.diagnostics and all(g.device.type == "cpu" for g in grads)
            eps = []
            for part in parts:
                part.euclidean_norm = euclidean
                factor = self._radius(part.group) * inverse  # rho / sqrt(g^T M^-1 g)
                eps += part.rule.climb(part, factor, self._backup, fold)  # w <- w + rho M^-1 g/..
            self._bn_backup.snapshot()  # BatchNorm statistics of the clean pass
            if self.diagnostics:
                self._record_diagnostics(parts, eps, metric_norm, euclidean)
        return True

    @torch.no_grad()
    def _base_step(self, grad_scaler: Any = None, *, unscale: bool = True) -> None:
        """Clip, then the base optimizer's step; with a ``grad_scaler``: ``unscale_`` first
        (unless the gradients are unscaled already), ``scaler.step`` and ``scaler.update``.
        Counts as an optimizer step for LR schedulers attached to the wrapper."""
        if grad_scaler is not None and unscale:
            grad_scaler.unscale_(self.base_optimizer)
        self._clip()
        if grad_scaler is None:
            self.base_optimizer.step()
        else:
            grad_scaler.step(self.base_optimizer)
            grad_scaler.update()
        self._opt_called = True  # type: ignore[attr-defined]

    def second_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> None:
        """Restore ``w`` exactly (every perturbed parameter, with or without a second gradient,
        and the BatchNorm buffers of the clean pass) and step the base optimizer with the
        gradients now in ``.grad``.

        With ``ascent="riemannian"`` the second-pass gradients of manifold parameters are first
        pulled back to ``w`` (see :mod:`~torchvalley.optim.sam.ascent`). With a ``grad_scaler``
        this runs ``unscale_``, clipping, ``scaler.step`` and ``scaler.update``; the update is
        skipped on overflow in either pass.

        Raises:
            RuntimeError: without a :meth:`first_step` since the last ``second_step`` (a second
                call would apply the base update twice).
        """
        if self._phase != "ascended":
            self.restore()
            misuse = "called twice" if self._phase == "stepped" else "without first_step()"
            raise RuntimeError(
                f"SAM.second_step() {misuse}: call first_step() (after the clean backward), run "
                "the perturbed backward, then second_step() once"
            )
        self._phase = "stepped"
        self.restore(pull_back=True)
        self._before_base_step()
        if grad_scaler is not None and self.first_pass_overflowed:
            systems.skip_scaled_step(grad_scaler)  # no second-pass gradient to find it in
            self._opt_called = True  # type: ignore[attr-defined]
        else:
            self._base_step(grad_scaler)
        self.first_pass_overflowed = False
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        """One SAM step: clean pass, ascent, perturbed pass, restore, base step.

        If the closure raises in the perturbed pass (``KeyboardInterrupt`` included), ``w`` is
        restored before the exception propagates.

        Args:
            closure: zeroes the gradients, runs forward and backward (``scaler.scale(loss)
                .backward()`` with a ``grad_scaler``) and returns the loss. It is called twice;
                under DDP in ``"local"`` mode the clean pass runs under ``no_sync``.
            grad_scaler: a ``torch.amp.GradScaler``; the whole step (including
                ``scaler.update()``) is handled here and skipped if either pass overflows.

        Returns:
            The loss of the clean pass.
        """
        if closure is None:
            raise RuntimeError(
                "SAM.step() needs a closure (zero_grad, forward, backward, return loss): it "
                "evaluates the gradient twice. For manual loops use first_step()/second_step()."
            )
        closure = torch.enable_grad()(closure)
        with self.first_pass_context():
            loss = closure()
        with self._restored_on_error():
            climbed = self.first_step(zero_grad=True, grad_scaler=grad_scaler)
            if climbed or not self.first_pass_overflowed:
                perturbed_loss = closure()
                if self.diagnostics and loss is not None and perturbed_loss is not None:
                    self.last_diagnostics["sam_gap"] = (perturbed_loss - loss).detach()
            self.second_step(grad_scaler=grad_scaler)
        return loss

    @torch.no_grad()
    def step_micro_batches(self, closures: Sequence[Callable[[], Any]]) -> list[Any]:
        """Gradient accumulation with one ascent per micro-batch (m-sharpness).

        For each micro-batch closure: clean pass, ascent from its own gradient, perturbed pass,
        exact restore; the perturbed gradients are averaged in a buffer of at least float32
        (float64 for float64 parameters), then the base optimizer steps once. Each closure
        should return its micro-batch's mean loss (Fisher and Monge use its gradient). Under
        DDP (``model`` the DDP module) every pass runs under ``no_sync`` and the averaged
        gradient is all-reduced once, after the per-replica Riemannian transports.

        Returns:
            The clean-pass losses.
        """
        return systems.step_micro_batches(self, closures)

    @torch.no_grad()
    def restore(self, *, pull_back: bool = False) -> None:
        """Put back every perturbed parameter and BatchNorm buffer (in place unless
        ``swap_storage``). A no-op when nothing is perturbed; for training loops that end the
        perturbed pass themselves instead of calling :meth:`second_step` (then step the base
        optimizer, or discard the gradients).

        Args:
            pull_back: ``.grad`` holds the perturbed-pass gradients: first turn those of
                parameters moved by a retraction (``ascent="riemannian"``) into gradients at
                ``w``, as :meth:`second_step` does. Without it their gradient stays the one
                taken at the ascent point, which is wrong at ``w`` on a curved manifold.
        """
        if pull_back:
            for p, (rule, manifold) in self._backup.moved:
                if p.grad is not None:
                    rule.pull_back(p, self._backup.origin(p), manifold)
        self._backup.restore()
        self._bn_backup.restore()

    def first_pass_context(self) -> contextlib.AbstractContextManager:
        """Context for the clean forward+backward: DDP ``no_sync`` in ``"local"`` mode (forward
        included, as DDP requires), otherwise a no-op. Use it in manual loops::

            with opt.first_pass_context():
                loss_fn(model(x), y).backward()
            opt.first_step(zero_grad=True)
        """
        return systems.no_sync(self._local_ddp())

    # -- pieces ---------------------------------------------------------------------------------

    def _backup_for_this_step(self) -> systems.CopyBackup:
        """Swap where it is safe; the in-place copy in a step being compiled or captured in a
        CUDA graph (``swap_storage=None``), or always (``False``)."""
        if self._swap_backup is None or self._copy_backup is None:
            return self._swap_backup or self._copy_backup
        return self._copy_backup if systems.fixed_storage_needed() else self._swap_backup

    def _radius(self, group: dict[str, Any]) -> float:
        """The ascent radius of ``group`` this step (ESAM scales it; SAM: ``rho``)."""
        return group["rho"]

    def _before_base_step(self) -> None:
        """Hook for variants (LookSAM): ``.grad`` holds the SAM gradient at ``w`` (pulled back),
        before clipping and the base step. A no-op for SAM."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_checked_values", {})
        self.__dict__.setdefault("_group_records", _GROUP_HYPERPARAMETERS)
        self.__dict__.setdefault("gradient_centralization", False)

    def _validate(self, group: dict[str, Any]) -> None:
        validate_group(self._group_records, group)

    def _collect(self) -> list[Part]:
        """One :class:`Part` per (group, rule): the perturbed parameters with a gradient. A
        ``riemannian`` group's flat parameters go to plain SAM (identity metric, ``x + eps``)."""
        parts = []
        # Schedulers and users edit groups: changed ones are checked before anything moves.
        revalidate_changed_groups(
            self.param_groups, self._group_records, self._checked_values, self._validate
        )
        for group in self.param_groups:
            if not group["perturbed"]:
                continue
            params = [p for p in group["params"] if p.grad is not None and self._selects(p)]
            if not params:
                continue
            if any(p.grad.layout != torch.strided for p in params):
                raise ValueError(
                    "Invalid gradient: SAM needs dense gradients (a sparse one, e.g. from "
                    "nn.Embedding(sparse=True), has no ascent direction here); use dense ones "
                    "or exclude those parameters with perturb="
                )
            rule = ASCENT_RULES[group["ascent"]]
            if isinstance(rule, Riemannian):
                manifolds = [manifold_of(p) for p in params]
                curved = [not m.is_flat for m in manifolds]
                if any(curved):
                    chosen = [
                        (p, m) for p, m, c in zip(params, manifolds, curved, strict=True) if c
                    ]
                    part = Part(group, rule, [p for p, _ in chosen], [p.grad for p, _ in chosen])
                    part.manifolds = [m for _, m in chosen]
                    parts.append(part)
                params = [p for p, c in zip(params, curved, strict=True) if not c]
                rule = ASCENT_RULES["sam"]
            if params:
                parts.append(Part(group, rule, params, [p.grad for p in params]))
        for part in parts:
            part.workspace = self._workspace
        return parts

    def _euclidean_norm(self, parts: list[Part], norms: list[list[Tensor]], dtype) -> Any:
        """``||g||`` over every perturbed parameter, or ``None`` when neither Monge nor the
        diagnostics need it (the identity rules' metric norms are already it)."""
        if not self.diagnostics and not any(p.group["ascent"] == "monge" for p in parts):
            return None
        found = []
        for part, part_norms in zip(parts, norms, strict=True):
            euclidean = part.rule.euclidean
            found += part_norms if euclidean else torch._foreach_norm(part.grads, 2, dtype=dtype)
        return _global_norm(found)

    @contextlib.contextmanager
    def _restored_on_error(self) -> Iterator[None]:
        """On any exception (``KeyboardInterrupt`` included) put ``w`` back before it
        propagates: an interrupted step must not leave the weights at ``w + eps``."""
        try:
            yield
        except BaseException:
            with torch.no_grad():
                self.restore()
            self._phase = "idle"
            raise

    @contextlib.contextmanager
    def _zero_grad_on_exit(self, zero_grad: bool) -> Iterator[None]:
        try:
            yield
        finally:
            if zero_grad:
                self.zero_grad(set_to_none=True)

    def _local_ddp(self) -> nn.Module | None:
        """The DDP module when each replica perturbs with its own gradient."""
        return systems.ddp_module(self.model) if self.perturbation_sync == "local" else None

    def _record_diagnostics(self, parts, eps, metric_norm: Tensor, euclidean: Tensor) -> None:
        eps_norms = torch._foreach_norm(eps, 2, dtype=metric_norm.dtype) if eps else []
        rhos = {part.group["rho"] for part in parts}
        self.last_diagnostics = {
            "grad_norm": euclidean,
            "grad_metric_norm": metric_norm,
            "perturbation_norm": _global_norm(eps_norms) if eps else metric_norm.new_zeros(()),
        }
        if len(rhos) == 1:
            # eps^T M eps = rho^2 for every ellipsoid rule: the radius in the method's metric.
            self.last_diagnostics["perturbation_metric_norm"] = metric_norm.new_tensor(rhos.pop())
        if any(part.group["ascent"] == "monge" for part in parts):
            rho = parts[0].group["rho"]
            self.last_diagnostics["effective_radius"] = rho * torch.rsqrt(1 + euclidean.square())

    def _clip(self) -> None:
        """The final gradient, before every base step: centralized (if asked), then clipped."""
        if self.gradient_centralization:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.grad.dim() >= 2:
                        # g <- g - mean of g over every dimension but the first (per output row)
                        p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
        if self.max_grad_norm is None:
            return
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)

    # -- construction helpers -------------------------------------------------------------------

    def _parameter_names(self) -> dict[Tensor, str]:
        names: dict[Tensor, str] = {}
        if self.model is not None:
            names.update({p: name for name, p in self.model.named_parameters()})
        for group in self.param_groups:
            for name, p in zip(group.get("param_names", ()), group["params"], strict=False):
                names.setdefault(p, name)
        return names

    def _selects(self, p: Tensor) -> bool:
        return self._selected is None or self._selected(p)

    def _resolve_perturb(self, perturb: Any) -> Callable[[Tensor], bool] | None:
        if isinstance(perturb, str):
            if perturb == "all":
                return None
            if perturb == "norm":
                if self.model is None:
                    raise ValueError("Invalid perturb: 'norm' (SAM-ON) needs model=the module")
                return set(normalization_parameters(self.model)).__contains__
            raise ValueError(
                f"Invalid perturb: {perturb!r} (use 'all', 'norm', a predicate or parameters)"
            )
        if callable(perturb):
            if not self._names:
                raise ValueError(
                    "Invalid perturb: a predicate needs parameter names (pass "
                    "model=... or named parameters)"
                )
            return lambda p: bool(perturb(self._names.get(p, ""), p))
        try:
            chosen = set(perturb)
        except TypeError:
            raise ValueError(f"Invalid perturb: {perturb!r}") from None
        if not all(isinstance(p, Tensor) for p in chosen):
            raise ValueError("Invalid perturb: an iterable must contain parameters")
        return chosen.__contains__

    def _is_bias(self, p: Tensor) -> bool:
        name = self._names.get(p)
        return name.endswith("bias") if name is not None else p.dim() <= 1

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the wrapper and its base optimizer (one shared dict)."""
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        validate_group(_GROUP_HYPERPARAMETERS, param_group)
        _refuse_complex([param_group])
        self.base_optimizer.add_param_group(param_group)
        self._names = self._parameter_names()

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict`` (its groups carry SAM's hyperparameters too)."""
        state = self.base_optimizer.state_dict()
        state["sam"] = {"version": 2, "base": type(self.base_optimizer).__name__}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (or the base optimizer's own) and re-link the shared groups.

        Raises:
            ValueError: the state was saved by another optimizer (another SAM base, or groups
                lacking the base's settings): caught here, not as a ``KeyError`` at the next step.
        """
        state_dict = dict(state_dict)
        base = type(self.base_optimizer).__name__
        saved = (state_dict.pop("sam", None) or {}).get("base", base)
        if saved != base:
            raise ValueError(
                f"Invalid state_dict: saved by SAM over {saved}, loaded into SAM over {base}"
            )
        # The base's settings its groups hold now (before load_state_dict, whose __setstate__
        # may add defaults that no group carries, e.g. torch's "differentiable").
        needed = set(self.base_optimizer.defaults).intersection(*self.param_groups)
        previous = self.base_optimizer.state_dict()
        self.base_optimizer.load_state_dict(state_dict)
        groups = self.base_optimizer.param_groups
        missing = sorted({k for g in groups for k in needed if k not in g})
        if missing:
            self.base_optimizer.load_state_dict(previous)
            raise ValueError(
                f"Invalid state_dict: its param groups lack {', '.join(missing)}, which {base} "
                "needs (a state_dict saved by another optimizer?)"
            )
        self.param_groups = groups
        self.state = self.base_optimizer.state
        for group in self.param_groups:
            for key in self.defaults:
                group.setdefault(key, self.defaults[key])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every parameter."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return f"SAM(base={self.base_optimizer!r})"


def _global_norm(norms: list[Tensor]) -> Tensor:
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


def _refuse_complex(groups: list[dict]) -> None:
    if any(p.is_complex() for group in groups for p in group["params"]):
        raise ValueError(
            "Invalid params: SAM does not support complex parameters (the ascent metric is "
            "defined on real coordinates); optimize torch.view_as_real(...) of them instead"
        )


def _check_base_settings(base: Any, settings: dict[str, Any]) -> None:
    """A misspelt setting is neither SAM's nor the base's: name both lists, suggest the closest
    (the base's constructor would otherwise raise a bare ``TypeError``)."""
    if not settings:
        return
    if isinstance(base, str):
        try:
            accepted = [h.name for h in get_optimizer_entry(base).hyperparameters]
        except ValueError:
            return  # resolve_base_optimizer reports the unknown name
    else:
        try:
            signature = inspect.signature(base)
        except (TypeError, ValueError):
            return
        kinds = [p.kind for p in signature.parameters.values()]
        if inspect.Parameter.VAR_KEYWORD in kinds:
            return  # the base takes anything: it checks its own
        accepted = [n for n in list(signature.parameters)[1:] if n != "self"]
    unknown = [key for key in settings if key not in accepted]
    if unknown:
        ours = [h.name for h in SAM.HYPERPARAMETERS]
        label = base if isinstance(base, str) else getattr(base, "__name__", repr(base))
        raise ValueError(unknown_setting_message(unknown, "SAM", ours, label, accepted))


def unknown_setting_message(
    unknown: list[str], wrapper: str, ours: list[str], base: str, theirs: list[str]
) -> str:
    """``Unknown hyperparameter 'rhoo' ... did you mean 'rho'?`` with both lists of settings."""
    names = ", ".join(map(repr, unknown))
    close = difflib.get_close_matches(unknown[0], [*ours, *theirs], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"Unknown hyperparameter {names} for {wrapper} over {base}{hint} "
        f"({wrapper}'s: {', '.join(ours)}; {base}'s: {', '.join(theirs)})"
    )
