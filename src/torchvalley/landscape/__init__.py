"""Loss-landscape diagnostics: pure functions of (model, loss_fn, data), or of a curvature
operator built from them.

``loss_fn(outputs, targets)`` returns a scalar mean loss; ``data`` is one ``(inputs, targets)``
batch or an iterable of batches. See :mod:`torchvalley.curvature.function` for the conventions.

* :mod:`~torchvalley.landscape.spectrum` (Hessian eigenvalues, trace, density; Krylov kernels in
  :mod:`~torchvalley.landscape.krylov`) and :mod:`~torchvalley.landscape.sharpness`: the
  curvature of one point, on :class:`~torchvalley.curvature.operator.CurvatureOperator`;
* :mod:`~torchvalley.landscape.surfaces`: interpolation paths, random-direction slices, plots;
* :mod:`~torchvalley.landscape.gradient_statistics`: FDR (estimates, scheduler, monitor) and the
  vMF concentration of minibatch gradients;
* :mod:`~torchvalley.landscape.theory`: layer alignment (deep linear networks) and NTK checks.

Nothing here imports the benchmark harness. The modules of the earlier flat layout
(``torchvalley.landscape.hessian``, ``.hvp``, ``._core``, ``.interpolation``, ``.slices``,
``.plots``, ``.fdr``, ``.directions``, ``.alignment``, ``.ntk``) still import, as aliases of
their new homes; ``.study`` and ``.callbacks`` moved to the harness
(:mod:`torchvalley.bench.landscape_study`, :mod:`torchvalley.bench.measurements`) and are
imported from there on first use of the old path only.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

from torchvalley.curvature.function import ParameterFunction as ParameterFunction
from torchvalley.curvature.operator import CurvatureOperator as CurvatureOperator
from torchvalley.curvature.products import fisher_vector_product as fisher_vector_product
from torchvalley.curvature.products import (
    gauss_newton_vector_product as gauss_newton_vector_product,
)
from torchvalley.curvature.products import hessian_vector_product as hessian_vector_product
from torchvalley.landscape.gradient_statistics.directions import (
    VMFConcentration as VMFConcentration,
)
from torchvalley.landscape.gradient_statistics.directions import VMFFit as VMFFit
from torchvalley.landscape.gradient_statistics.directions import VMFNull as VMFNull
from torchvalley.landscape.gradient_statistics.directions import sample_vmf as sample_vmf
from torchvalley.landscape.gradient_statistics.directions import uniform_null as uniform_null
from torchvalley.landscape.gradient_statistics.directions import (
    vmf_concentration as vmf_concentration,
)
from torchvalley.landscape.gradient_statistics.directions import vmf_fit as vmf_fit
from torchvalley.landscape.gradient_statistics.directions import (
    vmf_kappa_from_rbar as vmf_kappa_from_rbar,
)
from torchvalley.landscape.gradient_statistics.directions import (
    vmf_mean_resultant_length as vmf_mean_resultant_length,
)
from torchvalley.landscape.gradient_statistics.fdr import FDRCurvature as FDRCurvature
from torchvalley.landscape.gradient_statistics.fdr import FDREstimate as FDREstimate
from torchvalley.landscape.gradient_statistics.fdr import FDRMonitor as FDRMonitor
from torchvalley.landscape.gradient_statistics.fdr import FDRScheduler as FDRScheduler
from torchvalley.landscape.gradient_statistics.fdr import batch_means_ratio as batch_means_ratio
from torchvalley.landscape.gradient_statistics.fdr import fdr1_coefficient as fdr1_coefficient
from torchvalley.landscape.sharpness import SharpnessResult as SharpnessResult
from torchvalley.landscape.sharpness import sharpness as sharpness
from torchvalley.landscape.spectrum import HessianEigenResult as HessianEigenResult
from torchvalley.landscape.spectrum import HessianTrace as HessianTrace
from torchvalley.landscape.spectrum import SpectralDensity as SpectralDensity
from torchvalley.landscape.spectrum import hessian_eigenvalues as hessian_eigenvalues
from torchvalley.landscape.spectrum import hessian_trace as hessian_trace
from torchvalley.landscape.spectrum import spectral_density as spectral_density
from torchvalley.landscape.surfaces.barriers import PathBarrier as PathBarrier
from torchvalley.landscape.surfaces.barriers import path_barrier as path_barrier
from torchvalley.landscape.surfaces.interpolation import InterpolationResult as InterpolationResult
from torchvalley.landscape.surfaces.interpolation import (
    LayerwiseInterpolationResult as LayerwiseInterpolationResult,
)
from torchvalley.landscape.surfaces.interpolation import (
    layerwise_interpolation as layerwise_interpolation,
)
from torchvalley.landscape.surfaces.interpolation import (
    linear_interpolation as linear_interpolation,
)
from torchvalley.landscape.surfaces.plots import (
    plot_layerwise_interpolation as plot_layerwise_interpolation,
)
from torchvalley.landscape.surfaces.plots import plot_loss_contour as plot_loss_contour
from torchvalley.landscape.surfaces.plots import plot_loss_curve as plot_loss_curve
from torchvalley.landscape.surfaces.plots import plot_spectral_density as plot_spectral_density
from torchvalley.landscape.surfaces.slices import LossSlice1D as LossSlice1D
from torchvalley.landscape.surfaces.slices import LossSlice2D as LossSlice2D
from torchvalley.landscape.surfaces.slices import filter_normalize as filter_normalize
from torchvalley.landscape.surfaces.slices import (
    filter_normalized_direction as filter_normalized_direction,
)
from torchvalley.landscape.surfaces.slices import (
    random_direction_slice_1d as random_direction_slice_1d,
)
from torchvalley.landscape.surfaces.slices import (
    random_direction_slice_2d as random_direction_slice_2d,
)
from torchvalley.landscape.theory.alignment import LayerAlignment as LayerAlignment
from torchvalley.landscape.theory.alignment import layer_alignment as layer_alignment
from torchvalley.landscape.theory.alignment import max_margin_direction as max_margin_direction
from torchvalley.landscape.theory.ntk import NTKTrajectory as NTKTrajectory
from torchvalley.landscape.theory.ntk import TwoLayerReLU as TwoLayerReLU
from torchvalley.landscape.theory.ntk import ntk_gram as ntk_gram
from torchvalley.landscape.theory.ntk import ntk_lambda0 as ntk_lambda0
from torchvalley.landscape.theory.ntk import train_two_layer_relu as train_two_layer_relu

# -- the earlier module paths -----------------------------------------------------------------

#: old submodule -> the modules its names now live in (looked up in this order, on first use)
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "_core": ("torchvalley.curvature.function",),
    "hvp": (
        "torchvalley.curvature.products",
        "torchvalley.curvature.operator",
        "torchvalley.curvature.bn_fold",
    ),
    "hessian": ("torchvalley.landscape.spectrum", "torchvalley.landscape.surfaces.plots"),
    "interpolation": ("torchvalley.landscape.surfaces.interpolation",),
    "slices": ("torchvalley.landscape.surfaces.slices",),
    "plots": ("torchvalley.landscape.surfaces.plots",),
    "fdr": ("torchvalley.landscape.gradient_statistics.fdr",),
    "directions": ("torchvalley.landscape.gradient_statistics.directions",),
    "alignment": ("torchvalley.landscape.theory.alignment",),
    "ntk": ("torchvalley.landscape.theory.ntk",),
    # the harness's, imported only when the old path is used
    "study": ("torchvalley.bench.landscape_study",),
    "callbacks": ("torchvalley.bench.measurements",),
}


class _MovedModule(types.ModuleType):
    """An old module path: attribute lookups go to the modules the names moved to."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import torchvalley.landscape.<old>`` give a :class:`_MovedModule`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        prefix, _, leaf = fullname.rpartition(".")
        if prefix != __name__ or leaf not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        return _MovedModule(spec.name, MOVED_MODULES[spec.name.rpartition(".")[2]])

    def exec_module(self, module: types.ModuleType) -> None:
        pass


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str) -> Any:
    if name in MOVED_MODULES:  # ``torchvalley.landscape.hessian`` without importing it first
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
