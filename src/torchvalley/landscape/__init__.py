"""Loss-landscape diagnostics: pure functions of (model, loss_fn, data).

``loss_fn(outputs, targets)`` returns a scalar mean loss; ``data`` is one ``(inputs, targets)``
batch or an iterable of batches. See :mod:`torchvalley.landscape._core` for the conventions.
"""

from torchvalley.landscape._core import ParameterFunction as ParameterFunction
from torchvalley.landscape.alignment import LayerAlignment as LayerAlignment
from torchvalley.landscape.alignment import layer_alignment as layer_alignment
from torchvalley.landscape.alignment import max_margin_direction as max_margin_direction
from torchvalley.landscape.directions import VMFConcentration as VMFConcentration
from torchvalley.landscape.directions import VMFFit as VMFFit
from torchvalley.landscape.directions import VMFNull as VMFNull
from torchvalley.landscape.directions import sample_vmf as sample_vmf
from torchvalley.landscape.directions import uniform_null as uniform_null
from torchvalley.landscape.directions import vmf_concentration as vmf_concentration
from torchvalley.landscape.directions import vmf_fit as vmf_fit
from torchvalley.landscape.directions import vmf_kappa_from_rbar as vmf_kappa_from_rbar
from torchvalley.landscape.directions import (
    vmf_mean_resultant_length as vmf_mean_resultant_length,
)
from torchvalley.landscape.fdr import FDREstimate as FDREstimate
from torchvalley.landscape.fdr import FDRMonitor as FDRMonitor
from torchvalley.landscape.fdr import FDRScheduler as FDRScheduler
from torchvalley.landscape.fdr import batch_means_ratio as batch_means_ratio
from torchvalley.landscape.fdr import fdr1_coefficient as fdr1_coefficient
from torchvalley.landscape.hessian import HessianEigenResult as HessianEigenResult
from torchvalley.landscape.hessian import HessianTrace as HessianTrace
from torchvalley.landscape.hessian import SpectralDensity as SpectralDensity
from torchvalley.landscape.hessian import hessian_eigenvalues as hessian_eigenvalues
from torchvalley.landscape.hessian import hessian_trace as hessian_trace
from torchvalley.landscape.hessian import plot_spectral_density as plot_spectral_density
from torchvalley.landscape.hessian import spectral_density as spectral_density
from torchvalley.landscape.hvp import CurvatureOperator as CurvatureOperator
from torchvalley.landscape.hvp import fisher_vector_product as fisher_vector_product
from torchvalley.landscape.hvp import gauss_newton_vector_product as gauss_newton_vector_product
from torchvalley.landscape.hvp import hessian_vector_product as hessian_vector_product
from torchvalley.landscape.interpolation import InterpolationResult as InterpolationResult
from torchvalley.landscape.interpolation import (
    LayerwiseInterpolationResult as LayerwiseInterpolationResult,
)
from torchvalley.landscape.interpolation import layerwise_interpolation as layerwise_interpolation
from torchvalley.landscape.interpolation import linear_interpolation as linear_interpolation
from torchvalley.landscape.ntk import NTKTrajectory as NTKTrajectory
from torchvalley.landscape.ntk import TwoLayerReLU as TwoLayerReLU
from torchvalley.landscape.ntk import ntk_gram as ntk_gram
from torchvalley.landscape.ntk import ntk_lambda0 as ntk_lambda0
from torchvalley.landscape.ntk import train_two_layer_relu as train_two_layer_relu
from torchvalley.landscape.plots import plot_layerwise_interpolation as plot_layerwise_interpolation
from torchvalley.landscape.plots import plot_loss_contour as plot_loss_contour
from torchvalley.landscape.plots import plot_loss_curve as plot_loss_curve
from torchvalley.landscape.sharpness import SharpnessResult as SharpnessResult
from torchvalley.landscape.sharpness import sharpness as sharpness
from torchvalley.landscape.slices import LossSlice1D as LossSlice1D
from torchvalley.landscape.slices import LossSlice2D as LossSlice2D
from torchvalley.landscape.slices import filter_normalize as filter_normalize
from torchvalley.landscape.slices import filter_normalized_direction as filter_normalized_direction
from torchvalley.landscape.slices import random_direction_slice_1d as random_direction_slice_1d
from torchvalley.landscape.slices import random_direction_slice_2d as random_direction_slice_2d
