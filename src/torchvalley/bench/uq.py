"""The uncertainty-quantification benchmark: MAP, deep ensembles, MC dropout, Laplace, SG-MCMC
and DiMS on classification with out-of-distribution inputs and on regression with a gap.

Tasks (all offline):

* ``mnist1d_ood`` / ``digits_ood``: classification on classes 0-6; the test signals/images of
  classes 7-9 are the out-of-distribution set (held-out classes). Train/validation/test splits
  of the in-distribution data: the task's train set split 80/20, and its test set.
* ``diabetes``: scikit-learn's diabetes regression data (442 patients, 10 features),
  standardised with the training split's statistics, split 60/20/20 by the seed.
* ``gap1d``: a 1-D heteroscedastic toy, ``y = sin(2x) + 0.3 x + ε``, ``ε ~ N(0, (0.1 + 0.05
  |x|)²)``, with training inputs in [-4, -1] ∪ [1, 4]; the test set covers [-4, 4], and the
  metrics are also reported on the gap (-1, 1) alone (in-between uncertainty).

Methods (``METHODS``): ``map`` (Adam + weight decay, the Gaussian prior), ``ensemble`` (5
MAPs from different initialisations), ``mc_dropout`` (20 passes with dropout on),
``laplace_ll`` / ``laplace_all`` (laplace-torch on the MAP: last layer, and every weight with a
Kronecker-factored Hessian; prior precision by marginal likelihood; probit / GLM predictive),
``sgld`` and ``baoab`` (torchvalley samplers from the MAP at the Bayesian temperature 1/N, on
the mean loss plus prior), ``dims`` (DiMS from the MAP on the full-batch objective of the same
form, the mean loss plus the prior (weight_decay/2)|θ|², whose minimum set it samples; the
prior's strength is tuned like MAP's and Laplace's, over a grid that starts at the SG-MCMC
chains' 1e-3; samples along the trajectory after settling). Regression models predict the
mean; the observation noise σ² is each method's mean squared training residual (homoscedastic
Gaussian likelihood).

Metrics: test NLL, accuracy / RMSE, ECE (15 bins), Brier score, OOD AUROC of the predictive
entropy, wall-clock of fitting + prediction. Tuning: each method gets the same number of
configurations (its grid in ``GRIDS``), chosen by validation NLL on the first seed, then run
over all seeds on the test split (:func:`run_benchmark`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchvalley.dynamics.posterior import (
    SampleCollector,
    bayesian_model_average,
    uq_metrics,
)

__all__ = [
    "GRIDS",
    "METHODS",
    "TASKS",
    "UQData",
    "auroc",
    "fit_predict",
    "gaussian_nll",
    "load_uq_data",
    "predictive_entropy",
    "run_benchmark",
]

TASKS = ("mnist1d_ood", "digits_ood", "diabetes", "gap1d")
METHODS = (
    "map",
    "ensemble",
    "mc_dropout",
    "laplace_ll",
    "laplace_all",
    "sgld",
    "baoab",
    "dims",
)
#: The configurations each method is tuned over (the same count for every method).
GRIDS: dict[str, list[dict[str, float]]] = {
    "map": [{"weight_decay": w} for w in (1e-4, 1e-3, 1e-2)],
    "ensemble": [{"weight_decay": w} for w in (1e-4, 1e-3, 1e-2)],
    "mc_dropout": [{"p": p} for p in (0.05, 0.1, 0.2)],
    "laplace_ll": [{"weight_decay": w} for w in (1e-4, 1e-3, 1e-2)],
    "laplace_all": [{"weight_decay": w} for w in (1e-4, 1e-3, 1e-2)],
    "sgld": [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3)],
    "baoab": [{"lr": lr} for lr in (3e-3, 1e-2, 3e-2)],
    # DiMS tunes its prior's strength (the first value is the SG-MCMC chains' 1e-3): it
    # converges to the minimum set of the regularised potential, so the prior decides how far
    # that set fits the training data; its initial energy (DIMS_ENERGY) changed the validation
    # NLL by < 0.03 on gap1d, diabetes and digits, and is fixed.
    "dims": [{"weight_decay": w} for w in (1e-3, 1e-2, 1e-1)],
}
#: DiMS's initial kinetic energy E₀ in the benchmark.
DIMS_ENERGY = 0.01
CLASSIFICATION_TASKS = ("mnist1d_ood", "digits_ood")
IN_CLASSES = 7


@dataclasses.dataclass
class UQData:
    """Splits of one task: ``(inputs, targets)`` pairs; ``ood`` inputs (classification) or the
    gap test set (``gap1d``), else ``None``."""

    task: str
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    ood: Tensor | None = None
    gap: tuple[Tensor, Tensor] | None = None

    @property
    def classification(self) -> bool:
        return self.task in CLASSIFICATION_TASKS

    @property
    def outputs(self) -> int:
        return IN_CLASSES if self.classification else 1


def _split(
    x: Tensor, y: Tensor, fractions: Sequence[float], seed: int
) -> list[tuple[Tensor, Tensor]]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cuts = [0]
    for f in fractions:
        cuts.append(cuts[-1] + round(f * len(y)))
    cuts[-1] = len(y)
    return [(x[order[a:b]], y[order[a:b]]) for a, b in itertools.pairwise(cuts)]


def load_uq_data(task: str, seed: int) -> UQData:
    """The splits of ``task`` for ``seed`` (see the module docstring).

    Raises:
        ValueError: an unknown task.
    """
    if task in CLASSIFICATION_TASKS:
        if task == "mnist1d_ood":
            from torchvalley.bench.tasks.mnist1d import load_mnist1d

            data = load_mnist1d(42)
        else:
            from torchvalley.bench.tasks.digits import load_digits_data

            data = load_digits_data(0)
        (x, y), (xt, yt) = data.train, data.test
        keep, keep_t = y < IN_CLASSES, yt < IN_CLASSES
        train, val = _split(x[keep], y[keep], (0.8, 0.2), seed)
        return UQData(task, train, val, (xt[keep_t], yt[keep_t]), ood=xt[~keep_t])
    if task == "diabetes":
        from sklearn.datasets import load_diabetes

        bunch = load_diabetes()
        x = torch.as_tensor(bunch.data, dtype=torch.float32)
        y = torch.as_tensor(bunch.target, dtype=torch.float32)
        train, val, test = _split(x, y, (0.6, 0.2, 0.2), seed)
        mx, sx = train[0].mean(0), train[0].std(0)
        my, sy = train[1].mean(), train[1].std()

        def norm(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return (pair[0] - mx) / sx, ((pair[1] - my) / sy).unsqueeze(1)

        return UQData(task, norm(train), norm(val), norm(test))
    if task == "gap1d":
        generator = torch.Generator().manual_seed(1000 + seed)

        def draw(x: Tensor) -> tuple[Tensor, Tensor]:
            noise = (0.1 + 0.05 * x.abs()) * torch.randn(x.shape, generator=generator)
            return x.unsqueeze(1), (torch.sin(2 * x) + 0.3 * x + noise).unsqueeze(1)

        def sides(n: int) -> Tensor:
            u = torch.rand(n, generator=generator) * 3 + 1
            sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
            return u * sign

        test_x = torch.rand(400, generator=generator) * 8 - 4
        test = draw(test_x)
        inside = test_x.abs() < 1
        return UQData(
            task,
            draw(sides(200)),
            draw(sides(100)),
            test,
            gap=(test[0][inside], test[1][inside]),
        )
    raise ValueError(f"Invalid task: {task!r} (one of {', '.join(TASKS)})")


# -------------------------------------------------------------------------------------- metrics


def predictive_entropy(probs: Tensor) -> Tensor:
    """H[p] = −Σ_c p_c log p_c per row (0 log 0 = 0)."""
    probs = probs.double()
    return -(probs * torch.log(probs.clamp_min(1e-300))).sum(-1)


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve for telling ``out`` (positives) from ``in`` by a higher score:
    the Mann–Whitney U statistic / (n_in n_out), ties counted one half (average ranks)."""
    scores = torch.cat([in_scores.double().flatten(), out_scores.double().flatten()])
    n_in, n_out = in_scores.numel(), out_scores.numel()
    if n_in == 0 or n_out == 0:
        raise ValueError("auroc needs at least one score in each set")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    i = 0
    n = len(scores)
    values = sorted_scores.tolist()
    while i < n:  # average ranks over ties
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[n_in:].sum().item()
    return (rank_sum - n_out * (n_out + 1) / 2) / (n_in * n_out)


def gaussian_nll(mean: Tensor, variance: Tensor, targets: Tensor) -> float:
    """Mean of ½ log(2π σ²) + (y − μ)² / (2σ²)."""
    variance = variance.double().clamp_min(1e-12)
    err = (targets.double() - mean.double()) ** 2
    return float((0.5 * torch.log(2 * math.pi * variance) + err / (2 * variance)).mean())


def regression_metrics(mean: Tensor, variance: Tensor, targets: Tensor) -> dict[str, float]:
    """Gaussian NLL and RMSE."""
    rmse = float(((mean.double() - targets.double()) ** 2).mean().sqrt())
    return {"nll": gaussian_nll(mean, variance, targets), "rmse": rmse}


# -------------------------------------------------------------------------------------- models


def make_model(data: UQData, dropout: float = 0.0) -> nn.Module:
    """in → 100 → 100 → out, ReLU, dropout after each hidden layer (p = 0: identity)."""
    width = 100 if data.classification else 50
    d_in = data.train[0].shape[1]
    return nn.Sequential(
        nn.Linear(d_in, width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(width, data.outputs),
    )


def _loss_fn(data: UQData) -> Callable[[Tensor, Tensor], Tensor]:
    return F.cross_entropy if data.classification else F.mse_loss


def train_map(
    data: UQData,
    seed: int,
    *,
    weight_decay: float,
    dropout: float = 0.0,
    epochs: int = 40,
    batch_size: int = 128,
) -> nn.Module:
    """Adam (lr 1e-3) with decoupled-free L2 ``weight_decay`` (a Gaussian prior)."""
    torch.manual_seed(seed)
    model = make_model(data, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=weight_decay)
    x, y = data.train
    loss_fn = _loss_fn(data)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    # ``epochs`` counts passes over 4000 examples' worth of steps, at least one pass: small
    # data sets (gap1d: 200 points) get the same number of gradient steps as larger ones.
    epochs = max(epochs, math.ceil(epochs * 4000 / len(y)))
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    return model


@dataclasses.dataclass
class Prediction:
    """Classification: ``probs`` for every input set; regression: mean and variance."""

    sets: dict[str, Any]


def _noise_variance(mean_fn: Callable[[Tensor], Tensor], data: UQData) -> float:
    x, y = data.train
    with torch.no_grad():
        return float(((mean_fn(x) - y) ** 2).mean())


def _predict_samples(
    model: nn.Module, samples: Sequence[Mapping[str, Tensor]], data: UQData
) -> Prediction:
    sets = _input_sets(data)
    if data.classification:
        return Prediction({k: bayesian_model_average(model, samples, x) for k, x in sets.items()})

    def mean_fn(x: Tensor) -> Tensor:
        return bayesian_model_average(model, samples, x, kind="regression")[0]

    noise = _noise_variance(mean_fn, data)
    out = {}
    for k, x in sets.items():
        mean, var = bayesian_model_average(model, samples, x, kind="regression")
        out[k] = (mean, var + noise)
    return Prediction(out)


def _input_sets(data: UQData) -> dict[str, Tensor]:
    sets = {"val": data.val[0], "test": data.test[0]}
    if data.ood is not None:
        sets["ood"] = data.ood
    if data.gap is not None:
        sets["gap"] = data.gap[0]
    return sets


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _sample_chain(
    data: UQData,
    seed: int,
    name: str,
    lr: float,
    *,
    steps: int,
    burn_in: int,
    thin: int,
    epochs: int,
    batch_size: int = 128,
    weight_decay: float = 1e-3,
) -> tuple[nn.Module, list[dict[str, Tensor]]]:
    """SGLD / BAOAB from the MAP, sampling exp(−N U) (temperature τ = 1/N) with U the MAP
    objective: the mean loss plus (weight_decay/2)|θ|² (Adam's L2 term); mini-batches."""
    import torchvalley

    model = train_map(data, seed, weight_decay=weight_decay, epochs=epochs)
    x, y = data.train
    n = len(y)
    extra = {"friction": 1.0} if name == "baoab" else {}
    opt = torchvalley.create_optimizer(
        name, model.parameters(), lr=lr, temperature=1.0 / n, seed=seed, **extra
    )
    collector = SampleCollector(model, burn_in=burn_in, thin=thin)
    loss_fn = _loss_fn(data)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        opt.zero_grad(set_to_none=True)
        prior = sum(p.pow(2).sum() for p in model.parameters())
        (loss_fn(model(x[idx]), y[idx]) + 0.5 * weight_decay * prior).backward()
        opt.step()
        collector.collect(step)
    model.eval()
    return model, collector.samples


def _dims_chain(
    data: UQData,
    seed: int,
    energy: float,
    *,
    steps: int,
    burn_in: int,
    thin: int,
    epochs: int,
    weight_decay: float = 1e-3,
) -> tuple[nn.Module, list[dict[str, Tensor]]]:
    """DiMS from the MAP on the full-batch potential U = mean loss + (weight_decay/2)|θ|², the
    SG-MCMC chains' objective (the same prior, default weight decay 1e-3): it samples the
    minimum set of the regularised potential. ``weight_decay=0`` samples the minimum set of the
    data loss alone, which on small data sets interpolates the training targets (diabetes:
    the noise estimate collapses; ``docs/results/uq.md``)."""
    from torchvalley.dynamics.dims import DiMS

    model = train_map(data, seed, weight_decay=1e-3, epochs=epochs)
    x, y = data.train
    loss_fn = _loss_fn(data)
    opt = DiMS(model.parameters(), lr=0.01, gravity=10.0, friction=5.0, energy=energy, seed=seed)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    collector = SampleCollector(model, burn_in=burn_in, thin=thin)
    for step in range(steps):
        opt.step(closure)
        collector.collect(step)
    return model, collector.samples


def _laplace(data: UQData, seed: int, subset: str, weight_decay: float, epochs: int) -> Prediction:
    from laplace import Laplace

    model = train_map(data, seed, weight_decay=weight_decay, epochs=epochs)
    x, y = data.train
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=256, shuffle=False
    )
    likelihood = "classification" if data.classification else "regression"
    kwargs = {} if data.classification else {"sigma_noise": math.sqrt(_noise_variance(model, data))}
    la = Laplace(model, likelihood, subset_of_weights=subset, hessian_structure="kron", **kwargs)
    la.fit(loader)
    link = {"link_approx": "probit"} if data.classification else {}
    with warnings.catch_warnings():  # laplace-torch warns on every classification call
        warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
        la.optimize_prior_precision(method="marglik", pred_type="glm", **link)
    out = {}
    for k, inputs in _input_sets(data).items():
        with torch.no_grad():
            if data.classification:
                out[k] = la(inputs, pred_type="glm", link_approx="probit")
            else:
                mean, var = la(inputs, pred_type="glm")
                noise = float(la.sigma_noise) ** 2
                out[k] = (mean.reshape(-1, 1), var.reshape(-1, 1) + noise)
    return Prediction(out)


def fit_predict(
    method: str, data: UQData, seed: int, config: Mapping[str, float], *, scale: float = 1.0
) -> Prediction:
    """Fit ``method`` with ``config`` on ``data.train`` and predict every input set.

    ``scale`` multiplies the training budgets (epochs, chain lengths), for quick runs.

    Raises:
        ValueError: an unknown method.
    """
    epochs = max(1, round(40 * scale))
    steps = max(20, round(2000 * scale))
    burn_in, thin = steps // 2, max(1, steps // 40)
    if method == "map":
        model = train_map(data, seed, weight_decay=config["weight_decay"], epochs=epochs)
        return _predict_samples(model, [_state(model)], data)
    if method == "ensemble":
        members = [
            train_map(data, seed * 100 + m, weight_decay=config["weight_decay"], epochs=epochs)
            for m in range(5)
        ]
        return _predict_samples(members[0], [_state(m) for m in members], data)
    if method == "mc_dropout":
        model = train_map(data, seed, weight_decay=1e-4, dropout=config["p"], epochs=epochs)
        return _mc_dropout(model, data, seed)
    if method in ("laplace_ll", "laplace_all"):
        subset = "last_layer" if method == "laplace_ll" else "all"
        return _laplace(data, seed, subset, config["weight_decay"], epochs)
    if method in ("sgld", "baoab"):
        model, samples = _sample_chain(
            data, seed, method, config["lr"], steps=steps, burn_in=burn_in, thin=thin, epochs=epochs
        )
        return _predict_samples(model, samples, data)
    if method == "dims":
        model, samples = _dims_chain(
            data,
            seed,
            config.get("energy", DIMS_ENERGY),
            steps=steps,
            burn_in=burn_in,
            thin=thin,
            epochs=epochs,
            weight_decay=config.get("weight_decay", 1e-3),
        )
        return _predict_samples(model, samples, data)
    raise ValueError(f"Invalid method: {method!r} (one of {', '.join(METHODS)})")


def _mc_dropout(model: nn.Module, data: UQData, seed: int, passes: int = 20) -> Prediction:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model.train()  # dropout on
    try:
        with torch.no_grad():

            def stack(x: Tensor) -> Tensor:
                outs = [model(x) for _ in range(passes)]
                if data.classification:
                    return torch.stack([torch.softmax(o, -1) for o in outs])
                return torch.stack(outs)

            sets = {k: stack(x) for k, x in _input_sets(data).items()}
            if data.classification:
                return Prediction({k: s.mean(0) for k, s in sets.items()})
            noise = float(((stack(data.train[0]).mean(0) - data.train[1]) ** 2).mean())
            return Prediction(
                {k: (s.mean(0), s.var(0, unbiased=False) + noise) for k, s in sets.items()}
            )
    finally:
        model.eval()
        torch.random.set_rng_state(generator_state)


def evaluate(prediction: Prediction, data: UQData, split: str = "test") -> dict[str, float]:
    """The metrics of ``prediction`` on ``split`` (``"val"`` or ``"test"``)."""
    targets = getattr(data, split)[1]
    if data.classification:
        probs = prediction.sets[split]
        metrics = uq_metrics(probs, targets)
        if split == "test" and data.ood is not None:
            metrics["ood_auroc"] = auroc(
                predictive_entropy(probs), predictive_entropy(prediction.sets["ood"])
            )
        return metrics
    mean, var = prediction.sets[split]
    metrics = regression_metrics(mean, var, targets)
    if split == "test" and data.gap is not None:
        gap_mean, gap_var = prediction.sets["gap"]
        metrics["gap_nll"] = gaussian_nll(gap_mean, gap_var, data.gap[1])
    return metrics


def run_benchmark(
    tasks: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    scale: float = 1.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tune every method on the first seed's validation NLL over its grid, then run the chosen
    configuration over ``seeds``; returns ``{task: {method: {"config", "runs": [metrics]}}}``."""
    results: dict[str, Any] = {}
    for task in tasks:
        results[task] = {}
        for method in methods:
            data = load_uq_data(task, seeds[0])
            best, best_nll = None, math.inf
            for config in GRIDS[method]:
                try:
                    nll = evaluate(
                        fit_predict(method, data, seeds[0], config, scale=scale), data, "val"
                    )["nll"]
                except RuntimeError as error:  # a sampler that diverged with this config
                    log(f"{task} {method} {config}: failed ({error})")
                    continue
                log(f"{task} {method} {config}: val nll {nll:.4f}")
                if nll < best_nll:
                    best, best_nll = config, nll
            runs = []
            for seed in seeds:
                data = load_uq_data(task, seed)
                start = time.perf_counter()
                prediction = fit_predict(method, data, seed, best, scale=scale)
                seconds = time.perf_counter() - start
                metrics = evaluate(prediction, data, "test")
                metrics["seconds"] = seconds
                runs.append(metrics)
                log(f"{task} {method} seed {seed}: {metrics}")
            results[task][method] = {"config": best, "runs": runs}
    return results
