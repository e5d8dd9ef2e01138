"""Data layer: registry, splits, the six datasets on tiny files in the real formats, bad data."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from datafiles import (
    graphene_arrays,
    write_cifar_batches,
    write_graphene_nc,
    write_idx,
    write_mnist,
    write_netcdf,
)
from nas_core.data import (
    DataBundle,
    DataError,
    dataset_files,
    download_data,
    list_datasets,
    load_data,
    random_test_split,
    split_indices,
)
from nas_core.data.transforms import Cutout

GRAPHENE = "graphene/graphene_processed.nc"


def one_line_error(fn, match: str) -> DataError:
    with pytest.raises(DataError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return e.value


def check_bundle(b: DataBundle) -> None:
    """Contract checks common to every dataset."""
    assert b.task in ("classification", "regression")
    json.dumps(b.source)
    assert len(b.train) == len(b.train_eval) and len(b.train) > 0 and len(b.test) > 0
    for ds in (b.train, b.train_eval, b.test):
        x, y = ds[0]
        assert x.dtype == torch.float32 and tuple(x.shape) == (b.in_channels, *b.input_size)
        if b.task == "classification":
            assert isinstance(y, int) and 0 <= y < b.num_outputs
        else:
            assert y.dtype == torch.float32 and y.ndim == 0 and b.num_outputs == 1


# --- registry --------------------------------------------------------------------------------


def test_registry_names():
    assert list_datasets() == sorted(
        ["digits", "mnist", "fashion-mnist", "cifar-10", "graphene", "netcdf", "image-folder",
         "synthetic"])


def test_unknown_dataset_lists_known_ones(tmp_path):
    e = one_line_error(lambda: load_data({"name": "imagenet"}, tmp_path), "unknown dataset")
    assert "cifar-10" in str(e) and "digits" in str(e)
    one_line_error(lambda: load_data({"test_fraction": 0.2}, tmp_path), "'name' key")


def test_unknown_config_key(tmp_path):
    one_line_error(lambda: load_data({"name": "digits", "cut_out": 3}, tmp_path),
                   r"digits: unknown config key\(s\) 'cut_out'; known: crop_padding, seed")
    one_line_error(lambda: load_data({"name": "mnist", "cutout": 16}, tmp_path),
                   "mnist: unknown config key")
    one_line_error(lambda: load_data({"name": "netcdf", "path": "a.nc"}, tmp_path),
                   r"netcdf: missing required config key\(s\) 'image_var', 'target_var', 'task'")


# --- splits ----------------------------------------------------------------------------------


def test_split_indices_seeded_disjoint_complete():
    a, b = split_indices(101, 0.5, seed=3)
    assert (a, b) == split_indices(101, 0.5, seed=3)
    assert split_indices(101, 0.5, seed=4) != (a, b)
    assert len(a) == 50 and len(b) == 51
    assert not set(a) & set(b) and sorted(a + b) == list(range(101))
    perm = np.random.RandomState(3).permutation(101)  # the documented rule
    assert a == perm[:50].tolist() and b == perm[50:].tolist()
    assert all(isinstance(i, int) for i in a)
    assert split_indices(10, 1.0, 0) == (np.random.RandomState(0).permutation(10).tolist(), [])
    assert split_indices(10, 0.0, 0)[0] == []


def test_split_indices_errors():
    one_line_error(lambda: split_indices(3, 0.1, 0), "leaves an empty part")
    one_line_error(lambda: split_indices(10, 1.5, 0), r"first_fraction must be in \[0, 1\]")
    one_line_error(lambda: split_indices(-1, 0.5, 0), "non-negative")


def test_2019_graphene_split():
    train, test = random_test_split(29_791, 0.2, 42)
    assert test[:5].tolist() == [1555, 10084, 16238, 21090, 19820]
    assert len(test) == 5_959 == math.ceil(0.2 * 29_791) and len(train) == 29_791 - 5_959
    assert not set(train.tolist()) & set(test.tolist())


# --- digits ----------------------------------------------------------------------------------


def test_digits(tmp_path):
    b = load_data({"name": "digits"}, tmp_path)
    check_bundle(b)
    assert (b.num_outputs, b.in_channels, b.input_size) == (10, 1, (8, 8))
    assert (len(b.train), len(b.test)) == (1437, 360)
    assert b.source["n"] == 1797 and "sklearn_version" in b.source
    assert not set(b.train.indices.tolist()) & set(b.test.indices.tolist())
    # Normalised with the training part's own statistics; no augmentation by default.
    xs = torch.stack([b.train_eval[i][0] for i in range(len(b.train_eval))])
    assert abs(float(xs.mean())) < 1e-4 and abs(float(xs.std()) - 1) < 1e-3
    assert torch.equal(b.train[5][0], b.train_eval[5][0])
    again = load_data({"name": "digits"}, tmp_path)
    assert np.array_equal(again.test.indices, b.test.indices)
    other = load_data({"name": "digits", "seed": 1, "test_fraction": 0.5}, tmp_path)
    assert len(other.test) == 899 and not np.array_equal(other.test.indices[:10],
                                                         b.test.indices[:10])
    assert download_data({"name": "digits"}, tmp_path) == []
    assert dataset_files({"name": "digits"}, tmp_path) == []


def test_digits_optional_crop(tmp_path):
    b = load_data({"name": "digits", "crop_padding": 1}, tmp_path)
    assert any(isinstance(t, T.RandomCrop) for t in b.train.transform.transforms)
    assert not any(isinstance(t, T.RandomCrop) for t in b.test.transform.transforms)


# --- MNIST and Fashion-MNIST through torchvision ---------------------------------------------


@pytest.mark.parametrize("name,mean,std", [("mnist", 0.1307, 0.3081),
                                           ("fashion-mnist", 0.2860, 0.3530)])
def test_mnist_family(tmp_path, name, mean, std):
    files = write_mnist(tmp_path, name, n_train=12, n_test=5)
    b = load_data({"name": name}, tmp_path)
    check_bundle(b)
    assert (len(b.train), len(b.test), b.input_size, b.in_channels) == (12, 5, (28, 28), 1)
    raw = np.fromfile(files[0], dtype=np.uint8, offset=16).reshape(12, 28, 28)
    expected = (torch.from_numpy(raw[3]).float() / 255 - mean) / std
    assert torch.allclose(b.train[3][0][0], expected, atol=1e-6)  # no flip, no crop
    labels = np.fromfile(files[1], dtype=np.uint8, offset=8)
    assert [b.train[i][1] for i in range(12)] == labels.tolist()
    assert [f["path"] for f in b.source["files"]] == [
        str(p.relative_to(tmp_path)) for p in dataset_files({"name": name}, tmp_path)]
    assert all(len(f["sha256"]) == 64 for f in b.source["files"])
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in b.train.transform.transforms)


def test_mnist_download_keeps_present_files(tmp_path):
    """torchvision's download=True finds the raw files and fetches nothing (no network here)."""
    files = write_mnist(tmp_path, "mnist")
    before = [p.stat().st_mtime_ns for p in files]
    assert sorted(download_data({"name": "mnist"}, tmp_path)) == sorted(files)
    assert [p.stat().st_mtime_ns for p in files] == before


def test_batches_collate(tmp_path):
    write_graphene_nc(tmp_path / GRAPHENE, n=20)
    b = load_data({"name": "graphene"}, tmp_path)
    x, y = next(iter(torch.utils.data.DataLoader(b.train, batch_size=4)))
    assert x.shape == (4, 1, 30, 80) and y.shape == (4,) and y.dtype == torch.float32
    d = load_data({"name": "digits"}, tmp_path)
    x, y = next(iter(torch.utils.data.DataLoader(d.train, batch_size=4)))
    assert x.shape == (4, 1, 8, 8) and y.dtype == torch.int64


def test_fashion_mnist_never_reads_mnist_files(tmp_path):
    write_mnist(tmp_path, "mnist")
    e = one_line_error(lambda: load_data({"name": "fashion-mnist"}, tmp_path), "missing file")
    assert "fashion-mnist/FashionMNIST/raw/train-images-idx3-ubyte" in str(e)
    assert "download stage" in str(e)


def test_mnist_bad_labels_and_files(tmp_path):
    write_mnist(tmp_path, "mnist", n_train=4, labels=[1, 2, 10, 3])
    one_line_error(lambda: load_data({"name": "mnist"}, tmp_path), r"label 10 out of range")
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.array([1, 2, 3], dtype=np.uint8))
    one_line_error(lambda: load_data({"name": "mnist"}, tmp_path), "4 images but .* 3 labels")
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    one_line_error(lambda: load_data({"name": "mnist"}, tmp_path), "cannot read")


# --- CIFAR-10 --------------------------------------------------------------------------------


def test_cifar10(tmp_path):
    write_cifar_batches(tmp_path, n_per_batch=3, n_test=4)
    b = load_data({"name": "cifar-10"}, tmp_path)
    check_bundle(b)
    assert (len(b.train), len(b.test), b.in_channels, b.input_size) == (15, 4, 3, (32, 32))
    kinds = [type(t) for t in b.train.transform.transforms]
    assert kinds == [T.RandomCrop, T.RandomHorizontalFlip, T.Normalize]
    assert b.train.transform.transforms[0].padding == 4
    with open(tmp_path / "cifar-10/cifar-10-batches-py/data_batch_2", "rb") as f:
        entry = pickle.load(f)  # our own fixture file
    img = torch.from_numpy(entry["data"][1].reshape(3, 32, 32)).float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    assert torch.allclose(b.train_eval[4][0], (img - mean) / std, atol=1e-6)
    assert b.train_eval[4][1] == entry["labels"][1]
    assert len(b.source["files"]) == 6

    # cutout is the train stage's option (train.cutout), not the data layer's
    one_line_error(lambda: load_data({"name": "cifar-10", "cutout": 16}, tmp_path), "cutout")
    plain = load_data({"name": "cifar-10", "augment": False}, tmp_path)
    assert plain.train.transform.transforms[0].__class__ is T.Normalize


def test_cifar_refuses_code_in_pickles(tmp_path):
    write_cifar_batches(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "cifar-10/cifar-10-batches-py/data_batch_3", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    one_line_error(lambda: load_data({"name": "cifar-10"}, tmp_path), "refusing global")
    assert not marker.exists()


def test_cifar_bad_labels_and_shapes(tmp_path):
    write_cifar_batches(tmp_path, n_per_batch=2, labels=[3, 11])
    one_line_error(lambda: load_data({"name": "cifar-10"}, tmp_path),
                   r"data_batch_1 labels: label 11 out of range \[0, 10\)")
    base = tmp_path / "cifar-10/cifar-10-batches-py"
    with open(base / "data_batch_1", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f, protocol=2)
    one_line_error(lambda: load_data({"name": "cifar-10"}, tmp_path), "expected N x 3072 uint8")
    (base / "test_batch").unlink()
    one_line_error(lambda: load_data({"name": "cifar-10"}, tmp_path), "missing file .*test_batch")


def test_cutout():
    torch.manual_seed(0)
    out = Cutout(4)(torch.ones(3, 16, 16))
    zeros = (out == 0).all(dim=0)
    assert 4 <= int(zeros.sum()) <= 16 and (out[:, zeros] == 0).all()


# --- graphene --------------------------------------------------------------------------------


def test_graphene_fixture_is_made_like_the_real_file():
    a = graphene_arrays(20, seed=1)
    for s in range(20):
        for nx in range(3):
            for ny in range(5):
                cell = a["fine_image"][s, nx * 10: nx * 10 + 10, ny * 16: ny * 16 + 16]
                cut = a["coarse_image"][s, nx, ny] == 0
                assert (cell[4:7] == (0 if cut else 1)).all()
                assert (cell[:4] == 1).all() and (cell[7:] == 1).all()
    assert all(v.dtype == np.float32 for v in a.values())


def test_graphene(tmp_path):
    write_graphene_nc(tmp_path / GRAPHENE, n=50, seed=2)
    b = load_data({"name": "graphene"}, tmp_path)
    check_bundle(b)
    assert (b.task, b.num_outputs, b.in_channels, b.input_size) == ("regression", 1, 1, (30, 80))
    _, test = random_test_split(50, 0.2, 42)
    assert b.test.indices.tolist() == test.tolist() and len(b.test) == 10
    a = graphene_arrays(50, seed=2)
    j = int(b.test.indices[0])
    x, y = b.test[0]
    assert torch.equal(x[0], torch.from_numpy(a["fine_image"][j]))
    assert float(y) == float(a["strain"][j])
    stress = load_data({"name": "graphene", "target": "stress"}, tmp_path)
    assert float(stress.test[0][1]) == float(a["stress"][j])
    assert b.source["files"][0]["path"] == GRAPHENE and b.source["test_split"]["seed"] == 42
    one_line_error(lambda: load_data({"name": "graphene", "target": "youngs"}, tmp_path),
                   "target must be one of strain, stress")


def test_graphene_bad_files(tmp_path):
    path = tmp_path / GRAPHENE
    load = lambda: load_data({"name": "graphene"}, tmp_path)  # noqa: E731
    e = one_line_error(load, "graphene: missing file .*graphene_processed.nc; run the download")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not netCDF")
    one_line_error(load, "is not a readable netCDF file")

    write_graphene_nc(path, n=8, strain=None)
    one_line_error(load, r"has no variable 'strain' \(variables: fine_image, coarse_image")

    a = graphene_arrays(8)
    write_graphene_nc(path, n=8, fine_image=(("sample", "y", "x"), a["fine_image"][:, :, :79]))
    one_line_error(load, r"'fine_image' has sample shape \(1, 30, 79\).*expected \(1, 30, 80\)")

    write_graphene_nc(path, n=8, fine_image=(("sample", "x"), a["fine_image"][:, 0, :]))
    one_line_error(load, r"'fine_image' has dims \('sample', 'x'\) \(rank 2\)")

    write_graphene_nc(path, n=8, strain=(("other",), a["strain"]))
    one_line_error(load, r"'strain' has dims \('other',\); expected \(sample,\)")

    img = a["fine_image"].copy()
    img[0, 0, :3] = np.nan
    img[1, 1, 1] = np.inf
    write_graphene_nc(path, n=8, fine_image=(("sample", "y", "x"), img))
    one_line_error(load, r"variable 'fine_image' has 4 NaN/inf value\(s\)")

    strain = a["strain"].copy()
    strain[2] = np.inf
    write_graphene_nc(path, n=8, strain=(("sample",), strain))
    one_line_error(load, r"variable 'strain' has 1 NaN/inf value\(s\)")

    write_graphene_nc(path, n=0)
    one_line_error(load, "has no samples")


# --- generic netCDF --------------------------------------------------------------------------


def _classes_nc(path: Path, labels, extra=None) -> None:
    n = len(labels)
    rng = np.random.RandomState(0)
    variables = {
        "img": (("n", "c", "h", "w"), rng.rand(n, 2, 6, 5).astype(np.float32)),
        "label": (("n",), np.asarray(labels).astype(
            np.float32 if any(v != int(v) for v in labels) else np.int32)),
    }
    variables.update(extra or {})
    write_netcdf(path, variables)


def test_netcdf_classification_with_split_variable(tmp_path):
    labels = [0, 1, 2, 1, 0, 2, 1, 0, 2, 2]
    flags = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=np.int8)
    _classes_nc(tmp_path / "netcdf" / "mine.nc", labels, {"is_test": (("n",), flags)})
    cfg = {"name": "netcdf", "path": "mine.nc", "image_var": "img", "target_var": "label",
           "task": "classification", "num_classes": 3, "normalize": "train",
           "test_split": {"kind": "variable", "var": "is_test"}}
    b = load_data(cfg, tmp_path)
    check_bundle(b)
    assert (b.in_channels, b.input_size, b.num_outputs) == (2, (6, 5), 3)
    assert b.test.indices.tolist() == [2, 6] and len(b.train) == 8
    xs = torch.stack([b.train_eval[i][0] for i in range(8)])
    assert torch.allclose(xs.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert b.source["test_split"] == {"kind": "variable", "var": "is_test"}
    assert dataset_files(cfg, tmp_path) == [tmp_path / "netcdf" / "mine.nc"]
    assert download_data(cfg, tmp_path) == [tmp_path / "netcdf" / "mine.nc"]

    _classes_nc(tmp_path / "netcdf" / "mine.nc", labels, {"is_test": (("n",), flags * 0 + 1)})
    one_line_error(lambda: load_data(cfg, tmp_path), r"netcdf: the train split is empty")
    _classes_nc(tmp_path / "netcdf" / "mine.nc", labels, {"is_test": (("n",), flags * 2)})
    one_line_error(lambda: load_data(cfg, tmp_path), r"'is_test' must hold 0/1")


def test_netcdf_classification_errors(tmp_path):
    path = tmp_path / "abs.nc"  # absolute paths are used as they are
    _classes_nc(path, [0, 1, 3, 1, 0])
    cfg = {"name": "netcdf", "path": str(path), "image_var": "img", "target_var": "label",
           "task": "classification", "num_classes": 3}
    one_line_error(lambda: load_data(cfg, tmp_path), r"'label': label 3 out of range \[0, 3\)")
    _classes_nc(path, [0, 1.5, 2, 1, 0])
    one_line_error(lambda: load_data(cfg, tmp_path), r"non-integer class labels \(e.g. 1.5\)")
    _classes_nc(path, [0, 1, 2, 1, 0])
    assert load_data(cfg, tmp_path).num_outputs == 3
    assert load_data({**cfg, "num_classes": None}, tmp_path).num_outputs == 3  # distinct
    assert load_data({**cfg, "num_classes": 7}, tmp_path).num_outputs == 7
    assert load_data({**cfg, "num_classes": 7}, tmp_path).class_names == list("0123456")
    _classes_nc(path, [0, -1, 2, 1, 0])
    one_line_error(lambda: load_data(cfg, tmp_path), r"label -1 out of range \[0, 3\)")
    # num_classes null: integer labels of any value, sorted, are the classes
    b = load_data({**cfg, "num_classes": None}, tmp_path)
    assert (b.num_outputs, b.class_names) == (4, ["-1", "0", "1", "2"])
    _classes_nc(path, [0, 1, 2, 1, 0])
    one_line_error(lambda: load_data({**cfg, "num_classes": 0}, tmp_path),
                   "num_classes must be a positive integer or null")
    one_line_error(lambda: load_data({**cfg, "task": "ranking"}, tmp_path), "task must be")
    one_line_error(lambda: load_data({**cfg, "image_var": "pixels"}, tmp_path),
                   "has no variable 'pixels'")
    one_line_error(lambda: load_data({**cfg, "test_split": {"kind": "stratified"}}, tmp_path),
                   "unknown test_split kind 'stratified'")
    one_line_error(lambda: load_data({**cfg, "test_split": {"kind": "random",
                                                            "fraction": 0.0}}, tmp_path),
                   r"fraction must be in \(0, 1\)")
    one_line_error(lambda: load_data({**cfg, "normalize": {"mean": [0.5], "std": [1]}},
                                     tmp_path), "normalize needs 2 mean")
    one_line_error(lambda: download_data({**cfg, "path": "nowhere.nc"}, tmp_path),
                   "missing file .*no 'source' block")


def test_netcdf_regression_with_fixed_normalisation(tmp_path):
    write_graphene_nc(tmp_path / "netcdf" / "g.nc", n=30)
    cfg = {"name": "netcdf", "path": "g.nc", "image_var": "fine_image", "target_var": "stress",
           "task": "regression", "normalize": {"mean": 0.5, "std": 0.5},
           "test_split": {"kind": "random", "fraction": 0.3, "seed": 7}}
    b = load_data(cfg, tmp_path)
    check_bundle(b)
    assert len(b.test) == 9 and set(b.test[0][0].unique().tolist()) <= {-1.0, 1.0}
