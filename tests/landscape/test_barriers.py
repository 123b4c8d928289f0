"""Oracle tests of path_barrier: closed-form parabolas of a quadratic loss and a brute force."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from torchvalley.landscape import linear_interpolation, path_barrier

DTYPE = torch.float64


class Quadratic(nn.Module):
    """``L(w) = ½ wᵀ H w`` whatever the input: the model *is* the loss."""

    def __init__(self, hessian: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("hessian", hessian, persistent=False)
        self.w = nn.Parameter(torch.zeros(hessian.shape[0], dtype=DTYPE))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.hessian @ self.w


def _identity_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs


def _quadratic_path(a: list[float], d: list[float]):
    """The interpolation curve from ``a`` to ``a + d`` for ``H = diag(1, −2, ½)``, 21 points.

    Along ``w_α = a + α d`` the loss is the parabola ``c + bα + qα²`` with ``c = ½ aᵀHa``,
    ``b = aᵀHd``, ``q = ½ dᵀHd``.
    """
    hessian = torch.diag(torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE))
    model = Quadratic(hessian)
    start = torch.tensor(a, dtype=DTYPE)
    direction = torch.tensor(d, dtype=DTYPE)
    result = linear_interpolation(
        model,
        {"w": start},
        {"w": start + direction},
        _identity_loss,
        (torch.zeros(1), torch.zeros(1)),
    )
    c = 0.5 * float(start @ hessian @ start)
    b = float(start @ hessian @ direction)
    q = 0.5 * float(direction @ hessian @ direction)
    return result, (c, b, q)


def test_concave_parabola_chord_barrier_rise_and_peak_are_the_closed_form():
    # q = ½ dᵀHd = −½ < 0 and b = 0.25: L(α) = 0.28125 + 0.25 α − 0.5 α², vertex α* = −b/(2q) = ¼.
    result, (c, b, q) = _quadratic_path([0.25, 0.0, 1.0], [1.0, 1.0, 0.0])
    alphas = result.alphas
    assert torch.allclose(result.losses, c + b * alphas + q * alphas**2, rtol=0, atol=1e-15)
    barrier = path_barrier(result)
    # L − chord = c + bα + qα² − (c + (b + q) α) = −q α (1 − α): largest at α = ½, value −q/4.
    assert barrier.chord_barrier == pytest.approx(-q / 4, abs=1e-14)
    assert barrier.chord_barrier_alpha == pytest.approx(0.5)
    vertex = -b / (2 * q)
    peak = c + b * vertex + q * vertex**2
    # The largest forward rise of a concave parabola is from α = 0 up to its vertex.
    assert barrier.rise == pytest.approx(peak - c, abs=1e-14)
    assert (barrier.rise_from, barrier.rise_to) == (0.0, pytest.approx(vertex))
    assert barrier.peak_above_start == pytest.approx(peak - c, abs=1e-14)
    assert barrier.peak_alpha == pytest.approx(vertex)
    assert not barrier.monotonic
    assert barrier.start_loss == pytest.approx(c) and barrier.end_loss == pytest.approx(c + b + q)
    # A tolerance above the rise calls the same path monotonic.
    assert path_barrier(result, tol=barrier.rise + 1e-9).monotonic


def test_convex_parabola_has_no_chord_barrier_and_rises_after_its_vertex():
    # q = ½, b = −½: L(α) = 0.375 − 0.5 α + 0.5 α², vertex ½, L(0) = L(1).
    result, (c, b, q) = _quadratic_path([-0.5, 0.0, 1.0], [1.0, 0.0, 0.0])
    barrier = path_barrier(result)
    assert barrier.chord_barrier == pytest.approx(0.0, abs=1e-15)  # convex: under its chord
    vertex = -b / (2 * q)
    assert barrier.rise == pytest.approx((c + b + q) - (c + b * vertex + q * vertex**2), abs=1e-14)
    assert barrier.rise_from == pytest.approx(vertex) and barrier.rise_to == 1.0
    assert not barrier.monotonic


def test_a_decreasing_path_is_monotonic_with_zero_rise():
    # Vertex of the convex parabola beyond α = 1: the sampled curve strictly decreases.
    result, _ = _quadratic_path([-2.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    assert bool((result.losses[1:] < result.losses[:-1]).all())
    barrier = path_barrier(result)
    assert barrier.rise == 0.0 and barrier.monotonic
    assert barrier.peak_above_start == 0.0 and barrier.peak_alpha == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_random_curves_match_a_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    losses = torch.randn(13, generator=generator, dtype=DTYPE).cumsum(0)
    alphas = torch.rand(13, generator=generator, dtype=DTYPE).cumsum(0) - 0.3  # uneven grid
    barrier = path_barrier(losses.tolist(), alphas)
    values, grid = losses.tolist(), alphas.tolist()
    rise = max(
        values[j] - values[i] for i, j in itertools.combinations_with_replacement(range(13), 2)
    )
    span = grid[-1] - grid[0]
    chord = max(
        v - (values[0] + (g - grid[0]) / span * (values[-1] - values[0]))
        for g, v in zip(grid, values, strict=True)
    )
    assert barrier.rise == pytest.approx(rise, abs=1e-12)
    assert barrier.chord_barrier == pytest.approx(max(chord, 0.0), abs=1e-12)
    assert barrier.peak_above_start == pytest.approx(max(values) - values[0], abs=1e-12)
    assert barrier.monotonic == (rise <= 0.0)


def test_default_grid_is_evenly_spaced_on_the_unit_interval():
    barrier = path_barrier(torch.tensor([2.0, 2.5, 1.0]))
    assert (barrier.chord_barrier, barrier.rise, barrier.chord_barrier_alpha) == (1.0, 0.5, 0.5)


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (([1.0],), {}, "losses"),
        (([1.0, float("nan")],), {}, "losses"),
        ((["a", "b"],), {}, "losses"),
        (([1.0, 2.0], [0.0, 0.5, 1.0]), {}, "alphas"),
        (([1.0, 2.0], [1.0, 0.0]), {}, "alphas"),
        (([1.0, 2.0],), {"tol": -1.0}, "tol"),
        (([1.0, 2.0],), {"tol": float("inf")}, "tol"),
        (([1.0, 2.0],), {"tol": True}, "tol"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        path_barrier(*args, **kwargs)
