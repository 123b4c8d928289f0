"""CEM-RL vs CEM vs TD3 on gymnasium tasks, and the throughput of their pieces.

    # returns: every (method, seed) run of one environment, logged to a results store
    python benchmarks/cem_rl.py returns --env Pendulum-v1 --steps 10000 --seeds 0 1 2 3 4 \
        --store runs/cem_rl.sqlite
    # report: final-return table (mean ± std over seeds, Welch t-tests) + return-vs-steps plot
    python benchmarks/cem_rl.py report --store runs/cem_rl.sqlite --out docs/results/cem_rl
    # throughput: env steps/s (population batched vs one by one, TD3) and gradient steps/s
    python benchmarks/cem_rl.py throughput

All runs use ``torch.set_num_threads(1)``. The settings below are scaled down from the paper's
(networks 64-64 instead of 400-300, start_steps 1000 instead of 10,000, actor updates per
member capped) so that the whole set fits a small CPU budget; ``--paper`` restores the paper's
settings (for long MuJoCo runs, e.g. ``--env HalfCheetah-v5 --steps 1000000 --paper``).
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

METHODS = ("cem_rl", "cem", "td3")


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
        }
    nets = {"actor_hidden": (64, 64), "critic_hidden": (64, 64)}
    common = {
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "start_steps": 1000,
        **nets,
    }
    if args.max_episode_steps:
        common["env_kwargs"] = {"max_episode_steps": args.max_episode_steps}
    return {
        "cem_rl": {**common, "population_size": 10, "actor_steps": args.actor_steps},
        "cem": {**common, "population_size": 10, "gradient_members": 0},
        "td3": {**common},
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
                runner = (TD3Runner if method == "td3" else CEMRL)(args.env, seed=seed, **options)
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


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


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
        for a, b in (("cem_rl", "td3"), ("cem_rl", "cem"), ("cem", "td3")):
            if a in finals and b in finals and len(finals[a]) > 1 and len(finals[b]) > 1:
                t, p = _welch(finals[a], finals[b])
                lines.append(f"| {a} vs {b} | {t:.2f} | {p:.3f} |")
        lines.append("")
        payload[task] = finals
    return lines


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
    args = parser.parse_args(argv)
    {"returns": returns, "report": report, "throughput": throughput}[args.command](args)


if __name__ == "__main__":
    main()
