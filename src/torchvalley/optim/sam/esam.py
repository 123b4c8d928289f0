r"""ESAM: SAM with stochastic weight perturbation and sharpness-sensitive data selection.

One step (any ascent geometry, any base optimizer)::

    S = {p : u_p < beta}, u_p ~ U(0, 1)        # SWP: each parameter tensor drawn with prob. beta
    l_b = closure()                            # clean pass at w; gradients of S only
    w = w + eps_S,  eps_S = (rho / beta) M^-1 g_S / sqrt(g_S^T M^-1 g_S)
    l_a = closure(backward=False)              # SDS: per-example losses at w + eps, no backward
    B' = top ceil(gamma |B|) of l_a - l_b      # the examples whose loss rises most
    closure(subset=B')                         # perturbed pass on B' only
    w = backup; base step with that gradient

Costs: the clean backward skips the weight gradients of the tensors outside ``S`` (outside DDP,
by turning their ``requires_grad`` off for that pass); the data selection adds a forward pass of
the full batch without backward and shrinks the perturbed forward and backward to ``gamma`` of
the batch. In units of one forward (F) and one backward (B ~ 2F) of the full batch:
``F + B_S + F + gamma (F + B)``, against SAM's ``2 (F + B)``; with ``beta = 0.5, gamma = 0.5``
about 0.85 of SAM's work when the weight gradients are half the backward (the paper reports
~1.3-1.4x SGD's time, against SAM's 2x, on CIFAR/ImageNet GPUs).

With ``beta = 1`` and ``gamma = 1`` the step is SAM's bit for bit (no draw, no extra pass).

Data selection needs per-example losses, so the closure takes three keyword arguments (and
behaves as a plain closure when called without them)::

    def closure(subset=None, backward=True, per_example=False):
        if backward:
            optimizer.zero_grad()
        x, y = (inputs, targets) if subset is None else (inputs[subset], targets[subset])
        losses = F.cross_entropy(model(x), y, reduction="none")   # shape (len(x),)
        if backward:
            losses.mean().backward()
        return losses if per_example else losses.mean()

(:func:`per_example_closure` builds it; the harness's runner passes one.) A plain closure
works with ``gamma = 1`` only.

Du, Yan, Feng, Zhou, Zhen, Goh, Tan, *Efficient Sharpness-aware Minimization for Improved
Training of Neural Networks*, ICLR 2022 (official code dydjw9/Efficient_SAM: per-tensor SWP by
``requires_grad``, the radius divided by ``beta``, paper defaults ``beta = gamma = 0.5``). The
official selection keeps the examples *above* the k-th largest increase (one fewer, none on
ties); here the top ``ceil(gamma |B|)`` (at least one) are kept.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from torchvalley.optim.sam import systems
from torchvalley.optim.sam.engine import SAM
from torchvalley.registry import Hyperparameter, validate_group

__all__ = ["ESAM", "per_example_closure"]

_ESAM_HYPERPARAMETERS = (
    Hyperparameter("beta", "unit_interval", 0.5, "SWP: probability a tensor is perturbed (> 0)"),
    Hyperparameter("gamma", "unit_interval", 0.5, "SDS: fraction of the batch in pass 2 (> 0)"),
    Hyperparameter("seed", "any", 0, "seed of the SWP draws (an int)"),
)


def _check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    settings = validate_group(_ESAM_HYPERPARAMETERS, settings)
    for name in ("beta", "gamma"):
        if not float(settings[name]) > 0:
            raise ValueError(f"Invalid {name}: {settings[name]} (must be in (0, 1])")
    seed = settings["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Invalid seed: {seed!r} (an int)")
    return settings


class ESAM(SAM):
    """SAM with stochastic weight perturbation (``beta``) and data selection (``gamma``).

    Args:
        params, base_optimizer, rho, ascent, perturb, **kwargs: as :class:`SAM`.
        beta: probability that a parameter tensor is perturbed this step (``1``: all).
        gamma: fraction of the batch used by the perturbed pass (``1``: all; below 1 the
            closure must take ``subset=`` and ``backward=``, see the module docstring).
        seed: seed of the generator of the SWP draws (its state is in ``state_dict``).
    """

    HYPERPARAMETERS: ClassVar[tuple[Hyperparameter, ...]] = (
        *SAM.HYPERPARAMETERS,
        *_ESAM_HYPERPARAMETERS,
    )

    def __init__(
        self,
        params: Any,
        base_optimizer: Any = "sgd",
        rho: float = 0.05,
        ascent: str = "sam",
        perturb: Any = "all",
        *,
        beta: float = 0.5,
        gamma: float = 0.5,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        settings = _check_settings({"beta": beta, "gamma": gamma, "seed": seed})
        super().__init__(params, base_optimizer, rho, ascent, perturb, **kwargs)
        self.beta, self.gamma = float(settings["beta"]), float(settings["gamma"])
        self.generator = torch.Generator().manual_seed(settings["seed"])
        self._chosen: set[Tensor] | None = None  # this step's SWP draw (None: every tensor)

    @torch.no_grad()
    def step(self, closure: Callable[..., Any] | None = None, *, grad_scaler: Any = None) -> Any:
        """One ESAM step; returns the clean pass's (mean) loss."""
        if closure is None:
            raise RuntimeError("ESAM.step() needs a closure (see the module docstring)")
        selective = self.gamma < 1
        if selective and not _takes_subset(closure):
            raise ValueError(
                "Invalid closure: ESAM's data selection (gamma < 1) needs a closure taking "
                "subset=, backward= and per_example= (per_example=True: per-example losses) "
                "(torchvalley.optim.sam.esam.per_example_closure builds one); or set gamma=1"
            )
        evaluate, closure = closure, torch.enable_grad()(closure)  # evaluate: under no_grad
        self._chosen = self._draw()
        try:
            with self.first_pass_context(), self._clean_pass_gradients():
                clean = closure(per_example=True) if selective else closure()
            with self._restored_on_error():
                climbed = self.first_step(zero_grad=True, grad_scaler=grad_scaler)
                if climbed or not self.first_pass_overflowed:
                    if selective:
                        closure(subset=self._select(evaluate, clean))
                    else:
                        closure()
                self.second_step(grad_scaler=grad_scaler)
        finally:
            self._chosen = None
        return clean.mean() if selective else clean

    def _draw(self) -> set[Tensor] | None:
        if self.beta >= 1:
            return None  # SAM: no draw at all
        params = [p for group in self.param_groups for p in group["params"]]
        draws = torch.rand(len(params), generator=self.generator).tolist()
        return {p for p, u in zip(params, draws, strict=True) if u < self.beta}

    @contextlib.contextmanager
    def _clean_pass_gradients(self) -> Iterator[None]:
        """Outside DDP, tensors not drawn get no gradient in the clean pass (the saving)."""
        off: list[Tensor] = []
        if self._chosen is not None and systems.ddp_module(self.model) is None:
            params = [p for group in self.param_groups for p in group["params"]]
            off = [p for p in params if p.requires_grad and p not in self._chosen]
            if len(off) == sum(p.requires_grad for p in params):
                off = []  # nothing drawn: keep every gradient (no perturbation this step)
        try:
            for p in off:
                p.requires_grad_(False)
            yield
        finally:
            for p in off:
                p.requires_grad_(True)

    def _select(self, evaluate: Callable[..., Any], clean: Tensor) -> Tensor:
        before = _per_example(clean)
        after = _per_example(evaluate(backward=False, per_example=True))  # at w + eps, no_grad
        if after.shape != before.shape:
            raise ValueError("Invalid closure: per-example losses changed shape between passes")
        count = max(1, math.ceil(self.gamma * before.numel()))
        chosen = torch.topk((after - before).reshape(-1), count).indices
        return chosen.sort().values

    def _selects(self, p: Tensor) -> bool:
        return super()._selects(p) and (self._chosen is None or p in self._chosen)

    def _radius(self, group: dict[str, Any]) -> float:
        rho = group["rho"]
        return rho if self._chosen is None else rho / self.beta  # rho / beta on the drawn part

    def state_dict(self) -> dict[str, Any]:
        """SAM's ``state_dict`` plus the SWP generator's state."""
        state = super().state_dict()
        state["esam"] = {"generator": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; one without ESAM's record is refused (ValueError)."""
        state_dict = dict(state_dict)
        record = state_dict.pop("esam", None)
        if not isinstance(record, dict) or "generator" not in record:
            raise ValueError("Invalid state_dict: not saved by ESAM (no 'esam' record)")
        super().load_state_dict(state_dict)
        self.generator.set_state(record["generator"].clone())

    def __repr__(self) -> str:
        return f"ESAM(beta={self.beta}, gamma={self.gamma}, base={self.base_optimizer!r})"


def _takes_subset(closure: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(closure).parameters
    except (TypeError, ValueError):
        return False
    return {"subset", "backward", "per_example"} <= set(parameters)


def _per_example(losses: Any) -> Tensor:
    if not isinstance(losses, Tensor) or losses.dim() != 1:
        raise ValueError(
            "Invalid closure: with gamma < 1 it must return per-example losses (a 1-D tensor)"
        )
    return losses.detach()


def per_example_closure(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    loss_fn: Callable[..., Tensor],
    inputs: Tensor,
    targets: Tensor,
) -> Callable[..., Tensor]:
    """The closure ESAM's data selection needs, for a ``loss_fn`` taking ``reduction="none"``
    (``torch.nn.functional.cross_entropy``, ``mse_loss`` with per-example rows, ...).

    ``closure()`` is a plain training closure (backward on the mean loss, which it returns);
    ``per_example=True`` returns the per-example losses instead, ``backward=False`` only
    evaluates, ``subset=index`` trains on ``inputs[index]``."""

    def closure(
        subset: Tensor | None = None, backward: bool = True, per_example: bool = False
    ) -> Tensor:
        if backward:
            optimizer.zero_grad(set_to_none=True)
        x, y = (inputs, targets) if subset is None else (inputs[subset], targets[subset])
        losses = loss_fn(model(x), y, reduction="none")
        if losses.dim() > 1:
            losses = losses.reshape(losses.shape[0], -1).mean(dim=1)
        loss = losses.mean()
        if backward:
            loss.backward()
        return losses.detach() if per_example else loss

    return closure
