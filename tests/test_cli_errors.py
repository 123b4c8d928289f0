"""Every bad call of the command line ends in one clear line and a non-zero status (issue 20).

Items 9, 10, 13 and 25: stores that are not ours, paths that cannot be written, a full disk,
bad numbers, a bad checkpoint, specs that cannot be built, failed runs. Outputs are checked
before any run starts, so a bad ``--report`` costs nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from torchvalley import cli
from torchvalley.bench import runner
from torchvalley.bench.store import Store

QUICK = ["--task", "quadratic", "-o", "sgd:lr=0.01", "--epochs", "1", "--no-progress"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _assert_one_error_line(err: str, *fragments: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0]  # it is the last line
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _runs(path: Path) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT task, status FROM runs").fetchall()
    finally:
        connection.close()


# -- stores that are not ours ------------------------------------------------------------------


def test_foreign_sqlite_store_is_refused_untouched(capsys, tmp_path):
    path = tmp_path / "contacts.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE contacts (name TEXT)")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    status, _, err = _run(capsys, "bench", *QUICK, "--store", str(path))
    assert status == 2
    _assert_one_error_line(err, "not a torchvalley results store")
    assert path.read_bytes() == before
    status, _, err = _run(capsys, "report", "--store", str(path), "--out", str(tmp_path / "r"))
    assert status == 2
    _assert_one_error_line(err, "not a torchvalley results store")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.write_text("not a database"), "not an SQLite file"),
        (lambda path: path.write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000), "damaged"),
    ],
)
def test_non_sqlite_and_corrupt_files(capsys, tmp_path, make, message):
    path = tmp_path / "store.db"
    make(path)
    for argv in (
        ["bench", *QUICK, "--store", str(path)],
        ["report", "--store", str(path), "--out", str(tmp_path / "r")],
    ):
        status, _, err = _run(capsys, *argv)
        assert status == 2
        _assert_one_error_line(err, message)


def test_future_schema_store(capsys, tmp_path):
    path = tmp_path / "future.db"
    with Store(path):
        pass
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    status, _, err = _run(capsys, "report", "--store", str(path), "--out", str(tmp_path / "r"))
    assert status == 2
    _assert_one_error_line(err, "newer torchvalley")


def test_damaged_page_in_a_real_store_says_damaged(capsys, tmp_path):
    path = tmp_path / "sweep.db"
    status, _, _ = _run(capsys, "bench", *QUICK, "--seeds", "0", "1", "2", "--store", str(path))
    assert status == 0
    connection = sqlite3.connect(path)
    (page,) = connection.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'runs'"
    ).fetchone()
    connection.close()
    with path.open("r+b") as handle:
        handle.seek((page - 1) * 4096 + 8)
        handle.write(b"\xa5" * 3000)
    status, _, err = _run(capsys, "report", "--store", str(path), "--out", str(tmp_path / "r"))
    assert status != 0
    _assert_one_error_line(err, "damaged")


# -- paths -------------------------------------------------------------------------------------


def test_store_paths_that_cannot_hold_a_store(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for store, message in (
        ("", "empty results store path"),
        (str(tmp_path), "is a directory"),
        (str(blocker / "r.db"), "cannot create the folder"),
    ):
        status, _, err = _run(capsys, "bench", *QUICK, "--store", store)
        assert status == 2
        _assert_one_error_line(err, message)


def test_unwritable_report_fails_before_the_sweep(capsys, tmp_path):
    blocker = tmp_path / "report-is-a-file"
    blocker.write_text("x")
    store = tmp_path / "r.db"
    status, _, err = _run(capsys, "bench", *QUICK, "--store", str(store), "--report", str(blocker))
    assert status == 2
    _assert_one_error_line(err, "cannot write the report")
    assert not store.exists() or _runs(store) == []  # nothing ran


def test_unwritable_demo_and_landscape_outputs(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status, _, err = _run(capsys, "demo", "--suite", "spirals", "--out", str(blocker / "d"))
    assert status == 2
    _assert_one_error_line(err, "cannot write the demo output")
    argv = ["landscape", "--task", "quadratic", "-o", "sgd:lr=0.01", "--out", str(blocker / "l")]
    status, _, err = _run(capsys, *argv)
    assert status == 2
    _assert_one_error_line(err, "cannot write the landscape study")


# -- a full disk -------------------------------------------------------------------------------


def test_full_disk_during_a_sweep(capsys, tmp_path, monkeypatch):
    """SQLite's 'database or disk is full': the page limit stands in for the disk."""
    original = Store.__init__

    def small_disk(self, path, **kwargs):
        original(self, path, **kwargs)
        (pages,) = self._connection.execute("PRAGMA page_count").fetchone()
        self._connection.execute(f"PRAGMA max_page_count = {pages + 1}")

    monkeypatch.setattr(Store, "__init__", small_disk)
    argv = ["bench", *QUICK, "--seeds", *map(str, range(40)), "--store", str(tmp_path / "f.db")]
    status, _, err = _run(capsys, *argv)
    assert status == 1
    _assert_one_error_line(err, "full", "finished runs are kept")


def test_full_disk_while_writing_the_report(capsys, tmp_path, monkeypatch):
    import errno
    import os

    store = tmp_path / "r.db"
    assert _run(capsys, "bench", *QUICK, "--store", str(store))[0] == 0

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(os, "replace", no_space)
    status, _, err = _run(capsys, "report", "--store", str(store), "--out", str(tmp_path / "r"))
    assert status == 1
    _assert_one_error_line(err, "No space left on device")
    assert not (tmp_path / "r" / "report.md").exists()  # no half-written report


# -- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", *QUICK, "--threads", "0"],
        ["bench", *QUICK, "--seeds", str(2**70)],
        ["bench", *QUICK, "--epochs", "0"],
        ["bench", *QUICK, "--batch-size", "0"],
        ["landscape", "--task", "quadratic", "-o", "sgd:lr=0.01", "--examples", "0"],
        ["landscape", "--task", "quadratic", "-o", "sgd:lr=0.01", "--examples", "-5"],
        ["landscape", "--task", "quadratic", "-o", "sgd:lr=0.01", "--rho", "-1"],
        ["demo", "--epochs", "0"],
        ["demo", "--threads", "-2"],
    ],
)
def test_bad_numbers_are_refused_before_anything_runs(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    status, out, err = _run(capsys, *argv)
    assert status == 2
    _assert_one_error_line(err)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_bad_checkpoints(capsys, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), wrong)
    for path, message in (
        (text, "is not a state_dict saved with torch.save"),
        (tensor, "holds a Tensor, not a state_dict"),
        (wrong, "does not fit task 'quadratic'"),
        (tmp_path / "missing.pt", "no checkpoint at"),
    ):
        argv = ["landscape", "--task", "quadratic", "--checkpoint", str(path)]
        status, _, err = _run(capsys, *argv, "--out", str(tmp_path / "out"))
        assert status == 2
        _assert_one_error_line(err, message)


# -- what used to exit 0 -----------------------------------------------------------------------


def test_report_of_a_task_without_runs(capsys, tmp_path):
    store = tmp_path / "r.db"
    assert _run(capsys, "bench", *QUICK, "--store", str(store))[0] == 0
    status, out, err = _run(
        capsys, "report", "--store", str(store), "--out", str(tmp_path / "r"), "--task", "nosuch"
    )
    assert status == 2 and out == ""
    _assert_one_error_line(err, "no runs of task 'nosuch'", "tasks with runs: quadratic")


@pytest.mark.parametrize(
    "spec",
    [
        "sgd:lr=0.1,nesterov=True",
        "sgd:lr=0.1,momentum=0.9,dampening=0.5,nesterov=True",
        "baoab:lr=0.1,scheme=XYZ",
    ],
)
def test_spec_that_cannot_be_built_exits_2_before_any_run(capsys, tmp_path, spec):
    store = tmp_path / "r.db"
    argv = ["bench", "--task", "quadratic", "-o", "sgd:lr=0.01", "-o", spec, "--epochs", "1"]
    status, _, err = _run(capsys, *argv, "--store", str(store), "--no-progress")
    assert status == 2
    _assert_one_error_line(err, "cannot be built for task 'quadratic'")
    assert _runs(store) == []


def test_failed_runs_exit_1_and_say_so(capsys, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the step broke")

    monkeypatch.setattr(runner, "_train", broken)
    store = tmp_path / "r.db"
    status, _, err = _run(capsys, "bench", *QUICK, "--seeds", "0", "1", "--store", str(store))
    assert status == 1
    _assert_one_error_line(err, "2 of 2 runs failed", "RuntimeError: the step broke")
    assert [row[1] for row in _runs(store)] == ["failed", "failed"]


def test_missing_extra_names_the_install_command(capsys, tmp_path, monkeypatch):
    import builtins

    from torchvalley.bench.tasks import _cached_data

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        return real_import(name, *args, **kwargs)

    _cached_data.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    argv = ["bench", "--task", "digits_mlp", "-o", "sgd:lr=0.1", "--epochs", "1"]
    status, _, err = _run(capsys, *argv, "--store", str(tmp_path / "r.db"), "--no-progress")
    _cached_data.cache_clear()
    assert status == 2
    _assert_one_error_line(err, "scikit-learn", "pip install -e '.[bench]'")


def test_demo_epochs_are_honoured(capsys, tmp_path):
    """``--epochs 1`` means one epoch (``0`` used to fall back silently to 300)."""
    argv = ["demo", "--suite", "spirals", "--epochs", "1", "--seeds", "0", "--no-progress"]
    status, _, _ = _run(capsys, *argv, "--out", str(tmp_path / "d"))
    assert status == 0
    connection = sqlite3.connect(tmp_path / "d" / "demo.db")
    assert {row[0] for row in connection.execute("SELECT epochs FROM runs")} == {1}
    connection.close()


def test_help_imports_no_landscape_module_and_no_task():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from torchvalley import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m.startswith(("
        "'torchvalley.landscape', 'torchvalley.bench.tasks', 'torchvalley.bench.builtin_tasks', "
        "'torchvalley.bench.poincare', 'matplotlib', 'sklearn', 'mnist1d')))\n"
        "print('IMPORTED', bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert "IMPORTED []" in result.stdout, result.stdout


def test_light_names_agree_with_the_modules_that_use_them():
    from torchvalley.bench import demo, names

    assert names.DEMO_SUITES == demo.DEMO_SUITES and set(demo._suites()) == set(names.DEMO_SUITES)
    try:
        from torchvalley.bench.landscape_study import MEASURES
    except ImportError:
        from torchvalley.landscape.study import MEASURES
    assert tuple(MEASURES) == names.MEASURES


def test_read_only_store_is_one_line(capsys, tmp_path, monkeypatch):
    """A store SQLite may only read (file permissions; root ignores chmod, so open it mode=ro)."""
    path = tmp_path / "ro.db"
    assert _run(capsys, "bench", *QUICK, "--store", str(path))[0] == 0
    connect = sqlite3.connect

    def read_only(database, *args, **kwargs):
        return connect(f"file:{database}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    status, _, err = _run(capsys, "bench", *QUICK, "--seeds", "1", "--store", str(path))
    assert status == 2
    _assert_one_error_line(err, "cannot be written", "readonly")
