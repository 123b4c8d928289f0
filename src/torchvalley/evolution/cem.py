"""sep-CEM: the cross-entropy method with a diagonal Gaussian over a flat parameter vector.

One generation (Pourchot & Sigaud, "CEM-RL", ICLR 2019, §3 and ``ES.py::sepCEM`` of the
reference code ``apourchot/CEM-RL``)::

    z_k = μ + σ ⊙ n_k,   n_k ~ N(0, I)         (antithetic: n_{K/2+k} = -n_k)   # ask
    z_(1), ..., z_(K_e)  the K_e best z_k by fitness
    λ_i = log((K_e+1)/i) / Σ_j log((K_e+1)/j)                                   # log weights
    μ' = Σ_i λ_i z_(i)                                                          # new mean
    ε  ← τ ε + (1-τ) ε_limit                                                    # decaying noise
    σ²' = Σ_i λ_i (z_(i) - μ)² + ε              (covariance="paper")            # new variance
    σ²' = (1/K_e) Σ_i λ_i (z_(i) - μ)² + ε      (covariance="reference")

The variance is centred on the *old* mean μ (the paper's Eq. for Σ_new). The reference code
multiplies the weighted sum by an extra 1/K_e, a K_e-fold smaller covariance than the paper's
formula; ``covariance="reference"`` reproduces it. ε is decayed before it is added, as the
reference code does.

Populations are evaluated with :func:`population_call` / :func:`population_loss`, which run a
module under ``torch.func.vmap`` of ``torch.func.functional_call`` over the population's rows
(one batched forward for all members) and fall back to one call per member where the model
cannot be vmapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchvalley.validation import (
    check_choice,
    check_int_at_least,
    check_non_negative,
    check_positive,
    check_unit_interval_open,
)

__all__ = [
    "COVARIANCE_RULES",
    "ParameterLayout",
    "SepCEM",
    "cem_weights",
    "population_call",
    "population_loss",
    "run_cem",
]

#: the covariance updates: the paper's weighted-CEM formula, or the reference code's (x 1/K_e)
COVARIANCE_RULES = ("paper", "reference")


def cem_weights(elites: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The log weights λ_i ∝ log((K_e + 1) / i), i = 1..K_e, normalised to sum to one."""
    ranks = torch.arange(1, elites + 1, dtype=torch.float64)
    weights = torch.log((elites + 1) / ranks)
    return (weights / weights.sum()).to(dtype)


@dataclass(frozen=True)
class ParameterLayout:
    """How a module's parameters sit in one flat vector (in ``named_parameters`` order)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParameterLayout:
        named = [(name, p) for name, p in module.named_parameters()]
        if not named:
            raise ValueError("Invalid module: it has no parameters")
        return cls(
            tuple(n for n, _ in named),
            tuple(p.shape for _, p in named),
            tuple(p.numel() for _, p in named),
        )

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's parameters as one detached vector (a copy)."""
        params = dict(module.named_parameters())
        return torch.cat([params[name].detach().reshape(-1) for name in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: view}`` of a flat vector (of a ``(K, D)`` population: ``(K, *shape)`` views)."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, self.numels, dim=-1)
        return {
            name: piece.reshape(*lead, *shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    @torch.no_grad()
    def write_(self, module: nn.Module, flat: torch.Tensor) -> None:
        """Copy a flat vector into the module's parameters in place."""
        params = dict(module.named_parameters())
        for name, value in self.unflatten(flat).items():
            params[name].copy_(value)


def population_call(
    module: nn.Module,
    population: torch.Tensor,
    *inputs: torch.Tensor,
    batched: bool = True,
    per_member_inputs: bool = False,
) -> torch.Tensor:
    """``module(*inputs)`` under each row of ``population`` as its parameters; ``(K, ...)``.

    Args:
        module: the model; its parameters are not touched (``functional_call``), its buffers
            are shared by every member.
        population: ``(K, D)``, rows in :class:`ParameterLayout` order.
        inputs: the inputs, the same for every member, or with a leading ``K`` axis (one
            per member) when ``per_member_inputs`` is true.
        batched: one ``vmap``-ed call for the whole population (the default); ``False``, or a
            model ``vmap`` cannot run (data-dependent control flow, in-place buffer updates),
            calls the module once per member.
    """
    layout = ParameterLayout.of(module)
    buffers = dict(module.named_buffers())

    def call(flat: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {**layout.unflatten(flat), **buffers}, args)

    in_dims = (0, *((0 if per_member_inputs else None) for _ in inputs))
    if batched:
        try:
            return torch.func.vmap(call, in_dims=in_dims)(population, *inputs)
        except RuntimeError:
            pass  # not vmappable: fall through to the per-member loop
    outputs = []
    for k in range(population.shape[0]):
        args = tuple(x[k] if per_member_inputs else x for x in inputs)
        outputs.append(call(population[k], *args))
    return torch.stack(outputs)


def population_loss(
    module: nn.Module,
    population: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    batched: bool = True,
) -> torch.Tensor:
    """``loss_fn(module(inputs), targets)`` for every member; a ``(K,)`` tensor, no graph."""
    with torch.no_grad():
        outputs = population_call(module, population, inputs, batched=batched)
        if batched:
            try:
                return torch.func.vmap(loss_fn, in_dims=(0, None))(outputs, targets)
            except RuntimeError:
                pass
        return torch.stack([loss_fn(out, targets) for out in outputs])


class SepCEM:
    """sep-CEM over a flat parameter vector (or the flattened parameters of a module).

    Args:
        mean: the initial mean μ: a 1-D tensor, or an ``nn.Module`` whose parameters are
            flattened (:class:`ParameterLayout`; the distribution then has their dtype/device).
        population_size: K >= 2 samples per generation (the paper: 10).
        elites: K_e, the number of best samples the update uses (default K // 2).
        sigma_init: the initial *variance* of every coordinate (the reference code's
            ``sigma_init``, 1e-3: a standard deviation of about 0.032).
        epsilon_init, epsilon_limit, epsilon_decay: the additive noise ε of the variance
            update starts at ``epsilon_init`` and moves geometrically to ``epsilon_limit``,
            ε ← τ ε + (1 - τ) ε_limit with τ = ``epsilon_decay`` (reference: 1e-3, 1e-5, 0.95).
        antithetic: sample pairs n, -n. ``None`` (default): on when K is even, as in the
            reference code; ``True`` with an odd K is an error.
        covariance: ``"paper"`` (Σ λ_i (z_(i) - μ)² + ε) or ``"reference"`` (the code's extra
            1/K_e factor).
        maximize: fitness is to be maximised (returns); the default minimises (losses).
        seed: seeds the sampler's own ``torch.Generator`` (the global RNG is never used).

    Example:
        >>> import torch
        >>> cem = SepCEM(torch.zeros(3), population_size=20, sigma_init=1.0, seed=0)
        >>> target = torch.tensor([1.0, -2.0, 0.5])
        >>> for _ in range(60):
        ...     population = cem.ask()
        ...     cem.tell(population, (population - target).square().sum(1))
        >>> torch.allclose(cem.mean, target, atol=0.05)
        True
    """

    def __init__(
        self,
        mean: torch.Tensor | nn.Module,
        *,
        population_size: int = 10,
        elites: int | None = None,
        sigma_init: float = 1e-3,
        epsilon_init: float = 1e-3,
        epsilon_limit: float = 1e-5,
        epsilon_decay: float = 0.95,
        antithetic: bool | None = None,
        covariance: str = "paper",
        maximize: bool = False,
        seed: int = 0,
    ) -> None:
        check_int_at_least("population_size", population_size, 2)
        elites = population_size // 2 if elites is None else elites
        check_int_at_least("elites", elites, 1)
        if elites > population_size:
            raise ValueError(
                f"Invalid elites: {elites} (must be <= population_size = {population_size})"
            )
        check_positive("sigma_init", sigma_init)
        check_non_negative("epsilon_init", epsilon_init)
        check_non_negative("epsilon_limit", epsilon_limit)
        check_unit_interval_open("epsilon_decay", epsilon_decay)
        check_choice("covariance", covariance, COVARIANCE_RULES)
        if antithetic is None:
            antithetic = population_size % 2 == 0
        elif antithetic and population_size % 2:
            raise ValueError(
                f"Invalid antithetic: True needs an even population_size, got {population_size}"
            )
        if isinstance(mean, nn.Module):
            self.layout: ParameterLayout | None = ParameterLayout.of(mean)
            mean = self.layout.flatten(mean)
        else:
            self.layout = None
            if not isinstance(mean, torch.Tensor) or mean.dim() != 1 or mean.numel() == 0:
                raise ValueError("Invalid mean: expected a non-empty 1-D tensor or an nn.Module")
            if not mean.dtype.is_floating_point:
                raise ValueError(f"Invalid mean: expected a floating dtype, got {mean.dtype}")
        self.population_size = population_size
        self.elites = elites
        self.antithetic = bool(antithetic)
        self.covariance = covariance
        self.maximize = bool(maximize)
        self.epsilon_limit = float(epsilon_limit)
        self.epsilon_decay = float(epsilon_decay)
        self.mean = mean.detach().clone()
        self.variance = torch.full_like(self.mean, float(sigma_init))
        self.epsilon = float(epsilon_init)
        self.weights = cem_weights(elites, self.mean.dtype).to(self.mean.device)
        self.generation = 0
        self.noise: torch.Tensor | None = None
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    @property
    def dimension(self) -> int:
        return self.mean.numel()

    def ask(self) -> torch.Tensor:
        """A ``(K, D)`` population z_k = μ + σ ⊙ n_k; antithetic rows K/2.. are μ - σ ⊙ n_k."""
        K, D = self.population_size, self.dimension
        rows = K // 2 if self.antithetic else K
        noise = torch.randn(rows, D, generator=self.generator, dtype=self.mean.dtype)
        noise = noise.to(self.mean.device)
        if self.antithetic:
            noise = torch.cat([noise, -noise])  # exact negatives: n_{K/2+k} = -n_k
        self.noise = noise  # the standard-normal draws of this population (for inspection)
        return self.mean + self.variance.sqrt() * noise

    def elite_indices(self, fitness: torch.Tensor) -> torch.Tensor:
        """Indices of the K_e best members, best first (stable: ties keep population order)."""
        order = torch.sort(fitness, descending=self.maximize, stable=True).indices
        return order[: self.elites]

    @torch.no_grad()
    def tell(self, population: torch.Tensor, fitness: torch.Tensor | Sequence[float]) -> None:
        """Update μ, σ² and ε from the evaluated population (rows may have been moved since
        :meth:`ask`, e.g. by gradient steps: the update uses the rows as given)."""
        fitness = torch.as_tensor(fitness, dtype=torch.float64).reshape(-1).cpu()
        if population.shape != (self.population_size, self.dimension):
            raise ValueError(
                f"Invalid population: expected shape {(self.population_size, self.dimension)}, "
                f"got {tuple(population.shape)}"
            )
        if fitness.numel() != self.population_size:
            raise ValueError(
                f"Invalid fitness: expected {self.population_size} values, got {fitness.numel()}"
            )
        if torch.isnan(fitness).any():
            raise ValueError("Invalid fitness: contains NaN")
        elites = population[self.elite_indices(fitness)].to(self.mean)  # z_(1..K_e)
        old_mean = self.mean
        self.mean = self.weights @ elites  # μ' = Σ λ_i z_(i)
        self.epsilon = self.epsilon_decay * self.epsilon + (1 - self.epsilon_decay) * (
            self.epsilon_limit
        )  # ε ← τ ε + (1-τ) ε_limit
        spread = self.weights @ (elites - old_mean).square()  # Σ λ_i (z_(i) - μ)²
        if self.covariance == "reference":
            spread = spread / self.elites  # the reference code's extra 1/K_e
        self.variance = spread + self.epsilon  # σ²' = ... + ε
        self.generation += 1

    # -- modules ------------------------------------------------------------------------------

    def _layout(self) -> ParameterLayout:
        if self.layout is None:
            raise ValueError("this SepCEM was built from a tensor, not an nn.Module")
        return self.layout

    def write_mean_(self, module: nn.Module) -> nn.Module:
        """Copy μ into the module's parameters (in place) and return the module."""
        self._layout().write_(module, self.mean)
        return module

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that determines the rest of a run: μ, σ², ε, generation, RNG state."""
        return {
            "mean": self.mean.clone(),
            "variance": self.variance.clone(),
            "epsilon": self.epsilon,
            "generation": self.generation,
            "generator": self.generator.get_state(),
            "config": self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        config = state.get("config")
        if config != self._config():
            raise ValueError(
                f"Invalid state: saved with {config}, this SepCEM has {self._config()}"
            )
        if state["mean"].shape != self.mean.shape:
            raise ValueError(
                f"Invalid state: mean of shape {tuple(state['mean'].shape)}, expected "
                f"{tuple(self.mean.shape)}"
            )
        self.mean = state["mean"].detach().clone().to(self.mean)
        self.variance = state["variance"].detach().clone().to(self.mean)
        self.epsilon = float(state["epsilon"])
        self.generation = int(state["generation"])
        self.generator.set_state(state["generator"])

    def _config(self) -> dict[str, Any]:
        return {
            "population_size": self.population_size,
            "elites": self.elites,
            "antithetic": self.antithetic,
            "covariance": self.covariance,
            "maximize": self.maximize,
            "epsilon_limit": self.epsilon_limit,
            "epsilon_decay": self.epsilon_decay,
        }


def run_cem(
    cem: SepCEM,
    fitness: Callable[[torch.Tensor], torch.Tensor | Sequence[float]],
    generations: int,
    *,
    callback: Callable[[SepCEM, torch.Tensor, torch.Tensor], Any] | None = None,
) -> SepCEM:
    """The ask / evaluate / tell loop for ``generations`` generations.

    ``fitness`` maps a ``(K, D)`` population to K values (evaluate it batched, e.g. with
    :func:`population_loss`); ``callback(cem, population, fitness)`` runs after each tell and
    may return ``True`` to stop early.
    """
    check_int_at_least("generations", generations, 0)
    for _ in range(generations):
        population = cem.ask()
        values = torch.as_tensor(fitness(population), dtype=torch.float64).reshape(-1)
        cem.tell(population, values)
        if callback is not None and callback(cem, population, values):
            break
    return cem
