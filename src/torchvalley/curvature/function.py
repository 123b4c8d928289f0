"""A model + loss + data as a pure function of its parameters: batch handling, BatchNorm
modes, random masks, and arithmetic on parameter-shaped vectors.

Conventions used by :mod:`torchvalley.curvature` and every function in
:mod:`torchvalley.landscape`:

* ``loss_fn(outputs, targets)`` returns a scalar, the *mean* loss over the batch;
* ``data`` is one ``(inputs, targets)`` batch or an iterable of such batches; over several
  batches, losses, gradients and curvature products are averaged weighted by batch size, so
  the result is that of the concatenated data set (for mean-reduced losses). Empty batches
  (0 examples) carry no weight and are skipped; data with no example at all is a ``ValueError``;
* ``bn_mode="eval"`` (default) evaluates BatchNorm with its running statistics (the model the
  user deploys); ``"train"`` uses batch statistics without touching the running buffers (the
  model the optimizer sees). Dropout follows the same mode (off in eval, random in train). In
  ``"train"`` every forward pass runs on a forked RNG seeded from ``seed`` and the batch's
  index, so the masks are a fixed draw: the loss is one deterministic function of the
  parameters (curvature products are products with one fixed matrix), equal seeds give equal
  results, and the caller's global RNG is never consumed;
* a *vector* is a tuple of tensors shaped like the selected parameters.

Nothing here changes the model: parameters, buffers and the train/eval flag are as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "Batch",
    "LossFunction",
    "ParameterFunction",
    "Vector",
    "as_batches",
    "mask_seed",
    "vector_add",
    "vector_dot",
    "vector_norm",
    "vector_normalize",
    "vector_random",
    "vector_scale",
]

Batch = tuple[torch.Tensor, torch.Tensor]
Vector = tuple[torch.Tensor, ...]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_BN_MODES = ("eval", "train")


def as_batches(data: Any) -> list[Batch]:
    """``data`` as a list of ``(inputs, targets)`` batches.

    Empty batches (0 examples) are dropped: they have no weight in a batch-size weighted mean.

    Raises:
        ValueError: if ``data`` is neither a batch nor an iterable of batches, or has no
            example at all.
    """
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    ):
        batches = [(data[0], data[1])]
    else:
        batches = _batch_list(data)
    # An empty batch has weight 0 in the batch-size weighted mean, but its mean loss is 0/0.
    batches = [b for b in batches if _examples(b) > 0]
    if not batches:
        raise ValueError("Invalid data: no examples (every batch is empty)")
    return batches  # type: ignore[return-value]


def _batch_list(data: Any) -> list[Any]:
    try:
        batches = [tuple(batch) for batch in data]
    except TypeError:
        raise ValueError(
            "Invalid data: expected an (inputs, targets) batch or an iterable of batches"
        ) from None
    if not batches or any(len(b) != 2 for b in batches):
        raise ValueError("Invalid data: expected a non-empty iterable of (inputs, targets)")
    return batches


def _examples(batch: Any) -> int:
    inputs = batch[0]
    if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0:
        raise ValueError("Invalid data: inputs must be tensors with a batch dimension")
    return int(inputs.shape[0])


class _IndexedBatch(tuple):
    """An ``(inputs, targets)`` pair that knows its position (the seed of its masks)."""

    index: int

    def __new__(cls, batch: Batch, index: int) -> _IndexedBatch:
        out = super().__new__(cls, batch)
        out.index = index
        return out


def _index(batch: Any) -> int:
    return getattr(batch, "index", 0)


@dataclasses.dataclass
class ParameterFunction:
    """``model`` + ``loss_fn`` + ``data`` as a function of (a subset of) the parameters.

    Args:
        model: the network (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: a batch or an iterable of batches (materialised once).
        parameters: names (as in ``model.named_parameters()``) to differentiate with respect
            to; default every parameter that requires grad.
        bn_mode: ``"eval"`` or ``"train"`` (see the module docstring).
        seed: ``bn_mode="train"`` only: the seed of the random masks (dropout) of every forward
            pass, batch ``i`` using ``seed + i``; ``None`` draws one from the global RNG when
            the function is built (reproducible under ``torch.manual_seed``).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> f = ParameterFunction(model, torch.nn.functional.mse_loss,
        ...                       (torch.ones(4, 2), torch.zeros(4, 1)))
        >>> f.names
        ('weight', 'bias')
        >>> bool(torch.isclose(f.loss(f.point()), torch.nn.functional.mse_loss(
        ...     model(torch.ones(4, 2)), torch.zeros(4, 1))))
        True
    """

    model: nn.Module
    loss_fn: LossFunction
    data: Any
    parameters: Sequence[str] | None = None
    bn_mode: str = "eval"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.bn_mode not in _BN_MODES:
            raise ValueError(f"Invalid bn_mode: {self.bn_mode!r} (one of 'eval', 'train')")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"Invalid seed: {self.seed!r} (an integer or None)")
        self.batches = [_IndexedBatch(b, i) for i, b in enumerate(as_batches(self.data))]
        if self.bn_mode == "train" and self.seed is None:
            self.seed = int(torch.randint(0, 2**62, ()))
        named = dict(self.model.named_parameters())
        if self.parameters is None:
            self.names = tuple(n for n, p in named.items() if p.requires_grad)
        else:
            unknown = [n for n in self.parameters if n not in named]
            if unknown:
                raise ValueError(f"Invalid parameters: not in the model: {unknown}")
            self.names = tuple(self.parameters)
        if not self.names:
            raise ValueError("Invalid parameters: nothing to differentiate")
        self.fixed = {n: p.detach() for n, p in named.items() if n not in self.names}
        self.buffers = dict(self.model.named_buffers())
        sizes = [b[0].shape[0] for b in self.batches]
        total = float(sum(sizes))
        self.weights = [size / total for size in sizes]

    # -- points and evaluation --------------------------------------------------------------

    def point(self) -> Vector:
        """The model's current values of the selected parameters (detached)."""
        named = dict(self.model.named_parameters())
        return tuple(named[n].detach() for n in self.names)

    def _call(self, params: Vector, inputs: torch.Tensor, index: int = 0) -> torch.Tensor:
        state = dict(zip(self.names, params, strict=True))
        state.update(self.fixed)
        if self.bn_mode == "train":
            # Batch statistics, but BatchNorm writes its running averages into these copies.
            state.update({n: b.clone() for n, b in self.buffers.items()})
        else:
            state.update(self.buffers)
        was_training = self.model.training
        self.model.train(self.bn_mode == "train")
        try:
            if self.bn_mode != "train":
                return functional_call(self.model, state, (inputs,))
            with self._seeded_rng(index):
                return functional_call(self.model, state, (inputs,))
        finally:
            self.model.train(was_training)

    @contextlib.contextmanager
    def _seeded_rng(self, index: int) -> Iterator[None]:
        """The global RNG forked (restored on exit) and seeded for this batch's masks."""
        assert self.seed is not None
        seed = (self.seed + index) % 2**63
        device = self.device
        devices: list[int] = []
        if device.type == "cuda":
            devices = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(seed)
            for index in devices:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield

    def batch_loss(self, params: Vector, batch: Batch) -> torch.Tensor:
        """The loss of one batch at ``params``."""
        inputs, targets = batch
        return self.loss_fn(self._call(params, inputs, _index(batch)), targets)

    def loss(self, params: Vector) -> torch.Tensor:
        """The (batch-size weighted) mean loss over all batches at ``params``."""
        total = None
        for weight, batch in zip(self.weights, self.batches, strict=True):
            term = weight * self.batch_loss(params, batch)
            total = term if total is None else total + term
        return total

    def outputs(self, params: Vector, batch: Batch) -> torch.Tensor:
        """The model's outputs on one batch at ``params``."""
        return self._call(params, batch[0], _index(batch))

    # -- derivatives ----------------------------------------------------------------------------

    def gradient(self, params: Vector | None = None) -> Vector:
        """The gradient of :meth:`loss` at ``params`` (default: the model's current point)."""
        params = self.point() if params is None else params
        total: list[torch.Tensor] | None = None
        for weight, batch in zip(self.weights, self.batches, strict=True):
            grads = torch.func.grad(lambda p, b=batch: self.batch_loss(p, b))(params)
            scaled = [weight * g for g in grads]
            total = scaled if total is None else [t + s for t, s in zip(total, scaled, strict=True)]
        return tuple(total)

    def hvp(self, vector: Vector, params: Vector | None = None) -> Vector:
        """Hessian-vector product of :meth:`loss` (forward-over-reverse, ``torch.func``)."""
        params = self.point() if params is None else params
        total: list[torch.Tensor] | None = None
        for weight, batch in zip(self.weights, self.batches, strict=True):
            inputs, targets = batch
            index = _index(batch)

            def grad_fn(p, t, x=inputs, i=index):
                return torch.func.grad(lambda q: self.loss_fn(self._call(q, x, i), t))(p)

            if targets.is_floating_point():
                # Floating targets ride along as a primal with a zero tangent: closing over them
                # makes jvp fail for mean-reduced losses (pytorch/pytorch#123996).
                primals, tangents = (params, targets), (tuple(vector), torch.zeros_like(targets))
            else:
                grad_fn = functools.partial(grad_fn, t=targets)
                primals, tangents = (params,), (tuple(vector),)
            _, product = torch.func.jvp(grad_fn, primals, tangents)
            scaled = [weight * h for h in product]
            total = scaled if total is None else [t + s for t, s in zip(total, scaled, strict=True)]
        return tuple(total)

    @property
    def dtype(self) -> torch.dtype:
        return dict(self.model.named_parameters())[self.names[0]].dtype

    @property
    def device(self) -> torch.device:
        return dict(self.model.named_parameters())[self.names[0]].device


def mask_seed(bn_mode: str, generator: torch.Generator) -> int | None:
    """The seed of the random masks for :class:`ParameterFunction` (``bn_mode="train"``), drawn
    from ``generator``; ``None`` in eval mode, where nothing is random (and nothing is drawn)."""
    if bn_mode != "train":
        return None
    return int(torch.randint(0, 2**62, (), generator=generator))


# -- vectors ----------------------------------------------------------------------------------


def vector_dot(a: Vector, b: Vector) -> torch.Tensor:
    """Sum of elementwise products over all tensors (a 0-d tensor)."""
    return sum((torch.sum(x * y) for x, y in zip(a, b, strict=True)), torch.zeros(()))


def vector_norm(a: Vector) -> torch.Tensor:
    """Euclidean norm over all tensors."""
    return torch.sqrt(vector_dot(a, a))


def vector_scale(a: Vector, alpha: float | torch.Tensor) -> Vector:
    """``alpha * a``."""
    return tuple(alpha * x for x in a)


def vector_add(a: Vector, b: Vector, alpha: float | torch.Tensor = 1.0) -> Vector:
    """``a + alpha * b``."""
    return tuple(x + alpha * y for x, y in zip(a, b, strict=True))


def vector_normalize(a: Vector) -> Vector:
    """``a / ||a||`` (unchanged if the norm is 0)."""
    norm = vector_norm(a)
    return a if float(norm) == 0.0 else vector_scale(a, 1.0 / norm)


def vector_random(
    like: Iterable[torch.Tensor], generator: torch.Generator, kind: str = "gaussian"
) -> Vector:
    """A random vector shaped like ``like``: ``"gaussian"`` N(0, 1) or ``"rademacher"`` ±1.

    Drawn on the CPU from ``generator`` (reproducible whatever the device), then moved.
    """
    if kind not in ("gaussian", "rademacher"):
        raise ValueError(f"Invalid kind: {kind!r} (one of 'gaussian', 'rademacher')")
    out = []
    for t in like:
        if kind == "gaussian":
            sample = torch.randn(t.shape, generator=generator, dtype=t.dtype)
        else:
            sample = torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1
        out.append(sample.to(t.device))
    return tuple(out)
