"""TD3 against a hand-written step on tiny networks: the clipped double-Q target with target
policy smoothing, the critic regression, the delayed actor update and the Polyak averages."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from torchvalley.evolution.td3 import TD3, ReplayBuffer, soft_update_, td3_target

OBS, ACT = 3, 2
LOW, HIGH = [-2.0, -1.0], [2.0, 3.0]  # an asymmetric box: center (0, 1), half-range (2, 2)


def tiny_agent(**options) -> TD3:
    return TD3(OBS, ACT, LOW, HIGH, actor_hidden=(4,), critic_hidden=(5,), seed=0, **options)


def filled_buffer(n: int = 64) -> ReplayBuffer:
    g = torch.Generator().manual_seed(7)
    buffer = ReplayBuffer(OBS, ACT, capacity=128)
    buffer.add(
        torch.randn(n, OBS, generator=g), torch.rand(n, ACT, generator=g) * 2 - 1,
        torch.randn(n, generator=g), torch.randn(n, OBS, generator=g),
        torch.rand(n, generator=g) < 0.2,
    )  # fmt: skip
    return buffer


def actor_by_hand(params: dict, obs: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(obs @ params["layers.0.weight"].T + params["layers.0.bias"])
    out = torch.tanh(h @ params["layers.1.weight"].T + params["layers.1.bias"])
    return torch.tensor([0.0, 1.0]) + torch.tensor([2.0, 2.0]) * out


def q_by_hand(params: dict, head: str, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    x = torch.cat([obs, action], -1)
    h = F.leaky_relu(x @ params[f"{head}.layers.0.weight"].T + params[f"{head}.layers.0.bias"])
    return h @ params[f"{head}.layers.1.weight"].T + params[f"{head}.layers.1.bias"]


def params_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_target_is_clipped_double_q_with_smoothed_target_action() -> None:
    agent = tiny_agent()
    batch = filled_buffer().sample(16, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(5)
    y = td3_target(
        agent.actor_target, agent.critic_target, batch, discount=0.9, policy_noise=0.2,
        noise_clip=0.5, generator=generator,
    )  # fmt: skip
    xi = torch.randn(16, ACT, generator=torch.Generator().manual_seed(5))
    noise = torch.clamp(0.2 * xi, -0.5, 0.5) * 2.0  # a fraction of the half-range 2
    a = actor_by_hand(params_of(agent.actor_target), batch["next_obs"]) + noise
    a = torch.maximum(torch.minimum(a, torch.tensor(HIGH)), torch.tensor(LOW))
    critic = params_of(agent.critic_target)
    q = torch.minimum(
        q_by_hand(critic, "q1", batch["next_obs"], a), q_by_hand(critic, "q2", batch["next_obs"], a)
    )
    expected = batch["reward"] + 0.9 * batch["not_done"] * q
    assert torch.allclose(y, expected, atol=1e-6)
    assert (batch["not_done"] == 0).any()  # terminal transitions do not bootstrap


def test_train_steps_match_a_hand_written_td3_with_delayed_actor_updates() -> None:
    lr, tau = 0.05, 0.1
    agent = tiny_agent(optimizer="sgd", actor_lr=lr, critic_lr=lr, tau=tau, batch_size=8)
    buffer = filled_buffer()
    actor, critic = params_of(agent.actor), params_of(agent.critic)
    actor_t, critic_t = params_of(agent.actor_target), params_of(agent.critic_target)
    generator = torch.Generator()
    generator.set_state(agent.generator.get_state())
    for iteration in range(1, 5):
        agent.train_step(buffer)
        # by hand: the same minibatch and smoothing noise (same generator, same order)
        batch = buffer.sample(8, generator)
        xi = torch.randn(8, ACT, generator=generator)
        a_next = actor_by_hand(actor_t, batch["next_obs"]) + torch.clamp(0.2 * xi, -0.5, 0.5) * 2
        a_next = torch.maximum(torch.minimum(a_next, torch.tensor(HIGH)), torch.tensor(LOW))
        q_next = torch.minimum(
            q_by_hand(critic_t, "q1", batch["next_obs"], a_next),
            q_by_hand(critic_t, "q2", batch["next_obs"], a_next),
        )
        y = batch["reward"] + 0.99 * batch["not_done"] * q_next
        leaves = {k: v.clone().requires_grad_(True) for k, v in critic.items()}
        loss = sum(
            ((q_by_hand(leaves, h, batch["obs"], batch["action"]) - y) ** 2).mean()
            for h in ("q1", "q2")
        )
        grads = torch.autograd.grad(loss, list(leaves.values()))
        critic = {k: v - lr * g for (k, v), g in zip(critic.items(), grads, strict=True)}
        if iteration % 2 == 0:  # the delayed actor step uses the *updated* critic's Q_1
            leaves = {k: v.clone().requires_grad_(True) for k, v in actor.items()}
            policy_loss = -q_by_hand(
                critic, "q1", batch["obs"], actor_by_hand(leaves, batch["obs"])
            )
            grads = torch.autograd.grad(policy_loss.mean(), list(leaves.values()))
            actor = {k: v - lr * g for (k, v), g in zip(actor.items(), grads, strict=True)}
            critic_t = {k: tau * critic[k] + (1 - tau) * v for k, v in critic_t.items()}
            actor_t = {k: tau * actor[k] + (1 - tau) * v for k, v in actor_t.items()}
        for mine, theirs in (
            (actor, agent.actor), (critic, agent.critic),
            (actor_t, agent.actor_target), (critic_t, agent.critic_target),
        ):  # fmt: skip
            for name, value in theirs.named_parameters():
                assert torch.allclose(value, mine[name], atol=1e-6), (iteration, name)
        if iteration == 1:  # no actor / target movement on the first (non-delayed) iteration
            assert torch.equal(params_of(agent.actor)["layers.0.weight"], actor["layers.0.weight"])
    assert agent.iterations == 4 and agent.gradient_steps == 6


def test_actor_step_does_not_move_or_accumulate_into_the_critic() -> None:
    agent = tiny_agent()
    before = params_of(agent.critic)
    agent.actor_step(filled_buffer().sample(8, torch.Generator().manual_seed(0)))
    after = params_of(agent.critic)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and p.requires_grad for p in agent.critic.parameters())


def test_soft_update() -> None:
    agent = tiny_agent()
    target = copy.deepcopy(agent.actor)
    for p in target.parameters():
        p.data.zero_()
    soft_update_(target, agent.actor, 0.25)
    for p, q in zip(target.parameters(), agent.actor.parameters(), strict=True):
        assert torch.allclose(p, 0.25 * q)


def test_replay_buffer_ring_and_state() -> None:
    buffer = ReplayBuffer(1, 1, capacity=4)
    for start in (0, 3):
        n = 3
        x = torch.arange(start, start + n, dtype=torch.float32)[:, None]
        buffer.add(x, x, x[:, 0], x, torch.zeros(n, dtype=torch.bool))
    assert len(buffer) == 4 and buffer.position == 2
    assert buffer.data["obs"][:, 0].tolist() == [4.0, 5.0, 2.0, 3.0]  # 0, 1 overwritten
    copy_ = ReplayBuffer(1, 1, capacity=4)
    copy_.load_state_dict(buffer.state_dict())
    assert torch.equal(copy_.data["obs"], buffer.data["obs"]) and copy_.position == 2
    with pytest.raises(ValueError, match="Invalid buffer"):
        ReplayBuffer(1, 1).sample(2, torch.Generator())


def test_state_dict_resume_is_exact() -> None:
    buffer = filled_buffer()
    straight = tiny_agent()
    for _ in range(6):
        straight.train_step(buffer)
    first = tiny_agent()
    for _ in range(3):
        first.train_step(buffer)
    resumed = TD3(OBS, ACT, LOW, HIGH, actor_hidden=(4,), critic_hidden=(5,), seed=11)
    resumed.load_state_dict(first.state_dict())
    for _ in range(3):
        resumed.train_step(buffer)
    for a, b in ((straight.actor, resumed.actor), (straight.critic_target, resumed.critic_target)):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"tau": 1.5}, "tau"), ({"policy_freq": 0}, "policy_freq"), ({"actor_lr": 0.0}, "actor_lr")],
)
def test_invalid_settings(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {match}"):
        tiny_agent(**options)
    with pytest.raises(ValueError, match="Invalid action bounds"):
        TD3(OBS, 1, [1.0], [1.0])
