"""SAM under PyTorch Lightning (CPU): automatic optimization (fp32), manual optimization with
``sam_manual_step`` (fp32 and ``16-mixed`` with a CPU GradScaler), each checked bitwise against
the same SAM steps run by hand on the same batches."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from torchvalley.integrations.lightning import sam_manual_step, sam_model  # noqa: E402
from torchvalley.optim import SAM  # noqa: E402

STEPS, BATCH = 3, 8
SAM_KWARGS = {"rho": 0.1, "lr": 0.1, "momentum": 0.9}

pytestmark = [
    # Lightning's advice for real training runs, irrelevant to a 3-step CPU test: more
    # DataLoader workers (PossibleUserWarning, a UserWarning subclass).
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
    # Lightning 2.6 builds torch.utils._pytree.LeafSpec, deprecated by torch 2.13 (their bug).
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 4, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return list(zip(x.split(BATCH), y.split(BATCH), strict=True))


def loader() -> DataLoader:
    x, y = (torch.cat(t) for t in zip(*make_batches(), strict=True))
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


class Module(pl.LightningModule):
    def __init__(self, automatic: bool, ascent: str = "sam") -> None:
        super().__init__()
        self.automatic_optimization = automatic
        self.ascent = ascent
        self.net = make_net()
        self.losses: list[torch.Tensor] = []
        self.training_step_calls = 0

    def configure_optimizers(self):
        return SAM(
            self.parameters(), "sgd", ascent=self.ascent, model=sam_model(self), **SAM_KWARGS
        )

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        x, y = batch
        if self.automatic_optimization:
            return F.mse_loss(self.net(x), y)
        loss = sam_manual_step(self, lambda: F.mse_loss(self.net(x), y))
        self.losses.append(loss)
        return None


def fit(module: Module, **trainer_kwargs) -> pl.Trainer:
    options = {
        "max_steps": STEPS,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **trainer_kwargs,
    }
    trainer = pl.Trainer(**options)
    trainer.fit(module, loader())
    return trainer


def by_hand(ascent: str = "sam", scaler: torch.amp.GradScaler | None = None):
    """The same SAM steps without Lightning: (parameters, clean-pass losses)."""
    net = make_net()
    opt = SAM(net.parameters(), "sgd", ascent=ascent, model=net, **SAM_KWARGS)
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
    return list(net.parameters()), losses


def assert_same(module: Module, expected: list[torch.Tensor]) -> None:
    for p, q in zip(module.net.parameters(), expected, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("ascent", ["sam", "fisher"])
def test_automatic_optimization_fp32_equals_sam_by_hand(ascent):
    # Lightning calls SAM.step(closure); SAM runs the closure (training_step + backward) twice.
    module = Module(automatic=True, ascent=ascent)
    trainer = fit(module)
    assert trainer.global_step == STEPS
    assert module.training_step_calls == 2 * STEPS
    assert_same(module, by_hand(ascent)[0])


def test_manual_optimization_fp32_equals_sam_by_hand():
    module = Module(automatic=False)
    trainer = fit(module)
    assert trainer.global_step == STEPS  # counted through LightningOptimizer.step
    expected, losses = by_hand()
    assert_same(module, expected)
    assert torch.equal(torch.stack(module.losses), torch.stack(losses))  # clean-pass losses


def test_manual_optimization_16_mixed_uses_lightnings_scaler():
    # fp16 autocast and Lightning's GradScaler on CPU (the plugin made explicitly: Lightning
    # turns precision="16-mixed" on CPU into bf16). Bitwise equal to the same scaler steps by
    # hand, and the steps are counted.
    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12)
    )
    module = Module(automatic=False)
    trainer = fit(module, plugins=[plugin])
    assert trainer.global_step == STEPS
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    expected, losses = by_hand(scaler=scaler)
    assert_same(module, expected)
    assert torch.equal(torch.stack(module.losses), torch.stack(losses))
    assert plugin.scaler.get_scale() == scaler.get_scale()


def test_manual_optimization_16_mixed_overflow_skips_the_step():
    class Overflowing(Module):
        def training_step(self, batch, batch_idx):
            x, y = batch
            calls = [0]

            def compute_loss() -> torch.Tensor:
                calls[0] += 1
                loss = F.mse_loss(self.net(x), y)
                return loss * math.inf if batch_idx == 0 and calls[0] == 1 else loss

            self.losses.append(sam_manual_step(self, compute_loss))

    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12)
    )
    module = Overflowing(automatic=False)
    fit(module, plugins=[plugin], max_steps=1)
    assert_same(module, list(make_net().parameters()))  # skipped, weights restored
    assert plugin.scaler.get_scale() == 2.0**11


def test_automatic_optimization_16_mixed_is_refused_with_a_pointer():
    # Lightning's AMP plugin calls optimizer.step() without the closure: SAM says what to do.
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(RuntimeError, match="needs a closure"):
        fit(Module(automatic=True), plugins=[plugin])


def test_sam_manual_step_refuses_automatic_optimization():
    class Wrong(Module):
        def training_step(self, batch, batch_idx):
            return sam_manual_step(self, lambda: F.mse_loss(self.net(batch[0]), batch[1]))

    with pytest.raises(ValueError, match="manual optimization"):
        fit(Wrong(automatic=True))


def test_sam_model_is_the_module_without_ddp():
    module = Module(automatic=True)
    assert sam_model(module) is module
