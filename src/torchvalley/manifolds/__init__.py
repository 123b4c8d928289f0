"""Riemannian manifolds for constrained parameters (geometry only; optimizers live elsewhere).

Every manifold implements the surface of :class:`Manifold`: ``projx``, ``proju``,
``egrad2rgrad``, ``retr``, ``transp``, ``inner``, ``norm``, ``expmap``/``logmap``/``dist`` where
closed forms exist, ``random`` and ``check_point``/``check_vector`` with explanations.
"""

from torchvalley.manifolds.base import Manifold, default_tolerance
from torchvalley.manifolds.euclidean import Euclidean
from torchvalley.manifolds.hyperbolic import Curvature, Lorentz, PoincareBall, boundary_eps
from torchvalley.manifolds.oblique import Oblique
from torchvalley.manifolds.parameter import ManifoldParameter, manifold_of
from torchvalley.manifolds.product import Product
from torchvalley.manifolds.sphere import Sphere
from torchvalley.manifolds.stiefel import Stiefel

__all__ = [
    "Curvature",
    "Euclidean",
    "Lorentz",
    "Manifold",
    "ManifoldParameter",
    "Oblique",
    "PoincareBall",
    "Product",
    "Sphere",
    "Stiefel",
    "boundary_eps",
    "default_tolerance",
    "manifold_of",
]
