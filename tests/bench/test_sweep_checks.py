"""What a sweep checks before its first run, and what it reports per run (issue 20, 10/18/25)."""

from __future__ import annotations

import pytest
import torch

from torchvalley.bench.runner import SWEEP_THREADS, check_specs, run_one, run_sweep
from torchvalley.bench.store import Store


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sgd:lr=0.1,nesterov=True", "Nesterov momentum requires a momentum"),
        ("sgd:lr=0.1,momentum=0.9,nesterov=True,dampening=0.5", "zero dampening"),
        ("sam_on:lr=0.1,perturb=nope", "Invalid perturb"),
        ("sam:lr=0.1,model=abc", "'model' is set by the harness"),
        ("baoab:lr=0.1,scheme=XYZ", "Invalid scheme"),
        ("sgld:lr=0.1,seed=-1", "Invalid seed"),
    ],
)
def test_spec_that_validates_but_cannot_be_built_fails_before_any_run(spec, message):
    with Store(":memory:") as store:
        with pytest.raises(ValueError, match=message) as error:
            run_sweep(
                ["quadratic"], ["sgd:lr=0.01", spec], [0], epochs=1, store=store, progress=False
            )
        assert "cannot be built for task 'quadratic'" in str(error.value) or "harness" in str(
            error.value
        )
        assert store.runs() == []  # not even the good spec ran


def test_check_specs_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    check_specs("quadratic", ["sgd:lr=0.1", "sgld:lr=0.01"])
    assert torch.equal(torch.get_rng_state(), state)


def test_missing_data_package_fails_before_any_run(monkeypatch):
    """A task whose data needs an extra that is not installed fails at once, naming the extra."""
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        return real_import(name, *args, **kwargs)

    from torchvalley.bench.tasks import _cached_data

    _cached_data.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with Store(":memory:") as store:
        with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
            run_sweep(["digits_mlp"], ["sgd:lr=0.1"], [0], epochs=1, store=store, progress=False)
        assert store.runs() == []
    _cached_data.cache_clear()


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5])
def test_out_of_range_seed_is_a_value_error(seed):
    with pytest.raises(ValueError, match="Invalid seed"):
        run_sweep(["quadratic"], ["sgd:lr=0.1"], [seed], epochs=1, store=":memory:", progress=False)


def test_invalid_thread_count():
    with pytest.raises(ValueError, match="num_threads"):
        run_sweep(["quadratic"], ["sgd:lr=0.1"], [0], store=":memory:", num_threads=0)


def test_runs_record_threads_and_cpu_time():
    with Store(":memory:") as store:
        (result,) = run_sweep(
            ["quadratic"], ["sgd:lr=0.01"], [0], epochs=2, store=store, progress=False
        )
        (row,) = store.runs()
        epochs = store.epochs(row["id"])
    assert result.num_threads == row["num_threads"] == SWEEP_THREADS == 1
    assert row["cpu_time_s"] == pytest.approx(result.cpu_time_s) and row["cpu_time_s"] > 0
    cpu = [epoch["cpu_time_s"] for epoch in epochs]
    assert cpu[0] == 0.0 and cpu == sorted(cpu) and cpu[-1] == pytest.approx(row["cpu_time_s"])
    direct = run_one("quadratic", "sgd:lr=0.01", 0, epochs=1, progress=False, num_threads=2)
    assert direct.num_threads == 2


def test_one_line_per_finished_run_when_stdout_is_not_a_terminal(capsys):
    """``make demo | tee log``: the log gets a line per run (capsys' stdout is not a tty)."""
    with Store(":memory:") as store:
        run_sweep(
            ["quadratic"],
            ["sgd:lr=0.01", "adam:lr=0.01"],
            [0],
            epochs=1,
            store=store,
            progress=None,
        )
        run_sweep(["quadratic"], ["sgd:lr=0.01"], [0], epochs=1, store=store, progress=None)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[0].startswith("[1/2] quadratic sgd:lr=0.01 seed=0: finished: test excess_loss")
    assert out[1].startswith("[2/2] quadratic adam:lr=0.01 seed=0: finished")
    assert out[2] == "[1/1] quadratic sgd:lr=0.01 seed=0: skipped (finished in the store)"
    with Store(":memory:") as store:
        run_sweep(["quadratic"], ["sgd:lr=0.01"], [0], epochs=1, store=store, progress=False)
    assert capsys.readouterr().out == ""


def test_equal_specs_written_differently_run_once():
    """Issue 20 item 13: ``sgd:lr=0.1`` and ``sgd:lr=1e-1,momentum=0`` are one configuration."""
    with Store(":memory:") as store:
        results = run_sweep(
            ["quadratic"],
            ["sgd:lr=0.01", "sgd:lr=1e-2,momentum=0"],
            [0],
            epochs=1,
            store=store,
            progress=False,
        )
        assert len(results) == 1 and len(store.runs()) == 1
        again = run_sweep(
            ["quadratic"], ["sgd:momentum=0.0,lr=0.01"], [0], epochs=1, store=store, progress=False
        )
        assert [result.status for result in again] == ["skipped"]


def test_a_run_stored_under_its_old_label_is_found(tmp_path):
    """A store written before labels were canonical keeps its runs: the legacy key is looked up."""
    from torchvalley.bench.run_config import RunConfig
    from torchvalley.bench.tasks import get_task

    task = get_task("quadratic")
    old_label = "sgd:lr=0.01,momentum=0"  # what the old label of this spec was
    old = RunConfig(
        "quadratic",
        "sgd",
        old_label,
        {"lr": 0.01, "momentum": 0},
        0,
        task.default_data_seed,
        1,
        task.batch_size,
    )
    with Store(tmp_path / "old.db") as store:
        run_id = store.begin_run(old, metric_name=task.metric_name)
        store.finish_run(run_id, "finished", test_metric=0.5)
        (result,) = run_sweep(
            ["quadratic"], ["sgd:lr=0.01,momentum=0"], [0], epochs=1, store=store, progress=False
        )
    assert result.status == "skipped" and result.run_id == run_id and result.test_metric == 0.5
