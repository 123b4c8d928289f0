r"""Adversarial examples in the ∞-norm ball: FGSM and projected gradient descent (PGD).

* FGSM (Goodfellow, Shlens & Szegedy, *Explaining and Harnessing Adversarial Examples*, ICLR
  2015): ``x' = x + ε sign(∇_x L(f(x), y))``, one gradient.
* PGD (Madry et al., *Towards Deep Learning Models Resistant to Adversarial Attacks*, ICLR
  2018): from ``x`` (or a uniform point of the ball), ``steps`` times
  ``x' ← Π_{‖x'−x‖∞ ≤ ε}(x' + α sign(∇_x L))``.

Both evaluate the model in ``eval()`` mode by default, so BatchNorm uses (and does not update)
its running statistics and dropout is off, and put every submodule back in the mode it was in.
The input gradient is taken with ``torch.autograd.grad``: the parameters' ``.grad`` are left
untouched. For a linear model and a margin loss the worst perturbation of the ε-ball is known
in closed form (``−ε y sign(w)``) and FGSM finds it exactly (``tests/test_attacks.py``).

``bounds`` clamps the result: ``None`` (no clamping), ``(low, high)``, or ``"batch"``: the
smallest and largest value of the clean batch, as in HessianFlow's ABSA code (``fgsm`` in
``optm_utils.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["eval_mode", "fgsm", "pgd"]

Bounds = tuple[float, float] | str | None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` within the block; each submodule's own mode restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _check(epsilon: float, bounds: Bounds) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon >= 0:
        raise ValueError(f"Invalid epsilon: {epsilon!r} (a real number >= 0)")
    pair = isinstance(bounds, tuple | list) and len(bounds) == 2 and bounds[0] <= bounds[1]
    if bounds is not None and bounds != "batch" and not pair:
        raise ValueError(f"Invalid bounds: {bounds!r} (None, 'batch' or (low, high))")


def _clamp(adversarial: Tensor, clean: Tensor, bounds: Bounds) -> Tensor:
    if bounds is None:
        return adversarial
    if bounds == "batch":
        return adversarial.clamp(clean.min(), clean.max())
    return adversarial.clamp(bounds[0], bounds[1])


def _input_gradient(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor
) -> Tensor:
    point = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(point), targets)
        (gradient,) = torch.autograd.grad(loss, point)
    return gradient


def fgsm(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    epsilon: float,
    *,
    bounds: Bounds = None,
    use_eval_mode: bool = True,
) -> Tensor:
    """FGSM examples ``x + ε sign(∇_x loss_fn(model(x), targets))``, detached.

    Args:
        model: the classifier (its parameters' gradients are not touched).
        loss_fn: ``(outputs, targets) -> scalar`` (a mean or sum over the batch: the sign of
            each example's gradient does not depend on the positive factor).
        inputs, targets: the clean batch.
        epsilon: the ∞-norm radius ε ≥ 0.
        bounds: clamp the result (see the module docstring).
        use_eval_mode: evaluate ``model`` in eval mode (BatchNorm statistics untouched).

    Raises:
        ValueError: for a negative ``epsilon`` or malformed ``bounds``.
    """
    _check(epsilon, bounds)
    context = eval_mode(model) if use_eval_mode else contextlib.nullcontext()
    with context:
        gradient = _input_gradient(model, loss_fn, inputs, targets)
    return _clamp(inputs.detach() + epsilon * gradient.sign(), inputs.detach(), bounds)


def pgd(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    epsilon: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    bounds: Bounds = None,
    use_eval_mode: bool = True,
) -> Tensor:
    """PGD examples in the ∞-ball of radius ``epsilon`` around ``inputs``, detached.

    Args:
        steps: signed-gradient ascent steps.
        step_size: α (default ``2.5 ε / steps``, Madry et al.).
        random_start: start from a uniform point of the ball (drawn from ``generator``).
        The rest as in :func:`fgsm`.

    Raises:
        ValueError: for a negative ``epsilon``, ``steps < 1``, a negative ``step_size`` or
            malformed ``bounds``.
    """
    _check(epsilon, bounds)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (an integer >= 1)")
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    if not alpha >= 0:
        raise ValueError(f"Invalid step_size: {step_size!r} (a real number >= 0)")
    clean = inputs.detach()
    point = clean.clone()
    if random_start and epsilon > 0:
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype, device="cpu")
        point = point + epsilon * (2 * noise.to(clean.device) - 1)
        point = _clamp(point, clean, bounds)
    context = eval_mode(model) if use_eval_mode else contextlib.nullcontext()
    with context:
        for _ in range(steps):
            gradient = _input_gradient(model, loss_fn, point, targets)
            point = point + alpha * gradient.sign()
            point = torch.minimum(torch.maximum(point, clean - epsilon), clean + epsilon)
            point = _clamp(point, clean, bounds)
    return point.detach()
