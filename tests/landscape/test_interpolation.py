"""Oracle tests of linear / layer-wise interpolation, filter-normalized slices and their plots."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchvalley.landscape import (
    filter_normalize,
    filter_normalized_direction,
    layerwise_interpolation,
    linear_interpolation,
    plot_layerwise_interpolation,
    plot_loss_contour,
    plot_loss_curve,
    random_direction_slice_1d,
    random_direction_slice_2d,
)

DTYPE = torch.float64


class Net(nn.Module):
    """Linear → BatchNorm → ReLU → Linear that logs the state it sees in each eval forward."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 6)
        self.norm = nn.BatchNorm1d(6)
        self.second = nn.Linear(6, 2)
        self.log: list[dict[str, torch.Tensor]] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training:
            seen = dict(self.named_parameters())
            seen.update(self.named_buffers())
            self.log.append({k: v.detach().clone() for k, v in seen.items()})
        return self.second(torch.relu(self.norm(self.first(inputs))))


def _net_and_states(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().to(DTYPE)
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed + 1)
    state_b = {}
    for key, value in state_a.items():
        if key.endswith("num_batches_tracked"):
            state_b[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state_b[key] = 0.5 + torch.rand(value.shape, generator=generator, dtype=DTYPE)
        else:
            state_b[key] = torch.randn(value.shape, generator=generator, dtype=DTYPE)
    return model, state_a, state_b


def _data(seed: int, n: int = 16):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, generator=generator, dtype=DTYPE)
    return inputs, torch.randint(0, 2, (n,), generator=generator)


def _accuracy(outputs, targets):
    return (outputs.argmax(1) == targets).to(DTYPE).mean()


def _direct(model, state, data, bn_batches=None):
    """The loss and accuracy of ``state`` evaluated the ordinary way, on a copy of the model.

    With ``bn_batches``, BatchNorm statistics are first recomputed by an independent loop:
    reset, cumulative average (momentum=None) over the batches in train mode.
    """
    copy_ = copy.deepcopy(model)
    copy_.load_state_dict(state)
    if bn_batches is not None:
        for module in copy_.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.reset_running_stats()
                module.momentum = None
        copy_.train()
        with torch.no_grad():
            for inputs, _ in bn_batches:
                copy_(inputs)
    copy_.eval()
    with torch.no_grad():
        outputs = copy_(data[0])
        return float(F.cross_entropy(outputs, data[1])), float(_accuracy(outputs, data[1]))


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        model.training,
        [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)],
    )


def _assert_unchanged(model, snapshot):
    state, training, momenta = snapshot
    assert model.training == training
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == momenta
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# -- linear interpolation ---------------------------------------------------------------------


def test_interpolate_mode_endpoints_are_the_losses_of_the_two_states_bit_for_bit():
    model, state_a, state_b = _net_and_states()
    data = _data(1)
    result = linear_interpolation(
        model,
        state_a,
        state_b,
        F.cross_entropy,
        data,
        steps=5,
        bn="interpolate",
        metric_fn=_accuracy,
    )
    assert result.alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.bn == "interpolate"
    assert (result.losses[0].item(), result.metrics[0].item()) == _direct(model, state_a, data)
    assert (result.losses[-1].item(), result.metrics[-1].item()) == _direct(model, state_b, data)


def test_recompute_mode_endpoints_equal_an_independent_batchnorm_recomputation():
    model, state_a, state_b = _net_and_states()
    data = _data(1)
    bn_data = [_data(seed, n) for seed, n in ((2, 8), (3, 5), (4, 11))]
    result = linear_interpolation(
        model, state_a, state_b, F.cross_entropy, data, steps=3, bn_data=bn_data
    )
    assert result.bn == "recompute"
    assert result.losses[0].item() == _direct(model, state_a, data, bn_data)[0]
    assert result.losses[-1].item() == _direct(model, state_b, data, bn_data)[0]
    # The recomputed statistics are not the stored ones: the oracle would notice a skipped step.
    assert result.losses[-1].item() != _direct(model, state_b, data)[0]


def test_the_path_of_a_linear_model_is_the_closed_form_parabola():
    # L(θ) = mean((Xθ − y)²) along θ_α = (1 − α)θ_a + αθ_b has residual (1 − α) r_a + α r_b, and
    # L(½) = ½ (L_a + L_b) − ¼ mean((r_b − r_a)²).
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(25, 4, generator=generator, dtype=DTYPE)
    targets = torch.randn(25, 1, generator=generator, dtype=DTYPE)
    model = nn.Linear(4, 1).to(DTYPE)
    state_a = {
        k: torch.randn(v.shape, generator=generator, dtype=DTYPE)
        for k, v in model.state_dict().items()
    }
    state_b = {
        k: torch.randn(v.shape, generator=generator, dtype=DTYPE)
        for k, v in model.state_dict().items()
    }

    def residual(state):
        return inputs @ state["weight"].T + state["bias"] - targets

    r_a, r_b = residual(state_a), residual(state_b)
    loss_a, loss_b = float((r_a**2).mean()), float((r_b**2).mean())
    result = linear_interpolation(
        model, state_a, state_b, F.mse_loss, (inputs, targets), steps=9, span=(-0.5, 1.5)
    )
    middle = result.losses[result.alphas == 0.5].item()
    assert middle == pytest.approx(
        0.5 * (loss_a + loss_b) - 0.25 * float(((r_b - r_a) ** 2).mean()), rel=1e-12
    )
    alphas = result.alphas[:, None, None]
    parabola = (((1 - alphas) * r_a + alphas * r_b) ** 2).mean(dim=(1, 2))
    assert torch.allclose(result.losses, parabola, rtol=1e-12, atol=0)
    assert result.alphas[0] == -0.5 and result.alphas[-1] == 1.5  # extrapolation


def test_explicit_alphas_and_tied_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.encode = nn.Linear(3, 3)
            self.decode = nn.Linear(3, 3)
            self.decode.weight = self.encode.weight

        def forward(self, inputs):
            return self.decode(self.encode(inputs))

    torch.manual_seed(0)
    model = Tied().to(DTYPE)
    state_a = {k: v.clone() for k, v in model.state_dict().items()}
    state_b = {k: v + 1 for k, v in state_a.items()}
    data = (torch.randn(4, 3, dtype=DTYPE), torch.zeros(4, 3, dtype=DTYPE))
    result = linear_interpolation(model, state_a, state_b, F.mse_loss, data, alphas=[1.0, 0.0])
    assert result.alphas.tolist() == [1.0, 0.0]
    model.load_state_dict(state_b)
    with torch.no_grad():
        assert result.losses[0].item() == float(F.mse_loss(model(data[0]), data[1]))


def test_interpolation_leaves_the_model_unchanged():
    model, state_a, state_b = _net_and_states()
    model.train()
    before = _snapshot(model)
    for bn in ("recompute", "interpolate"):
        linear_interpolation(model, state_a, state_b, F.cross_entropy, _data(1), steps=3, bn=bn)
        layerwise_interpolation(model, state_a, state_b, F.cross_entropy, _data(1), steps=2, bn=bn)
    _assert_unchanged(model, before)


# -- layer-wise interpolation -----------------------------------------------------------------


@pytest.mark.parametrize("others", ["b", "a"])
def test_layerwise_paths_move_one_group_and_leave_the_rest_bit_identical(others):
    model, state_a, state_b = _net_and_states()
    fixed = state_b if others == "b" else state_a
    alphas = [0.0, 0.3, 1.0]
    model.log.clear()
    result = layerwise_interpolation(
        model,
        state_a,
        state_b,
        F.cross_entropy,
        _data(1),
        alphas=alphas,
        bn="interpolate",
        others=others,
        include_full=False,
    )
    assert list(result.groups) == ["first", "norm", "second"]
    assert result.groups["norm"] == (
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    )
    # One eval forward per (group, α), in order: check the state the model actually ran with.
    assert len(model.log) == 3 * len(alphas)
    seen = iter(model.log)
    for members in result.groups.values():
        for alpha in alphas:
            state = next(seen)
            for key, value in state.items():
                if key not in members:
                    assert torch.equal(value, fixed[key]), (members, alpha, key)
                elif alpha == 0.0:
                    assert torch.equal(value, state_a[key]), key
                elif alpha == 1.0:
                    assert torch.equal(value, state_b[key]), key
                elif value.is_floating_point():
                    expected = (1 - alpha) * state_a[key] + alpha * state_b[key]
                    assert torch.allclose(value, expected, rtol=1e-15, atol=1e-15), key
                else:  # integer buffers from the nearer endpoint
                    assert torch.equal(value, state_a[key]), key


def test_layerwise_endpoints_and_full_curve():
    model, state_a, state_b = _net_and_states()
    data = _data(1)
    result = layerwise_interpolation(
        model, state_a, state_b, F.cross_entropy, data, steps=3, bn="interpolate"
    )
    loss_b = _direct(model, state_b, data)[0]
    for name, members in result.groups.items():
        # α = 1: every curve is at state_b; α = 0: state_b with this group at state_a.
        assert result.losses[name][-1].item() == loss_b
        mixed = {k: (state_a[k] if k in members else v) for k, v in state_b.items()}
        assert result.losses[name][0].item() == _direct(model, mixed, data)[0]
    full = linear_interpolation(
        model, state_a, state_b, F.cross_entropy, data, steps=3, bn="interpolate"
    )
    assert torch.equal(result.full.losses, full.losses)
    assert result.metrics is None and result.others == "b"


def test_layerwise_recompute_keeps_other_parameters_and_recomputes_statistics():
    model, state_a, state_b = _net_and_states()
    model.log.clear()
    result = layerwise_interpolation(
        model,
        state_a,
        state_b,
        F.cross_entropy,
        _data(1),
        groups=["first"],
        alphas=[0.5],
        include_full=False,
        metric_fn=_accuracy,
    )
    (state,) = model.log
    for key in ("norm.weight", "norm.bias", "second.weight", "second.bias"):
        assert torch.equal(state[key], state_b[key])
    assert int(state["norm.num_batches_tracked"]) == 1  # recomputed from the one batch
    assert not torch.equal(state["norm.running_mean"], state_b["norm.running_mean"])
    assert set(result.metrics) == {"first"}


def test_layerwise_group_options():
    model, state_a, state_b = _net_and_states()
    data = _data(1)

    def groups_of(groups):
        return layerwise_interpolation(
            model,
            state_a,
            state_b,
            F.cross_entropy,
            data,
            groups=groups,
            steps=2,
            bn="interpolate",
            include_full=False,
        ).groups

    assert groups_of({"head": ["norm", "second"]})["head"][-1] == "second.bias"
    assert groups_of(["second.weight"]) == {"second.weight": ("second.weight",)}
    assert list(groups_of("modules")) == ["first", "norm", "second"]
    with pytest.raises(ValueError, match="Invalid groups"):
        groups_of(["third"])
    with pytest.raises(ValueError, match="Invalid groups"):
        groups_of("layers")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"bn": "freeze"}, "bn"),
        ({"span": (1.0, 0.0)}, "span"),
        ({"alphas": []}, "alphas"),
        ({"alphas": [0.0, float("inf")]}, "alphas"),
    ],
)
def test_bad_interpolation_inputs_raise_value_errors_naming_the_argument(kwargs, name):
    model, state_a, state_b = _net_and_states()
    for function in (linear_interpolation, layerwise_interpolation):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            function(model, state_a, state_b, F.cross_entropy, _data(1), **kwargs)


def test_bad_states_and_layerwise_options_raise():
    model, state_a, state_b = _net_and_states()
    data = _data(1)
    partial = {k: v for k, v in state_b.items() if k != "second.bias"}
    with pytest.raises(ValueError, match="Invalid state_b"):
        linear_interpolation(model, state_a, partial, F.cross_entropy, data)
    with pytest.raises(ValueError, match="Invalid state_a"):
        linear_interpolation(
            model, {**state_a, "extra": torch.ones(1)}, state_b, F.cross_entropy, data
        )
    with pytest.raises(ValueError, match="Invalid state_b"):
        linear_interpolation(
            model, state_a, {**state_b, "second.bias": torch.ones(3)}, F.cross_entropy, data
        )
    with pytest.raises(ValueError, match="Invalid others"):
        layerwise_interpolation(model, state_a, state_b, F.cross_entropy, data, others="init")


# -- filter-normalized random directions ------------------------------------------------------


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(inputs))).flatten(1))


def test_filter_normalized_direction_matches_filter_norms_and_zeroes_1d_tensors():
    torch.manual_seed(0)
    model = SmallConvNet().to(DTYPE)
    with torch.no_grad():
        model.conv.weight[1].zero_()  # a dead filter gets a zero direction
    names = [n for n, _ in model.named_parameters()]
    weights = [p.detach() for p in model.parameters()]

    direction = filter_normalized_direction(model, generator=torch.Generator().manual_seed(1))

    assert len(direction) == len(weights)
    for name, d, w in zip(names, direction, weights, strict=True):
        assert d.shape == w.shape
        if w.dim() <= 1:
            assert torch.equal(d, torch.zeros_like(w)), name
        else:
            d_norms = d.reshape(d.shape[0], -1).norm(dim=1)
            w_norms = w.reshape(w.shape[0], -1).norm(dim=1)
            assert torch.allclose(d_norms, w_norms, rtol=1e-12, atol=0), name
    assert torch.equal(direction[0][1], torch.zeros_like(direction[0][1]))
    # Still random: not the weights themselves, and a different seed gives another direction.
    assert not torch.allclose(direction[0][0], weights[0][0])
    other = filter_normalized_direction(model, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other[0], direction[0])
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            direction,
            filter_normalized_direction(model, generator=torch.Generator().manual_seed(1)),
            strict=True,
        )
    )

    included = filter_normalized_direction(model, include_1d=True)
    for d, w in zip(included, weights, strict=True):
        if w.dim() <= 1:
            assert torch.equal(d, w)
    with pytest.raises(ValueError, match="Invalid direction"):
        filter_normalize((torch.ones(2, 2),), (torch.ones(3, 2),))


def _linear_problem(seed: int = 6):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(20, 3, generator=generator, dtype=DTYPE)
    targets = torch.randn(20, 2, generator=generator, dtype=DTYPE)
    torch.manual_seed(seed)
    return nn.Linear(3, 2).to(DTYPE), (inputs, targets)


def test_slice_1d_is_the_loss_at_w_for_alpha_zero_and_the_closed_form_parabola():
    model, (inputs, targets) = _linear_problem()
    before = _snapshot(model)
    result = random_direction_slice_1d(
        model, F.mse_loss, (inputs, targets), metric_fn=lambda o, t: (o - t).abs().mean()
    )
    assert len(result.alphas) == 51 and result.alphas[0] == -1.0 and result.alphas[-1] == 1.0
    with torch.no_grad():
        loss_at_w = float(F.mse_loss(model(inputs), targets))
    assert result.losses[25].item() == loss_at_w  # α = 0, bit for bit
    # The bias direction is zero, so w + αd changes only the weight: r + α X dᵀ.
    weight_direction, bias_direction = result.direction
    assert torch.equal(bias_direction, torch.zeros(2, dtype=DTYPE))
    with torch.no_grad():
        residual = model(inputs) - targets
    alphas = result.alphas[:, None, None]
    parabola = ((residual + alphas * (inputs @ weight_direction.T)) ** 2).mean(dim=(1, 2))
    assert torch.allclose(result.losses, parabola, rtol=1e-12, atol=0)
    assert result.metrics.shape == result.losses.shape
    _assert_unchanged(model, before)


def test_slice_2d_is_the_closed_form_and_contains_the_1d_slices():
    model, (inputs, targets) = _linear_problem()
    result = random_direction_slice_2d(
        model,
        F.mse_loss,
        (inputs, targets),
        steps=5,
        betas=[-1.0, 0.0, 0.5],
        include_1d=True,
        generator=torch.Generator().manual_seed(3),
    )
    assert result.losses.shape == (5, 3)
    (w1, b1), (w2, b2) = result.directions
    assert torch.equal(b1, model.bias.detach())  # include_1d: the direction is the bias itself
    with torch.no_grad():
        residual = model(inputs) - targets
    a = result.alphas[:, None, None, None]
    b = result.betas[None, :, None, None]
    moved = residual + a * (inputs @ w1.T + b1) + b * (inputs @ w2.T + b2)
    assert torch.allclose(result.losses, (moved**2).mean(dim=(2, 3)), rtol=1e-12, atol=0)
    line = random_direction_slice_1d(
        model, F.mse_loss, (inputs, targets), alphas=result.alphas, direction=(w1, b1)
    )
    assert torch.equal(result.losses[:, 1], line.losses)  # β = 0 is the 1-D slice along d₁


def test_bad_slice_inputs_raise():
    model, data = _linear_problem()
    with pytest.raises(ValueError, match="Invalid steps"):
        random_direction_slice_1d(model, F.mse_loss, data, steps=1)
    with pytest.raises(ValueError, match="Invalid direction"):
        random_direction_slice_1d(model, F.mse_loss, data, direction=(torch.ones(3),))
    with pytest.raises(ValueError, match="Invalid directions"):
        random_direction_slice_2d(model, F.mse_loss, data, directions=(None,))
    with pytest.raises(ValueError, match="Invalid bn_mode"):
        random_direction_slice_2d(model, F.mse_loss, data, bn_mode="frozen")


# -- plots ------------------------------------------------------------------------------------


def test_plots_write_pngs_without_pyplot(tmp_path):
    pytest.importorskip("matplotlib")
    had_pyplot = "matplotlib.pyplot" in sys.modules
    model, state_a, state_b = _net_and_states()
    data = _data(1)
    curve = linear_interpolation(
        model, state_a, state_b, F.cross_entropy, data, steps=5, metric_fn=_accuracy
    )
    layers = layerwise_interpolation(model, state_a, state_b, F.cross_entropy, data, steps=3)
    linear, linear_data = _linear_problem()
    plane = random_direction_slice_2d(linear, F.mse_loss, linear_data, steps=4)

    paths = [
        plot_loss_curve(curve, tmp_path / "curve.png", title="init → final", log_scale=True),
        plot_loss_curve(
            random_direction_slice_1d(linear, F.mse_loss, linear_data, steps=5),
            tmp_path / "slice.png",
        ),
        plot_loss_contour(plane, tmp_path / "sub" / "plane.png", levels=8, log_scale=True),
        plot_layerwise_interpolation(layers, tmp_path / "layers.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules
    with pytest.raises(ValueError, match="Invalid levels"):
        plot_loss_contour(plane, tmp_path / "bad.png", levels=1)
