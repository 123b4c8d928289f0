"""Points entering off their manifold, 16-bit points, too-small shapes, the Stiefel default.

Issue 20 items 4, 5, 16 (manifold part) and 20. Oracles: the manifolds' own closed-form
violations (max |XᵀX − I|, |⟨x, x⟩_L + k|), the dtype's machine epsilon, and the shapes that
hold one point.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchvalley.manifolds import (
    Curvature,
    Euclidean,
    Lorentz,
    ManifoldParameter,
    Oblique,
    PoincareBall,
    Product,
    Sphere,
    Stiefel,
    default_tolerance,
)
from torchvalley.optim.fgsgd import FGSGD
from torchvalley.optim.riemannian import RiemannianAdagrad, RiemannianAdam, RiemannianSGD


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- item 4: a point off its manifold is detected where it enters ---------------------------------
def _module_with(manifold, data):
    module = nn.Module()
    module.w = ManifoldParameter(data, manifold)
    return module


def test_module_load_of_an_off_manifold_point_is_rejected_at_the_next_step():
    """Before: Stiefel(Cayley) kept the violation (3.09) forever; now the step refuses it."""
    m = Stiefel("cayley")
    module = _module_with(m, m.random(6, 3, generator=_gen(0)))
    opt = RiemannianSGD(module.parameters(), lr=0.01, momentum=0.9)
    bad = m.random(6, 3, generator=_gen(1)) * 2.0  # XᵀX = 4I: violation 3
    module.load_state_dict({"w": bad})
    assert float(m.violation(module.w.detach())) == pytest.approx(3.0, abs=1e-5)
    module.w.grad = torch.randn(6, 3, generator=_gen(2))
    with pytest.raises(ValueError, match=r"not a point of Stiefel.*XᵀX − I.*projx"):
        opt.step()
    module.w.proj_()  # the fix the message names
    opt.step()
    assert float(m.violation(module.w.detach())) < 1e-5


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam, RiemannianAdagrad, FGSGD])
def test_off_manifold_lorentz_point_is_rejected_at_the_first_step_not_nan(cls):
    """Before: RAdam on an off-manifold Lorentz point gave NaN after one step."""
    x = Lorentz().random(4, 3, generator=_gen(0), dtype=torch.float64)
    p = ManifoldParameter(x, Lorentz())
    with torch.no_grad():
        p[:, 0] += 1.0  # off the hyperboloid, as a user's copy_ would leave it
    opt = cls([p], lr=0.1)
    p.grad = torch.randn(4, 3, generator=_gen(1), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not a point of Lorentz.*project"):
        opt.step()


@pytest.mark.parametrize("cls", [RiemannianSGD, RiemannianAdam, RiemannianAdagrad])
def test_optimizer_load_state_dict_checks_the_points(cls):
    m = Sphere()
    p = ManifoldParameter(m.random(3, 4, generator=_gen(0)), m)
    opt = cls([p], lr=0.1)
    p.grad = torch.randn(3, 4, generator=_gen(1))
    opt.step()
    saved = opt.state_dict()
    with torch.no_grad():
        p.mul_(3.0)
    with pytest.raises(ValueError, match=r"not a point of Sphere.*when the optimizer state"):
        cls([p], lr=0.1).load_state_dict(saved)


def test_membership_tolerance_is_by_dtype():
    assert default_tolerance(torch.float64) == default_tolerance(torch.float32) == 1e-5
    assert default_tolerance(torch.float16) == 4 * torch.finfo(torch.float16).eps
    assert default_tolerance(torch.bfloat16) == 4 * torch.finfo(torch.bfloat16).eps


def test_own_drift_and_learnable_curvature_are_not_errors():
    """Rounding-level drift passes the entry check; a ball whose c moves is re-projected."""
    m = Sphere()
    p = ManifoldParameter(m.random(5, 4, generator=_gen(0)), m)
    opt = RiemannianAdam([p], lr=0.05)
    with torch.no_grad():
        p.mul_(1 + 5e-5)  # 5e-5 off: within 10× the float32 tolerance
    p.grad = torch.randn(5, 4, generator=_gen(1))
    opt.step()
    assert PoincareBall().strict_membership and not PoincareBall(Curvature(1.0)).strict_membership


# -- item 16: 16-bit Stiefel and Lorentz points -------------------------------------------------
LOW = (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(
    ("manifold", "shape"),
    [
        (Stiefel(), (8, 3)),
        (Stiefel("cayley"), (3, 8)),
        (Lorentz(), (5, 4)),
        (Lorentz(2.0), (40, 6)),
    ],
)
def test_sixteen_bit_points_can_be_created_projected_and_stepped(manifold, shape, dtype):
    x = manifold.random(*shape, generator=_gen(0), dtype=torch.float64)
    eps = torch.finfo(dtype).eps
    for project in (False, True):
        p = ManifoldParameter(x.to(dtype), manifold, project=project)
        assert p.dtype == dtype
    r = manifold.random(*shape, generator=_gen(1), dtype=dtype)
    assert r.dtype == dtype and manifold.check_point(r)
    # A clearly-off point is still refused, and the hint (project=True) works.
    off = x.to(dtype) * 1.5
    with pytest.raises(ValueError, match="project=True"):
        ManifoldParameter(off, manifold)
    p = ManifoldParameter(off, manifold, project=True)
    for cls in (RiemannianSGD, RiemannianAdam):
        q = ManifoldParameter(x.to(dtype), manifold)
        opt = cls([q], lr=0.01)
        for seed in range(5):
            q.grad = torch.randn(shape, generator=_gen(seed), dtype=torch.float64).to(dtype)
            opt.step()
        # rounding of the stored entries only (a few eps, relative for the hyperboloid)
        assert manifold.check_point(q), float(manifold.violation(q.detach().double()))
    del p, eps


# -- item 20: shapes too small for one point ---------------------------------------------------
@pytest.mark.parametrize(
    ("manifold", "shape", "minimum"),
    [
        (Sphere(), (), r"\(1,\)"),
        (PoincareBall(), (), r"\(1,\)"),
        (Stiefel(), (), r"\(1, 1\)"),
        (Stiefel(), (4,), r"\(1, 1\)"),
        (Lorentz(), (3, 1), r"\(2,\)"),
        (Oblique(), (3,), r"\(1, 1\)"),
        (Euclidean(ndim=1), (), r"\(1,\)"),
        (Product((Sphere(), 3), (Euclidean(), 2)), (4,), r"\(5,\)"),
    ],
)
def test_random_with_a_too_small_shape_names_the_minimum(manifold, shape, minimum):
    with pytest.raises(ValueError, match=f"too small.*at least {minimum}"):
        manifold.random(*shape)
    with pytest.raises(ValueError, match=f"at least {minimum}"):
        manifold.random(shape)  # one tuple: normalized the same way


@pytest.mark.parametrize("manifold", [PoincareBall(), Lorentz()])
def test_origin_with_a_too_small_shape_names_the_minimum(manifold):
    with pytest.raises(ValueError, match="at least"):
        manifold.origin()
    assert manifold.check_point(manifold.origin(3, manifold.ndim + 2))


# -- item 5: the Stiefel default retraction does not drift ----------------------------------------
def test_stiefel_default_retraction_stays_at_rounding_level_in_float32():
    """Default QR: ≤ 1e-6 after 3000 float32 steps (Cayley drifts past it: 7.9e-6 at 5k)."""
    assert Stiefel().retraction == "qr"
    m = Stiefel()
    g = _gen(0)
    x = ManifoldParameter(m.random(32, 8, generator=g), m)
    target = torch.randn(32, 8, generator=g)
    opt = RiemannianSGD([x], lr=0.05, momentum=0.9)
    for _ in range(3000):
        x.grad = (x.detach() - target) + 0.1 * torch.randn(32, 8, generator=g)
        opt.step()
    assert float(m.violation(x.detach())) <= 1e-6


# -- item 16: a state dict from another optimizer is rejected at load --------------------------
def _stepped(cls, **hp):
    m = Sphere()
    p = ManifoldParameter(m.random(3, 4, generator=_gen(0)), m)
    q = torch.nn.Parameter(torch.randn(4, 4, generator=_gen(1)))
    opt = cls([p, q], **hp)
    p.grad = torch.randn(3, 4, generator=_gen(2))
    q.grad = torch.randn(4, 4, generator=_gen(3))
    opt.step()
    return opt, [p, q]


OPTIMIZERS = {
    "rsgd": (RiemannianSGD, {"lr": 0.1, "momentum": 0.9}),
    "radam": (RiemannianAdam, {"lr": 0.1}),
    "radagrad": (RiemannianAdagrad, {"lr": 0.1}),
    "fgsgd": (FGSGD, {"lr": 0.1, "momentum": 0.9}),
    "torch-adam": (torch.optim.Adam, {"lr": 0.1}),
}


@pytest.mark.parametrize("target", ["rsgd", "radam", "radagrad", "fgsgd"])
@pytest.mark.parametrize("source", list(OPTIMIZERS))
def test_state_dict_of_another_optimizer_is_rejected_at_load(source, target):
    """Before: accepted, and the next step died with a bare KeyError."""
    source_cls, source_hp = OPTIMIZERS[source]
    saved, params = _stepped(source_cls, **source_hp)
    cls, hp = OPTIMIZERS[target]
    fresh = cls(params, **hp)
    if source == target:
        fresh.load_state_dict(saved.state_dict())
        fresh.step()  # and the loaded optimizer steps
        return
    if (source, target) == ("torch-adam", "radam"):
        # Adam's state is RAdam's; but torch's Adam moved the sphere point off the sphere.
        with pytest.raises(ValueError, match=r"not a point of Sphere.*when the optimizer state"):
            fresh.load_state_dict(saved.state_dict())
        return
    with pytest.raises(ValueError, match=r"Invalid state_dict for \w+: .*(lacks|holds)"):
        fresh.load_state_dict(saved.state_dict())


def test_torch_sgd_state_loads_into_riemannian_sgd():
    """torch.optim.SGD's state is RSGD's on Euclidean parameters: accepted, missing flags filled."""
    q = torch.nn.Parameter(torch.randn(4, generator=_gen(0)))
    q.grad = torch.ones(4)
    sgd = torch.optim.SGD([q], lr=0.1, momentum=0.9)
    sgd.step()
    rsgd = RiemannianSGD([q], lr=0.1, momentum=0.9)
    rsgd.load_state_dict(copy.deepcopy(sgd.state_dict()))  # torch's holds live buffers
    expected = q.detach().clone()
    sgd.step()
    after_sgd = q.detach().clone()
    with torch.no_grad():
        q.copy_(expected)
    rsgd.step()
    torch.testing.assert_close(q.detach(), after_sgd, rtol=0, atol=0)
