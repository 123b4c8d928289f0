"""examples/sam_then_sample.py runs end to end, with either sampler, and its numbers make sense."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLES))
        return importlib.import_module("sam_then_sample")


@pytest.mark.parametrize("sampler", ["baoab", "sgld"])
def test_sam_then_sample(example: ModuleType, sampler: str, capsys: pytest.CaptureFixture) -> None:
    threads = torch.get_num_threads()
    argv = ["--sampler", sampler, "--train-steps", "150", "--sample-steps", "160"]
    results = example.main([*argv, "--burn-in", "40", "--thin", "20"])
    assert torch.get_num_threads() == threads  # --threads is restored

    # the collector kept steps burn_in, burn_in + thin, ... below sample_steps
    assert results["sample_steps"] == [40, 60, 80, 100, 120, 140]
    assert results["samples"] == 6
    assert results["temperature"] == pytest.approx(1 / 256)
    # half-moons with noise 0.2 are nearly separable: both predictives are far above chance
    # (0.5); 256 test points give a standard error of about 0.01 at 0.95
    for name in ("sam", "posterior"):
        metrics = results[name]
        assert metrics["accuracy"] > 0.9, (name, metrics)
        assert 0 < metrics["nll"] < math.log(2), (name, metrics)
        assert 0 <= metrics["ece"] < 0.1 and 0 <= metrics["brier"] < 0.25, (name, metrics)
    # cross-entropy curvature at a trained point is positive and finite
    assert 0 < results["sam_lambda_max"] < 1e3
    assert 0 < results["last_sample_lambda_max"] < 1e3
    out = capsys.readouterr().out
    assert "| posterior |" in out and f"{sampler} at τ = 1/256" in out


def test_two_moons_labels_and_shapes(example: ModuleType) -> None:
    generator = torch.Generator().manual_seed(0)
    points, labels = example.two_moons(500, noise=0.0, generator=generator)
    assert points.shape == (500, 2) and set(labels.tolist()) == {0, 1}
    # without noise the upper moon lies on the unit circle, the lower one on the circle of
    # radius 1 around (1, 0.5)
    upper, lower = points[labels == 0], points[labels == 1]
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(len(upper)))
    centre = torch.tensor([1.0, 0.5])
    torch.testing.assert_close((lower - centre).norm(dim=1), torch.ones(len(lower)))
