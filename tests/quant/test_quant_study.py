"""The quantization suite in the harness: variant tasks, the study, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from torchvalley.bench.names import QUANT_BITS, QUANT_METHODS
from torchvalley.bench.quant_study import parse_variant, quant_task, run_quant_study, variant_name
from torchvalley.bench.store import Store
from torchvalley.bench.tasks import Task, TaskData, get_task, register_task
from torchvalley.bench.tasks._common import CLASSIFICATION
from torchvalley.cli import main
from torchvalley.quant import METHODS, QuantizedLayer, quantized_layers

TINY = "quant_test_tiny"


def _tiny_data(data_seed: int) -> TaskData:
    generator = torch.Generator().manual_seed(data_seed)
    inputs = torch.randn(96, 4, generator=generator)
    targets = (inputs[:, 0] + inputs[:, 1] > 0).long()
    return TaskData(train=(inputs[:64], targets[:64]), test=(inputs[64:], targets[64:]))


def _tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@pytest.fixture(autouse=True, scope="module")
def _tiny_task():
    """A task small enough for a sweep in a unit test (the study's tasks take minutes);
    registered for this module only, and removed with its variants afterwards."""
    from torchvalley.bench.task import _TASKS

    register_task(
        Task(
            name=TINY,
            description="tiny linearly separable problem for the quantization-suite tests",
            model_name="MLP 4-8-2",
            build_model=_tiny_model,
            load_data=_tiny_data,
            **CLASSIFICATION,
            target=0.9,
            batch_size=16,
            default_epochs=2,
        ),
        replace=True,
    )
    yield
    for name in [name for name in _TASKS if name == TINY or name.startswith(TINY + "+")]:
        del _TASKS[name]


def test_cli_names_agree_with_the_library() -> None:
    assert set(QUANT_METHODS) == {"float", *METHODS}
    assert QUANT_BITS == (8, 4, 3, 2)


def test_variant_names_resolve_as_tasks() -> None:
    name = variant_name("digits_mlp", "rq", 3, 4)
    assert name == "digits_mlp+rq:w3a4"
    assert variant_name("digits_mlp", "float", 3, 3) == "digits_mlp"
    assert parse_variant(name) == ("digits_mlp", "rq", 3, 4)
    task = get_task(name)  # resolved on first use, then registered
    assert task is quant_task(name) and task.batch_size == get_task("digits_mlp").batch_size
    model = task.model(0)
    layers = quantized_layers(model)
    assert [layer.weight_quantizer.bits for _, layer in layers] == [3, 3]  # all layers at 3
    assert layers[0][1].input_quantizer.bits == 8 and layers[1][1].input_quantizer.bits == 4
    assert all(isinstance(layer, QuantizedLayer) for _, layer in layers)
    # same seed, same model (weights and grids)
    other = task.model(0)
    for (key, value), (_, again) in zip(
        model.state_dict().items(), other.state_dict().items(), strict=True
    ):
        assert torch.equal(value, again), key


@pytest.mark.parametrize(
    "name, match",
    [
        ("digits_mlp+dorefa:w4a4", "unknown quantization method"),
        ("digits_mlp+rq:4", "variant"),
        ("digits_mlp+rq:w0a4", "bits"),
        ("digits_mlp+rq:w4a17", "bits"),
        ("nope+rq:w4a4", "unknown task"),
    ],
)
def test_bad_variant_names(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_task(name)


def test_study_writes_table_json_and_plot(tmp_path) -> None:
    with Store(str(tmp_path / "q.db")) as store:
        study = run_quant_study(
            [TINY],
            "adam:lr=0.001",
            [0],
            tmp_path / "out",
            store=store,
            methods=["float", "rq", "lsq"],
            bits=[4, 2],
            epochs=1,
            progress=False,
        )
        assert {r.task for r in study.results} == {
            f"{TINY}",
            f"{TINY}+rq:w4a4",
            f"{TINY}+rq:w2a2",
            f"{TINY}+lsq:w4a4",
            f"{TINY}+lsq:w2a2",
        }
        assert all(r.status == "finished" for r in study.results)
    cells = study.cells[f"{TINY}"]
    # the float row is the same run in every column
    assert cells["float"][4]["values"] == cells["float"][2]["values"]
    for method in ("rq", "lsq"):
        for bits in (4, 2):
            assert cells[method][bits]["n"] == 1 and 0.0 <= cells[method][bits]["mean"] <= 1.0
    text = (tmp_path / "out" / "quantization.md").read_text()
    assert "| rq |" in text and "4/4" in text and "2/2" in text
    saved = json.loads((tmp_path / "out" / "quantization.json").read_text())
    assert set(saved["tasks"][f"{TINY}"]) == {"float", "rq", "lsq"}
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    assert (tmp_path / "out" / f"{TINY}_accuracy_vs_bits.png").stat().st_size > 0


def test_cli_quant_and_report(tmp_path, capsys) -> None:
    store, out = str(tmp_path / "q.db"), str(tmp_path / "out")
    argv = ["quant", "--task", TINY, "--method", "rq_st", "--bits", "3", "--epochs", "1"]
    assert main([*argv, "--store", store, "--out", out, "--no-progress"]) == 0
    assert "| rq_st |" in capsys.readouterr().out
    # the generic report reads the variant tasks from the store
    assert main(["report", "--store", store, "--out", str(tmp_path / "rep")]) == 0
    assert f"{TINY}+rq_st:w3a3" in capsys.readouterr().out


def test_cli_quant_bad_input(tmp_path, capsys) -> None:
    base = ["quant", "--task", TINY, "--store", str(tmp_path / "q.db")]
    assert main([*base, "--bits", "17", "--out", str(tmp_path / "o")]) == 2
    assert "bits" in capsys.readouterr().err
    assert main([*base, "--method", "torchao", "--bits", "12", "--out", str(tmp_path / "o")]) == 2
    assert "at most 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--method", "dorefa"])


def test_study_runs_brevitas_and_skips_it_with_the_reason_when_missing(
    tmp_path, monkeypatch
) -> None:
    from torchvalley.quant import brevitas_qat

    pytest.importorskip("brevitas", reason="brevitas (optional) is not installed")
    with Store(str(tmp_path / "q.db")) as store:
        study = run_quant_study(
            [TINY],
            "adam:lr=0.001",
            [0],
            tmp_path / "out",
            store=store,
            methods=["brevitas"],
            bits=[2],
            epochs=1,
            progress=False,
        )
    assert [r.status for r in study.results] == ["finished"]
    assert study.cells[TINY]["brevitas"][2]["n"] == 1
    monkeypatch.setattr(brevitas_qat, "brevitas_skip_reason", lambda: "brevitas is not installed")
    with Store(str(tmp_path / "q2.db")) as store:
        study = run_quant_study(
            [TINY],
            "adam:lr=0.001",
            [0],
            tmp_path / "out2",
            store=store,
            methods=["float", "brevitas"],
            bits=[2],
            epochs=1,
            progress=False,
        )
    assert {r.task for r in study.results} == {TINY}
    assert "Skipped: `brevitas`: brevitas is not installed" in study.table
    saved = json.loads((tmp_path / "out2" / "quantization.json").read_text())
    assert saved["skipped"] == {"brevitas": "brevitas is not installed"}
