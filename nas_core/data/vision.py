"""``mnist``, ``fashion-mnist`` (torchvision's classes, IDX files) and ``cifar-10`` (python
pickle batches read by a restricted unpickler).

Layout under ``root/{name}/``:

* mnist: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision's layout)
* fashion-mnist: ``FashionMNIST/raw/`` with the same four names
* cifar-10: ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the extracted archive)

CIFAR-10 batches are never unpickled with ``pickle.load``: ``_SafeUnpickler.find_class`` allows
exactly numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``) and
``_codecs.encode`` (protocol-2 bytes) and refuses every other global, so a file cannot make the
loader run code; the result must then be a dict with a uint8 ``data`` array and ``labels``.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import (
    ArrayDataset,
    DataBundle,
    DataError,
    DownloadError,
    check_labels,
    check_nonempty,
    file_info,
    typed_line,
    require_file,
)
from .options import CROP_PADDING, Option
from .registry import register_dataset
from .transforms import build_transform

__all__ = ["read_cifar_batch", "MNIST_FILES", "STATS", "CIFAR_FOLDER", "CIFAR_TRAIN", "CIFAR_TEST"]

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar-10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


def _mnist_class(name: str):
    from torchvision import datasets

    return datasets.MNIST if name == "mnist" else datasets.FashionMNIST


def _mnist_files(opts: dict, folder: Path) -> list[Path]:
    raw = folder / _mnist_class(opts["name"]).__name__ / "raw"
    return [raw / f for f in MNIST_FILES]


def _download_mnist(opts: dict, folder: Path) -> list[Path]:
    cls = _mnist_class(opts["name"])
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for train in (True, False):
            cls(root=str(folder), train=train, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError
        urls = ", ".join(cls.mirrors)
        raise DownloadError(f"{opts['name']}: download from {urls} failed: {typed_line(e)}") from e
    return _mnist_files(opts, folder)


def _load_mnist(opts: dict, folder: Path) -> DataBundle:
    name = opts["name"]
    cls = _mnist_class(name)
    files = [require_file(p, name) for p in _mnist_files(opts, folder)]
    parts = {}
    for train, (img_file, lbl_file) in ((True, files[:2]), (False, files[2:])):
        try:
            ds = cls(root=str(folder), train=train, download=False)
        except Exception as e:
            raise DataError(f"{name}: cannot read {img_file} / {lbl_file}: {typed_line(e)}") from e
        images, targets = ds.data, ds.targets
        if images.ndim != 3 or images.dtype != torch.uint8:
            raise DataError(f"{name}: {img_file} holds {tuple(images.shape)} {images.dtype}, "
                            f"expected N x H x W uint8")
        if images.shape[0] != targets.shape[0]:
            raise DataError(f"{name}: {img_file} has {images.shape[0]} images but {lbl_file} "
                            f"has {targets.shape[0]} labels")
        check_labels(targets.numpy(), 10, f"{name}: {lbl_file}")
        parts[train] = (images.unsqueeze(1).contiguous(), targets.long())
    check_nonempty(name, train=len(parts[True][1]), test=len(parts[False][1]))
    size = tuple(parts[True][0].shape[-2:])
    mean, std = STATS[name]
    crop = int(opts["crop_padding"])
    return _bundle(
        name, parts, size, mean, std,
        train_tf=build_transform(size, mean, std, crop_padding=crop),
        files=files, root=folder.parent,
    )


for _name in ("mnist", "fashion-mnist"):
    register_dataset(
        _name, options={"crop_padding": CROP_PADDING}, downloader=_download_mnist,
        files=_mnist_files,
    )(_load_mnist)


# ---------------------------------------------------------------------------------------------
# CIFAR-10

_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``N x 3 x 32 x 32`` uint8 and labels of one CIFAR-10 python batch file."""
    try:
        with open(path, "rb") as f:
            entry = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"cifar-10: cannot read {path}: {typed_line(e)}") from e
    if not isinstance(entry, dict):
        raise DataError(f"cifar-10: {path} holds {type(entry).__name__}, expected a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shown = (f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise DataError(f"cifar-10: {path} key 'data' is {shown}, expected N x 3072 uint8")
    if labels is None or len(labels) != data.shape[0]:
        raise DataError(f"cifar-10: {path} has {data.shape[0]} images but "
                        f"{'no' if labels is None else len(labels)} labels")
    labels = check_labels(np.asarray(labels), 10, f"cifar-10: {path} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_files(opts: dict, folder: Path) -> list[Path]:
    base = folder / CIFAR_FOLDER
    return [base / f for f in (*CIFAR_TRAIN, CIFAR_TEST)]


def _download_cifar(opts: dict, folder: Path) -> list[Path]:
    """torchvision's archive download (MD5-checked) and extraction, without unpickling."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    base = folder / CIFAR10.base_folder
    expected = CIFAR10.train_list + CIFAR10.test_list
    if all(check_integrity(str(base / f), md5) for f, md5 in expected):
        return _cifar_files(opts, folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        download_and_extract_archive(CIFAR10.url, str(folder), filename=CIFAR10.filename,
                                     md5=CIFAR10.tgz_md5)
    except Exception as e:
        raise DownloadError(f"cifar-10: download from {CIFAR10.url} failed: {typed_line(e)}") from e
    bad = [f for f, md5 in expected if not check_integrity(str(base / f), md5)]
    if bad:
        raise DownloadError(f"cifar-10: {CIFAR10.url}: MD5 mismatch after extraction for {bad}")
    return _cifar_files(opts, folder)


@register_dataset(
    "cifar-10",
    options={"augment": Option(True, "bool", "DARTS training augmentation (random crop with "
                                              "padding 4, horizontal flip)")},
    downloader=_download_cifar,
    files=_cifar_files,
)
def _load_cifar(opts: dict, folder: Path) -> DataBundle:
    files = [require_file(p, "cifar-10") for p in _cifar_files(opts, folder)]
    train = [read_cifar_batch(p) for p in files[:-1]]
    test = read_cifar_batch(files[-1])
    parts = {
        True: (torch.from_numpy(np.concatenate([b[0] for b in train])),
               torch.from_numpy(np.concatenate([b[1] for b in train]))),
        False: (torch.from_numpy(test[0]), torch.from_numpy(test[1])),
    }
    check_nonempty("cifar-10", train=len(parts[True][1]), test=len(parts[False][1]))
    mean, std = STATS["cifar-10"]
    augment = bool(opts["augment"])
    train_tf = build_transform((32, 32), mean, std, crop_padding=4 if augment else 0,
                               hflip=augment)
    bundle = _bundle("cifar-10", parts, (32, 32), mean, std, train_tf=train_tf,
                     files=files, root=folder.parent)
    # Cutout is a training-stage option (train.cutout), applied once by the train stage.
    bundle.source["augment"] = {"crop_padding": 4 if augment else 0, "hflip": augment}
    return bundle


# ---------------------------------------------------------------------------------------------
# Shared


def _bundle(name: str, parts: dict, size: tuple[int, int], mean, std, train_tf,
            files: list[Path], root: Path) -> DataBundle:
    """Bundle of an official train/test pair; one shared tensor per part."""
    (xtr, ytr), (xte, yte) = parts[True], parts[False]
    eval_tf = build_transform(size, mean, std)
    all_tr, all_te = np.arange(len(ytr)), np.arange(len(yte))
    return DataBundle(
        name=name,
        task="classification",
        num_outputs=10,
        in_channels=int(xtr.shape[1]),
        input_size=(int(size[0]), int(size[1])),
        train=ArrayDataset(xtr, ytr, all_tr, "classification", train_tf),
        train_eval=ArrayDataset(xtr, ytr, all_tr, "classification", eval_tf),
        test=ArrayDataset(xte, yte, all_te, "classification", eval_tf),
        source={
            "dataset": name,
            "files": [file_info(p, root) for p in files],
            "n_train": int(len(ytr)),
            "n_test": int(len(yte)),
            "test_split": {"kind": "official"},
            "normalize": {"mean": list(mean), "std": list(std)},
        },
    )

