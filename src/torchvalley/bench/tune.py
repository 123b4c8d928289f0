"""Fair hyperparameter tuning with Optuna: the same trial budget for every method, selection on a
validation split, the chosen configuration re-run over seeds on the test split.

The protocol (``docs/tuning.md`` says why each step is there):

1. **Search space** from the registry's declarations (:func:`search_space`): the learning rate
   (a wrapper's base ``lr`` included), ρ, temperature and friction, each log-uniform over the
   range in :data:`DEFAULT_RANGES`, and every hyperparameter the spec already fixes left out.
   Anything else can be named with a range (``momentum=uniform:0:0.99``) or with none
   (``momentum``: the range derived from its kind and default).
2. **Trials**: ``budget`` trials per method, each one run of ``task@validation`` (the training
   set minus a held-out 20 %, validated on that 20 %; :mod:`torchvalley.bench.holdout`) with
   model seed ``trial_seed``, for the task's epochs. Optuna's TPE sampler (seeded) proposes;
   the validation loss after each epoch is reported and the median pruner stops a trial that is
   worse than the median of earlier trials at the same epoch. Pruned, diverged and failed
   trials count against the budget: every method gets the same number of trials started.
3. **Selection**: the completed trial with the lowest final validation loss (or, with
   ``objective="metric"``, the best validation metric).
4. **Test**: the selected configuration, as a spec, re-run on ``task`` (train on the whole
   training set, evaluate on the test set) for every seed in ``seeds``, into the results store
   like any sweep, so the report aggregates it over seeds.

Optuna keeps the trials in its own storage: by default an SQLite file next to the results store
(``results/torchvalley.db`` -> ``results/torchvalley.optuna.db``); for a store on PostgreSQL, the
same database (Optuna's tables sit beside the store's). The store gets one ``tuning`` row per
(task, method) with the tuned configuration, the budget, trial counts and Optuna's parameter
importances, which :func:`tuning_report` turns into the report.

Trials run in parallel with ``workers`` local processes or on Ray, each worker pulling trials
of the one study from the shared storage until the budget is spent.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from torchvalley.bench.holdout import VALIDATION_SUFFIX, validation_task
from torchvalley.bench.specs import OptimizerSpec, format_value
from torchvalley.bench.store import Store, database_url, is_url
from torchvalley.bench.tasks import Task, get_task
from torchvalley.registry import Hyperparameter, get_optimizer_entry, resolve_base_optimizer

__all__ = [
    "DEFAULT_RANGES",
    "DEFAULT_TUNED",
    "Dimension",
    "TuningResult",
    "optuna_storage",
    "parse_dimension",
    "resolve_tuned",
    "search_space",
    "tune",
    "tuning_report",
]

#: Hyperparameters tuned by default, where the method has them and the spec leaves them free.
DEFAULT_TUNED = ("lr", "rho", "temperature", "friction")

#: Ranges by name: ``(scale, low, high)``; "log" is log-uniform.
DEFAULT_RANGES: dict[str, tuple[str, float, float]] = {
    "lr": ("log", 1e-4, 1.0),
    "rho": ("log", 1e-3, 1.0),
    "temperature": ("log", 1e-8, 1e-2),
    "friction": ("log", 1e-2, 1e2),
    "momentum": ("uniform", 0.0, 0.99),
    "weight_decay": ("log", 1e-6, 1e-1),
    "eps": ("log", 1e-10, 1e-4),
}

_TUNED_PREFIX = "tuned:"


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One hyperparameter's search range: ``scale`` "log", "uniform", "int" or "choice"."""

    name: str
    scale: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.scale not in ("log", "uniform", "int", "choice"):
            raise ValueError(f"Invalid scale for {self.name}: {self.scale!r}")
        if self.scale == "choice":
            if not self.choices:
                raise ValueError(f"Invalid range for {self.name}: no choices")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"Invalid range for {self.name}: need low < high")
        elif self.scale == "log" and self.low <= 0:
            raise ValueError(f"Invalid range for {self.name}: a log range needs low > 0")

    def suggest(self, trial: Any) -> Any:
        """Optuna's suggestion for this dimension."""
        if self.scale == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.scale == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, self.low, self.high, log=self.scale == "log")

    @property
    def text(self) -> str:
        """``log:1e-4:1`` / ``choice:a|b``: what :func:`parse_dimension` reads."""
        if self.scale == "choice":
            return "choice:" + "|".join(map(format_value, self.choices))
        return f"{self.scale}:{self.low:g}:{self.high:g}"


def parse_dimension(text: str) -> tuple[str, str | None]:
    """``"name=log:1e-3:1"`` -> ``("name", "log:1e-3:1")``; ``"name"`` -> ``("name", None)``."""
    name, equals, rest = text.partition("=")
    if not name.strip():
        raise ValueError(f"Invalid search dimension {text!r}: expected name[=scale:low:high]")
    return name.strip(), (rest.strip() or None) if equals else None


def _dimension(name: str, text: str | None, declared: Hyperparameter | None) -> Dimension:
    if text is not None:
        scale, _, bounds = text.partition(":")
        if scale == "choice":
            from torchvalley.bench.specs import _parse_value

            return Dimension(name, "choice", choices=tuple(map(_parse_value, bounds.split("|"))))
        parts = bounds.split(":")
        if len(parts) != 2:
            raise ValueError(f"Invalid range for {name}: {text!r} (expected scale:low:high)")
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"Invalid range for {name}: {text!r}") from None
        return Dimension(name, scale, low, high)
    if name in DEFAULT_RANGES:
        scale, low, high = DEFAULT_RANGES[name]
        return Dimension(name, scale, low, high)
    if declared is None:
        raise ValueError(f"Invalid search dimension {name!r}: give its range (name=log:low:high)")
    if declared.kind == "choice":
        return Dimension(name, "choice", choices=declared.choices)
    if declared.kind in ("bool", "optional_bool"):
        return Dimension(name, "choice", choices=(False, True))
    if declared.kind in ("unit_interval", "unit_interval_open"):
        return Dimension(name, "uniform", 0.0, 0.99)
    default = declared.default
    if isinstance(default, int | float) and not isinstance(default, bool) and default > 0:
        if declared.kind in ("positive_int", "optional_positive_int"):
            return Dimension(name, "int", max(1, int(default) // 4), int(default) * 4)
        return Dimension(name, "log", float(default) / 10, float(default) * 10)
    raise ValueError(
        f"Invalid search dimension {name!r}: no range can be derived from its declaration "
        f"(kind {declared.kind}, default {default!r}); give one (name=log:low:high)"
    )


def _declared(spec: OptimizerSpec) -> dict[str, Hyperparameter]:
    """The method's declared hyperparameters, a wrapper's base optimizer's included."""
    entry = get_optimizer_entry(spec.name)
    declared = {h.name: h for h in entry.hyperparameters}
    base = declared.get("base_optimizer")
    if base is not None and base.kind == "optimizer":
        base_name = spec.hyperparameters.get("base_optimizer", base.default)
        with_base = isinstance(base_name, str)
        if with_base:
            resolve_base_optimizer(base_name, name="base_optimizer")
            for hyperparameter in get_optimizer_entry(base_name).hyperparameters:
                declared.setdefault(hyperparameter.name, hyperparameter)
    return declared


def search_space(spec: OptimizerSpec | str, overrides: Iterable[str] = ()) -> dict[str, Dimension]:
    """The search space of ``spec``: :data:`DEFAULT_TUNED` names the method declares and the
    spec leaves free, over :data:`DEFAULT_RANGES`, then ``overrides`` (``"name=log:lo:hi"``
    adds or replaces a dimension, ``"name"`` adds one with its derived range, ``"-name"``
    removes one).

    Example:
        >>> sorted(search_space("sam:base_optimizer=sgd,momentum=0.9"))
        ['lr', 'rho']
        >>> search_space("sgd", ["lr=log:0.01:0.5"])["lr"].text
        'log:0.01:0.5'
    """
    spec = spec if isinstance(spec, OptimizerSpec) else OptimizerSpec.parse(spec)
    declared = _declared(spec)
    space = {
        name: _dimension(name, None, declared[name])
        for name in DEFAULT_TUNED
        if name in declared and name not in spec.hyperparameters
    }
    for text in overrides:
        if text.startswith("-"):
            space.pop(text[1:].strip(), None)
            continue
        name, bounds = parse_dimension(text)
        if name not in declared:
            raise ValueError(
                f"Invalid search dimension {name!r}: {spec.name} has no such hyperparameter"
            )
        if name in spec.hyperparameters:
            raise ValueError(f"Invalid search dimension {name!r}: the spec fixes it")
        space[name] = _dimension(name, bounds, declared[name])
    if not space:
        raise ValueError(f"nothing to tune in {spec.label!r}: name a dimension (name=log:lo:hi)")
    return space


def optuna_storage(store: str) -> str | None:
    """Optuna's storage URL for a results store: the SQLite file beside it, or the same
    database server; ``None`` (in memory) for ``":memory:"``."""
    if str(store) == ":memory:":
        return None
    if is_url(store):
        url = database_url(str(store))
        if url.get_backend_name() != "sqlite":
            return url.render_as_string(hide_password=False)
        store = url.database or ":memory:"
        if store == ":memory:":
            return None
    path = Path(store).expanduser().resolve()
    return f"sqlite:///{path.with_suffix('.optuna.db')}"


@dataclasses.dataclass
class TuningResult:
    """What :func:`tune` did for one method.

    Attributes:
        study: the Optuna study's name (``"<task>/<base spec label>"``).
        base_spec: the spec whose free hyperparameters were tuned.
        space: the search space.
        budget: trials started (pruned, failed and diverged ones included).
        n_complete, n_pruned, n_failed: how the trials ended.
        best_params, best_value: the selected trial's hyperparameters and validation value.
        tuned_spec: the selected configuration as a spec label.
        importances: Optuna's parameter importances (fANOVA), ``{}`` when they cannot be had.
        results: the test re-runs over seeds (:class:`~torchvalley.bench.runner.RunResult`).
    """

    study: str
    task: str
    base_spec: str
    space: dict[str, Dimension]
    budget: int
    epochs: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_params: dict[str, Any]
    best_value: float | None
    tuned_spec: str | None
    importances: dict[str, float]
    results: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Trials:
    """What a worker needs to run trials of one study (picklable)."""

    study: str
    storage: str | None
    task: str
    spec: str
    space: tuple[Dimension, ...]
    trials: int
    epochs: int
    trial_seed: int
    objective: str
    num_threads: int


def _optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError as error:
        raise ImportError(
            "tuning needs optuna, which is not installed: pip install optuna (or pip install -e "
            "'.[tune]' from the repository)"
        ) from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _validation_loss(task: Task, model: torch.nn.Module, data: Any) -> tuple[float, float]:
    from torchvalley.bench.runner import _evaluate

    return _evaluate(model, task, *data.test)


def _objective(work: _Trials, optuna: Any) -> Any:
    from torchvalley.bench.runner import run_one

    task = get_task(work.task)
    base = OptimizerSpec.parse(work.spec)
    higher = task.higher_is_better and work.objective == "metric"

    def objective(trial: Any) -> float:
        params = {dimension.name: dimension.suggest(trial) for dimension in work.space}
        spec = OptimizerSpec(base.name, {**base.hyperparameters, **params})
        spec.validate()

        def report(context: Any) -> None:
            if context.epoch == 0:
                return
            loss, metric = _validation_loss(task, context.model, context.data)
            value = metric if work.objective == "metric" else loss
            if not math.isfinite(value):
                return  # the run diverges: the runner stops it
            trial.report(value, context.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {context.epoch} ({value:.4g})")

        result = run_one(
            task,
            spec,
            work.trial_seed,
            epochs=work.epochs,
            progress=False,
            raise_errors=True,
            num_threads=work.num_threads,
            callbacks=[report],
        )
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("spec", spec.label)
        if result.status != "finished":
            return math.nan  # diverged: a failed trial (it still counts against the budget)
        value = result.test_metric if work.objective == "metric" else result.test_loss
        return value if value is not None and math.isfinite(value) else math.nan

    del higher
    return objective


def run_trials(work: _Trials) -> int:
    """Run ``work.trials`` trials of the study (in this process: a worker); how many ran."""
    optuna = _optuna()
    torch.set_num_threads(work.num_threads)
    study = optuna.load_study(study_name=work.study, storage=work.storage)
    before = len(study.trials)
    with warnings.catch_warnings():
        # A trial that returned NaN (diverged) is recorded as failed; Optuna also warns.
        warnings.simplefilter("ignore", category=UserWarning)
        study.optimize(_objective(work, optuna), n_trials=work.trials, catch=(Exception,))
    return len(study.trials) - before


def _sampler(optuna: Any, name: str, seed: int) -> Any:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"Invalid sampler: {name!r} (tpe or random)")


def _pruner(optuna: Any, name: str) -> Any:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"Invalid pruner: {name!r} (median or none)")


def tune(
    task: Task | str,
    spec: OptimizerSpec | str,
    *,
    store: str = "results/torchvalley.db",
    budget: int = 20,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    space: Iterable[str] = (),
    trial_seed: int = 0,
    sampler: str = "tpe",
    sampler_seed: int = 0,
    pruner: str = "median",
    objective: str = "loss",
    storage: str | None = None,
    workers: int = 1,
    ray: str | None = None,
    num_threads: int = 1,
    test: bool = True,
    progress: bool | None = None,
) -> TuningResult:
    """Tune ``spec``'s free hyperparameters on ``task``'s validation split, then test.

    Args:
        task: a registered task (or its name).
        spec: the method, with what is fixed (``"sam:base_optimizer=sgd,momentum=0.9"``).
        store: the results store (file or URL) for the test runs and the tuning summary.
        budget: trials per method (the same for every method of a comparison).
        seeds: model seeds of the test re-runs.
        epochs: epochs of every trial and test run (default: the task's).
        space: search-space overrides (see :func:`search_space`).
        trial_seed: the model seed of every trial.
        sampler, sampler_seed: ``"tpe"`` (default) or ``"random"``, and its seed.
        pruner: ``"median"`` (on the validation loss after each epoch) or ``"none"``.
        objective: ``"loss"`` (validation loss, minimised) or ``"metric"`` (the task's metric
            on the validation split, in its direction).
        storage: Optuna's storage URL (default :func:`optuna_storage` of ``store``).
        workers, ray: run trials (and the test runs) in parallel (see
            :func:`~torchvalley.bench.parallel.run_parallel`).
        num_threads: torch threads per trial.
        test: re-run the selected configuration over ``seeds`` on the test split.
        progress: progress bars of the test sweep.

    Returns:
        A :class:`TuningResult`; its summary is also written to the store's ``tuning`` table.
    """
    optuna = _optuna()
    base_task = task if isinstance(task, Task) else get_task(task)
    if base_task.name.endswith(VALIDATION_SUFFIX):
        raise ValueError(
            f"Invalid task: {base_task.name!r}; give the task, not its validation split"
        )
    held_out = validation_task(base_task)
    spec = spec if isinstance(spec, OptimizerSpec) else OptimizerSpec.parse(spec)
    if isinstance(budget, bool) or int(budget) < 1:
        raise ValueError(f"Invalid budget: {budget!r} (must be >= 1)")
    if objective not in ("loss", "metric"):
        raise ValueError(f"Invalid objective: {objective!r} (loss or metric)")
    dimensions = search_space(spec, space)
    Store(store).close()  # refuses a bad store before any trial runs; creates its folder
    epochs = base_task.default_epochs if epochs is None else int(epochs)
    storage = optuna_storage(store) if storage is None else storage
    if storage is None and (workers > 1 or ray):
        raise ValueError("Invalid storage: parallel tuning needs a file or database storage")
    direction = "maximize" if objective == "metric" and base_task.higher_is_better else "minimize"
    name = f"{base_task.name}/{spec.label}/e{epochs}/{objective}"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=_sampler(optuna, sampler, sampler_seed),
        pruner=_pruner(optuna, pruner),
        direction=direction,
        load_if_exists=True,
    )
    if storage is None:
        # In memory: run here, on this very study object (nothing to load it from).
        work = _Trials(
            name,
            None,
            held_out.name,
            spec.legacy_label,
            tuple(dimensions.values()),
            int(budget),
            epochs,
            int(trial_seed),
            objective,
            int(num_threads),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            study.optimize(_objective(work, optuna), n_trials=int(budget), catch=(Exception,))
    else:
        remaining = int(budget) - len(study.trials)
        if remaining > 0:
            _run_trials_parallel(
                name,
                storage,
                held_out.name,
                spec,
                dimensions,
                remaining,
                epochs,
                trial_seed,
                objective,
                num_threads,
                workers,
                ray,
            )
        study = optuna.load_study(study_name=name, storage=storage)
    return _finish(
        optuna,
        study,
        base_task,
        spec,
        dimensions,
        int(budget),
        epochs,
        storage,
        store,
        seeds,
        test,
        workers,
        ray,
        num_threads,
        progress,
        sampler,
        pruner,
        objective,
        direction,
    )


def _run_trials_parallel(
    name,
    storage,
    task_name,
    spec,
    dimensions,
    remaining,
    epochs,
    trial_seed,
    objective,
    num_threads,
    workers,
    ray,
) -> None:
    count = 1 if not (workers > 1 or ray) else max(1, int(workers))
    shares = [remaining // count + (index < remaining % count) for index in range(count)]
    works = [
        _Trials(
            name,
            storage,
            task_name,
            spec.legacy_label,
            tuple(dimensions.values()),
            share,
            epochs,
            int(trial_seed),
            objective,
            int(num_threads),
        )
        for share in shares
        if share
    ]
    if len(works) == 1 and not ray:
        run_trials(works[0])
        return
    if ray:
        import ray as ray_module

        started = not ray_module.is_initialized()
        if started:
            address = None if ray == "local" else ray
            options = {"num_cpus": int(workers)} if ray == "local" else {}
            ray_module.init(
                address=address, include_dashboard=False, log_to_driver=False, **options
            )
        try:
            remote = ray_module.remote(num_cpus=1, max_retries=2)(run_trials)
            ray_module.get([remote.remote(work) for work in works])
        finally:
            if started:
                ray_module.shutdown()
        return
    from torchvalley.bench.parallel import _context

    with concurrent.futures.ProcessPoolExecutor(len(works), mp_context=_context()) as pool:
        list(pool.map(run_trials, works))


def _finish(
    optuna,
    study,
    task,
    spec,
    dimensions,
    budget,
    epochs,
    storage,
    store,
    seeds,
    test,
    workers,
    ray,
    num_threads,
    progress,
    sampler,
    pruner,
    objective,
    direction,
) -> TuningResult:
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    pruned = sum(t.state == states.PRUNED for t in trials)
    failed = sum(t.state == states.FAIL for t in trials)
    best = study.best_trial if complete else None
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = {
                    k: float(v) for k, v in optuna.importance.get_param_importances(study).items()
                }
        except (RuntimeError, ValueError):  # e.g. every completed trial has the same value
            importances = {}
    tuned = None
    if best is not None:
        tuned = OptimizerSpec(spec.name, {**spec.hyperparameters, **best.params})
        tuned.validate()
    result = TuningResult(
        study=study.study_name,
        task=task.name,
        base_spec=spec.label,
        space=dimensions,
        budget=budget,
        epochs=epochs,
        n_complete=len(complete),
        n_pruned=pruned,
        n_failed=failed,
        best_params=dict(best.params) if best is not None else {},
        best_value=float(best.value) if best is not None else None,
        tuned_spec=tuned.label if tuned is not None else None,
        importances=importances,
    )
    if test and tuned is not None:
        if workers > 1 or ray:
            from torchvalley.bench.parallel import run_parallel

            result.results = run_parallel(
                [task],
                [tuned],
                seeds,
                store=store,
                workers=workers,
                ray=ray,
                epochs=epochs,
                progress=progress,
                num_threads=num_threads,
            )
        else:
            from torchvalley.bench.runner import run_sweep

            result.results = run_sweep(
                [task],
                [tuned],
                seeds,
                epochs=epochs,
                store=store,
                progress=progress,
                num_threads=num_threads,
            )
    with Store(store) as opened:
        opened.record_tuning(
            result.study,
            task=task.name,
            optimizer=spec.name,
            base_spec=spec.label,
            search_space={d.name: d.text for d in dimensions.values()},
            budget=budget,
            epochs=epochs,
            sampler=sampler,
            pruner=pruner,
            objective=f"validation {objective}",
            direction=direction,
            n_complete=result.n_complete,
            n_pruned=result.n_pruned,
            n_failed=result.n_failed,
            best_params=result.best_params,
            best_value=result.best_value,
            tuned_spec=result.tuned_spec,
            importances=importances,
            storage=_hide_password(storage),
            finished_at=_now(),
        )
    return result


def _now() -> str:
    from torchvalley.bench.store import utc_now

    return utc_now()


def _hide_password(storage: str | None) -> str | None:
    if storage is None:
        return None
    hidden = database_url(storage).render_as_string(hide_password=True)
    _STORAGES[hidden] = storage
    return hidden


def resolve_tuned(text: str, task: str, store: Store) -> OptimizerSpec:
    """A bench spec ``"tuned:<spec>"`` -> the configuration :func:`tune` selected for
    ``<spec>`` on ``task`` (the latest study of that spec in the store).

    Raises:
        ValueError: if the store holds no finished tuning of that spec on that task.
    """
    if not text.startswith(_TUNED_PREFIX):
        return OptimizerSpec.parse(text)
    base = OptimizerSpec.parse(text[len(_TUNED_PREFIX) :])
    studies = [
        study
        for study in store.tuning(task=task)
        if study["base_spec"] == base.label and study["tuned_spec"]
    ]
    if not studies:
        raise ValueError(
            f"no tuned configuration of {base.label!r} on task {task!r} in {store.path}; run "
            f"`torchvalley tune --task {task} -o '{base.label}'` first"
        )
    return OptimizerSpec.parse(studies[-1]["tuned_spec"])


def tuning_report(store: Store, out: str | os.PathLike[str], task: str | None = None) -> str:
    """``tuning.md`` (+ ``tuning.json`` and one slice plot per study) in ``out``; returns the
    markdown: per method the tuned configuration, the budget and how the trials ended, the
    parameter importances, the slice plot, and the tuned test results over seeds."""
    from torchvalley.bench.report import summarize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    studies = store.tuning(task=task)
    summary = summarize(store)
    lines = ["# Tuned results", ""]
    lines.append(
        "Protocol: docs/tuning.md (equal trial budget per method, TPE, median pruning on the "
        "validation loss, selection on a held-out 20 % of the training set, test re-runs over "
        "seeds)."
    )
    lines.append("")
    lines.append(
        "| task | method | tuned configuration | budget (complete/pruned/failed) | "
        "validation | test (mean ± std, n) | importances |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for study in studies:
        rows = summary.get(study["task"], {}).get("rows", [])
        row = next(
            (
                r
                for r in rows
                if r.get("spec_label") == study["tuned_spec"] and r.get("epochs") == study["epochs"]
            ),
            None,
        )
        test_text = _test_cell(row)
        importances = (
            ", ".join(
                f"{k} {v:.2f}"
                for k, v in sorted((study["importances"] or {}).items(), key=lambda kv: -kv[1])
            )
            or "—"
        )
        value = "—" if study["best_value"] is None else f"{study['best_value']:.4g}"
        lines.append(
            f"| {study['task']} | {study['base_spec']} | {study['tuned_spec'] or '—'} | "
            f"{study['budget']} ({study['n_complete']}/{study['n_pruned']}/{study['n_failed']}) "
            f"| {value} | {test_text} | {importances} |"
        )
    lines.append("")
    for index, study in enumerate(studies):
        figure = _slice_plot(study, out / f"slice_{index}.png")
        lines.append(f"## {study['task']}: {study['base_spec']}")
        lines.append("")
        space = ", ".join(f"{k} {v}" for k, v in (study["search_space"] or {}).items())
        lines.append(f"- search space: {space}; {study['epochs']} epochs per trial")
        lines.append(
            f"- sampler {study['sampler']}, pruner {study['pruner']}, objective "
            f"{study['objective']} ({study['direction']})"
        )
        lines.append(f"- tuned: `{study['tuned_spec']}`")
        if figure is not None:
            lines.append(f"- slice plot: ![slice]({figure.name})")
        lines.append("")
    markdown = "\n".join(lines)
    (out / "tuning.md").write_text(markdown + "\n")
    (out / "tuning.json").write_text(json.dumps(studies, indent=2, default=str) + "\n")
    return markdown


def _test_cell(row: Mapping[str, Any] | None) -> str:
    if not row:
        return "—"
    final = row.get("final_test_metric") or {}
    if final.get("mean") is None:
        return "—"
    return f"{final['mean']:.4g} ± {final.get('std') or 0:.2g} ({final.get('n')})"


def _slice_plot(study: Mapping[str, Any], path: Path) -> Path | None:
    """Final validation value against each tuned hyperparameter, one panel each (complete
    trials; the selected one ringed)."""
    if not study.get("storage"):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    optuna = _optuna()
    try:
        loaded = optuna.load_study(study_name=study["study"], storage=_storage_of(study))
    except (KeyError, ValueError, ImportError):
        return None
    complete = [
        t for t in loaded.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
    ]
    names = list(study["search_space"] or {})
    if not complete or not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    values = [t.value for t in complete]
    for axis, name in zip(axes[0], names, strict=True):
        xs = [t.params.get(name) for t in complete]
        axis.scatter(xs, values, c=[t.number for t in complete], cmap="viridis", s=18)
        best = study["best_params"] or {}
        if name in best and study["best_value"] is not None:
            axis.scatter(
                [best[name]], [study["best_value"]], s=80, facecolors="none", edgecolors="red"
            )
        if str(study["search_space"][name]).startswith("log"):
            axis.set_xscale("log")
        axis.set_xlabel(name)
    axes[0][0].set_ylabel(study["objective"])
    figure.suptitle(f"{study['task']}: {study['base_spec']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


_STORAGES: dict[str, str] = {}


def _storage_of(study: Mapping[str, Any]) -> str:
    """The storage URL of a recorded study (a password hidden in the store is looked up in
    the storages this process used)."""
    storage = study["storage"]
    if "***" in storage:
        return _STORAGES.get(storage, storage)
    return storage
