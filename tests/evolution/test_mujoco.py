"""CEM-RL and TD3 on gymnasium's MuJoCo tasks (HalfCheetah-v5, Swimmer-v5: the paper's
deceptive-gradient case): a few hundred environment steps run, and resuming from a
state_dict continues bit for bit — for TD3Runner mid-episode, where the MuJoCo simulation
state has to travel with the runner (a pickled gymnasium MuJoCo env restarts from a fresh
simulation: ``EzPickle`` stores only the constructor arguments)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gymnasium", reason="CEM-RL environments need gymnasium")
pytest.importorskip("mujoco", reason="MuJoCo tasks need gymnasium[mujoco] (the rl extra)")

from torchvalley.evolution.rl import CEMRL, TD3Runner

TINY = {"actor_hidden": (8,), "critic_hidden": (8,), "batch_size": 16}
TASKS = ("HalfCheetah-v5", "Swimmer-v5")


@pytest.fixture(autouse=True)
def _mujoco_log_in_tmp(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (compiler warnings) to the cwd


def _td3(env_id: str, seed: int = 0) -> TD3Runner:
    return TD3Runner(
        env_id, start_steps=30, eval_every=60, eval_episodes=1,
        env_kwargs={"max_episode_steps": 40}, seed=seed, **TINY,
    )  # fmt: skip


def _same_networks(a: TD3Runner | CEMRL, b: TD3Runner | CEMRL) -> bool:
    pairs = [
        *zip(a.td3.actor.parameters(), b.td3.actor.parameters(), strict=True),
        *zip(a.td3.critic.parameters(), b.td3.critic.parameters(), strict=True),
    ]
    return all(torch.equal(p, q) for p, q in pairs)


@pytest.mark.parametrize("env_id", TASKS)
def test_td3_runner_runs_and_resumes_exactly_mid_episode(env_id: str) -> None:
    straight = _td3(env_id)
    straight.run(120)
    assert straight.td3.gradient_steps > 0 and len(straight.episode_returns) == 3
    first = _td3(env_id)
    first.run(60)  # mid-episode (40-step episodes), after the gradient phase began
    assert first.obs is not None
    state = first.state_dict()
    resumed = _td3(env_id, seed=9)
    resumed.load_state_dict(state)
    resumed.run(120)
    assert _same_networks(straight, resumed)
    assert straight.episode_returns == resumed.episode_returns
    assert [h.return_mean for h in straight.history] == [h.return_mean for h in resumed.history]
    # without the simulation state, the pickled env restarts fresh and the runs part ways
    del state["env_state"]
    broken = _td3(env_id, seed=9)
    broken.load_state_dict(state)
    broken.run(120)
    assert broken.episode_returns[1:] != straight.episode_returns[1:]


@pytest.mark.parametrize("env_id", TASKS)
def test_cem_rl_runs_and_resumes_exactly_between_generations(env_id: str) -> None:
    def build(seed: int = 0) -> CEMRL:
        return CEMRL(
            env_id, population_size=4, start_steps=20, actor_steps=5, eval_every=40,
            eval_episodes=1, env_kwargs={"max_episode_steps": 10}, seed=seed, **TINY,
        )  # fmt: skip

    straight = build()
    straight.run(160)  # 4 generations of 4 x 10 steps, gradient phases from the 2nd on
    assert straight.td3.gradient_steps > 0
    first = build()
    first.run(80)
    resumed = build(seed=9)
    resumed.load_state_dict(first.state_dict())
    resumed.run(160)
    assert torch.equal(straight.cem.mean, resumed.cem.mean)
    assert _same_networks(straight, resumed)
    assert [h.return_mean for h in straight.history] == [h.return_mean for h in resumed.history]
