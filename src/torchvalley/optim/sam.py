r"""Sharpness-aware minimization: one wrapper, pluggable ascent geometries, any base optimizer.

Every method here solves, to first order, the inner problem of

.. math::

    \min_w \max_{\epsilon^\top M \epsilon \le \rho^2} L(w + \epsilon)
    \quad\Rightarrow\quad
    \hat\epsilon = \rho\, \frac{M^{-1} g}{\sqrt{g^\top M^{-1} g}}, \qquad g = \nabla L(w),

and then lets the base optimizer step with :math:`\nabla L(w + \hat\epsilon)` at the original
weights. The *ascent rule* chooses the metric :math:`M`:

- ``sam``: :math:`M = I`, so :math:`\epsilon = \rho\, g / \lVert g\rVert`;
- ``asam``: :math:`M = T_w^{-2}` with :math:`T_w = |w| + \eta`, so
  :math:`\epsilon = \rho\, T^2 g / \lVert T g\rVert`;
- ``fisher``: :math:`M = F = \mathrm{diag}(1 + \eta_F g^2)`, so
  :math:`\epsilon = \gamma F^{-1} g / \sqrt{g^\top F^{-1} g}`;
- ``monge``: :math:`M = I + g g^\top`, so
  :math:`\epsilon = \rho\, g / (\lVert g\rVert \sqrt{1 + \lVert g\rVert^2})`;
- ``riemannian``: the parameter's own manifold (see below).

Papers: Foret et al., *Sharpness-Aware Minimization*, ICLR 2021 (sam); Kwon et al., *ASAM*,
ICML 2021 (asam: the official element-wise operator, :math:`T=|w|+\eta` on weights and
:math:`T=1` on biases; ``normalize_bias=True, eta=0`` gives the widely used davda54 variant);
Kim et al., *Fisher SAM*, ICML 2022 (fisher: the ellipsoid normalisation, so
:math:`\epsilon^\top F \epsilon = \gamma^2` exactly, with the diagonal empirical Fisher
:math:`1 + \eta_F g^2` of the minibatch gradient); Jacobsen & Arvanitidis, *Monge SAM*, 2025
(monge: :math:`G = I + \nabla\ell\nabla\ell^\top`, solved by Sherman–Morrison); Mueller et al.,
*Normalization Layers Are All That SAM Needs*, NeurIPS 2023 (``perturb="norm"``: SAM-ON);
Yun & Yang, *Riemannian SAM: Sharpness-Aware Minimization on Riemannian Manifolds*, NeurIPS
2023 (riemannian; ``lorentz_sam`` is its Lorentz instance with a Riemannian SGD base).

**Riemannian SAM** (``ascent="riemannian"``). Each perturbed parameter :math:`x` lives on a
manifold :math:`\mathcal M` (``p.manifold`` for a :class:`~torchvalley.ManifoldParameter`,
Euclidean otherwise). With the Euclidean gradient :math:`g` in ``.grad``:

.. math::

    r = \operatorname{egrad2rgrad}(x, g), \qquad
    \lVert r\rVert = \Big(\sum_p \langle r, r\rangle_x\Big)^{1/2}, \qquad
    \tilde x = R_x(\rho\, r / \lVert r\rVert),

the norm taken in each manifold's metric over all perturbed parameters and :math:`R` the
manifold's retraction (``retr``). After the perturbed pass (Euclidean gradient
:math:`\tilde g` at :math:`\tilde x`) :math:`x` is restored bit for bit and the gradient
handed to the base optimizer is

.. math::

    \operatorname{rgrad2egrad}\big(x, \mathcal T_{\tilde x \to x}\,
    \operatorname{egrad2rgrad}(\tilde x, \tilde g)\big),

the Riemannian gradient at the ascent point transported back to :math:`T_x\mathcal M`
(``transp``) and written as a Euclidean gradient, so that a Riemannian base optimizer
(``rsgd``, ``radam``: they apply ``egrad2rgrad`` at :math:`x`) receives exactly the
transported Riemannian gradient. Euclidean parameters (plain tensors or a ``Euclidean``
manifold) take exactly the ``sam`` path: identity metric, :math:`x + \epsilon` and identity
transport, so on them ``riemannian`` and ``sam`` give the same numbers. A group with
``rho = 0`` is not perturbed at all (the base step sees the clean gradient unchanged). Under
DDP the transport is local to each replica, so ``perturbation_sync="local"`` (ascent points
that differ per replica) is refused with manifold parameters in :meth:`SAM.step` and
:meth:`SAM.first_step`: the all-reduced second-pass gradient would be transported from a
different point on each replica. Use ``"global"`` or :meth:`SAM.step_micro_batches` (which
transports per replica before its single all-reduce).

**Which gradient defines the metric.** Fisher and Monge are not invariant to the scale of
the gradient. Their :math:`g` is the gradient of the loss the closure back-propagates, i.e.
the minibatch *mean* loss in the usual set-up, after unscaling when a ``GradScaler`` is used,
and per micro-batch with :meth:`SAM.step_micro_batches`. Under DDP in ``"local"`` mode it is
the replica's own gradient (m-sharpness); in ``"global"`` mode the all-reduced one.

**What is perturbed is independent of what is updated.** ``perturb`` selects the parameters
that receive :math:`\epsilon` (``"all"``, ``"norm"`` for every normalization layer's affine
parameters found by module type, a predicate ``(name, parameter) -> bool``, or an iterable of
parameters); all parameters with a gradient are updated by the base optimizer. A param group
may set ``perturbed=False`` and override ``rho``, ``ascent``, ``eta``, ``fisher_eta`` and
``normalize_bias``. With several groups, the norm :math:`\sqrt{g^\top M^{-1} g}` is taken over
all perturbed parameters (a block-diagonal metric) and each group's perturbation is scaled by
its own ``rho``.

Algorithm of one :meth:`SAM.step` (``closure`` zeroes grads, runs forward and backward, returns
the loss)::

    loss = closure()                   # clean pass at w (DDP "local": under no_sync)
    saved = w                          # exact copies of the perturbed parameters (and BN buffers)
    w = w + eps(w, g)                  # climb to the worst case in the method's metric
    closure()                          # gradient at w + eps
    w = saved                          # restore bit for bit (also params without a 2nd grad)
    clip(grad); base_optimizer.step()  # descend from w with the SAM gradient
    return loss

Example:
    >>> import torch
    >>> from torchvalley.optim import SAM
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
    >>> opt = SAM(model.parameters(), base_optimizer="sgd", rho=0.05, lr=0.1, momentum=0.9)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = torch.nn.functional.mse_loss(model(x), y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from torchvalley.manifolds.base import Manifold
from torchvalley.manifolds.euclidean import Euclidean
from torchvalley.registry import (
    Capabilities,
    Hyperparameter,
    get_optimizer_entry,
    register_optimizer,
    resolve_base_optimizer,
)
from torchvalley.validation import check_bool, check_non_negative, check_positive

__all__ = ["ASCENT_RULES", "SAM", "normalization_parameters"]

#: Module types whose affine parameters SAM-ON perturbs (BatchNorm*, SyncBatchNorm,
#: InstanceNorm* via ``_NormBase``, LayerNorm, GroupNorm, RMSNorm).
NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

_SAM_GROUP_KEYS = ("rho", "ascent", "eta", "fisher_eta", "normalize_bias", "perturbed")


def normalization_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The affine parameters of every normalization layer in ``model`` (found by module type,
    not by name, so e.g. a parameter called ``subnet.weight`` is never mistaken for one)."""
    found: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, NORMALIZATION_TYPES):
            found.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
    return found


# ---------------------------------------------------------------------------------------------
# Ascent rules. Each returns the diagonal of M^{-1/2} for a group's perturbed parameters (None
# for the identity), so that u = M^{-1/2} g gives the norm sqrt(g^T M^{-1} g) = ||u|| and
# M^{-1} g = M^{-1/2} u. Monge's rank-one metric is handled by a global factor in the engine.
# ---------------------------------------------------------------------------------------------

AscentRule = Callable[[list[torch.Tensor], list[torch.Tensor], list[bool], dict], Any]


def _identity_scale(params, grads, is_bias, group):
    return None


def _asam_scale(params, grads, is_bias, group):
    # T_w = |w| + eta on weights; biases keep T = 1 unless normalize_bias (davda54 variant).
    scale = torch._foreach_abs(params)
    torch._foreach_add_(scale, group["eta"])
    if not group["normalize_bias"]:
        for index, bias in enumerate(is_bias):
            if bias:
                scale[index].fill_(1.0)
    return scale


def _fisher_scale(params, grads, is_bias, group):
    # F = 1 + eta_F g^2 (diagonal empirical Fisher of the minibatch gradient); M^{-1/2} = F^{-1/2}.
    fisher = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(fisher, group["fisher_eta"])
    torch._foreach_add_(fisher, 1.0)
    torch._foreach_rsqrt_(fisher)
    return fisher


#: ascent name -> rule. ``monge`` uses the identity here plus the engine's global factor;
#: ``riemannian`` uses the identity for Euclidean parameters, and the engine handles parameters
#: on a curved manifold itself (metric norm, retraction, transport; see the module docstring).
ASCENT_RULES: dict[str, AscentRule] = {
    "sam": _identity_scale,
    "asam": _asam_scale,
    "fisher": _fisher_scale,
    "monge": _identity_scale,
    "riemannian": _identity_scale,
}


def _curved_manifold(p: torch.Tensor) -> Manifold | None:
    """The manifold of ``p`` if it is not Euclidean (``None`` for plain tensors and
    ``Euclidean`` manifold parameters, which the ``riemannian`` rule treats as ``sam``)."""
    manifold = getattr(p, "manifold", None)
    if manifold is None or isinstance(manifold, Euclidean):
        return None
    return manifold


def _check_ascent(name: str, value: Any) -> str:
    if value not in ASCENT_RULES:
        raise ValueError(f"Invalid {name}: {value!r} (one of {', '.join(ASCENT_RULES)})")
    return value


class SAM(torch.optim.Optimizer):
    """Sharpness-aware wrapper over any base optimizer (see the module docstring).

    Args:
        params: parameters or param groups (``(name, tensor)`` pairs are accepted; names are
            used to tell biases from weights for ASAM).
        base_optimizer: a registry name (``"sgd"``, ``"adamw"``, ...), an optimizer class, or
            a factory ``f(param_groups, **hyperparameters)``.
        rho: radius of the ascent step in the method's metric (Fisher-SAM's gamma).
        ascent: ``"sam"``, ``"asam"``, ``"fisher"``, ``"monge"`` or ``"riemannian"`` (each
            :class:`~torchvalley.ManifoldParameter` in its own manifold's geometry).
        perturb: ``"all"``, ``"norm"`` (SAM-ON; needs ``model``), a predicate
            ``(name, parameter) -> bool`` (needs names: ``model`` or named params), or an
            iterable of parameters.
        model: the module being trained. Optional; enables ``perturb="norm"``, clean-pass
            BatchNorm statistics and DDP ``no_sync`` in ``"local"`` mode.
        eta: ASAM's offset in :math:`T_w = |w| + \\eta` (official default 0.01).
        normalize_bias: ASAM: apply :math:`T_w` to biases too (davda54's variant).
        fisher_eta: Fisher-SAM's strength :math:`\\eta_F` in :math:`1 + \\eta_F g^2`.
        max_grad_norm: clip the *final* (second-pass) gradient to this global norm before the
            base step; ``None`` for no clipping.
        perturbation_sync: ``"local"`` (each DDP replica perturbs with its own gradient:
            m-sharpness, as in the paper) or ``"global"`` (all-reduced first gradient, identical
            perturbations). Needs ``model`` to be the DDP module for ``"local"``.
        bn_statistics: ``"clean"`` keeps BatchNorm running statistics from the clean pass only
            (the JAX reference; ``num_batches_tracked`` is not double counted), ``"both"``
            lets both passes update them (davda54's default). Needs ``model``.
        diagnostics: record ``last_diagnostics`` every step (tensors, no host sync).
        perturbed: default of the param-group flag ``perturbed`` (a group with ``False`` is
            updated but never perturbed).
        swap_storage: for the perturbed pass, point each parameter at a spare buffer holding
            ``w + eps`` instead of copying ``w`` aside, perturbing in place and copying it back:
            two fewer memory passes over the parameters per step, the same numbers, and ``w``
            is never written during the step. Off by default because parameters change
            storage during the second pass, which FSDP flat parameters, CUDA graphs and
            ``torch.compile`` of the training step do not allow.
        **base_hyperparameters: passed to the base optimizer (``lr``, ``momentum``, ...).
    """

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
        perturbation_sync: str = "local",
        bn_statistics: str = "clean",
        diagnostics: bool = False,
        perturbed: bool = True,
        swap_storage: bool = False,
        **base_hyperparameters: Any,
    ) -> None:
        check_non_negative("rho", rho)
        _check_ascent("ascent", ascent)
        check_non_negative("eta", eta)
        check_bool("normalize_bias", normalize_bias)
        check_non_negative("fisher_eta", fisher_eta)
        if max_grad_norm is not None:
            check_positive("max_grad_norm", max_grad_norm)
        if perturbation_sync not in ("local", "global"):
            raise ValueError(
                f"Invalid perturbation_sync: {perturbation_sync!r} (one of 'local', 'global')"
            )
        if bn_statistics not in ("clean", "both"):
            raise ValueError(f"Invalid bn_statistics: {bn_statistics!r} (one of 'clean', 'both')")
        check_bool("diagnostics", diagnostics)
        check_bool("swap_storage", swap_storage)
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        factory = resolve_base_optimizer(base_optimizer)

        defaults = {
            "rho": rho,
            "ascent": ascent,
            "eta": eta,
            "fisher_eta": fisher_eta,
            "normalize_bias": normalize_bias,
            "perturbed": check_bool("perturbed", perturbed),
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._check_group(group)
        # The base optimizer adopts the very same group dicts: lr, momentum, rho, ... live in one
        # place, so schedulers and param-group edits reach both.
        self.base_optimizer = factory(self.param_groups, **base_hyperparameters)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        if any(group.get("maximize", False) for group in self.param_groups):
            raise ValueError("Invalid maximize: SAM minimizes; a maximizing base is not supported")

        self.model = model
        self.max_grad_norm = max_grad_norm
        self.perturbation_sync = perturbation_sync
        self.bn_statistics = bn_statistics
        self.diagnostics = diagnostics
        self.swap_storage = swap_storage
        self.last_diagnostics: dict[str, torch.Tensor] = {}
        self._names = self._parameter_names()
        self._perturb_filter = self._resolve_perturb(perturb)
        # Scratch state of one step (not in state_dict: it only lives between the two passes).
        self._saved: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed: list[torch.Tensor] = []
        self._saved_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._originals: dict[torch.Tensor, torch.Tensor] = {}
        self._batchnorms: list[nn.Module] | None = None
        # Riemannian ascent: (parameter, manifold) pairs whose second-pass gradient must be
        # transported back to the restored point before the base step.
        self._transported: list[tuple[torch.Tensor, Manifold]] = []
        self._micro_batching = False
        # "idle" -> first_step -> "ascended" -> second_step -> "stepped": catches a second
        # second_step (the base update applied twice) and one without a first_step.
        self._phase = "idle"
        #: Whether the last first_step found a non-finite (scaled) gradient and skipped the ascent.
        self.first_pass_overflowed = False

    # -- construction helpers -------------------------------------------------------------------

    @staticmethod
    def _check_group(group: dict) -> None:
        check_non_negative("rho", group["rho"])
        _check_ascent("ascent", group["ascent"])
        check_non_negative("eta", group["eta"])
        check_non_negative("fisher_eta", group["fisher_eta"])
        check_bool("normalize_bias", group["normalize_bias"])
        check_bool("perturbed", group["perturbed"])

    def _parameter_names(self) -> dict[torch.Tensor, str]:
        names: dict[torch.Tensor, str] = {}
        if self.model is not None:
            names.update({p: name for name, p in self.model.named_parameters()})
        for group in self.param_groups:
            for name, p in zip(group.get("param_names", ()), group["params"], strict=False):
                names.setdefault(p, name)
        return names

    def _resolve_perturb(self, perturb: Any) -> Callable[[torch.Tensor], bool] | None:
        if isinstance(perturb, str):
            if perturb == "all":
                return None
            if perturb == "norm":
                if self.model is None:
                    raise ValueError("Invalid perturb: 'norm' (SAM-ON) needs model=the module")
                chosen = set(normalization_parameters(self.model))
                return chosen.__contains__
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
        if not all(isinstance(p, torch.Tensor) for p in chosen):
            raise ValueError("Invalid perturb: an iterable must contain parameters")
        return chosen.__contains__

    def _is_bias(self, p: torch.Tensor) -> bool:
        name = self._names.get(p)
        return name.endswith("bias") if name is not None else p.dim() <= 1

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the wrapper and its base optimizer (one shared dict)."""
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self._check_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        self._names = self._parameter_names()

    # -- the two halves of a step -----------------------------------------------------------------

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> bool:
        """Climb from ``w`` to ``w + eps`` using the gradients now in ``.grad``.

        The first-pass gradients are consumed: ``.grad`` is used as scratch space (its values
        afterwards are unspecified; ``None`` with ``zero_grad=True``), so zero the gradients
        before the second backward, as every closure does. With a ``grad_scaler`` the
        gradients are unscaled first; if they are not finite nothing is perturbed and ``False``
        is returned (the caller must then skip the second pass and call :meth:`second_step`,
        which skips the update).

        Returns:
            Whether the parameters were perturbed.
        """
        self.restore()
        self._phase = "idle"
        with self._restored_on_error():
            perturbed = self._ascend(zero_grad, grad_scaler)
        self._phase = "ascended"
        return perturbed

    def _ascend(self, zero_grad: bool, grad_scaler: Any) -> bool:
        groups = []
        for group in self.param_groups:
            if not group["perturbed"]:
                continue
            params = [
                p
                for p in group["params"]
                if p.grad is not None and (self._perturb_filter is None or self._perturb_filter(p))
            ]
            if params:
                groups.append((group, params, [p.grad for p in params]))
        all_grads = [g for _, _, grads in groups for g in grads]
        if (
            grad_scaler is not None
            and all_grads
            and not self._unscale_first_pass(all_grads, grad_scaler)
        ):
            self.first_pass_overflowed = True
            if zero_grad:
                self.zero_grad(set_to_none=True)
            return False
        self.first_pass_overflowed = False

        # u = M^{-1/2} g per group (in place on the gradients), then the global norm of u.
        # Norms in float32 at least (fp16/bf16 gradients overflow), float64 for float64 models.
        norm_dtype = (
            torch.float64 if any(g.dtype == torch.float64 for g in all_grads) else (torch.float32)
        )
        self._norm_dtype = norm_dtype
        uses_monge = any(group["ascent"] == "monge" for group, _, _ in groups)
        needs_euclidean = uses_monge or self.diagnostics
        curved_groups = [self._curved(group, params) for group, params, _ in groups]
        if (
            any(curved_groups)
            and not self._micro_batching
            and self.perturbation_sync == "local"
            and self._ddp_module() is not None
        ):
            if zero_grad:
                self.zero_grad(set_to_none=True)
            raise ValueError(
                "Invalid perturbation_sync: 'local' with ascent='riemannian' on manifold "
                "parameters under DDP: each replica would transport the all-reduced "
                "second-pass gradient from its own ascent point, and the replicas would "
                "diverge. Use perturbation_sync='global' or step_micro_batches()."
            )
        scales, norms, euclidean_norms = [], [], []
        for (group, params, grads), curved in zip(groups, curved_groups, strict=True):
            if curved:
                # Riemannian rule, curved parameters: r = egrad2rgrad(x, g) in place of g, and
                # its metric norm; the Euclidean parameters of the group continue as ``sam``.
                curved_grads = [grads[i] for i, _ in curved]
                if needs_euclidean:
                    euclidean_norms.extend(torch._foreach_norm(curved_grads, 2, dtype=norm_dtype))
                for i, manifold in curved:
                    p, g = params[i], grads[i]
                    g.copy_(manifold.egrad2rgrad(p, g))
                    squared = manifold.inner(p, g).to(norm_dtype).sum().clamp_min(0)
                    norms.append(squared.sqrt())
                indices = {i for i, _ in curved}
                params = [p for i, p in enumerate(params) if i not in indices]
                grads = [g for i, g in enumerate(grads) if i not in indices]
                if not grads:
                    scales.append(None)
                    continue
            is_bias = [self._is_bias(p) for p in params] if group["ascent"] == "asam" else []
            scale = ASCENT_RULES[group["ascent"]](params, grads, is_bias, group)
            if scale is not None:
                if needs_euclidean:
                    # ||g|| from the raw gradients, before the in-place scaling: recovering it
                    # as u / scale afterwards gives 0/0 = nan where ASAM's T = |w| + eta is 0.
                    euclidean_norms.extend(torch._foreach_norm(grads, 2, dtype=norm_dtype))
                torch._foreach_mul_(grads, scale)
            group_norms = torch._foreach_norm(grads, 2, dtype=norm_dtype)
            if needs_euclidean and scale is None:
                euclidean_norms.extend(group_norms)  # identity metric: ||u|| = ||g||, no 2nd pass
            scales.append(scale)
            norms.extend(group_norms)
        if not groups:
            self.last_diagnostics = {}
            if zero_grad:
                self.zero_grad(set_to_none=True)
            return False
        device = all_grads[0].device
        metric_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
        # Zero gradient: eps = 0 (and no 0/0).
        inverse_norm = metric_norm.clamp_min(torch.finfo(norm_dtype).tiny).reciprocal()
        euclidean_norm = None
        if needs_euclidean:
            euclidean_norm = torch.linalg.vector_norm(
                torch.stack([n.to(device) for n in euclidean_norms])
            )

        self._perturbed = []
        self._transported = []
        fold_scale = not self.diagnostics and all(g.device.type == "cpu" for g in all_grads)
        for (group, params, grads), scale, curved in zip(
            groups, scales, curved_groups, strict=True
        ):
            if curved:
                # rho = 0: the curved parameters stay exactly at w (a retraction by 0 need not
                # be bitwise the identity) and their gradient is handed over untransported.
                for i, manifold in curved:
                    if group["rho"] != 0:
                        self._perturb_on_manifold(
                            params[i], grads[i], manifold, group["rho"] * inverse_norm
                        )
                    elif self.diagnostics:
                        grads[i].zero_()  # the (absent) tangent step, for the diagnostics
                indices = {i for i, _ in curved}
                params = [p for i, p in enumerate(params) if i not in indices]
                grads = [g for i, g in enumerate(grads) if i not in indices]
                if not params:
                    continue
            if scale is not None:
                torch._foreach_mul_(grads, scale)  # now M^{-1} g
            factor = group["rho"] * inverse_norm
            if group["ascent"] == "monge":
                factor = factor * torch.rsqrt(1.0 + euclidean_norm.square())
            if self.swap_storage:
                self._perturb_by_swapping(params, grads, factor, fold_scale)
                self._perturbed.extend(params)
                continue
            saved = [self._saved_buffer(p) for p in params]
            torch._foreach_copy_(saved, params)  # exact copy of w
            if fold_scale:
                # One pass instead of two (scale the gradients, then add). On the CPU reading
                # the 0-d factor is not a device synchronisation, so no GPU stall is traded in.
                torch._foreach_add_(params, grads, alpha=float(factor))  # climb to w + eps
            else:
                torch._foreach_mul_(grads, factor)  # now eps (kept for the diagnostics)
                torch._foreach_add_(params, grads)  # climb to w + eps
            self._perturbed.extend(params)
        self._snapshot_batchnorm()
        if self.diagnostics:
            self._record_ascent_diagnostics(groups, metric_norm, euclidean_norm)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return True

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, grad_scaler: Any = None) -> None:
        """Restore ``w`` exactly (every perturbed parameter, with or without a second gradient,
        and the BatchNorm buffers of the clean pass) and step the base optimizer with the
        gradients now in ``.grad``. With a ``grad_scaler`` this runs ``unscale_``, clipping,
        ``scaler.step`` and ``scaler.update``; the update is skipped on overflow in either
        pass. With ``ascent="riemannian"`` the second-pass gradients of manifold parameters are
        first transported back to ``w`` (see the module docstring).

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
        self._transport_gradients()
        self.restore()
        if grad_scaler is not None:
            if self.first_pass_overflowed:
                # No second-pass gradient to inspect: skip the update and back off the scale.
                self._skip_scaled_step(grad_scaler)
            else:
                grad_scaler.unscale_(self.base_optimizer)
                self._clip()
                grad_scaler.step(self.base_optimizer)
                grad_scaler.update()
        else:
            self._clip()
            self.base_optimizer.step()
        self.first_pass_overflowed = False
        # Count as an optimizer step for LR schedulers attached to the wrapper (manual use).
        self._opt_called = True  # type: ignore[attr-defined]
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, grad_scaler: Any = None) -> Any:
        """One SAM step: clean pass, ascent, perturbed pass, restore, base step.

        Args:
            closure: zeroes the gradients, runs forward and backward (``scaler.scale(loss)
                .backward()`` with a ``grad_scaler``) and returns the loss. It is called twice.
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
        # A closure that raises (KeyboardInterrupt too) in the perturbed pass leaves w, not w + eps.
        with self._restored_on_error():
            perturbed = self.first_step(zero_grad=True, grad_scaler=grad_scaler)
            if perturbed or not self.first_pass_overflowed:
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
        should return its micro-batch's mean loss. Under DDP (``model`` the DDP module) every
        pass runs under ``no_sync`` and the averaged gradient is all-reduced once.

        Returns:
            The clean-pass losses.
        """
        if not closures:
            raise ValueError("step_micro_batches needs at least one closure")
        distributed = self._ddp_module() is not None
        params = [p for group in self.param_groups for p in group["params"]]
        accumulated: dict[torch.Tensor, torch.Tensor] = {}
        losses = []
        with self._restored_on_error():
            self._accumulate_micro_batches(closures, params, accumulated, losses, distributed)
        scale = 1.0 / len(closures)
        buffers = list(accumulated.values())
        torch._foreach_mul_(buffers, scale)
        if distributed:
            for buffer in buffers:
                torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.AVG)
        for p, buffer in accumulated.items():
            p.grad = buffer.to(p.dtype)
        self._clip()
        self.base_optimizer.step()
        self._phase = "stepped"
        self._opt_called = True  # type: ignore[attr-defined]
        return losses

    def _accumulate_micro_batches(self, closures, params, accumulated, losses, distributed):
        for closure in closures:
            closure = torch.enable_grad()(closure)
            with self._no_sync() if distributed else contextlib.nullcontext():
                losses.append(closure())
                # Every pass is local here and the transport precedes the single all-reduce,
                # so per-replica Riemannian ascent points are fine.
                self._micro_batching = True
                try:
                    self.first_step(zero_grad=True)
                finally:
                    self._micro_batching = False
                closure()
            self._transport_gradients()
            self.restore()
            seen = [p for p in params if p.grad is not None and p in accumulated]
            if seen:
                torch._foreach_add_([accumulated[p] for p in seen], [p.grad for p in seen])
            for p in params:
                if p.grad is not None and p not in accumulated:
                    # At least float32 (fp16/bf16 sums lose bits), never below the gradient's
                    # own precision (a float32 buffer would round float64 gradients).
                    dtype = torch.promote_types(p.grad.dtype, torch.float32)
                    accumulated[p] = p.grad.detach().to(dtype, copy=True)
            self.zero_grad(set_to_none=True)

    # -- pieces ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _restored_on_error(self):
        """On any exception (``KeyboardInterrupt`` included) put ``w`` back before it
        propagates: an interrupted step must not leave the weights at ``w + eps``."""
        try:
            yield
        except BaseException:
            with torch.no_grad():
                self.restore()
            self._phase = "idle"
            raise

    def first_pass_context(self) -> contextlib.AbstractContextManager:
        """Context for the clean forward+backward: DDP ``no_sync`` in ``"local"`` mode (forward
        included, as DDP requires), otherwise a no-op. Use it in manual loops::

            with opt.first_pass_context():
                loss_fn(model(x), y).backward()
            opt.first_step(zero_grad=True)
        """
        if self.perturbation_sync == "local" and self._ddp_module() is not None:
            return self._no_sync()
        return contextlib.nullcontext()

    def _ddp_module(self) -> nn.Module | None:
        model = self.model
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        return None

    def _no_sync(self) -> contextlib.AbstractContextManager:
        module = self._ddp_module()
        return module.no_sync() if module is not None else contextlib.nullcontext()

    def _saved_buffer(self, p: torch.Tensor) -> torch.Tensor:
        buffer = self._saved.get(p)
        if buffer is None or buffer.shape != p.shape or buffer.dtype != p.dtype:
            buffer = torch.empty_like(p, memory_format=torch.preserve_format)
            self._saved[p] = buffer
        return buffer

    @torch.no_grad()
    def restore(self) -> None:
        """Put back every perturbed parameter and BatchNorm buffer (in place: storage identity
        is kept for FSDP, CUDA graphs and compile). A no-op when nothing is perturbed; for
        training loops that must undo a :meth:`first_step` without a :meth:`second_step`."""
        if self._perturbed:
            if self._originals:  # swap_storage: point each parameter back at w, nothing copied
                for p in self._perturbed:
                    p.data = self._originals.pop(p)
            else:
                torch._foreach_copy_(self._perturbed, [self._saved[p] for p in self._perturbed])
            self._perturbed = []
        self._transported = []
        for buffer, saved in self._saved_buffers:
            buffer.copy_(saved)
        self._saved_buffers = []

    def _curved(self, group: dict, params: list[torch.Tensor]) -> list[tuple[int, Manifold]]:
        """``(index, manifold)`` of the parameters of a ``riemannian`` group that live on a
        curved manifold (empty for the other ascent rules)."""
        if group["ascent"] != "riemannian":
            return []
        found = [(i, _curved_manifold(p)) for i, p in enumerate(params)]
        return [(i, m) for i, m in found if m is not None]

    def _perturb_on_manifold(
        self, p: torch.Tensor, r: torch.Tensor, manifold: Manifold, factor: torch.Tensor
    ) -> None:
        """Move ``p`` to ``retr(p, factor * r)`` (``r`` the Riemannian gradient, overwritten by
        the tangent step), keeping ``p`` restorable bit for bit, and mark it for transport."""
        r.mul_(factor.to(r.dtype))  # the tangent step u = rho r / ||r|| (kept for diagnostics)
        ascent = manifold.retr(p, r)
        buffer = self._saved_buffer(p)
        if self.swap_storage:
            buffer.copy_(ascent)
            self._originals[p] = p.data
            p.data = buffer
        else:
            buffer.copy_(p)  # exact copy of w
            p.copy_(ascent)
        self._perturbed.append(p)
        self._transported.append((p, manifold))

    def _transport_gradients(self) -> None:
        """Riemannian ascent: replace each transported parameter's second-pass gradient
        :math:`\tilde g` (at the ascent point :math:`\tilde x`, where the parameter still is)
        by ``rgrad2egrad(x, transp(x~, x, egrad2rgrad(x~, g~)))`` at the saved point ``x``.
        Linear in :math:`\tilde g`, so a ``GradScaler``'s scale and non-finite values pass
        through to its later ``unscale_``."""
        for p, manifold in self._transported:
            if p.grad is None:
                continue
            here = self._originals[p] if self.swap_storage else self._saved[p]
            there = p.detach()
            riemannian = manifold.transp(there, here, manifold.egrad2rgrad(there, p.grad))
            p.grad.copy_(manifold.rgrad2egrad(here, riemannian))
        self._transported = []

    def _perturb_by_swapping(self, params, grads, factor, fold_scale: bool) -> None:
        """``swap_storage``: write ``w + eps`` into a spare buffer and point the parameter at it
        for the second pass; ``w`` is never written (restore points the parameter back)."""
        if fold_scale:
            alpha = float(factor)  # CPU: no device synchronisation
        else:
            torch._foreach_mul_(grads, factor)
            alpha = 1.0
        for p, g in zip(params, grads, strict=True):
            buffer = self._saved_buffer(p)
            torch.add(p, g, alpha=alpha, out=buffer)  # climb to w + eps, in one pass
            self._originals[p] = p.data
            p.data = buffer

    def _snapshot_batchnorm(self) -> None:
        if self.model is None or self.bn_statistics != "clean":
            return
        if self._batchnorms is None:  # found once: the model's structure does not change
            self._batchnorms = [
                m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
        for module in self._batchnorms:
            if not module.training:
                continue
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is None:
                    continue
                copy = self._saved.get(buffer)
                if copy is None or copy.shape != buffer.shape:
                    copy = self._saved[buffer] = buffer.clone()  # persistent, reused every step
                else:
                    copy.copy_(buffer)
                self._saved_buffers.append((buffer, copy))

    def _record_ascent_diagnostics(self, groups, metric_norm, euclidean_norm) -> None:
        eps = [p.grad for _, params, _ in groups for p in params]
        eps_norms = torch._foreach_norm(eps, 2, dtype=self._norm_dtype)
        device = metric_norm.device
        eps_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in eps_norms]))
        rhos = [group["rho"] for group, _, _ in groups]
        self.last_diagnostics = {
            "grad_norm": euclidean_norm,
            "grad_metric_norm": metric_norm,
            "perturbation_norm": eps_norm,
        }
        if len(set(rhos)) == 1:
            # eps^T M eps = rho^2 for every ellipsoid rule: the radius in the method's metric.
            self.last_diagnostics["perturbation_metric_norm"] = metric_norm.new_tensor(rhos[0])
        if any(group["ascent"] == "monge" for group, _, _ in groups):
            self.last_diagnostics["effective_radius"] = rhos[0] * torch.rsqrt(
                1.0 + euclidean_norm.square()
            )

    def _unscale_first_pass(self, grads: list[torch.Tensor], grad_scaler: Any) -> bool:
        scale = grad_scaler._scale if getattr(grad_scaler, "_scale", None) is not None else None
        if not grad_scaler.is_enabled() or scale is None:
            return True
        found_inf = torch.zeros(1, device=grads[0].device)
        inverse = scale.double().reciprocal().float().to(grads[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inverse)
        module = self._ddp_module()
        if module is not None and self.perturbation_sync == "local":
            # Local first-pass gradients differ per replica: every rank must take the same
            # decision, or one skips its second (all-reducing) backward while another runs it.
            torch.distributed.all_reduce(found_inf, group=module.process_group)
        # GradScaler.step synchronises on found_inf too; this path cannot avoid one sync.
        return not bool(found_inf.item())

    @staticmethod
    def _skip_scaled_step(grad_scaler: Any) -> None:
        """Record a skipped step on ``grad_scaler`` exactly as ``scaler.update()`` does after
        an overflow (scale times ``backoff_factor``, growth tracker reset to 0), through its
        public ``state_dict``/``load_state_dict``: after a first-pass overflow there is no
        gradient for ``unscale_``/``step`` to find the overflow in."""
        state = grad_scaler.state_dict()
        if state:  # empty for a disabled scaler
            state["scale"] *= state["backoff_factor"]
            state["_growth_tracker"] = 0
            grad_scaler.load_state_dict(state)

    def _clip(self) -> None:
        if self.max_grad_norm is None:
            return
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict`` (its groups carry SAM's hyperparameters too)."""
        state = self.base_optimizer.state_dict()
        state["sam"] = {"version": 1}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` into the base optimizer and re-link the shared groups."""
        state_dict = dict(state_dict)
        state_dict.pop("sam", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        for group in self.param_groups:
            for key in _SAM_GROUP_KEYS:
                group.setdefault(key, self.defaults[key])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every parameter."""
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return f"SAM(base={self.base_optimizer!r})"


# ---------------------------------------------------------------------------------------------
# Registry entries
# ---------------------------------------------------------------------------------------------

_SAM_CAPABILITIES = Capabilities(
    needs_closure=True, passes_per_step=2, wraps_base=True, separable=False, accepts_model=True
)


def _hyperparameters(
    rho_default: float,
    ascent_default: str,
    perturb_default: str = "all",
    base_default: str = "sgd",
) -> tuple[Hyperparameter, ...]:
    """The documented hyperparameters of a SAM registry entry, with that entry's defaults.

    Args:
        rho_default: default ascent radius.
        ascent_default: default ascent rule (a key of :data:`ASCENT_RULES`).
        perturb_default: default ``perturb`` selection.
        base_default: default base optimizer (a registry name).

    Returns:
        The hyperparameter specifications.
    """
    return (
        Hyperparameter(
            "base_optimizer", "optimizer", base_default, "registry name or optimizer class"
        ),
        Hyperparameter("rho", "non_negative", rho_default, "radius of the ascent step"),
        Hyperparameter(
            "ascent", "choice", ascent_default, "ascent geometry", choices=tuple(ASCENT_RULES)
        ),
        Hyperparameter("perturb", "any", perturb_default, "all | norm | predicate | parameters"),
        Hyperparameter("perturbed", "bool", True, "param-group flag: perturb this group"),
        Hyperparameter("model", "any", None, "the module (BatchNorm stats, SAM-ON, DDP)"),
        Hyperparameter("eta", "non_negative", 0.01, "ASAM's offset in T = |w| + eta"),
        Hyperparameter("normalize_bias", "bool", False, "ASAM: apply T to biases too"),
        Hyperparameter("fisher_eta", "non_negative", 1.0, "Fisher-SAM: F = 1 + eta g^2"),
        Hyperparameter("max_grad_norm", "optional_positive", None, "clip the final gradient"),
        Hyperparameter(
            "perturbation_sync", "choice", "local", "DDP perturbation", choices=("local", "global")
        ),
        Hyperparameter(
            "bn_statistics",
            "choice",
            "clean",
            "BatchNorm running statistics from",
            choices=("clean", "both"),
        ),
        Hyperparameter("diagnostics", "bool", False, "record last_diagnostics each step"),
        Hyperparameter("swap_storage", "bool", False, "perturb in a spare buffer (faster)"),
    )


def _wrapper(**fixed: Any) -> Callable[..., SAM]:
    """A factory building :class:`SAM` with ``fixed`` arguments (overridable) preset."""

    def factory(params: Any, **hyperparameters: Any) -> SAM:
        return SAM(params, **{**fixed, **hyperparameters})

    return factory


_SGD_EXAMPLE = {"base_optimizer": "sgd", "lr": 0.05, "momentum": 0.9}

# name, fixed constructor arguments, default rho (ASAM and SAM-ON work at larger radii), summary,
# paper. Each entry's example uses its default rho; the second group takes a larger one.
_VARIANTS = (
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
)

for _name, _fixed, _rho, _summary, _paper in _VARIANTS:
    register_optimizer(
        _name,
        _wrapper(**_fixed) if _fixed else SAM,
        capabilities=_SAM_CAPABILITIES,
        hyperparameters=_hyperparameters(
            _rho, _fixed.get("ascent", "sam"), _fixed.get("perturb", "all")
        ),
        summary=_summary,
        family="sharpness-aware",
        paper=_paper,
        example={**_SGD_EXAMPLE, "rho": _rho},
        group_example={"rho": 10 * _rho if _rho < 0.5 else 4 * _rho, "lr": 0.01},
    )


# Riemannian SAM's named instance: Lorentz SAM over Riemannian SGD. Registered once ``rsgd``
# is (torchvalley.optim.riemannian is imported before this module): the entry's example and
# default base optimizer must resolve.
try:
    get_optimizer_entry("rsgd")
except ValueError:  # pragma: no cover - only while the Riemannian optimizers are absent
    pass
else:
    register_optimizer(
        "lorentz_sam",
        _wrapper(ascent="riemannian", base_optimizer="rsgd"),
        capabilities=dataclasses.replace(_SAM_CAPABILITIES, manifold_aware=True),
        hyperparameters=_hyperparameters(0.05, "riemannian", base_default="rsgd"),
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
