"""Riemannian manifolds for constrained parameters (geometry only; optimizers live elsewhere).

Every manifold implements the surface of :class:`Manifold`: ``projx``, ``proju``,
``egrad2rgrad``, ``retr``, ``transp``, ``inner``, ``norm``, ``expmap``/``logmap``/``dist`` where
closed forms exist, ``random`` and ``check_point``/``check_vector`` with explanations.
"""

from torchvalley.manifolds.base import Manifold, default_tolerance
from torchvalley.manifolds.birkhoff import BirkhoffPolytope
from torchvalley.manifolds.euclidean import Euclidean
from torchvalley.manifolds.hyperbolic import Curvature, Lorentz, PoincareBall, boundary_eps
from torchvalley.manifolds.oblique import Oblique
from torchvalley.manifolds.parameter import ManifoldParameter, manifold_of
from torchvalley.manifolds.product import Product
from torchvalley.manifolds.scaled import Scale, Scaled
from torchvalley.manifolds.siegel import BoundedDomain, UpperHalf
from torchvalley.manifolds.spd import SymmetricPositiveDefinite
from torchvalley.manifolds.sphere import Sphere
from torchvalley.manifolds.stereographic import Kappa, SphereProjection, Stereographic
from torchvalley.manifolds.stiefel import Stiefel
from torchvalley.manifolds.subsphere import SphereSubspaceIntersection
from torchvalley.manifolds.tensor import ManifoldTensor

__all__ = [
    "BirkhoffPolytope",
    "BoundedDomain",
    "Curvature",
    "Euclidean",
    "Kappa",
    "Lorentz",
    "Manifold",
    "ManifoldParameter",
    "ManifoldTensor",
    "Oblique",
    "PoincareBall",
    "Product",
    "Scale",
    "Scaled",
    "Sphere",
    "SphereProjection",
    "SphereSubspaceIntersection",
    "Stereographic",
    "Stiefel",
    "SymmetricPositiveDefinite",
    "UpperHalf",
    "boundary_eps",
    "default_tolerance",
    "manifold_of",
]
