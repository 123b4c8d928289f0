"""Layer alignment of deep linear networks (Ji & Telgarsky, ICLR 2019): ``layer_alignment`` and
``max_margin_direction``.

Oracles:

* hand-built matrices with known singular vectors: ratios ``‖W‖₂/‖W‖_F`` in closed form, and
  the adjacency convention ``|⟨v_{i+1}, u_i⟩|`` for ``y = W_L ⋯ W_1 x`` (a chain built so the
  transposed convention would give the opposite answer);
* invariance under an orthogonal change of basis between layers (same function, same
  statistics) and the end-to-end product against the network's outputs;
* the exact discrete identity for the gradient-flow invariants: one gradient step changes
  ``W_{i+1}ᵀW_{i+1} − W_iW_iᵀ`` by exactly ``η²(G_{i+1}ᵀG_{i+1} − G_iG_iᵀ)``;
* the hard-margin SVM without intercept from scipy's SLSQP on the primal (a different
  algorithm) and a hand-solved instance;
* the paper's experiment (logistic loss, separable data, gradient descent): every layer reaches
  ``‖W_i‖₂/‖W_i‖_F > 0.99``, adjacent layers align, and the end-to-end predictor aligns with
  the max-margin separator (Ji & Telgarsky's results for the logistic loss).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from torchvalley.landscape.theory.alignment import (
    LayerAlignment,
    layer_alignment,
    max_margin_direction,
)

DT = torch.float64
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deep_linear_alignment.py"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are small: on a loaded 2-core machine, OpenMP threads that wait for each
    other make every step cost a scheduler time slice (40× slower measured), so use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _orthonormal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=DT)
    )
    return q


def test_ratios_of_known_matrices() -> None:
    report = layer_alignment([torch.diag(torch.tensor([3.0, 4.0], dtype=DT))])
    assert report.ratios == pytest.approx((0.8,), rel=1e-15)
    assert report.spectral_norms == pytest.approx((4.0,))
    assert report.frobenius_norms == pytest.approx((5.0,))
    assert report.adjacent == () and report.invariants == () and report.min_adjacent == 1.0
    identity = layer_alignment([torch.eye(4, dtype=DT)])
    assert identity.ratios[0] == pytest.approx(0.5)  # 1/√rank, the least possible
    zero = layer_alignment([torch.zeros(2, 3, dtype=DT)])
    assert zero.ratios == (0.0,)


def test_adjacent_alignment_convention() -> None:
    """``W_1 = u_1 v_1ᵀ``, ``W_2 = u_2 v_2ᵀ``, ``u_1, v_1, u_2`` orthonormal. With ``v_2 = u_1``
    the layers are aligned (1), where the transposed pairing ``⟨u_2, v_1⟩`` would give 0; with
    ``v_2 = v_1`` they are not (0), where the pairing ``⟨v_2, v_1⟩`` would give 1."""
    e = torch.eye(3, dtype=DT)
    u1, v1, u2 = e[0], e[1], e[2]
    w1 = 2.0 * torch.outer(u1, v1)  # 3 × 3, reads v1, writes u1
    aligned = layer_alignment([w1, 5.0 * torch.outer(u2, u1)])
    assert aligned.ratios == pytest.approx((1.0, 1.0))
    assert aligned.adjacent == pytest.approx((1.0,))
    crossed = layer_alignment([w1, 5.0 * torch.outer(u2, v1)])
    assert crossed.adjacent == pytest.approx((0.0,), abs=1e-15)
    # a partial overlap: v_2 = cos φ u_1 + sin φ v_1
    phi = 0.3
    partial = layer_alignment([w1, torch.outer(u2, math.cos(phi) * u1 + math.sin(phi) * v1)])
    assert partial.adjacent[0] == pytest.approx(math.cos(phi), rel=1e-14)


def test_module_and_weights_agree_and_product_is_the_network() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(3, 5, bias=False), nn.Linear(5, 4, bias=False), nn.Linear(4, 2, bias=False)
    ).to(DT)
    from_module = layer_alignment(net)
    from_weights = layer_alignment([layer.weight for layer in net])
    assert from_module.ratios == from_weights.ratios
    assert from_module.adjacent == from_weights.adjacent
    assert from_module.depth == 3 and isinstance(from_module, LayerAlignment)
    x = torch.randn(7, 3, dtype=DT)
    assert torch.allclose(x @ from_module.product.T, net(x).detach(), atol=1e-14)
    assert from_module.min_ratio == min(from_module.ratios)
    assert all(0.0 <= a <= 1.0 for a in from_module.adjacent)


def test_invariant_under_change_of_basis_between_layers() -> None:
    """``(W_1, W_2, W_3) → (Q_1 W_1, Q_2 W_2 Q_1ᵀ, W_3 Q_2ᵀ)`` computes the same function; the
    singular values are unchanged and the singular vectors rotate together."""
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(s, generator=g, dtype=DT) for s in ((4, 3), (5, 4), (2, 5))]
    q1, q2 = _orthonormal(4, 2), _orthonormal(5, 3)
    rotated = [q1 @ w[0], q2 @ w[1] @ q1.T, w[2] @ q2.T]
    direction = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    a, b = layer_alignment(w, direction), layer_alignment(rotated, direction)
    assert b.ratios == pytest.approx(a.ratios, rel=1e-12)
    assert b.adjacent == pytest.approx(a.adjacent, rel=1e-10)
    assert torch.allclose(a.product, b.product, atol=1e-13)
    assert b.direction_alignment == pytest.approx(a.direction_alignment, rel=1e-10)
    assert b.predictor_alignment == pytest.approx(a.predictor_alignment, rel=1e-10)
    # invariants rotate: D_1 → Q_1 D_1 Q_1ᵀ
    assert torch.allclose(b.invariants[0], q1 @ a.invariants[0] @ q1.T, atol=1e-12)


def test_direction_alignments() -> None:
    e = torch.eye(3, dtype=DT)
    w1 = torch.outer(e[0], e[1]) + 0.1 * torch.outer(e[2], e[2])  # top right vector e₁
    w2 = torch.outer(torch.ones(1, dtype=DT), e[0])  # one output: the predictor is e₁ᵀ (+ …)
    report = layer_alignment([w1, w2], direction=torch.tensor([0.0, -3.0, 0.0], dtype=DT))
    assert report.direction_alignment == pytest.approx(1.0)  # up to sign
    assert report.predictor_alignment == pytest.approx(-1.0)  # signed: opposite orientation
    multi = layer_alignment([w1, torch.cat([w2, 2 * w2])], direction=e[1])
    assert multi.predictor_alignment == pytest.approx(1.0)
    assert layer_alignment([w1, w2]).direction_alignment is None


def test_invariants_change_by_eta_squared_terms() -> None:
    """One GD step on any loss of the product: ``ΔD_i = η²(G_{i+1}ᵀG_{i+1} − G_iG_iᵀ)``
    (the first-order terms cancel because ``W_{i+1}ᵀG_{i+1} = G_iW_iᵀ``)."""
    torch.manual_seed(4)
    net = nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in ((3, 6), (6, 5), (5, 1))])
    net = net.to(DT)
    x, y = torch.randn(10, 3, dtype=DT), torch.randn(10, 1, dtype=DT)
    before = layer_alignment(net).invariants
    loss = nn.functional.mse_loss(net(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    eta = 0.1
    with torch.no_grad():
        for p, grad in zip(net.parameters(), grads, strict=True):
            p -= eta * grad
    after = layer_alignment(net).invariants
    for i in range(2):
        expected = eta**2 * (grads[i + 1].T @ grads[i + 1] - grads[i] @ grads[i].T)
        assert torch.allclose(after[i] - before[i], expected, atol=1e-14)


def test_validation() -> None:
    with pytest.raises(ValueError, match="bias-free"):
        layer_alignment(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1, bias=False)))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        layer_alignment(nn.ReLU())
    with pytest.raises(ValueError, match="expects 4 inputs"):
        layer_alignment([torch.ones(3, 2), torch.ones(1, 4)])
    with pytest.raises(ValueError, match="not 2-D"):
        layer_alignment([torch.ones(3)])
    with pytest.raises(ValueError, match="at least one"):
        layer_alignment([])
    with pytest.raises(ValueError, match="entries"):
        layer_alignment([torch.ones(3, 2)], direction=torch.ones(3))
    with pytest.raises(ValueError, match="zero"):
        layer_alignment([torch.ones(3, 2)], direction=torch.zeros(2))


def _separable(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian points labelled by a random hyperplane through 0, pushed 0.5 off it."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(d, generator=g, dtype=DT)
    normal /= torch.linalg.vector_norm(normal)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.sign(x @ normal)
    return x + 0.5 * y[:, None] * normal, y


def _svm_slsqp(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``min ½‖w‖² s.t. y_i⟨w, x_i⟩ ≥ 1`` by scipy's SLSQP on the primal."""
    optimize = pytest.importorskip("scipy.optimize")
    z = (y[:, None] * x).numpy()
    result = optimize.minimize(
        lambda w: 0.5 * w @ w,
        z.mean(axis=0),
        jac=lambda w: w,
        constraints=[{"type": "ineq", "fun": lambda w: z @ w - 1, "jac": lambda w: z}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    assert result.success
    w = torch.from_numpy(result.x)
    return w / torch.linalg.vector_norm(w)


def test_max_margin_direction() -> None:
    # hand-solved: {y_i x_i} = {(1, 1), (1, −1), (3, 0.5)}; the closest point of their convex
    # hull to 0 is (1, 0), so the max-margin normal is e₁ (margin 1)
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [3.0, 0.5]], dtype=DT)
    direction = max_margin_direction(x, torch.tensor([1.0, -1.0, 1.0]))
    assert torch.allclose(direction, torch.tensor([1.0, 0.0], dtype=DT), atol=1e-14)
    for seed, (n, d) in enumerate(((20, 2), (40, 3), (200, 5))):
        x, y = _separable(n, d, seed)
        ours = max_margin_direction(x, y)
        assert torch.allclose(ours, _svm_slsqp(x, y), atol=1e-6)
        assert float(((y[:, None] * x) @ ours).min()) > 0
    with pytest.raises(ValueError, match="not linearly separable"):
        max_margin_direction(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="labels"):
        max_margin_direction(torch.ones(2, 2), torch.tensor([1.0, 0.0]))


def test_gradient_descent_aligns_the_layers() -> None:
    """Ji & Telgarsky's experiment, reduced: depth 3, width 10, 30 separable points in R³,
    logistic loss, full-batch GD (η = 0.2, 2000 steps), small initialisation (std 0.05/√fan-in)
    so that the rank-one part dominates within seconds. The limits are only approached
    logarithmically slowly; measured at the end: ratios ≥ 0.998, adjacency ≥ 0.99999,
    predictor cosine with the SVM 0.9989."""
    x, y = _separable(30, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    dims = (3, 10, 10, 1)
    net = nn.Sequential(*[nn.Linear(dims[i], dims[i + 1], bias=False, dtype=DT) for i in range(3)])
    with torch.no_grad():
        for layer in net:
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(0.05 * torch.randn(layer.weight.shape, generator=g, dtype=DT))
            layer.weight /= math.sqrt(fan_in)
    svm = _svm_slsqp(x, y)
    start = layer_alignment(net, svm)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    losses = []
    for _ in range(2000):
        optimizer.zero_grad()
        loss = nn.functional.softplus(-y * net(x).squeeze(1)).mean()  # logistic loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    end = layer_alignment(net, svm)
    assert max(start.ratios[:2]) < 0.9  # the hidden layers start far from rank one
    assert all(b <= a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 1e-3
    assert all(
        f1 > 5 * f0 for f0, f1 in zip(start.frobenius_norms, end.frobenius_norms, strict=True)
    )  # ‖W_i‖_F → ∞
    assert end.min_ratio > 0.99  # the criterion, every layer
    assert min(start.adjacent) < 0.9 and end.min_adjacent > 0.9999
    assert end.predictor_alignment > 0.99  # signed: the same separator, same orientation
    assert end.direction_alignment > 0.99  # v₁ ∥ the max-margin direction
    # our SVM solver agrees with scipy's on these data
    assert torch.allclose(max_margin_direction(x, y), svm, atol=1e-6)
    # the gradient-flow invariants barely move (O(η²) per step) while ‖W_i‖² grows
    for d0, d1, f1 in zip(start.invariants, end.invariants, end.frobenius_norms, strict=False):
        assert float(torch.linalg.matrix_norm(d1 - d0)) < 1e-3 * f1**2


def test_example_script_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("deep_linear_alignment_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "deep_linear_alignment.png").stat().st_size > 10_000
    last = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1000 |")
    )
    cells = [float(c) for c in last.strip("|").split("|")]
    assert min(cells[2:5]) > 0.99 and min(cells[5:7]) > 0.999  # ratios, adjacent alignments
