"""``ManifoldParameter``: an ``nn.Parameter`` that carries the manifold it lives on."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchvalley.manifolds.base import Manifold, checked_point
from torchvalley.manifolds.euclidean import Euclidean

__all__ = ["ManifoldParameter", "manifold_of"]

_EUCLIDEAN = Euclidean()


def manifold_of(p: Tensor) -> Manifold:
    """The manifold a parameter lives on: ``p.manifold`` if it carries one, else ``Euclidean()``.

    Args:
        p: a tensor (a :class:`ManifoldParameter` or any plain tensor/parameter).

    Returns:
        The manifold (a shared ``Euclidean()`` for plain tensors; test ``.is_flat`` rather than
        the type to tell the plain Euclidean update apart).
    """
    manifold = getattr(p, "manifold", None)
    return manifold if isinstance(manifold, Manifold) else _EUCLIDEAN


def _rebuild_manifold_parameter(
    data: Tensor, manifold: Manifold, requires_grad: bool
) -> ManifoldParameter:
    return ManifoldParameter._trusted(data, manifold, requires_grad)


class ManifoldParameter(nn.Parameter):
    """A parameter constrained to ``manifold`` (found by ``module.parameters()`` as usual).

    Unlike geoopt's ``ManifoldParameter`` (which checks only the shape, geoopt issue #97), the
    constructor checks membership: a tensor off the manifold raises ``ValueError`` with the
    explanation from :meth:`Manifold.check_point`, unless ``project=True``, which projects it with
    ``manifold.projx`` first. ``deepcopy`` and pickling keep the manifold; ``state_dict`` stores
    the plain tensor data, which ``load_state_dict`` copies into an existing parameter.

    Args:
        data: the initial point.
        manifold: the manifold (default ``Euclidean()``).
        requires_grad: as for ``nn.Parameter``.
        project: project ``data`` onto the manifold instead of validating it.
    """

    manifold: Manifold

    def __new__(
        cls,
        data: Tensor | None = None,
        manifold: Manifold | None = None,
        requires_grad: bool = True,
        project: bool = False,
    ) -> ManifoldParameter:
        if data is None:
            data = torch.empty(0)
        if manifold is None:
            manifold = Euclidean()
        if not isinstance(manifold, Manifold):
            raise TypeError(f"manifold must be a Manifold, got {type(manifold).__name__}")
        data = checked_point(manifold, data, project)
        return cls._trusted(data, manifold, requires_grad)

    @classmethod
    def _trusted(cls, data: Tensor, manifold: Manifold, requires_grad: bool) -> ManifoldParameter:
        instance = torch.Tensor._make_subclass(cls, data, requires_grad)
        instance.manifold = manifold
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything happens in __new__; accept the same arguments here.
        del args, kwargs

    def proj_(self) -> ManifoldParameter:
        """Project the data onto the manifold in place (without recording autograd)."""
        with torch.no_grad():
            self.copy_(self.manifold.projx(self.data))
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ManifoldParameter:
        if id(self) in memo:
            return memo[id(self)]
        result = type(self)._trusted(
            self.data.clone(memory_format=torch.preserve_format), self.manifold, self.requires_grad
        )
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (_rebuild_manifold_parameter, (self.data, self.manifold, self.requires_grad))

    def __repr__(self) -> str:
        return f"ManifoldParameter on {self.manifold!r} containing:\n{self.data!r}"
