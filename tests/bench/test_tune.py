"""Fair tuning: search spaces derived from the registry, the validation split, the protocol
(budget, selection, test re-runs), the tuning report and ``tuned:`` bench specs."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("optuna", reason="optuna (the tune extra) not installed")

from torchvalley.bench.holdout import split_validation
from torchvalley.bench.runner import run_one
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.bench.store import Store
from torchvalley.bench.tasks import get_task
from torchvalley.bench.tune import resolve_tuned, search_space, tune, tuning_report
from torchvalley.cli import main


def test_search_space_comes_from_the_declarations():
    sam = search_space("sam:base_optimizer=sgd,momentum=0.9")
    assert sorted(sam) == ["lr", "rho"]  # the base's lr is SAM's to tune too
    assert (sam["lr"].scale, sam["lr"].low, sam["lr"].high) == ("log", 1e-4, 1.0)
    assert sorted(search_space("sgld")) == ["lr", "temperature"]
    assert sorted(search_space("baoab")) == ["friction", "lr", "temperature"]
    assert sorted(search_space("sgd:lr=0.1", ["momentum"])) == ["momentum"]  # lr fixed
    custom = search_space("adam", ["lr=log:1e-3:0.1", "weight_decay", "-lr"])
    assert sorted(custom) == ["weight_decay"] and custom["weight_decay"].scale == "log"
    assert search_space("sgd", ["nesterov"])["nesterov"].choices == (False, True)
    for bad in (["lr=log:0:1"], ["lr=log:1:0.1"], ["colour=log:1:2"], ["lr=cubic:1:2"]):
        with pytest.raises(ValueError, match="Invalid"):
            search_space("sgd", bad)
    with pytest.raises(ValueError, match="the spec fixes it"):
        search_space("sgd:lr=0.1", ["lr=log:0.01:1"])


def test_validation_split_holds_out_part_of_train_and_leaves_test_alone():
    base = get_task("digits_mlp").data()
    split = get_task("digits_mlp@validation").data()
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    train, held, full = rows(split.train[0]), rows(split.test[0]), rows(base.train[0])
    assert train | held == full and not (train & held)  # a partition of the training set
    assert len(split.test[0]) == round(0.2 * len(base.train[0]))
    assert not (held & rows(base.test[0])) or len(held & rows(base.test[0])) < 3  # not the test
    again = split_validation(base, data_seed=0)
    assert (again.test[0] == split.test[0]).all()  # reproducible
    assert get_task("digits_mlp").data().train[0].shape == base.train[0].shape  # base unchanged


def test_tune_protocol_end_to_end(tmp_path):
    store = str(tmp_path / "tune.db")
    result = tune("quadratic", "sgd:momentum=0.9", store=store, budget=6, seeds=(0, 1), epochs=2)
    assert result.n_complete + result.n_pruned + result.n_failed == 6  # the budget, exactly
    assert set(result.best_params) == {"lr"} and result.importances in ({}, {"lr": 1.0})
    # Oracle: re-run the selected configuration on the validation split by hand.
    tuned = OptimizerSpec.parse(result.tuned_spec)
    assert tuned.hyperparameters == {"lr": result.best_params["lr"], "momentum": 0.9}
    check = run_one("quadratic@validation", tuned, 0, epochs=2)
    assert math.isclose(check.test_loss, result.best_value, rel_tol=1e-6)
    # The test re-runs: the base task (test split), every seed, in the store.
    assert [(r.task, r.status, r.seed) for r in result.results] == [
        ("quadratic", "finished", 0),
        ("quadratic", "finished", 1),
    ]
    with Store(store) as opened:
        (study,) = opened.tuning()
        assert (study["budget"], study["tuned_spec"]) == (6, result.tuned_spec)
        assert {r["task"] for r in opened.runs()} == {"quadratic"}  # trials are not runs
        assert resolve_tuned("tuned:sgd:momentum=0.9", "quadratic", opened).label == tuned.label
        with pytest.raises(ValueError, match="no tuned configuration"):
            resolve_tuned("tuned:adam", "quadratic", opened)
        markdown = tuning_report(opened, tmp_path / "report")
    assert result.tuned_spec in markdown and "6 (" in markdown
    assert (tmp_path / "report" / "slice_0.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "tuning.json").read_text())[0]["budget"] == 6
    # Resuming the study runs no further trial.
    again = tune("quadratic", "sgd:momentum=0.9", store=store, budget=6, seeds=(0, 1), epochs=2)
    assert again.tuned_spec == result.tuned_spec and {r.status for r in again.results} == {
        "skipped"
    }


def test_cli_tune_then_bench_tuned(tmp_path, capsys):
    store = str(tmp_path / "cli.db")
    common = ["--task", "quadratic", "--epochs", "1", "--seeds", "0", "--store", store]
    assert main(["tune", *common, "-o", "adam", "--budget", "3", "--no-progress"]) == 0
    assert "3 trials" in capsys.readouterr().err
    assert main(["bench", *common, "-o", "tuned:adam", "--seeds", "1", "--no-progress"]) == 0
    with Store(store) as opened:
        tuned = opened.tuning()[0]["tuned_spec"]
        assert sorted(r["seed"] for r in opened.runs() if r["spec_label"] == tuned) == [0, 1]
    assert main(["bench", *common, "-o", "tuned:sgd", "--no-progress"]) == 2
    assert "torchvalley tune" in capsys.readouterr().err


@pytest.mark.slow  # two worker processes on the shared 2-core machine: ~40 s
def test_parallel_trials_share_one_study_and_spend_the_budget_exactly(tmp_path):
    store = str(tmp_path / "parallel.db")
    result = tune("quadratic", "adam", store=store, budget=5, epochs=1, workers=2, test=False)
    assert result.n_complete + result.n_pruned + result.n_failed == 5
    import optuna

    study = optuna.load_study(
        study_name=result.study, storage=f"sqlite:///{tmp_path / 'parallel.optuna.db'}"
    )
    assert len(study.trials) == 5 and result.results == []
