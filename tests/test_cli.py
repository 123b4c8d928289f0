"""The command line: list, bench, report, demo; one-line errors with exit status 2."""

import json
import sqlite3

import pytest

from torchvalley import cli
from torchvalley.bench import demo
from torchvalley.registry import optimizer_entries


def _run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_list_shows_every_optimizer_with_capabilities(capsys):
    status, out, _ = _run(capsys, "list", "--json")
    assert status == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == {entry.name for entry in optimizer_entries()}
    assert rows["sgd"]["capabilities"] == ["foreach"]
    assert rows["sgd"]["passes_per_step"] == 1
    status, out, _ = _run(capsys, "list")
    assert status == 0 and "| sgd | baseline |" in out


def test_list_tasks(capsys):
    status, out, _ = _run(capsys, "list", "--tasks")
    assert status == 0
    for name in ("mnist1d_cnn", "digits_mlp", "spirals", "quadratic"):
        assert f"| {name} |" in out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope:lr=0.1", "unknown optimizer 'nope'"),
        ("sgd:lr=-1", "Invalid lr"),
        ("sgd:lr=nan", "Invalid lr"),
        ("sgd:lr=0.1,typo=3", "Unknown hyperparameter 'typo'"),
        ("sgd:lr", "expected key=value"),
    ],
)
def test_bad_specs_print_one_line_and_exit_2(capsys, tmp_path, spec, message):
    store = tmp_path / "r.db"
    status, _, err = _run(capsys, "bench", "--task", "quadratic", "-o", spec, "--store", str(store))
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchvalley: error:")
    assert message in lines[0]
    assert not store.exists()  # nothing ran


def test_unknown_task_and_missing_store(capsys, tmp_path):
    status, _, err = _run(capsys, "bench", "--task", "nope", "-o", "sgd:lr=0.1")
    assert status == 2 and "unknown task 'nope'" in err
    status, _, err = _run(capsys, "report", "--store", str(tmp_path / "x.db"), "--out", "r")
    assert status == 2 and "no results store" in err


def test_bench_then_report_then_rerun_skips(capsys, tmp_path):
    store = tmp_path / "sweep.db"
    out_dir = tmp_path / "report"
    argv = [
        "bench",
        "--task",
        "quadratic",
        "-o",
        "sgd:lr=0.01",
        "-o",
        "adam:lr=0.01",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "2",
        "--store",
        str(store),
        "--no-progress",
        "--report",
        str(out_dir),
    ]
    status, out, _ = _run(capsys, *argv)
    assert status == 0
    assert "`sgd:lr=0.01`" in out and "`adam:lr=0.01`" in out
    assert (out_dir / "report.md").exists() and (out_dir / "report.json").exists()
    with sqlite3.connect(store) as connection:
        (finished,) = connection.execute(
            "select count(*) from runs where status = 'finished'"
        ).fetchone()
        started = connection.execute("select started_at from runs order by id").fetchall()
    assert finished == 4
    # A rerun of the same sweep skips the finished runs (their rows are untouched).
    status, _, _ = _run(capsys, *argv)
    assert status == 0
    with sqlite3.connect(store) as connection:
        assert connection.execute("select started_at from runs order by id").fetchall() == started
    status, out, _ = _run(capsys, "report", "--store", str(store), "--out", str(out_dir))
    assert status == 0 and "quadratic" in out


def test_demo_covers_every_registered_family(monkeypatch):
    specs = demo.demo_specs()
    families = {entry.family for entry in optimizer_entries()}
    from torchvalley.registry import get_optimizer_entry

    assert {get_optimizer_entry(spec.name).family for spec in specs} == families
    # A family without a demo spec is an error, so new families cannot be left out.
    monkeypatch.setattr(demo, "DEMO_SPECS", {})
    with pytest.raises(ValueError, match=r"without a demo spec: (.*, )?baseline"):
        demo.demo_specs()


def test_demo_suite_option_runs_only_that_suite(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    argv = ["demo", "--suite", "spirals", "--epochs", "1", "--seeds", "0", "--no-progress"]
    status, out, _ = _run(capsys, *argv, "--out", str(out_dir), "--threads", "1")
    assert status == 0 and "spirals" in out
    with sqlite3.connect(out_dir / "demo.db") as connection:
        rows = connection.execute("select task, optimizer, status from runs").fetchall()
    assert {task for task, _, _ in rows} == {"spirals"}
    assert {name for _, name, _ in rows} == {"adlala", "baoab", "adam"}
    assert {state for _, _, state in rows} == {"finished"}
    assert set(demo.DEFAULT_SUITES) <= set(demo.DEMO_SUITES)
    # The spirals suite is not bound to cover every family; an unknown suite is an error.
    assert [spec.name for spec in demo.demo_specs("spirals")] == ["adam", "adlala", "baoab"]
    with pytest.raises(ValueError, match="unknown demo suite"):
        demo.demo_specs("nope")
    with pytest.raises(SystemExit):
        cli.main(["demo", "--suite", "nope", "--out", str(out_dir)])
