"""In-memory datasets built from arrays: the shared tail of ``netcdf``, ``image-folder`` and the
datasets given by import path (``data: {name: package.module:Class}``).

:func:`bundle_from_arrays` takes images ``N x C x H x W`` (uint8 on 0..255 or float32), targets,
the train/test index split and the config's ``normalize`` / ``standardize`` settings, computes
every statistic from the training part only, and returns the :class:`DataBundle`.
:func:`random_split` reads a ``test_split: {kind: random, fraction, seed}`` rule (the 2019 rule
of :func:`random_test_split` by default).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .base import ArrayDataset, DataBundle, DataError, check_finite, check_nonempty
from .splits import random_test_split
from .transforms import build_transform

__all__ = ["DEFAULT_TEST_SPLIT", "random_split", "normalisation", "standardisation",
           "bundle_from_arrays", "whole"]

DEFAULT_TEST_SPLIT = {"kind": "random", "fraction": 0.2, "seed": 42}


def random_split(rule: Any, n: int, label: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(train, test, record)`` of a ``{kind: random, fraction, seed}`` rule (null: defaults)."""
    if rule is not None and not isinstance(rule, dict):
        raise DataError(f"{label}: test_split must be null or a mapping, got {rule!r}")
    rule = dict(DEFAULT_TEST_SPLIT if rule is None else rule)
    if rule.get("kind", "random") != "random":
        raise DataError(f"{label}: unknown test_split kind {rule['kind']!r}; known: random")
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


def _channel_stats(images: np.ndarray | torch.Tensor, train: np.ndarray
                   ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images (float64 sums, [0, 1] scale for
    uint8), in chunks so that a uint8 dataset is never copied whole as floats."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    c = x.shape[1]
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    count = 0
    idx = torch.as_tensor(np.asarray(train, dtype=np.int64))
    for start in range(0, len(idx), 1024):
        part = x[idx[start:start + 1024]].to(torch.float64) / scale
        s += part.sum(dim=(0, 2, 3))
        ss += (part * part).sum(dim=(0, 2, 3))
        count += part.shape[0] * part.shape[2] * part.shape[3]
    mean = s / count
    var = (ss / count - mean * mean).clamp_min(0.0)
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return mean.tolist(), std.tolist()


def normalisation(spec: Any, images: np.ndarray | torch.Tensor, train: np.ndarray,
                  label: str) -> tuple[list[float] | None, list[float] | None]:
    """``(mean, std)`` per channel of a ``normalize`` setting: null/false/'none' (none),
    'train' (the training part's statistics) or ``{mean: [...], std: [...]}``."""
    c = images.shape[1]
    if spec in (None, False, "none"):
        return None, None
    if spec == "train":
        return _channel_stats(images, train)
    if isinstance(spec, dict) and set(spec) == {"mean", "std"}:
        mean = [float(v) for v in np.atleast_1d(spec["mean"])]
        std = [float(v) for v in np.atleast_1d(spec["std"])]
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise DataError(f"{label}: normalize needs {c} mean(s) and {c} positive std(s), "
                            f"got {spec!r}")
        return mean, std
    raise DataError(f"{label}: normalize must be null, 'train' or {{mean: [...], std: [...]}}, "
                    f"got {spec!r}")


def standardisation(targets: np.ndarray, train: np.ndarray, label: str) -> dict:
    """``{"mean", "std"}`` of the training part's regression targets (float64)."""
    part = np.asarray(targets, dtype=np.float64)[np.asarray(train, dtype=np.int64)]
    mean, std = float(part.mean()), float(part.std())
    if not std > 0:
        raise DataError(f"{label}: standardize: the training part's targets are all "
                        f"{mean!r} (std 0)")
    return {"mean": mean, "std": std}


def bundle_from_arrays(
    name: str,
    images: np.ndarray | torch.Tensor,
    targets: np.ndarray,
    task: str,
    train: Sequence[int] | np.ndarray,
    test: Sequence[int] | np.ndarray,
    *,
    label: str,
    normalize: Any = None,
    standardize: bool = False,
    class_names: list[str] | None = None,
    num_outputs: int | None = None,
    source: dict | None = None,
    crop_padding: int = 0,
    hflip: bool = False,
) -> DataBundle:
    """The bundle of in-memory arrays (see the module docstring).

    ``targets``: class indices (int) for classification, numbers for regression.  With
    ``standardize`` the regression targets become ``(y - mean) / std`` with the training
    part's mean and std (``DataBundle.target_stats``).  ``source`` is completed with the split
    sizes, ``normalize`` and ``standardize`` records and ``class_names``."""
    if task not in ("classification", "regression"):
        raise DataError(f"{label}: task must be 'classification' or 'regression', got {task!r}")
    train = np.asarray(train, dtype=np.int64)
    test = np.asarray(test, dtype=np.int64)
    check_nonempty(label, train=len(train), test=len(test))
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(images))
    if x.ndim != 4:
        raise DataError(f"{label}: images must be N x C x H x W, got shape {tuple(x.shape)}")
    stats = None
    if task == "classification":
        if standardize:
            raise DataError(f"{label}: standardize applies to regression targets only")
        y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
        k = int(num_outputs if num_outputs is not None else
                (len(class_names) if class_names else int(y.max()) + 1 if len(y) else 1))
    else:
        values = np.asarray(targets, dtype=np.float64)
        check_finite(values, f"{label}: targets")
        if standardize:
            stats = standardisation(values, train, label)
            values = (values - stats["mean"]) / stats["std"]
        y = torch.from_numpy(values.astype(np.float32))
        k = 1
        class_names = None
    mean, std = normalisation(normalize, x, train, label)
    size = (int(x.shape[2]), int(x.shape[3]))
    train_tf = build_transform(size, mean, std, crop_padding=int(crop_padding),
                               hflip=bool(hflip))
    eval_tf = build_transform(size, mean, std)
    src = dict(source or {})
    src.update({
        "task": task,
        "num_outputs": k,
        "n": int(x.shape[0]),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "normalize": None if mean is None else {"mean": mean, "std": std},
    })
    if task == "regression":
        src["standardize"] = stats
    if class_names is not None:
        src["class_names"] = list(class_names)
    return DataBundle(
        name=name,
        task=task,
        num_outputs=k,
        in_channels=int(x.shape[1]),
        input_size=size,
        train=ArrayDataset(x, y, train, task, train_tf),
        train_eval=ArrayDataset(x, y, train, task, eval_tf),
        test=ArrayDataset(x, y, test, task, eval_tf),
        source=src,
        class_names=list(class_names) if class_names is not None else None,
        target_stats=stats,
    )


def whole(value: Any) -> Any:
    """A float that is a whole number as an int (YAML may give ``3.0``); anything else as is."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value
