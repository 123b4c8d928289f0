"""``benchmarks/cem_rl.py``'s per-method settings: the scaled-down defaults (the protocol of the
Pendulum and MountainCar tables) are unchanged, and ``--hidden`` / ``--start-steps`` /
``--td3-start-steps`` (the Swimmer runs at the paper's 400-300 networks) reach the runners."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cem_rl.py"


def _module():
    spec = importlib.util.spec_from_file_location("cem_rl_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _args(**overrides):
    base = {
        "paper": False, "eval_every": 1000, "eval_episodes": 5, "actor_steps": 500,
        "max_episode_steps": 0, "hidden": [64, 64], "start_steps": 1000,
        "td3_start_steps": None,
    }  # fmt: skip
    return argparse.Namespace(**{**base, **overrides})


def test_default_settings_keep_the_scaled_down_protocol() -> None:
    configs = _module().settings(_args())
    for method in ("cem_rl", "cem", "td3", "sb3_td3"):
        assert configs[method]["actor_hidden"] == (64, 64)
        assert configs[method]["critic_hidden"] == (64, 64)
        assert configs[method]["start_steps"] == 1000
    assert configs["cem"]["gradient_members"] == 0
    assert configs["cem_rl"]["actor_steps"] == 500


def test_hidden_and_start_steps_reach_every_method() -> None:
    configs = _module().settings(
        _args(hidden=[400, 300], start_steps=5000, td3_start_steps=10_000, actor_steps=1000)
    )
    for method in ("cem_rl", "cem", "td3", "sb3_td3"):
        assert configs[method]["actor_hidden"] == (400, 300)
        assert configs[method]["critic_hidden"] == (400, 300)
    assert configs["cem_rl"]["start_steps"] == configs["cem"]["start_steps"] == 5000
    assert configs["td3"]["start_steps"] == configs["sb3_td3"]["start_steps"] == 10_000
    assert configs["cem_rl"]["actor_steps"] == 1000
