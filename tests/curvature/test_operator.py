"""The curvature operator as a library object: ``CurvatureOperator.of``, damping, SciPy, one
graph shared by the spectral functions, and the layering (``curvature`` < ``landscape`` <
``bench``) with the earlier module paths still importable.

Oracles: the dense Hessian (``torch.autograd.functional.hessian`` of the flattened loss) and
``torch.linalg.eigvalsh``; the model form of each spectral function for the operator form.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.curvature import CurvatureOperator, ParameterFunction
from torchvalley.landscape import hessian_eigenvalues, hessian_trace, spectral_density

DTYPE = torch.float64
P = 3 * 5 + 5 + 5 * 2 + 2  # parameters of the network in _problem
SRC = Path(__file__).resolve().parents[2] / "src" / "torchvalley"


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DTYPE)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(20, 3, generator=generator, dtype=DTYPE)
    targets = torch.randn(20, 2, generator=generator, dtype=DTYPE)
    return model, F.mse_loss, (inputs, targets)


def _dense_hessian(model, loss_fn, data):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]

    def loss(flat):
        parts = torch.split(flat, numels)
        state = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(torch.func.functional_call(model, state, (data[0],)), data[1])

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat)


def test_of_is_the_constructor_on_a_parameter_function():
    model, loss_fn, data = _problem()
    op = CurvatureOperator.of(model, loss_fn, data, curvature="gauss_newton")
    reference = CurvatureOperator(ParameterFunction(model, loss_fn, data), curvature="gauss_newton")
    v = torch.randn(op.dimension, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    torch.testing.assert_close(op.matvec_flat(v), reference.matvec_flat(v), rtol=0, atol=0)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_damped_products_are_products_with_h_plus_lambda_i(damping):
    model, loss_fn, data = _problem()
    dense = _dense_hessian(model, loss_fn, data) + damping * torch.eye(P, dtype=DTYPE)
    op = CurvatureOperator.of(model, loss_fn, data, damping=damping)
    vectors = torch.randn(4, op.dimension, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    torch.testing.assert_close(op.matvec_flat(vectors[0]), dense @ vectors[0])
    torch.testing.assert_close(op.matmat_flat(vectors), vectors @ dense)
    shaped = op.matvec(op.unflatten(vectors[1]))
    torch.testing.assert_close(op.flatten(shaped), dense @ vectors[1])


@pytest.mark.parametrize("curvature", ["gauss_newton", "fisher"])
def test_damping_adds_lambda_v_for_every_curvature(curvature):
    model, loss_fn, data = _problem()
    plain = CurvatureOperator.of(model, loss_fn, data, curvature=curvature)
    damped = CurvatureOperator.of(model, loss_fn, data, curvature=curvature, damping=2.0)
    v = torch.randn(plain.dimension, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    torch.testing.assert_close(damped.matvec_flat(v), plain.matvec_flat(v) + 2.0 * v)


@pytest.mark.parametrize("damping", [-0.1, float("nan"), "1"])
def test_invalid_damping_is_a_value_error(damping):
    model, loss_fn, data = _problem()
    with pytest.raises(ValueError, match="damping"):
        CurvatureOperator.of(model, loss_fn, data, damping=damping)


def test_scipy_linear_operator_gives_the_dense_spectrum():
    from scipy.sparse.linalg import eigsh

    model, loss_fn, data = _problem()
    dense = _dense_hessian(model, loss_fn, data)
    linear = CurvatureOperator.of(model, loss_fn, data).as_linear_operator()
    assert linear.shape == (P, P)
    values = eigsh(linear, k=3, which="LA", return_eigenvectors=False)
    expected = torch.linalg.eigvalsh(dense)[-3:]
    torch.testing.assert_close(torch.as_tensor(sorted(values), dtype=DTYPE), expected)
    block = torch.randn(P, 2, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    torch.testing.assert_close(torch.as_tensor(linear @ block.numpy()), dense @ block)


def test_operator_form_equals_the_model_form():
    model, loss_fn, data = _problem()
    op = CurvatureOperator.of(model, loss_fn, data)
    pairs = [
        (hessian_eigenvalues(op, 2, seed=0), hessian_eigenvalues(model, loss_fn, data, 2, seed=0)),
        (
            hessian_trace(op, samples=8, seed=1),
            hessian_trace(model, loss_fn, data, samples=8, seed=1),
        ),
        (
            spectral_density(op, lanczos_steps=6, seed=2),
            spectral_density(model, loss_fn, data, lanczos_steps=6, seed=2),
        ),
    ]
    eig, trace, density = pairs
    torch.testing.assert_close(eig[0].eigenvalues, eig[1].eigenvalues, rtol=0, atol=0)
    assert eig[0].hvp_count == eig[1].hvp_count
    torch.testing.assert_close(trace[0].values, trace[1].values, rtol=0, atol=0)
    torch.testing.assert_close(density[0].nodes, density[1].nodes, rtol=0, atol=0)


def test_one_operator_builds_one_graph_for_every_spectral_function(monkeypatch):
    model, loss_fn, data = _problem()
    builds = []
    original = CurvatureOperator._batch_graph

    def counting(self, batch):
        builds.append(1)
        return original(self, batch)

    monkeypatch.setattr(CurvatureOperator, "_batch_graph", counting)
    op = CurvatureOperator.of(model, loss_fn, data)
    first = hessian_eigenvalues(op, seed=0)
    hessian_trace(op, samples=4, seed=0)
    spectral_density(op, lanczos_steps=5, seed=0)
    assert len(builds) == 1
    # hvp_count is the call's own products, the operator keeps the total
    assert first.hvp_count < op.products


def test_the_study_measures_with_one_graph_per_batch(monkeypatch):
    from torchvalley.bench.landscape_study import _measure
    from torchvalley.bench.tasks import get_task

    task = get_task("quadratic")
    model = task.model(0)
    builds = []
    original = CurvatureOperator._batch_graph

    def counting(self, batch):
        builds.append(1)
        return original(self, batch)

    monkeypatch.setattr(CurvatureOperator, "_batch_graph", counting)
    numbers, curves = _measure(
        model, None, task, ("eigenvalues", "trace", "density"), 100, 0.05, seed=0
    )
    assert len(builds) == 1
    assert {"lambda_max", "trace", "trace_se"} <= set(numbers) and "density" in curves


def test_operator_options_go_to_the_operator():
    model, loss_fn, data = _problem()
    op = CurvatureOperator.of(model, loss_fn, data)
    with pytest.raises(ValueError, match=r"bn_mode.*CurvatureOperator\.of"):
        hessian_eigenvalues(op, bn_mode="train")
    with pytest.raises(ValueError, match="CurvatureOperator or"):
        hessian_trace("not a model", loss_fn, data)
    with pytest.raises(ValueError, match="CurvatureOperator or"):
        hessian_trace(model)


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("torchvalley.landscape.hvp", "CurvatureOperator", "torchvalley.curvature.operator"),
        ("torchvalley.landscape.hvp", "hessian_vector_product", "torchvalley.curvature.products"),
        ("torchvalley.landscape._core", "ParameterFunction", "torchvalley.curvature.function"),
        ("torchvalley.landscape.hessian", "hessian_trace", "torchvalley.landscape.spectrum"),
        (
            "torchvalley.landscape.hessian",
            "plot_spectral_density",
            "torchvalley.landscape.surfaces.plots",
        ),
        ("torchvalley.landscape.slices", "LossSlice1D", "torchvalley.landscape.surfaces.slices"),
        (
            "torchvalley.landscape.fdr",
            "FDRScheduler",
            "torchvalley.landscape.gradient_statistics.fdr",
        ),
        ("torchvalley.landscape.ntk", "ntk_gram", "torchvalley.landscape.theory.ntk"),
        ("torchvalley.landscape.study", "run_landscape_study", "torchvalley.bench.landscape_study"),
        (
            "torchvalley.landscape.callbacks",
            "HessianEigenvaluesCallback",
            "torchvalley.bench.measurements",
        ),
    ],
)
def test_earlier_module_paths_still_import(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(new), name
    )
    namespace: dict = {}
    exec(f"from {old} import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(new), name)


def test_layers_import_downwards_only():
    """``curvature`` imports no ``landscape``; no ``landscape`` module imports ``bench``; and
    importing ``torchvalley.landscape`` loads no harness module (a fresh interpreter)."""
    for path in (SRC / "curvature").rglob("*.py"):
        text = path.read_text()
        assert "from torchvalley.landscape" not in text, path
        assert "import torchvalley.landscape" not in text, path
    for path in (SRC / "landscape").rglob("*.py"):
        text = path.read_text()
        assert "import torchvalley.bench" not in text and "from torchvalley.bench" not in text
    code = (
        "import sys, torchvalley.landscape, torchvalley.curvature; "
        "print(sorted(m for m in sys.modules if m.startswith('torchvalley.bench')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "strategy", ["double_backward", "double_backward_per_batch", "forward_over_reverse"]
)
def test_gradient_flat_is_the_loss_gradient(strategy):
    """``gradient_flat`` (read from the products' gradient graphs where they are kept) equals
    autograd's gradient of the batch-size weighted loss, before and after a product."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).double()
    batches = [
        (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)),
        (torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)),
    ]
    data = batches if strategy != "double_backward" else [batches[0]]
    op = CurvatureOperator.of(model, torch.nn.functional.mse_loss, data, strategy=strategy)
    total = sum(len(b[0]) for b in data)
    loss = sum(len(b[0]) / total * torch.nn.functional.mse_loss(model(b[0]), b[1]) for b in data)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, model.parameters())])
    torch.testing.assert_close(op.gradient_flat(), expected, rtol=1e-12, atol=1e-12)
    op.matvec_flat(torch.ones(op.dimension, dtype=torch.float64))
    torch.testing.assert_close(op.gradient_flat(), expected, rtol=1e-12, atol=1e-12)
    assert op.products == 1  # the gradient is not counted as a product
