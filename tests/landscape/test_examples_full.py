"""The theory examples at full size (``make test-slow``): depth-4 deep linear alignment over
20,000 gradient steps (Ji & Telgarsky 2019)."""

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_deep_linear_alignment_full_run():
    example = _load("deep_linear_alignment")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The example's defaults: 40 points in 2-D, width 10, depth 4, lr 0.2, init 0.05.
        x, y = example.separable_data(40, 2, 0)
        svm = example.max_margin_direction(x, y)
        net = example.deep_linear([2, 10, 10, 10, 1], 0.05, 0)
        history = example.train(net, x, y, svm, lr=0.2, steps=20000)
    finally:
        torch.set_num_threads(threads)
    step, loss, report = history[-1]
    assert step == 20000 and loss < 1e-3
    # The paper's asymptotics: every layer near rank one, adjacent layers aligned, and the
    # end-to-end predictor along the max-margin direction.
    assert report.min_ratio > 0.99
    assert report.min_adjacent > 0.999
    assert report.predictor_alignment > 0.999
