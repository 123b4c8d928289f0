"""The curvature operator ``v ↦ (C + λI) v``: Hessian, generalised Gauss–Newton, empirical Fisher.

All three are products with a symmetric ``P × P`` matrix (``P`` = number of selected
parameters) that is never formed. The matrices, for the data-set loss
``L(θ) = Σ_b w_b L_b(θ)`` (batch-size weights ``w_b``, see :mod:`torchvalley.curvature.function`):

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
  drawn from the function's seed (see :mod:`torchvalley.curvature.function`).

  With ``bn_mode="eval"``, the double-backward strategies build their graphs with eval-mode
  BatchNorm folded into the layer that feeds it (:mod:`torchvalley.curvature.bn_fold`): the same
  function, about half the cost of a product on a conv + BatchNorm network.

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

* **True Fisher**, exact (``"fisher_true"``) or Monte-Carlo (``"fisher_mc"``), of the model's
  predictive distribution ``p(y | z)`` whose negative log-likelihood is the loss:
  ``F = (1/N) Σ_i J_iᵀ E_{ỹ~p(·|z_i)}[∇_z ℓ(z_i, ỹ) ∇_z ℓ(z_i, ỹ)ᵀ] J_i``. The likelihood is
  named by ``likelihood``:

  - ``"categorical"``: ``loss_fn`` is softmax cross-entropy (mean) over class-index targets;
    ``ỹ ~ softmax(z_i)``; the exact inner expectation is ``diag(p_i) − p_i p_iᵀ``;
  - ``"gaussian"``: ``loss_fn`` is ``mse_loss`` (mean over the batch and the ``K`` outputs of an
    example, ``ℓ_i = ‖z_i − y_i‖²/K``); ``ỹ ~ N(z_i, (K/2) I)``, the variance for which ``ℓ`` is
    the negative log-likelihood up to a constant, so that the expectation is ``(2/K) I``;
  - a callable ``sample(outputs, generator) -> targets`` (Monte-Carlo only): any other
    likelihood whose negative log-likelihood is ``loss_fn``.

  For these two losses the exact true Fisher *is* the GGN (Martens 2020), computed here by a
  different route (the closed-form expectation instead of the loss's output Hessian), which the
  tests use as a cross-check. ``"fisher_mc"`` draws ``mc_samples`` targets per example once, when
  the operator is built, from a generator seeded with ``mc_seed``, and is then the empirical
  Fisher of those sampled targets: a fixed matrix (CG sees one matrix), whose expectation over
  the draw is the true Fisher (Martens & Grosse, *Optimizing neural networks with
  Kronecker-factored approximate curvature*, ICML 2015, §5, on why sampled labels are needed:
  the empirical Fisher of the *training* labels is a different matrix, Kunstner et al. 2019).

GGN and Fisher products run two forward passes per batch (one for ``J v``, one for ``Jᵀ``); in
``bn_mode="train"`` every forward pass draws its dropout masks from the same seeded, forked RNG
(:class:`~torchvalley.curvature.function.ParameterFunction`), so the masks agree between the two
passes and between products: every strategy multiplies by one fixed matrix.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from torchvalley.curvature import bn_fold
from torchvalley.curvature.function import Batch, LossFunction, ParameterFunction, Vector
from torchvalley.validation import check_choice, check_non_negative

__all__ = ["CURVATURES", "LIKELIHOODS", "STRATEGIES", "CurvatureOperator", "PerExampleLoss"]

STRATEGIES = ("auto", "double_backward", "double_backward_per_batch", "forward_over_reverse")
"""Hessian-vector-product strategies (see the module docstring)."""

CURVATURES = ("hessian", "gauss_newton", "fisher", "fisher_true", "fisher_mc")
"""Curvature matrices: Hessian, generalised Gauss–Newton, empirical Fisher, true Fisher (exact,
Monte-Carlo)."""

LIKELIHOODS = ("categorical", "gaussian")
"""Predictive distributions of the true Fisher (``likelihood=``; or a sampling callable)."""

Sampler = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

PerExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_Graph = tuple[tuple[torch.Tensor, ...], list[int]]  # gradients with graphs, their indices

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


def _check_likelihood(curvature: str, likelihood: Any) -> Any:
    if curvature not in ("fisher_true", "fisher_mc"):
        if likelihood is not None:
            raise ValueError(
                f"Invalid likelihood: {likelihood!r} is for curvature 'fisher_true' or "
                f"'fisher_mc', not {curvature!r}"
            )
        return None
    if likelihood in LIKELIHOODS or (curvature == "fisher_mc" and callable(likelihood)):
        return likelihood
    allowed = "'categorical', 'gaussian'" + (" or a sampler" if curvature == "fisher_mc" else "")
    raise ValueError(f"Invalid likelihood: {likelihood!r} ({allowed} for {curvature!r})")


def _default_per_example_loss(loss_fn: LossFunction) -> PerExampleLoss:
    def single(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output.unsqueeze(0), target.unsqueeze(0))

    return torch.func.vmap(single)


# -- the operator -----------------------------------------------------------------------------


class CurvatureOperator:
    """``v ↦ Cv`` for a curvature matrix ``C`` of a :class:`ParameterFunction` at a fixed point.

    Vectors are tuples of parameter-shaped tensors (:meth:`matvec`) or flat 1-D tensors in the
    order of ``function.names`` (:meth:`matvec_flat`, :meth:`matmat_flat`); for SciPy, the
    operator is a ``scipy.sparse.linalg.LinearOperator`` (:meth:`as_linear_operator`). With
    ``damping = λ`` every product is ``(C + λI) v`` (Tikhonov damping, as damped Newton and CG
    solvers use it). The operator counts its products in :attr:`products`. Gradient graphs that
    the ``"double_backward"`` strategy builds are kept and reused while the operator lives, so
    one operator serves several spectral functions at one graph's cost. Nothing about the model
    is changed.

    Build it from a model with :meth:`of`::

        op = CurvatureOperator.of(model, loss_fn, data, bn_mode="eval", curvature="hessian")
        hessian_eigenvalues(op, k=1); hessian_trace(op, samples=50)

    Args:
        function: the model + loss + data (with its ``bn_mode`` and parameter subset).
        curvature: ``"hessian"``, ``"gauss_newton"``, ``"fisher"`` (empirical),
            ``"fisher_true"`` or ``"fisher_mc"`` (true Fisher, exact or sampled).
        strategy: Hessian products only: ``"auto"``, ``"double_backward"``,
            ``"double_backward_per_batch"`` or ``"forward_over_reverse"`` (see the module
            docstring).
        per_example_loss: empirical and sampled Fisher: ``(outputs, targets) -> (B,)``
            per-example losses whose mean is ``loss_fn``; default ``loss_fn`` on each example.
        point: the parameter values (default: the model's current ones).
        damping: ``λ ≥ 0`` added to the diagonal.
        likelihood: true Fisher only: ``"categorical"``, ``"gaussian"`` or (``"fisher_mc"``) a
            sampler ``(outputs, generator) -> targets`` (see the module docstring).
        mc_samples: ``"fisher_mc"``: sampled targets per example.
        mc_seed: ``"fisher_mc"``: seed of the targets' generator (default: drawn from the global
            RNG when the operator is built).

    Raises:
        ValueError: for an unknown ``curvature``, ``strategy`` or ``likelihood`` (or a missing
            one for the true Fisher), a bad ``mc_samples`` or ``mc_seed``, or a negative
            ``damping``.
    """

    def __init__(
        self,
        function: ParameterFunction,
        *,
        curvature: str = "hessian",
        strategy: str = "auto",
        per_example_loss: PerExampleLoss | None = None,
        point: Vector | None = None,
        damping: float = 0.0,
        likelihood: str | Sampler | None = None,
        mc_samples: int = 1,
        mc_seed: int | None = None,
    ) -> None:
        check_choice("curvature", curvature, CURVATURES)
        check_choice("strategy", strategy, STRATEGIES)
        self.damping = damping
        self.likelihood = _check_likelihood(curvature, likelihood)
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"Invalid mc_samples: {mc_samples!r} (a positive integer)")
        if mc_seed is not None and (isinstance(mc_seed, bool) or not isinstance(mc_seed, int)):
            raise ValueError(f"Invalid mc_seed: {mc_seed!r} (an integer or None)")
        self.mc_samples = mc_samples
        if curvature == "fisher_mc" and mc_seed is None:
            mc_seed = int(torch.randint(0, 2**62, ()))
        self.mc_seed = mc_seed
        self._sampled: dict[int, torch.Tensor] = {}
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

    @classmethod
    def of(
        cls,
        model: nn.Module,
        loss_fn: LossFunction,
        data: Any,
        *,
        bn_mode: str = "eval",
        curvature: str = "hessian",
        strategy: str = "auto",
        parameters: Sequence[str] | None = None,
        per_example_loss: PerExampleLoss | None = None,
        seed: int | None = None,
        damping: float = 0.0,
        likelihood: str | Sampler | None = None,
        mc_samples: int = 1,
        mc_seed: int | None = None,
    ) -> CurvatureOperator:
        """The operator of ``model`` + ``loss_fn`` on ``data`` at the model's parameters.

        Args:
            model: the network (not modified).
            loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
            data: one ``(inputs, targets)`` batch or an iterable of batches.
            bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
            curvature: ``"hessian"``, ``"gauss_newton"`` or ``"fisher"`` (empirical).
            strategy: Hessian products (see the module docstring).
            parameters: names of the parameters (default: all that require grad).
            per_example_loss: for ``curvature="fisher"``.
            seed: ``bn_mode="train"``: the seed of the dropout masks (see
                :class:`~torchvalley.curvature.function.ParameterFunction`).
            damping: ``λ ≥ 0``: products with ``C + λI``.
            likelihood, mc_samples, mc_seed: for the true Fisher (see the class).

        Example:
            >>> model = torch.nn.Linear(3, 1).double()
            >>> data = (torch.randn(8, 3).double(), torch.randn(8, 1).double())
            >>> op = CurvatureOperator.of(model, torch.nn.functional.mse_loss, data, damping=0.5)
            >>> op.dimension, op.curvature, op.damping
            (4, 'hessian', 0.5)
        """
        function = ParameterFunction(
            model, loss_fn, data, parameters=parameters, bn_mode=bn_mode, seed=seed
        )
        return cls(
            function,
            curvature=curvature,
            strategy=strategy,
            per_example_loss=per_example_loss,
            damping=damping,
            likelihood=likelihood,
            mc_samples=mc_samples,
            mc_seed=mc_seed,
        )

    @property
    def damping(self) -> float:
        """``λ`` in ``(C + λI) v``."""
        return self._damping

    @damping.setter
    def damping(self, value: float) -> None:
        self._damping = float(check_non_negative("damping", value))

    def as_linear_operator(self) -> Any:
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (NumPy in, NumPy out).

        Example:
            >>> model = torch.nn.Linear(3, 1).double()
            >>> data = (torch.randn(8, 3).double(), torch.randn(8, 1).double())
            >>> from scipy.sparse.linalg import eigsh
            >>> op = CurvatureOperator.of(model, torch.nn.functional.mse_loss, data)
            >>> eigsh(op.as_linear_operator(), k=1)[0].shape
            (1,)
        """
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def to_torch(array: Any) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array)).to(dtype=self.dtype, device=self.device)

        def matvec(x: Any) -> Any:
            return self.matvec_flat(to_torch(x).reshape(-1)).cpu().numpy()

        def matmat(x: Any) -> Any:
            return self.matmat_flat(to_torch(x).T).T.cpu().numpy()

        dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        shape = (self.dimension, self.dimension)
        return LinearOperator(shape, matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=dtype)

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
        """``(C + λI) v`` for a parameter-shaped ``vector``."""
        vector = _check_vector(self.function.names, self.point, vector)
        product = self._apply(vector)
        if self._damping == 0.0:
            return product
        return tuple(c + self._damping * v for c, v in zip(product, vector, strict=True))

    def matvec_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """``(C + λI) v`` for a flat vector ``v`` of length :attr:`dimension`."""
        if flat.shape != (self.dimension,):
            raise ValueError(f"Invalid vector: expected shape ({self.dimension},)")
        flat = flat.to(dtype=self.dtype, device=self.device)
        product = self.flatten(self._apply(self.unflatten(flat)))
        return product if self._damping == 0.0 else product.add_(flat, alpha=self._damping)

    def _apply(self, vector: Vector) -> Vector:
        """``C v`` (undamped), counted."""
        self.products += 1
        if self.curvature == "hessian":
            if self.strategy != "forward_over_reverse":
                return self._hvp_double_backward(vector, batched=False)
            return self._hvp_forward_over_reverse(vector)
        if self.curvature == "gauss_newton":
            return self._ggn(vector)
        if self.curvature == "fisher_true":
            return self._true_fisher(vector)
        if self.curvature == "fisher_mc":
            return self._sampled_fisher(vector)
        return self._fisher(vector)

    def gradient_flat(self) -> torch.Tensor:
        """The loss gradient ``∇L(θ)`` at the operator's point, flat (not counted as a product).

        With the ``"double_backward"`` strategy it is read from the gradient graphs the
        products use (built here if no product has built them yet): no extra pass. Otherwise it
        costs one forward and backward pass per batch.
        """
        if self.strategy == "double_backward":
            graphs = list(self._graphs())
            # a gradient that does not depend on θ has no graph kept: recompute in that case
            if all(len(keep) == len(self.point) for _, (_, keep) in graphs):
                total: list[torch.Tensor] | None = None
                for weight, (grads, _) in graphs:
                    total = _accumulate(total, weight, [g.detach() for g in grads])
                assert total is not None
                return self.flatten(total)
        return self.flatten(self.function.gradient(self.point))

    def matmat_flat(self, flats: torch.Tensor) -> torch.Tensor:
        """``(C + λI)`` times ``n`` flat vectors stacked as rows of ``flats`` (shape ``(n, P)``).

        Hessian products are batched (``is_grads_batched`` for the double-backward strategies,
        ``torch.func.vmap`` for ``"forward_over_reverse"``); the others loop.
        """
        if flats.dim() != 2 or flats.shape[1] != self.dimension:
            raise ValueError(f"Invalid vectors: expected shape (n, {self.dimension})")
        if self.curvature != "hessian" or flats.shape[0] == 1:
            return torch.stack([self.matvec_flat(row) for row in flats])
        flats = flats.to(dtype=self.dtype, device=self.device)
        vectors = self.unflatten(flats)
        self.products += flats.shape[0]
        if self.strategy != "forward_over_reverse":
            result = self._hvp_double_backward(vectors, batched=True)
        else:
            result = torch.func.vmap(self._hvp_forward_over_reverse, randomness="same")(vectors)
        products = torch.cat([r.reshape(flats.shape[0], -1) for r in result], dim=1)
        return products if self._damping == 0.0 else products.add_(flats, alpha=self._damping)

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
        with torch.enable_grad(), bn_fold.graph_context(f):
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

    # -- true Fisher ----------------------------------------------------------------------------

    def sampled_targets(self, index: int = 0) -> torch.Tensor:
        """``"fisher_mc"``: the ``(mc_samples, B, ...)`` targets drawn for batch ``index``."""
        if self.curvature != "fisher_mc":
            raise ValueError(f"Invalid curvature: {self.curvature!r} draws no targets")
        if index not in self._sampled:
            batch = self.function.batches[index]
            generator = torch.Generator().manual_seed((self.mc_seed + index) % 2**63)
            with torch.no_grad():
                outputs = self.function.outputs(self.point, batch).detach()
                draws = [self._draw(outputs, generator) for _ in range(self.mc_samples)]
            self._sampled[index] = torch.stack(draws)
        return self._sampled[index]

    def _draw(self, outputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if callable(self.likelihood):
            return self.likelihood(outputs, generator)
        cpu = outputs.cpu()
        if self.likelihood == "categorical":
            if cpu.dim() != 2:
                raise ValueError("Invalid likelihood: 'categorical' needs (B, classes) outputs")
            probabilities = torch.softmax(cpu.double(), dim=1)
            draw = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
        else:  # gaussian: N(z, (K/2) I), K = outputs per example
            per_example = cpu[0].numel()
            noise = torch.randn(cpu.shape, generator=generator, dtype=cpu.dtype)
            draw = cpu + math.sqrt(per_example / 2.0) * noise
        return draw.to(outputs.device)

    def _output_fisher(self, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``E_ỹ[∇_z ℓ ∇_z ℓᵀ] u`` per example, in closed form."""
        if self.likelihood == "categorical":
            p = torch.softmax(outputs, dim=1)
            return p * u - p * (p * u).sum(dim=1, keepdim=True)  # (diag p − ppᵀ) u
        return (2.0 / outputs[0].numel()) * u  # (2/K) I

    def _true_fisher(self, vector: Vector) -> Vector:
        f, params = self.function, self.point
        total: list[torch.Tensor] | None = None
        for weight, batch in zip(f.weights, f.batches, strict=True):

            def outputs_fn(p: Vector, b: Batch = batch) -> torch.Tensor:
                return f.outputs(p, b)

            outputs, jv = torch.func.jvp(outputs_fn, (params,), (vector,))
            if self.likelihood == "categorical" and outputs.dim() != 2:
                raise ValueError("Invalid likelihood: 'categorical' needs (B, classes) outputs")
            fjv = self._output_fisher(outputs.detach(), jv)
            _, vjp_fn = torch.func.vjp(outputs_fn, params)
            total = _accumulate(total, weight / batch[0].shape[0], vjp_fn(fjv)[0])
        assert total is not None
        return tuple(total)

    def _sampled_fisher(self, vector: Vector) -> Vector:
        f, params = self.function, self.point
        total: list[torch.Tensor] | None = None
        for index, (weight, batch) in enumerate(zip(f.weights, f.batches, strict=True)):
            per_example = self._per_example(index, batch)
            draws = self.sampled_targets(index)  # (M, B, ...)
            targets = draws.reshape(-1, *draws.shape[2:])  # sample-major, (M·B, ...)
            repeats = self.mc_samples

            def losses_fn(p: Vector, b: Batch = batch, y=targets, loss=per_example, m=repeats):
                outputs = f.outputs(p, b)  # one forward pass for all M draws
                tiled = outputs.repeat(m, *([1] * (outputs.dim() - 1)))
                return loss(tiled, y)

            _, jv = torch.func.jvp(losses_fn, (params,), (vector,))
            _, vjp_fn = torch.func.vjp(losses_fn, params)
            scale = weight / (batch[0].shape[0] * repeats)
            total = _accumulate(total, scale, vjp_fn(jv)[0])
        assert total is not None
        return tuple(total)
