"""Curvature-vector products: Hessian, generalised Gauss–Newton and empirical Fisher.

All three are products with a symmetric ``P × P`` matrix (``P`` = number of selected
parameters) that is never formed. The matrices, for the data-set loss
``L(θ) = Σ_b w_b L_b(θ)`` (batch-size weights ``w_b``, see :mod:`torchvalley.landscape._core`):

* **Hessian** ``H = ∇²L(θ)``, by Pearlmutter's exact product (Pearlmutter, *Fast exact
  multiplication by the Hessian*, Neural Computation 1994), with three strategies:

  - ``"double_backward"``: the gradient of every batch is computed once with
    ``create_graph=True`` and kept; each product is then one backward pass through those
    gradient graphs, ``Hv = ∂(∇L · v)/∂θ`` (reverse-over-reverse, as PyHessian does for one
    batch; Yao et al., *PyHessian: Neural networks through the lens of the Hessian*, IEEE
    BigData 2020). The fastest for repeated products at a fixed point, but the graphs of *all*
    batches stay in memory while the operator lives.
  - ``"double_backward_per_batch"``: the same, but each batch's gradient graph is rebuilt for
    every product and freed after it (PyHessian's data-loader mode): one batch's graph in
    memory at a time, one extra forward and backward pass per batch and product.
  - ``"forward_over_reverse"``: ``Hv = d/dε ∇L(θ + εv)``, a ``torch.func.jvp`` of
    ``torch.func.grad`` (the functorch recipe), every product re-running the forward and
    backward passes with tangents; purely functional (composes with ``vmap``), memory of one
    batch.
  - ``"auto"`` (the default): ``"double_backward"`` for one batch,
    ``"double_backward_per_batch"`` for several. On the MNIST-1D CNN (batch 1000, CPU) a
    one-off product costs about 0.55× (``bn_mode="eval"``) and 0.8× (``"train"``) of
    ``"forward_over_reverse"``, and a repeated one about a third (see
    ``benchmarks/hessian_speed.py``).

  With dropout active (``bn_mode="train"``), every strategy differentiates the same masks,
  drawn from the function's seed (see :mod:`torchvalley.landscape._core`).

  With ``bn_mode="eval"``, the double-backward strategies build their graphs with eval-mode
  BatchNorm written as the per-channel affine map it is, ``x·a + c`` (``a = γ/√(σ²+ε)``,
  ``c = β − μa``), and folded into the convolution or linear layer that feeds it
  (``conv(x, W·a, b·a + c)``): the same function of the same parameters, so every derivative
  is unchanged, but the activation-sized operations of PyTorch's batch-norm graph and of its
  generic double backward are gone, which makes a product about half as expensive on a
  conv + BatchNorm network (see ``benchmarks/hessian_speed.py``).

* **Generalised Gauss–Newton** ``G = Σ_b w_b J_bᵀ H_b J_b`` with ``J_b = ∂f(θ, x_b)/∂θ`` the
  Jacobian of the model's outputs on batch ``b`` and ``H_b = ∇²_z loss_fn(z, y_b)`` the Hessian of
  the batch loss with respect to the outputs ``z`` (Schraudolph, *Fast curvature matrix-vector
  products for second-order gradient descent*, Neural Computation 2002). ``Gv`` is a forward-mode
  product ``J v``, a Hessian-vector product of ``loss_fn`` in output space, and a reverse-mode
  product ``Jᵀ(·)``, so it works for any twice-differentiable ``loss_fn`` (MSE, cross-entropy,
  ...). ``G`` is positive semi-definite when ``loss_fn`` is convex in the outputs. For losses that
  are negative log-likelihoods of an exponential family in its natural parameters (softmax
  cross-entropy; MSE = Gaussian likelihood up to a constant factor), ``G`` *is* the (true)
  Fisher information matrix (Martens, *New insights and perspectives on the natural gradient
  method*, JMLR 2020) — use :func:`gauss_newton_vector_product` for the true Fisher.

* **Empirical Fisher** ``F = (1/N) Σ_i g_i g_iᵀ`` with ``g_i = ∇_θ ℓ_i(θ)`` the gradient of
  example ``i``'s loss, over all ``N`` examples of all batches (Kunstner, Hennig & Balles,
  *Limitations of the empirical Fisher approximation for natural gradient descent*, NeurIPS
  2019, on how it differs from the true Fisher). With ``ℓ_b = (ℓ_i)_{i∈b}`` the vector of
  per-example losses of batch ``b`` and ``Λ_b = ∂ℓ_b/∂θ`` its ``B × P`` Jacobian,
  ``Fv = Σ_b w_b Λ_bᵀ(Λ_b v)/B_b``: one ``jvp`` and one ``vjp`` per batch, no per-example
  gradients are materialised. Per-example losses are ``per_example_loss(outputs, targets)``
  (shape ``(B,)``) or, by default, ``loss_fn`` applied to each example (``torch.func.vmap`` over
  the batch dimension), which requires ``loss_fn`` to be the *mean* of per-example terms
  (checked on every batch: ``ValueError`` otherwise). The per-example losses come from one
  forward pass of the whole batch, so with ``bn_mode="train"`` each ``g_i`` includes the
  coupling of the examples through the batch statistics.

GGN and Fisher products run two forward passes per batch (one for ``J v``, one for ``Jᵀ``); in
``bn_mode="train"`` every forward pass draws its dropout masks from the same seeded, forked RNG
(:class:`~torchvalley.landscape._core.ParameterFunction`), so the masks agree between the two
passes and between products: every strategy multiplies by one fixed matrix.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from torchvalley.landscape._core import Batch, LossFunction, ParameterFunction, Vector

__all__ = [
    "CURVATURES",
    "STRATEGIES",
    "CurvatureOperator",
    "fisher_vector_product",
    "gauss_newton_vector_product",
    "hessian_vector_product",
]

STRATEGIES = ("auto", "double_backward", "double_backward_per_batch", "forward_over_reverse")
"""Hessian-vector-product strategies (see the module docstring)."""

CURVATURES = ("hessian", "gauss_newton", "fisher")
"""Curvature matrices: Hessian, generalised Gauss–Newton, empirical Fisher."""

PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_Graph = tuple[tuple[torch.Tensor, ...], list[int]]  # gradients with graphs, their indices


# -- eval-mode BatchNorm, folded -------------------------------------------------------------

# Layers y = op(x, W, b) whose output channels are W's first axis and, batched, y's axis 1.
_FOLDABLE = (torch.conv1d, torch.conv2d, torch.conv3d, F.linear)


class _FoldedEvalBatchNorm(TorchFunctionMode):
    """Evaluates eval-mode ``F.batch_norm`` as the per-channel affine map it is, folded into the
    convolution or linear layer that produced its input when there is one.

    With ``a = γ/√(σ² + ε)`` and ``c = β − μa``, ``BN(conv(x, W, b)) = conv(x, W·a, b·a + c)``
    (the same for ``F.linear`` with a ``(B, C)`` output) and otherwise ``BN(z) = z·a + c``: the
    same function of the same parameters (``W``, ``b``, ``γ``, ``β``), so every derivative is
    unchanged, but the activation-sized operations of PyTorch's batch-norm graph (and of its
    generic double backward) disappear. The unfolded layer still runs once in the forward pass;
    when its output feeds nothing else it is not part of the loss's graph. Only used while a
    graph is built (see ``_batch_graph``).
    """

    def __init__(self) -> None:
        super().__init__()
        # id(output) -> (output, its version counter, layer function, args, kwargs)
        self._layers: dict[int, tuple[torch.Tensor, int, Any, tuple[Any, ...], dict[str, Any]]]
        self._layers = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return self._batch_norm(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _FOLDABLE and isinstance(out, torch.Tensor):
            self._layers[id(out)] = (out, out._version, func, args, kwargs)
        return out

    def _batch_norm(
        self,
        input: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        training: bool = False,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
    ) -> torch.Tensor:
        if training or running_mean is None or running_var is None:
            return F.batch_norm(
                input, running_mean, running_var, weight, bias, training, momentum, eps
            )
        scale = torch.rsqrt(running_var + eps)
        if weight is not None:
            scale = scale * weight
        shift = -running_mean * scale
        if bias is not None:
            shift = shift + bias
        producer = self._layers.get(id(input))
        # the very tensor the layer returned, not modified in place since (e.g. ReLU(inplace))
        if producer is not None and producer[0] is input and producer[1] == input._version:
            folded = self._folded(*producer[2:], scale, shift)
            if folded is not None:
                return folded
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return input * scale.reshape(shape) + shift.reshape(shape)

    @staticmethod
    def _folded(
        layer: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> torch.Tensor | None:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        inputs, weight = bound["input"], bound["weight"]
        # BatchNorm's channel axis must be the layer's output axis: batched convolutions
        # (input and weight of the same rank) and linear layers with (B, C) outputs.
        batched = inputs.dim() == weight.dim() if layer is not F.linear else inputs.dim() == 2
        if not batched or weight.shape[0] != scale.numel():
            return None
        bound["weight"] = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
        bias = bound.get("bias")
        bound["bias"] = shift if bias is None else bias * scale + shift
        return layer(**bound)


def _graph_context(function: ParameterFunction) -> contextlib.AbstractContextManager[Any]:
    return _FoldedEvalBatchNorm() if function.bn_mode == "eval" else contextlib.nullcontext()


# -- helpers ----------------------------------------------------------------------------------


def _check_vector(names: Sequence[str], params: Vector, vector: Sequence[torch.Tensor]) -> Vector:
    vector = tuple(vector)
    if len(vector) != len(params):
        raise ValueError(
            f"Invalid vector: {len(vector)} tensors for {len(params)} selected parameters"
        )
    out = []
    for name, v, p in zip(names, vector, params, strict=True):
        if not isinstance(v, torch.Tensor) or v.shape != p.shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"Invalid vector: {name} has shape {tuple(p.shape)}, got {shape}")
        out.append(v.to(dtype=p.dtype, device=p.device))
    return tuple(out)


def _accumulate(total: list[torch.Tensor] | None, weight: float, terms: Sequence[torch.Tensor]):
    scaled = [weight * t for t in terms]
    return scaled if total is None else [a + b for a, b in zip(total, scaled, strict=True)]


@functools.cache
def _load_forward_ad() -> None:
    """Run one tiny ``jvp`` so forward-mode AD loads its decompositions now, quietly.

    torch 2.13 loads them through ``torch.jit.script`` on first use, which emits a
    ``DeprecationWarning`` that is torch's business, not the caller's.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=DeprecationWarning)
        zero = torch.zeros(1)
        torch.func.jvp(torch.sin, (zero,), (zero,))


def _jvp_with_targets(
    fn: Callable[[Any, torch.Tensor], Any], primal: Any, tangent: Any, targets: torch.Tensor
) -> tuple[Any, Any]:
    """``torch.func.jvp`` of ``fn(primal, targets)`` in ``primal``'s direction ``tangent``.

    Floating-point targets enter as a primal with an explicit zero tangent: with none,
    forward-over-reverse through ``F.mse_loss(reduction="mean")`` fails ("ZeroTensors are
    immutable", pytorch/pytorch#123996: its double-backward formula divides a ZeroTensor
    in place).
    """
    if targets.is_floating_point() or targets.is_complex():
        return torch.func.jvp(fn, (primal, targets), (tangent, torch.zeros_like(targets)))
    return torch.func.jvp(lambda p: fn(p, targets), (primal,), (tangent,))


def _default_per_example_loss(loss_fn: LossFunction) -> PerExampleLoss:
    def single(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output.unsqueeze(0), target.unsqueeze(0))

    return torch.func.vmap(single)


# -- the operator -----------------------------------------------------------------------------


class CurvatureOperator:
    """``v ↦ Cv`` for a curvature matrix ``C`` of a :class:`ParameterFunction` at a fixed point.

    Vectors are tuples of parameter-shaped tensors (:meth:`matvec`) or flat 1-D tensors in the
    order of ``function.names`` (:meth:`matvec_flat`, :meth:`matmat_flat`). The operator counts
    its products in :attr:`products`. Nothing about the model is changed.

    Args:
        function: the model + loss + data (with its ``bn_mode`` and parameter subset).
        curvature: ``"hessian"``, ``"gauss_newton"`` or ``"fisher"`` (empirical).
        strategy: Hessian products only: ``"auto"``, ``"double_backward"``,
            ``"double_backward_per_batch"`` or ``"forward_over_reverse"`` (see the module
            docstring).
        per_example_loss: Fisher only: ``(outputs, targets) -> (B,)`` per-example losses whose
            mean is ``loss_fn``; default ``loss_fn`` on each example.
        point: the parameter values (default: the model's current ones).

    Raises:
        ValueError: for an unknown ``curvature`` or ``strategy``.
    """

    def __init__(
        self,
        function: ParameterFunction,
        *,
        curvature: str = "hessian",
        strategy: str = "auto",
        per_example_loss: PerExampleLoss | None = None,
        point: Vector | None = None,
    ) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"Invalid curvature: {curvature!r} (one of {', '.join(CURVATURES)})")
        if strategy not in STRATEGIES:
            raise ValueError(f"Invalid strategy: {strategy!r} (one of {', '.join(STRATEGIES)})")
        self.function = function
        self.curvature = curvature
        if strategy == "auto":
            several = len(function.batches) > 1
            strategy = "double_backward_per_batch" if several else "double_backward"
        self.strategy = strategy
        if curvature != "hessian" or strategy == "forward_over_reverse":
            _load_forward_ad()
        self.point = tuple(p.detach() for p in (function.point() if point is None else point))
        self.shapes = tuple(p.shape for p in self.point)
        self.numels = tuple(p.numel() for p in self.point)
        self.dimension = sum(self.numels)
        self.dtype = self.point[0].dtype
        self.device = self.point[0].device
        self.products = 0
        self._per_example_loss = per_example_loss
        self._checked_batches: set[int] = set()
        self._cached: list[tuple[float, _Graph]] | None = None
        self._leaves: tuple[torch.Tensor, ...] | None = None

    # -- flat vectors ------------------------------------------------------------------------

    def flatten(self, vector: Sequence[torch.Tensor]) -> torch.Tensor:
        """A vector as one 1-D tensor (parameter order)."""
        return torch.cat([v.reshape(-1) for v in vector])

    def unflatten(self, flat: torch.Tensor) -> Vector:
        """A 1-D tensor (or a batch ``(n, P)`` of them) as parameter-shaped tensors (views)."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.numels, dim=-1)
        return tuple(p.reshape(*lead, *s) for p, s in zip(parts, self.shapes, strict=True))

    # -- products ----------------------------------------------------------------------------

    def matvec(self, vector: Sequence[torch.Tensor]) -> Vector:
        """``C v`` for a parameter-shaped ``vector``."""
        return self._apply(_check_vector(self.function.names, self.point, vector))

    def matvec_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """``C v`` for a flat vector ``v`` of length :attr:`dimension`."""
        if flat.shape != (self.dimension,):
            raise ValueError(f"Invalid vector: expected shape ({self.dimension},)")
        flat = flat.to(dtype=self.dtype, device=self.device)
        return self.flatten(self._apply(self.unflatten(flat)))

    def _apply(self, vector: Vector) -> Vector:
        self.products += 1
        if self.curvature == "hessian":
            if self.strategy != "forward_over_reverse":
                return self._hvp_double_backward(vector, batched=False)
            return self._hvp_forward_over_reverse(vector)
        if self.curvature == "gauss_newton":
            return self._ggn(vector)
        return self._fisher(vector)

    def matmat_flat(self, flats: torch.Tensor) -> torch.Tensor:
        """``C V`` for ``n`` flat vectors stacked as rows of ``flats`` (shape ``(n, P)``).

        Hessian products are batched (``is_grads_batched`` for the double-backward strategies,
        ``torch.func.vmap`` for ``"forward_over_reverse"``); the others loop.
        """
        if flats.dim() != 2 or flats.shape[1] != self.dimension:
            raise ValueError(f"Invalid vectors: expected shape (n, {self.dimension})")
        if self.curvature != "hessian" or flats.shape[0] == 1:
            return torch.stack([self.matvec_flat(row) for row in flats])
        vectors = self.unflatten(flats.to(dtype=self.dtype, device=self.device))
        self.products += flats.shape[0]
        if self.strategy != "forward_over_reverse":
            result = self._hvp_double_backward(vectors, batched=True)
        else:
            result = torch.func.vmap(self._hvp_forward_over_reverse, randomness="same")(vectors)
        return torch.cat([r.reshape(flats.shape[0], -1) for r in result], dim=1)

    # -- Hessian, forward over reverse --------------------------------------------------------

    def _hvp_forward_over_reverse(self, vector: Vector) -> Vector:
        f, params = self.function, self.point
        total: list[torch.Tensor] | None = None
        for weight, batch in zip(f.weights, f.batches, strict=True):

            def grad_fn(p: Vector, targets: torch.Tensor, b: Batch = batch) -> Vector:
                return torch.func.grad(lambda q: f.loss_fn(f.outputs(q, b), targets))(p)

            _, product = _jvp_with_targets(grad_fn, params, vector, batch[1])
            total = _accumulate(total, weight, product)
        assert total is not None
        return tuple(total)

    # -- Hessian, double backward -------------------------------------------------------------

    def _batch_graph(self, batch: Batch) -> _Graph:
        """The gradient of one batch's loss with its graph (``create_graph=True``)."""
        f = self.function
        if self._leaves is None:
            self._leaves = tuple(p.detach().requires_grad_(True) for p in self.point)
        with torch.enable_grad(), _graph_context(f):
            loss = f.batch_loss(self._leaves, batch)
            grads = torch.autograd.grad(loss, self._leaves, create_graph=True, allow_unused=True)
        # a gradient that does not depend on θ contributes a zero Hessian row
        keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return tuple(grads[i] for i in keep), keep

    def _graphs(self) -> Iterator[tuple[float, _Graph]]:
        f = self.function
        if self.strategy == "double_backward_per_batch":
            for weight, batch in zip(f.weights, f.batches, strict=True):
                yield weight, self._batch_graph(batch)
            return
        if self._cached is None:
            self._cached = [
                (weight, self._batch_graph(batch))
                for weight, batch in zip(f.weights, f.batches, strict=True)
            ]
        yield from self._cached

    def _hvp_double_backward(self, vector: Vector, *, batched: bool) -> Vector:
        total: list[torch.Tensor] | None = None
        for weight, (grads, keep) in self._graphs():
            if not keep:
                continue
            with torch.enable_grad():
                products = torch.autograd.grad(
                    grads,
                    self._leaves,
                    grad_outputs=tuple(vector[i] for i in keep),
                    retain_graph=self.strategy == "double_backward",
                    allow_unused=True,
                    is_grads_batched=batched,
                )
            products = [
                torch.zeros_like(v) if h is None else h
                for h, v in zip(products, vector, strict=True)
            ]
            total = _accumulate(total, weight, products)
        if total is None:
            return tuple(torch.zeros_like(v) for v in vector)
        return tuple(t.detach() for t in total)

    # -- Gauss–Newton and Fisher -------------------------------------------------------------

    def _ggn(self, vector: Vector) -> Vector:
        f, params = self.function, self.point
        total: list[torch.Tensor] | None = None
        for weight, batch in zip(f.weights, f.batches, strict=True):
            targets = batch[1]

            def outputs_fn(p: Vector, b: Batch = batch) -> torch.Tensor:
                return f.outputs(p, b)

            # (dropout masks agree between the two passes: every forward pass is seeded)
            outputs, jv = torch.func.jvp(outputs_fn, (params,), (vector,))
            output_grad = torch.func.grad(f.loss_fn)
            _, hjv = _jvp_with_targets(output_grad, outputs.detach(), jv, targets)
            _, vjp_fn = torch.func.vjp(outputs_fn, params)
            total = _accumulate(total, weight, vjp_fn(hjv)[0])
        assert total is not None
        return tuple(total)

    def _per_example(self, index: int, batch: Batch) -> PerExampleLoss:
        f = self.function
        per_example = self._per_example_loss or _default_per_example_loss(f.loss_fn)
        if index not in self._checked_batches:
            with torch.no_grad():
                outputs = f.outputs(self.point, batch)
                losses = per_example(outputs, batch[1])
                mean = f.loss_fn(outputs, batch[1])
            if losses.shape != (batch[0].shape[0],):
                raise ValueError(
                    f"Invalid per_example_loss: shape {tuple(losses.shape)}, expected "
                    f"({batch[0].shape[0]},)"
                )
            scale = max(float(mean.abs()), float(losses.abs().mean()), 1e-30)
            if abs(float(losses.mean() - mean)) > 1e-5 * scale:
                raise ValueError(
                    "Invalid loss for the empirical Fisher: the mean of the per-example losses "
                    f"({float(losses.mean()):.6g}) differs from loss_fn ({float(mean):.6g}); "
                    "pass per_example_loss returning the (B,) losses whose mean is loss_fn"
                )
            self._checked_batches.add(index)
        return per_example

    def _fisher(self, vector: Vector) -> Vector:
        f, params = self.function, self.point
        total: list[torch.Tensor] | None = None
        for index, (weight, batch) in enumerate(zip(f.weights, f.batches, strict=True)):
            per_example = self._per_example(index, batch)

            def losses_fn(p: Vector, b: Batch = batch, loss=per_example) -> torch.Tensor:
                return loss(f.outputs(p, b), b[1])

            _, jv = torch.func.jvp(losses_fn, (params,), (vector,))
            _, vjp_fn = torch.func.vjp(losses_fn, params)
            total = _accumulate(total, weight / batch[0].shape[0], vjp_fn(jv)[0])
        assert total is not None
        return tuple(total)


# -- public one-off products ------------------------------------------------------------------


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
