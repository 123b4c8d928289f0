"""The κ-stereographic model: constant curvature κ of either sign over the last dimension.

Bachmann, Bécigneul & Ganea, "Constant Curvature Graph Convolutional Networks" (ICML 2020);
Ungar's gyrovector spaces. For κ < 0 the points fill the ball ‖x‖ < 1/√−κ (the Poincaré ball of
curvature κ); for κ > 0 all of ℝⁿ, the stereographic projection of the sphere of radius 1/√κ
from its south pole (the pole itself is at infinity); κ = 0 is ℝⁿ with the metric 4‖·‖².
With tan_κ(t) = tan(√κ t)/√κ (κ > 0), tanh(√−κ t)/√−κ (κ < 0), t (κ = 0), artan_κ its inverse,
arsin_κ likewise, and λ_x = 2/(1 + κ‖x‖²):

* ⟨u, v⟩_x = λ_x² ⟨u, v⟩; Riemannian gradient g/λ_x², its inverse λ_x² r; ``proju`` = identity;
* Möbius addition x ⊕ y = ((1 − 2κ⟨x,y⟩ − κ‖y‖²) x + (1 + κ‖x‖²) y) /
  (1 − 2κ⟨x,y⟩ + κ²‖x‖²‖y‖²); scalar multiplication r ⊗ x = tan_κ(r artan_κ‖x‖) x/‖x‖;
  matrix–vector M ⊗ x = tan_κ(‖Mx‖/‖x‖ · artan_κ‖x‖) Mx/‖Mx‖;
* exp_x(u) = x ⊕ tan_κ(λ_x‖u‖/2) u/‖u‖; log_x(y) = (2/λ_x) artan_κ‖−x ⊕ y‖ (−x ⊕ y)/‖−x ⊕ y‖;
  d(x, y) = 2 artan_κ‖−x ⊕ y‖;
* parallel transport (λ_x/λ_y) gyr[y, −x] v (an isometry);
* distance to the gyroplane {z : ⟨−p ⊕ z, a⟩ = 0} (hyperbolic multiclass logistic regression,
  Ganea et al. 2018): arsin_κ(2|⟨−p ⊕ x, a⟩| / ((1 + κ‖−p ⊕ x‖²)‖a‖)).

``retr(x, u) = projx(x + u)`` (first order, as geoopt's ``Stereographic``) with ``exact=False``,
the exponential map with ``exact=True`` (geoopt's ``StereographicExact``). The default
``exact=None`` takes the exponential map for a fixed κ > 0 and x + u otherwise (κ ≤ 0, or a
learnable κ, whose sign may change). For κ > 0 the first-order retraction fails near the pole at
infinity: there λ_x ≈ 2/(κ‖x‖²) is tiny, a step x + u of modest Riemannian length is huge in
coordinates, and a transported momentum (whose coordinates grow like 1/λ) overshoots to infinity,
whereas exp follows the great circle through the pole. In the drift benchmark
(``benchmarks/new_manifolds.py``, κ = 1, 100 points in ℝ⁵) the first-order retraction reached a
non-finite point within 100 steps under RSGD with momentum 0.9 (float32 and float64) and RAdam
(float32), at lr 1e-2; the exponential map ran 10 000 steps (geoopt's default, the first-order
one, is a deliberate difference). ``projx`` keeps
κ < 0 points at norm at most (1 − eps)/√−κ with the dtype's eps of
:func:`~torchvalley.manifolds.boundary_eps` (as :class:`~torchvalley.manifolds.PoincareBall`);
for κ ≥ 0 every point of ℝⁿ is on the manifold. At κ = −c every operation equals
``PoincareBall(c)``'s; at κ > 0 the inverse stereographic projection σ (:meth:`to_sphere`) is an
isometry onto the sphere of radius 1/√κ (both tested).

**A curvature that passes through 0.** κ may be a float or a learnable :class:`Kappa` (κ is the
raw parameter itself, so a gradient step can change its sign). For a learnable κ the functions
tan_κ, artan_κ and arsin_κ switch to their Taylor series in κt² where |κ|t² < 1e-4
(tan_κ(t) = t + κt³/3 + 2κ²t⁵/15 + 17κ³t⁷/315, artan_κ(y) = y − κy³/3 + κ²y⁵/5 − κ³y⁷/7,
arsin_κ(y) = y + κy³/6 + 3κ²y⁵/40 + 5κ³y⁷/112: truncation below 1e-15 relative there), so the
values and their derivatives in κ are smooth at κ = 0 (as geoopt does, with a wider band: geoopt
switches only within 1e-8 of 0). A float κ uses the closed forms directly (κ = 0: the Euclidean
forms).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from torchvalley.manifolds.base import Draw, Manifold
from torchvalley.manifolds.hyperbolic import PoincareBall, boundary_eps

__all__ = ["Kappa", "SphereProjection", "Stereographic"]

_MIN_NORM = 1e-15
_TAYLOR = 1e-4


def _finite(value: float, name: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    return v


class Kappa(nn.Module):
    """A learnable curvature κ ∈ ℝ (either sign) for :class:`Stereographic`.

    κ is the ``raw`` parameter itself (float64 by default): an optimizer step may move it through
    0, where the model's operations stay smooth (Taylor expansions, see the module docstring).

    Args:
        init: the initial κ.
        dtype: the floating dtype of ``raw``.
        device: its device.
    """

    raw: nn.Parameter

    def __init__(
        self,
        init: float = -1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        init = _finite(init, "init")
        self.raw = nn.Parameter(torch.tensor(init, dtype=dtype, device=device))

    def value(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """κ as a 0-d tensor (differentiable), cast to ``dtype``/``device`` if given."""
        k = self.raw
        if dtype is not None or device is not None:
            k = k.to(dtype=dtype or k.dtype, device=device)
        return k

    def forward(self, dtype: torch.dtype | None = None) -> Tensor:
        """Same as :meth:`value`."""
        return self.value(dtype)

    def extra_repr(self) -> str:
        """The current κ."""
        return f"k={float(self.raw.detach()):.6g}"


# ------------------------------------------------------------------ κ-trigonometry
def _series(t: Tensor, k: Tensor, coefs: tuple[float, ...]) -> Tensor:
    z = k * t * t
    acc = torch.full_like(z, coefs[-1])
    for c in reversed(coefs[:-1]):
        acc = acc * z + c
    return t * acc


def _sqrt_abs(k: Tensor) -> Tensor:
    return torch.where(k.abs() > 0, k.abs(), torch.ones_like(k)).sqrt()


def tan_k(t: Tensor, k: float | Tensor) -> Tensor:
    """tan_κ(t): tan(√κ t)/√κ for κ > 0, tanh(√−κ t)/√−κ for κ < 0, t at κ = 0."""
    if not isinstance(k, Tensor):
        if k == 0:
            return t
        s = math.sqrt(abs(k))
        if k > 0:
            return torch.tan(s * t) / s
        return torch.tanh((s * t).clamp(-15, 15)) / s
    s = _sqrt_abs(k)
    st = s * t
    exact = torch.where(k > 0, torch.tan(st), torch.tanh(st.clamp(-15, 15))) / s
    small = (k * t * t).abs() < _TAYLOR
    return torch.where(small, _series(t, k, (1.0, 1 / 3, 2 / 15, 17 / 315)), exact)


def artan_k(y: Tensor, k: float | Tensor) -> Tensor:
    """artan_κ(y): arctan(√κ y)/√κ for κ > 0, artanh(√−κ y)/√−κ for κ < 0, y at κ = 0."""
    if not isinstance(k, Tensor):
        if k == 0:
            return y
        s = math.sqrt(abs(k))
        if k > 0:
            return torch.atan(s * y) / s
        return torch.atanh((s * y).clamp(max=1 - torch.finfo(y.dtype).eps)) / s
    s = _sqrt_abs(k)
    sy = s * y
    hyp = torch.atanh(sy.clamp(max=1 - torch.finfo(y.dtype).eps))
    exact = torch.where(k > 0, torch.atan(sy), hyp) / s
    small = (k * y * y).abs() < _TAYLOR
    return torch.where(small, _series(y, k, (1.0, -1 / 3, 1 / 5, -1 / 7)), exact)


def arsin_k(y: Tensor, k: float | Tensor) -> Tensor:
    """arsin_κ(y): arcsin(√κ y)/√κ for κ > 0, arsinh(√−κ y)/√−κ for κ < 0, y at κ = 0."""
    if not isinstance(k, Tensor):
        if k == 0:
            return y
        s = math.sqrt(abs(k))
        if k > 0:
            return torch.asin((s * y).clamp(-1, 1)) / s
        return torch.asinh(s * y) / s
    s = _sqrt_abs(k)
    sy = s * y
    exact = torch.where(k > 0, torch.asin(sy.clamp(-1, 1)), torch.asinh(sy)) / s
    small = (k * y * y).abs() < _TAYLOR
    return torch.where(small, _series(y, k, (1.0, 1 / 6, 3 / 40, 5 / 112)), exact)


# ------------------------------------------------------------------ the manifold
class Stereographic(Manifold):
    """κ-stereographic model over the last dimension (see the module docstring).

    Args:
        k: the curvature κ, a float of either sign (0 allowed) or a learnable :class:`Kappa`.
        exact: retract with the exponential map (True) or projx(x + u) (False); None (default):
            the exponential map for a fixed κ > 0, projx(x + u) otherwise.
    """

    ndim = 1
    low_precision_sensitive = True
    transp_is_isometry = True

    def __init__(self, k: float | Kappa = -1.0, exact: bool | None = None) -> None:
        if isinstance(k, Kappa):
            self._kappa: Kappa | None = k
            self._k: float | None = None
        else:
            self._kappa = None
            self._k = _finite(k, "k")
        if exact is None:
            exact = self._kappa is None and self._k is not None and self._k > 0
        self.exact = bool(exact)
        self.retr_is_expmap = self.exact

    def __deepcopy__(self, memo: dict[int, Any]) -> Stereographic:
        if self._kappa is None:
            return self
        if id(self) in memo:
            return memo[id(self)]
        result = copy.copy(self)
        result._kappa = copy.deepcopy(self._kappa, memo)
        memo[id(self)] = result
        return result

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("k", self._k if self._kappa is None else self._kappa), ("exact", self.exact))

    @property
    def learnable(self) -> bool:
        """Whether κ is a learnable :class:`Kappa`."""
        return self._kappa is not None

    @property
    def kappa(self) -> Kappa | None:
        """The learnable :class:`Kappa`, or None for a fixed κ."""
        return self._kappa

    @property
    def k(self) -> float:
        """The current κ as a Python float (detached)."""
        if self._kappa is None:
            return self._k  # type: ignore[return-value]
        return float(self._kappa.raw.detach())

    @property
    def strict_membership(self) -> bool:  # type: ignore[override]
        """False for a learnable κ: the ball moves as κ changes (points are re-projected)."""
        return self._kappa is None

    def _kv(self, x: Tensor) -> float | Tensor:
        if self._kappa is None:
            return self._k  # type: ignore[return-value]
        return self._kappa.value(x.dtype, x.device)

    # ---------------------------------------------------------------- gyrovector operations
    def lambda_x(self, x: Tensor, keepdim: bool = True) -> Tensor:
        """Conformal factor λ_x = 2 / (1 + κ‖x‖²)."""
        return PoincareBall._lambda(x, -self._kv(x), keepdim)

    def mobius_add(self, x: Tensor, y: Tensor) -> Tensor:
        """Möbius addition x ⊕_κ y."""
        return PoincareBall._mobius_add(x, y, -self._kv(x))

    def mobius_sub(self, x: Tensor, y: Tensor) -> Tensor:
        """x ⊕_κ (−y)."""
        return self.mobius_add(x, -y)

    def gyration(self, a: Tensor, b: Tensor, w: Tensor) -> Tensor:
        """gyr[a, b] w (Ungar's closed form, linear in ``w``)."""
        return PoincareBall._gyration(a, b, w, -self._kv(a))

    def mobius_scalar_mul(self, r: Tensor | float, x: Tensor) -> Tensor:
        """r ⊗_κ x = tan_κ(r artan_κ‖x‖) x/‖x‖ (``r`` broadcast against the point's batch)."""
        k = self._kv(x)
        xn = x.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        if isinstance(r, Tensor):
            r = r.unsqueeze(-1) if r.dim() > 0 else r
        return self.projx(tan_k(r * artan_k(xn, k), k) * x / xn)

    def mobius_matvec(self, m: Tensor, x: Tensor) -> Tensor:
        """M ⊗_κ x = tan_κ(‖Mx‖/‖x‖ artan_κ‖x‖) Mx/‖Mx‖ for a matrix ``m`` (out × in).

        ``x`` has shape ``(..., in)``; the result ``(..., out)`` (0 where Mx = 0).
        """
        k = self._kv(x)
        mx = x @ m.mT
        xn = x.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        mxn = mx.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        out = tan_k(mxn / xn * artan_k(xn, k), k) * mx / mxn
        zero = (mx == 0).all(dim=-1, keepdim=True)
        return self.projx(torch.where(zero, torch.zeros_like(out), out))

    def expmap0(self, u: Tensor) -> Tensor:
        """exp_0(u) = tan_κ(‖u‖) u/‖u‖."""
        un = u.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        return self.projx(tan_k(un, self._kv(u)) * u / un)

    def logmap0(self, y: Tensor) -> Tensor:
        """log_0(y) = artan_κ(‖y‖) y/‖y‖."""
        yn = y.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        return artan_k(yn, self._kv(y)) * y / yn

    def dist0(self, x: Tensor, keepdim: bool = False) -> Tensor:
        """Distance to the origin, 2 artan_κ‖x‖."""
        return 2 * artan_k(x.norm(dim=-1, keepdim=keepdim), self._kv(x))

    def dist2plane(
        self, x: Tensor, p: Tensor, a: Tensor, keepdim: bool = False, signed: bool = False
    ) -> Tensor:
        """Distance from ``x`` to the gyroplane through ``p`` with normal ``a`` ∈ T_p.

        arsin_κ(2⟨−p ⊕ x, a⟩ / ((1 + κ‖−p ⊕ x‖²)‖a‖)), absolute unless ``signed``.
        """
        k = self._kv(x)
        z = self.mobius_add(-p, x)
        za = (z * a).sum(-1, keepdim=keepdim)
        if not signed:
            za = za.abs()
        z2 = (z * z).sum(-1, keepdim=keepdim)
        an = a.norm(dim=-1, keepdim=keepdim).clamp_min(_MIN_NORM)
        den = (1 + k * z2).clamp_min(_MIN_NORM)
        return arsin_k(2 * za / (den * an), k)

    def to_sphere(self, x: Tensor) -> Tensor:
        """For κ > 0, the inverse stereographic projection onto the sphere of radius 1/√κ in
        ℝⁿ⁺¹: (2x, (1 − κ‖x‖²)/√κ) / (1 + κ‖x‖²) (an isometry onto the round sphere)."""
        k = self.k
        if not k > 0:
            raise ValueError(f"to_sphere needs κ > 0, got κ = {k}")
        x2 = (x * x).sum(-1, keepdim=True)
        den = 1 + k * x2
        return torch.cat([2 * x / den, (1 - k * x2) / (math.sqrt(k) * den)], dim=-1)

    # ---------------------------------------------------------------- interface
    def _max_norm(self, x: Tensor, k: float | Tensor) -> float | Tensor:
        eps = boundary_eps(x.dtype)
        if isinstance(k, Tensor):
            return (1 - eps) / _sqrt_abs(k)
        return (1 - eps) / math.sqrt(-k)

    def projx(self, x: Tensor) -> Tensor:
        """For κ < 0, rescale points with norm above (1 − eps)/√−κ onto it; identity for κ ≥ 0."""
        k = self._kv(x)
        if not isinstance(k, Tensor) and k >= 0:
            return x
        norm = x.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        maxnorm = self._max_norm(x, k)
        outside = norm > maxnorm
        if isinstance(k, Tensor):
            outside = outside & (k < 0)
        return torch.where(outside, x / norm * maxnorm, x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Identity: the tangent space is ℝⁿ."""
        return u

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """g / λ_x²."""
        return g / self.lambda_x(x).square()

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """λ_x² r."""
        return r * self.lambda_x(x).square()

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """λ_x² ⟨u, v⟩."""
        v = u if v is None else v
        return self.lambda_x(x, keepdim=keepdim).square() * (u * v).sum(-1, keepdim=keepdim)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """projx(x + u), or exp_x(u) with ``exact=True``."""
        if self.exact:
            return self.expmap(x, u)
        return self.projx(x + u)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """x ⊕ tan_κ(λ_x‖u‖/2) u/‖u‖, projected."""
        k = self._kv(x)
        un = u.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        second = tan_k(self.lambda_x(x) * un / 2, k) * u / un
        return self.projx(self.mobius_add(x, second))

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """(2/λ_x) artan_κ‖−x ⊕ y‖ (−x ⊕ y)/‖−x ⊕ y‖."""
        k = self._kv(x)
        w = self.mobius_add(-x, y)
        wn = w.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        return 2 / self.lambda_x(x) * artan_k(wn, k) * w / wn

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """2 artan_κ‖−x ⊕ y‖."""
        wn = self.mobius_add(-x, y).norm(dim=-1, keepdim=keepdim)
        return 2 * artan_k(wn, self._kv(x))

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport (λ_x / λ_y) gyr[y, −x] v."""
        return self.gyration(y, -x, v) * self.lambda_x(x) / self.lambda_x(y)

    def _origin(self, zeros: Tensor) -> Tensor:
        """The origin is the zero vector."""
        return zeros

    def violation(self, x: Tensor) -> Tensor:
        """For κ < 0, how far the largest norm exceeds (1 − eps)/√−κ; 0 for κ ≥ 0."""
        k = self.k
        if k >= 0:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        limit = (1 - boundary_eps(x.dtype)) / math.sqrt(-k)
        return (torch.linalg.vector_norm(x, dim=-1) - limit).clamp_min(0).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 0.5) -> Tensor:
        """exp_0 of a Gaussian tangent vector with entries of standard deviation ``std``."""
        x = self.expmap0(std * draw.randn(shape))
        return x if self._kappa is None else x.detach()

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 1 or shape[-1] < 1:
            return False, f"Stereographic needs a shape of at least (1,), got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        k = self.k
        if k >= 0:
            return True, None
        scaled = float(x.norm(dim=-1).max()) * math.sqrt(-k)
        if scaled >= 1:
            return False, (
                f"max √−κ‖x‖ is {scaled:.6g}: for κ = {k:.6g} < 0 points must lie strictly "
                f"inside the ball of radius 1/√−κ = {1 / math.sqrt(-k):.6g}"
            )
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        return True, None


class SphereProjection(Stereographic):
    """The κ-stereographic model restricted to κ > 0: the stereographic projection of the
    sphere of radius 1/√κ (geoopt's ``SphereProjection``).

    Args:
        k: the positive curvature (a float, or a learnable :class:`Kappa`; the sign of a
            learnable κ is not constrained by this class).
    """

    def __init__(self, k: float | Kappa = 1.0, exact: bool | None = None) -> None:
        if not isinstance(k, Kappa) and not _finite(k, "k") > 0:
            raise ValueError(f"SphereProjection needs k > 0, got {k!r}")
        super().__init__(k, exact)
