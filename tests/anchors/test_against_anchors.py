"""Our methods against the anchor libraries, run as independent oracles.

Each test builds the same problem in float64 for torchvalley and for the anchor library
(pytorch_optimizer's SAM, geoopt's Riemannian optimizers, PyHessian's eigenvalues) and checks
that both give the same numbers. The anchors are installed by ``make test`` (the ``anchors``
extra); where one is missing the test is skipped with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchvalley
from torchvalley.manifolds import ManifoldParameter, Sphere


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _batches(n: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=g),
        )
        for _ in range(n)
    ]


def _run_sam(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> None:
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches:

        def closure(x=x, y=y):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.first_step(zero_grad=True)
        closure()
        optimizer.second_step(zero_grad=True)


@pytest.mark.parametrize(
    ("name", "ours", "theirs"),
    [
        ("sam", {}, {"adaptive": False}),
        # ASAM with eta = 0: T = |w|, the same rule as pytorch_optimizer's adaptive SAM.
        ("asam", {"eta": 0.0, "normalize_bias": True}, {"adaptive": True}),
    ],
)
def test_sam_matches_pytorch_optimizer(name, ours, theirs):
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer", reason="anchors extra missing")
    rho = 0.05 if name == "sam" else 0.5
    model_a, model_b = _mlp(), _mlp()
    opt_a = torchvalley.create_optimizer(
        name, model_a.parameters(), base_optimizer="sgd", lr=0.1, momentum=0.9, rho=rho, **ours
    )
    opt_b = pytorch_optimizer.SAM(
        model_b.parameters(),
        base_optimizer=torch.optim.SGD,
        lr=0.1,
        momentum=0.9,
        rho=rho,
        perturb_eps=0.0,  # the plain ε = ρ g / ‖g‖ of the paper, as ours
        **theirs,
    )
    batches = _batches()
    _run_sam(model_a, opt_a, batches)
    _run_sam(model_b, opt_b, batches)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        # Same maths; pytorch_optimizer sums ‖g‖² in float32, so its ε carries a relative error
        # of up to 2^-24 ≈ 6e-8: |Δε| ≤ 6e-8 ρ per step, carried by momentum over six steps.
        torch.testing.assert_close(a, b, rtol=0, atol=50 * 6e-8 * rho)


def _sphere_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x0 = x0 / x0.norm(dim=-1, keepdim=True)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a + a.T  # Rayleigh quotient on each row: minimum is the smallest eigenvalue
    return x0, a


def _run_manifold(param, optimizer, a, steps: int = 30) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.einsum("ni,ij,nj->", param, a, param)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("kind", ["rsgd", "radam", "ramsgrad"])
def test_sphere_steps_match_geoopt(kind):
    geoopt = pytest.importorskip("geoopt", reason="anchors extra missing")
    x0, a = _sphere_problem()
    ours = ManifoldParameter(x0.clone(), manifold=Sphere())
    theirs = geoopt.ManifoldParameter(x0.clone(), manifold=geoopt.Sphere())
    if kind == "rsgd":
        # geoopt's RSGD starts its momentum at (1 + m) g (it clones grad into the buffer and
        # then applies buf.mul_(m).add_(grad)); without momentum the two agree exactly.
        opt_a = torchvalley.create_optimizer("rsgd", [ours], lr=0.05)
        opt_b = geoopt.optim.RiemannianSGD([theirs], lr=0.05)
    else:
        amsgrad = kind == "ramsgrad"
        opt_a = torchvalley.create_optimizer("radam", [ours], lr=0.02, amsgrad=amsgrad)
        opt_b = geoopt.optim.RiemannianAdam([theirs], lr=0.02, amsgrad=amsgrad)
    _run_manifold(ours, opt_a, a)
    _run_manifold(theirs, opt_b, a)
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)
    assert float(Sphere().violation(ours.detach())) < 1e-12


# PyHessian calls backward(create_graph=True), which torch warns about.
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_lambda_max_matches_pyhessian():
    pyhessian = pytest.importorskip("pyhessian", reason="anchors extra missing")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    x = torch.randn(32, 6)
    y = torch.randint(0, 3, (32,))
    loss_fn = nn.CrossEntropyLoss()
    ours = torchvalley.landscape.hessian_eigenvalues(model, loss_fn, [(x, y)], k=1, tol=1e-8)
    # Dense oracle: the Hessian of the flattened parameters.
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def loss_of(vector):
        chunks = torch.split(vector, [s.numel() for s in shapes])
        tensors = {
            n: c.reshape(s)
            for (n, _), c, s in zip(model.named_parameters(), chunks, shapes, strict=True)
        }
        return loss_fn(torch.func.functional_call(model, tensors, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_of, flat)
    exact = float(torch.linalg.eigvalsh(dense.double()).max())
    theirs = pyhessian.hessian(copy.deepcopy(model), loss_fn, data=(x, y), cuda=False)
    top, _ = theirs.eigenvalues(maxIter=500, tol=1e-8, top_n=1)
    lam = float(ours.eigenvalues[0])
    assert lam == pytest.approx(exact, rel=1e-4)
    assert lam == pytest.approx(float(top[0]), rel=1e-3)
