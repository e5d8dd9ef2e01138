"""Use a trained model: the model card, load_model, predict (API and CLI, images and netCDF) and
export round trips (TorchScript, exported program, ONNX where installed) that load without
nas_core.  One small digits model is trained once for the module (about half a minute)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_core.cli import main
from nas_core.data import random_test_split
from nas_core.export import EXPORT_FORMATS, export_model
from nas_core.inference import (CARD_FILE, InferenceError, TrainedModel, load_model, model_card,
                                read_inputs)
from nas_core.stages.model_card import write_model_card

TRAIN = dict(epochs=2, layers=2, init_channels=4, batch_size=64, num_workers=0)
TEST = {"num_workers": 0}
HAS_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """results/digits of a small trained DARTS_V2 network: test.json, model.json, predictions."""
    from nas_core.stages import run_genotype, run_test, run_train

    folder = tmp_path_factory.mktemp("res") / "results" / "digits"
    run_genotype("DARTS_V2", folder / "genotype.json")
    run_train({"name": "digits"}, TRAIN, folder / "genotype.json", folder / "train",
              device="cpu")
    run_test({"name": "digits"}, TRAIN, TEST, folder / "genotype.json",
             folder / "train" / "model.pt", folder / "test.json", device="cpu")
    write_model_card({"name": "digits"}, TRAIN, folder, genotype_source="DARTS_V2",
                     device="cpu")
    return folder


def raw_test_split() -> tuple[torch.Tensor, np.ndarray]:
    """The digits test split as stored (pixels / 16, no normalisation) and its labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    _, test = random_test_split(len(d.target), 0.2, 42)
    return torch.from_numpy((d.images[test] / 16.0).astype(np.float32)[:, None]), d.target[test]


def top1(test_json: Path) -> float:
    return json.loads(test_json.read_text())["metrics"]["top1"]


# -- the model card ---------------------------------------------------------------------------


def test_model_card_holds_what_a_user_needs(digits):
    card = json.loads((digits / CARD_FILE).read_text())
    test = json.loads((digits / "test.json").read_text())
    assert card["dataset"] == "digits" and card["task"] == "classification"
    assert card["network"] == {**test["network"]}
    assert card["preprocessing"]["input_size"] == [8, 8]
    assert card["preprocessing"]["in_channels"] == 1
    assert card["preprocessing"]["mean"] == test["data"]["normalize"]["mean"]
    assert card["preprocessing"]["pad_to_multiple"] == 4
    assert card["class_names"] == [str(i) for i in range(10)]
    assert card["genotype_source"] == "DARTS_V2"
    assert card["test"] == {"metric": "top1", "value": top1(digits / "test.json"),
                            "num_samples": 360}
    rows = (digits / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "index,target,prediction,target_name,prediction_name,probability"
    assert len(rows) == 1 + 360
    correct = sum(r.split(",")[1] == r.split(",")[2] for r in rows[1:])
    assert 100.0 * correct / 360 == pytest.approx(top1(digits / "test.json"))


# -- load_model and predict -------------------------------------------------------------------


def test_load_model_reproduces_the_test_top1(digits):
    model = load_model(digits)
    assert isinstance(model, TrainedModel) and not model.training
    assert not model.network.training and model.class_names == [str(i) for i in range(10)]
    assert model.input_size == (8, 8) and model.dataset == "digits"
    x, y = raw_test_split()
    pred = model.predict(x)
    assert pred.outputs.shape == (360, 10) and pred.names[0] == str(int(pred.labels[0]))
    accuracy = 100.0 * float((pred.labels.numpy() == y).mean())
    assert accuracy == pytest.approx(top1(digits / "test.json"), abs=1e-9)
    model.train()  # stays in eval mode: a loaded model is for inference
    assert not model.training and not model.network.training


def test_predict_command_reproduces_the_test_top1_from_a_netcdf_file(digits, tmp_path,
                                                                     capsys):
    import xarray as xr

    x, y = raw_test_split()
    path = tmp_path / "digits_test.nc"
    xr.Dataset({"pixels": (("sample", "row", "col"), x[:, 0].numpy())}).to_netcdf(path)
    assert main(["predict", str(digits), str(path), "--var", "pixels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "input\tprediction\tclass\tprobability"
    assert lines[1].startswith(f"{path}[0]\t")
    predicted = np.array([int(line.split("\t")[2]) for line in lines[1:]])
    assert len(predicted) == 360
    assert 100.0 * float((predicted == y).mean()) == pytest.approx(top1(digits / "test.json"))


def test_predict_images_of_any_size(digits, tmp_path, capsys):
    """PNG files are read as grey, resized to the model's 8x8 and scaled by 1/255."""
    from PIL import Image

    x, _ = raw_test_split()
    files = []
    for i in range(12):
        img = (x[i, 0].numpy() * 255).round().astype(np.uint8)
        size = 8 if i % 2 else 16  # half of them twice as large
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(img).resize((size, size), Image.Resampling.NEAREST).save(p)
        files.append(str(p))
    model = load_model(digits)
    inputs, labels = read_inputs(model.card, files)
    assert inputs.shape == (12, 1, 8, 8) and labels == files
    assert float((inputs[1::2] - x[1:12:2]).abs().max()) <= 0.5 / 255 + 1e-7
    expected = model.predict(x[:12]).labels
    assert main(["predict", str(digits), *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in rows] == files
    odd = [r["class"] for r in rows[1::2]]  # the 8x8 files: only the 8-bit rounding differs
    assert sum(a == b for a, b in zip(odd, expected[1::2].tolist())) >= 5


def test_load_model_without_a_card_reads_test_json(digits, tmp_path):
    folder = tmp_path / "results" / "digits"
    shutil.copytree(digits, folder)
    (folder / CARD_FILE).unlink()
    card = model_card(folder)
    assert card["preprocessing"]["input_size"] is None  # not in test.json for digits
    x, _ = raw_test_split()
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(x[:20]), load_model(digits)(x[:20]))


def test_one_line_errors(digits, tmp_path):
    with pytest.raises(InferenceError, match="no such results folder"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceError, match="no model.json and no test.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    assert main(["predict", str(digits), str(tmp_path / "notes.txt")]) == 1
    with pytest.raises(InferenceError, match="unknown export format"):
        export_model(digits, "keras")


# -- export -----------------------------------------------------------------------------------

LOAD_WITHOUT_NAS_CORE = r"""
import sys
sys.modules["nas_core"] = None  # any import of nas_core now fails
import torch
fmt, path, inp, out = sys.argv[1:5]
x = torch.load(inp)
if fmt == "torchscript":
    y = torch.jit.load(path)(x)
elif fmt == "exported-program":
    y = torch.export.load(path).module()(x)
else:
    import onnxruntime
    s = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = torch.from_numpy(s.run(None, {"images": x.numpy()})[0])
torch.save(y.detach(), out)
"""


@pytest.mark.parametrize("fmt", [
    "torchscript", "exported-program",
    pytest.param("onnx", marks=pytest.mark.skipif(not HAS_ONNX, reason="onnx not installed "
                                                  "(pip install 'nas-core[onnx]')")),
])
def test_export_round_trip(digits, tmp_path, fmt):
    """The exported file gives the nas_core model's outputs within 1e-5, loaded back here and
    in a process where nas_core cannot be imported; any batch size; the card rides along."""
    out = tmp_path / EXPORT_FORMATS[fmt]
    result = export_model(digits, fmt, out)
    assert result["path"] == str(out) and result["max_abs_diff"] <= 1e-5
    x, _ = raw_test_split()
    x = x[:37]
    with torch.no_grad():
        ref = load_model(digits)(x)
    torch.save(x, tmp_path / "x.pt")
    if fmt != "onnx" or importlib.util.find_spec("onnxruntime") is not None:
        proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_NAS_CORE, fmt, str(out),
                               str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = torch.load(tmp_path / "y.pt")
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-5
    if fmt == "torchscript":
        files = {"nas_core.json": ""}
        torch.jit.load(str(out), _extra_files=files)
        assert json.loads(files["nas_core.json"])["preprocessing"]["input_size"] == [8, 8]


def test_export_command(digits, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", str(digits), "--format", "torchscript", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "torchscript" and result["max_abs_diff"] <= 1e-5
    assert out.is_file()
