"""Matrix-free curvature operators: the layer under :mod:`torchvalley.landscape` (spectra,
sharpness) and second-order optimizers (damped Newton / CG solvers).

A :class:`CurvatureOperator` is ``v ↦ (C + λI) v`` for the Hessian, the generalised Gauss–Newton
matrix or the (empirical, true or sampled) Fisher of a model + loss + data at a point, never formed:

* :mod:`~torchvalley.curvature.function`: :class:`ParameterFunction`, the model + loss + data as
  a function of the parameters (batch weighting, BatchNorm modes, seeded dropout masks) and
  arithmetic on parameter-shaped vectors;
* :mod:`~torchvalley.curvature.operator`: :class:`CurvatureOperator` (products on
  parameter-shaped tuples and on flat vectors, damping, ``scipy.sparse.linalg.LinearOperator``);
* :mod:`~torchvalley.curvature.products`: one-off ``Hv``, ``Gv`` and ``Fv``;
* :mod:`~torchvalley.curvature.cg`: damped, preconditioned conjugate gradient returning the
  iterate path, with Martens' relative-progress stopping (the solver of Hessian-free methods);
* :mod:`~torchvalley.curvature.bn_fold`: eval-mode BatchNorm folded into the layer before it
  while a graph is built (a performance device).

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
    ...                             torch.nn.Linear(4, 1)).double()
    >>> data = (torch.randn(16, 3).double(), torch.randn(16, 1).double())
    >>> op = CurvatureOperator.of(model, torch.nn.functional.mse_loss, data)
    >>> v = torch.ones(op.dimension, dtype=torch.float64)
    >>> op.matvec_flat(v).shape
    torch.Size([21])
"""

import torch  # noqa: F401 - the doctest's namespace

from torchvalley.curvature.cg import CGResult as CGResult
from torchvalley.curvature.cg import conjugate_gradient as conjugate_gradient
from torchvalley.curvature.cg import martens_preconditioner as martens_preconditioner
from torchvalley.curvature.function import Batch as Batch
from torchvalley.curvature.function import LossFunction as LossFunction
from torchvalley.curvature.function import ParameterFunction as ParameterFunction
from torchvalley.curvature.function import Vector as Vector
from torchvalley.curvature.function import as_batches as as_batches
from torchvalley.curvature.operator import CURVATURES as CURVATURES
from torchvalley.curvature.operator import LIKELIHOODS as LIKELIHOODS
from torchvalley.curvature.operator import STRATEGIES as STRATEGIES
from torchvalley.curvature.operator import CurvatureOperator as CurvatureOperator
from torchvalley.curvature.operator import PerExampleLoss as PerExampleLoss
from torchvalley.curvature.products import fisher_vector_product as fisher_vector_product
from torchvalley.curvature.products import (
    gauss_newton_vector_product as gauss_newton_vector_product,
)
from torchvalley.curvature.products import hessian_vector_product as hessian_vector_product
