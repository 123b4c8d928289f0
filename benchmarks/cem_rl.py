"""CEM-RL vs CEM vs TD3 on gymnasium tasks, and the throughput of their pieces.

    # returns: every (method, seed) run of one environment, logged to a results store
    python benchmarks/cem_rl.py returns --env Pendulum-v1 --steps 10000 --seeds 0 1 2 3 4 \
        --store runs/cem_rl.sqlite
    # report: final-return table (mean ± std over seeds, Welch t-tests) + return-vs-steps plot
    python benchmarks/cem_rl.py report --store runs/cem_rl.sqlite --out docs/results/cem_rl
    # throughput: env steps/s (population batched vs one by one, TD3) and gradient steps/s
    python benchmarks/cem_rl.py throughput
    # the anchor: Stable-Baselines3's TD3 at our TD3Runner's settings (method "sb3_td3"), and
    # the throughput of our TD3Runner against it (end to end and the training step alone)
    python benchmarks/cem_rl.py returns --env Pendulum-v1 --methods td3 sb3_td3 ...
    python benchmarks/cem_rl.py anchor-throughput

All runs use ``torch.set_num_threads(1)``. The settings below are scaled down from the paper's
(networks 64-64 instead of 400-300, start_steps 1000 instead of 10,000, actor updates per
member capped) so that the whole set fits a small CPU budget; ``--paper`` restores the paper's
settings (for long MuJoCo runs, e.g. ``--env HalfCheetah-v5 --steps 1000000 --paper``).
``--hidden 400 300`` gives the paper's networks with the other scaled-down settings, and
``--start-steps`` / ``--td3-start-steps`` set the warm-up (the Swimmer-v5 runs of
docs/results/cem_rl.md: ``--hidden 400 300 --start-steps 5000 --td3-start-steps 10000``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import TimedRow, machine_facts, machine_lines, measure_round_robin
from torchvalley.bench.machine import load_average

METHODS = ("cem_rl", "cem", "td3", "sb3_td3")


@dataclasses.dataclass(kw_only=True)
class FunctionRow(TimedRow):
    """A timed row whose block is ``function(steps)`` (which returns its seconds)."""

    name: str
    function: Callable[[int], float]

    def run(self, steps: int) -> float:
        return self.function(steps)


def settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-method constructor keywords for this invocation."""
    if args.paper:
        common: dict[str, Any] = {"eval_every": 5000, "eval_episodes": 10}
        return {
            "cem_rl": {**common},
            "cem": {**common, "gradient_members": 0},
            "td3": {**common},
            "sb3_td3": {**common},
        }
    hidden = tuple(args.hidden)
    nets = {"actor_hidden": hidden, "critic_hidden": hidden}
    common = {
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "start_steps": args.start_steps,
        **nets,
    }
    if args.max_episode_steps:
        common["env_kwargs"] = {"max_episode_steps": args.max_episode_steps}
    td3 = dict(common)
    if args.td3_start_steps is not None:
        td3["start_steps"] = args.td3_start_steps
    return {
        "cem_rl": {**common, "population_size": 10, "actor_steps": args.actor_steps},
        "cem": {**common, "population_size": 10, "gradient_members": 0},
        "td3": td3,
        "sb3_td3": dict(td3),
    }


def _label_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def returns(args: argparse.Namespace) -> None:
    from torchvalley.bench.store import Store
    from torchvalley.evolution.rl import CEMRL, TD3Runner, log_history

    torch.set_num_threads(1)
    configs = settings(args)
    with Store(args.store) as store:
        for seed in args.seeds:
            for method in args.methods:
                options = configs[method]
                identity = {**_label_options(options), "total_steps": args.steps}
                start_cpu = time.process_time()
                kind = {"td3": TD3Runner, "sb3_td3": SB3TD3Runner}.get(method, CEMRL)
                runner = kind(args.env, seed=seed, **options)
                history = runner.run(args.steps)
                cpu = time.process_time() - start_cpu
                run_id = log_history(
                    store,
                    history,
                    task=args.env,
                    method=method,
                    seed=seed,
                    hyperparameters=identity,
                )
                if run_id is not None:
                    store.record_measurements(run_id, len(history), {"cpu_time_s": cpu})
                final = history[-1]
                print(
                    f"{args.env} {method} seed={seed} steps={final.env_steps} "
                    f"return={final.return_mean:.1f} grad_steps={final.gradient_steps} "
                    f"cpu={cpu:.0f}s",
                    flush=True,
                )


def SB3TD3Runner(env_id: str, **options: Any) -> Any:
    """Stable-Baselines3's TD3 (the anchor) behind our runner's interface and evaluation.

    It takes :class:`TD3Runner`'s keywords and maps them onto SB3's: the same hidden sizes
    (``actor_hidden`` must equal ``critic_hidden``: SB3 has one ``net_arch``), learning rate
    (one for actor and critic), batch size, γ, τ, target-policy noise and clip (both in SB3's
    [-1, 1]-scaled action space, i.e. fractions of the half-range, as ours), policy delay 2,
    one gradient iteration per environment step after ``start_steps`` uniform random actions
    (``learning_starts``), exploration N(0, (0.1 · half-range)²) (``NormalActionNoise`` in the
    scaled space). Evaluation is *ours* (:meth:`_Runner.evaluate_policy`, the same episode-seed
    generator seeded ``seed + 3``): SB3's deterministic actor on ``eval_episodes`` separate
    episodes every ``eval_every`` environment steps. Known differences that remain: SB3's
    hidden units are ReLU in actor and critic (ours: tanh in the actor, leaky ReLU in the
    critic, as CEM-RL's reference code), SB3 adds the exploration noise to its random warm-up
    actions too and starts training one step later (after ``learning_starts``, ours at it),
    and its exploration / minibatch RNGs are numpy's and torch's global ones.
    """
    import numpy as np
    from stable_baselines3 import TD3 as SB3TD3
    from stable_baselines3.common.noise import NormalActionNoise

    from torchvalley.evolution.rl import _Runner, make_env

    class _SB3Runner(_Runner):
        def __init__(
            self,
            env_id: str,
            *,
            start_steps: int = 10_000,
            exploration_noise: float = 0.1,
            buffer_size: int = 1_000_000,
            eval_every: int = 5000,
            eval_episodes: int = 10,
            env_kwargs: dict[str, Any] | None = None,
            seed: int = 0,
            actor_hidden: tuple[int, ...] = (400, 300),
            critic_hidden: tuple[int, ...] = (400, 300),
            discount: float = 0.99,
            tau: float = 0.005,
            policy_noise: float = 0.2,
            noise_clip: float = 0.5,
            policy_freq: int = 2,
            batch_size: int = 100,
            actor_lr: float = 1e-3,
            critic_lr: float = 1e-3,
        ) -> None:
            if tuple(actor_hidden) != tuple(critic_hidden) or actor_lr != critic_lr:
                raise ValueError("SB3's TD3 has one net_arch and one learning rate")
            _, act_dim, _, _ = self._setup_envs(env_id, env_kwargs, eval_every, eval_episodes)
            noise = NormalActionNoise(np.zeros(act_dim), exploration_noise * np.ones(act_dim))
            self.eval_generator = torch.Generator().manual_seed(int(seed) + 3)
            self.model = SB3TD3(
                "MlpPolicy", make_env(env_id, **self.env_kwargs), learning_rate=actor_lr,
                buffer_size=buffer_size, learning_starts=start_steps, batch_size=batch_size,
                tau=tau, gamma=discount, train_freq=1, gradient_steps=1,
                action_noise=noise,
                policy_delay=policy_freq, target_policy_noise=policy_noise,
                target_noise_clip=noise_clip, policy_kwargs={"net_arch": list(actor_hidden)},
                seed=seed, device="cpu", verbose=0,
            )  # fmt: skip
            self.policy_freq = policy_freq
            model = self.model

            def act(obs: torch.Tensor) -> torch.Tensor:
                return torch.as_tensor(model.predict(obs.numpy(), deterministic=True)[0])

            self._act = act

        def policy(self) -> Any:
            return self._act

        def _gradient_steps(self) -> int:
            n = self.model._n_updates  # critic updates; actor every policy_freq-th
            return n + n // self.policy_freq

        def _advance(self) -> int:
            chunk = self.eval_every - self.steps % self.eval_every
            self.model.learn(chunk, reset_num_timesteps=False)
            self.steps = self.model.num_timesteps
            return self._gradient_steps()

    return _SB3Runner(env_id, **options)


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def _welch_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """95 % confidence interval of mean(a) - mean(b), Welch-Satterthwaite degrees of freedom."""
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * (va + vb) ** 0.5
    diff = statistics.mean(a) - statistics.mean(b)
    return diff - half, diff + half


def report(args: argparse.Namespace) -> None:
    from torchvalley.bench.store import Store

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    payload: dict[str, Any] = {}
    for path in args.store:
        with Store(path) as store:
            lines += _report_store(store, out, payload)
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)


def _report_store(store: Any, out: Path, payload: dict[str, Any]) -> list[str]:
    from torchvalley.evolution.rl import plot_returns

    lines: list[str] = []
    tasks = sorted({run["task"] for run in store.runs(status="finished")})
    for task in tasks:
        finals: dict[str, list[float]] = {}
        extra: dict[str, list[tuple[int, int, float]]] = {}
        for run in store.runs(task=task, status="finished"):
            finals.setdefault(run["optimizer"], []).append(run["test_metric"])
            measured = {m["name"]: m["value"] for m in store.measurements(run["id"])}
            grads = max(
                m["value"] for m in store.measurements(run["id"]) if m["name"] == "gradient_steps"
            )
            extra.setdefault(run["optimizer"], []).append(
                (run["steps"], int(grads), measured.get("cpu_time_s", float("nan")))
            )
        png = out.with_name(f"{out.name}_{task}.png")
        plot_returns(store, task, str(png))
        lines += [
            f"### {task}",
            "",
            f"![return vs environment steps]({png.name})",
            "",
            "| method | seeds | env steps | final return (mean ± std) | gradient steps | "
            "CPU s / run |",
            "|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            if method not in finals:
                continue
            values = finals[method]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            steps = extra[method][0][0]
            grads = statistics.mean(e[1] for e in extra[method])
            cpu = statistics.mean(e[2] for e in extra[method])
            lines.append(
                f"| {method} | {len(values)} | {steps} | {statistics.mean(values):.1f} ± "
                f"{std:.1f} | {grads:.0f} | {cpu:.0f} |"
            )
        lines.append("")
        lines.append("| comparison | Welch t | p |")
        lines.append("|---|---|---|")
        pairs = (("td3", "sb3_td3"), ("cem_rl", "td3"), ("cem_rl", "cem"), ("cem", "td3"))
        for a, b in pairs:
            if a in finals and b in finals and len(finals[a]) > 1 and len(finals[b]) > 1:
                t, p = _welch(finals[a], finals[b])
                lines.append(f"| {a} vs {b} | {t:.2f} | {p:.3f} |")
        lines.append("")
        payload[task] = finals
    return lines


def compare(args: argparse.Namespace) -> None:
    """Return of every (method, seed) at given environment-step checkpoints, merged over
    several results stores (the first store holding a (method, seed) wins; a later store's
    value for the same run is checked to be identical: the runs are deterministic, so a
    10k-step run passes through the 6k-step run of the same settings). Mean ± std over seeds
    and Welch t-tests for the pairs of methods."""
    from torchvalley.bench.store import Store

    values: dict[tuple[int, str], dict[int, float]] = {}
    checks: list[str] = []
    for path in args.store:
        with Store(path) as store:
            for run in store.runs(task=args.env, status="finished"):
                at = {row["steps"]: row["test_metric"] for row in store.epochs(run["id"])}
                for step in args.at_steps:
                    if step not in at:
                        continue
                    seen = values.setdefault((step, run["optimizer"]), {})
                    seed = int(run["seed"])
                    if seed in seen:
                        same = seen[seed] == at[step]
                        checks.append(f"{run['optimizer']} seed {seed} at {step}: {same}")
                    else:
                        seen[seed] = at[step]
    lines = []
    for step in args.at_steps:
        lines += [
            f"#### {args.env}, return at {step} environment steps",
            "",
            "| method | seeds | return (mean ± std) |",
            "|---|---|---|",
        ]
        finals = {m: list(values.get((step, m), {}).values()) for m in METHODS}
        for method, v in finals.items():
            if v:
                std = statistics.stdev(v) if len(v) > 1 else 0.0
                lines.append(f"| {method} | {len(v)} | {statistics.mean(v):.1f} ± {std:.1f} |")
        lines += [
            "",
            "| comparison | difference of means [95 % CI] | Welch t | p |",
            "|---|---|---|---|",
        ]
        for a, b in (("td3", "sb3_td3"), ("cem_rl", "td3"), ("cem_rl", "sb3_td3"),
                     ("cem_rl", "cem"), ("cem", "td3")):  # fmt: skip
            if len(finals[a]) > 1 and len(finals[b]) > 1:
                t, p = _welch(finals[a], finals[b])
                low, high = _welch_interval(finals[a], finals[b])
                diff = statistics.mean(finals[a]) - statistics.mean(finals[b])
                lines.append(
                    f"| {a} vs {b} | {diff:.1f} [{low:.1f}, {high:.1f}] | {t:.2f} | {p:.3g} |"
                )
        lines.append("")
    if checks:
        lines.append("Same run in two stores, identical value: " + "; ".join(checks))
    print("\n".join(lines))


def throughput(args: argparse.Namespace) -> None:
    from torchvalley.evolution.cem import SepCEM
    from torchvalley.evolution.rl import make_env, population_episodes
    from torchvalley.evolution.td3 import TD3, ReplayBuffer

    torch.set_num_threads(1)
    # the machine is shared: time each block by this thread's CPU time unless --wall
    clock = time.perf_counter if args.wall else time.thread_time
    load_start = load_average()
    env_id, hidden, K = args.env, (64, 64), args.population
    probe = make_env(env_id)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    low, high = probe.action_space.low, probe.action_space.high
    agent = TD3(obs_dim, act_dim, low, high, actor_hidden=hidden, critic_hidden=hidden)
    cem = SepCEM(agent.actor, population_size=K)
    envs = [make_env(env_id) for _ in range(K)]
    buffer = ReplayBuffer(obs_dim, act_dim, 100_000)
    generator = torch.Generator().manual_seed(0)
    counted: dict[str, int] = {}

    def population_row(batched: bool):
        def run(generations: int) -> float:
            start = clock()
            steps = 0
            for _ in range(generations):
                population = cem.ask()
                seeds = torch.randint(2**31 - 1, (K,), generator=generator).tolist()
                episodes = population_episodes(
                    envs, agent.actor, population, seeds, batched=batched
                )
                steps += episodes.steps
                if len(buffer) < 50_000:
                    for t in episodes.transitions:
                        buffer.add(
                            t["obs"], t["action"], t["reward"], t["next_obs"], t["terminated"]
                        )
            counted["population"] = steps // generations
            return clock() - start

        return run

    def td3_env_row(steps: int) -> float:
        env = envs[0]
        obs = torch.as_tensor(env.reset(seed=0)[0])
        start = clock()
        for _ in range(steps):
            action = agent.act(obs, 0.1)
            next_obs, _, terminated, truncated, _ = env.step(action.numpy())
            obs = torch.as_tensor(next_obs)
            if terminated or truncated:
                obs = torch.as_tensor(env.reset()[0])
        return clock() - start

    def train_row(steps: int) -> float:
        start = clock()
        for _ in range(steps):
            agent.train_step(buffer)
        return clock() - start

    population_row(True)(1)  # fill the buffer a little before the training row's warmup
    # population rows run one generation per timed block whatever the block's step count
    rows = [
        FunctionRow(name="population_batched", function=lambda n: population_row(True)(1)),
        FunctionRow(name="population_one_by_one", function=lambda n: population_row(False)(1)),
        FunctionRow(name="td3_env_step", function=td3_env_row),
        FunctionRow(name="td3_train_step", function=train_row),
    ]
    steps = {"population_batched", "population_one_by_one"}
    measure_round_robin(rows, warmup=1, repeats=args.repeats, steps=args.steps_per_block)
    per_generation = counted["population"]
    facts = machine_facts(load_start)
    lines = [
        f"Throughput on {env_id}, actor/critic 64-64, population {K}, 1 thread, "
        f"{'wall-clock' if args.wall else 'CPU time of the thread'} "
        f"(median of {args.repeats} interleaved rounds):",
        "",
        *machine_lines(facts),
        "",
        "| row | median | rate |",
        "|---|---|---|",
    ]
    payload: dict[str, Any] = {"machine": facts, "rows": {}}
    for row in rows:
        times = row.times_ms
        if not times:
            lines.append(f"| {row.name} | failed: {row.status} | |")
            continue
        median_ms = statistics.median(times)
        if row.name in steps:
            # a block is one generation; times are per (block / steps_per_block)
            block_s = median_ms * args.steps_per_block / 1e3
            rate = f"{per_generation / block_s:.0f} env steps/s"
            shown = f"{block_s * 1e3:.0f} ms / generation ({per_generation} steps)"
            payload["rows"][row.name] = {"env_steps_per_s": per_generation / block_s}
        else:
            unit = "env steps/s" if row.name == "td3_env_step" else "TD3 iterations/s"
            rate = f"{1e3 / median_ms:.0f} {unit}"
            shown = f"{median_ms:.3f} ms / step"
            payload["rows"][row.name] = {"per_s": 1e3 / median_ms}
        lines.append(f"| {row.name} | {shown} | {rate} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def anchor_throughput(args: argparse.Namespace) -> None:
    """Our TD3Runner against SB3's TD3 at the same settings: end to end (one environment step
    plus one TD3 iteration, past the warm-up) and the training iteration alone."""
    from torchvalley.evolution.rl import TD3Runner

    torch.set_num_threads(1)
    clock = time.perf_counter if args.wall else time.thread_time
    load_start = load_average()
    hidden = tuple(args.hidden)
    options = {
        "start_steps": 200, "eval_every": 10**9, "eval_episodes": 1,
        "actor_hidden": hidden, "critic_hidden": hidden,
    }  # fmt: skip
    ours = TD3Runner(args.env, seed=0, **options)
    theirs = SB3TD3Runner(args.env, seed=0, **options)
    for _ in range(300):  # past the warm-up: the buffer holds data, training is on
        ours._advance()
    theirs.model.learn(300, reset_num_timesteps=False)
    buffer = ours.buffer

    def ours_loop(n: int) -> float:
        start = clock()
        for _ in range(n):
            ours._advance()
        return clock() - start

    def theirs_loop(n: int) -> float:
        start = clock()
        theirs.model.learn(n, reset_num_timesteps=False)
        return clock() - start

    def ours_train(n: int) -> float:
        start = clock()
        for _ in range(n):
            ours.td3.train_step(buffer)
        return clock() - start

    def theirs_train(n: int) -> float:
        start = clock()
        theirs.model.train(gradient_steps=n, batch_size=theirs.model.batch_size)
        return clock() - start

    rows = [
        FunctionRow(name="ours: TD3Runner, env step + TD3 iteration", function=ours_loop),
        FunctionRow(name="SB3: TD3.learn, env step + TD3 iteration", function=theirs_loop),
        FunctionRow(name="ours: TD3.train_step", function=ours_train),
        FunctionRow(name="SB3: TD3.train(gradient_steps=n)", function=theirs_train),
    ]
    measure_round_robin(rows, warmup=1, repeats=args.repeats, steps=args.steps_per_block)
    facts = machine_facts(load_start)
    lines = [
        f"Our TD3 vs Stable-Baselines3 TD3 on {args.env}, actor/critic "
        f"{'-'.join(map(str, hidden))}, batch 100, 1 thread, "
        f"{'wall-clock' if args.wall else 'CPU time of the thread'} (median of "
        f"{args.repeats} interleaved rounds of {args.steps_per_block} steps):",
        "",
        *machine_lines(facts),
        "",
        "| row | median per step | env steps/s | TD3 iterations/s | optimizer steps/s |",
        "|---|---|---|---|---|",
    ]
    payload: dict[str, Any] = {"machine": facts, "hidden": list(hidden), "rows": {}}
    for row in rows:
        if not row.times_ms:
            lines.append(f"| {row.name} | failed: {row.status} | | | |")
            continue
        ms = statistics.median(row.times_ms)
        per_s = 1e3 / ms
        env = f"{per_s:.0f}" if "env step" in row.name else "-"
        # one TD3 iteration = a critic step + (every 2nd) an actor step: 1.5 optimizer steps
        lines.append(f"| {row.name} | {ms:.3f} ms | {env} | {per_s:.0f} | {1.5 * per_s:.0f} |")
        payload["rows"][row.name] = {"ms_per_step": ms, "iterations_per_s": per_s}
    ratios = [
        ("end to end", rows[0], rows[1]),
        ("training iteration", rows[2], rows[3]),
    ]
    lines.append("")
    for label, a, b in ratios:
        if a.times_ms and b.times_ms:
            ratio = statistics.median(b.times_ms) / statistics.median(a.times_ms)
            lines.append(f"- {label}: SB3 time / our time = {ratio:.2f}")
            payload[f"ratio_{label}"] = ratio
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("returns")
    r.add_argument("--env", default="Pendulum-v1")
    r.add_argument("--steps", type=int, default=10_000)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--store", default="runs/cem_rl.sqlite")
    r.add_argument("--eval-every", type=int, default=1000)
    r.add_argument("--eval-episodes", type=int, default=5)
    r.add_argument("--actor-steps", type=int, default=500)
    r.add_argument("--max-episode-steps", type=int, default=0)
    r.add_argument("--hidden", type=int, nargs="+", default=[64, 64],
                   help="actor and critic hidden sizes (paper: 400 300)")  # fmt: skip
    r.add_argument("--start-steps", type=int, default=1000,
                   help="steps before the first gradient step / phase (paper: 10000)")  # fmt: skip
    r.add_argument("--td3-start-steps", type=int, default=None,
                   help="TD3's (and SB3's) start_steps, if not --start-steps")  # fmt: skip
    r.add_argument("--paper", action="store_true", help="the paper's settings (long runs)")
    p = sub.add_parser("report")
    p.add_argument("--store", nargs="+", default=["runs/cem_rl.sqlite"])
    p.add_argument("--out", default="docs/results/cem_rl_returns")
    t = sub.add_parser("throughput")
    t.add_argument("--env", default="Pendulum-v1")
    t.add_argument("--population", type=int, default=10)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--steps-per-block", type=int, default=200)
    t.add_argument("--out", default="")
    t.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    c = sub.add_parser("compare")
    c.add_argument("--store", nargs="+", required=True)
    c.add_argument("--env", default="Pendulum-v1")
    c.add_argument("--at-steps", type=int, nargs="+", default=[6000, 10000])
    a = sub.add_parser("anchor-throughput")
    a.add_argument("--env", default="Pendulum-v1")
    a.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    a.add_argument("--repeats", type=int, default=5)
    a.add_argument("--steps-per-block", type=int, default=100)
    a.add_argument("--out", default="")
    a.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    args = parser.parse_args(argv)
    commands = {"returns": returns, "report": report, "throughput": throughput}
    commands["anchor-throughput"] = anchor_throughput
    commands["compare"] = compare
    commands[args.command](args)


if __name__ == "__main__":
    main()
