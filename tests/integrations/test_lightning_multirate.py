"""Multirate under PyTorch Lightning (CPU): automatic optimization with the
:class:`~torchvalley.integrations.lightning.MultirateBackward` mixin and manual optimization
with ``manual_backward(loss, inputs=opt.backward_inputs)``, each bitwise equal to the same
multirate steps run by hand, with the partial backward passes really partial (a hook on the
backbone counts the gradients actually computed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from torchvalley.integrations.lightning import MultirateBackward  # noqa: E402
from torchvalley.optim import Multirate  # noqa: E402

STEPS, BATCH, K = 7, 8, 3
HYPER = {"base_optimizer": "sgd", "k": K, "lr": 0.1, "momentum": 0.9}

pytestmark = [
    pytest.mark.filterwarnings("ignore:The '.*dataloader' does not have many workers"),
    # Lightning 2.6 builds torch.utils._pytree.LeafSpec, deprecated by torch 2.13 (their bug).
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def groups(net: nn.Sequential) -> list[dict]:
    return [
        {"params": list(net[0].parameters()), "rate": "slow"},
        {"params": list(net[2].parameters()), "rate": "fast"},
    ]


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 4, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return list(zip(x.split(BATCH), y.split(BATCH), strict=True))


def loader() -> DataLoader:
    x, y = (torch.cat(t) for t in zip(*batches(), strict=True))
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def count_backbone_grads(net: nn.Sequential) -> list[int]:
    """A tensor hook on the backbone's weight: counts the gradients autograd computes."""
    calls = [0]

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return grad

    net[0].weight.register_hook(hook)
    return calls


class Module(MultirateBackward, pl.LightningModule):
    def __init__(self, automatic: bool) -> None:
        super().__init__()
        self.automatic_optimization = automatic
        self.net = make_net()
        self.backbone_grads = count_backbone_grads(self.net)

    def configure_optimizers(self):
        return Multirate(groups(self.net), model=self, **HYPER)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss, inputs=opt.optimizer.backward_inputs)
        opt.step()
        return None


def fit(module: Module) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader())
    return trainer


def by_hand() -> tuple[list[torch.Tensor], dict[str, int]]:
    net = make_net()
    opt = Multirate(groups(net), model=net, **HYPER)
    for x, y in batches():
        opt.zero_grad()
        opt.backward(F.mse_loss(net(x), y))
        opt.step()
    return [p.detach() for p in net.parameters()], opt.backward_passes


FULL = -(-STEPS // K)  # one full pass per cycle of K steps


@pytest.mark.parametrize("automatic", [True, False], ids=["automatic", "manual"])
def test_lightning_multirate_equals_by_hand_and_skips_the_backbone(automatic):
    module = Module(automatic=automatic)
    trainer = fit(module)
    assert trainer.global_step == STEPS
    expected, passes = by_hand()
    assert passes == {"full": FULL, "partial": STEPS - FULL}
    for p, q in zip(module.net.parameters(), expected, strict=True):
        assert torch.equal(p, q)
    optimizer = trainer.optimizers[0]
    assert optimizer.backward_passes == passes  # counted by Multirate (mixin or step)
    assert module.backbone_grads[0] == FULL  # autograd reached the backbone on full steps only


def test_without_the_mixin_training_is_correct_but_every_pass_is_full():
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()
            self.backbone_grads = count_backbone_grads(self.net)

        def configure_optimizers(self):
            return Multirate(groups(self.net), model=self, **HYPER)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.mse_loss(self.net(x), y)

    module = Plain()
    trainer = fit(module)
    expected, _ = by_hand()
    for p, q in zip(module.net.parameters(), expected, strict=True):
        # the slow gradients of partial steps are computed but not used: same numbers
        assert torch.equal(p, q)
    assert module.backbone_grads[0] == STEPS
    assert trainer.optimizers[0].backward_passes == {"full": STEPS, "partial": 0}
