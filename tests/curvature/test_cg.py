"""The conjugate-gradient solver against dense linear algebra (float64).

Oracles: ``torch.linalg.solve`` for the solution, the exact-arithmetic bound (at most ``n``
iterations on an ``n``-dimensional SPD system), the quadratic model ``φ`` recomputed densely, and
Martens' stopping rule re-evaluated on the recorded values.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.curvature import CurvatureOperator, conjugate_gradient, martens_preconditioner

DTYPE = torch.float64


def _spd(n: int, condition: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    eigenvalues = torch.logspace(0, math.log10(condition), n, dtype=DTYPE)
    return q @ torch.diag(eigenvalues) @ q.T


def _phi(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    return float(0.5 * x @ a @ x - b @ x)


def test_solution_equals_dense_solve():
    a = _spd(20, 1e3, 0)
    b = torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b, progress_tol=None, residual_tol=1e-13)
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    assert result.stop_reason == "residual"
    assert result.products == result.iterations


def test_at_most_n_iterations_on_an_n_dimensional_system():
    # exact arithmetic: the Krylov space is all of R^n after n steps; a well-conditioned system
    # keeps float64 close enough that the residual test fires by then
    for n in (3, 8, 15):
        a = _spd(n, 10.0, n)
        b = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=DTYPE)
        result = conjugate_gradient(lambda v, a=a: a @ v, b, progress_tol=None, residual_tol=1e-10)
        assert result.stop_reason == "residual"
        assert result.iterations <= n


def test_distinct_eigenvalues_bound_the_iterations():
    # A with k distinct eigenvalues: CG terminates in k iterations (exact arithmetic)
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=DTYPE))
    eigenvalues = torch.tensor([1.0, 4.0, 9.0], dtype=DTYPE).repeat(10)
    a = q @ torch.diag(eigenvalues) @ q.T
    b = torch.randn(30, generator=g, dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b, progress_tol=None, residual_tol=1e-10)
    assert result.iterations == 3


def test_diagonal_preconditioner_reduces_iterations_on_an_ill_conditioned_diagonal():
    n = 60
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, 5, n, dtype=DTYPE)
    coupling = torch.eye(n, dtype=DTYPE) + 0.05 * _spd(n, 2.0, 4) / n
    a = scales.sqrt()[:, None] * coupling * scales.sqrt()[None, :]
    b = torch.randn(n, generator=g, dtype=DTYPE)
    plain = conjugate_gradient(
        lambda v: a @ v, b, progress_tol=None, residual_tol=1e-8, max_iter=1000
    )
    jacobi = conjugate_gradient(
        lambda v: a @ v,
        b,
        progress_tol=None,
        residual_tol=1e-8,
        max_iter=1000,
        preconditioner=torch.diagonal(a).clone(),
    )
    assert jacobi.stop_reason == "residual" and plain.stop_reason == "residual"
    assert jacobi.iterations * 4 < plain.iterations
    torch.testing.assert_close(jacobi.solution, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_path_is_monotone_in_the_quadratic_model(preconditioned):
    a = _spd(40, 1e4, 5)
    b = torch.randn(40, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    m = torch.diagonal(a).clone() if preconditioned else None
    result = conjugate_gradient(
        lambda v: a @ v,
        b,
        max_iter=40,
        preconditioner=m,
        progress_tol=None,
        residual_tol=0.0,
        path="all",
    )
    dense = [_phi(a, b, x) for _, x in result.path]
    assert all(later < earlier for earlier, later in itertools.pairwise(dense))
    # the tracked values are the dense φ of the iterates
    torch.testing.assert_close(
        torch.tensor(result.path_values), torch.tensor(dense), rtol=1e-9, atol=1e-12
    )


def test_geometric_path_keeps_martens_indices_and_the_last_iterate():
    a = _spd(40, 1e4, 7)
    b = torch.ones(40, dtype=DTYPE)
    result = conjugate_gradient(
        lambda v: a @ v, b, max_iter=25, progress_tol=None, residual_tol=0.0
    )
    indices = [i for i, _ in result.path]
    expected = sorted({math.ceil(1.3**j) for j in range(20) if math.ceil(1.3**j) <= 25} | {25})
    assert indices == expected
    torch.testing.assert_close(result.path[-1][1], result.solution)


def test_relative_progress_rule_stops_where_martens_rule_first_holds():
    a = _spd(200, 1e6, 8)
    b = torch.randn(200, generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    eps = 5e-3
    result = conjugate_gradient(
        lambda v: a @ v, b, max_iter=200, progress_tol=eps, residual_tol=0.0
    )
    assert result.stop_reason == "relative_progress"
    values = result.values

    def holds(i: int) -> bool:
        k = max(10, math.ceil(0.1 * i))
        return i > k and values[i] < 0 and (values[i] - values[i - k]) / values[i] < k * eps

    n = result.iterations
    assert holds(n)
    assert not any(holds(i) for i in range(1, n))


def test_warm_start_at_the_solution_needs_no_iteration():
    a = _spd(10, 50.0, 10)
    b = torch.randn(10, generator=torch.Generator().manual_seed(11), dtype=DTYPE)
    exact = torch.linalg.solve(a, b)
    result = conjugate_gradient(lambda v: a @ v, b, x0=exact, residual_tol=1e-10)
    assert result.iterations == 0 and result.products == 1 and result.stop_reason == "residual"
    near = conjugate_gradient(
        lambda v: a @ v, b, x0=exact + 1e-3, residual_tol=1e-10, progress_tol=None
    )
    cold = conjugate_gradient(lambda v: a @ v, b, residual_tol=1e-10, progress_tol=None)
    torch.testing.assert_close(near.solution, exact)
    assert near.iterations <= cold.iterations


def test_negative_curvature_stops_with_the_current_iterate():
    a = torch.diag(torch.tensor([2.0, -1.0], dtype=DTYPE))
    b = torch.tensor([1.0, 1.0], dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b)
    assert result.stop_reason == "negative_curvature"


def test_initial_direction_gives_the_line_minimum_then_the_solution():
    a = _spd(12, 100.0, 12)
    b = torch.randn(12, generator=torch.Generator().manual_seed(13), dtype=DTYPE)
    d = torch.randn(12, generator=torch.Generator().manual_seed(14), dtype=DTYPE)
    one = conjugate_gradient(lambda v: a @ v, b, max_iter=1, initial_direction=d)
    torch.testing.assert_close(one.solution, (b @ d) / (d @ a @ d) * d)
    full = conjugate_gradient(
        lambda v: a @ v, b, max_iter=200, initial_direction=d, progress_tol=None, residual_tol=1e-12
    )
    torch.testing.assert_close(full.solution, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_tuples_and_curvature_operators_match_flat_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    data = (torch.randn(16, 3, dtype=DTYPE), torch.randint(0, 2, (16,)))
    op = CurvatureOperator.of(model, F.cross_entropy, data, curvature="gauss_newton", damping=0.1)
    dense = torch.stack([op.matvec_flat(e) for e in torch.eye(op.dimension, dtype=DTYPE)])
    b = torch.randn(op.dimension, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    flat = conjugate_gradient(op, b, progress_tol=None, residual_tol=1e-12, max_iter=500)
    torch.testing.assert_close(flat.solution, torch.linalg.solve(dense, b), rtol=1e-7, atol=1e-9)
    shaped = conjugate_gradient(
        op.matvec, op.unflatten(b), progress_tol=None, residual_tol=1e-12, max_iter=500
    )
    assert isinstance(shaped.solution, tuple)
    torch.testing.assert_close(op.flatten(shaped.solution), flat.solution)


def test_martens_preconditioner_is_the_damped_diagonal_to_a_power():
    s = torch.tensor([0.0, 1.0, 4.0], dtype=DTYPE)
    torch.testing.assert_close(
        martens_preconditioner(s, 1.0, 0.5),
        torch.tensor([1.0, math.sqrt(2.0), math.sqrt(5.0)], dtype=DTYPE),
    )
    parts = martens_preconditioner((s, s + 1), 0.0, 1.0)
    assert isinstance(parts, tuple)
    with pytest.raises(ValueError, match="exponent"):
        martens_preconditioner(s, 1.0, 1.5)
    with pytest.raises(ValueError, match="damping"):
        martens_preconditioner(s, -1.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_iter": -1}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"progress_tol": 0.0}, "progress_tol"),
        ({"residual_tol": -1.0}, "residual_tol"),
        ({"path": "some"}, "path"),
        ({"path_growth": 1.0}, "path_growth"),
        ({"preconditioner": torch.tensor([1.0, 0.0], dtype=DTYPE)}, "preconditioner"),
        ({"x0": torch.zeros(3, dtype=DTYPE)}, "x0"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, name):
    b = torch.ones(2, dtype=DTYPE)
    with pytest.raises(ValueError, match=name):
        conjugate_gradient(lambda v: v, b, **kwargs)
