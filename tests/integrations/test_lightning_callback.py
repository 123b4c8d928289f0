"""SAMCallback (CPU): a plain SGD from ``configure_optimizers`` turned into SAM by the callback,
checked against the same SAM steps run by hand on the same batches: fp32 (SAM and Fisher-SAM,
BatchNorm statistics of the clean pass), ``16-mixed`` with a CPU GradScaler (overflow in either
pass skips the step) and ``gradient_clip_val`` (clips the final gradient only)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from torchvalley.integrations.lightning import SAMCallback  # noqa: E402
from torchvalley.manifolds import ManifoldParameter, Sphere  # noqa: E402
from torchvalley.optim import SAM  # noqa: E402

STEPS, BATCH = 3, 8
RHO, LR, MOMENTUM = 0.1, 0.1, 0.9
INIT_SCALE = 2.0**12

pytestmark = [
    # Lightning's advice for real training runs, irrelevant to a 3-step CPU test: more
    # DataLoader workers (PossibleUserWarning, a UserWarning subclass).
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
    # Lightning 2.6 builds torch.utils._pytree.LeafSpec, deprecated by torch 2.13 (their bug).
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


class SphereDot(nn.Module):
    """``<h, d>`` with ``d`` on the unit sphere: a curved parameter for Riemannian ascent."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.direction = ManifoldParameter(Sphere().random(dim), Sphere())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h * self.direction).sum(dim=1, keepdim=True)


def make_net(sphere: bool = False) -> nn.Module:
    torch.manual_seed(0)
    if sphere:
        head = [nn.Linear(8, 3), SphereDot(3)]
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), *head)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 4, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return list(zip(x.split(BATCH), y.split(BATCH), strict=True))


def loader() -> DataLoader:
    x, y = (torch.cat(t) for t in zip(*make_batches(), strict=True))
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


class Module(pl.LightningModule):
    """An ordinary module: plain SGD with momentum, nothing about SAM."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.training_step_calls = 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}


def fit(module: pl.LightningModule, callback: SAMCallback, **trainer_kwargs) -> pl.Trainer:
    options = {
        "max_steps": STEPS,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [callback],
        **trainer_kwargs,
    }
    trainer = pl.Trainer(**options)
    trainer.fit(module, loader())
    return trainer


def by_hand(ascent="sam", scaler=None, max_grad_norm=None, sphere=False):
    """The same SAM steps without Lightning: (net, clean-pass losses)."""
    net = make_net(sphere)
    opt = SAM(
        net.parameters(),
        "sgd",
        rho=RHO,
        ascent=ascent,
        model=net,
        lr=LR,
        momentum=MOMENTUM,
        max_grad_norm=max_grad_norm,
    )
    losses = []
    for x, y in make_batches():

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            if scaler is None:
                loss = F.mse_loss(net(x), y)
                loss.backward()
            else:
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.mse_loss(net(x), y)
                scaler.scale(loss).backward()
            return loss.detach()

        losses.append(opt.step(closure, grad_scaler=scaler))
    return net, losses


def assert_same_state(module: Module, expected: nn.Module) -> None:
    """Parameters and BatchNorm buffers (running statistics, num_batches_tracked) bitwise."""
    for p, q in zip(module.net.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def mixed_precision() -> MixedPrecision:
    # fp16 autocast and a GradScaler on CPU, made explicitly: Lightning turns
    # precision="16-mixed" on CPU into bf16.
    return MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    )


@pytest.mark.parametrize("ascent", ["sam", "fisher"])
def test_fp32_equals_sam_by_hand(ascent):
    module = Module()
    trainer = fit(module, SAMCallback(rho=RHO, ascent=ascent))
    assert trainer.global_step == STEPS
    assert module.training_step_calls == 2 * STEPS  # clean and perturbed pass
    expected, losses = by_hand(ascent)
    assert_same_state(module, expected)
    bn = module.net[1]
    assert bn.num_batches_tracked.item() == STEPS  # the clean pass only (bn_statistics="clean")
    # self.log is muted in the perturbed pass: the logged loss is the last clean-pass loss.
    assert torch.equal(trainer.callback_metrics["train_loss"], losses[-1])


def test_riemannian_ascent_pulls_the_gradient_back_like_sam_by_hand():
    # The callback ends the perturbed pass itself: the sphere parameter's gradient, taken at
    # the ascent point, must be transported back to w as SAM.second_step does.
    class SphereModule(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net(sphere=True)

    module = SphereModule()
    fit(module, SAMCallback(rho=RHO, ascent="riemannian"))
    expected, _ = by_hand("riemannian", sphere=True)
    assert_same_state(module, expected)


def test_fp32_differs_from_plain_sgd():
    # Guard against a callback that does nothing: SAM's gradient is not SGD's.
    module = Module()
    fit(module, SAMCallback(rho=RHO))
    plain = Module()
    fit(plain, SAMCallback(rho=0.0))  # rho=0: eps = 0, the perturbed pass equals the clean one
    assert not torch.equal(module.net[0].weight, plain.net[0].weight)


def test_16_mixed_equals_sam_with_grad_scaler_by_hand():
    # Lightning's AMP plugin: closure (scaled clean backward), unscale_, the callback
    # (ascent, scaled perturbed backward, unscaled with the same inverse scale), scaler.step.
    # The same operations as SAM.step(closure, grad_scaler=...): bitwise equal.
    plugin = mixed_precision()
    module = Module()
    trainer = fit(module, SAMCallback(rho=RHO), plugins=[plugin])
    assert trainer.global_step == STEPS
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    expected, _ = by_hand(scaler=scaler)
    assert_same_state(module, expected)
    assert plugin.scaler.get_scale() == scaler.get_scale()


def test_bf16_mixed_runs_without_a_scaler():
    # No GradScaler: the callback runs both passes under the plugin's bf16 autocast. Checked
    # for running and updating the weights only (bf16 rounding differs from any fp32 reference).
    module = Module()
    trainer = fit(module, SAMCallback(rho=RHO), precision="bf16-mixed")
    assert trainer.global_step == STEPS
    assert module.training_step_calls == 2 * STEPS
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert not torch.equal(module.net[0].weight, make_net()[0].weight)


@pytest.mark.parametrize("overflowing_pass", [1, 2])
def test_16_mixed_overflow_in_either_pass_skips_the_step(overflowing_pass):
    class Overflowing(Module):
        def training_step(self, batch, batch_idx):
            output = super().training_step(batch, batch_idx)
            if self.training_step_calls == overflowing_pass:
                return {"loss": output["loss"] * math.inf}
            return output

    plugin = mixed_precision()
    module = Overflowing()
    fit(module, SAMCallback(rho=RHO), plugins=[plugin], max_steps=1)
    # Clean-pass overflow: no perturbed pass.
    assert module.training_step_calls == overflowing_pass
    expected = make_net()
    for p, q in zip(module.net.parameters(), expected.parameters(), strict=True):
        assert torch.equal(p, q)  # skipped, weights restored bit for bit
    assert plugin.scaler.get_scale() == INIT_SCALE / 2  # backed off once
    assert module.net[1].num_batches_tracked.item() == 1  # clean-pass statistics kept


def test_gradient_clip_val_clips_the_final_gradient():
    # Lightning clips after on_before_optimizer_step, i.e. the perturbed-pass gradient: the
    # same as SAM(max_grad_norm=...). Lightning clips parameter by parameter
    # (clip_grad_norm_ without foreach on CPU), SAM with foreach=True: the same float ops.
    module = Module()
    fit(module, SAMCallback(rho=RHO, ascent="fisher"), gradient_clip_val=0.05)
    expected, _ = by_hand("fisher", max_grad_norm=0.05)
    unclipped, _ = by_hand("fisher")
    assert not torch.equal(expected.state_dict()["0.weight"], unclipped.state_dict()["0.weight"])
    assert_same_state(module, expected)


def test_accumulate_grad_batches_is_refused():
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        fit(Module(), SAMCallback(rho=RHO), accumulate_grad_batches=2)


def test_a_sam_optimizer_is_refused():
    class WithSAM(Module):
        def configure_optimizers(self):
            return SAM(self.parameters(), "sgd", lr=LR)

    with pytest.raises(ValueError, match="already returns a SAM"):
        fit(WithSAM(), SAMCallback(rho=RHO))


def test_options_are_validated_by_sam():
    with pytest.raises(ValueError, match="rho"):
        SAMCallback(rho=-1.0)
    with pytest.raises(ValueError, match="ascent"):
        SAMCallback(ascent="nope")
    with pytest.raises(ValueError, match="gradient_clip_val"):
        SAMCallback(max_grad_norm=1.0)
    with pytest.raises(ValueError, match="Unknown hyperparameter 'lr'"):
        SAMCallback(lr=0.1)  # base hyperparameters belong to configure_optimizers
    SAMCallback(perturb="norm", bn_statistics="both", diagnostics=True)
