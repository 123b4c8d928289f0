"""Symmetric positive definite matrices SPD(n) = {X = Xᵀ ∈ ℝ^{n×n} : X ≻ 0}, three metrics.

The tangent space at every X is Sym(n); ``proju(X, U) = sym(U) = (U + Uᵀ)/2``. With the
eigendecomposition X = Q diag(w) Qᵀ and U' = QᵀUQ (the tangent vector in X's eigenbasis):

``metric="affine"`` (affine-invariant, Pennec, Fillard & Ayache 2006; the default):

* ⟨U, V⟩_X = tr(X⁻¹UX⁻¹V); Riemannian gradient X sym(G) X, its inverse X⁻¹RX⁻¹;
* exp_X(U) = X^{½} expm(X^{-½} U X^{-½}) X^{½};  log_X(Y) = X^{½} logm(X^{-½} Y X^{-½}) X^{½};
* d(X, Y) = ‖logm(X^{-½} Y X^{-½})‖_F = sqrt(Σ log² λᵢ) with λ the eigenvalues of L⁻¹YL⁻ᵀ
  (L the Cholesky factor of X: the same spectrum, without a matrix square root);
* retraction R_X(U) = X + U + ½ U X⁻¹ U = ½X + ½(X + U)X⁻¹(X + U) (second order, always SPD,
  no eigendecomposition; the one geoopt uses);
* parallel transport P(V) = E V Eᵀ with E = X^{½} (X^{-½} Y X^{-½})^{½} X^{-½} = (YX⁻¹)^{½}
  (an isometry).

``metric="log-euclidean"`` (Arsigny et al. 2007): the metric pulled back by logm, a flat space.
With the divided differences Lᵢⱼ = (log wᵢ − log wⱼ)/(wᵢ − wⱼ) (1/wᵢ on the diagonal;
computed as artanh(r)/r / m, m = (wᵢ + wⱼ)/2, r = (wᵢ − wⱼ)/(2m), without cancellation), the
differential of logm is Dlog_X[U] = Q (L ∘ U') Qᵀ (Daleckiĭ–Kreĭn), and

* ⟨U, V⟩_X = ⟨L ∘ U', L ∘ V'⟩_F; Riemannian gradient Q (G'/L²) Qᵀ, its inverse Q (L² ∘ R') Qᵀ;
* exp_X(U) = expm(logm X + Dlog_X[U]); log_X(Y) = Dexp_{logm X}[logm Y − logm X] (the divided
  differences of exp, eᵐ sinh(d)/d); d(X, Y) = ‖logm X − logm Y‖_F; retraction = exp;
* transport Dexp_{logm Y} ∘ Dlog_X (the parallel transport of the flat space: an isometry).

``metric="bures-wasserstein"`` (Bhatia, Jain & Lim 2019; Malagò, Montrucchio & Pistone 2018):

* ⟨U, V⟩_X = ½ tr(ℒ_X[U] V), ℒ_X[U] solving Xℒ + ℒX = U, i.e. ½ Σ U'ᵢⱼV'ᵢⱼ/(wᵢ + wⱼ);
  Riemannian gradient 2(X G + G X) (G = sym of the Euclidean gradient), its inverse ½ℒ_X[R];
* exp_X(U) = X + U + ℒ X ℒ = (I + ℒ) X (I + ℒ) (valid while I + ℒ ≻ 0);
  log_X(Y) = (XY)^{½} + (YX)^{½} − 2X; d²(X, Y) = tr X + tr Y − 2 tr (X^{½} Y X^{½})^{½},
  computed as min over orthogonal W of ‖X^{½} − Y^{½}W‖_F (no cancellation near X = Y);
* the space is geodesically incomplete: the geodesic t ↦ (I + tℒ) X (I + tℒ) reaches the
  singular boundary of the cone at t = 1/|λ_min(ℒ)| when ℒ has a negative eigenvalue, so exp_X
  is defined on {U : I + ℒ ≻ 0} only. Beyond it the formula passes through the boundary and
  comes back *reflected and inflated* (for X = I, U = −10I: ℒ = −5I and (I + ℒ)²X = 16I, a step
  towards 0 that multiplies X by 16);
* retraction ``projx(exp_X(αU))`` with the fraction-to-boundary factor
  α = min(1, ½ / max(0, −λ_min(ℒ))), so I + αℒ ⪰ ½I: a step may at most halve a direction's
  square root (shrink an eigenvalue about fourfold), and never crosses the boundary. α = 1 for
  every step inside half the way to the boundary, so the retraction is exp there (first and
  second order at 0). Without the factor, RSGD with momentum 0.9 at lr 1e-2 on a random
  Σ d(X, T)² + 0.1 Σ sin(3X) overshot the boundary within 10 steps (λ_min(ℒ) ≈ −20), each
  reflection inflated the point, and the entries reached 1e32 until float32 ``eigh`` failed;
* transport ``sym(V)`` (all tangent spaces are Sym(n): a projection, not an isometry).

**Numerics.** Every matrix function goes through ``torch.linalg.eigh`` of a symmetrized matrix
(16-bit inputs are computed in float32). ``projx`` symmetrizes and clamps the spectrum into
[λ_max / ``max_condition``, ∞): the nearest SPD matrix in the Frobenius norm (Higham 1988) with a
floor that keeps the condition number at most ``max_condition``. Points already inside are
returned as ``sym(X)`` unchanged, so ``projx`` is idempotent. Conditioning limits (default
``max_condition``): eigh returns the eigenvalues with an absolute error of about ε‖X‖, so the
smallest eigenvalue of X, λ_max/κ, has a relative error of about κε. The defaults, κ ≤ 1e4 in
float32 (ε = 1.2e-7: about 1e-3 relative error on λ_min, hence on the affine-invariant
distance's largest log-term) and κ ≤ 1e10 in float64 (about 2e-6), keep every log/sqrt of the
spectrum accurate to those levels; ``tests/manifolds/test_new_manifolds.py`` measures the
exp/log round trip against κ. Points beyond the limit are accepted by ``check_point`` (they are
SPD) but ``projx`` lifts their small eigenvalues. Store SPD parameters in float64 when the
spectra are wide. Bures–Wasserstein only: the singular boundary is at finite distance (d(X, 0)
= sqrt(tr X)), and the Riemannian gradient 2(XG + GX) has components of size ~wᵢ|G| along an
eigenvalue wᵢ, so an iterate whose objective pulls an eigenvalue towards 0 reaches the floor
λ_max/``max_condition`` (each retraction step may shrink it about fourfold) and leaves it only
slowly; the affine-invariant and log-Euclidean metrics put the boundary at infinite distance and
do not have this limit (docs/results/manifolds.md: float64 RSGD with momentum sat at condition
number 1e10 on the drift benchmark, float32 and RAdam stayed below 25).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import LOW_PRECISION, Draw, Manifold, _violation_reason

__all__ = ["SymmetricPositiveDefinite", "solve", "sym", "sym_funcm"]

_METRICS = ("affine", "log-euclidean", "bures-wasserstein")
_DEFAULT_CONDITION = {torch.float64: 1e10, torch.float32: 1e4}
# Bures–Wasserstein retraction: a step goes at most this fraction of the way to the boundary.
_BOUNDARY_FRACTION = 0.5


def sym(x: Tensor) -> Tensor:
    """(X + Xᵀ)/2 over the last two dimensions."""
    return (x + x.mT) / 2


def _work(x: Tensor) -> Tensor:
    return x.float() if x.dtype in LOW_PRECISION else x


def _eigh(x: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of sym(x), in float32 for 16-bit x."""
    w, q = torch.linalg.eigh(sym(_work(x)))
    return w, q


def _recompose(q: Tensor, w: Tensor) -> Tensor:
    """Q diag(w) Qᵀ, symmetrized against rounding."""
    return sym((q * w.unsqueeze(-2)) @ q.mT)


def sym_funcm(x: Tensor, fn: Any) -> Tensor:
    """f(X) = Q f(w) Qᵀ for symmetric X (``fn`` acts on the eigenvalues)."""
    w, q = _eigh(x)
    return _recompose(q, fn(w)).to(x.dtype)


def _atanhc(r: Tensor) -> Tensor:
    """artanh(r)/r, smooth at 0 (Taylor 1 + r²/3 + r⁴/5 below |r| = 1e-3)."""
    small = r.abs() < 1e-3
    safe = torch.where(small, torch.full_like(r, 0.5), r)
    r2 = r * r
    return torch.where(small, 1 + r2 / 3 + r2 * r2 / 5, torch.atanh(safe) / safe)


def _sinhc(d: Tensor) -> Tensor:
    """sinh(d)/d, smooth at 0."""
    small = d.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(d), d)
    d2 = d * d
    return torch.where(small, 1 + d2 / 6 + d2 * d2 / 120, torch.sinh(safe) / safe)


def _log_divided(w: Tensor) -> Tensor:
    """Lᵢⱼ = (log wᵢ − log wⱼ)/(wᵢ − wⱼ) (1/wᵢ on the diagonal), without cancellation."""
    a, b = w.unsqueeze(-1), w.unsqueeze(-2)
    m = (a + b) / 2
    return _atanhc((a - b) / (2 * m)) / m


def _exp_divided(a: Tensor) -> Tensor:
    """Eᵢⱼ = (e^{aᵢ} − e^{aⱼ})/(aᵢ − aⱼ) (e^{aᵢ} on the diagonal) = e^m sinh(d)/d."""
    x, y = a.unsqueeze(-1), a.unsqueeze(-2)
    return torch.exp((x + y) / 2) * _sinhc((x - y) / 2)


def solve(a: Tensor, b: Tensor) -> Tensor:
    """A⁻¹B for matrices with broadcast batch dimensions (``torch.linalg.solve`` would read a
    B with one dimension fewer than A as a batch of vectors)."""
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return torch.linalg.solve(a.expand(*batch, *a.shape[-2:]), b.expand(*batch, *b.shape[-2:]))


def _in_basis(q: Tensor, u: Tensor) -> Tensor:
    return q.mT @ u @ q


def _from_basis(q: Tensor, u: Tensor) -> Tensor:
    return sym(q @ u @ q.mT)


class SymmetricPositiveDefinite(Manifold):
    """SPD matrices over the last two dimensions (see the module docstring).

    Args:
        metric: ``"affine"`` (affine-invariant, default), ``"log-euclidean"`` or
            ``"bures-wasserstein"``.
        max_condition: the largest condition number ``projx`` keeps (its eigenvalue floor is
            λ_max / max_condition); default 1e4 for float32 (and 16-bit) points, 1e10 for float64.
    """

    ndim = 2
    violation_name = "max of |X − Xᵀ| / max|X| and 1 where X is not positive definite"

    def __init__(self, metric: str = "affine", max_condition: float | None = None) -> None:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        if max_condition is not None:
            mc = float(max_condition)
            if not (math.isfinite(mc) and mc > 1):
                raise ValueError(f"max_condition must be a finite float > 1, got {max_condition!r}")
            max_condition = mc
        self.metric = metric
        self.max_condition = max_condition
        self.transp_is_isometry = metric != "bures-wasserstein"
        self.retr_is_expmap = metric == "log-euclidean"

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("metric", self.metric), ("max_condition", self.max_condition))

    def condition_limit(self, dtype: torch.dtype) -> float:
        """The condition number ``projx`` keeps for points of ``dtype``."""
        if self.max_condition is not None:
            return self.max_condition
        return _DEFAULT_CONDITION.get(dtype, 1e4)

    # ---------------------------------------------------------------- helpers
    def _floor(self, w: Tensor, dtype: torch.dtype) -> Tensor:
        tiny = torch.finfo(w.dtype).tiny
        top = w[..., -1:].clamp_min(tiny)
        return (top / self.condition_limit(dtype)).clamp_min(tiny)

    def _sqrt_and_inv_sqrt(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w, q = _eigh(x)
        s = w.clamp_min(torch.finfo(w.dtype).tiny).sqrt()
        return _recompose(q, s), _recompose(q, 1 / s)

    def _bures_exp(self, x: Tensor, u: Tensor, fraction: float | None = None) -> Tensor:
        """(I + αℒ) X (I + αℒ) with ℒ solving Xℒ + ℒX = U; α = 1, or with ``fraction`` the
        largest α ≤ 1 with I + αℒ ⪰ (1 − fraction) I (the step stops that fraction of the way
        to the singular boundary, per matrix)."""
        w, q = _eigh(x)
        ellb = _in_basis(q, _work(u)) / (w.unsqueeze(-1) + w.unsqueeze(-2))
        if fraction is not None:
            # ℒ's spectrum is that of its matrix in X's eigenbasis (an orthogonal similarity).
            low = torch.linalg.eigvalsh(sym(ellb))[..., :1]
            alpha = (fraction / (-low).clamp_min(fraction)).unsqueeze(-1)
            ellb = ellb * alpha
        else:
            alpha = None
        ell = _from_basis(q, ellb)
        xw = _work(x)
        # X + αU + (αℒ) X (αℒ) = (I + αℒ) X (I + αℒ), as αU = X(αℒ) + (αℒ)X.
        step = _work(u) if alpha is None else _work(u) * alpha
        return sym(xw + step + ell @ xw @ ell).to(x.dtype)

    # ---------------------------------------------------------------- interface
    def projx(self, x: Tensor) -> Tensor:
        """sym(X) with its spectrum clamped to [λ_max / max_condition, ∞) (unchanged inside)."""
        s = sym(x)
        w, q = _eigh(s)
        floor = self._floor(w, x.dtype)
        inside = (w >= floor).all(dim=-1, keepdim=True).unsqueeze(-1)
        clamped = _recompose(q, torch.maximum(w, floor)).to(x.dtype)
        return torch.where(inside, s, clamped)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """sym(U): the tangent space is Sym(n)."""
        del x
        return sym(u)

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """X sym(G) X (affine), Q(G'/L²)Qᵀ (log-Euclidean), 2(XG + GX) (Bures–Wasserstein)."""
        g = sym(g)
        if self.metric == "affine":
            return sym(x @ g @ x)
        if self.metric == "bures-wasserstein":
            return sym(2 * (x @ g + g @ x))
        w, q = _eigh(x)
        lam = _log_divided(w)
        return _from_basis(q, _in_basis(q, _work(g)) / lam.square()).to(g.dtype)

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """The inverse of :meth:`egrad2rgrad` on Sym(n) (metric lowering)."""
        if self.metric == "affine":
            return sym(solve(x, solve(x, r).mT))
        w, q = _eigh(x)
        rb = _in_basis(q, _work(r))
        if self.metric == "bures-wasserstein":
            out = rb / (2 * (w.unsqueeze(-1) + w.unsqueeze(-2)))
        else:
            out = rb * _log_divided(w).square()
        return _from_basis(q, out).to(r.dtype)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """The metric ⟨U, V⟩_X of the chosen metric, one value per matrix."""
        if v is None:
            v = u
        if self.metric == "affine":
            a = solve(x, u)
            b = solve(x, v)
            return self._reduce(a * b.mT, keepdim)
        w, q = _eigh(x)
        ub, vb = _in_basis(q, _work(u)), _in_basis(q, _work(v))
        if self.metric == "bures-wasserstein":
            out = self._reduce(ub * vb / (w.unsqueeze(-1) + w.unsqueeze(-2)), keepdim) / 2
        else:
            lam = _log_divided(w).square()
            out = self._reduce(lam * ub * vb, keepdim)
        return out.to(torch.promote_types(u.dtype, v.dtype))

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """X + U + ½UX⁻¹U (affine), exp (log-Euclidean), projx(exp_X(αU)) with the
        fraction-to-boundary factor α (Bures–Wasserstein, see the module docstring)."""
        if self.metric == "affine":
            return sym(x + u + 0.5 * u @ solve(x, u))
        if self.metric == "log-euclidean":
            return self.expmap(x, u)
        return self.projx(self._bures_exp(x, u, fraction=_BOUNDARY_FRACTION))

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """The exponential map of the chosen metric."""
        if self.metric == "affine":
            half, inv_half = self._sqrt_and_inv_sqrt(x)
            mid = sym_funcm(inv_half @ _work(u) @ inv_half, torch.exp)
            return sym(half @ mid @ half).to(x.dtype)
        if self.metric == "bures-wasserstein":
            return self._bures_exp(x, u)
        w, q = _eigh(x)
        ub = _in_basis(q, _work(u))
        logx = _from_basis(q, torch.diag_embed(w.log()))
        step = _from_basis(q, _log_divided(w) * ub)
        return sym_funcm(logx + step, torch.exp).to(x.dtype)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """The logarithmic map of the chosen metric."""
        if self.metric == "affine":
            half, inv_half = self._sqrt_and_inv_sqrt(x)
            mid = sym_funcm(inv_half @ _work(y) @ inv_half, torch.log)
            return sym(half @ mid @ half).to(x.dtype)
        if self.metric == "bures-wasserstein":
            half, inv_half = self._sqrt_and_inv_sqrt(x)
            root = sym_funcm(half @ _work(y) @ half, lambda w: w.clamp_min(0).sqrt())
            m = half @ root @ inv_half
            return sym(m + m.mT - 2 * _work(x)).to(x.dtype)
        w, q = _eigh(x)
        diff = sym_funcm(y, torch.log) - _from_basis(q, torch.diag_embed(w.log()))
        out = _from_basis(q, _exp_divided(w.log()) * _in_basis(q, _work(diff)))
        return out.to(x.dtype)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """The geodesic distance of the chosen metric."""
        if self.metric == "affine":
            chol = torch.linalg.cholesky(sym(_work(x)))
            a = torch.linalg.solve_triangular(chol, _work(y), upper=False)
            b = torch.linalg.solve_triangular(chol, a.mT, upper=False)
            lam = torch.linalg.eigvalsh(sym(b))
            d = lam.clamp_min(torch.finfo(lam.dtype).tiny).log().square().sum(-1).sqrt()
        elif self.metric == "log-euclidean":
            diff = sym_funcm(x, torch.log) - sym_funcm(y, torch.log)
            d = torch.linalg.matrix_norm(_work(diff))
        else:
            # min over orthogonal W of ‖X^½ − Y^½W‖_F (the optimal W is the polar factor Q Pᵀ
            # of X^½Y^½ = PΣQᵀ): no cancellation near x == y, unlike tr X + tr Y − 2 tr(·)^½.
            xh = sym_funcm(x, lambda w: w.clamp_min(0).sqrt())
            yh = sym_funcm(y, lambda w: w.clamp_min(0).sqrt())
            p, _, qt = torch.linalg.svd(xh @ yh)
            d = torch.linalg.matrix_norm(xh - yh @ qt.mT @ p.mT)
        d = d.to(torch.promote_types(x.dtype, y.dtype))
        return d[..., None, None] if keepdim else d

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport (affine, log-Euclidean) or sym(V) (Bures–Wasserstein)."""
        if self.metric == "bures-wasserstein":
            return sym(v)
        if self.metric == "affine":
            half, inv_half = self._sqrt_and_inv_sqrt(x)
            s = sym_funcm(inv_half @ _work(y) @ inv_half, lambda w: w.clamp_min(0).sqrt())
            e = half @ s @ inv_half
            return sym(e @ _work(v) @ e.mT).to(v.dtype)
        wx, qx = _eigh(x)
        wy, qy = _eigh(y)
        dlog = _from_basis(qx, _log_divided(wx) * _in_basis(qx, _work(v)))
        out = _from_basis(qy, _exp_divided(wy.log()) * _in_basis(qy, dlog))
        return out.to(v.dtype)

    def _origin(self, zeros: Tensor) -> Tensor:
        """The identity matrix."""
        n = zeros.shape[-1]
        eye = torch.eye(n, dtype=zeros.dtype, device=zeros.device)
        return zeros + eye

    def violation(self, x: Tensor) -> Tensor:
        """max |X − Xᵀ| / max |X|, or 1 where a Cholesky factorization of sym(X) fails."""
        xw = _work(x)
        scale = xw.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(xw.dtype).tiny)
        asym = (xw - xw.mT).abs().amax(dim=(-2, -1)) / scale
        failed = torch.linalg.cholesky_ex(sym(xw)).info > 0
        return torch.where(failed, torch.ones_like(asym), asym).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 0.5) -> Tensor:
        """expm of a symmetric Gaussian matrix with entries of standard deviation ``std``."""
        return sym_funcm(std * sym(draw.randn(shape)), torch.exp)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 1:
            return False, f"SPD needs square matrices (..., n, n), got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        xw = _work(x)
        asym = float((xw - xw.mT).abs().max())
        bound = atol + rtol * float(xw.abs().max())
        if asym > bound:
            return False, _violation_reason("max |X − Xᵀ|", asym, bound)
        low = float(torch.linalg.eigvalsh(sym(xw)).min())
        if not low > 0:
            return False, f"the smallest eigenvalue is {low:.3e}: X must be positive definite"
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        err = float((u - u.mT).abs().max())
        bound = atol + rtol * float(u.abs().max())
        if err > bound:
            return False, _violation_reason("max |U − Uᵀ|", err, bound)
        return True, None
