"""Control for the UQ benchmark's diabetes row: the other methods with DiMS's tuned prior.

DiMS's grid in ``torchvalley.bench.uq`` tunes the prior strength up to weight decay 0.1; the
other methods' grids stop at 1e-2 (MAP, Laplace) or fix 1e-3 (SGLD, BAOAB). This reruns MAP,
all-weight Laplace, SGLD (lr 1e-3) and BAOAB (lr 1e-2), their tuned settings on diabetes, with
weight decay 0.1 over seeds 0-4 at ``--scale 0.5`` and writes the test metrics (with CPU
seconds) to a JSON file.

    python benchmarks/uq_prior_control.py --out runs/uq_dims/diabetes_control_wd0.1.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from torchvalley.bench import uq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/uq_dims/diabetes_control.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    wd = args.weight_decay
    chain = {"steps": 1000, "burn_in": 500, "thin": 25, "epochs": 20}  # fit_predict at scale 0.5
    out: dict[str, list[dict[str, float]]] = {}

    def fit(name: str, data: uq.UQData, seed: int) -> uq.Prediction:
        if name in ("map", "laplace_all"):
            return uq.fit_predict(name, data, seed, {"weight_decay": wd}, scale=0.5)
        lr = {"sgld": 1e-3, "baoab": 1e-2}[name]
        model, samples = uq._sample_chain(data, seed, name, lr, weight_decay=wd, **chain)
        return uq._predict_samples(model, samples, data)

    for seed in range(args.seeds):
        data = uq.load_uq_data("diabetes", seed)
        for name in ("map", "laplace_all", "sgld", "baoab"):
            start = time.process_time()
            metrics = uq.evaluate(fit(name, data, seed), data, "test")
            metrics["cpu_seconds"] = time.process_time() - start
            out.setdefault(name, []).append(metrics)
            print(seed, name, metrics, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
