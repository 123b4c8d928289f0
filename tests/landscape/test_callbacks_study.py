"""Landscape callbacks in the harness, the landscape study and its CLI, checked on the quadratic
task whose Hessian is known exactly (H does not depend on the point)."""

import json
import math

import pytest
import torch

from torchvalley import cli
from torchvalley.bench.landscape_study import run_landscape_study
from torchvalley.bench.measurements import (
    HessianEigenvaluesCallback,
    HessianTraceCallback,
    SharpnessCallback,
)
from torchvalley.bench.runner import run_one
from torchvalley.bench.store import Store
from torchvalley.bench.tasks import get_task
from torchvalley.landscape.sharpness import sharpness

EIGENVALUES = sorted(get_task("quadratic").info["hessian_eigenvalues"], reverse=True)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_callbacks_record_the_known_spectrum(tmp_path):
    callbacks = [
        HessianEigenvaluesCallback(k=2, every=2, examples=200),
        HessianTraceCallback(samples=200, every=2, examples=200),
    ]
    with Store(tmp_path / "s.db") as store:
        result = run_one(
            "quadratic",
            "sgd:lr=0.05",
            0,
            epochs=2,
            store=store,
            progress=False,
            callbacks=callbacks,
        )
        rows = store.measurements(result.run_id)
    values = {(r["epoch"], r["name"]): r["value"] for r in rows}
    assert sorted({epoch for epoch, _ in values}) == [0, 2]  # every=2: epochs 0 and 2 only
    for epoch in (0, 2):
        assert values[(epoch, "hessian_lambda_1")] == pytest.approx(EIGENVALUES[0], rel=1e-4)
        assert values[(epoch, "hessian_lambda_2")] == pytest.approx(EIGENVALUES[1], rel=1e-4)
        trace, se = values[(epoch, "hessian_trace")], values[(epoch, "hessian_trace_se")]
        assert abs(trace - sum(EIGENVALUES)) <= 3 * se


def test_sharpness_callback_equals_the_function():
    task = get_task("quadratic")
    model = task.model(0)
    inputs, targets = task.data().train
    batch = (inputs[:100], targets[:100])
    measured = SharpnessCallback(rho=0.1, examples=100).measure(model, task.loss_fn, batch)
    direct = sharpness(model, task.loss_fn, batch, 0.1, generator=torch.Generator().manual_seed(0))
    assert measured == {"sharpness_worst": direct.value}


def test_callback_arguments_are_validated():
    with pytest.raises(ValueError, match="Invalid every"):
        HessianTraceCallback(every=0)
    with pytest.raises(ValueError, match="Invalid bn_mode"):
        HessianTraceCallback(bn_mode="test")


def test_study_measures_and_writes(tmp_path):
    study = run_landscape_study(
        "quadratic",
        ["sgd:lr=0.05"],
        [0],
        tmp_path,
        epochs=1,
        examples=200,
        measures=("eigenvalues", "trace", "interpolation"),
        progress=False,
    )
    (run,) = study.runs
    assert run["numbers"]["lambda_max"] == pytest.approx(EIGENVALUES[0], rel=1e-4)
    assert abs(run["numbers"]["trace"] - sum(EIGENVALUES)) <= 3 * run["numbers"]["trace_se"]
    # The path starts at the initialisation: its alpha=0 loss is the initial model's loss.
    task = get_task("quadratic")
    inputs, targets = task.data().train
    with torch.no_grad():
        initial = float(task.loss_fn(task.model(0)(inputs[:200]), targets[:200]))
    assert run["interpolation"]["losses"][0] == pytest.approx(initial, rel=1e-6)
    saved = json.loads(study.json_path.read_text())
    assert saved["runs"][0]["numbers"]["lambda_max"] == pytest.approx(EIGENVALUES[0], rel=1e-4)
    assert "`sgd:lr=0.05`" in study.table and study.markdown_path.exists()
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in study.plot_paths)


def test_cli_landscape_on_a_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    torch.save(get_task("quadratic").model(3).state_dict(), checkpoint)
    status = cli.main(
        [
            "landscape",
            "--task",
            "quadratic",
            "--checkpoint",
            str(checkpoint),
            "--measure",
            "eigenvalues",
            "--examples",
            "100",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and "lambda_max" in out
    saved = json.loads((tmp_path / "out" / "landscape.json").read_text())
    assert math.isclose(saved["runs"][0]["numbers"]["lambda_max"], EIGENVALUES[0], rel_tol=1e-4)


def test_cli_landscape_errors(capsys):
    assert cli.main(["landscape", "--task", "quadratic"]) == 2
    assert "give --optimizer" in capsys.readouterr().err
    assert cli.main(["landscape", "--task", "quadratic", "--checkpoint", "/no/such.pt"]) == 2
