"""The CEM-gradient hybrid: half of each population takes gradient steps before evaluation.

One generation (Pourchot & Sigaud, "CEM-RL", ICLR 2019, Algorithm 1)::

    z_1..z_K = cem.ask()
    for i < n_grad:                                      # the first half by default
        load z_i into the working module; a *fresh* optimizer over it (Adam by default)
        train_member(module, optimizer)                  # gradient steps (TD3 actor, a loss, ...)
        z_i <- flatten(module)                           # written back into the population
    f = fitness(z_1..z_K);  cem.tell(z, f)               # the moved rows enter the update

:class:`GradientHybrid` is the generic piece (any registered torchvalley optimizer through
:func:`torchvalley.create_optimizer`); :class:`SupervisedHybrid` is the supervised instance:
gradient steps on minibatches of a training loss, fitness = validation loss, the population's
validation losses computed in one ``vmap``-ed pass. The RL instance is
:class:`torchvalley.evolution.rl.CEMRL`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from torchvalley.evolution.cem import SepCEM, population_loss
from torchvalley.validation import check_int_at_least, check_positive_int

__all__ = ["GradientHybrid", "SupervisedHybrid"]


class GradientHybrid:
    """Gradient steps on the first ``gradient_members`` rows of a CEM population.

    Args:
        cem: the :class:`SepCEM` (built from ``module``, so the layouts agree).
        module: the working module: each member is loaded into it, trained, read back.
        gradient_members: how many members take gradient steps (default K // 2, the paper's).
        optimizer: a registered optimizer name (default ``"adam"``); a fresh one per member and
            generation, as in the reference code.
        optimizer_hyperparameters: passed to :func:`torchvalley.create_optimizer` (default
            ``{"lr": 1e-3}``).
    """

    def __init__(
        self,
        cem: SepCEM,
        module: nn.Module,
        *,
        gradient_members: int | None = None,
        optimizer: str = "adam",
        optimizer_hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        from torchvalley.registry import get_optimizer_entry, validate_hyperparameters

        layout = cem._layout()
        if layout.names != tuple(n for n, _ in module.named_parameters()):
            raise ValueError("Invalid module: its parameters differ from the CEM's layout")
        gradient_members = (
            cem.population_size // 2 if gradient_members is None else gradient_members
        )
        check_int_at_least("gradient_members", gradient_members, 0)
        if gradient_members > cem.population_size:
            raise ValueError(
                f"Invalid gradient_members: {gradient_members} (must be <= population_size = "
                f"{cem.population_size})"
            )
        get_optimizer_entry(optimizer)  # unknown names fail here, not at the first generation
        from torchvalley.evolution.td3 import fast_path_options

        hyperparameters = {"lr": 1e-3} if optimizer_hyperparameters is None else {}
        hyperparameters.update(fast_path_options(optimizer))
        hyperparameters.update(optimizer_hyperparameters or {})
        validate_hyperparameters(optimizer, hyperparameters)
        self.cem = cem
        self.module = module
        self.layout = layout
        self.gradient_members = gradient_members
        self.optimizer = optimizer
        self.optimizer_hyperparameters = hyperparameters

    def new_optimizer(self) -> torch.optim.Optimizer:
        from torchvalley.registry import create_optimizer

        return create_optimizer(
            self.optimizer, self.module.parameters(), **self.optimizer_hyperparameters
        )

    def improve(
        self,
        population: torch.Tensor,
        train_member: Callable[[nn.Module, torch.optim.Optimizer, int], Any],
    ) -> torch.Tensor:
        """The population with its first ``gradient_members`` rows trained and written back.

        ``train_member(module, optimizer, index)`` runs the gradient steps on ``module``, which
        holds member ``index``'s parameters. The other rows are returned unchanged.
        """
        population = population.clone()
        for index in range(self.gradient_members):
            self.layout.write_(self.module, population[index])  # load z_i
            train_member(self.module, self.new_optimizer(), index)
            population[index] = self.layout.flatten(self.module).to(population)  # z_i <- θ
        return population


class SupervisedHybrid:
    """CEM + gradient steps on a supervised loss; fitness = validation loss (minimised).

    Args:
        model: the network; CEM starts from its parameters.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar (mean) loss.
        train: ``(inputs, targets)`` for the gradient steps (minibatches drawn with the
            hybrid's own generator).
        validation: ``(inputs, targets)``; every member's loss on it is its fitness.
        gradient_steps: minibatch steps per trained member and generation; 0 is plain CEM.
        batch_size: minibatch size of the gradient steps.
        gradient_members, optimizer, optimizer_hyperparameters: see :class:`GradientHybrid`.
        batched: evaluate the population with one ``vmap``-ed call (default) or one by one.
        seed: seeds the CEM sampler and the minibatch generator.
        **cem_options: :class:`SepCEM` options (``population_size``, ``sigma_init``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        train: tuple[torch.Tensor, torch.Tensor],
        validation: tuple[torch.Tensor, torch.Tensor],
        *,
        gradient_steps: int = 10,
        batch_size: int = 64,
        gradient_members: int | None = None,
        optimizer: str = "adam",
        optimizer_hyperparameters: Mapping[str, Any] | None = None,
        batched: bool = True,
        seed: int = 0,
        **cem_options: Any,
    ) -> None:
        check_int_at_least("gradient_steps", gradient_steps, 0)
        check_positive_int("batch_size", batch_size)
        self.model = model
        self.loss_fn = loss_fn
        self.train_inputs, self.train_targets = train
        self.val_inputs, self.val_targets = validation
        self.gradient_steps = gradient_steps
        self.batch_size = batch_size
        self.batched = batched
        self.cem = SepCEM(model, seed=seed, **cem_options)
        self.hybrid = GradientHybrid(
            self.cem,
            model,
            gradient_members=gradient_members,
            optimizer=optimizer,
            optimizer_hyperparameters=optimizer_hyperparameters,
        )
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed) + 1)  # minibatches: a stream apart from CEM's
        self.gradient_step_count = 0

    def fitness(self, population: torch.Tensor) -> torch.Tensor:
        """Validation loss of every member, ``(K,)``."""
        return population_loss(
            self.model,
            population,
            self.loss_fn,
            self.val_inputs,
            self.val_targets,
            batched=self.batched,
        )

    def _train_member(self, module: nn.Module, optimizer: torch.optim.Optimizer, _: int) -> None:
        n = self.train_inputs.shape[0]
        for _step in range(self.gradient_steps):
            batch = torch.randint(n, (min(self.batch_size, n),), generator=self.generator)
            optimizer.zero_grad(set_to_none=True)
            self.loss_fn(module(self.train_inputs[batch]), self.train_targets[batch]).backward()
            optimizer.step()
            self.gradient_step_count += 1

    def generation(self) -> torch.Tensor:
        """One ask / gradient steps / evaluate / tell; returns the population's fitness."""
        population = self.cem.ask()
        if self.gradient_steps > 0:
            population = self.hybrid.improve(population, self._train_member)
        fitness = self.fitness(population)
        self.cem.tell(population, fitness)
        return fitness

    def run(self, generations: int) -> list[float]:
        """``generations`` generations; the validation loss of the mean after each."""
        check_int_at_least("generations", generations, 0)
        history = []
        for _ in range(generations):
            self.generation()
            history.append(self.mean_loss())
        return history

    def mean_loss(self) -> float:
        """Validation loss of the distribution's mean μ."""
        return float(self.fitness(self.cem.mean[None])[0])

    def state_dict(self) -> dict[str, Any]:
        return {
            "cem": self.cem.state_dict(),
            "generator": self.generator.get_state(),
            "gradient_step_count": self.gradient_step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cem.load_state_dict(state["cem"])
        self.generator.set_state(state["generator"])
        self.gradient_step_count = int(state["gradient_step_count"])
