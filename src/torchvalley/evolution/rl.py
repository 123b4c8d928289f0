"""CEM-RL (Pourchot & Sigaud, ICLR 2019) and its two baselines on gymnasium environments.

:class:`CEMRL` follows the reference code (``es_grad.py --use_td3``): a sep-CEM population of
actors shares one TD3 critic and one replay buffer. Each generation::

    z_1..z_K = cem.ask()
    if env steps > start_steps:                    # (the critic needs data first)
        for i < n_grad:                            # half the population by default
            π, π' <- z_i; a fresh Adam over π
            actor_steps // n_grad critic updates     (targets from π', Polyak on the critics)
            actor_steps actor updates on -Q_1(s, π(s))  (Polyak on π')
            z_i <- π                                 # written back
    each z_k plays one episode without action noise; its transitions fill the buffer
    cem.tell(z, returns)

where ``actor_steps`` is the number of environment steps of the previous generation. Every
``eval_every`` environment steps the *mean* actor μ plays ``eval_episodes`` separate episodes
(not added to the buffer, not counted as training steps): that is the reported return.
``gradient_members=0`` is plain CEM (no critic, no buffer); :class:`TD3Runner` is TD3 alone.

gymnasium is an optional dependency (the ``rl`` extra), imported when an environment is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from torchvalley.evolution.cem import SepCEM, population_call
from torchvalley.evolution.hybrid import GradientHybrid
from torchvalley.evolution.td3 import TD3, Actor, ReplayBuffer, soft_update_
from torchvalley.validation import check_int_at_least, check_non_negative, check_positive_int

__all__ = [
    "CEMRL",
    "EvalRecord",
    "TD3Runner",
    "continuous_spaces",
    "log_history",
    "make_env",
    "plot_returns",
    "population_episodes",
]


def make_env(env_id: str, **kwargs: Any) -> Any:
    """``gymnasium.make(env_id)``, checked to have a continuous (Box) action space."""
    try:
        import gymnasium
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError("CEM-RL environments need gymnasium (the rl extra)") from error
    env = gymnasium.make(env_id, **kwargs)
    continuous_spaces(env)
    return env


def continuous_spaces(env: Any) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(obs_dim, act_dim, action_low, action_high) of an env with flat Box spaces, else a
    ``ValueError``."""
    import gymnasium

    action_space, observation_space = env.action_space, env.observation_space
    if not isinstance(action_space, gymnasium.spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(
            f"Invalid env: {env.spec.id if env.spec else env} needs a continuous 1-D Box action "
            f"space, got {action_space}"
        )
    if not isinstance(observation_space, gymnasium.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"Invalid env: observation space {observation_space} is not a flat Box")
    low = torch.as_tensor(action_space.low, dtype=torch.float32)
    high = torch.as_tensor(action_space.high, dtype=torch.float32)
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError(f"Invalid env: unbounded action space {action_space}")
    return observation_space.shape[0], action_space.shape[0], low, high


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def _as_obs(obs: Any) -> torch.Tensor:
    return torch.as_tensor(obs, dtype=torch.float32)


@dataclass
class Episodes:
    """What a population's episodes returned: returns ``(K,)``, transitions, step count."""

    returns: torch.Tensor
    transitions: list[dict[str, torch.Tensor]]
    steps: int


@torch.no_grad()
def population_episodes(
    envs: Sequence[Any],
    actor: nn.Module,
    population: torch.Tensor,
    seeds: Sequence[int],
    *,
    batched: bool = True,
) -> Episodes:
    """One episode per member, member k with parameters ``population[k]`` in ``envs[k]``.

    ``batched``: the members step in lockstep and one ``vmap``-ed actor call per time step
    computes every active member's action; otherwise each member plays its whole episode in
    turn with its parameters loaded into ``actor``. Both give the same episodes (up to the
    last bits of the matrix products); transitions are returned per member in member order.
    """
    K = population.shape[0]
    records: list[dict[str, list]] = [
        {"obs": [], "action": [], "reward": [], "next_obs": [], "terminated": []} for _ in range(K)
    ]
    returns = [0.0] * K

    def record(k: int, obs: torch.Tensor, action: torch.Tensor) -> tuple[Any, bool]:
        next_obs, reward, terminated, truncated, _ = envs[k].step(action.numpy())
        rec = records[k]
        rec["obs"].append(obs)
        rec["action"].append(action)
        rec["reward"].append(float(reward))
        rec["next_obs"].append(_as_obs(next_obs))
        rec["terminated"].append(bool(terminated))
        returns[k] += float(reward)
        return next_obs, bool(terminated or truncated)

    if batched:
        obs = [_as_obs(envs[k].reset(seed=int(seeds[k]))[0]) for k in range(K)]
        active = list(range(K))
        while active:
            index = torch.tensor(active)
            actions = population_call(
                actor,
                population[index],
                torch.stack([obs[k] for k in active]),
                per_member_inputs=True,
            )
            still = []
            for j, k in enumerate(active):
                next_obs, done = record(k, obs[k], actions[j])
                if not done:
                    obs[k] = _as_obs(next_obs)
                    still.append(k)
            active = still
    else:
        from torchvalley.evolution.cem import ParameterLayout

        layout = ParameterLayout.of(actor)
        for k in range(K):
            layout.write_(actor, population[k])
            obs_k = _as_obs(envs[k].reset(seed=int(seeds[k]))[0])
            done = False
            while not done:
                next_obs, done = record(k, obs_k, actor(obs_k))
                obs_k = _as_obs(next_obs)
    transitions = []
    for rec in records:
        transitions.append(
            {
                "obs": torch.stack(rec["obs"]),
                "action": torch.stack(rec["action"]),
                "reward": torch.tensor(rec["reward"], dtype=torch.float32),
                "next_obs": torch.stack(rec["next_obs"]),
                "terminated": torch.tensor(rec["terminated"]),
            }
        )
    steps = sum(t["obs"].shape[0] for t in transitions)
    return Episodes(torch.tensor(returns, dtype=torch.float64), transitions, steps)


@dataclass
class EvalRecord:
    """One evaluation of the current policy (the mean actor μ for CEM / CEM-RL)."""

    env_steps: int
    return_mean: float
    return_std: float
    gradient_steps: int
    wall_time_s: float


class _Runner:
    """Shared pieces: envs, the evaluation schedule, the evaluation env and its seeds."""

    env_id: str
    steps: int
    eval_every: int
    eval_episodes: int

    def _setup_envs(
        self, env_id: str, env_kwargs: Mapping[str, Any] | None, eval_every: int, eval_episodes: int
    ) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        check_positive_int("eval_every", eval_every)
        check_positive_int("eval_episodes", eval_episodes)
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.eval_env = make_env(env_id, **self.env_kwargs)
        self.eval_every, self.eval_episodes = eval_every, eval_episodes
        self.history: list[EvalRecord] = []
        self.wall_time_s = 0.0
        self.steps = 0
        return continuous_spaces(self.eval_env)

    @torch.no_grad()
    def evaluate_policy(self, policy: nn.Module) -> tuple[float, float]:
        """Mean and std of ``eval_episodes`` noise-free returns on the evaluation env."""
        returns = []
        for _ in range(self.eval_episodes):
            obs, _ = self.eval_env.reset(seed=_seed(self.eval_generator))
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = self.eval_env.step(
                    policy(_as_obs(obs)).numpy()
                )
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        values = torch.tensor(returns, dtype=torch.float64)
        std = float(values.std(unbiased=False)) if len(returns) > 1 else 0.0
        return float(values.mean()), std

    def _record(self, gradient_steps: int) -> EvalRecord:
        mean, std = self.evaluate_policy(self.policy())
        entry = EvalRecord(self.steps, mean, std, gradient_steps, self.wall_time_s)
        self.history.append(entry)
        return entry

    def policy(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _advance(self) -> int:  # pragma: no cover - abstract
        """Train a little (one generation / one env step); return gradient steps so far."""
        raise NotImplementedError

    def run(
        self, total_steps: int, callback: Callable[[EvalRecord], Any] | None = None
    ) -> list[EvalRecord]:
        """Train until ``total_steps`` environment steps, evaluating every ``eval_every``
        steps (and at 0 and at the end); returns the whole history."""
        check_int_at_least("total_steps", total_steps, 0)
        if not self.history:
            entry = self._record(self._gradient_steps())
            if callback is not None:
                callback(entry)
        while self.steps < total_steps:
            start = time.perf_counter()
            gradient_steps = self._advance()
            self.wall_time_s += time.perf_counter() - start
            last = self.history[-1].env_steps
            if self.steps // self.eval_every > last // self.eval_every or self.steps >= total_steps:
                entry = self._record(gradient_steps)
                if callback is not None:
                    callback(entry)
        return self.history

    def _gradient_steps(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class CEMRL(_Runner):
    """CEM-RL with a shared TD3 critic and replay buffer (``gradient_members=0``: plain CEM).

    Args:
        env_id: a gymnasium id with a continuous action space (``"Pendulum-v1"``, ...).
        population_size, sigma_init, epsilon_init, epsilon_limit, epsilon_decay, covariance,
            elites: the :class:`SepCEM` settings (paper: 10, 1e-3, 1e-3, 1e-5, 0.95, paper
            formula, K // 2).
        gradient_members: members trained by gradient each generation (default K // 2).
        start_steps: environment steps before the first gradient phase (paper: 10,000).
        actor_steps: actor updates per trained member and generation; ``None`` (the
            reference): the environment steps of the previous generation. The shared critic
            always takes (previous generation's steps) // gradient_members updates per member,
            one critic update per environment step in all, as in the reference code.
        actor_hidden, critic_hidden, layer_norm, discount, tau, policy_noise, noise_clip,
            batch_size, actor_lr, critic_lr, optimizer: the TD3 settings (:class:`TD3`).
        buffer_size: replay capacity (1e6).
        eval_every, eval_episodes: mean-actor evaluation (paper: 5000 steps, 10 episodes).
        batched: evaluate the population with one ``vmap``-ed actor call per time step.
        seed: seeds everything (CEM sampler, networks, minibatches, episode seeds).
    """

    def __init__(
        self,
        env_id: str = "Pendulum-v1",
        *,
        population_size: int = 10,
        elites: int | None = None,
        gradient_members: int | None = None,
        start_steps: int = 10_000,
        actor_steps: int | None = None,
        sigma_init: float = 1e-3,
        epsilon_init: float = 1e-3,
        epsilon_limit: float = 1e-5,
        epsilon_decay: float = 0.95,
        covariance: str = "paper",
        actor_hidden: Sequence[int] = (400, 300),
        critic_hidden: Sequence[int] = (400, 300),
        layer_norm: bool = False,
        discount: float = 0.99,
        tau: float = 0.005,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        batch_size: int = 100,
        actor_lr: float = 1e-3,
        critic_lr: float = 1e-3,
        optimizer: str = "adam",
        buffer_size: int = 1_000_000,
        eval_every: int = 5000,
        eval_episodes: int = 10,
        batched: bool = True,
        env_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        check_non_negative("start_steps", start_steps)
        if actor_steps is not None:
            check_int_at_least("actor_steps", actor_steps, 0)
        self.actor_steps = actor_steps
        obs_dim, act_dim, low, high = self._setup_envs(
            env_id, env_kwargs, eval_every, eval_episodes
        )
        self.td3 = TD3(
            obs_dim, act_dim, low, high,
            actor_hidden=actor_hidden, critic_hidden=critic_hidden, layer_norm=layer_norm,
            discount=discount, tau=tau, policy_noise=policy_noise, noise_clip=noise_clip,
            batch_size=batch_size, actor_lr=actor_lr, critic_lr=critic_lr, optimizer=optimizer,
            seed=seed,
        )  # fmt: skip
        self.cem = SepCEM(
            self.td3.actor,
            population_size=population_size, elites=elites, sigma_init=sigma_init,
            epsilon_init=epsilon_init, epsilon_limit=epsilon_limit, epsilon_decay=epsilon_decay,
            covariance=covariance, maximize=True, seed=seed,
        )  # fmt: skip
        self.hybrid = GradientHybrid(
            self.cem, self.td3.actor, gradient_members=gradient_members,
            optimizer=optimizer, optimizer_hyperparameters={"lr": actor_lr},
        )  # fmt: skip
        self.envs = [make_env(env_id, **self.env_kwargs) for _ in range(population_size)]
        self.buffer = (
            ReplayBuffer(obs_dim, act_dim, buffer_size) if self.hybrid.gradient_members else None
        )
        self.start_steps = start_steps
        self.batched = batched
        self.episode_generator = torch.Generator().manual_seed(int(seed) + 2)
        self.eval_generator = torch.Generator().manual_seed(int(seed) + 3)
        self.last_generation_steps = 0
        self.eval_actor = Actor(obs_dim, act_dim, low, high, actor_hidden, layer_norm)

    def policy(self) -> nn.Module:
        return self.cem.write_mean_(self.eval_actor)

    def _gradient_steps(self) -> int:
        return self.td3.gradient_steps

    def _train_member(self, actor: nn.Module, optimizer: torch.optim.Optimizer, _: int) -> None:
        td3, buffer = self.td3, self.buffer
        assert buffer is not None
        env_steps = self.last_generation_steps
        actor_steps = env_steps if self.actor_steps is None else self.actor_steps
        with torch.no_grad():  # π' <- z_i (the member's own target actor)
            targets = list(td3.actor_target.parameters())
            torch._foreach_copy_(targets, list(actor.parameters()))
        for _ in range(env_steps // self.hybrid.gradient_members):  # the shared critic
            td3.critic_step(buffer.sample(td3.batch_size, td3.generator))
            soft_update_(td3.critic_target, td3.critic, td3.tau)
        for _ in range(actor_steps):  # the member's actor
            td3.actor_step(buffer.sample(td3.batch_size, td3.generator), actor, optimizer)
            soft_update_(td3.actor_target, actor, td3.tau)

    def _advance(self) -> int:
        population = self.cem.ask()
        if self.buffer is not None and self.steps > self.start_steps and len(self.buffer):
            population = self.hybrid.improve(population, self._train_member)
        seeds = [_seed(self.episode_generator) for _ in range(self.cem.population_size)]
        episodes = population_episodes(
            self.envs, self.td3.actor, population, seeds, batched=self.batched
        )
        if self.buffer is not None:
            for t in episodes.transitions:
                self.buffer.add(t["obs"], t["action"], t["reward"], t["next_obs"], t["terminated"])
        self.cem.tell(population, episodes.returns)
        self.steps += episodes.steps
        self.last_generation_steps = episodes.steps
        self.last_fitness = episodes.returns
        return self.td3.gradient_steps

    def state_dict(self) -> dict[str, Any]:
        """Resumable between generations: CEM, TD3, buffer, generators, counters, history."""
        return {
            "cem": self.cem.state_dict(),
            "td3": self.td3.state_dict(),
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "episode_generator": self.episode_generator.get_state(),
            "eval_generator": self.eval_generator.get_state(),
            "steps": self.steps,
            "last_generation_steps": self.last_generation_steps,
            "history": [asdict(h) for h in self.history],
            "wall_time_s": self.wall_time_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cem.load_state_dict(state["cem"])
        self.td3.load_state_dict(state["td3"])
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
        self.episode_generator.set_state(state["episode_generator"])
        self.eval_generator.set_state(state["eval_generator"])
        self.steps = int(state["steps"])
        self.last_generation_steps = int(state["last_generation_steps"])
        self.history = [EvalRecord(**h) for h in state["history"]]
        self.wall_time_s = float(state["wall_time_s"])


class TD3Runner(_Runner):
    """TD3 alone: ``start_steps`` uniform random actions, then π(s) + N(0, (σ_e·half-range)²)
    exploration, one TD3 iteration per environment step once the buffer holds a batch.

    ``**td3_options`` go to :class:`TD3` (defaults: the paper's).
    """

    def __init__(
        self,
        env_id: str = "Pendulum-v1",
        *,
        start_steps: int = 10_000,
        exploration_noise: float = 0.1,
        buffer_size: int = 1_000_000,
        eval_every: int = 5000,
        eval_episodes: int = 10,
        env_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
        **td3_options: Any,
    ) -> None:
        check_non_negative("start_steps", start_steps)
        check_non_negative("exploration_noise", exploration_noise)
        obs_dim, act_dim, low, high = self._setup_envs(
            env_id, env_kwargs, eval_every, eval_episodes
        )
        self.td3 = TD3(obs_dim, act_dim, low, high, seed=seed, **td3_options)
        self.env = make_env(env_id, **self.env_kwargs)
        self.buffer = ReplayBuffer(obs_dim, act_dim, buffer_size)
        self.start_steps, self.exploration_noise = start_steps, exploration_noise
        self.low, self.high = low, high
        self.episode_generator = torch.Generator().manual_seed(int(seed) + 2)
        self.eval_generator = torch.Generator().manual_seed(int(seed) + 3)
        self.obs: torch.Tensor | None = None
        self.episode_returns: list[float] = []
        self._episode_return = 0.0

    def policy(self) -> nn.Module:
        return self.td3.actor

    def _gradient_steps(self) -> int:
        return self.td3.gradient_steps

    def _advance(self) -> int:
        if self.obs is None:
            self.obs = _as_obs(self.env.reset(seed=_seed(self.episode_generator))[0])
        if self.steps < self.start_steps:
            u = torch.rand(self.low.shape, generator=self.episode_generator)
            action = self.low + (self.high - self.low) * u
        else:
            action = self.td3.act(self.obs, self.exploration_noise)
        next_obs, reward, terminated, truncated, _ = self.env.step(action.numpy())
        next_obs = _as_obs(next_obs)
        self.buffer.add(
            self.obs[None], action[None], torch.tensor([float(reward)]), next_obs[None],
            torch.tensor([bool(terminated)]),
        )  # fmt: skip
        self._episode_return += float(reward)
        self.steps += 1
        self.obs = next_obs
        if terminated or truncated:
            self.episode_returns.append(self._episode_return)
            self._episode_return, self.obs = 0.0, None
        if self.steps >= self.start_steps and len(self.buffer) >= self.td3.batch_size:
            self.td3.train_step(self.buffer)
        return self.td3.gradient_steps

    def state_dict(self) -> dict[str, Any]:
        """Resumable at any environment step: TD3, buffer, generators, counters, history and,
        mid-episode, the training environment itself (a pickled copy: its physical state and
        its own RNG, so the episode continues exactly) with the current observation. MuJoCo
        envs pickle as their constructor arguments only; their simulation state (``mj_getState``)
        and RNG travel separately (``env_state``), so they too resume bit for bit."""
        import pickle

        mid_episode = self.obs is not None
        return {
            "td3": self.td3.state_dict(),
            "buffer": self.buffer.state_dict(),
            "episode_generator": self.episode_generator.get_state(),
            "eval_generator": self.eval_generator.get_state(),
            "steps": self.steps,
            "history": [asdict(h) for h in self.history],
            "wall_time_s": self.wall_time_s,
            "episode_returns": list(self.episode_returns),
            "episode_return": self._episode_return,
            "obs": None if not mid_episode else self.obs.clone(),
            "env": pickle.dumps(self.env) if mid_episode else None,
            "env_state": _env_state(self.env) if mid_episode else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s output (``ValueError`` for another runner's state)."""
        import pickle

        missing = {"td3", "buffer", "steps", "env", "obs"} - set(state)
        if missing:
            raise ValueError(
                f"Invalid state: not a TD3Runner state_dict (it lacks {sorted(missing)})"
            )
        self.td3.load_state_dict(state["td3"])
        self.buffer.load_state_dict(state["buffer"])
        self.episode_generator.set_state(state["episode_generator"])
        self.eval_generator.set_state(state["eval_generator"])
        self.steps = int(state["steps"])
        self.history = [EvalRecord(**h) for h in state["history"]]
        self.wall_time_s = float(state["wall_time_s"])
        self.episode_returns = [float(r) for r in state["episode_returns"]]
        self._episode_return = float(state["episode_return"])
        if state["obs"] is None:
            self.obs = None
        else:
            self.env.close()
            self.env = pickle.loads(state["env"])  # our own state (trusted, like torch.load)
            if state.get("env_state") is not None:
                _load_env_state(self.env, state["env_state"])
            self.obs = state["obs"].clone()


def _env_state(env: Any) -> dict[str, Any]:
    """What pickling an env can lose: gymnasium's MuJoCo envs pickle as their constructor
    arguments (``EzPickle``), so a pickled copy restarts from a fresh simulation. This keeps
    the base env's RNG and, for MuJoCo, the full integration state (``mj_getState`` with
    ``mjSTATE_INTEGRATION``: time, qpos, qvel, act, warm start, controls), with which the
    episode continues bit for bit (the wrappers' own state, e.g. ``TimeLimit``'s step count,
    survives the pickle)."""
    import pickle

    unwrapped = env.unwrapped
    state: dict[str, Any] = {"np_random": pickle.dumps(unwrapped.np_random)}
    model, data = getattr(unwrapped, "model", None), getattr(unwrapped, "data", None)
    if type(model).__module__.startswith("mujoco") and data is not None:
        import mujoco
        import numpy as np

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, physics, spec)
        state["mujoco"] = physics
    return state


def _load_env_state(env: Any, state: dict[str, Any]) -> None:
    import pickle

    unwrapped = env.unwrapped
    unwrapped.np_random = pickle.loads(state["np_random"])
    if "mujoco" in state:
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        mujoco.mj_setState(unwrapped.model, unwrapped.data, state["mujoco"], spec)


# -- results store and plots ------------------------------------------------------------------


def log_history(
    store: Any,
    history: Sequence[EvalRecord],
    *,
    task: str,
    method: str,
    seed: int,
    hyperparameters: Mapping[str, Any],
    batch_size: int = 0,
) -> int | None:
    """Write a run's evaluations to a :class:`torchvalley.bench.store.Store`: one "epoch" per
    evaluation (``test_metric`` = mean return, ``steps`` = environment steps), the return's
    std and the gradient steps as measurements. Returns the run id (``None``: already stored).
    """
    from torchvalley.bench.run_config import RunConfig

    label = method + (
        ":" + ",".join(f"{k}={v}" for k, v in sorted(hyperparameters.items()))
        if hyperparameters
        else ""
    )
    config = RunConfig(
        task, method, label, dict(hyperparameters), int(seed), int(seed), len(history) - 1,
        int(batch_size),
    )  # fmt: skip
    run_id = store.begin_run(config, metric_name="return", higher_is_better=True)
    if run_id is None:
        return None
    for epoch, entry in enumerate(history):
        store.record_epoch(
            run_id, epoch, test_metric=entry.return_mean, steps=entry.env_steps,
            wall_time_s=entry.wall_time_s,
        )  # fmt: skip
        store.record_measurements(
            run_id, epoch, {"return_std": entry.return_std, "gradient_steps": entry.gradient_steps}
        )
    final = history[-1]
    store.finish_run(
        run_id, "finished", test_metric=final.return_mean,
        best_test_metric=max(h.return_mean for h in history), steps=final.env_steps,
        wall_time_s=final.wall_time_s,
    )  # fmt: skip
    return run_id


def plot_returns(store: Any, task: str, path: str, *, grid_points: int = 50) -> dict[str, Any]:
    """Return vs environment steps for every method stored for ``task``: the mean over seeds
    with a ± std band (each seed's curve interpolated onto a common grid). Writes a PNG at
    ``path`` and returns the curves ``{method: (steps, mean, std, n_seeds)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run in store.runs(task=task, status="finished"):
        rows = store.epochs(run["id"])
        steps = np.array([r["steps"] for r in rows], dtype=float)
        values = np.array([r["test_metric"] for r in rows], dtype=float)
        curves.setdefault(run["optimizer"], []).append((steps, values))
    if not curves:
        raise ValueError(f"Invalid task: no finished runs of {task!r} in the store")
    end = min(max(s[-1] for s, _ in runs) for runs in curves.values())
    grid = np.linspace(0.0, end, grid_points)
    figure, axes = plt.subplots(figsize=(6, 4))
    summary: dict[str, Any] = {}
    for method, runs in sorted(curves.items()):
        stacked = np.stack([np.interp(grid, s, v) for s, v in runs])
        mean, std = stacked.mean(0), stacked.std(0)
        axes.plot(grid, mean, label=f"{method} (n={len(runs)})")
        axes.fill_between(grid, mean - std, mean + std, alpha=0.25)
        summary[method] = (grid, mean, std, len(runs))
    axes.set_xlabel("environment steps")
    axes.set_ylabel("return of the evaluated policy")
    axes.set_title(task)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return summary
