"""TD3 (Fujimoto, van Hoof & Meger, ICML 2018): twin critics, target policy smoothing, delayed
actor updates; the actor and critic shapes of CEM-RL's reference code.

One training iteration on a minibatch (s, a, r, s', d) from the replay buffer::

    ã  = clip(π'(s') + clip(N(0, σ̃²), -c, c), low, high)     # target policy smoothing
    y  = r + γ (1 - d) min(Q'_1(s', ã), Q'_2(s', ã))           # clipped double-Q target
    L_Q = ‖Q_1(s, a) - y‖² + ‖Q_2(s, a) - y‖²                  # both critics regress on y
    every `policy_freq` iterations (delayed):
        L_π = -mean Q_1(s, π(s))                               # deterministic policy gradient
        θ' ← τ θ + (1 - τ) θ'   for the actor and both critics   # Polyak target updates

σ̃ (``policy_noise``) and c (``noise_clip``) are fractions of the action half-range, as in the
TD3 authors' scripts (0.2 and 0.5). ``d`` is *termination*, not time-limit truncation.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchvalley.validation import (
    check_int_at_least,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_unit_interval,
)

__all__ = [
    "TD3",
    "Actor",
    "ReplayBuffer",
    "TwinCritic",
    "soft_update_",
    "td3_target",
]


def fast_path_options(optimizer: str) -> dict[str, Any]:
    """``{"foreach": True}`` for a registered optimizer that has a foreach path (torch's Adam
    defaults to its per-tensor loop on CPU; these networks have few, small tensors, where
    the multi-tensor kernels are measurably faster), else ``{}``."""
    from torchvalley.registry import get_optimizer_entry

    entry = get_optimizer_entry(optimizer)
    if entry.capabilities.foreach and entry.hyperparameter("foreach") is not None:
        return {"foreach": True}
    return {}


def _mlp(sizes: Sequence[int], layer_norm: bool) -> nn.ModuleList:
    layers = nn.ModuleList()
    for n_in, n_out in itertools.pairwise(sizes):
        layers.append(nn.Linear(n_in, n_out))
    if layer_norm:
        layers.extend(nn.LayerNorm(n) for n in sizes[1:-1])
    return layers


class Actor(nn.Module):
    """π(s) = center + half_range · tanh(MLP(s)), tanh hidden units (CEM-RL's ``Actor``)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: torch.Tensor | Sequence[float],
        action_high: torch.Tensor | Sequence[float],
        hidden: Sequence[int] = (400, 300),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(act_dim)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(act_dim)
        if not bool((high > low).all()) or not bool(torch.isfinite(high - low).all()):
            raise ValueError(f"Invalid action bounds: low={low.tolist()}, high={high.tolist()}")
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_range", (high - low) / 2)
        self.sizes = (obs_dim, *hidden, act_dim)
        self.layer_norm = layer_norm
        self.layers = _mlp(self.sizes, layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        depth = len(self.sizes) - 1
        x = obs
        for i in range(depth - 1):
            x = self.layers[i](x)
            if self.layer_norm:
                x = self.layers[depth + i](x)
            x = torch.tanh(x)
        return self.center + self.half_range * torch.tanh(self.layers[depth - 1](x))


class _QNetwork(nn.Module):
    def __init__(self, sizes: Sequence[int], layer_norm: bool) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.layer_norm = layer_norm
        self.layers = _mlp(sizes, layer_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = len(self.sizes) - 1
        for i in range(depth - 1):
            x = self.layers[i](x)
            if self.layer_norm:
                x = self.layers[depth + i](x)
            x = F.leaky_relu(x)
        return self.layers[depth - 1](x)


class TwinCritic(nn.Module):
    """Q_1, Q_2 over (s, a): two independent leaky-ReLU MLPs (CEM-RL's ``CriticTD3``)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (400, 300),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        sizes = (obs_dim + act_dim, *hidden, 1)
        self.q1 = _QNetwork(sizes, layer_norm)
        self.q2 = _QNetwork(sizes, layer_norm)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x), self.q2(x)


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', not_done) in preallocated float32 tensors."""

    FIELDS = ("obs", "action", "reward", "next_obs", "not_done")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000) -> None:
        check_positive_int("capacity", capacity)
        self.capacity = capacity
        widths = {"obs": obs_dim, "action": act_dim, "reward": 1, "next_obs": obs_dim}
        widths["not_done"] = 1
        self.data = {k: torch.zeros(capacity, widths[k]) for k in self.FIELDS}
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> None:
        """Append ``n`` transitions (leading axis n; rewards and terminations of shape (n,))."""
        values = {
            "obs": obs,
            "action": action,
            "reward": reward.reshape(-1, 1),
            "next_obs": next_obs,
            "not_done": 1.0 - terminated.to(torch.float32).reshape(-1, 1),
        }
        n = values["obs"].shape[0]
        for start in range(0, n, self.capacity):  # more than capacity: only the last ones stay
            chunk = {k: v[start : start + self.capacity] for k, v in values.items()}
            m = chunk["obs"].shape[0]
            index = (self.position + torch.arange(m)) % self.capacity
            for k, v in chunk.items():
                self.data[k][index] = v.to(torch.float32)
            self.position = (self.position + m) % self.capacity
            self.size = min(self.size + m, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("Invalid buffer: sampling from an empty replay buffer")
        index = torch.randint(self.size, (batch_size,), generator=generator)
        return {k: v[index] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "data": {k: v[: self.size].clone() for k, v in self.data.items()},
            "position": self.position,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size, self.position = int(state["size"]), int(state["position"])
        for k, v in state["data"].items():
            self.data[k][: self.size] = v


@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """θ' ← τ θ + (1 - τ) θ' for every parameter (Polyak averaging)."""
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    torch._foreach_mul_(target_params, 1.0 - tau)
    torch._foreach_add_(target_params, source_params, alpha=tau)


@torch.no_grad()
def td3_target(
    actor_target: nn.Module,
    critic_target: TwinCritic,
    batch: dict[str, torch.Tensor],
    *,
    discount: float,
    policy_noise: float,
    noise_clip: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """y = r + γ (1 - d) min_j Q'_j(s', clip(π'(s') + clip(ξ, -c, c), low, high)), ξ ~ N(0, σ̃²).

    σ̃ and c are fractions of ``actor_target.half_range``.
    """
    next_obs = batch["next_obs"]
    half_range = actor_target.half_range
    low, high = actor_target.center - half_range, actor_target.center + half_range
    shape = (next_obs.shape[0], half_range.numel())
    xi = torch.randn(shape, generator=generator).to(next_obs)
    noise = (xi * policy_noise).clamp(-noise_clip, noise_clip) * half_range  # smoothing noise
    next_action = (actor_target(next_obs) + noise).clamp(low, high)  # ã
    q1, q2 = critic_target(next_obs, next_action)
    return batch["reward"] + batch["not_done"] * discount * torch.min(q1, q2)  # y


class TD3:
    """TD3 agent: actor, twin critic, their targets, optimizers and the noise generator.

    Defaults are the TD3 / CEM-RL papers': 400-300 networks, γ = 0.99, τ = 0.005,
    policy noise 0.2, noise clip 0.5, actor update every 2 critic updates, batch 100,
    Adam with lr 1e-3 for both. ``optimizer`` is any registered torchvalley optimizer.
    Network initialisation uses a private RNG seeded with ``seed``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: torch.Tensor | Sequence[float],
        action_high: torch.Tensor | Sequence[float],
        *,
        actor_hidden: Sequence[int] = (400, 300),
        critic_hidden: Sequence[int] = (400, 300),
        layer_norm: bool = False,
        discount: float = 0.99,
        tau: float = 0.005,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_freq: int = 2,
        batch_size: int = 100,
        actor_lr: float = 1e-3,
        critic_lr: float = 1e-3,
        optimizer: str = "adam",
        seed: int = 0,
    ) -> None:
        from torchvalley.registry import create_optimizer

        check_unit_interval("discount", discount)
        check_unit_interval("tau", tau)
        check_non_negative("policy_noise", policy_noise)
        check_non_negative("noise_clip", noise_clip)
        check_positive_int("policy_freq", policy_freq)
        check_positive_int("batch_size", batch_size)
        check_positive("actor_lr", actor_lr)
        check_positive("critic_lr", critic_lr)
        for name, sizes in (("actor_hidden", actor_hidden), ("critic_hidden", critic_hidden)):
            for size in sizes:
                check_int_at_least(name, size, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.actor = Actor(obs_dim, act_dim, action_low, action_high, actor_hidden, layer_norm)
            self.critic = TwinCritic(obs_dim, act_dim, critic_hidden, layer_norm)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        options = fast_path_options(optimizer)
        self.actor_optimizer = create_optimizer(
            optimizer, self.actor.parameters(), lr=actor_lr, **options
        )
        self.critic_optimizer = create_optimizer(
            optimizer, self.critic.parameters(), lr=critic_lr, **options
        )
        self.optimizer, self.actor_lr = optimizer, actor_lr
        self.discount, self.tau = discount, tau
        self.policy_noise, self.noise_clip = policy_noise, noise_clip
        self.policy_freq, self.batch_size = policy_freq, batch_size
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed) + 1)
        self.iterations = 0
        self.gradient_steps = 0  # critic + actor optimizer steps

    def critic_step(
        self, batch: dict[str, torch.Tensor], actor_target: nn.Module | None = None
    ) -> torch.Tensor:
        """One critic update towards :func:`td3_target`; returns L_Q."""
        y = td3_target(
            self.actor_target if actor_target is None else actor_target,
            self.critic_target,
            batch,
            discount=self.discount,
            policy_noise=self.policy_noise,
            noise_clip=self.noise_clip,
            generator=self.generator,
        )
        q1, q2 = self.critic(batch["obs"], batch["action"])
        loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)  # L_Q
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_optimizer.step()
        self.gradient_steps += 1
        return loss.detach()

    def actor_step(
        self,
        batch: dict[str, torch.Tensor],
        actor: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> torch.Tensor:
        """One deterministic policy-gradient step on -mean Q_1(s, π(s)); returns L_π."""
        actor = self.actor if actor is None else actor
        optimizer = self.actor_optimizer if optimizer is None else optimizer
        for p in self.critic.parameters():
            p.requires_grad_(False)  # the actor loss moves only the actor
        try:
            loss = -self.critic.q1(torch.cat([batch["obs"], actor(batch["obs"])], -1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            for p in self.critic.parameters():
                p.requires_grad_(True)
        self.gradient_steps += 1
        return loss.detach()

    def train_step(self, buffer: ReplayBuffer) -> None:
        """One TD3 iteration: a critic update; every ``policy_freq``-th, the delayed actor
        update and the Polyak updates of both targets."""
        batch = buffer.sample(self.batch_size, self.generator)
        self.critic_step(batch)
        self.iterations += 1
        if self.iterations % self.policy_freq == 0:  # delayed policy update
            self.actor_step(batch)
            soft_update_(self.critic_target, self.critic, self.tau)
            soft_update_(self.actor_target, self.actor, self.tau)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, exploration_noise: float = 0.0) -> torch.Tensor:
        """π(s) plus Gaussian noise of ``exploration_noise`` · half-range, clipped to bounds."""
        action = self.actor(obs)
        if exploration_noise > 0:
            xi = torch.randn(action.shape, generator=self.generator)
            half = self.actor.half_range
            action = action + exploration_noise * half * xi
            action = action.clamp(self.actor.center - half, self.actor.center + half)
        return action

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "iterations": self.iterations,
            "gradient_steps": self.gradient_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target"):
            getattr(self, name).load_state_dict(state[name])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.generator.set_state(state["generator"])
        self.iterations = int(state["iterations"])
        self.gradient_steps = int(state["gradient_steps"])
