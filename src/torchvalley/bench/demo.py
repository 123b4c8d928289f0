"""The demo suites that ``make demo`` runs.

* ``"mnist1d"``: the MNIST-1D CNN with every optimizer family. Each issue that adds an optimizer
  family adds its tuned spec(s) to :data:`DEMO_SPECS`; a test checks that every registered
  family appears, so the demo always shows the whole library.
* ``"spirals"``: the two-spirals problem of the AdLaLa paper (Leimkuhler, Matthews & Vlaar
  2019), AdLaLa (its paper partition: adaptive first layer, Langevin output layer) against BAOAB
  and Adam with the paper's hyperparameters, on fewer epochs than the paper's 4000.

``torchvalley demo`` runs :data:`DEFAULT_SUITES`; ``torchvalley demo --suite spirals`` one suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torchvalley.bench.names import DEFAULT_SUITES, DEMO_SUITES
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.registry import optimizer_entries

__all__ = [
    "DEFAULT_SUITES",
    "DEMO_EPOCHS",
    "DEMO_SEEDS",
    "DEMO_SPECS",
    "DEMO_SUITES",
    "DEMO_TASK",
    "SPIRALS_DEMO_EPOCHS",
    "DemoSuite",
    "demo_specs",
    "get_suite",
]

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
    # FG-SGD: every conv/linear weight on unit-norm rows (per output channel) scaled by its
    # initial norm; the same lr and momentum as the SGD row.
    "riemannian": ("fgsgd:lr=0.05,momentum=0.9",),
    # Multirate over the SGD row's base: the fast part every step, the slow part every k=2.
    "multirate": ("multirate:base_optimizer=sgd,lr=0.05,momentum=0.9,k=2",),
    # A2Grad-inc, the best point of the paper's grid on the MNIST-1D MLP (results/adaptive.md).
    "adaptive": ("a2grad:lips=1.0,beta=10.0",),
    # ABSA over the SGD row: batch 100 grown up to 8x by the Hessian schedule.
    "adaptive-batch": ("absa:base_optimizer=sgd,lr=0.05,momentum=0.9,max_ratio=8,duration=5",),
    # NGHF from the closure alone (Gauss-Newton and Fisher products through model hooks), CG
    # capped at the journal version's 8 iterations (results/second_order.md: 8 suffice); about
    # 15 passes a step, so the row shows cost as much as loss.
    "second_order": ("nghf:cg_max_iter=8,ng_cg_max_iter=4",),
}

#: Epochs of the spirals demo (the task's default is 1000, the paper's 4000).
SPIRALS_DEMO_EPOCHS = 300

# The paper's hyperparameters (h, gamma, tau_1 = tau_2, sigma_A, eps, xi_0); see
# benchmarks/spirals.sh for the full comparison.
_SPIRALS_LA = "lr=0.25,friction=0.1,temperature=1e-4"
_SPIRALS_SPECS: dict[str, tuple[str, ...]] = {
    "baseline": ("adam:lr=0.005",),
    "langevin": (
        f"adlala:{_SPIRALS_LA},noise_scale=0.01,thermostat_coupling=0.05,thermostat_init=0.1",
        f"baoab:{_SPIRALS_LA}",
    ),
}


@dataclasses.dataclass(frozen=True)
class DemoSuite:
    """One demo suite: a task and the optimizer specs run on it.

    Attributes:
        name: the suite's name (``torchvalley demo --suite NAME``).
        task: the benchmark task.
        specs: registry family name -> spec strings.
        seeds: model-init / data-order seeds.
        epochs: epochs per run (``None``: the task's default).
        title: a one-line description (for the report and the CLI help).
        every_family: the suite must cover every registered optimizer family.
    """

    name: str
    task: str
    specs: Mapping[str, tuple[str, ...]]
    seeds: tuple[int, ...]
    epochs: int | None
    title: str
    every_family: bool = False


def _suites() -> dict[str, DemoSuite]:
    # Built on each call so that a monkeypatched DEMO_SPECS/DEMO_TASK (tests) is seen.
    return {
        "mnist1d": DemoSuite(
            "mnist1d",
            DEMO_TASK,
            DEMO_SPECS,
            DEMO_SEEDS,
            DEMO_EPOCHS,
            "MNIST-1D CNN, every optimizer family",
            every_family=True,
        ),
        "spirals": DemoSuite(
            "spirals",
            "spirals",
            _SPIRALS_SPECS,
            (0, 1, 2),
            SPIRALS_DEMO_EPOCHS,
            f"two spirals (AdLaLa paper), AdLaLa vs BAOAB vs Adam, {SPIRALS_DEMO_EPOCHS} epochs",
        ),
    }


def get_suite(name: str) -> DemoSuite:
    """The demo suite called ``name``.

    Raises:
        ValueError: if there is no such suite.
    """
    suites = _suites()
    if name not in suites:
        raise ValueError(f"unknown demo suite {name!r}; known: {', '.join(suites)}")
    return suites[name]


def demo_specs(suite: str = "mnist1d") -> list[OptimizerSpec]:
    """A demo suite's optimizer specs, validated against the registry.

    Args:
        suite: the suite's name (a key of :data:`DEMO_SUITES`).

    Raises:
        ValueError: if the suite is unknown, or if it must cover every family and a registered
            family has no demo spec (add one to ``DEMO_SPECS``).
    """
    chosen = get_suite(suite)
    if chosen.every_family:
        families = {entry.family for entry in optimizer_entries()}
        missing = sorted(families - set(chosen.specs))
        if missing:
            raise ValueError(f"optimizer families without a demo spec: {', '.join(missing)}")
    return [OptimizerSpec.parse(text) for family in chosen.specs for text in chosen.specs[family]]
