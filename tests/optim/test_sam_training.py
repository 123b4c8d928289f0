"""SAM over several steps: equivalence with a reference written from the papers' equations,
Monge-SAM's saddle behaviour, exact restores, rho = 0, BatchNorm statistics, clipping and
checkpoint resume.

Oracles: an independent two-pass loop (g = grad L(w); eps from the rule's formula on flattened
vectors; g_sam = grad L(w + eps); restore w; base step), the plain base optimizer, deep copies of
the model evaluated with plain autograd, and uninterrupted runs.
"""

import copy

import pytest
import torch
from torch import nn

from torchvalley.optim import SAM

DTYPE = torch.float64


def _mlp(seed, dtype=DTYPE):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _bn_net(seed, dtype=torch.float32, bn_momentum=0.1):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.BatchNorm1d(8, momentum=None),  # cumulative moving average
        nn.Tanh(),
        nn.Linear(8, 3),
    ).to(dtype)


def _batches(n, dtype=DTYPE, size=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 5, generator=gen, dtype=dtype),
            torch.randint(0, 3, (size,), generator=gen),
        )
        for _ in range(n)
    ]


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _sam_run(net, batches, **kwargs):
    opt = SAM(net.parameters(), **kwargs)
    for batch in batches:

        def closure(batch=batch):
            opt.zero_grad()
            loss = _loss(net, batch)
            loss.backward()
            return loss

        opt.step(closure)
    return opt


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


# -- 2. equivalence with an independent reference ------------------------------------------------


def _reference_eps(rule, names, weights, grads, rho, eta=0.01, fisher_eta=1.0):
    """eps written from each paper's formula with flattened vectors."""
    g = _flat(grads)
    if rule == "sam":  # Foret et al., Alg. 1: rho g / ||g||
        scale = rho / torch.linalg.vector_norm(g)
        return [scale * gi for gi in grads]
    if rule in ("asam", "asam_davda54"):  # Kwon et al.: rho T^2 g / ||T g||
        normalize_bias = rule == "asam_davda54"
        eta = 0.0 if normalize_bias else eta
        t = [
            torch.ones_like(w) if n.endswith("bias") and not normalize_bias else w.abs() + eta
            for n, w in zip(names, weights, strict=True)
        ]
        denominator = torch.linalg.vector_norm(
            _flat([ti * gi for ti, gi in zip(t, grads, strict=False)])
        )
        return [rho * ti * ti * gi / denominator for ti, gi in zip(t, grads, strict=True)]
    if rule == "fisher":  # Kim et al.: gamma F^-1 g / sqrt(g^T F^-1 g), F = 1 + eta_F g^2
        f = 1.0 + fisher_eta * g * g
        denominator = torch.sqrt((g * g / f).sum())
        return [rho * gi / (1.0 + fisher_eta * gi * gi) / denominator for gi in grads]
    if rule == "monge":  # Jacobsen & Arvanitidis: rho g / (||g|| sqrt(1 + ||g||^2))
        n = torch.linalg.vector_norm(g)
        return [rho * gi / (n * torch.sqrt(1.0 + n * n)) for gi in grads]
    raise AssertionError(rule)


def _reference_run(model, batches, rule, rho, base_cls, base_kwargs):
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    base = base_cls(params, **base_kwargs)
    for batch in batches:
        base.zero_grad()
        _loss(model, batch).backward()
        grads = [p.grad.clone() for p in params]
        with torch.no_grad():
            eps = _reference_eps(rule, names, [p.clone() for p in params], grads, rho)
            saved = [p.clone() for p in params]
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        base.zero_grad()
        _loss(model, batch).backward()  # gradient at w + eps
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
        base.step()  # descend from w


BASES = {
    "sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.01}),
}


@pytest.mark.parametrize(
    ("rule", "base", "rho"),
    [
        ("sam", "sgd", 0.05),
        ("sam", "adamw", 0.05),
        ("asam", "sgd", 0.5),
        ("asam", "adamw", 0.5),
        ("asam_davda54", "sgd", 2.0),
        ("fisher", "sgd", 0.1),
        ("monge", "adamw", 0.3),
    ],
)
def test_matches_reference_from_paper_equations(rule, base, rho):
    batches = _batches(6)
    base_cls, base_kwargs = BASES[base]
    reference = _mlp(0)
    _reference_run(reference, batches, rule, rho, base_cls, base_kwargs)

    model = _mlp(0)
    if rule == "asam_davda54":
        rule_kwargs = {"ascent": "asam", "eta": 0.0, "normalize_bias": True}
    else:
        rule_kwargs = {"ascent": rule, "eta": 0.01, "fisher_eta": 1.0}
    _sam_run(
        model, batches, base_optimizer=base_cls, rho=rho, model=model, **rule_kwargs, **base_kwargs
    )

    plain = _mlp(0)
    plain_opt = base_cls(plain.parameters(), **base_kwargs)
    for batch in batches:
        plain_opt.zero_grad()
        _loss(plain, batch).backward()
        plain_opt.step()

    got, want = list(model.parameters()), list(reference.parameters())
    assert _max_diff(got, want) <= 1e-12
    assert _max_diff(want, list(plain.parameters())) > 1e-5  # SAM is not the plain base here


# -- 4. Monge-SAM and the saddle of (1 - t1 t2)^2 ------------------------------------------------


def _toy_losses(ascent, start, steps, rho=0.05, lr=5e-4, scale=100.0):
    theta = nn.Parameter(torch.tensor(start, dtype=DTYPE))
    opt = SAM([theta], "sgd", rho=rho, ascent=ascent, lr=lr)

    def closure():
        opt.zero_grad()
        loss = scale * (1 - theta[0] * theta[1]) ** 2
        loss.backward()
        return loss

    losses = []
    for _ in range(steps):
        opt.step(closure)
        with torch.no_grad():
            losses.append(((1 - theta[0] * theta[1]) ** 2).item())
    return losses, theta.detach()


@pytest.mark.parametrize("start", [(0.05, -0.03), (-0.04, 0.02), (0.02, -0.05)])
def test_monge_sam_leaves_saddle_that_traps_sam(start):
    # Loss 100 (1 - t1 t2)^2 (the paper's toy, as a sum over 100 identical samples): Monge's
    # radius rho / sqrt(1 + ||g||^2) is only distinct from SAM's where ||g|| is not small, so at
    # unit scale M-SAM and SAM coincide near the origin. Starting in the quadrant t1 t2 < 0:
    sam_losses, sam_theta = _toy_losses("sam", start, 1500)
    monge_losses, monge_theta = _toy_losses("monge", start, 1500)
    # SAM is pulled onto the saddle and oscillates there (loss ~ 1 over the last 300 steps).
    assert min(sam_losses[-300:]) > 0.99
    assert torch.linalg.vector_norm(sam_theta) < 0.1
    # Monge-SAM reaches the valley t1 t2 = 1 and stays there.
    assert max(monge_losses[-300:]) < 1e-3
    assert abs(monge_theta.prod().item() - 1.0) < 0.05


# -- 5. exact restore ------------------------------------------------------------------------------


@pytest.mark.parametrize("ascent", ["sam", "asam", "fisher", "monge"])
def test_lr_zero_step_restores_parameters_bitwise(ascent):
    model = _mlp(1, dtype=torch.float32)  # float32: w + eps - eps != w in general
    batch = _batches(1, dtype=torch.float32)[0]
    opt = SAM(model.parameters(), "sgd", rho=0.5, ascent=ascent, model=model, lr=0.0, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    moved = []

    def closure():
        moved.append(
            any(not torch.equal(p, w) for p, w in zip(model.parameters(), before, strict=False))
        )
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
        assert all(torch.equal(p, w) for p, w in zip(model.parameters(), before, strict=True))
    assert moved == [False, True, False, True]  # the second pass did run at w + eps


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.trunk = nn.Linear(5, 8)
        self.head_a = nn.Linear(8, 3)
        self.head_b = nn.Linear(8, 3)

    def forward(self, x, use_b=True):
        h = torch.tanh(self.trunk(x))
        return self.head_a(h) + (self.head_b(h) if use_b else 0.0)


def test_parameter_without_second_gradient_is_restored_bitwise():
    model = _TwoHeads()
    batch = _batches(1, dtype=torch.float32)[0]
    opt = SAM(model.parameters(), "sgd", rho=0.5, model=model, lr=0.1)
    head_b = [p.detach().clone() for p in model.head_b.parameters()]
    trunk = [p.detach().clone() for p in model.trunk.parameters()]
    calls = []

    def closure():
        second = len(calls) == 1
        if second:  # head_b is perturbed now, and will get no gradient in this pass
            calls.append(
                any(
                    not torch.equal(p, w)
                    for p, w in zip(model.head_b.parameters(), head_b, strict=False)
                )
            )
        else:
            calls.append(None)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(batch[0], use_b=not second), batch[1])
        loss.backward()
        return loss

    opt.step(closure)
    assert calls == [None, True]
    # head_b had no final gradient: the base skips it, so it must be back at w exactly.
    assert all(torch.equal(p, w) for p, w in zip(model.head_b.parameters(), head_b, strict=True))
    # ... while the parameters with a gradient were updated.
    assert not any(torch.equal(p, w) for p, w in zip(model.trunk.parameters(), trunk, strict=True))


# -- 6. rho = 0 is the base optimizer bit for bit ------------------------------------------------


@pytest.mark.parametrize(
    ("base", "kwargs"),
    [
        ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
        ("adam", {"lr": 1e-2}),
    ],
)
def test_rho_zero_equals_base_bitwise(base, kwargs):
    batches = _batches(4, dtype=torch.float32)
    model = _bn_net(3)
    plain = copy.deepcopy(model)
    opt = SAM(model.parameters(), base, rho=0.0, model=model, **kwargs)
    plain_opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[base](
        plain.parameters(), **kwargs
    )
    for batch in batches:

        def closure(batch=batch):
            opt.zero_grad()
            loss = _loss(model, batch)
            loss.backward()
            return loss

        opt.step(closure)
        plain_opt.zero_grad()
        _loss(plain, batch).backward()
        plain_opt.step()
        for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(model[0].weight, _bn_net(3)[0].weight)  # it did train


# -- 7. BatchNorm running statistics ------------------------------------------------------------


def _bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("ascent", ["sam", "asam"])
def test_batchnorm_statistics_from_clean_pass_only(ascent):
    model = _bn_net(4)
    batches = _batches(2, dtype=torch.float32)
    # Warm the statistics once so that num_batches_tracked > 0 (momentum=None averages by it).
    with torch.no_grad():
        model(batches[1][0])
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        oracle(batches[0][0])  # one clean forward at w
    _sam_run(model, batches[:1], base_optimizer="sgd", rho=0.5, ascent=ascent, model=model, lr=0.1)
    got, want = _bn_buffers(model), _bn_buffers(oracle)
    assert got.keys() == want.keys() and len(got) == 6
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert got["4.num_batches_tracked"].item() == 2


def test_batchnorm_statistics_both_passes_differ():
    model = _bn_net(4)
    batch = _batches(1, dtype=torch.float32)[0]
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        oracle(batch[0])
    _sam_run(
        model, [batch], base_optimizer="sgd", rho=0.5, model=model, bn_statistics="both", lr=0.1
    )
    got, want = _bn_buffers(model), _bn_buffers(oracle)
    assert got["1.num_batches_tracked"].item() == want["1.num_batches_tracked"].item() + 1 == 2
    assert not torch.equal(got["1.running_mean"], want["1.running_mean"])
    assert not torch.equal(got["4.running_var"], want["4.running_var"])


# -- 10. checkpoint resume ----------------------------------------------------------------------


def test_state_dict_resume_is_bitwise_with_adam_and_batchnorm():
    batches = _batches(6, dtype=torch.float32)
    kwargs = {"base_optimizer": "adam", "rho": 0.1, "lr": 1e-2}

    uninterrupted = _bn_net(5)
    _sam_run(uninterrupted, batches, model=uninterrupted, **kwargs)

    first = _bn_net(5)
    opt = _sam_run(first, batches[:3], model=first, **kwargs)
    checkpoint = copy.deepcopy({"model": first.state_dict(), "opt": opt.state_dict()})
    state = checkpoint["opt"]["state"]
    assert len(state) == len(list(first.parameters()))
    assert all("exp_avg" in s and "exp_avg_sq" in s for s in state.values())
    assert not torch.equal(state[0]["exp_avg"], torch.zeros_like(state[0]["exp_avg"]))

    resumed = _bn_net(99)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = SAM(resumed.parameters(), model=resumed, **kwargs)
    resumed_opt.load_state_dict(checkpoint["opt"])
    for batch in batches[3:]:

        def closure(batch=batch):
            resumed_opt.zero_grad()
            loss = _loss(resumed, batch)
            loss.backward()
            return loss

        resumed_opt.step(closure)
    for a, b in zip(
        resumed.state_dict().values(), uninterrupted.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


# -- 12. clipping the final gradient ------------------------------------------------------------


def test_max_grad_norm_clips_second_pass_gradient():
    model = _mlp(6)
    batch = _batches(1)[0]
    rho, clip = 0.5, 0.05
    # Independent: g at w, eps = rho g/||g||, g_sam at w + eps on a copy.
    copy_ = copy.deepcopy(model)
    params = list(copy_.parameters())
    g = torch.autograd.grad(_loss(copy_, batch), params)
    with torch.no_grad():
        for p, e in zip(params, _reference_eps("sam", None, None, g, rho), strict=True):
            p.add_(e)
    g_sam = _flat(torch.autograd.grad(_loss(copy_, batch), params))
    assert g_sam.norm() > 4 * clip  # clipping is active
    cosine = (g_sam @ _flat(g)) / (g_sam.norm() * _flat(g).norm())
    assert cosine < 0.999  # the two passes' directions are distinguishable

    before = _flat(model.parameters()).detach().clone()
    _sam_run(model, [batch], base_optimizer="sgd", rho=rho, max_grad_norm=clip, lr=1.0)
    step = before - _flat(model.parameters()).detach()  # lr = 1, plain SGD: the final gradient
    torch.testing.assert_close(step, clip * g_sam / g_sam.norm(), rtol=1e-5, atol=1e-12)
