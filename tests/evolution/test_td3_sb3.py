"""Our TD3 against Stable-Baselines3's TD3 (a well-known library, used only here as an oracle):
with identical weights, the same minibatch and the same target-smoothing noise, a few TD3
iterations (critic steps, the delayed actor step, the Polyak updates of both targets) move
every network of both implementations to the same numbers.

SB3 builds its actor and critic with one activation; ours uses tanh in the actor and leaky
ReLU in the critic (CEM-RL's reference code), so the SB3 policy is built with tanh and its two
critic heads (and their targets) get ``nn.LeakyReLU()`` (slope 0.01 = ``F.leaky_relu``'s) in
place of the tanh modules. The action box is [-1, 1]², where our actor's ``center +
half_range · tanh`` is SB3's squashed output exactly. SB3 samples its minibatch from its own
buffer (numpy RNG): the test hands both the same fixed batch. SB3 draws the smoothing noise
from torch's global RNG (``normal_(0, σ̃)``), ours from the agent's generator (``σ̃ ·
randn``): both are seeded alike, so the noise is the same.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

gymnasium = pytest.importorskip("gymnasium", reason="SB3 needs gymnasium")
sb3 = pytest.importorskip("stable_baselines3", reason="the TD3 anchor needs stable-baselines3")

from torchvalley.evolution.td3 import TD3  # noqa: E402

OBS, ACT, HIDDEN, BATCH = 3, 2, 5, 16


class _TinyEnv(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(-10.0, 10.0, (OBS,))
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACT,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _copy_linear_(target: nn.Linear, source: nn.Linear) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _pair() -> tuple[TD3, object]:
    from stable_baselines3.common.logger import Logger

    ours = TD3(
        OBS, ACT, [-1.0] * ACT, [1.0] * ACT, actor_hidden=(HIDDEN,), critic_hidden=(HIDDEN,),
        batch_size=BATCH, seed=0,
    )  # fmt: skip
    theirs = sb3.TD3(
        "MlpPolicy", _TinyEnv(), learning_rate=1e-3, batch_size=BATCH, learning_starts=0,
        tau=0.005, gamma=0.99, policy_delay=2, target_policy_noise=0.2, target_noise_clip=0.5,
        policy_kwargs={"net_arch": [HIDDEN], "activation_fn": nn.Tanh}, device="cpu", seed=1,
    )  # fmt: skip
    theirs.set_logger(Logger(folder=None, output_formats=[]))
    for critic in (theirs.critic, theirs.critic_target):
        for head in critic.q_networks:
            for i, module in enumerate(head):
                if isinstance(module, nn.Tanh):
                    head[i] = nn.LeakyReLU()
    # ours -> theirs, layer by layer (actor, twin critics, both targets)
    pairs = [
        (ours.actor, theirs.actor),
        (ours.actor_target, theirs.actor_target),
        (ours.critic.q1, theirs.critic.q_networks[0]),
        (ours.critic.q2, theirs.critic.q_networks[1]),
        (ours.critic_target.q1, theirs.critic_target.q_networks[0]),
        (ours.critic_target.q2, theirs.critic_target.q_networks[1]),
    ]
    for a, b in pairs:
        for la, lb in zip(_linears(a), _linears(b), strict=True):
            _copy_linear_(lb, la)
    return ours, theirs


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "obs": torch.randn(BATCH, OBS, generator=g),
        "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1,
        "reward": torch.randn(BATCH, 1, generator=g),
        "next_obs": torch.randn(BATCH, OBS, generator=g),
        "not_done": (torch.rand(BATCH, 1, generator=g) > 0.25).float(),
    }


class _FixedBuffer:
    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.batch


PAIRS = ("actor", "actor_target", "critic.q1", "critic.q2", "critic_target.q1", "critic_target.q2")


def _pairs(ours: TD3, theirs) -> list[tuple[nn.Linear, nn.Linear]]:
    """Corresponding linear layers of every network (actor, twin critics, both targets)."""
    mapped = {
        "actor": (ours.actor, theirs.actor),
        "actor_target": (ours.actor_target, theirs.actor_target),
        "critic.q1": (ours.critic.q1, theirs.critic.q_networks[0]),
        "critic.q2": (ours.critic.q2, theirs.critic.q_networks[1]),
        "critic_target.q1": (ours.critic_target.q1, theirs.critic_target.q_networks[0]),
        "critic_target.q2": (ours.critic_target.q2, theirs.critic_target.q_networks[1]),
    }
    return [
        pair
        for name in PAIRS
        for pair in zip(_linears(mapped[name][0]), _linears(mapped[name][1]), strict=True)
    ]


def _iterate(noise_seeds_theirs: list[int]) -> tuple[TD3, object]:
    """Four TD3 iterations on both sides (critic steps 1-4; the delayed actor step and the
    Polyak updates at 2 and 4), ours with noise seeds 100..103, theirs with the given ones."""
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    ours, theirs = _pair()
    batch = _batch()
    samples = ReplayBufferSamples(
        batch["obs"], batch["action"], batch["next_obs"], 1.0 - batch["not_done"], batch["reward"]
    )
    theirs.replay_buffer.sample = lambda batch_size, env=None: samples
    with torch.no_grad():  # identical starting point, checked through the forward passes
        torch.testing.assert_close(ours.actor(batch["obs"]), theirs.actor(batch["obs"]))
        q_ours = ours.critic(batch["obs"], batch["action"])
        q_theirs = theirs.critic(batch["obs"], batch["action"])
        torch.testing.assert_close(torch.cat(q_ours, 1), torch.cat(q_theirs, 1))
    for iteration, seed in enumerate(noise_seeds_theirs):
        ours.generator.manual_seed(100 + iteration)
        ours.train_step(_FixedBuffer(batch))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            theirs.train(gradient_steps=1, batch_size=BATCH)
    return ours, theirs


def test_td3_iterations_match_stable_baselines3() -> None:
    start = _pair()[0]
    ours, theirs = _iterate([100, 101, 102, 103])
    assert theirs._n_updates == ours.iterations == 4
    assert not torch.equal(start.actor.layers[0].weight, ours.actor.layers[0].weight)
    # Same float32 operations up to kernel order (our Adam is the foreach path, SB3's the
    # per-tensor one): differences of a few ulps, far below one Adam step (lr = 1e-3, and an
    # Adam step moves each weight by about lr). assert_close's float32 defaults (rtol 1.3e-6,
    # atol 1e-5) are 100x tighter than a step: a missing clip, min, delay or Polyak update,
    # or another noise draw (next test), breaks them.
    for la, lb in _pairs(ours, theirs):
        torch.testing.assert_close(la.weight, lb.weight)
        torch.testing.assert_close(la.bias, lb.bias)


def test_a_different_noise_draw_breaks_the_agreement() -> None:
    """The comparison above can fail: another smoothing-noise draw on SB3's side from the
    second iteration on moves the critics apart by more than its tolerance."""
    ours, theirs = _iterate([100, 7, 8, 9])
    pairs = _pairs(ours, theirs)
    gap = max(float((la.weight - lb.weight).detach().abs().max()) for la, lb in pairs)
    assert gap > 1e-5
