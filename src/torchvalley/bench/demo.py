"""The demo suite that ``make demo`` runs: the MNIST-1D CNN with every optimizer family.

Each issue that adds an optimizer family adds its tuned spec(s) here; a test checks that every
registered family appears, so the demo always shows the whole library.
"""

from __future__ import annotations

from torchvalley.bench.specs import OptimizerSpec
from torchvalley.registry import optimizer_entries

__all__ = ["DEMO_EPOCHS", "DEMO_SEEDS", "DEMO_SPECS", "DEMO_TASK", "demo_specs"]

DEMO_TASK = "mnist1d_cnn"
DEMO_SEEDS = (0, 1, 2)
DEMO_EPOCHS: int | None = None  # None: the task's default_epochs

#: One or more specs per optimizer family (registry family name -> spec strings).
DEMO_SPECS: dict[str, tuple[str, ...]] = {
    "baseline": (
        "sgd:lr=0.05,momentum=0.9",
        "adam:lr=0.001",
        "adamw:lr=0.001,weight_decay=0.01",
    ),
    # Same base as the SGD baseline, so the rows isolate the ascent.
    "sharpness-aware": (
        "sam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.05",
        "asam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.5",
        "fisher_sam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.1",
        "sam_on:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.5",
        "monge_sam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.05",
    ),
    # BAOAB at a small temperature, matched to the SGD row: mu = exp(-0.46*0.23) = 0.90,
    # eta = lr**2 (1 + mu) / 2 = 0.050 (torchvalley.dynamics.physical_to_sgd).
    "langevin": ("baoab:lr=0.23,friction=0.46,temperature=1e-6",),
}


def demo_specs() -> list[OptimizerSpec]:
    """The demo's optimizer specs, validated against the registry.

    Raises:
        ValueError: if a registered family has no demo spec (add one to ``DEMO_SPECS``).
    """
    families = {entry.family for entry in optimizer_entries()}
    missing = sorted(families - set(DEMO_SPECS))
    if missing:
        raise ValueError(f"optimizer families without a demo spec: {', '.join(missing)}")
    return [OptimizerSpec.parse(text) for family in DEMO_SPECS for text in DEMO_SPECS[family]]
