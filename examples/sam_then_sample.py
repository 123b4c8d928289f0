"""Train with SAM, then sample the posterior with BAOAB (or SGLD), average, and look at λ_max.

A complete, small workflow (a few seconds on a laptop CPU):

1. two interleaved half-moons (256 training and 256 test points), a 2-32-32-2 tanh MLP;
2. full-batch SAM (base SGD with momentum) from a fixed initialisation;
3. ``λ_max`` of the training-loss Hessian at the SAM solution (Lanczos, ``torchvalley.landscape``);
4. a Langevin sampler started at the SAM solution, at the Bayesian temperature of the mean
   loss, ``τ = 1 / N_data`` (:func:`torchvalley.dynamics.posterior_temperature`), with a
   :class:`~torchvalley.dynamics.posterior.SampleCollector` keeping every ``thin``-th state
   after ``burn_in`` steps;
5. the posterior predictive (the average of the samples' predicted *probabilities*,
   :func:`~torchvalley.dynamics.posterior.bayesian_model_average`) against the SAM point
   estimate: accuracy, NLL, expected calibration error, Brier score
   (:func:`~torchvalley.dynamics.posterior.uq_metrics`), and ``λ_max`` at the last sample.

See ``docs/posterior.md`` for the posterior API.

Usage::

    python examples/sam_then_sample.py [--sampler {baoab,sgld}] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import torchvalley
from torchvalley.dynamics import posterior_temperature
from torchvalley.dynamics.posterior import SampleCollector, bayesian_model_average, uq_metrics
from torchvalley.landscape import CurvatureOperator, hessian_eigenvalues

# Sampler settings: BAOAB with step h = 0.3 and friction 1 is heavy-ball SGD with lr ≈ 0.08 and
# momentum ≈ 0.74 (torchvalley.dynamics.physical_to_sgd); SGLD's lr is its step h.
SAMPLERS = {
    "baoab": {"lr": 0.3, "friction": 1.0},
    "sgld": {"lr": 0.05},
}


def two_moons(n: int, *, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``n`` points of two interleaved half-moons with Gaussian noise, and their labels."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    angle = math.pi * torch.rand(n, generator=generator)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1.0 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(labels[:, None] == 0, upper, lower)
    return points + noise * torch.randn(n, 2, generator=generator), labels


def make_model(seed: int) -> nn.Module:
    """The 2-32-32-2 tanh MLP, initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)
        )


def lambda_max(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The largest Hessian eigenvalue of the mean cross-entropy on ``data`` (Lanczos)."""
    operator = CurvatureOperator.of(model, F.cross_entropy, data)
    return float(hessian_eigenvalues(operator, seed=0).eigenvalues[0])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the workflow, print what it measured, and return it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", choices=sorted(SAMPLERS), default="baoab")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and noise seed")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--sample-steps", type=int, default=300)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--thin", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small model: 1)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`main` after parsing the command line."""

    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = two_moons(256, noise=0.2, generator=generator)
    x_test, y_test = two_moons(256, noise=0.2, generator=generator)
    model = make_model(args.seed)

    # 1. SAM. It evaluates the loss twice per step (at w and at w + ε), so it takes a closure;
    # model= lets it handle BatchNorm statistics (this MLP has none).
    optimizer = torchvalley.create_optimizer(
        "sam", model.parameters(), model=model, base_optimizer="sgd", lr=0.1, momentum=0.9
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train), y_train)
        loss.backward()
        return loss

    for _ in range(args.train_steps):
        train_loss = optimizer.step(closure)
    sam_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sam_lambda = lambda_max(model, (x_train, y_train))

    # 2. Sample from the SAM solution. The loss is a mean over N points, so τ = 1/N samples the
    # Bayesian posterior (flat prior); collector(step) is called once after every step.
    temperature = posterior_temperature(len(x_train))
    sampler = torchvalley.create_optimizer(
        args.sampler,
        model.parameters(),
        temperature=temperature,
        seed=args.seed,
        **SAMPLERS[args.sampler],
    )
    collector = SampleCollector(model, burn_in=args.burn_in, thin=args.thin)

    def sample_closure() -> torch.Tensor:
        sampler.zero_grad()
        loss = F.cross_entropy(model(x_train), y_train)
        loss.backward()
        return loss

    for step in range(args.sample_steps):
        sampler.step(sample_closure)
        collector.collect(step)
    last_lambda = lambda_max(model, (x_train, y_train))

    # 3. Posterior predictive (average of probabilities) vs the SAM point estimate.
    bma = bayesian_model_average(model, collector, x_test, kind="classification")
    point = bayesian_model_average(model, [sam_state], x_test, kind="classification")
    results = {
        "sampler": args.sampler,
        "temperature": temperature,
        "sam_train_loss": float(train_loss.detach()),
        "sam_lambda_max": sam_lambda,
        "last_sample_lambda_max": last_lambda,
        "samples": len(collector),
        "sample_steps": list(collector.steps),
        "sam": uq_metrics(point, y_test),
        "posterior": uq_metrics(bma, y_test),
    }
    print(
        f"SAM: train loss {results['sam_train_loss']:.4f}, λ_max {sam_lambda:.3f}\n"
        f"{args.sampler} at τ = 1/{len(x_train)}: {len(collector)} samples (steps "
        f"{collector.steps[0]}..{collector.steps[-1]}), λ_max at the last one {last_lambda:.3f}"
    )
    print("| predictive | accuracy | NLL | ECE | Brier |\n|---|--:|--:|--:|--:|")
    for name in ("sam", "posterior"):
        m = results[name]
        print(
            f"| {name} | {m['accuracy']:.3f} | {m['nll']:.3f} | {m['ece']:.3f} | {m['brier']:.3f} |"
        )
    return results


if __name__ == "__main__":
    main()
