"""``netcdf`` (any netCDF file described in config) and ``graphene`` (the kirigami file, i.e.
``netcdf`` with fixed settings and an S3 source).

Arrays are read once with xarray into memory (float32 images ``N x C x H x W``; a rank-3 image
variable ``(sample, y, x)`` gets a channel axis).  The image and target variables must share
their first (sample) dimension.  Default test split: the 2019 rule of ``random_test_split``
(``fraction`` 0.2, ``seed`` 42).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import (
    ArrayDataset,
    DataBundle,
    DataError,
    check_finite,
    check_labels,
    check_nonempty,
    file_info,
    typed_line,
    require_file,
)
from .options import REQUIRED, Option, source_option
from .registry import register_dataset
from .s3 import download_s3, resolve_source, s3_url
from .splits import random_test_split
from .transforms import build_transform

__all__ = ["read_netcdf", "netcdf_bundle", "GRAPHENE_FILE", "GRAPHENE_SOURCE", "GRAPHENE_SHAPE",
           "GRAPHENE_TARGETS", "DEFAULT_TEST_SPLIT", "NETCDF_OPTIONS"]

GRAPHENE_FILE = "graphene_processed.nc"
GRAPHENE_SOURCE = {"bucket": "capstone2019-google", "key": "data/graphene_processed.nc"}
GRAPHENE_SHAPE = (30, 80)
GRAPHENE_TARGETS = ("strain", "stress")
DEFAULT_TEST_SPLIT = {"kind": "random", "fraction": 0.2, "seed": 42}


# ---------------------------------------------------------------------------------------------
# Reading


def read_netcdf(
    path: Path,
    image_var: str,
    target_var: str,
    label: str,
    split_var: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(images N x C x H x W float32, targets (N,), split flags (N,) or None)`` of a file."""
    import xarray as xr

    require_file(path, label)
    try:
        ds = xr.open_dataset(path, decode_times=False)
    except Exception as e:
        raise DataError(f"{label}: {path} is not a readable netCDF file ({typed_line(e)})") from e
    with ds:
        names = [image_var, target_var] + ([split_var] if split_var else [])
        missing = [v for v in names if v not in ds.variables]
        if missing:
            raise DataError(
                f"{label}: {path} has no variable {missing[0]!r} "
                f"(variables: {', '.join(map(str, ds.variables)) or 'none'})"
            )
        img = ds[image_var]
        if img.ndim not in (3, 4):
            raise DataError(
                f"{label}: {path} variable {image_var!r} has dims {img.dims} (rank {img.ndim}); "
                f"expected (sample, y, x) or (sample, channel, y, x)"
            )
        sample_dim = img.dims[0]
        for var in names[1:]:
            v = ds[var]
            if v.dims != (sample_dim,):
                raise DataError(
                    f"{label}: {path} variable {var!r} has dims {v.dims}; "
                    f"expected ({sample_dim},) like the first dim of {image_var!r}"
                )
        images = np.asarray(img.values, dtype=np.float32)
        targets = np.asarray(ds[target_var].values)
        flags = np.asarray(ds[split_var].values) if split_var else None
    check_finite(images, f"{label}: {path} variable {image_var!r}")
    if np.issubdtype(targets.dtype, np.number):
        check_finite(targets, f"{label}: {path} variable {target_var!r}")
    else:
        raise DataError(f"{label}: {path} variable {target_var!r} is {targets.dtype}, not numeric")
    if images.ndim == 3:
        images = images[:, None, :, :]
    return np.ascontiguousarray(images), targets, flags


# ---------------------------------------------------------------------------------------------
# Splits and normalisation


def _test_split(rule: Any, n: int, flags: np.ndarray | None, label: str,
                path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    rule = dict(DEFAULT_TEST_SPLIT if rule is None else rule)
    kind = rule.get("kind", "random")
    if kind == "random":
        unknown = set(rule) - {"kind", "fraction", "seed"}
        if unknown:
            raise DataError(f"{label}: unknown test_split key(s) {sorted(unknown)}")
        frac = float(rule.get("fraction", DEFAULT_TEST_SPLIT["fraction"]))
        seed = int(rule.get("seed", DEFAULT_TEST_SPLIT["seed"]))
        try:
            train, test = random_test_split(n, frac, seed)
        except DataError as e:
            raise DataError(f"{label}: {e}") from None
        return train, test, {"kind": "random", "fraction": frac, "seed": seed}
    if kind == "variable":
        unknown = set(rule) - {"kind", "var"}
        if unknown or not rule.get("var"):
            raise DataError(f"{label}: test_split of kind 'variable' needs exactly 'var'")
        assert flags is not None
        if np.issubdtype(flags.dtype, np.floating):
            check_finite(flags, f"{label}: {path} variable {rule['var']!r}")
        if not np.isin(flags, (0, 1)).all():
            bad = flags[~np.isin(flags, (0, 1))][0].item()
            raise DataError(f"{label}: {path} variable {rule['var']!r} must hold 0/1 "
                            f"(1 = test), found {bad!r}")
        test = np.flatnonzero(flags != 0)
        train = np.flatnonzero(flags == 0)
        return train, test, {"kind": "variable", "var": rule["var"]}
    raise DataError(f"{label}: unknown test_split kind {kind!r}; known: random, variable")


def _normalisation(spec: Any, images: np.ndarray, train: np.ndarray,
                   label: str) -> tuple[list[float] | None, list[float] | None]:
    c = images.shape[1]
    if spec in (None, False, "none"):
        return None, None
    if spec == "train":
        part = images[train]
        mean = part.mean(axis=(0, 2, 3), dtype=np.float64)
        std = part.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        return mean.tolist(), std.tolist()
    if isinstance(spec, dict) and set(spec) == {"mean", "std"}:
        mean = [float(v) for v in np.atleast_1d(spec["mean"])]
        std = [float(v) for v in np.atleast_1d(spec["std"])]
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise DataError(f"{label}: normalize needs {c} mean(s) and {c} positive std(s), "
                            f"got {spec!r}")
        return mean, std
    raise DataError(f"{label}: normalize must be null, 'train' or {{mean: [...], std: [...]}}, "
                    f"got {spec!r}")


# ---------------------------------------------------------------------------------------------
# Bundle


def netcdf_bundle(
    name: str,
    path: Path,
    image_var: str,
    target_var: str,
    task: str,
    num_classes: int | None,
    test_split: Any,
    normalize: Any,
    root: Path,
    expect_hw: tuple[int, int] | None = None,
    s3: str | None = None,
) -> DataBundle:
    """Read ``path`` and build the bundle (shared by ``netcdf`` and ``graphene``)."""
    label = name
    if task not in ("classification", "regression"):
        raise DataError(f"{label}: task must be 'classification' or 'regression', got {task!r}")
    if task == "classification" and num_classes is not None and (
            not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
        raise DataError(f"{label}: num_classes must be a positive integer or null, "
                        f"got {num_classes!r}")
    split_var = test_split.get("var") if isinstance(test_split, dict) \
        and test_split.get("kind") == "variable" else None
    images, targets, flags = read_netcdf(path, image_var, target_var, label, split_var)
    if expect_hw is not None and images.shape[1:] != (1, *expect_hw):
        raise DataError(f"{label}: {path} variable {image_var!r} has sample shape "
                        f"{tuple(images.shape[1:])} (channel, y, x), expected {(1, *expect_hw)}")
    n = images.shape[0]
    if n == 0:
        raise DataError(f"{label}: {path} variable {image_var!r} has no samples")
    train, test, split_info = _test_split(test_split, n, flags, label, path)
    check_nonempty(label, train=len(train), test=len(test))

    if task == "classification":
        if num_classes is None:  # null: max label + 1 (over the whole file)
            num_classes = int(np.max(targets)) + 1 if targets.size else 1
        y = torch.from_numpy(check_labels(targets, num_classes, f"{label}: {path} variable "
                                                                f"{target_var!r}"))
        num_outputs = int(num_classes)
    else:
        y = torch.from_numpy(targets.astype(np.float32))
        num_outputs = 1
    mean, std = _normalisation(normalize, images, train, label)
    tf = build_transform(images.shape[2:], mean, std)
    x = torch.from_numpy(images)
    source = {
        "dataset": name,
        "files": [file_info(path, root)],
        "image_var": image_var,
        "target_var": target_var,
        "task": task,
        "num_outputs": num_outputs,
        "n": int(n),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "test_split": split_info,
        "normalize": None if mean is None else {"mean": mean, "std": std},
    }
    if s3:
        source["s3"] = s3
    return DataBundle(
        name=name,
        task=task,
        num_outputs=num_outputs,
        in_channels=int(images.shape[1]),
        input_size=(int(images.shape[2]), int(images.shape[3])),
        train=ArrayDataset(x, y, train, task, tf),
        train_eval=ArrayDataset(x, y, train, task, tf),
        test=ArrayDataset(x, y, test, task, tf),
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# graphene


def _graphene_files(opts: dict, folder: Path) -> list[Path]:
    return [folder / GRAPHENE_FILE]


def _graphene_source(opts: dict) -> dict:
    return resolve_source(opts["source"], GRAPHENE_SOURCE, "graphene")


def _download_graphene(opts: dict, folder: Path) -> list[Path]:
    return [download_s3(_graphene_source(opts), folder / GRAPHENE_FILE, "graphene")]


@register_dataset(
    "graphene",
    options={
        "target": Option("strain", "choice", "regression target variable of the kirigami file",
                         choices=GRAPHENE_TARGETS),
        "source": source_option("S3 source overriding the public kirigami file (bucket, key, "
                                "endpoint_url, ...)"),
    },
    downloader=_download_graphene,
    files=_graphene_files,
)
def _load_graphene(opts: dict, folder: Path) -> DataBundle:
    if opts["target"] not in GRAPHENE_TARGETS:
        raise DataError(f"graphene: target must be one of {', '.join(GRAPHENE_TARGETS)}, "
                        f"got {opts['target']!r}")
    return netcdf_bundle(
        "graphene", folder / GRAPHENE_FILE, "fine_image", opts["target"], "regression",
        None, None, None, folder.parent, expect_hw=GRAPHENE_SHAPE,
        s3=s3_url(_graphene_source(opts)),
    )


# ---------------------------------------------------------------------------------------------
# netcdf

NETCDF_OPTIONS = {
    "path": Option(REQUIRED, "str", "the .nc file: absolute, or relative to "
                                    "resources/{dataset}/netcdf/"),
    "image_var": Option(REQUIRED, "str", "variable holding the images, (sample, y, x) or "
                                         "(sample, channel, y, x)"),
    "target_var": Option(REQUIRED, "str", "variable holding the targets, (sample,)"),
    "task": Option(REQUIRED, "choice", "what the target is",
                   choices=("classification", "regression")),
    "num_classes": Option(None, "int", "classes (null = max label + 1); classification only",
                          minimum=1, nullable=True),
    "test_split": Option(
        None, "object", "null (random, fraction 0.2, seed 42), {kind: random, fraction, seed} "
                        "or {kind: variable, var: <0/1 variable, 1 = test>}",
        nullable=True, checked=False, keys={
            "kind": Option(DEFAULT_TEST_SPLIT["kind"], "choice", "'random' (seeded, "
                           "nas_core.data.random_test_split) or 'variable' (a 0/1 variable of "
                           "the file)", choices=("random", "variable")),
            "fraction": Option(DEFAULT_TEST_SPLIT["fraction"], "float", "kind random: fraction "
                               "of the samples in the test split"),
            "seed": Option(DEFAULT_TEST_SPLIT["seed"], "int", "kind random: seed of the split"),
            "var": Option(REQUIRED, "str", "kind variable: the variable flagging the test "
                                           "samples, (sample,), 1 = test, 0 = training"),
        }),
    "normalize": Option(
        None, "any", "null (none), 'train' (mean/std of the training part) or {mean: [...], "
                     "std: [...]}",
        checked=False, keys={
            "mean": Option(REQUIRED, "any", "one mean per channel"),
            "std": Option(REQUIRED, "any", "one positive std per channel"),
        }),
    "source": source_option("S3 source to download the file from (null = the file must "
                            "exist)"),
}


def _netcdf_path(opts: dict, folder: Path) -> Path:
    p = Path(str(opts["path"])).expanduser()
    return p if p.is_absolute() else folder / p


def _netcdf_files(opts: dict, folder: Path) -> list[Path]:
    return [_netcdf_path(opts, folder)]


def _download_netcdf(opts: dict, folder: Path) -> list[Path]:
    path = _netcdf_path(opts, folder)
    if opts["source"] is None:
        if not path.is_file():
            raise DataError(
                f"netcdf: missing file {path} and no 'source' block to download it from"
            )
        return [path]
    return [download_s3(resolve_source(opts["source"], None, "netcdf"), path, "netcdf")]


@register_dataset("netcdf", options=NETCDF_OPTIONS, downloader=_download_netcdf,
                  files=_netcdf_files)
def _load_netcdf(opts: dict, folder: Path) -> DataBundle:
    num_classes = opts["num_classes"]
    if isinstance(num_classes, float) and math.isfinite(num_classes) and num_classes.is_integer():
        num_classes = int(num_classes)
    s3 = s3_url(resolve_source(opts["source"], None, "netcdf")) if opts["source"] else None
    return netcdf_bundle(
        "netcdf", _netcdf_path(opts, folder), str(opts["image_var"]), str(opts["target_var"]),
        opts["task"], num_classes, opts["test_split"], opts["normalize"], folder.parent, s3=s3,
    )
