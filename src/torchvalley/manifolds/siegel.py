"""Siegel spaces: the upper half space and the bounded domain of complex symmetric matrices.

Siegel, "Symplectic Geometry" (1943); López, Pozzetti, Trettel, Strube & Wienhard, "Symmetric
Spaces for Graph Embeddings: A Finsler-Riemannian Approach" (ICML 2021; geoopt's
``UpperHalf``/``BoundedDomain``). Points are complex symmetric n×n matrices (``torch.complex64``
/ ``complex128``; ``random`` turns a real dtype into its complex counterpart). Tangent spaces
are Sym(n, ℂ), ``proju(Z, U) = (U + Uᵀ)/2`` (transpose, not conjugate transpose). Euclidean
gradients of a real loss are torch's complex gradients G = ∂L/∂Re Z + i ∂L/∂Im Z, paired with
tangent vectors by Re Σ G Ū.

``UpperHalf``: Z = X + iY with Y ≻ 0, the metric ⟨U, V⟩_Z = Re tr(Y⁻¹ U Y⁻¹ V̄); Riemannian
gradient Y sym(G) Y, its inverse Y⁻¹RY⁻¹; the distance moves Z₁ to iI by the isometry
Z ↦ Y₁^{-½}(Z − X₁)Y₁^{-½}, maps Z₂ to the bounded domain by W = (Z − iI)(Z + iI)⁻¹ and takes
d = sqrt(Σ (2 artanh σₖ)²) over the singular values σ of W (= its Takagi values, since W is
symmetric). For n = 1 this is the hyperbolic plane dx² + dy² over y².

``BoundedDomain``: Z with I − Z̄Z ≻ 0, the metric ⟨U, V⟩_Z = 4 Re tr(B⁻¹ U A⁻¹ V̄) with
A = I − Z̄Z, B = I − ZZ̄ = Ā (Siegel's (I − ZZ̄)⁻¹ dZ (I − Z̄Z)⁻¹ dZ̄); Riemannian gradient
B sym(G) A / 4, its inverse 4B⁻¹RA⁻¹; the
Cayley transform Z ↦ i(I + Z)(I − Z)⁻¹ is an isometry onto the upper half space (tested), and
the distance is computed through it.

Both use the first-order retraction ``projx(Z + αU)`` and an isometric vector transport (the
differential of an isometry of the space that maps Z to Z'): for ``UpperHalf``
V ↦ E sym(V) Eᵀ with E = L'L⁻¹ (L, L' the Cholesky factors of Y, Y'; the real congruence
Z ↦ EZEᵀ + (X' − EXEᵀ) is an isometry taking Z to Z'), for ``BoundedDomain`` the same conjugated
by the Cayley transform, whose differential is dC_Z[V] = 2i(I − Z)⁻¹V(I − Z)⁻¹. (The identity
transport sym(V), used before, is not an isometry: a momentum kept constant in coordinates grows
without bound in the metric as Y shrinks, and drove RSGD with momentum into the boundary.)
No closed-form exponential or logarithm (``has_expmap`` and
``has_logmap`` are False; ``dist`` exists). The factor α ≤ 1 stops a long step half way to the
boundary, which lies at infinite distance: α = min(1, ½ / max(0, −λ_min(Y^{-½} Im U Y^{-½})))
for ``UpperHalf`` (so Im(Z + αU) ⪰ ½Y), α = min(1, ½(1 − ‖Z‖₂) / ‖U‖₂) for ``BoundedDomain``
(so ‖Z + αU‖₂ ≤ ‖Z‖₂ + ½(1 − ‖Z‖₂) < 1); α = 1 for every step inside that range, so the
retraction is Z + U near U = 0. Without it a step that crossed the boundary was clamped by
``projx`` onto a matrix of condition number ``max_condition`` (or of norm 1 − eps), about 23
(float64) away in the metric: under RSGD with momentum 0.9 at lr 1e-2 a product of the two
spaces jumped from loss 5 to 477 within 5 steps and stayed there, the momentum pushing into the
wall on every step. ``projx`` symmetrizes and then, for ``UpperHalf``,
clamps the spectrum of Y into [λ_max / ``max_condition``, ∞) (as SPD), for ``BoundedDomain``
the singular values of Z to at most 1 − eps (eps of :func:`~torchvalley.manifolds.boundary_eps`).

Deliberate differences from geoopt: its ``BoundedDomain.inner`` is Re tr(A⁻¹ U B⁻¹ V̄), with
A and B in the other order and without the factor 4 that makes the Cayley transform an
isometry (its ``dist`` is the Cayley-transported one, so geoopt's inner and distance disagree),
and its ``egrad2rgrad`` is sym(A G A), not the Riesz representer of either metric; only the
Riemannian metric (not geoopt's Finsler variants) is offered.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor

from torchvalley.manifolds.base import Draw, Manifold, _violation_reason
from torchvalley.manifolds.hyperbolic import boundary_eps
from torchvalley.manifolds.spd import solve, sym

__all__ = ["BoundedDomain", "UpperHalf", "cayley", "inverse_cayley"]

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_DEFAULT_CONDITION = {torch.float64: 1e10, torch.float32: 1e4}
# The retraction stops a step this fraction of the way to the boundary.
_BOUNDARY_FRACTION = 0.5


def _complex(x: Tensor) -> Tensor:
    if x.is_complex():
        return x
    return x.to(_COMPLEX.get(x.dtype, torch.complex64))


def _eye_like(z: Tensor) -> Tensor:
    return torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)


def cayley(z: Tensor) -> Tensor:
    """Bounded domain → upper half space: i(I + Z)(I − Z)⁻¹ (symmetrized)."""
    eye = _eye_like(z)
    return sym(1j * solve((eye - z).mT, (eye + z).mT).mT)


def inverse_cayley(z: Tensor) -> Tensor:
    """Upper half space → bounded domain: (Z − iI)(Z + iI)⁻¹ (symmetrized)."""
    eye = _eye_like(z)
    return sym(solve((z + 1j * eye).mT, (z - 1j * eye).mT).mT)


def _spd_root_pair(y: Tensor) -> tuple[Tensor, Tensor]:
    w, q = torch.linalg.eigh(sym(y))
    s = w.clamp_min(torch.finfo(w.dtype).tiny).sqrt()
    return (q * s.unsqueeze(-2)) @ q.mT, (q / s.unsqueeze(-2)) @ q.mT


def _congruence_transport(x: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """E V Eᵀ with E = L_y L_x⁻¹, L the Cholesky factors of Im x and Im y (upper half space)."""
    lx = torch.linalg.cholesky(sym(x.imag))
    ly = torch.linalg.cholesky(sym(y.imag)).to(v.dtype)
    # E V Eᵀ = L_y (L_x⁻¹ V L_x⁻ᵀ) L_yᵀ; the triangular solves act on the real and imaginary parts.
    inner = _tri_solve(lx, _tri_solve(lx, v).mT)
    return sym(ly @ inner @ ly.mT)


def _tri_solve(low: Tensor, b: Tensor) -> Tensor:
    """L⁻¹B for a real lower triangular L and a complex B."""
    re = torch.linalg.solve_triangular(low, b.real.contiguous(), upper=False)
    im = torch.linalg.solve_triangular(low, b.imag.contiguous(), upper=False)
    return torch.complex(re, im)


def _asym(z: Tensor) -> Tensor:
    scale = z.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(z.real.dtype).tiny)
    return (z - z.mT).abs().amax(dim=(-2, -1)) / scale


class _Siegel(Manifold):
    ndim = 2
    has_expmap = False
    has_logmap = False
    violation_name = "max of |Z − Zᵀ| / max|Z| and 1 where the positivity constraint fails"

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return ()

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        """sym(U) (complex symmetric part)."""
        del x
        return sym(_complex(u))

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """projx(Z + αU) with the fraction-to-boundary factor α (module docstring)."""
        z, step = sym(_complex(x)), sym(_complex(u))
        return self.projx(z + self._boundary_factor(z, step) * step)

    @abc.abstractmethod
    def _boundary_factor(self, z: Tensor, u: Tensor) -> Tensor:
        """The step fraction that stays half way to the boundary (each model's own)."""

    transp_is_isometry = True

    @abc.abstractmethod
    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """The differential of an isometry mapping x to y (module docstring)."""

    def _pair(self, a: Tensor, b: Tensor, keepdim: bool) -> Tensor:
        """Re tr(a b̄ᵀ...) helper: Re Σ aᵢⱼ b̄ⱼᵢ over the matrix dims."""
        return self._reduce((a * b.mT.conj()).real, keepdim)

    def _check_shape(self, shape: torch.Size) -> tuple[bool, str | None]:
        if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 1:
            return (
                False,
                f"{type(self).__name__} needs square matrices (..., n, n), got {tuple(shape)}",
            )
        return True, None

    def _check_symmetric(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        if not x.is_complex():
            return False, f"points are complex matrices, got dtype {x.dtype}"
        err = float((x - x.mT).abs().max())
        bound = atol + rtol * float(x.abs().max())
        if err > bound:
            return False, _violation_reason("max |Z − Zᵀ|", err, bound)
        return True, None

    def _check_vector(
        self, x: Tensor, u: Tensor, atol: float, rtol: float
    ) -> tuple[bool, str | None]:
        err = float((u - u.mT).abs().max())
        bound = atol + rtol * float(u.abs().max())
        if err > bound:
            return False, _violation_reason("max |U − Uᵀ|", err, bound)
        return True, None

    def _draw_dtype(self, draw: Draw) -> torch.dtype:
        dtype = draw.dtype or torch.get_default_dtype()
        if dtype.is_complex:
            return torch.float64 if dtype == torch.complex128 else torch.float32
        return dtype


class UpperHalf(_Siegel):
    """Siegel upper half space {X + iY : X, Y real symmetric, Y ≻ 0} (see the module doc).

    Args:
        max_condition: the largest condition number of Y that ``projx`` keeps (default 1e4 in
            complex64, 1e10 in complex128).
    """

    def __init__(self, max_condition: float | None = None) -> None:
        if max_condition is not None and not float(max_condition) > 1:
            raise ValueError(f"max_condition must be > 1, got {max_condition!r}")
        self.max_condition = None if max_condition is None else float(max_condition)

    def _hparams(self) -> tuple[tuple[str, Any], ...]:
        return (("max_condition", self.max_condition),)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """E sym(V) Eᵀ with E = L_y L_x⁻¹ (L the Cholesky factors of Im x, Im y): the
        differential of the isometry Z ↦ EZEᵀ + (Re y − E Re x Eᵀ), which maps x to y."""
        return _congruence_transport(_complex(x), _complex(y), sym(_complex(v)))

    def _boundary_factor(self, z: Tensor, u: Tensor) -> Tensor:
        """min(1, ½ / max(0, −λ_min(Y^{-½} Im U Y^{-½}))): Im(Z + αU) ⪰ ½ Im Z."""
        # L⁻¹ Im U L⁻ᵀ (L the Cholesky factor of Y) has the spectrum of Y^{-½} Im U Y^{-½}.
        chol, _ = torch.linalg.cholesky_ex(sym(z.imag))
        a = torch.linalg.solve_triangular(chol, u.imag, upper=False)
        m = torch.linalg.solve_triangular(chol, a.mT, upper=False)
        low = torch.linalg.eigvalsh(sym(m))[..., :1]
        alpha = (_BOUNDARY_FRACTION / (-low).clamp_min(_BOUNDARY_FRACTION)).unsqueeze(-1)
        # A non-finite factor (a singular Y, which projx never returns) leaves the step as is.
        return torch.where(torch.isfinite(alpha), alpha, torch.ones_like(alpha)).to(z.real.dtype)

    def projx(self, x: Tensor) -> Tensor:
        """sym(Z) with the spectrum of Y clamped into [λ_max / max_condition, ∞)."""
        z = sym(_complex(x))
        y = z.imag
        w, q = torch.linalg.eigh(sym(y))
        limit = self.max_condition or _DEFAULT_CONDITION.get(y.dtype, 1e4)
        tiny = torch.finfo(w.dtype).tiny
        floor = (w[..., -1:].clamp_min(tiny) / limit).clamp_min(tiny)
        inside = (w >= floor).all(dim=-1, keepdim=True).unsqueeze(-1)
        clamped = sym((q * torch.maximum(w, floor).unsqueeze(-2)) @ q.mT)
        return torch.complex(z.real, torch.where(inside, y, clamped))

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """Y sym(G) Y."""
        y = x.imag.to(x.dtype)
        return sym(y @ sym(_complex(g)) @ y)

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """Y⁻¹ R Y⁻¹."""
        y = x.imag.to(x.dtype)
        return sym(solve(y, solve(y, r).mT).mT)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """Re tr(Y⁻¹ U Y⁻¹ V̄)."""
        v = u if v is None else v
        y = x.imag.to(x.dtype)
        a = solve(y, _complex(u))
        b = solve(y, _complex(v))
        return self._reduce((a * b.mT.conj()).real, keepdim)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """sqrt(Σ (2 artanh σₖ)²) over the singular values of the moved, Cayley-mapped Z₂."""
        _, inv_half = _spd_root_pair(x.imag)
        inv_half = inv_half.to(x.dtype)
        z = sym(inv_half @ (y - x.real.to(x.dtype)) @ inv_half)
        sigma = torch.linalg.svdvals(inverse_cayley(z))
        sigma = sigma.clamp(max=1 - torch.finfo(sigma.dtype).eps)
        d = (2 * torch.atanh(sigma)).square().sum(-1).sqrt()
        return d[..., None, None] if keepdim else d

    def violation(self, x: Tensor) -> Tensor:
        """Asymmetry of Z relative to its size, or 1 where Y is not positive definite."""
        failed = torch.linalg.cholesky_ex(sym(x.imag)).info > 0
        asym = _asym(x)
        return torch.where(failed, torch.ones_like(asym), asym).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 0.5) -> Tensor:
        """X = std·sym(Gaussian), Y = expm(std·sym(Gaussian))."""
        real = self._draw_dtype(draw)
        a = std * sym(draw.randn(shape, dtype=real))
        w, q = torch.linalg.eigh(std * sym(draw.randn(shape, dtype=real)))
        b = sym((q * w.exp().unsqueeze(-2)) @ q.mT)
        return torch.complex(a, b)

    def _origin(self, zeros: Tensor) -> Tensor:
        """iI."""
        z = _complex(zeros)
        return z + 1j * _eye_like(z)

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        ok, why = self._check_symmetric(x, atol, rtol)
        if not ok:
            return ok, why
        low = float(torch.linalg.eigvalsh(sym(x.imag)).min())
        if not low > 0:
            return (
                False,
                f"the smallest eigenvalue of Im Z is {low:.3e}: Im Z must be positive definite",
            )
        return True, None


class BoundedDomain(_Siegel):
    """Siegel bounded domain {Z = Zᵀ ∈ ℂ^{n×n} : I − Z̄Z ≻ 0} (see the module docstring)."""

    def _ab(self, z: Tensor) -> tuple[Tensor, Tensor]:
        eye = _eye_like(z)
        a = eye - z.conj() @ z
        return a, eye - z @ z.conj()

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """The upper half space's transport conjugated by the Cayley transform C (an
        isometry): dC_y⁻¹ ∘ T(C(x) → C(y)) ∘ dC_x, with dC_Z[V] = 2i(I − Z)⁻¹V(I − Z)⁻¹."""
        x, y, v = _complex(x), _complex(y), sym(_complex(v))
        eye = _eye_like(x)
        mx, my = eye - x, eye - y
        w = 2j * solve(mx, solve(mx, v).mT)  # (I − x)⁻¹ V (I − x)⁻¹ (symmetric matrices)
        w = _congruence_transport(cayley(x), cayley(y), sym(w))
        return sym(my @ w @ my / 2j)

    def _boundary_factor(self, z: Tensor, u: Tensor) -> Tensor:
        """min(1, ½(1 − ‖Z‖₂) / ‖U‖₂): ‖Z + αU‖₂ ≤ ‖Z‖₂ + ½(1 − ‖Z‖₂)."""
        room = (1 - torch.linalg.matrix_norm(z, ord=2)).clamp_min(0)
        size = torch.linalg.matrix_norm(u, ord=2).clamp_min(torch.finfo(room.dtype).tiny)
        alpha = (_BOUNDARY_FRACTION * room / size).clamp(max=1)
        return alpha[..., None, None]

    def projx(self, x: Tensor) -> Tensor:
        """sym(Z) with its singular values clamped to at most 1 − eps (unchanged inside)."""
        z = sym(_complex(x))
        u, s, vh = torch.linalg.svd(z)
        top = 1 - boundary_eps(s.dtype)
        inside = (s <= top).all(dim=-1, keepdim=True).unsqueeze(-1)
        clamped = sym((u * s.clamp(max=top).to(z.dtype).unsqueeze(-2)) @ vh)
        return torch.where(inside, z, clamped)

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        """B sym(G) A / 4, A = I − Z̄Z, B = I − ZZ̄."""
        a, b = self._ab(x)
        return sym(b @ sym(_complex(g)) @ a) / 4

    def rgrad2egrad(self, x: Tensor, r: Tensor) -> Tensor:
        """4 B⁻¹ R A⁻¹."""
        a, b = self._ab(x)
        return sym(4 * solve(a.mT, solve(b, r).mT).mT)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, keepdim: bool = False) -> Tensor:
        """4 Re tr(B⁻¹ U A⁻¹ V̄)."""
        v = u if v is None else v
        a, b = self._ab(x)
        left = solve(b, _complex(u))
        right = solve(a, _complex(v).conj())
        return 4 * self._reduce((left * right.mT).real, keepdim)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        """The upper half space distance of the Cayley transforms."""
        return UpperHalf().dist(cayley(x), cayley(y), keepdim=keepdim)

    def violation(self, x: Tensor) -> Tensor:
        """Asymmetry of Z relative to its size, or 1 where I − Z̄Z is not positive definite."""
        a, _ = self._ab(x)
        failed = torch.linalg.cholesky_ex((a + a.mT.conj()) / 2).info > 0
        asym = _asym(x)
        return torch.where(failed, torch.ones_like(asym), asym).max()

    def _random(self, shape: torch.Size, draw: Draw, std: float = 0.5) -> Tensor:
        """The inverse Cayley transform of a random upper half space point."""
        return inverse_cayley(UpperHalf()._random(shape, draw, std))

    def _origin(self, zeros: Tensor) -> Tensor:
        """The zero matrix."""
        return _complex(zeros)

    def _check_point(self, x: Tensor, atol: float, rtol: float) -> tuple[bool, str | None]:
        ok, why = self._check_symmetric(x, atol, rtol)
        if not ok:
            return ok, why
        top = float(torch.linalg.svdvals(x).max())
        if not top < 1:
            return (
                False,
                f"the largest singular value of Z is {top:.6g}: I − Z̄Z must be positive definite",
            )
        return True, None
