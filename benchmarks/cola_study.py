"""CoLA measurements: overfitting (c-CoLA), conditioning (o-CoLA) and step cost.

Subcommands (each writes ``<out>.json`` and prints a markdown table):

* ``overfit``: c-CoLA-ud vs SGD-momentum on 10% of sklearn's digits (180 train images, the
  other 1617 as test), MLP 64-1000-10 ReLU, batch 32, long training (default 300 epochs). Both
  run the same heavy-ball dynamics at T = 0 (c-CoLA's ``lr = h``, ``friction = gamma``
  map to SGD's ``lr = h**2 (1 + mu) / 2``, ``momentum = mu = exp(-gamma h)``; paper: h = 0.3,
  gamma = 1), so the only difference is the constraint ``|w| <= r`` (first layer ``r0``, the
  other weight ``r1``; the weights are clipped onto the set at the start). Test loss and
  accuracy every 5 epochs; a PNG of the test loss over epochs (mean +- std over seeds).
* ``cnn``: o-CoLA-ud vs SGD-momentum (lr 0.05, momentum 0.9; o-CoLA with the equivalent
  ``h``, ``gamma`` at T = 0) on MNIST-1D with the ``mnist1d_cnn`` task's CNN, 20 epochs,
  batch 100: final test accuracy and the singular values of every constrained layer.
* ``step``: ``optimizer.step()`` time of ``cola_ud`` (orthogonal on every conv/linear weight
  but the first, the paper's choice) vs ``baoab``, both at T = 0, on the ResNet-18 parameter
  shapes of ``benchmarks/step_overhead.py`` with fixed gradients (0.01 N(0, 1)), interleaved
  round-robin (``benchmarks/_harness.py``), median of repeats; with the solve's iteration
  counts and residuals.

Usage::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/cola_study.py overfit --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/cola_study.py cnn --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/cola_study.py step --width 16
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness
from torchvalley.dynamics import ConstrainedLangevin, constrain_model
from torchvalley.dynamics.parameters import sgd_to_physical


def _welch(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


# ------------------------------------------------------------------ overfit (c-CoLA)
def _digits(split_seed: int = 0):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    n_train = len(x) // 10
    return (x[order[:n_train]], y[order[:n_train]]), (x[order[n_train:]], y[order[n_train:]])


def _evaluate(model, data):
    model.eval()
    with torch.no_grad():
        out = model(data[0])
        loss = float(nn.functional.cross_entropy(out, data[1]))
        acc = float((out.argmax(1) == data[1]).float().mean())
    model.train()
    return loss, acc


def _train_run(model, opt, train, test, epochs, batch, seed, every):
    gen = torch.Generator().manual_seed(1000 + seed)
    curve = [(0, *_evaluate(model, test), *_evaluate(model, train))]
    n = len(train[0])
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(train[0][idx]), train[1][idx]).backward()
            opt.step()
        if epoch % every == 0 or epoch == epochs:
            curve.append((epoch, *_evaluate(model, test), *_evaluate(model, train)))
    return curve


def overfit(args) -> dict:
    train, test = _digits()
    h, gamma = args.h, args.gamma
    mu = math.exp(-gamma * h)
    eta = h * h * (1 + mu) / 2
    runs = {"sgd": [], "ccola": []}
    for seed in args.seeds:
        for method in runs:
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 10))
            if method == "sgd":
                opt = torch.optim.SGD(model.parameters(), lr=eta, momentum=mu)
            else:
                groups = constrain_model(
                    model, "norm", radius=args.r1, first_radius=args.r0, clip=True
                )
                opt = ConstrainedLangevin(groups, lr=h, friction=gamma, temperature=0.0)
            start = time.perf_counter()
            curve = _train_run(model, opt, train, test, args.epochs, 32, seed, 5)
            runs[method].append(
                {"seed": seed, "curve": curve, "seconds": time.perf_counter() - start}
            )
            print(method, seed, curve[-1], file=sys.stderr, flush=True)
    result = {
        "setup": {
            "data": "sklearn digits, 10% train (180) / 90% test (1617), pixels / 16",
            "model": "MLP 64-1000-10 ReLU",
            "batch": 32,
            "epochs": args.epochs,
            "h": h,
            "gamma": gamma,
            "sgd": {"lr": eta, "momentum": mu},
            "radius_first": args.r0,
            "radius": args.r1,
            "temperature": 0.0,
        },
        "runs": runs,
        "machine": _harness.machine_facts(),
    }
    lines = [
        "| method | min test loss | epoch of min | final test loss | final test acc |",
        "|---|---|---|---|---|",
    ]
    finals = {}
    for method, rs in runs.items():
        mins = [min(c[1] for c in r["curve"]) for r in rs]
        argmins = [min(r["curve"], key=lambda c: c[1])[0] for r in rs]
        final = [r["curve"][-1][1] for r in rs]
        acc = [r["curve"][-1][2] for r in rs]
        finals[method] = (final, acc)
        lines.append(
            f"| {method} | {_mean_std(mins)} | {statistics.mean(argmins):.0f} | "
            f"{_mean_std(final)} | {_mean_std(acc)} |"
        )
    lines.append(
        f"\nWelch p (final test loss): {_welch(finals['sgd'][0], finals['ccola'][0]):.2g}; "
        f"(final test accuracy): {_welch(finals['sgd'][1], finals['ccola'][1]):.2g}"
    )
    result["table"] = "\n".join(lines)
    if args.png:
        _plot(runs, args.png)
    return result


def _plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, label in (("sgd", "SGD-momentum"), ("ccola", "c-CoLA-ud (T=0)")):
        curves = torch.tensor([[c[1] for c in r["curve"]] for r in runs[method]])
        epochs = [c[0] for c in runs[method][0]["curve"]]
        mean, std = curves.mean(0), curves.std(0)
        ax.plot(epochs, mean, label=label)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test loss (cross-entropy)")
    ax.set_title("digits, 10% train, MLP 64-1000-10 (5 seeds, mean ± std)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------ cnn (o-CoLA)
def cnn(args) -> dict:
    from torchvalley.bench.tasks.mnist1d import Mnist1dCNN, load_mnist1d

    data = load_mnist1d(42)
    phys = sgd_to_physical(args.lr, args.momentum)
    runs = {"sgd": [], "ocola": []}
    for seed in args.seeds:
        for method in runs:
            torch.manual_seed(seed)
            model = Mnist1dCNN()
            if method == "sgd":
                opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
                layers = [p for p in model.parameters() if p.dim() >= 2][1:]
            else:
                groups = constrain_model(model, "orthogonal")
                layers = groups[0]["params"]
                opt = ConstrainedLangevin(
                    groups, lr=phys.lr, friction=phys.friction, temperature=0.0
                )
            start = time.perf_counter()
            curve = _train_run(model, opt, data.train, data.test, args.epochs, 100, seed, 5)
            singular = []
            for w in layers:
                tall = w.detach().reshape(w.shape[0], -1)
                s = torch.linalg.svdvals(tall)
                singular.append(
                    {"shape": list(w.shape), "min": float(s.min()), "max": float(s.max())}
                )
            record = {
                "seed": seed,
                "curve": curve,
                "singular_values": singular,
                "seconds": time.perf_counter() - start,
            }
            if method == "ocola":
                record["diagnostics"] = opt.diagnostics()
            runs[method].append(record)
            print(method, seed, curve[-1], singular, file=sys.stderr, flush=True)
    lines = [
        "| method | final test acc | final test loss | σ range of constrained layers "
        "(all seeds) | s/run |",
        "|---|---|---|---|---|",
    ]
    accs = {}
    for method, rs in runs.items():
        acc = [r["curve"][-1][2] for r in rs]
        loss = [r["curve"][-1][1] for r in rs]
        accs[method] = acc
        lo = min(s["min"] for r in rs for s in r["singular_values"])
        hi = max(s["max"] for r in rs for s in r["singular_values"])
        sec = statistics.mean(r["seconds"] for r in rs)
        lines.append(
            f"| {method} | {_mean_std(acc)} | {_mean_std(loss)} | [{lo:.6f}, {hi:.4f}] "
            f"| {sec:.1f} |"
        )
    lines.append(f"\nWelch p (final test accuracy): {_welch(accs['sgd'], accs['ocola']):.2g}")
    return {
        "setup": {
            "task": "MNIST-1D (4000/1000, data seed 42), Mnist1dCNN",
            "epochs": args.epochs,
            "batch": 100,
            "sgd": {"lr": args.lr, "momentum": args.momentum},
            "ocola": {"lr": phys.lr, "friction": phys.friction, "temperature": 0.0},
        },
        "runs": runs,
        "table": "\n".join(lines),
        "machine": _harness.machine_facts(),
    }


# ------------------------------------------------------------------ step cost
def _product_multiply_adds(opt) -> int:
    """Multiply-adds in the matrix products (``mm``/``bmm``/``addmm``/``baddbmm``) of one
    ``opt.step()``, counted at the dispatcher (the step is taken)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    products = {"mm", "bmm", "addmm", "baddbmm"}

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in products:
                a, b = args[-2], args[-1]
                if name in ("addmm", "baddbmm"):
                    a, b = args[1], args[2]
                Count.total += a.numel() * b.shape[-1]
            return func(*args, **(kwargs or {}))

    with Count():
        opt.step()
    return Count.total


class _Gram:
    """The floor of any orthogonality-preserving step: one ``W^T P`` product per constrained
    weight (the normal part of an update cannot be known with less), nothing else."""

    def __init__(self, params):
        from torchvalley.manifolds.stiefel import Stiefel

        tall = Stiefel(flatten=True)._tall
        self.pairs = [(tall(p.detach()), tall(p.grad)) for p in params]

    def step(self):
        for w, g in self.pairs:
            w.transpose(-1, -2) @ g

    def diagnostics(self):
        return [{"iterations": 0, "residual": 0.0}]


class _StepRow(_harness.TimedRow):
    def __init__(self, label, opt):
        super().__init__()
        self.label, self.opt = label, opt

    def run(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.opt.step()
        return time.perf_counter() - start


def step(args) -> dict:
    from step_overhead import resnet18_shapes

    shapes = resnet18_shapes(args.width)

    def tensors():
        gen = torch.Generator().manual_seed(0)
        params = [nn.Parameter(0.05 * torch.randn(s, generator=gen)) for s in shapes]
        for p in params:
            p.grad = 0.01 * torch.randn(p.shape, generator=gen)
        return params

    base = tensors()
    rows = [_StepRow("baoab T=0", ConstrainedLangevin(base, lr=0.1, temperature=0.0))]
    for label, foreach in (
        ("cola_ud orthogonal T=0", True),
        ("cola_ud orthogonal T=0, foreach=False", False),
    ):
        params = tensors()
        weights = [p for p in params if p.dim() >= 2]
        module = nn.Module()
        for i, p in enumerate(params):
            module.register_parameter(f"p{i}", p)
        groups = constrain_model(module, "orthogonal")
        opt = ConstrainedLangevin(groups, lr=0.1, temperature=0.0, foreach=foreach)
        rows.append(_StepRow(label, opt))
        assert len(groups[0]["params"]) == len(weights) - 1
    rows.append(
        _StepRow("floor: one W^T G product per constrained weight", _Gram(groups[0]["params"]))
    )
    if args.norm:
        params = tensors()
        module = nn.Module()
        for i, p in enumerate(params):
            module.register_parameter(f"p{i}", p)
        groups = constrain_model(module, "norm", radius=1.0, clip=True)
        rows.append(
            _StepRow("cola_ud norm T=0", ConstrainedLangevin(groups, lr=0.1, temperature=0.0))
        )
    _harness.measure_round_robin(rows, warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    reference = statistics.median(rows[0].times_ms)
    lines = [
        "| row | median ms/step | IQR | ratio to baoab | paired ratio | solve iterations (max) "
        "| residual (max) | product multiply-adds per step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out = []
    for row in rows:
        q1, med, q3 = _harness.quartiles(row.times_ms)
        diag = row.opt.diagnostics()[0]
        paired = _harness.paired_ratio_median(row.times_ms, rows[0].times_ms)
        macs = _product_multiply_adds(row.opt)
        lines.append(
            f"| {row.label} | {med:.2f} | {q1:.2f}–{q3:.2f} | {med / reference:.2f} "
            f"| {paired:.2f} | "
            f"{diag['iterations']} | {diag['residual']:.2g} | {macs / 1e6:.0f} M |"
        )
        out.append(
            {"label": row.label, "times_ms": row.times_ms, "diagnostics": diag, "macs": macs}
        )
    return {
        "setup": {
            "shapes": f"ResNet-18 (CIFAR) parameter shapes, width {args.width}, "
            f"{sum(math.prod(s) for s in shapes)} parameters in {len(shapes)} tensors",
            "gradients": "fixed, 0.01 N(0, 1)",
            "lr": 0.1,
            "friction": 1.0,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "rows": out,
        "table": "\n".join(lines),
        "machine": _harness.machine_facts(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("overfit")
    o.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    o.add_argument("--epochs", type=int, default=300)
    o.add_argument("--h", type=float, default=0.3)
    o.add_argument("--gamma", type=float, default=1.0)
    o.add_argument("--r0", type=float, default=0.2)
    o.add_argument("--r1", type=float, default=0.1)
    o.add_argument("--png", type=Path, default=None)
    c = sub.add_parser("cnn")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    c.add_argument("--epochs", type=int, default=20)
    c.add_argument("--lr", type=float, default=0.05)
    c.add_argument("--momentum", type=float, default=0.9)
    s = sub.add_parser("step")
    s.add_argument("--width", type=int, default=16)
    s.add_argument("--repeats", type=int, default=7)
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--norm", action="store_true")
    for p in (o, c, s):
        p.add_argument("--out", type=Path, required=True, help="JSON output path")
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"overfit": overfit, "cnn": cnn, "step": step}[args.command](args)
    result["command"] = " ".join(sys.argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(result["table"])


if __name__ == "__main__":
    main()
