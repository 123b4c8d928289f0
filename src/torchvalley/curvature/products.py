"""One-off curvature-vector products: ``Hv``, ``Gv`` and ``Fv`` for a model, a loss and data.

Each builds a :class:`~torchvalley.curvature.operator.CurvatureOperator` for one product; to
multiply several vectors at the same point, build the operator once
(``CurvatureOperator.of(model, loss_fn, data, ...)``) and call its ``matvec``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchvalley.curvature.function import LossFunction, ParameterFunction, Vector
from torchvalley.curvature.operator import (
    CURVATURES,
    STRATEGIES,
    CurvatureOperator,
    PerExampleLoss,
)

__all__ = [
    "CURVATURES",
    "STRATEGIES",
    "CurvatureOperator",
    "PerExampleLoss",
    "fisher_vector_product",
    "gauss_newton_vector_product",
    "hessian_vector_product",
]


def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Any,
    vector: Sequence[torch.Tensor],
    *,
    bn_mode: str = "eval",
    parameters: Sequence[str] | None = None,
    strategy: str = "auto",
) -> Vector:
    """The Hessian of the loss times ``vector``, ``Hv`` (Pearlmutter 1994).

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: one ``(inputs, targets)`` batch or an iterable of batches (averaged weighted by
            batch size).
        vector: tensors shaped like the selected parameters.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics, running
            buffers untouched).
        parameters: names of the parameters to differentiate with respect to (default: all
            that require grad).
        strategy: ``"auto"`` (default), ``"double_backward"``, ``"double_backward_per_batch"``
            or ``"forward_over_reverse"`` (see the module docstring).

    Returns:
        ``Hv`` as a tuple of parameter-shaped tensors.

    Raises:
        ValueError: for an invalid ``bn_mode``, ``strategy``, ``parameters`` or ``vector``.

    Example:
        >>> model = torch.nn.Linear(2, 1).double()
        >>> data = (torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
        >>> v = tuple(torch.ones_like(p) for p in model.parameters())
        >>> hv = hessian_vector_product(model, torch.nn.functional.mse_loss, data, v)
        >>> [tuple(t.shape) for t in hv]
        [(1, 2), (1,)]
    """
    function = ParameterFunction(model, loss_fn, data, parameters=parameters, bn_mode=bn_mode)
    return CurvatureOperator(function, strategy=strategy).matvec(vector)


def gauss_newton_vector_product(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Any,
    vector: Sequence[torch.Tensor],
    *,
    bn_mode: str = "eval",
    parameters: Sequence[str] | None = None,
) -> Vector:
    """The generalised Gauss–Newton matrix times ``vector``, ``Gv = Σ_b w_b J_bᵀ H_b J_b v``.

    ``J_b`` is the Jacobian of the model's outputs on batch ``b`` with respect to the selected
    parameters and ``H_b`` the Hessian of ``loss_fn(·, targets_b)`` with respect to the outputs
    (Schraudolph 2002). For softmax cross-entropy and MSE (negative log-likelihoods of an
    exponential family in its natural parameters) ``G`` is the true Fisher information.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss; differentiated twice with
            respect to ``outputs``.
        data: a batch or an iterable of batches.
        vector: tensors shaped like the selected parameters.
        bn_mode: ``"eval"`` or ``"train"``.
        parameters: names of the parameters (default: all that require grad).

    Returns:
        ``Gv`` as a tuple of parameter-shaped tensors.

    Raises:
        ValueError: for an invalid ``bn_mode``, ``parameters`` or ``vector``.
    """
    function = ParameterFunction(model, loss_fn, data, parameters=parameters, bn_mode=bn_mode)
    return CurvatureOperator(function, curvature="gauss_newton").matvec(vector)


def fisher_vector_product(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Any,
    vector: Sequence[torch.Tensor],
    *,
    bn_mode: str = "eval",
    parameters: Sequence[str] | None = None,
    per_example_loss: PerExampleLoss | None = None,
) -> Vector:
    """The *empirical* Fisher matrix times ``vector``, ``Fv = (1/N) Σ_i g_i (g_iᵀ v)``.

    ``g_i`` is the gradient of example ``i``'s loss over all ``N`` examples of ``data``. It is
    computed without per-example gradients: for each batch, ``Λ v`` by forward mode and
    ``Λᵀ(Λ v)`` by reverse mode, ``Λ`` the Jacobian of the batch's per-example losses. For the
    *true* Fisher of softmax cross-entropy or MSE use :func:`gauss_newton_vector_product`
    (Martens 2020; Kunstner et al. 2019 on the difference).

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: a batch or an iterable of batches.
        vector: tensors shaped like the selected parameters.
        bn_mode: ``"eval"`` or ``"train"`` (then each ``g_i`` includes the dependence of the
            batch statistics on example ``i``).
        parameters: names of the parameters (default: all that require grad).
        per_example_loss: ``(outputs, targets) -> (B,)`` losses whose mean is ``loss_fn``;
            default: ``loss_fn`` applied to each example (``torch.func.vmap``).

    Returns:
        ``Fv`` as a tuple of parameter-shaped tensors.

    Raises:
        ValueError: for an invalid ``bn_mode``, ``parameters`` or ``vector``, or when the mean of
            the per-example losses is not ``loss_fn``.
    """
    function = ParameterFunction(model, loss_fn, data, parameters=parameters, bn_mode=bn_mode)
    operator = CurvatureOperator(function, curvature="fisher", per_example_loss=per_example_loss)
    return operator.matvec(vector)
