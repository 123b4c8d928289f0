"""CEM-RL on gymnasium: action-space checks, batched vs one-by-one population episodes, exact
resume between generations, plain CEM = no gradient phase, results store logging and plots."""

from __future__ import annotations

import pytest
import torch

gymnasium = pytest.importorskip("gymnasium", reason="CEM-RL environments need gymnasium")

from torchvalley.evolution.rl import (  # noqa: E402
    CEMRL,
    TD3Runner,
    log_history,
    make_env,
    plot_returns,
    population_episodes,
)

SHORT = {"max_episode_steps": 15}
TINY = {"actor_hidden": (8,), "critic_hidden": (8,), "batch_size": 16}


def test_env_without_continuous_actions_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid env"):
        make_env("CartPole-v1")
    with pytest.raises(ValueError, match="Invalid env"):
        CEMRL("CartPole-v1")
    with pytest.raises(ValueError, match="Invalid env"):
        TD3Runner("CartPole-v1")


def test_batched_episodes_equal_one_by_one() -> None:
    runner = CEMRL("Pendulum-v1", population_size=4, env_kwargs=SHORT, **TINY)
    population = runner.cem.ask()
    results = [
        population_episodes(
            runner.envs, runner.td3.actor, population, [1, 2, 3, 4], batched=batched
        )
        for batched in (True, False)
    ]
    assert results[0].steps == results[1].steps == 4 * 15
    assert torch.allclose(results[0].returns, results[1].returns, atol=1e-4)
    for a, b in zip(results[0].transitions, results[1].transitions, strict=True):
        assert torch.allclose(a["action"], b["action"], atol=1e-5)
        assert torch.equal(a["terminated"], b["terminated"])


def build(seed: int = 0, **options) -> CEMRL:
    return CEMRL(
        "Pendulum-v1", population_size=4, start_steps=30, actor_steps=5, eval_every=60,
        eval_episodes=1, env_kwargs=SHORT, seed=seed, **TINY, **options,
    )  # fmt: skip


def test_resume_between_generations_is_exact() -> None:
    straight = build()
    straight.run(240)
    first = build()
    first.run(120)
    resumed = build(seed=5)
    resumed.load_state_dict(first.state_dict())
    resumed.run(240)
    assert torch.equal(straight.cem.mean, resumed.cem.mean)
    assert torch.equal(straight.cem.variance, resumed.cem.variance)
    for p, q in zip(straight.td3.critic.parameters(), resumed.td3.critic.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [h.return_mean for h in straight.history] == [h.return_mean for h in resumed.history]
    assert straight.td3.gradient_steps > 0


def test_gradient_phase_runs_after_start_steps_and_cem_has_none() -> None:
    hybrid = build()
    hybrid.run(60)  # generations of 60 steps: the second starts after 60 > 30 steps
    assert hybrid.td3.gradient_steps == 0
    hybrid.run(120)
    # 2 members x (60 // 2 critic + 5 actor) updates in the second generation
    assert hybrid.td3.gradient_steps == 2 * (30 + 5)
    plain = build(gradient_members=0)
    plain.run(120)
    assert plain.buffer is None and plain.td3.gradient_steps == 0
    assert [h.env_steps for h in plain.history] == [0, 60, 120]


def test_td3_runner_and_store_logging(tmp_path) -> None:
    from torchvalley.bench.store import Store

    runner = TD3Runner(
        "MountainCarContinuous-v0", start_steps=20, eval_every=25, eval_episodes=1,
        env_kwargs=SHORT, **TINY,
    )  # fmt: skip
    history = runner.run(50)
    assert [h.env_steps for h in history] == [0, 25, 50]
    assert runner.td3.gradient_steps == 31 + 15  # critic from step 20 on, actor every 2nd
    with Store(tmp_path / "runs.sqlite") as store:
        run_id = log_history(
            store, history, task="MountainCarContinuous-v0", method="td3", seed=0,
            hyperparameters={"steps": 50},
        )  # fmt: skip
        assert run_id is not None
        rows = store.epochs(run_id)
        assert [r["steps"] for r in rows] == [0, 25, 50]
        assert rows[-1]["test_metric"] == pytest.approx(history[-1].return_mean)
        summary = plot_returns(store, "MountainCarContinuous-v0", str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 0
    assert summary["td3"][3] == 1


def test_td3_runner_resumes_exactly_mid_episode() -> None:
    def runner(seed: int = 0) -> TD3Runner:
        return TD3Runner(
            "Pendulum-v1", start_steps=20, eval_every=40, eval_episodes=1,
            env_kwargs={"max_episode_steps": 30}, seed=seed, **TINY,
        )  # fmt: skip

    straight = runner()
    straight.run(80)
    first = runner()
    first.run(40)  # mid-episode (30-step episodes), after the gradient phase began
    assert first.obs is not None and first.td3.gradient_steps > 0
    resumed = runner(seed=9)
    resumed.load_state_dict(first.state_dict())
    resumed.run(80)
    for p, q in zip(straight.td3.actor.parameters(), resumed.td3.actor.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(straight.td3.critic.parameters(), resumed.td3.critic.parameters(), strict=True):
        assert torch.equal(p, q)
    assert straight.episode_returns == resumed.episode_returns
    assert [h.return_mean for h in straight.history] == [h.return_mean for h in resumed.history]
    with pytest.raises(ValueError, match="not a TD3Runner state_dict"):
        resumed.load_state_dict(build().state_dict())
