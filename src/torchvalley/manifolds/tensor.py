"""``ManifoldTensor``: a plain tensor (not a parameter) that carries the manifold of its points.

Why not :class:`~torchvalley.manifolds.ManifoldParameter`: an ``nn.Parameter`` assigned to a
module becomes one of its *parameters* (``module.parameters()`` hands it to the optimizer, and
``register_buffer`` refuses it), and it requires a gradient by default. Points that are not
trained (target embeddings, anchors, prototypes, a fixed reference point) belong in a module's
*buffers*: saved in its ``state_dict``, moved by ``.to()``, never optimized. ``ManifoldTensor``
is that: a ``torch.Tensor`` subclass with a ``.manifold`` (so :func:`manifold_of` and every
Riemannian optimizer see it, if it is ever given to one), ``requires_grad=False`` by default,
membership checked at construction (``project=True`` projects first), and the geometry as
methods (``proj_``, ``dist``, ``expmap``, ``logmap``, ``retr``, ``proju``, ``inner``, ``transp``).

Arithmetic returns plain tensors (a sum of two points is not a point); only the operations that
keep the same points keep the manifold: ``to``/``cpu``/``cuda``/``double``/``float``/``half``/
``bfloat16``/``clone``/``detach``/``contiguous`` (so ``module.to(...)`` keeps a buffer's
manifold, which geoopt's ``ManifoldTensor`` loses), and ``deepcopy``/pickling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import Manifold, checked_point

__all__ = ["ManifoldTensor"]

_KEEP_NAMES = (
    "to",
    "cpu",
    "cuda",
    "double",
    "float",
    "half",
    "bfloat16",
    "clone",
    "detach",
    "contiguous",
)


def _rebuild(data: Tensor, manifold: Manifold, requires_grad: bool) -> ManifoldTensor:
    return ManifoldTensor._trusted(data, manifold, requires_grad)


class ManifoldTensor(Tensor):
    """A tensor of points of ``manifold`` (see the module docstring).

    Args:
        data: the points.
        manifold: their manifold.
        requires_grad: whether autograd records operations on it (default False).
        project: project ``data`` onto the manifold instead of validating it.

    Raises:
        ValueError: ``data`` is not on the manifold (with the explanation of
            :meth:`Manifold.check_point`) and ``project`` is False.
    """

    manifold: Manifold

    def __new__(
        cls,
        data: Tensor,
        manifold: Manifold,
        requires_grad: bool = False,
        project: bool = False,
    ) -> ManifoldTensor:
        if not isinstance(manifold, Manifold):
            raise TypeError(f"manifold must be a Manifold, got {type(manifold).__name__}")
        data = checked_point(manifold, data, project)
        return cls._trusted(data, manifold, requires_grad)

    @classmethod
    def _trusted(cls, data: Tensor, manifold: Manifold, requires_grad: bool) -> ManifoldTensor:
        instance = Tensor._make_subclass(cls, data, requires_grad)
        instance.manifold = manifold
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        source = args[0] if args else None
        if name in _KEEP_NAMES and isinstance(source, ManifoldTensor) and isinstance(out, Tensor):
            wrapped = out.as_subclass(ManifoldTensor)
            wrapped.manifold = source.manifold
            return wrapped
        return out

    def _plain(self) -> Tensor:
        return self.as_subclass(Tensor)

    # ---------------------------------------------------------------- geometry
    def proj_(self) -> ManifoldTensor:
        """Project onto the manifold in place (not recorded by autograd)."""
        with torch.no_grad():
            self.copy_(self.manifold.projx(self._plain()))
        return self

    def proju(self, u: Tensor) -> Tensor:
        """``manifold.proju(self, u)``."""
        return self.manifold.proju(self._plain(), u)

    def retr(self, u: Tensor) -> Tensor:
        """``manifold.retr(self, u)``."""
        return self.manifold.retr(self._plain(), u)

    def expmap(self, u: Tensor) -> Tensor:
        """``manifold.expmap(self, u)``."""
        return self.manifold.expmap(self._plain(), u)

    def logmap(self, y: Tensor) -> Tensor:
        """``manifold.logmap(self, y)``."""
        return self.manifold.logmap(self._plain(), _as_plain(y))

    def dist(self, y: Tensor, keepdim: bool = False) -> Tensor:
        """``manifold.dist(self, y)``."""
        return self.manifold.dist(self._plain(), _as_plain(y), keepdim=keepdim)

    def inner(self, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """``manifold.inner(self, u, v)``."""
        return self.manifold.inner(self._plain(), u, v, keepdim=keepdim)

    def transp(self, y: Tensor, v: Tensor) -> Tensor:
        """``manifold.transp(self, y, v)``."""
        return self.manifold.transp(self._plain(), _as_plain(y), v)

    # ---------------------------------------------------------------- copies
    def __deepcopy__(self, memo: dict[int, Any]) -> ManifoldTensor:
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)._trusted(self._plain().clone(), self.manifold, self.requires_grad)
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (_rebuild, (self._plain().detach(), self.manifold, self.requires_grad))

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        return f"ManifoldTensor on {self.manifold!r} containing:\n{self._plain()!r}"


def _as_plain(t: Tensor) -> Tensor:
    return t.as_subclass(Tensor) if isinstance(t, ManifoldTensor) else t
