"""Reports: aggregates against numpy on known values, files written, plots valid PNGs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from torchvalley.bench import tasks as tasks_module
from torchvalley.bench.report import build_report, format_specs, format_table, summarize
from torchvalley.bench.store import Store
from torchvalley.bench.tasks import Task, TaskData, register_task

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASK = "test_report_known"


def _insert(
    store: Store,
    label: str,
    seed: int,
    status: str,
    *,
    task: str = TASK,
    metric_name: str = "accuracy",
    higher_is_better: bool | None = True,
    curve: list[float] | None = None,
    **final,
) -> int:
    run_id = store.begin_run(
        task=task,
        optimizer=label.partition(":")[0],
        spec_label=label,
        hyperparameters={},
        seed=seed,
        data_seed=0,
        epochs=2,
        batch_size=8,
        metric_name=metric_name,
        higher_is_better=higher_is_better,
        target=0.9,
    )
    for epoch, value in enumerate(curve or []):
        store.record_epoch(run_id, epoch, test_metric=value, train_loss=1.0 / (epoch + 1 + seed))
    store.finish_run(run_id, status, **final)
    return run_id


# label -> seed -> final numbers (None: the seed did not finish)
A = {
    0: {"test_metric": 0.90, "best": 0.91, "loss": 0.30, "ttt": 1.5, "time": 3.0, "steps": 100},
    1: {"test_metric": 0.92, "best": 0.93, "loss": 0.25, "ttt": None, "time": 4.0, "steps": 100},
    2: {"test_metric": 0.95, "best": 0.95, "loss": 0.20, "ttt": 2.5, "time": 5.0, "steps": 120},
}
B = {
    0: {"test_metric": 0.97, "best": 0.98, "loss": 0.10, "ttt": 0.5, "time": 8.0, "steps": 100},
    1: {"test_metric": 0.96, "best": 0.97, "loss": 0.12, "ttt": 0.7, "time": 9.0, "steps": 100},
}
CURVES = {0: [0.1, 0.5, 0.9], 1: [0.2, 0.6, 0.92], 2: [0.3, 0.7, 0.95]}


@pytest.fixture
def known_store():
    with Store(":memory:") as store:
        for label, seeds, passes in (("a:lr=1", A, 2), ("b", B, 4)):
            for seed, values in seeds.items():
                _insert(
                    store,
                    label,
                    seed,
                    "finished",
                    curve=CURVES[seed] if label == "a:lr=1" else None,
                    test_metric=values["test_metric"],
                    best_test_metric=values["best"],
                    train_loss=values["loss"],
                    time_to_target_s=values["ttt"],
                    train_time_s=values["time"],
                    steps=values["steps"],
                    forward_passes=passes // 2 * values["steps"],
                    backward_passes=passes // 2 * values["steps"],
                )
        _insert(store, "b", 2, "diverged", train_loss=float("inf"), best_test_metric=0.99)
        _insert(
            store,
            "c",
            0,
            "finished",
            test_metric=0.5,
            best_test_metric=0.6,
            train_loss=1.0,
            train_time_s=1.0,
            steps=10,
            forward_passes=10,
            backward_passes=10,
        )
        _insert(store, "c", 1, "failed", error="Traceback ...\nRuntimeError: boom")
        _insert(store, "d", 0, "diverged", train_loss=float("nan"))
        yield store


def test_aggregates_match_numpy(known_store):
    summary = summarize(known_store)
    assert list(summary) == [TASK]
    info = summary[TASK]
    assert (info["metric_name"], info["higher_is_better"], info["target"]) == (
        "accuracy",
        True,
        0.9,
    )
    rows = {row["spec_label"]: row for row in info["rows"]}
    # Best final test metric first; a spec with no finished run last.
    assert [row["spec_label"] for row in info["rows"]] == ["b", "a:lr=1", "c", "d"]

    a = rows["a:lr=1"]
    for key, field in (
        ("final_test_metric", "test_metric"),
        ("best_test_metric", "best"),
        ("final_train_loss", "loss"),
        ("train_time_s", "time"),
    ):
        values = np.array([A[seed][field] for seed in A])
        assert a[key]["mean"] == pytest.approx(values.mean())
        assert a[key]["std"] == pytest.approx(values.std(ddof=1))
        assert a[key]["n"] == 3
    reached = np.array([1.5, 2.5])
    assert a["time_to_target_s"]["mean"] == pytest.approx(reached.mean())
    assert a["time_to_target_s"]["std"] == pytest.approx(reached.std(ddof=1))
    assert (a["n_reached"], a["n_finished"]) == (2, 3)
    ms_per_step = np.array([1000 * A[s]["time"] / A[s]["steps"] for s in A])
    assert a["ms_per_step"]["mean"] == pytest.approx(ms_per_step.mean())
    assert a["ms_per_step"]["std"] == pytest.approx(ms_per_step.std(ddof=1))
    assert a["passes_per_step"]["mean"] == pytest.approx(1.0)  # one forward+backward per step
    assert a["seeds"] == [0, 1, 2]

    b = rows["b"]
    assert (b["n_runs"], b["n_finished"], b["n_diverged"]) == (3, 2, 1)
    # The diverged seed is counted but not averaged.
    assert b["final_test_metric"]["mean"] == pytest.approx(np.mean([0.97, 0.96]))
    assert b["best_test_metric"]["values"] == [0.98, 0.97]
    assert b["passes_per_step"]["mean"] == pytest.approx(2.0)  # a two-pass optimizer

    c = rows["c"]
    assert (c["n_finished"], c["n_failed"]) == (1, 1)
    assert c["final_test_metric"] == {"mean": 0.5, "std": None, "n": 1, "values": [0.5]}
    assert c["time_to_target_s"]["n"] == 0

    d = rows["d"]
    assert (d["n_finished"], d["n_diverged"], d["final_test_metric"]["mean"]) == (0, 1, None)


def test_format_table(known_store):
    rows = summarize(known_store)[TASK]["rows"]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| method | seeds | final test accuracy | best test accuracy")
    # Short method names in the table; format_specs maps them to the full specs.
    for short in ("a", "b", "c", "d"):
        assert any(line.startswith(f"| {short} |") for line in lines)
    assert "| a | `a:lr=1` |" in format_specs(rows)
    row_b = next(line for line in lines if line.startswith("| b |"))
    assert "| 2 (+1 diverged) |" in row_b
    assert f"{np.mean([0.97, 0.96]):.4g} ± {np.std([0.97, 0.96], ddof=1):.2g}" in row_b
    assert "| 2/2 |" in row_b
    row_c = next(line for line in lines if line.startswith("| c |"))
    assert "0.5 ± 0†" in row_c and "(+1 failed)" in row_c and "| 0/1 |" in row_c
    assert "† a single seed" in table
    assert format_table([]) == "(no runs)"


def test_direction_of_the_metric(tmp_path):
    with Store(":memory:") as store:
        # Recorded lower-is-better: ascending order.
        for label, value in (("x", 0.3), ("y", 0.1), ("z", 0.2)):
            _insert(
                store,
                label,
                0,
                "finished",
                task="lossy",
                metric_name="excess_loss",
                higher_is_better=False,
                test_metric=value,
            )
        # Nothing recorded, task not registered: "accuracy" means higher is better.
        for label, value in (("x", 0.3), ("y", 0.1)):
            _insert(
                store,
                label,
                0,
                "finished",
                task="unregistered",
                higher_is_better=None,
                test_metric=value,
            )
        # Nothing recorded, task registered: the task says.
        for label, value in (("x", 0.3), ("y", 0.1)):
            _insert(
                store,
                label,
                0,
                "finished",
                task="test_report_registered",
                metric_name="score",
                higher_is_better=None,
                test_metric=value,
            )
        registered = Task(
            name="test_report_registered",
            description="",
            model_name="",
            build_model=lambda: nn.Linear(1, 1),
            load_data=lambda seed: TaskData((torch.zeros(1, 1),) * 2, (torch.zeros(1, 1),) * 2),
            loss_fn=nn.functional.mse_loss,
            metric_name="score",
            metric_fn=lambda o, t: 0.0,
            higher_is_better=True,
            target=1.0,
            batch_size=1,
            default_epochs=1,
        )
        register_task(registered)
        try:
            summary = summarize(store)
        finally:
            tasks_module._TASKS.pop(registered.name)
            tasks_module._cached_data.cache_clear()
    assert [row["spec_label"] for row in summary["lossy"]["rows"]] == ["y", "z", "x"]
    assert [row["spec_label"] for row in summary["unregistered"]["rows"]] == ["x", "y"]
    assert summary["test_report_registered"]["higher_is_better"] is True
    assert [row["spec_label"] for row in summary["test_report_registered"]["rows"]] == ["x", "y"]
    with Store(tmp_path / "empty.sqlite"):
        pass
    assert summarize(tmp_path / "empty.sqlite", tasks=["none"])["none"]["rows"] == []
    with pytest.raises(FileNotFoundError, match="no results store"):
        summarize(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()


def test_build_report_writes_markdown_json_and_pngs(known_store, tmp_path):
    report = build_report(known_store, tmp_path / "out", title="Known values")
    assert report.markdown_path.read_text(encoding="utf-8") == report.markdown
    assert report.markdown.startswith("# Known values")
    for label in ("a:lr=1", "b", "c", "d"):
        assert f"`{label}`" in report.markdown
    assert "RuntimeError: boom" in report.markdown  # the failed run is listed
    assert report.messages == []

    assert [path.name for path in report.plot_paths] == [f"{TASK}_curves.png", f"{TASK}_final.png"]
    for path in report.plot_paths:
        content = path.read_bytes()
        assert len(content) > 1000 and content.startswith(PNG_MAGIC)
        assert f"]({path.name})" in report.markdown

    document = json.loads(report.json_path.read_text(encoding="utf-8"))
    rows = {row["spec_label"]: row for row in document["tasks"][TASK]["rows"]}
    assert rows["a:lr=1"]["final_test_metric"]["mean"] == pytest.approx(np.mean([0.9, 0.92, 0.95]))
    assert [run["seed"] for run in rows["b"]["runs"]] == [0, 1, 2]
    assert rows["b"]["runs"][2]["status"] == "diverged"
    assert rows["b"]["runs"][2]["train_loss"] is None  # inf is not JSON
    curves = rows["a:lr=1"]["curves"]
    assert curves["epoch"] == [0, 1, 2]
    per_epoch = np.array([CURVES[seed] for seed in A])
    assert curves["test_metric_mean"] == pytest.approx(per_epoch.mean(axis=0).tolist())
    assert curves["test_metric_std"] == pytest.approx(per_epoch.std(axis=0, ddof=1).tolist())
    assert curves["test_metric_min"] == pytest.approx(per_epoch.min(axis=0).tolist())
    assert rows["b"]["curves"]["epoch"] == []  # no epochs were recorded for b


def test_report_from_a_path_and_only_some_tasks(tmp_path):
    path = tmp_path / "results.sqlite"
    with Store(path) as store:
        _insert(store, "a", 0, "finished", curve=[0.2, 0.4, 0.8], test_metric=0.8)
        _insert(store, "a", 0, "finished", task="other", test_metric=0.1)
    report = build_report(path, tmp_path / "out", tasks=[TASK])
    assert list(report.summary) == [TASK]
    assert "## other" not in report.markdown
    assert "± 0†" in report.markdown


def test_without_matplotlib_tables_and_json_are_still_written(known_store, tmp_path, monkeypatch):
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)
    report = build_report(known_store, tmp_path / "out")
    assert report.plot_paths == []
    assert list((tmp_path / "out").glob("*.png")) == []
    assert report.messages and "matplotlib is not installed" in report.messages[0]
    assert "matplotlib is not installed" in report.markdown
    assert json.loads(report.json_path.read_text(encoding="utf-8"))["tasks"][TASK]["rows"]


# -- issue 20: readable plots, atomic files, timing columns, old labels ------------------------

LONG_SPECS = [
    "sam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.05,weight_decay=0.0005,nesterov=True",
    "asam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.5,eta=0.01,weight_decay=0.0005",
    "fisher_sam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.1,fisher_eta=1.0,dampening=0.1",
    "sgd:lr=0.05,momentum=0.9,weight_decay=0.0005,nesterov=True,dampening=0.0",
    "sgd:lr=0.1,momentum=0.9,weight_decay=0.0005,nesterov=True,dampening=0.0",
    "adamw:lr=0.001,weight_decay=0.01,betas=(0.9, 0.95),eps=1e-08,amsgrad=True",
]


def _figures_of(monkeypatch) -> list:
    """Capture every figure the report saves (rendered at its default size and dpi)."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def test_plots_keep_every_label_inside_the_figure(tmp_path, monkeypatch):
    """Issue 20 item 17: legends, tick labels and titles lie inside the saved figure."""
    figures = _figures_of(monkeypatch)
    with Store(":memory:") as store:
        for index, label in enumerate(LONG_SPECS):
            for seed in range(2):
                _insert(
                    store,
                    label,
                    seed,
                    "finished",
                    curve=[0.1 * index, 0.5, 0.8 + 0.01 * seed],
                    test_metric=0.8 + 0.01 * index + 0.001 * seed,
                    train_time_s=1.0,
                    steps=10,
                )
        report = build_report(store, tmp_path / "out")
    assert len(figures) == 2
    for figure in figures:
        renderer = figure.canvas.get_renderer()
        figure.draw(renderer)  # lay out as savefig did
        box = figure.bbox
        # What is drawn: each axes with its ticks, labels and title; legends; the suptitle.
        parts = [
            (f"axes {axes.get_title()!r}", axes.get_tightbbox(renderer)) for axes in figure.axes
        ]
        parts += [("legend", legend.get_window_extent(renderer)) for legend in figure.legends]
        if figure._suptitle is not None:
            parts.append(("suptitle", figure._suptitle.get_window_extent(renderer)))
        assert len(parts) >= 2
        for name, extent in parts:
            inside = (
                extent.x0 >= box.x0 - 1
                and extent.y0 >= box.y0 - 1
                and extent.x1 <= box.x1 + 1
                and extent.y1 <= box.y1 + 1
            )
            assert inside, f"{name} is cut: {extent} outside {box}"
        for axes in figure.axes:  # the data area is not squeezed to a sliver
            assert axes.get_window_extent(renderer).width > 0.3 * box.width
            assert axes.get_window_extent(renderer).height > 0.25 * box.height
    # Short names in the plots and table; the full specs in the methods table.
    from torchvalley.bench.specs import OptimizerSpec

    for spec in LONG_SPECS:
        assert f"`{OptimizerSpec.parse(spec).label}`" in report.markdown
    assert "| sgd lr=0.05 |" in report.markdown and "| sam |" in report.markdown


def test_short_labels_are_unique_and_short():
    from torchvalley.bench.report import _short_labels

    rows = [
        {"optimizer": "sgd", "spec_label": "sgd:lr=0.1,momentum=0.9"},
        {"optimizer": "sgd", "spec_label": "sgd:lr=0.2,momentum=0.9"},
        {"optimizer": "adam", "spec_label": "adam:lr=0.001"},
        {"optimizer": "sam", "spec_label": "sam:rho=0.05," + ",".join(f"k{i}=1" for i in range(9))},
        {"optimizer": "sam", "spec_label": "sam:rho=0.1," + ",".join(f"k{i}=2" for i in range(9))},
    ]
    assert _short_labels(rows) == ["sgd lr=0.1", "sgd lr=0.2", "adam", "sam (1)", "sam (2)"]


def test_report_files_are_replaced_atomically(known_store, tmp_path, monkeypatch):
    """A failure while writing leaves the previous report whole and no temporary files."""
    import os

    out = tmp_path / "out"
    first = build_report(known_store, out, title="first")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        build_report(known_store, out, title="second")
    assert first.markdown_path.read_text(encoding="utf-8") == first.markdown
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["report.md", "report.json", f"{TASK}_curves.png", f"{TASK}_final.png"]
    )


def test_threads_cpu_share_and_noisy_timing_are_shown():
    with Store(":memory:") as store:
        # steady: 10 ms/step on every seed, full CPU share
        for seed in range(3):
            run_id = _insert(
                store, "a", seed, "finished", test_metric=0.9, train_time_s=1.0, steps=100
            )
            store._connection.execute(
                "UPDATE runs SET num_threads = 1, cpu_time_s = 0.95 WHERE id = ?", (run_id,)
            )
        # noisy: 10, 30, 50 ms/step, and runs that waited for the CPU
        for seed, time_s in enumerate((1.0, 3.0, 5.0)):
            run_id = _insert(
                store, "b", seed, "finished", test_metric=0.8, train_time_s=time_s, steps=100
            )
            store._connection.execute(
                "UPDATE runs SET num_threads = 2, cpu_time_s = ? WHERE id = ?",
                (0.3 * time_s, run_id),
            )
        rows = {row["spec_label"]: row for row in summarize(store)[TASK]["rows"]}
    table = format_table(list(rows.values()))
    line_a = next(line for line in table.splitlines() if line.startswith("| a |"))
    line_b = next(line for line in table.splitlines() if line.startswith("| b |"))
    assert "‡" not in line_a and line_a.rstrip(" |").endswith("| 1 | 0.95")
    assert "30 ± 20 ‡" in line_b and line_b.rstrip(" |").endswith("| 2 | 0.15")
    assert "noisy timing" in table


def test_old_spellings_of_a_spec_are_one_row():
    """Runs stored before labels were canonical group with today's label."""
    with Store(":memory:") as store:
        _insert(store, "sgd:lr=0.1,momentum=0", 0, "finished", test_metric=0.5)
        _insert(store, "sgd:lr=0.1", 1, "finished", test_metric=0.7)
        (row,) = summarize(store)[TASK]["rows"]
    assert row["spec_label"] == "sgd:lr=0.1" and row["final_test_metric"]["n"] == 2
