"""Layer alignment of deep linear networks (Ji & Telgarsky, ICLR 2019).

A deep linear network computes ``y = W_L ⋯ W_2 W_1 x`` with ``W_i`` of shape
``(d_i, d_{i-1})`` (the ``weight`` of ``nn.Linear(d_{i-1}, d_i, bias=False)``). Write the top
singular triple of each layer as ``W_i ≈ σ_i u_i v_iᵀ``: ``u_i ∈ R^{d_i}`` (top *left* singular
vector, output side) and ``v_i ∈ R^{d_{i-1}}`` (top *right* singular vector, input side). Layer
``i + 1`` reads what layer ``i`` writes, so the vectors to compare are ``v_{i+1}`` and ``u_i``,
both in ``R^{d_i}``.

Ji & Telgarsky, "Gradient descent aligns the layers of deep linear networks" (ICLR 2019,
arXiv:1810.02032) prove, for linearly separable data, a strictly decreasing loss (exponential,
logistic) and gradient flow or gradient descent with small steps, that

1. the risk tends to 0 and every ``‖W_i‖_F → ∞``;
2. every layer becomes rank one in direction, ``W_i/‖W_i‖_F → u_i v_iᵀ``, equivalently
   ``‖W_i‖_2 / ‖W_i‖_F → 1``;
3. adjacent layers align, ``|⟨v_{i+1}, u_i⟩| → 1``;
4. for the logistic loss, the end-to-end predictor ``W_L ⋯ W_1`` (one output) converges in
   direction to the hard-margin SVM solution through the origin (the max-margin separator).

Consequently, with one output, ``v_1`` aligns with the max-margin direction as well (the product
is asymptotically ``(∏σ_i) u_L v_1ᵀ`` up to sign). Under gradient flow, the matrices
``W_{i+1}ᵀW_{i+1} − W_i W_iᵀ`` are exactly conserved (gradient descent conserves them up to
``O(η²)`` per step); :class:`LayerAlignment` reports them as a sanity check.

These are statements about limits: the ratios approach 1 only as the norms grow, i.e.
logarithmically slowly in the number of steps, and the part of the initialisation orthogonal to
the rank-one directions is never forgotten. A small initialisation makes the approach fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LayerAlignment", "layer_alignment", "max_margin_direction"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayerAlignment:
    """Alignment statistics of a deep linear network ``y = W_L ⋯ W_1 x``.

    Layers are numbered from the input: index 0 is ``W_1``.

    Attributes:
        spectral_norms: ``‖W_i‖_2 = σ_1(W_i)`` for each layer.
        frobenius_norms: ``‖W_i‖_F`` for each layer.
        ratios: ``‖W_i‖_2 / ‖W_i‖_F ∈ [1/√rank, 1]``, 1 exactly when ``W_i`` has rank one.
        adjacent: ``|⟨v_{i+1}, u_i⟩| ∈ [0, 1]`` for ``i = 1..L−1`` (top right singular vector of
            the next layer against the top left singular vector of this one).
        product: the end-to-end matrix ``W_L ⋯ W_1`` of shape ``(d_L, d_0)`` (detached).
        invariants: ``W_{i+1}ᵀW_{i+1} − W_i W_iᵀ`` (``d_i × d_i``) for ``i = 1..L−1``, constant
            under gradient flow on any loss of the product.
        direction_alignment: ``|⟨v_1, d⟩|/‖d‖`` for the given ``direction`` d, else ``None``.
        predictor_alignment: cosine between the end-to-end predictor and ``direction``: with one
            output the signed cosine ``⟨p, d⟩/(‖p‖‖d‖)`` of the row ``p = W_L ⋯ W_1`` (+1 means
            the same separator, same orientation); with several outputs ``|⟨v(P), d⟩|/‖d‖``
            for the top right singular vector ``v(P)`` of the product; ``None`` without
            ``direction``.
    """

    spectral_norms: tuple[float, ...]
    frobenius_norms: tuple[float, ...]
    ratios: tuple[float, ...]
    adjacent: tuple[float, ...]
    product: torch.Tensor
    invariants: tuple[torch.Tensor, ...]
    direction_alignment: float | None = None
    predictor_alignment: float | None = None

    @property
    def depth(self) -> int:
        """The number of layers ``L``."""
        return len(self.ratios)

    @property
    def min_ratio(self) -> float:
        """``min_i ‖W_i‖_2/‖W_i‖_F`` (the least aligned layer)."""
        return min(self.ratios)

    @property
    def min_adjacent(self) -> float:
        """``min_i |⟨v_{i+1}, u_i⟩|``, or 1.0 for a single layer."""
        return min(self.adjacent, default=1.0)


def _weights(model_or_weights: nn.Module | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(model_or_weights, nn.Module):
        linears = [m for m in model_or_weights.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("Invalid model: it has no nn.Linear layer")
        if any(m.bias is not None for m in linears):
            raise ValueError(
                "Invalid model: a deep linear network has bias-free nn.Linear layers; pass the "
                "weight matrices themselves to analyse layers with biases"
            )
        weights = [m.weight for m in linears]
    else:
        weights = list(model_or_weights)
        if not weights:
            raise ValueError("Invalid weights: expected at least one matrix")
    weights = [w.detach() for w in weights]
    for index, w in enumerate(weights):
        if w.ndim != 2:
            raise ValueError(f"Invalid weights: layer {index} has shape {tuple(w.shape)}, not 2-D")
        if index and w.shape[1] != weights[index - 1].shape[0]:
            raise ValueError(
                f"Invalid weights: layer {index} expects {w.shape[1]} inputs but layer "
                f"{index - 1} has {weights[index - 1].shape[0]} outputs (y = W_L ⋯ W_1 x)"
            )
    return weights


def _top_singular(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u[:, 0], s, vh[0]


def layer_alignment(
    model_or_weights: nn.Module | Sequence[torch.Tensor],
    direction: torch.Tensor | None = None,
) -> LayerAlignment:
    """Per-layer rank-one-ness and adjacent-layer alignment of a deep linear network.

    For ``y = W_L ⋯ W_1 x`` with top singular triples ``(σ_i, u_i, v_i)`` this reports
    ``‖W_i‖_2/‖W_i‖_F`` and ``|⟨v_{i+1}, u_i⟩|`` which, by Ji & Telgarsky (ICLR 2019), both tend
    to 1 under gradient descent on linearly separable data with the logistic or exponential
    loss; and, given a ``direction`` (e.g. :func:`max_margin_direction` of the data), how well
    the first layer's input direction ``v_1`` and the end-to-end predictor align with it.

    Args:
        model_or_weights: a module whose ``nn.Linear`` layers, in registration order, are
            ``W_1, …, W_L`` (bias-free; other modules are ignored, so this is the end-to-end
            map only for a purely linear network), or the matrices ``W_1, …, W_L`` themselves,
            ``W_i`` of shape ``(d_i, d_{i−1})``.
        direction: an input-space vector of length ``d_0`` to compare with (not necessarily
            normalised).

    Returns:
        A :class:`LayerAlignment`. Singular vectors are only defined up to sign, hence the
        absolute values; when ``σ_1 = σ_2`` they are not defined at all and the alignments are
        arbitrary.

    Raises:
        ValueError: if the layers do not chain, a module has biases or no ``nn.Linear``, or
            ``direction`` has the wrong shape or is zero.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 1, bias=False))
        >>> report = layer_alignment(net)
        >>> report.depth, report.ratios[-1]
        (2, 1.0)
    """
    weights = _weights(model_or_weights)
    spectral, frobenius, ratios = [], [], []
    lefts, rights = [], []
    for w in weights:
        u, s, v = _top_singular(w)
        norm_f = float(torch.linalg.vector_norm(s))
        spectral.append(float(s[0]))
        frobenius.append(norm_f)
        ratios.append(float(s[0]) / norm_f if norm_f > 0 else 0.0)
        lefts.append(u)
        rights.append(v)
    adjacent = tuple(
        min(1.0, abs(float(rights[i + 1] @ lefts[i]))) for i in range(len(weights) - 1)
    )
    product = weights[0]
    for w in weights[1:]:
        product = w @ product
    invariants = tuple(
        weights[i + 1].T @ weights[i + 1] - weights[i] @ weights[i].T
        for i in range(len(weights) - 1)
    )
    direction_alignment = predictor_alignment = None
    if direction is not None:
        d = direction.detach().to(dtype=weights[0].dtype, device=weights[0].device).reshape(-1)
        if d.numel() != weights[0].shape[1]:
            raise ValueError(
                f"Invalid direction: {d.numel()} entries for {weights[0].shape[1]} inputs"
            )
        norm_d = float(torch.linalg.vector_norm(d))
        if norm_d == 0.0:
            raise ValueError("Invalid direction: it is zero")
        d = d / norm_d
        direction_alignment = min(1.0, abs(float(rights[0] @ d)))
        if product.shape[0] == 1:
            row = product[0]
            norm_p = float(torch.linalg.vector_norm(row))
            predictor_alignment = float(row @ d) / norm_p if norm_p > 0 else 0.0
        else:
            predictor_alignment = min(1.0, abs(float(_top_singular(product)[2] @ d)))
    return LayerAlignment(
        spectral_norms=tuple(spectral),
        frobenius_norms=tuple(frobenius),
        ratios=tuple(ratios),
        adjacent=adjacent,
        product=product,
        invariants=invariants,
        direction_alignment=direction_alignment,
        predictor_alignment=predictor_alignment,
    )


def max_margin_direction(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The unit normal of the hard-margin SVM through the origin (no intercept).

    Solves ``min ½‖w‖² s.t. y_i ⟨w, x_i⟩ ≥ 1``, a least-distance program, exactly (in finitely
    many steps, float64) by the Lawson–Hanson reduction to non-negative least squares
    ("Solving Least Squares Problems", 1974, ch. 23): with ``z_i = y_i x_i``,
    ``E = [z_1 … z_n; 1 … 1]`` (``(d+1) × n``) and ``f = (0, …, 0, 1)``, solve
    ``min_{u ≥ 0} ‖E u − f‖`` by the Lawson–Hanson active-set method; the residual
    ``r = E u − f`` is non-zero exactly when the data are separable, and then
    ``w = −r_{1:d} / r_{d+1}``. This is the direction the logistic-loss predictor of a (deep)
    linear network converges to (Soudry et al., JMLR 2018; Ji & Telgarsky, ICLR 2019). Meant for
    experiment-sized data: each active-set step is a dense least-squares solve (about 0.01 s for
    n = 1000, d = 10; seconds for thousands of points in tens of dimensions).

    Args:
        inputs: ``(n, d)`` points.
        labels: ``(n,)`` labels in ``{−1, +1}``.

    Returns:
        ``w/‖w‖`` (float64, on the inputs' device).

    Raises:
        ValueError: on bad shapes or labels, or data that are not linearly separable by a
            hyperplane through the origin.

    Example:
        >>> x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [3.0, 0.5]])
        >>> direction = max_margin_direction(x, torch.tensor([1.0, -1.0, 1.0]))
        >>> torch.allclose(direction, torch.tensor([1.0, 0.0], dtype=torch.float64))
        True
    """
    if inputs.ndim != 2 or labels.shape != (inputs.shape[0],) or inputs.shape[0] == 0:
        raise ValueError("Invalid data: expected inputs (n, d) and labels (n,), n ≥ 1")
    y = labels.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.all((y == 1) | (y == -1))):
        raise ValueError("Invalid labels: expected values in {-1, +1}")
    z = y[:, None] * inputs.detach().to(device="cpu", dtype=torch.float64)
    n, dim = z.shape
    e = torch.cat([z.T, torch.ones(1, n, dtype=torch.float64)])
    f = torch.zeros(dim + 1, dtype=torch.float64)
    f[-1] = 1.0
    u = _nnls(e, f)
    r = e @ u - f
    scale = float(torch.linalg.vector_norm(e, dim=0).max())
    if float(r[-1]) >= -1e-10 * max(1.0, scale):
        raise ValueError("Invalid data: not linearly separable through the origin")
    w = -r[:dim] / r[-1]
    return (w / torch.linalg.vector_norm(w)).to(inputs.device)


def _nnls(e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``argmin_{u ≥ 0} ‖e u − f‖`` by the Lawson–Hanson active-set method (float64)."""
    n = e.shape[1]
    tol = 1e-12 * max(1.0, float(torch.linalg.matrix_norm(e, ord=1))) * max(n, e.shape[0])
    u = torch.zeros(n, dtype=e.dtype)
    passive = torch.zeros(n, dtype=torch.bool)
    for _ in range(3 * n + 10):
        gradient = e.T @ (f - e @ u)
        gradient[passive] = -torch.inf
        if bool(passive.all()) or float(gradient.max()) <= tol:
            return u
        passive[int(gradient.argmax())] = True
        while True:
            s = torch.zeros_like(u)
            index = passive.nonzero().squeeze(1)
            s[index] = torch.linalg.lstsq(e[:, index], f[:, None]).solution[:, 0]
            bad = passive & (s <= 0)
            if not bool(bad.any()):
                u = s
                break
            ratios = torch.full_like(u, torch.inf)
            ratios[bad] = u[bad] / (u[bad] - s[bad])
            blocking = int(ratios.argmin())
            u = u + float(ratios[blocking]) * (s - u)
            passive &= u > tol
            passive[blocking] = False  # it reached 0: leaving guarantees termination
            u[~passive] = 0.0
    raise RuntimeError("max_margin_direction: the active-set solver did not converge")
