"""Hyperbolic space: the Poincaré ball and the Lorentz (hyperboloid) model.

Poincaré ball 𝔻ⁿ_c = {x : c‖x‖² < 1}, curvature −c (Ganea, Bécigneul & Hofmann, "Hyperbolic
Neural Networks", NeurIPS 2018; Ungar's gyrovector formalism), with λ_x = 2 / (1 − c‖x‖²):

* metric ⟨u, v⟩_x = λ_x² ⟨u, v⟩; Riemannian gradient = g / λ_x² = g (1 − c‖x‖²)² / 4, and
  its inverse ``rgrad2egrad(x, r) = λ_x² r``;
* Möbius addition x ⊕ y = ((1 + 2c⟨x,y⟩ + c‖y‖²) x + (1 − c‖x‖²) y) / (1 + 2c⟨x,y⟩ + c²‖x‖²‖y‖²);
* exp_x(u) = x ⊕ (tanh(√c λ_x ‖u‖ / 2) u / (√c ‖u‖));
* log_x(y) = 2 / (√c λ_x) artanh(√c ‖−x ⊕ y‖) (−x ⊕ y) / ‖−x ⊕ y‖;
* d(x, y) = 2/√c artanh(√c ‖−x ⊕ y‖) = arcosh(1 + 2c‖x−y‖² / ((1−c‖x‖²)(1−c‖y‖²))) / √c;
* parallel transport P_{x→y}(v) = (λ_x / λ_y) gyr[y, −x] v (an isometry).

``retr(x, u) = projx(x + u)`` (first order, as in geoopt and Bécigneul & Ganea, ICLR 2019).
The curvature may be learnable: ``PoincareBall(Curvature(0.7))`` evaluates c = softplus(raw)
(always > 0, with a finite gradient) in the dtype of the points it acts on, and every operation
is differentiable with respect to ``raw`` (see :class:`Curvature`).
Numerics follow Ganea's guidance: points are kept strictly inside the ball, at norm at most
(1 − eps)/√c with eps = 4e-3 (float32) or 1e-5 (float64); tanh inputs are clipped to 15, artanh
inputs to 1 − machine eps, and denominators are clamped away from 0.

Lorentz model ℍⁿ_k = {x ∈ ℝ^{n+1} : ⟨x, x⟩_L = −k, x₀ > 0}, ⟨x, y⟩_L = −x₀y₀ + Σᵢ xᵢyᵢ
(Nickel & Kiela, ICML 2018, curvature −1/k):

* proju(x, u) = u + ⟨x, u⟩_L x / k; projx recomputes x₀ = sqrt(k + ‖x_{1:}‖²);
* Riemannian gradient = proju(x, J g) with J = diag(−1, 1, …, 1); on tangent vectors its
  inverse is ``rgrad2egrad(x, r) = J r`` (proju(x, J J r) = proju(x, r) = r);
* exp_x(u) = cosh(θ) x + (sinh θ / θ) u, θ = ‖u‖_L / √k;
* d(x, y) = √k arcosh(−⟨x, y⟩_L / k), computed as 2√k arsinh(‖x − y‖_L / (2√k));
* log_x(y) = (θ / sinh θ)(y + ⟨x, y⟩_L x / k), θ = d(x, y)/√k;
* parallel transport P_{x→y}(v) = v + ⟨y, v⟩_L / (k − ⟨x, y⟩_L) (x + y) (an isometry).

``retr`` is the exponential map followed by ``projx`` (which only removes rounding drift).
Both models are far better behaved in float64; float32 is supported but loses accuracy near
the boundary / far from the origin.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchvalley.manifolds.base import LOW_PRECISION, Draw, Manifold, _violation_reason

__all__ = ["Curvature", "Lorentz", "PoincareBall", "boundary_eps"]

_BALL_EPS = {torch.float64: 1e-5, torch.float32: 4e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}
_MIN_NORM = 1e-15


def boundary_eps(dtype: torch.dtype) -> float:
    """Relative distance to the boundary that :meth:`PoincareBall.projx` keeps for ``dtype``."""
    return _BALL_EPS.get(dtype, 4e-3)


def _positive_float(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive float, got {value!r}")
    return v


def _sinhc(t: Tensor) -> Tensor:
    """sinh(t)/t, smooth at 0."""
    small = t.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1 + t * t / 6, torch.sinh(safe) / safe)


def _inverse_softplus(y: float) -> float:
    """The ``r`` with softplus(r) = log(1 + exp(r)) = ``y`` > 0, computed as y + log(−expm1(−y))."""
    return y + math.log(-math.expm1(-y))


class Curvature(nn.Module):
    """A learnable (negated) curvature c > 0 for :class:`PoincareBall`.

    Parametrization: c = softplus(raw) = log(1 + exp(raw)), with ``raw`` an ordinary (Euclidean)
    ``nn.Parameter`` stored in ``dtype`` (float64 by default) and initialised to
    softplus⁻¹(``init``). softplus maps ℝ onto (0, ∞) with derivative sigmoid(raw) ∈ (0, 1), so
    any optimizer step on ``raw`` keeps c positive and dc/draw finite; the value is finally
    clamped below by the smallest normal number of the requested dtype, so that c cannot round
    to 0 (only for raw below about −708 in float64, −87 in float32; the gradient is 0 there).

    Unlike geoopt (which stores softplus(isp_c) in float32, so a float64 computation sees c to
    about 1e-7 only), :meth:`value` evaluates softplus in the dtype of ``raw`` and casts the
    result to the dtype of the tensors it acts on: float64 points see the float64 value
    exactly, float32 points its float32 rounding. Keep ``raw`` in float64 (``module.float()`` /
    ``.half()`` would cast it like any other parameter).

    Optimize ``raw`` with any optimizer (``curvature.parameters()``); a
    :class:`torchvalley.optim.RiemannianAdam` or ``RiemannianSGD`` treats it as a Euclidean
    parameter, exactly like its torch counterpart. Its gradient can be huge while points sit
    near the boundary (≈ 3.5e6 in the test run from boundary points): plain SGD at lr 1e-2 then
    throws ``raw`` far negative, where c stays at its positive floor with a zero gradient, so use
    an adaptive optimizer (Adam learns it in that run), a small lr or gradient clipping for
    ``raw``.

    Args:
        init: the initial curvature c (finite, > 0).
        dtype: the floating dtype of ``raw``.
        device: the device of ``raw``.
    """

    raw: nn.Parameter

    def __init__(
        self,
        init: float = 1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        init = _positive_float(init, "init")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.raw = nn.Parameter(torch.tensor(_inverse_softplus(init), dtype=dtype, device=device))

    def value(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """c = softplus(raw) as a 0-d tensor (differentiable with respect to ``raw``).

        Args:
            dtype: the dtype of the result (default: that of ``raw``); softplus is computed in
                the dtype of ``raw`` and then cast.
            device: the device of the result (default: that of ``raw``).

        Returns:
            The positive curvature value.
        """
        c = F.softplus(self.raw)
        if dtype is not None or device is not None:
            c = c.to(dtype=dtype or c.dtype, device=device)
        return c.clamp_min(torch.finfo(c.dtype).tiny)

    def forward(self, dtype: torch.dtype | None = None) -> Tensor:
        """Same as :meth:`value`."""
        return self.value(dtype)

    def extra_repr(self) -> str:
        """The current value of c."""
        return f"c={float(self.value().detach()):.6g}"


class PoincareBall(Manifold):
    """Poincaré ball of curvature −c over the last dimension (see the module docstring).

    With a float ``c`` the curvature is a fixed constant. With a :class:`Curvature` module the
    curvature is learnable: every operation evaluates ``c = curvature.value(x.dtype)`` (a 0-d
    tensor on ``x``'s device, the float64 softplus cast to ``x``'s dtype) and uses tensor math,
    so autograd flows into ``curvature.raw`` through ``dist``, ``expmap``, ``logmap``,
    ``mobius_add``, ``projx``, etc. Notes for a learnable curvature:

    * when c changes, points may lie outside the new ball (radius 1/√c). A learnable curvature
      therefore requires a retraction that projects: the optimizers' step ends with
      ``retr(x, u) = projx(x + u)``, which re-projects with the current c. Put the points and
      ``curvature.parameters()`` in the *same* param group: the Riemannian optimizers step the
      manifold parameters of a group before its Euclidean ones, so the points step with the c
      that produced their gradients (had c grown first, points at the boundary would lie outside
      the ball at their step, where λ_x is clamped and their Riemannian gradient vanishes).
      If c can grow, call ``optimizer.stabilize()`` (or ``param.proj_()``) after the step so that
      the next forward pass sees the points inside the updated ball (outside it, ``dist`` and
      ``logmap`` stay finite but clamp their artanh, whose gradient is then 0);
    * :meth:`check_point`, :meth:`max_norm` and :attr:`c` use the current value of c;
    * two balls are equal when they share the same :class:`Curvature` object (identity);
      ``copy.deepcopy`` of the ball copies its curvature through the memo (a fixed ball is an
      immutable value and is shared). Note that ``ManifoldParameter``'s deepcopy shares its
      manifold, so a deep-copied model's points keep the *original* curvature module; pickling
      keeps them together.

    Args:
        c: the (positive) negated curvature, a float or a learnable :class:`Curvature`; the ball
            has radius 1/√c.
    """

    ndim = 1
    low_precision_sensitive = True
    transp_is_isometry = True

    def __init__(self, c: float | Curvature = 1.0) -> None:
        if isinstance(c, Curvature):
            self._curvature: Curvature | None = c
            self._c: float | None = None
            self._sqrt_c: float | None = None
        else:
            self._curvature = None
            self._c = _positive_float(c, "c")
            self._sqrt_c = math.sqrt(self._c)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles from before the learnable curvature stored the float as ``c``.
        if "c" in state and "_c" not in state:
            state = dict(state)
            state["_c"] = state.pop("c")
            state.setdefault("_curvature", None)
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict[int, Any]) -> PoincareBall:
        if self._curvature is None:
            return self
        if id(self) in memo:
            return memo[id(self)]
        result = PoincareBall(copy.deepcopy(self._curvature, memo))
        memo[id(self)] = result
        return result

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("c", self._c if self._curvature is None else self._curvature),)

    @property
    def learnable(self) -> bool:
        """Whether the curvature is a learnable :class:`Curvature`."""
        return self._curvature is not None

    @property
    def curvature(self) -> Curvature | None:
        """The learnable :class:`Curvature`, or None for a fixed float curvature."""
        return self._curvature

    @property
    def c(self) -> float:
        """The current curvature as a Python float (detached; the float64 value if learnable)."""
        if self._curvature is None:
            return self._c  # type: ignore[return-value]
        with torch.no_grad():
            return float(self._curvature.value(torch.float64))

    def _curv(self, x: Tensor) -> tuple[float | Tensor, float | Tensor]:
        """(c, √c) to use on ``x``: floats if fixed, 0-d tensors of ``x``'s dtype if learnable."""
        if self._curvature is None:
            return self._c, self._sqrt_c  # type: ignore[return-value]
        c = self._curvature.value(x.dtype, x.device)
        return c, torch.sqrt(c)

    # ---------------------------------------------------------------- helpers
    @property
    def strict_membership(self) -> bool:  # type: ignore[override]
        """False with a learnable curvature: points leave the ball as c grows (re-projected)."""
        return self._curvature is None

    def max_norm(self, dtype: torch.dtype) -> float:
        """Largest Euclidean norm kept by ``projx``: (1 − eps(dtype)) / √c.

        For a learnable curvature, computed (detached) from the current c rounded to ``dtype``.
        """
        if self._curvature is None:
            return (1 - boundary_eps(dtype)) / self._sqrt_c  # type: ignore[operator]
        with torch.no_grad():
            c = float(self._curvature.value(dtype))
        return (1 - boundary_eps(dtype)) / math.sqrt(c)

    @staticmethod
    def _lambda(x: Tensor, c: float | Tensor, keepdim: bool = True) -> Tensor:
        den = (1 - c * (x * x).sum(-1, keepdim=keepdim)).clamp_min(_MIN_NORM)
        return 2 / den

    @staticmethod
    def _mobius_add(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
        x2 = (x * x).sum(-1, keepdim=True)
        y2 = (y * y).sum(-1, keepdim=True)
        xy = (x * y).sum(-1, keepdim=True)
        num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
        den = (1 + 2 * c * xy + c * c * x2 * y2).clamp_min(_MIN_NORM)
        return num / den

    @staticmethod
    def _gyration(a: Tensor, b: Tensor, w: Tensor, c: float | Tensor) -> Tensor:
        k = -c
        a2 = (a * a).sum(-1, keepdim=True)
        b2 = (b * b).sum(-1, keepdim=True)
        ab = (a * b).sum(-1, keepdim=True)
        aw = (a * w).sum(-1, keepdim=True)
        bw = (b * w).sum(-1, keepdim=True)
        k2 = k * k
        coef_a = -k2 * aw * b2 - k * bw + 2 * k2 * ab * bw
        coef_b = -k2 * bw * a2 + k * aw
        den = (1 - 2 * k * ab + k2 * a2 * b2).clamp_min(_MIN_NORM)
        return w + 2 * (coef_a * a + coef_b * b) / den

    def _projx(self, x: Tensor, sc: float | Tensor) -> Tensor:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        if self._curvature is None:
            maxnorm: float | Tensor = self.max_norm(x.dtype)
        else:
            maxnorm = (1 - boundary_eps(x.dtype)) / sc
        return torch.where(norm > maxnorm, x / norm * maxnorm, x)

    def lambda_x(self, x: Tensor, keepdim: bool = True) -> Tensor:
        """Conformal factor λ_x = 2 / (1 − c‖x‖²)."""
        return self._lambda(x, self._curv(x)[0], keepdim)

    def mobius_add(self, x: Tensor, y: Tensor) -> Tensor:
        """Möbius addition x ⊕_c y."""
        return self._mobius_add(x, y, self._curv(x)[0])

    def gyration(self, a: Tensor, b: Tensor, w: Tensor) -> Tensor:
        """gyr[a, b] w = ⊖(a ⊕ b) ⊕ (a ⊕ (b ⊕ w)), in Ungar's closed form (linear in ``w``)."""
        return self._gyration(a, b, w, self._curv(a)[0])

    def _artanh(self, z: Tensor) -> Tensor:
        return torch.atanh(z.clamp(max=1 - torch.finfo(z.dtype).eps))

    # ---------------------------------------------------------------- interface
    def projx(self, x: Tensor) -> Tensor:
        """Rescale points with norm above ``max_norm`` onto that radius (the current c)."""
        return self._projx(x, self._curv(x)[1])

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """Identity: the tangent space is ℝⁿ."""
        return u

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """g / λ_x² = g (1 − c‖x‖²)² / 4."""
        return g / self._lambda(x, self._curv(x)[0]).square()

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """λ_x² r: the inverse of :meth:`egrad2rgrad` (metric lowering with G(x) = λ_x² I)."""
        return r * self._lambda(x, self._curv(x)[0]).square()

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """λ_x² ⟨u, v⟩."""
        if v is None:
            v = u
        lam = self._lambda(x, self._curv(x)[0], keepdim=keepdim)
        return lam.square() * (u * v).sum(-1, keepdim=keepdim)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """projx(x + u)."""
        return self.projx(x + u)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """x ⊕ (tanh(√c λ_x ‖u‖ / 2) u / (√c ‖u‖)), projected into the ball."""
        c, sc = self._curv(x)
        un = u.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        arg = (sc * self._lambda(x, c) * un / 2).clamp(max=15)
        second = torch.tanh(arg) * u / (sc * un)
        return self._projx(self._mobius_add(x, second, c), sc)

    def expmap0(self, u: Tensor) -> Tensor:
        """exp_0(u) = tanh(√c ‖u‖) u / (√c ‖u‖)."""
        _, sc = self._curv(u)
        un = u.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        return self._projx(torch.tanh((sc * un).clamp(max=15)) * u / (sc * un), sc)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """2 / (√c λ_x) artanh(√c ‖−x ⊕ y‖) (−x ⊕ y) / ‖−x ⊕ y‖."""
        c, sc = self._curv(x)
        w = self._mobius_add(-x, y, c)
        wn = w.norm(dim=-1, keepdim=True).clamp_min(_MIN_NORM)
        return 2 / (sc * self._lambda(x, c)) * self._artanh(sc * wn) * w / wn

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """2/√c artanh(√c ‖−x ⊕ y‖)."""
        c, sc = self._curv(x)
        wn = self._mobius_add(-x, y, c).norm(dim=-1, keepdim=keepdim)
        return 2 / sc * self._artanh(sc * wn)

    def dist0(self, x: Tensor, keepdim: bool = False) -> Tensor:
        """Distance to the origin, 2/√c artanh(√c ‖x‖)."""
        _, sc = self._curv(x)
        return 2 / sc * self._artanh(sc * x.norm(dim=-1, keepdim=keepdim))

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport (λ_x / λ_y) gyr[y, −x] v."""
        c, _ = self._curv(x)
        return self._gyration(y, -x, v, c) * self._lambda(x, c) / self._lambda(y, c)

    def _origin(self, zeros: Tensor) -> Tensor:
        """The origin is the zero vector."""
        return zeros

    def violation(self, x: Tensor) -> Tensor:
        """How far the largest norm exceeds the allowed maximum (1 − eps)/√c (0 inside)."""
        limit = self.max_norm(x.dtype)
        return (torch.linalg.vector_norm(x, dim=-1) - limit).clamp_min(0).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 0.5) -> Tensor:
        """exp_0 of a Gaussian tangent vector with entries of standard deviation ``std``.

        With a learnable curvature the points use its current value and are detached.
        """
        x = self.expmap0(std * draw.randn(shape))
        return x if self._curvature is None else x.detach()

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 1 or shape[-1] < 1:
            return False, f"PoincareBall needs a shape of at least (1,), got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        # A learnable curvature is checked at its current (float64) value.
        sqrt_c = self._sqrt_c if self._curvature is None else math.sqrt(self.c)
        scaled = float(x.norm(dim=-1).max()) * sqrt_c
        if scaled >= 1:
            return False, (
                f"max √c‖x‖ is {scaled:.6g}: points must lie strictly inside the ball of radius "
                f"1/√c = {1 / sqrt_c:.6g}"
            )
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        return True, None


class Lorentz(Manifold):
    """Hyperboloid ⟨x, x⟩_L = −k, x₀ > 0, over the last dimension (see the module docstring).

    Args:
        k: the (positive) constant with curvature −1/k.
    """

    ndim = 1
    low_precision_sensitive = True
    transp_is_isometry = True
    retr_is_expmap = True

    def __init__(self, k: float = 1.0) -> None:
        self.k = _positive_float(k, "k")
        self._sqrt_k = math.sqrt(self.k)

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("k", self.k),)

    @staticmethod
    def ldot(u: Tensor, v: Tensor, keepdim: bool = False) -> Tensor:
        """Minkowski product −u₀v₀ + Σᵢ uᵢvᵢ."""
        uv = u * v
        out = uv[..., 1:].sum(-1, keepdim=keepdim) - (uv[..., 0:1] if keepdim else uv[..., 0])
        return out

    def _theta_max(self, dtype: torch.dtype) -> float:
        # cosh(θ)² must stay finite: exp(2·40) < float32 max, exp(2·300) < float64 max.
        return 300.0 if dtype == torch.float64 else 40.0

    def projx(self, x: Tensor) -> Tensor:
        """Recompute x₀ = sqrt(k + ‖x_{1:}‖²) from the spatial part (in float32 for 16-bit x)."""
        xs = x[..., 1:]
        wide = xs.float() if x.dtype in LOW_PRECISION else xs
        x0 = (self.k + (wide * wide).sum(-1, keepdim=True)).sqrt()
        return torch.cat([x0.to(x.dtype), xs], dim=-1)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """u + ⟨x, u⟩_L x / k."""
        return u + self.ldot(x, u, keepdim=True) / self.k * x

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """proju(x, J g), J = diag(−1, 1, …, 1)."""
        return self.proju(x, torch.cat([-g[..., 0:1], g[..., 1:]], dim=-1))

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """J r, J = diag(−1, 1, …, 1): the inverse of :meth:`egrad2rgrad` on tangent vectors.

        For tangent ``r``, egrad2rgrad(x, J r) = proju(x, r) = r, and Σ (J r)·s = ⟨r, s⟩_L.
        """
        del x
        return torch.cat([-r[..., 0:1], r[..., 1:]], dim=-1)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """⟨u, v⟩_L (positive definite on tangent vectors)."""
        return self.ldot(u, u if v is None else v, keepdim=keepdim)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        """cosh θ x + (sinh θ / θ) u with θ = ‖u‖_L / √k (θ clipped against overflow)."""
        nu = self.ldot(u, u, keepdim=True).clamp_min(0).sqrt()
        theta = nu / self._sqrt_k
        tmax = self._theta_max(u.dtype)
        clipped = theta.clamp(max=tmax)
        scale = torch.where(theta > tmax, clipped / theta.clamp_min(_MIN_NORM), 1.0)
        return torch.cosh(clipped) * x + _sinhc(clipped) * scale * u

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """projx(exp_x(u))."""
        return self.projx(self.expmap(x, u))

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """√k arcosh(−⟨x, y⟩_L / k) = 2√k arsinh(‖x − y‖_L / (2√k))."""
        d = x - y
        chord2 = self.ldot(d, d, keepdim=keepdim).clamp_min(0)
        # sqrt has an infinite derivative at 0: the double ``where`` keeps the gradient of
        # dist² (and of dist at coincident points) finite (0) where x == y.
        positive = chord2 > 0
        safe = torch.where(positive, chord2, torch.ones_like(chord2))
        chord = torch.where(positive, safe.sqrt(), torch.zeros_like(chord2))
        return 2 * self._sqrt_k * torch.asinh(chord / (2 * self._sqrt_k))

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        """(θ / sinh θ)(y + ⟨x, y⟩_L x / k), θ = d(x, y)/√k, with 1 + ⟨x,y⟩_L/k = −‖x−y‖²_L/2k."""
        d = y - x
        chord2 = self.ldot(d, d, keepdim=True).clamp_min(0)
        v = d - chord2 / (2 * self.k) * x
        theta = 2 * torch.asinh(chord2.sqrt() / (2 * self._sqrt_k))
        return v / _sinhc(theta)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Parallel transport v + ⟨y, v⟩_L / (k − ⟨x, y⟩_L) (x + y)."""
        coef = self.ldot(y, v, keepdim=True) / (self.k - self.ldot(x, y, keepdim=True))
        return v + coef * (x + y)

    def _origin(self, zeros: Tensor) -> Tensor:
        """The point (√k, 0, …, 0)."""
        o = zeros
        o[..., 0] = self._sqrt_k
        return o

    def violation(self, x: Tensor) -> Tensor:
        """max |⟨x, x⟩_L + k| / k."""
        return ((self.ldot(x, x) + self.k).abs() / self.k).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 0.5) -> Tensor:
        """exp at the origin of a Gaussian tangent vector (0, std·ε)."""
        u = std * draw.randn(shape)
        u = torch.cat([torch.zeros_like(u[..., :1]), u[..., 1:]], dim=-1)
        o = self.origin(*u.shape, dtype=u.dtype, device=u.device)
        return self.retr(o, u)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 1 or shape[-1] < 2:
            return False, f"Lorentz needs a shape of at least (2,), got {tuple(shape)}"
        return True, None

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        if bool((x[..., 0] <= 0).any()):
            return False, "x₀ must be positive (upper sheet of the hyperboloid)"
        err = (self.ldot(x, x) + self.k).abs()
        bound = atol + rtol * (self.k + (x * x).sum(-1))
        if bool((err > bound).any()):
            i = int((err - bound).flatten().argmax())
            return False, _violation_reason(
                "|⟨x, x⟩_L + k|", float(err.flatten()[i]), float(bound.flatten()[i])
            )
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        err = self.ldot(x, u).abs()
        bound = atol + rtol * x.norm(dim=-1) * u.norm(dim=-1)
        if bool((err > bound).any()):
            return False, _violation_reason("max |⟨x, u⟩_L|", float(err.max()), float(bound.max()))
        return True, None
