"""docs/adding-an-optimizer.md: its Python blocks run exactly as printed, and the optimizer they
define passes every conformance clause."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

import torchvalley
import torchvalley.registry
from torchvalley.testing import CONFORMANCE_CHECKS

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-an-optimizer.md"
MODULE = "torchvalley.optim.adagrad_norm"


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the ```python fenced blocks, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.S | re.M)


@pytest.fixture
def guide_namespace(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Run the guide's blocks: the first is the module file, the others run in order.

    The module is installed under its documented import path and the registry is a copy, so the
    new entry is gone after the test.
    """
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) == 3, "the guide has a module block, a catalog block and a usage block"
    module = types.ModuleType(MODULE)
    module.__file__ = str(GUIDE)
    monkeypatch.setitem(sys.modules, MODULE, module)
    monkeypatch.setattr(torchvalley.registry, "_REGISTRY", dict(torchvalley.registry._REGISTRY))
    exec(compile(blocks[0], f"{GUIDE}:module", "exec"), module.__dict__)
    namespace: dict[str, object] = {"__name__": "guide"}
    for index, block in enumerate(blocks[1:], start=1):
        exec(compile(block, f"{GUIDE}:block{index}", "exec"), namespace)
    return namespace


def test_the_guide_runs_and_its_optimizer_conforms(guide_namespace: dict[str, object]) -> None:
    entry = torchvalley.get_optimizer_entry("adagrad_norm")
    assert entry.factory.__module__ == MODULE
    # The usage block ran the whole suite (run_conformance raises on any failed clause); the
    # comment next to its print says what it prints.
    cases = sum(len(check.variants) for check in CONFORMANCE_CHECKS)
    foreach_cases = next(len(c.variants) for c in CONFORMANCE_CHECKS if c.name == "foreach")
    expected = {"passed": cases - foreach_cases, "skipped": foreach_cases}
    assert guide_namespace["counts"] == expected
    assert f"print(counts)  # {expected}" in GUIDE.read_text()


def test_the_guide_optimizer_matches_its_closed_form(guide_namespace: dict[str, object]) -> None:
    # Independent oracle: on L(θ) = ½‖θ‖² the gradient is θ, so one step from θ0 with b²_0 = c
    # gives θ1 = θ0 (1 − lr / sqrt(c + ‖θ0‖²)).
    theta0 = torch.tensor([3.0, -4.0], dtype=torch.float64)
    p = torch.nn.Parameter(theta0.clone())
    optimizer = torchvalley.create_optimizer(
        "adagrad_norm", [p], lr=0.5, initial_accumulator_value=11.0
    )
    p.grad = p.detach().clone()
    optimizer.step()
    expected = theta0 * (1 - 0.5 / (11.0 + 25.0) ** 0.5)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-15, atol=0)


def test_the_guide_refuses_bad_values(guide_namespace: dict[str, object]) -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        torchvalley.create_optimizer("adagrad_norm", [p], initial_accumulator_value=0.0)
    optimizer = torchvalley.create_optimizer("adagrad_norm", [p])
    optimizer.param_groups[0]["lr"] = -1.0  # as a buggy scheduler would
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="lr"):
        optimizer.step()
