"""The Langevin step benchmark of the thermodynamic issue: the ``sgld`` and ``baoab`` steps as a
ratio to (an SGD-momentum step + one ``torch.randn_like`` per parameter), all timed in one run of
the step benchmark (``benchmarks/step_overhead.py``) on its 11M-parameter set. Goal: <= 1.2x.
The row ``baoab-fused`` is ``baoab`` with ``fused=True`` (compiled during the warm-up steps).

Usage: python benchmarks/langevin_overhead.py [step_overhead.py options, e.g. --threads 1]
"""

import dataclasses
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

import torchvalley
from torchvalley.registry import Capabilities, OptimizerEntry

spec = importlib.util.spec_from_file_location(
    "step_overhead", Path(__file__).with_name("step_overhead.py")
)
step_overhead = importlib.util.module_from_spec(spec)
sys.modules["step_overhead"] = step_overhead  # dataclasses in it look their module up
spec.loader.exec_module(step_overhead)


class SGDPlusNoise(torch.optim.SGD):
    """The comparison point: torch's SGD-momentum step, then one Gaussian draw per element."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                torch.randn_like(p)
        return loss


reference = OptimizerEntry(
    name="sgd-momentum + randn_like",
    factory=SGDPlusNoise,
    capabilities=Capabilities(),
    hyperparameters=torchvalley.get_optimizer_entry("sgd").hyperparameters,
    summary="torch SGD(momentum=0.9) step followed by torch.randn_like for every parameter",
    family="baseline",
    example={"lr": 0.05, "momentum": 0.9},
)
entries = [reference, *(torchvalley.get_optimizer_entry(n) for n in ("sgld", "baoab"))]
entries = [dataclasses.replace(e) for e in entries]
# The opt-in fused BAOAB path (one compiled pass per tensor); the first warm-up step compiles.
baoab = entries[-1]
entries.append(
    dataclasses.replace(baoab, name="baoab-fused", example={**baoab.example, "fused": True})
)

with tempfile.TemporaryDirectory() as folder:
    raw = Path(folder) / "raw.json"
    status = step_overhead.main(
        [*sys.argv[1:], "--no-anchors", "--json", str(raw)], entries=entries
    )
    results = {r["label"].split(" (")[0]: r for r in json.loads(raw.read_text())["rows"]}
base = results[reference.name]["median_ms"]
print("\n| optimizer | ms/step (median) | ratio to SGD-momentum + randn_like |\n|---|--:|--:|")
for name in (reference.name, "sgld", "baoab", "baoab-fused"):
    print(
        f"| {name} | {results[name]['median_ms']:.3f} | {results[name]['median_ms'] / base:.2f} |"
    )
raise SystemExit(status)
