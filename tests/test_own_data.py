"""A user's own data, through the config only: netCDF files of any layout (dimensions found by
name), labels of any values or text with their class names, standardised regression targets,
image folders, a dataset class given by import path; content-tracked in the workflow (an edited
byte reruns the chain, a touch nothing) with paths relative to the working directory.

Small files are written in the real formats (netCDF4 through xarray, PNG through PIL)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datafiles import SHAPES, draw_shapes, write_image_folder, write_netcdf, write_png
from nas_core.data import (
    DataError,
    Sha256Cache,
    content_digest,
    dataset_files,
    download_data,
    encode_labels,
    load_data,
    local_inputs,
)
from nas_core.genotypes import get_genotype
from nas_core.model_eval import EvalNetwork
from nas_core.stages import run_test
from test_workflow import copy_workflow, planned_jobs, snakemake, write_config

TRAIN = {"layers": 2, "init_channels": 4, "auxiliary": False}


def one_line_error(fn, match: str) -> str:
    with pytest.raises(DataError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def rgb(n: int = 10, h: int = 14, w: int = 14, seed: int = 0) -> np.ndarray:
    """``n x h x w x 3`` float32 with a different constant offset per channel."""
    x = np.random.RandomState(seed).rand(n, h, w, 3).astype(np.float32)
    return x + np.array([0.0, 10.0, 20.0], dtype=np.float32)


def nc_cfg(path, **extra) -> dict:
    return {"name": "netcdf", "path": str(path), "image_var": "image", "target_var": "label",
            "task": "classification", **extra}


def run_untrained_test(cfg: dict, root: Path, out: Path) -> tuple[dict, torch.nn.Module]:
    """test.json of an untrained small DARTS_V2 network on ``cfg``'s test split."""
    bundle = load_data(cfg, root)
    torch.manual_seed(0)
    net = EvalNetwork(get_genotype("DARTS_V2"), bundle.in_channels, TRAIN["init_channels"],
                      bundle.num_outputs, TRAIN["layers"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out.parent / "model.pt")
    result = run_test(cfg, TRAIN, {"num_workers": 0}, "DARTS_V2", out.parent / "model.pt", out,
                      data_root=root, device="cpu")
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result, net


# -- netCDF: the image layout by dimension names ---------------------------------------------


def test_channel_last_rgb_is_read_as_three_channels(tmp_path):
    """The issue's file: (sample, y, x, channel), 14x14x3, ten samples."""
    x = rgb()
    path = write_netcdf(tmp_path / "rgb.nc", {
        "image": (("sample", "y", "x", "channel"), x),
        "label": (("sample",), np.arange(10) % 2)})
    b = load_data(nc_cfg(path), tmp_path)
    assert (b.in_channels, b.input_size, b.num_outputs) == (3, (14, 14), 2)
    j = int(b.test.indices[0])
    torch.testing.assert_close(b.test[0][0], torch.from_numpy(x[j].transpose(2, 0, 1)))
    assert b.source["layout"] == {"sample": "sample", "channel": "channel", "y": "y", "x": "x"}


def test_channel_first_and_channel_last_read_the_same(tmp_path):
    x = rgb(n=12, h=6, w=5)
    y = np.arange(12) % 3
    first = write_netcdf(tmp_path / "first.nc", {
        "image": (("n", "band", "lat", "lon"), x.transpose(0, 3, 1, 2)),
        "label": (("n",), y)})
    last = write_netcdf(tmp_path / "last.nc", {
        "image": (("n", "lat", "lon", "band"), x), "label": (("n",), y)})
    a, b = load_data(nc_cfg(first), tmp_path), load_data(nc_cfg(last), tmp_path)
    assert (a.in_channels, a.input_size) == (b.in_channels, b.input_size) == (3, (6, 5))
    for i in range(len(a.test)):
        torch.testing.assert_close(a.test[i][0], b.test[i][0])
    # any number of channels: 7 bands, channel in the middle
    seven = write_netcdf(tmp_path / "seven.nc", {
        "image": (("time", "y", "channels", "x"), np.zeros((12, 4, 7, 4), np.float32)),
        "label": (("time",), y)})
    s = load_data(nc_cfg(seven), tmp_path)
    assert (s.in_channels, s.input_size) == (7, (4, 4))


def test_one_channel_layouts(tmp_path):
    x = np.random.RandomState(1).rand(10, 9, 7).astype(np.float32)
    y = np.arange(10) % 2
    rank3 = write_netcdf(tmp_path / "r3.nc", {"image": (("record", "row", "col"), x),
                                               "label": (("record",), y)})
    rank4 = write_netcdf(tmp_path / "r4.nc", {"image": (("record", "row", "col", "c"),
                                                         x[..., None]),
                                               "label": (("record",), y)})
    a, b = load_data(nc_cfg(rank3), tmp_path), load_data(nc_cfg(rank4), tmp_path)
    assert (a.in_channels, a.input_size) == (b.in_channels, b.input_size) == (1, (9, 7))
    torch.testing.assert_close(a.train[0][0], b.train[0][0])
    # the rows are y: a (record, col, row) file is transposed back
    swapped = write_netcdf(tmp_path / "sw.nc", {
        "image": (("record", "col", "row"), x.transpose(0, 2, 1)), "label": (("record",), y)})
    c = load_data(nc_cfg(swapped), tmp_path)
    assert c.input_size == (9, 7)
    torch.testing.assert_close(c.train[0][0], a.train[0][0])


def test_dims_by_config(tmp_path):
    x = rgb(n=8, h=5, w=6)
    path = write_netcdf(tmp_path / "odd.nc", {
        "image": (("k", "a", "b", "q"), x), "label": (("k",), np.arange(8) % 2)})
    dims = {"y": "a", "x": "b", "channel": "q"}
    b = load_data(nc_cfg(path, dims=dims), tmp_path)
    assert (b.in_channels, b.input_size) == (3, (5, 6))
    assert b.source["layout"] == {"sample": "k", "channel": "q", "y": "a", "x": "b"}
    # two of three given: the last one left is deduced, the sample is the label's dimension
    assert load_data(nc_cfg(path, dims={"y": "a", "x": "b"}), tmp_path).in_channels == 3
    # config names that are wrong
    one_line_error(lambda: load_data(nc_cfg(path, dims={"y": "lat"}), tmp_path),
                   r"data.dims.y 'lat' is not one of its dims \('k', 'a', 'b', 'q'\)")
    one_line_error(lambda: load_data(nc_cfg(path, dims={"y": "a", "x": "a"}), tmp_path),
                   r"data.dims.x and data.dims.y are both 'a'")
    one_line_error(lambda: load_data(nc_cfg(path, dims={"sample": "q", "y": "a", "x": "b"}),
                                     tmp_path),
                   r"data.dims.sample is 'q' but the target variable's dimension is 'k'")


def test_unresolvable_layouts_are_one_line_errors(tmp_path):
    y = np.arange(8) % 2
    unnamed = write_netcdf(tmp_path / "u.nc", {
        "image": (("k", "a", "b"), np.zeros((8, 4, 4), np.float32)), "label": (("k",), y)})
    e = one_line_error(lambda: load_data(nc_cfg(unnamed), tmp_path),
                       r"variable 'image' has dims \('k', 'a', 'b'\): cannot tell which "
                       r"dimension is y / x \('a', 'b' unnamed\); name them with data.dims")
    assert "dims: {y: a, x: b}" in e
    two_x = write_netcdf(tmp_path / "x2.nc", {
        "image": (("sample", "x", "lon"), np.zeros((8, 4, 4), np.float32)),
        "label": (("sample",), y)})
    one_line_error(lambda: load_data(nc_cfg(two_x), tmp_path),
                   r"'x' and 'lon' both look like the x dimension; name it with data.dims.x")
    no_channel = write_netcdf(tmp_path / "nc3.nc", {
        "image": (("sample", "y", "x"), np.zeros((8, 4, 4), np.float32)),
        "label": (("sample",), y)})
    one_line_error(lambda: load_data(nc_cfg(no_channel, dims={"channel": "y"}), tmp_path),
                   r"rank 3: sample, y, x\), so no channel dimension")
    five = write_netcdf(tmp_path / "r5.nc", {
        "image": (("sample", "t", "c", "y", "x"), np.zeros((8, 2, 1, 4, 4), np.float32)),
        "label": (("sample",), y)})
    one_line_error(lambda: load_data(nc_cfg(five), tmp_path), r"\(rank 5\); expected")


# -- labels and class names --------------------------------------------------------------------


def test_encode_labels():
    idx, names = encode_labels(np.array([3, 1, 2, 3, 1]), "t")
    assert idx.tolist() == [2, 0, 1, 2, 0] and names == ["1", "2", "3"]
    idx, names = encode_labels(np.array([10, 2, 1.0]), "t")  # by value, not as text
    assert names == ["1", "2", "10"] and idx.tolist() == [2, 1, 0]
    idx, names = encode_labels(np.array([b"wet", b"dry", b"wet"]), "t")
    assert names == ["dry", "wet"] and idx.tolist() == [1, 0, 1]
    idx, names = encode_labels(np.array(["b", "a"], dtype=object), "t")
    assert names == ["a", "b"]
    assert encode_labels(np.array([0, 2]), "t", num_classes=4)[1] == ["0", "1", "2", "3"]
    for bad, match in (([1.5, 2.0], r"non-integer class labels \(e.g. 1.5\)"),
                       ([np.nan, 1.0], "NaN/inf"),
                       (np.array(["a", 1], dtype=object), "labels mix text and int")):
        with pytest.raises(DataError, match=match):
            encode_labels(np.asarray(bad), "t")
    with pytest.raises(DataError, match="num_classes applies to integer labels"):
        encode_labels(np.array(["a"]), "t", num_classes=2)


def test_one_based_labels_give_k_classes_named_in_test_json(tmp_path):
    """Labels 1..3 are three classes, not four; test.json names them."""
    labels = np.arange(30) % 3 + 1
    path = write_netcdf(tmp_path / "one.nc", {
        "image": (("sample", "y", "x"), np.random.RandomState(0).rand(30, 8, 8)
                  .astype(np.float32)),
        "label": (("sample",), labels.astype(np.int16))})
    cfg = nc_cfg(path)
    b = load_data(cfg, tmp_path)
    assert b.num_outputs == 3 and b.class_names == ["1", "2", "3"]
    assert sorted({b.train[i][1] for i in range(len(b.train))}) == [0, 1, 2]
    result, _ = run_untrained_test(cfg, tmp_path, tmp_path / "out" / "test.json")
    m = result["metrics"]
    assert list(m["per_class_accuracy_by_name"]) == ["1", "2", "3"]
    assert list(m["per_class_accuracy_by_name"].values()) == m["per_class_accuracy"]
    assert result["data"]["class_names"] == ["1", "2", "3"]
    assert result["network"]["num_outputs"] == 3
    # download.json names the classes too (the file's labels, not the images, are read)
    download_data(cfg, tmp_path, manifest=tmp_path / "download.json")
    manifest = json.loads((tmp_path / "download.json").read_text())
    assert manifest["class_names"] == ["1", "2", "3"]
    assert manifest["content"] == [{"path": str(path), "size": path.stat().st_size,
                                    "sha256": Sha256Cache().sha256(path)}]


def test_string_labels(tmp_path):
    names = np.array(["wet", "dry", "frozen"])[np.arange(30) % 3]
    path = write_netcdf(tmp_path / "str.nc", {
        "image": (("sample", "y", "x"), np.random.RandomState(0).rand(30, 8, 8)
                  .astype(np.float32)),
        "label": (("sample",), names)})
    cfg = nc_cfg(path)
    b = load_data(cfg, tmp_path)
    assert b.class_names == ["dry", "frozen", "wet"]
    j = int(b.test.indices[0])
    assert b.class_names[b.test[0][1]] == names[j]
    result, _ = run_untrained_test(cfg, tmp_path, tmp_path / "out" / "test.json")
    assert list(result["metrics"]["per_class_accuracy_by_name"]) == ["dry", "frozen", "wet"]
    one_line_error(lambda: load_data({**cfg, "task": "regression"}, tmp_path),
                   r"variable 'label' is <U6, not numeric \(task regression\)")
    one_line_error(lambda: load_data({**cfg, "num_classes": 3}, tmp_path),
                   "num_classes applies to integer labels 0..N-1, the labels are text")


def test_standardized_regression_reports_original_units(tmp_path):
    rng = np.random.RandomState(3)
    x = rng.rand(40, 8, 8).astype(np.float32)
    target = (250.0 + 40.0 * x.mean(axis=(1, 2)) + rng.randn(40)).astype(np.float64)
    path = write_netcdf(tmp_path / "reg.nc", {"image": (("sample", "y", "x"), x),
                                               "label": (("sample",), target)})
    cfg = nc_cfg(path, task="regression", standardize=True)
    b = load_data(cfg, tmp_path)
    train_targets = target[b.train.indices]
    assert b.target_stats == pytest.approx({"mean": train_targets.mean(),
                                            "std": train_targets.std()})
    ys = torch.stack([b.train_eval[i][1] for i in range(len(b.train_eval))]).double()
    assert abs(float(ys.mean())) < 1e-5 and abs(float(ys.std(unbiased=False)) - 1) < 1e-5
    assert b.source["standardize"] == b.target_stats
    result, net = run_untrained_test(cfg, tmp_path, tmp_path / "out" / "test.json")
    net.eval()
    with torch.no_grad():
        xs = torch.stack([b.test[i][0] for i in range(len(b.test))])
        out = net(xs)
        out = out[0] if isinstance(out, tuple) else out  # (logits, aux) or logits in eval mode
        pred = out.squeeze(-1).double() * b.target_stats["std"] + b.target_stats["mean"]
    y_test = torch.from_numpy(target[b.test.indices])
    mse = float(((pred - y_test) ** 2).mean())
    assert result["metrics"]["mse"] == pytest.approx(mse, rel=1e-3)
    assert result["metrics"]["mae"] > 1.0  # original units (the std is about 2.3)
    one_line_error(lambda: load_data(nc_cfg(path, standardize=True), tmp_path),
                   "standardize applies to regression targets only")
    flat = write_netcdf(tmp_path / "flat.nc", {"image": (("sample", "y", "x"), x),
                                                "label": (("sample",), np.ones(40))})
    one_line_error(lambda: load_data(nc_cfg(flat, task="regression", standardize=True),
                                     tmp_path), r"the training part's targets are all 1.0")


# -- paths: relative to the working directory --------------------------------------------------


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_netcdf(tmp_path / "data" / "sheets.nc", {
        "image": (("sample", "y", "x"), np.zeros((10, 4, 4), np.float32)),
        "label": (("sample",), np.arange(10) % 2)})
    cfg = nc_cfg("data/sheets.nc")
    assert dataset_files(cfg, "resources/sheets") == [Path("data/sheets.nc")]
    assert load_data(cfg, "resources/sheets").source["files"][0]["path"] == "data/sheets.nc"
    [entry] = local_inputs(cfg, "resources/sheets")
    assert (entry.key, entry.given, entry.exists) == ("path", "data/sheets.nc", True)
    assert entry.files == (Path("data/sheets.nc"),)
    e = one_line_error(lambda: load_data(nc_cfg("data/other.nc"), "resources/sheets"),
                       r"netcdf: data.path: no file 'data/other.nc' \(relative to the working "
                       r"directory: ")
    assert str(tmp_path / "data" / "other.nc") in e
    assert local_inputs(nc_cfg("data/other.nc"), "resources/sheets")[0].exists is False
    # downloaded data (an S3 source) is no local input
    assert local_inputs(nc_cfg("x.nc", source={"bucket": "b", "key": "k"}), "r") == []


def test_content_digest_ignores_touch_and_sees_one_byte(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"0123456789" * 1000)
    cache = Sha256Cache(tmp_path / "cache.json")
    before = content_digest([f], cache=cache)
    cache.save()
    again = Sha256Cache(tmp_path / "cache.json")
    assert again.entries and content_digest([f], cache=again) == before and not again.changed
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # touch
    assert content_digest([f], cache=again) == before and again.changed  # hashed once more
    data = bytearray(f.read_bytes())
    data[5000] ^= 1
    f.write_bytes(bytes(data))
    assert content_digest([f], cache=again) != before


# -- image folders -----------------------------------------------------------------------------


def test_image_folder_random_split(tmp_path):
    files = write_image_folder(tmp_path / "shapes", n=30, size=12, channels=3)
    (tmp_path / "shapes" / ".ipynb_checkpoints").mkdir()  # hidden folders are no classes
    write_png(tmp_path / "shapes" / ".ipynb_checkpoints" / "x.png", np.zeros((5, 5, 3), np.uint8))
    (tmp_path / "shapes" / "circle" / "notes.txt").write_text("not an image")
    cfg = {"name": "image-folder", "path": str(tmp_path / "shapes")}
    b = load_data(cfg, tmp_path)
    assert (b.class_names, b.num_outputs, b.in_channels, b.input_size) == (
        list(SHAPES), 3, 3, (12, 12))
    assert (len(b.train), len(b.test)) == (24, 6)  # the 2019 rule: ceil(0.2 * 30) test
    assert b.source["test_split"] == {"kind": "random", "fraction": 0.2, "seed": 42}
    assert b.source["folder"]["files"] == 30 and len(b.source["folder"]["sha256"]) == 64
    # normalised with the training part's statistics
    xs = torch.stack([b.train_eval[i][0] for i in range(len(b.train_eval))])
    torch.testing.assert_close(xs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert sorted(dataset_files(cfg, tmp_path)) == sorted(files)
    manifest = tmp_path / "download.json"
    download_data(cfg, tmp_path, manifest=manifest)
    doc = json.loads(manifest.read_text())
    assert doc["class_names"] == list(SHAPES) and doc["layout"] == "random"
    assert len(doc["content"]) == 30 and all(len(r["sha256"]) == 64 for r in doc["content"])
    # grayscale, resized
    small = load_data({**cfg, "channels": 1, "size": [8, 10]}, tmp_path)
    assert (small.in_channels, small.input_size) == (1, (8, 10))


def test_image_folder_train_test_folders(tmp_path):
    write_image_folder(tmp_path / "shapes", n=30, size=10, split=True, test_every=5)
    cfg = {"name": "image-folder", "path": str(tmp_path / "shapes"), "channels": 1}
    b = load_data(cfg, tmp_path)
    assert (len(b.train), len(b.test)) == (24, 6)
    assert b.source["test_split"] == {"kind": "folders"} and b.source["layout"] == "folders"
    assert b.class_names == list(SHAPES)
    images, labels = draw_shapes(30, 10, 1, 0)
    # test images are 0, 5, 10, ...: in class order circle (0, 15), square (10, 25), ...
    test_labels = sorted(labels[i] for i in range(0, 30, 5))
    assert [b.class_names[b.test[i][1]] for i in range(6)] == test_labels
    # test_split kind random reads root/<class>/: here 'test' and 'train' become the classes
    r = load_data({**cfg, "test_split": {"kind": "random"}}, tmp_path)
    assert r.class_names == ["test", "train"]
    # a class only in test/ is refused; other folders beside train/ and test/ too
    write_png(tmp_path / "shapes" / "test" / "star" / "0.png", images[0])
    one_line_error(lambda: load_data(cfg, tmp_path), r"test has class folder\(s\) 'star' that")
    (tmp_path / "shapes" / "test" / "star" / "0.png").unlink()
    (tmp_path / "shapes" / "test" / "star").rmdir()
    write_png(tmp_path / "shapes" / "val" / "circle" / "0.png", images[0])
    one_line_error(lambda: load_data(cfg, tmp_path),
                   r"holds train/ and test/ and also val/; keep only train/ and test/")


def test_image_folder_errors(tmp_path):
    root = tmp_path / "shapes"
    write_image_folder(root, n=12, size=8)
    cfg = {"name": "image-folder", "path": str(root), "channels": 1}
    bad = root / "square" / "0001.png"
    bad.write_bytes(b"this is not a PNG file")
    for fn in (lambda: load_data(cfg, tmp_path), lambda: download_data(cfg, tmp_path)):
        e = one_line_error(fn, rf"image-folder: cannot read image {re.escape(str(bad))}: ")
        assert "UnidentifiedImageError" in e
    # a truncated PNG (half the bytes of a real one)
    good = (root / "circle" / "0000.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    for fn in (lambda: load_data(cfg, tmp_path), lambda: download_data(cfg, tmp_path)):
        one_line_error(fn, rf"cannot read image {re.escape(str(bad))}: ")
    bad.unlink()
    write_png(root / "square" / "big.png", np.zeros((9, 8, 1), np.uint8))
    one_line_error(lambda: load_data(cfg, tmp_path), r"big.png is 9x8 \(H x W\) but .* is 8x8; "
                                                      r"set size: \[H, W\]")
    assert load_data({**cfg, "size": 8}, tmp_path).input_size == (8, 8)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    one_line_error(lambda: load_data({**cfg, "path": str(tmp_path / "empty")}, tmp_path),
                   r"class folder .*empty/cats holds no image files")
    one_line_error(lambda: load_data({**cfg, "path": str(tmp_path / "nowhere")}, tmp_path),
                   r"image-folder: data.path: no folder '.*nowhere'")
    one_line_error(lambda: load_data({**cfg, "size": [8]}, tmp_path), r"size must be \[H, W\]")


# -- a dataset class by import path ----------------------------------------------------------

# The example class of docs/own-data.md, as a user would save it next to the config.
SOIL_MODULE = '''
import torch, xarray

class SoilMoisture(torch.utils.data.Dataset):
    task = "regression"
    def __init__(self, path, var="moisture"):
        with xarray.open_dataset(path) as ds:
            self.x = ds["image"].values.astype("float32")   # N x C x H x W
            self.y = ds[var].values
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i], self.y[i]
'''

CROPS_MODULE = '''
import numpy as np

LABELS = ["wheat", "barley", "rye"]

class Crops:
    """Classification with text labels and a fixed test split."""
    task = "classification"
    test_indices = [0, 1, 2, 3, 4, 5]
    def __init__(self, n=24, size=6):
        rng = np.random.RandomState(0)
        self.x = (rng.rand(n, size, size) * 255).astype("uint8")   # H x W, one channel
        self.y = [LABELS[i % 3] for i in range(n)]
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i], self.y[i]

def make_crops(n=24):
    return Crops(n=n)
'''


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """soil_data.py and crops_data.py in the working directory (not installed)."""
    (tmp_path / "soil_data.py").write_text(SOIL_MODULE)
    (tmp_path / "crops_data.py").write_text(CROPS_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("soil_data", "crops_data"):
        sys.modules.pop(name, None)


def test_dataset_class_by_import_path(user_modules):
    rng = np.random.RandomState(0)
    x = rng.rand(30, 2, 6, 6).astype(np.float32)
    write_netcdf(user_modules / "data" / "soil.nc", {
        "image": (("n", "c", "y", "x"), x),
        "moisture": (("n",), 0.2 + x.mean(axis=(1, 2, 3)))})
    cfg = {"name": "soil_data:SoilMoisture", "path": "data/soil.nc", "standardize": True}
    b = load_data(cfg, "resources/soil")
    assert (b.task, b.in_channels, b.input_size, b.num_outputs) == ("regression", 2, (6, 6), 1)
    assert (len(b.train), len(b.test)) == (24, 6) and b.target_stats is not None
    assert b.name == "soil_data:SoilMoisture"
    assert b.source["class"] == "soil_data.SoilMoisture"
    assert [i["key"] for i in b.source["inputs"]] == ["name", "path"]
    # tracked: the path key (relative to the working directory) and the module's source
    code, entry = local_inputs(cfg, "resources/soil")
    assert (entry.key, entry.given, entry.exists) == ("path", "data/soil.nc", True)
    assert (code.key, code.path) == ("name", user_modules / "soil_data.py")
    assert dataset_files(cfg, "resources/soil") == [code.path, Path("data/soil.nc")]
    assert local_inputs({**cfg, "path": "data/none.nc"}, "r")[1].exists is False
    # errors: one line naming the dataset
    one_line_error(lambda: load_data({**cfg, "varr": "x"}, "r"),
                   r"soil_data:SoilMoisture: its data: keys do not fit SoilMoisture\(path, "
                   r"var='moisture'\): got an unexpected keyword argument 'varr'")
    one_line_error(lambda: load_data({"name": "soil_data:SoilMoisture"}, "r"),
                   r"missing a required argument: 'path'")
    one_line_error(lambda: load_data({"name": "no_such_module:X"}, "r"),
                   r"no_such_module:X: data.name: cannot import module 'no_such_module' "
                   r"\(ModuleNotFoundError")
    one_line_error(lambda: load_data({"name": "soil_data:Nothing"}, "r"),
                   r"module 'soil_data' has no attribute 'Nothing'")
    one_line_error(lambda: load_data({"name": "soil data:X"}, "r"),
                   r"data.name 'soil data:X' is not an import path package.module:Attribute")
    one_line_error(lambda: load_data({**cfg, "path": "data/none.nc"}, "r"),
                   r"creating the dataset failed: FileNotFoundError")


def test_dataset_function_with_text_labels_and_fixed_split(user_modules, tmp_path):
    cfg = {"name": "crops_data:make_crops", "n": 30}
    b = load_data(cfg, "r")
    assert b.class_names == ["barley", "rye", "wheat"]
    assert b.test.indices.tolist() == [0, 1, 2, 3, 4, 5] and len(b.train) == 24
    assert b.source["test_split"] == {"kind": "test_indices", "n_test": 6}
    assert b.train.images.dtype == torch.uint8
    x0, y0 = b.test[0]
    assert x0.shape == (1, 6, 6) and b.class_names[y0] == "wheat"
    assert [e.key for e in local_inputs(cfg, "r")] == ["name"]  # no path keys: the code only
    result, _ = run_untrained_test(cfg, Path("r"), tmp_path / "out" / "test.json")
    assert list(result["metrics"]["per_class_accuracy_by_name"]) == ["barley", "rye", "wheat"]
    # the config's task and test_split win over the class's attributes
    r = load_data({**cfg, "test_split": {"kind": "random", "fraction": 0.5, "seed": 1}}, "r")
    assert len(r.test) == 15
    one_line_error(lambda: load_data({**cfg, "task": "regression"}, "r"),
                   r"regression targets must be numbers, got 'wheat'")


# -- the workflow: missing files, relative paths, content-tracked reruns ----------------------

SMALL = {"epochs": 1, "max_steps_per_epoch": 1, "layers": 2, "init_channels": 4,
         "batch_size": 8, "num_workers": 0}


def sheets_config(path: str = "data/sheets.nc") -> dict:
    return {"targets": ["sheets"], "datasets": {"sheets": {
        "data": {"name": "netcdf", "path": path, "image_var": "image", "target_var": "label",
                 "task": "classification"},
        "search": dict(SMALL), "train": dict(SMALL), "test": {"num_workers": 0}}}}


def write_sheets(path: Path, n: int = 32) -> Path:
    """A user's file: 8x8 RGB images stored channel-last, labels numbered from 1."""
    labels = np.arange(n) % 3 + 1
    x = np.random.RandomState(0).rand(n, 8, 8, 3).astype(np.float32)
    x[..., 0] += 0.5 * labels[:, None, None]
    return write_netcdf(path, {"image": (("sample", "y", "x", "channel"), x),
                               "label": (("sample",), labels.astype(np.int32))})


CHAIN = {"download", "search", "genotype", "train", "test"}


def test_missing_local_data_stops_the_dry_run(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "my.yaml", sheets_config("data/nothere.nc"))
    proc = snakemake(wf, "results/sheets/test.json", "-n", "--cores", "1",
                     "--configfile", "my.yaml")
    assert proc.returncode != 0, proc.output
    assert not (wf / "logs").exists() and not (wf / "results").exists()
    line = next(l for l in proc.output.splitlines() if "config: datasets.sheets" in l)
    assert line.strip() == (f"config: datasets.sheets.data.path: no file 'data/nothere.nc' "
                            f"(relative to the working directory: {wf}/data/nothere.nc)")
    assert "Traceback (most recent call last)" not in proc.output
    cfg = sheets_config()
    cfg["datasets"]["sheets"]["data"] = {"name": "image-folder", "path": "/no/such/folder"}
    write_config(wf / "folder.yaml", cfg)
    proc = snakemake(wf, "results/sheets/test.json", "-n", "--cores", "1",
                     "--configfile", "folder.yaml")
    assert proc.returncode != 0
    assert "config: datasets.sheets.data.path: no folder '/no/such/folder'" in proc.output


def test_relative_path_plans_the_chain(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    write_sheets(wf / "data" / "sheets.nc")
    write_config(wf / "my.yaml", sheets_config())
    proc = snakemake(wf, "-n", "--cores", "1", "--configfile", "my.yaml")
    assert proc.returncode == 0, proc.output
    assert {(r, "sheets") for r in CHAIN} <= planned_jobs(proc.output)


def _schema_accepts_import_paths() -> bool:
    import yaml

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    return "enum" not in yaml.safe_load(schema.read_text())["$defs"]["data"]["properties"]["name"]


@pytest.mark.skipif(not _schema_accepts_import_paths(),
                    reason="the config schema lists data.name as an enum: nas_core/schema.py must "
                           "use nas_core.data.options.import_path_branch (then regenerate)")
def test_dataset_class_by_import_path_in_the_workflow(tmp_path):
    """The class of docs/own-data.md, in a module next to the config: the schema accepts it, the
    dry run plans the chain, a missing file or module stops it, the download job tracks the file."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "soil_data.py").write_text(SOIL_MODULE)
    x = np.random.RandomState(0).rand(20, 1, 8, 8).astype(np.float32)
    write_netcdf(wf / "data" / "soil.nc", {"image": (("n", "c", "y", "x"), x),
                                           "moisture": (("n",), x.mean(axis=(1, 2, 3)))})
    data = {"name": "soil_data:SoilMoisture", "path": "data/soil.nc", "var": "moisture",
            "standardize": True}
    cfg = {"targets": ["soil"], "datasets": {"soil": {
        "data": data, "search": dict(SMALL), "train": dict(SMALL)}}}
    write_config(wf / "soil.yaml", cfg)
    proc = snakemake(wf, "-n", "--cores", "1", "--configfile", "soil.yaml")
    assert proc.returncode == 0, proc.output
    assert {(r, "soil") for r in CHAIN} <= planned_jobs(proc.output)
    for bad, line in (({**data, "path": "data/none.nc"},
                       "config: datasets.soil.data.path: no file 'data/none.nc'"),
                      ({**data, "name": "no_such_module:Soil"},
                       "config: datasets.soil.data: no_such_module:Soil: data.name: cannot "
                       "import module 'no_such_module'")):
        cfg["datasets"]["soil"]["data"] = bad
        write_config(wf / "bad.yaml", cfg)
        proc = snakemake(wf, "-n", "--cores", "1", "--configfile", "bad.yaml")
        assert proc.returncode != 0 and line in proc.output, proc.output
        assert not (wf / "logs").exists() and not (wf / "results").exists()
    proc = snakemake(wf, "resources/soil/download.json", "--cores", "1", "--configfile",
                     "soil.yaml")
    assert proc.returncode == 0, proc.output[-4000:]
    manifest = json.loads((wf / "resources" / "soil" / "download.json").read_text())
    assert [r["path"] for r in manifest["content"]] == [str(wf / "soil_data.py"), "data/soil.nc"]
    # an edit of the class reruns the chain, as an edit of the data would
    (wf / "soil_data.py").write_text(SOIL_MODULE + "\n# edited\n")
    proc = snakemake(wf, "resources/soil/download.json", "-n", "--cores", "1",
                     "--configfile", "soil.yaml")
    assert proc.returncode == 0 and ("download", "soil") in planned_jobs(proc.output)


@pytest.fixture(scope="module")
def sheets_done(tmp_path_factory) -> Path:
    """The chain of a user's netCDF file (relative path, channel-last RGB, labels from 1), run
    to test.json with a tiny budget."""
    wf = copy_workflow(tmp_path_factory.mktemp("wf_sheets"))
    write_sheets(wf / "data" / "sheets.nc")
    write_config(wf / "my.yaml", sheets_config())
    proc = snakemake(wf, "results/sheets/test.json", "--cores", "2", "--configfile", "my.yaml",
                     "--resources", "gpu=0")
    assert proc.returncode == 0, proc.output[-6000:]
    return wf


def _dry(wf: Path, *extra: str) -> tuple[str, set]:
    proc = snakemake(wf, "results/sheets/test.json", "-n", "--cores", "2", "--configfile",
                     "my.yaml", *extra)
    assert proc.returncode == 0, proc.output
    return proc.output, {r for r, _ in planned_jobs(proc.output)}


@pytest.mark.slow
def test_own_netcdf_runs_with_class_names(sheets_done):
    manifest = json.loads((sheets_done / "resources/sheets/download.json").read_text())
    data = sheets_done / "data" / "sheets.nc"
    assert manifest["files"] == ["data/sheets.nc"]
    assert manifest["content"] == [{"path": "data/sheets.nc", "size": data.stat().st_size,
                                    "sha256": Sha256Cache().sha256(data)}]
    assert manifest["class_names"] == ["1", "2", "3"]
    assert manifest["layout"] == {"sample": "sample", "channel": "channel", "y": "y", "x": "x"}
    assert not any("mtime" in k for k in json.dumps(manifest).split('"'))
    res = json.loads((sheets_done / "results/sheets/test.json").read_text())
    assert res["network"]["in_channels"] == 3 and res["network"]["num_outputs"] == 3
    assert list(res["metrics"]["per_class_accuracy_by_name"]) == ["1", "2", "3"]
    assert res["data"]["files"][0]["sha256"] == manifest["content"][0]["sha256"]


@pytest.mark.slow
def test_data_content_decides_reruns(sheets_done):
    """Unchanged: nothing. touch: nothing (not even with Snakemake's own checksums off). One
    edited byte: download and every later stage. The old bytes back: nothing again."""
    wf, data = sheets_done, sheets_done / "data" / "sheets.nc"
    out, jobs = _dry(wf)
    assert "Nothing to be done" in out and not jobs, out
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # touch: newer, same bytes
    for extra in ((), ("--max-checksum-file-size", "1")):
        out, jobs = _dry(wf, *extra)
        assert not jobs & {"search", "train", "genotype", "test"}, out
        assert "Nothing to be done" in out, out
    original = data.read_bytes()
    edited = bytearray(original)
    edited[len(edited) // 2] ^= 0x01
    data.write_bytes(bytes(edited))
    try:
        out, jobs = _dry(wf)
        assert CHAIN <= jobs, out
        assert "Params have changed" in out  # download: the content digest
    finally:
        data.write_bytes(original)
    out, jobs = _dry(wf)
    assert "Nothing to be done" in out and not jobs, out


@pytest.mark.slow
def test_image_folder_end_to_end(tmp_path):
    """A few hundred drawn shapes of three kinds in root/{train,test}/<shape>/: the whole
    workflow (search, genotype, train, test) with a tiny budget gets far above chance (33 %)."""
    wf = copy_workflow(tmp_path / "wf")
    write_image_folder(wf / "shapes", n=300, size=16, channels=1, split=True)
    write_config(wf / "shapes.yaml", {"targets": ["shapes"], "datasets": {"shapes": {
        "data": {"name": "image-folder", "path": "shapes", "channels": 1},
        "search": {"epochs": 1, "max_steps_per_epoch": 2, "layers": 2, "init_channels": 4,
                   "batch_size": 32, "num_workers": 0},
        "train": {"epochs": 6, "layers": 3, "init_channels": 8, "batch_size": 32,
                  "drop_path_prob": 0.0, "valid_fraction": 0.1, "num_workers": 0},
        "test": {"num_workers": 0}}}})
    proc = snakemake(wf, "results/shapes/test.json", "--cores", "2", "--configfile",
                     "shapes.yaml", "--resources", "gpu=0")
    assert proc.returncode == 0, proc.output[-6000:]
    res = json.loads((wf / "results/shapes/test.json").read_text())
    assert res["num_samples"] == 60 and res["data"]["test_split"] == {"kind": "folders"}
    assert list(res["metrics"]["per_class_accuracy_by_name"]) == list(SHAPES)
    assert res["metrics"]["top1"] > 70, res["metrics"]
    manifest = json.loads((wf / "resources/shapes/download.json").read_text())
    assert manifest["class_names"] == list(SHAPES) and len(manifest["content"]) == 300
