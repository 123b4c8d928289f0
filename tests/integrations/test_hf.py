"""SAM under the Hugging Face ``Trainer`` (CPU): ``SAMTrainer`` checked bitwise against the
same SAM steps run by hand on the same batches, with and without gradient accumulation, and its
GradScaler path (a CPU scaler given to the ``Trainer``'s accelerator)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import TrainingArguments

from torchvalley.integrations.hf import SAMTrainer
from torchvalley.manifolds import ManifoldParameter, Sphere
from torchvalley.optim import SAM

STEPS, BATCH = 3, 8
SAM_KWARGS = {"rho": 0.1, "lr": 0.1, "momentum": 0.9}


class Regressor(nn.Module):
    """A tiny model with the ``Trainer``'s interface: keyword inputs, ``labels``, a loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        output = self.net(x)
        loss = None if labels is None else F.mse_loss(output, labels)
        return {"loss": loss, "logits": output}


class Data(torch.utils.data.Dataset):
    def __init__(self, repeats: int = 1) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(repeats * STEPS * BATCH, 4, generator=generator)
        self.y = torch.sin(self.x.sum(dim=1, keepdim=True))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "labels": self.y[index]}


def arguments(tmp_path, **overrides) -> TrainingArguments:
    options = {
        "output_dir": str(tmp_path),
        "max_steps": STEPS,
        "per_device_train_batch_size": BATCH,
        "learning_rate": SAM_KWARGS["lr"],
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,  # no clipping by the loop: compare the bare SAM steps
        "train_sampling_strategy": "sequential",
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **overrides,
    }
    return TrainingArguments(**options)


def by_hand(
    micro_batches: int = 1, scaler=None, grouped: bool = False, data: Data | None = None
) -> list[torch.Tensor]:
    """The same SAM steps without the Trainer (``micro_batches`` per step, each batch BATCH).

    ``grouped``: the Trainer's two param groups (weights with weight decay, then biases).
    """
    model = Regressor()
    params = list(model.parameters())
    if grouped:
        params = [{"params": params[0::2]}, {"params": params[1::2]}]
    opt = SAM(params, "sgd", **SAM_KWARGS)
    data = Data() if data is None else data
    batches = list(zip(data.x.split(BATCH), data.y.split(BATCH), strict=True))
    for step in range(STEPS):
        window = batches[step * micro_batches : (step + 1) * micro_batches]
        closures = []
        for x, y in window:

            def closure(x=x, y=y) -> torch.Tensor:
                opt.zero_grad()
                loss = model(x, y)["loss"]
                if scaler is None:
                    loss.backward()
                else:
                    scaler.scale(loss).backward()
                return loss

            closures.append(closure)
        if micro_batches == 1:
            opt.step(closures[0], grad_scaler=scaler)
        else:
            opt.step_micro_batches(closures)
    return list(model.parameters())


def train(
    tmp_path, sam_from: str = "instance", model=None, dataset=None, **overrides
) -> SAMTrainer:
    model = Regressor() if model is None else model
    if sam_from == "instance":
        optimizer = {"optimizers": (SAM(model.parameters(), "sgd", **SAM_KWARGS), None)}
    else:
        kwargs = {"base_optimizer": "sgd", **SAM_KWARGS}
        optimizer = {"optimizer_cls_and_kwargs": (SAM, kwargs)}
    trainer = SAMTrainer(
        model=model,
        args=arguments(tmp_path, **overrides),
        train_dataset=Data() if dataset is None else dataset,
        **optimizer,
    )
    return trainer


def assert_same(model: nn.Module, expected: list[torch.Tensor]) -> None:
    for p, q in zip(model.parameters(), expected, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("sam_from", ["instance", "cls_and_kwargs"])
def test_sam_trainer_equals_sam_by_hand(tmp_path, sam_from):
    trainer = train(tmp_path, sam_from)
    result = trainer.train()
    assert trainer.state.global_step == STEPS
    assert isinstance(trainer.sam, SAM)
    assert len(trainer.sam.param_groups) == (1 if sam_from == "instance" else 2)
    assert_same(trainer.model, by_hand(grouped=sam_from == "cls_and_kwargs"))
    assert math.isfinite(result.training_loss)


def test_sam_trainer_gradient_accumulation_is_per_micro_batch(tmp_path):
    # Two micro-batches per step: one ascent each, perturbed gradients averaged. The oracle is
    # SAM.step_micro_batches (itself checked against an independent m-sharpness simulation in
    # tests/optim/test_sam_systems.py). Bitwise: the Trainer's loss / 2 halves each gradient
    # exactly, SAM's ascent ignores that scale, and g1 / 2 + g2 / 2 == (g1 + g2) * 0.5 in float.
    trainer = train(tmp_path, gradient_accumulation_steps=2, dataset=Data(repeats=2))
    trainer.train()
    assert trainer.state.global_step == STEPS
    assert_same(trainer.model, by_hand(micro_batches=2, data=Data(repeats=2)))


def _with_cpu_scaler(trainer: SAMTrainer, init_scale: float) -> torch.amp.GradScaler:
    # accelerate only creates a GradScaler for fp16 on GPUs; give its accelerator a CPU one
    # (used by accelerator.backward to scale the loss and by the prepared optimizer's step).
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer.accelerator.scaler = scaler
    return scaler


def test_sam_trainer_with_grad_scaler_equals_sam_by_hand(tmp_path):
    trainer = train(tmp_path)
    scaler = _with_cpu_scaler(trainer, 2.0**12)
    trainer.train()
    reference_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    assert_same(trainer.model, by_hand(scaler=reference_scaler))
    assert scaler.get_scale() == reference_scaler.get_scale()


class Overflowing(Regressor):
    """Its first loss is infinite."""

    calls = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        output = super().forward(x, labels)
        Overflowing.calls += 1
        if Overflowing.calls == 1:
            output["loss"] = output["loss"] * math.inf
        return output


def test_sam_trainer_first_pass_overflow_skips_the_step(tmp_path):
    Overflowing.calls = 0
    trainer = train(tmp_path, model=Overflowing(), max_steps=1)
    scaler = _with_cpu_scaler(trainer, 2.0**12)
    trainer.train()
    assert Overflowing.calls == 1  # no perturbed pass
    assert_same(trainer.model, list(Regressor().parameters()))  # step skipped, w restored
    assert scaler.get_scale() == 2.0**11


def test_sam_trainer_refuses_other_optimizers(tmp_path):
    model = Regressor()
    trainer = SAMTrainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=Data(),
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
    )
    with pytest.raises(TypeError, match="needs a SAM optimizer"):
        trainer.train()


class SphereRegressor(Regressor):
    """``Regressor`` whose output is ``<h, d>`` with ``d`` on the unit sphere (curved)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.direction = ManifoldParameter(Sphere().random(3), Sphere())

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        output = (self.net(x) * self.direction).sum(dim=1, keepdim=True)
        loss = None if labels is None else F.mse_loss(output, labels)
        return {"loss": loss, "logits": output}


def test_sam_trainer_pulls_riemannian_gradients_back_like_sam_by_hand(tmp_path):
    # The trainer ends the perturbed pass itself: the sphere parameter's gradient, taken at
    # the ascent point, must be transported back to w as SAM.second_step does.
    model = SphereRegressor()
    sam = SAM(model.parameters(), "sgd", ascent="riemannian", **SAM_KWARGS)
    trainer = SAMTrainer(
        model=model, args=arguments(tmp_path), train_dataset=Data(), optimizers=(sam, None)
    )
    trainer.train()

    expected = SphereRegressor()
    opt = SAM(expected.parameters(), "sgd", ascent="riemannian", **SAM_KWARGS)
    data = Data()
    for x, y in zip(data.x.split(BATCH), data.y.split(BATCH), strict=True):

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = expected(x, y)["loss"]
            loss.backward()
            return loss

        opt.step(closure)
    assert_same(trainer.model, list(expected.parameters()))
