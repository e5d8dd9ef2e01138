"""Datasets given by import path: ``data: {name: mypackage.data:SoilMoisture, ...}``.

As Hydra's ``_target_``: ``name`` is ``package.module:Attribute``; the module is imported
(installed, on ``PYTHONPATH``, or a module in the working directory) and the attribute, a class
or a function, is called with the data block's other keys as keyword arguments, except those
nas_core reads itself (:data:`RESERVED`: ``task``, ``test_split``, ``normalize``,
``standardize``).  It returns a map-style dataset (``torch.utils.data.Dataset`` or any object
with ``__len__`` and ``__getitem__``)::

    class SoilMoisture(torch.utils.data.Dataset):
        task = "regression"                      # or "classification"
        def __init__(self, path, var="moisture"):   # the data: block's other keys
            import xarray
            with xarray.open_dataset(path) as ds:
                self.x = ds["image"].values.astype("float32")   # N x C x H x W
                self.y = ds[var].values
        def __len__(self):
            return len(self.y)
        def __getitem__(self, i):                # (image C x H x W or H x W, target)
            return self.x[i], self.y[i]

``ds[i]`` is ``(image, target)``: the image a tensor or array ``C x H x W`` or ``H x W`` (uint8
is read as 0..255, anything else as float32 as is) or a PIL image; the target a class label
(an integer of any value or a text: the distinct labels, sorted, are the classes) or, for
regression, a number.  Optional attributes: ``task`` (unless the config gives ``task:``),
``class_names`` (the class of each index: targets are then indices or these names),
``test_indices`` (a fixed test split; otherwise ``test_split``, by default the seeded random
rule, fraction 0.2, seed 42).  Every sample is read once into memory; normalisation
(``normalize: train`` by default) and ``standardize`` use the training part only.  A function
may instead return a :class:`DataBundle` (full control).

Keys named ``path`` or ending in ``_path`` name the files or folders the dataset reads: relative
ones resolve against the working directory, a missing one stops the workflow's dry run, and
their content is tracked (a changed byte reruns the stages, a ``touch`` does not); so is the
source file of the module named (an edit of the class reruns them too).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .arrays import bundle_from_arrays, random_split
from .base import DataBundle, DataError, encode_labels, typed_line
from .digest import file_records, records_digest
from .local import LocalInput, resolve_local
from .options import IMPORT_PATH_KEYS, IMPORT_PATH_PATTERN, Option
from .spec import DatasetSpec

__all__ = ["RESERVED", "import_dataset", "is_path_key"]

#: Keys of an import-path dataset's data block that nas_core reads (not passed to the class).
RESERVED: dict[str, Option] = IMPORT_PATH_KEYS


def is_path_key(key: str) -> bool:
    """Keys naming local files or folders: ``path`` and ``*_path``."""
    return key == "path" or key.endswith("_path")


def _fail(name: str, text: str) -> DataError:
    return DataError(f"{name}: {text}")


def _import(name: str) -> Callable:
    module_name, attr = name.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path:  # a module in the working directory (Snakemake jobs run there)
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _fail(name, f"data.name: cannot import module {module_name!r} "
                          f"({typed_line(e)})") from e
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _fail(name, f"data.name: module {module_name!r} has no attribute "
                              f"{attr!r}") from None
    if not callable(target):
        raise _fail(name, f"data.name: {attr!r} is a {type(target).__name__}, not a class or "
                          f"function")
    return target


def _kwargs(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k != "name" and k not in RESERVED}


def _construct(name: str, target: Callable, opts: dict) -> Any:
    kwargs = _kwargs(opts)
    try:
        inspect.signature(target).bind(**kwargs)
    except TypeError as e:
        raise _fail(name, f"its data: keys do not fit {target.__name__}{_signature(target)}: "
                          f"{e}") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    try:
        return target(**kwargs)
    except DataError:
        raise
    except Exception as e:
        raise _fail(name, f"creating the dataset failed: {typed_line(e)}") from e


def _signature(target: Callable) -> str:
    try:
        return str(inspect.signature(target))
    except (TypeError, ValueError):
        return "(...)"


def _module_file(name: str) -> Path | None:
    """The source file of the module ``name`` imports (its code is tracked like the data)."""
    module = sys.modules.get(name.split(":")[0])
    file = getattr(module, "__file__", None)
    return Path(file) if file and file.endswith(".py") and Path(file).is_file() else None


def _local(name: str):
    def local(opts: dict, folder: Path) -> list[LocalInput]:
        out = []
        code = _module_file(name)
        if code is not None:
            out.append(LocalInput("name", code, str(code), files=(code,)))
        for key, value in _kwargs(opts).items():
            if not is_path_key(key) or not isinstance(value, str):
                continue
            path = resolve_local(value)
            if path.is_dir():
                files = tuple(sorted(p for p in path.rglob("*") if p.is_file() and not any(
                    part.startswith(".") for part in p.relative_to(path).parts)))
                out.append(LocalInput(key, path, value, files=files, is_folder=True))
            else:
                out.append(LocalInput(key, path, value,
                                      files=(path,) if path.is_file() else ()))
        return out
    return local


def _files(name: str):
    local = _local(name)

    def files(opts: dict, folder: Path) -> list[Path]:
        out = []
        for entry in local(opts, folder):
            if not entry.exists:
                raise _fail(name, f"data.{entry.key}: no file or folder {entry.given!r}")
            out.extend(entry.files)
        return out
    return files


def _as_image(x: Any, where: str) -> np.ndarray:
    """``C x H x W`` array (uint8 kept, anything else float32)."""
    if hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "getdata"):  # a PIL image
        arr = np.asarray(x)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    else:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        arr = np.asarray(x)
        if arr.ndim == 2:
            arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{where}: image has shape {arr.shape}; expected C x H x W or H x W")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iufb":
        raise DataError(f"{where}: image dtype {arr.dtype} is not numeric")
    return arr.astype(np.float32)


def _target_value(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu()
        return y.item() if y.numel() == 1 else y.numpy()
    if isinstance(y, np.ndarray) and y.size == 1:
        return y.reshape(()).item()
    if isinstance(y, np.generic):
        return y.item()
    return y


def _read_all(name: str, ds: Any) -> tuple[torch.Tensor, list]:
    try:
        n = len(ds)
    except TypeError:
        raise _fail(name, f"the dataset ({type(ds).__name__}) has no len()") from None
    if n == 0:
        raise _fail(name, "the dataset has no samples")
    images: torch.Tensor | None = None
    targets: list = []
    for i in range(n):
        where = f"{name}: sample {i}"
        try:
            item = ds[i]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{where}: reading it failed: {typed_line(e)}") from e
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"{where}: expected (image, target), got {type(item).__name__}")
        arr = _as_image(item[0], where)
        if images is None:
            dtype = torch.uint8 if arr.dtype == np.uint8 else torch.float32
            images = torch.empty((n, *arr.shape), dtype=dtype)
        if tuple(arr.shape) != tuple(images.shape[1:]):
            raise DataError(f"{where}: image shape {arr.shape} differs from sample 0's "
                            f"{tuple(images.shape[1:])}")
        if images.dtype == torch.uint8 and arr.dtype != np.uint8:
            raise DataError(f"{where}: image is {arr.dtype} but sample 0's is uint8")
        images[i] = torch.from_numpy(np.array(
            arr, dtype=np.uint8 if images.dtype == torch.uint8 else np.float32))
        targets.append(_target_value(item[1]))
    if images.dtype == torch.float32 and not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise DataError(f"{name}: images have {bad} NaN/inf value(s)")
    return images, targets


def _classes(name: str, ds: Any, targets: list) -> tuple[np.ndarray, list[str]]:
    names = getattr(ds, "class_names", None)
    what = f"{name}: targets"
    if names is None:
        return encode_labels(np.asarray(targets), what)
    names = [str(c) for c in names]
    index = {c: i for i, c in enumerate(names)}
    out = np.empty(len(targets), dtype=np.int64)
    for i, t in enumerate(targets):
        if isinstance(t, bytes):
            t = t.decode("utf-8", "replace")
        if isinstance(t, str):
            if t not in index:
                raise DataError(f"{what}: sample {i} has label {t!r}, not one of class_names")
            out[i] = index[t]
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool) \
                and 0 <= t < len(names):
            out[i] = int(t)
        elif isinstance(t, float) and t.is_integer() and 0 <= t < len(names):
            out[i] = int(t)
        else:
            raise DataError(f"{what}: sample {i} has label {t!r}; with class_names the labels "
                            f"are indices 0..{len(names) - 1} or the names")
    return out, names


def _split(name: str, ds: Any, opts: dict, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    fixed = getattr(ds, "test_indices", None)
    if fixed is None or opts["test_split"] is not None:
        return random_split(opts["test_split"], n, name)
    test = np.unique(np.asarray(list(fixed), dtype=np.int64))
    if test.size and (test[0] < 0 or test[-1] >= n):
        raise DataError(f"{name}: test_indices holds {int(test[0] if test[0] < 0 else test[-1])}"
                        f", outside 0..{n - 1}")
    train = np.setdiff1d(np.arange(n), test)
    return train, test, {"kind": "test_indices", "n_test": int(test.size)}


def _loader(name: str, target: Callable):
    local = _local(name)

    def load(opts: dict, folder: Path) -> DataBundle:
        ds = _construct(name, target, opts)
        if isinstance(ds, DataBundle):
            return ds
        task = opts["task"] or getattr(ds, "task", None)
        if task not in ("classification", "regression"):
            raise _fail(name, f"task is {task!r}: set task: classification|regression in the "
                              f"data block or a 'task' attribute on the dataset")
        images, targets = _read_all(name, ds)
        if task == "classification":
            y, class_names = _classes(name, ds, targets)
        else:
            try:
                y = np.asarray(targets, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise _fail(name, f"regression targets must be numbers, got "
                                  f"{targets[0]!r}") from None
            if y.shape[0] != len(targets):
                raise _fail(name, "regression targets must be one number per sample")
            class_names = None
        train, test, split = _split(name, ds, opts, len(targets))
        files = []
        for entry in local(opts, folder):
            records = file_records(entry.files, base=entry.path if entry.is_folder else None)
            files.append({"key": entry.key, "path": entry.given, "files": len(records),
                          "sha256": records_digest(records)})
        source = {"dataset": name, "class": f"{type(ds).__module__}.{type(ds).__qualname__}",
                  "options": _kwargs(opts), "inputs": files, "test_split": split}
        return bundle_from_arrays(
            name, images, y, task, train, test, label=name, normalize=opts["normalize"],
            standardize=bool(opts["standardize"]), class_names=class_names,
            num_outputs=len(class_names) if class_names is not None else None, source=source)
    return load


def _describer(name: str, target: Callable):
    def describe(opts: dict, folder: Path) -> dict:
        ds = _construct(name, target, opts)
        names = getattr(ds, "class_names", None)
        return {"class_names": [str(c) for c in names]} if names is not None else {}
    return describe


@lru_cache(maxsize=None)
def _spec(name: str, target: Callable) -> DatasetSpec:
    return DatasetSpec(
        name=name, loader=_loader(name, target),
        options={k: o.default for k, o in RESERVED.items()},
        files=_files(name), option_specs=dict(RESERVED), local=_local(name),
        describe=_describer(name, target), open_options=True, folder="custom")


def import_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of an import path ``package.module:Attribute`` (imported)."""
    if not re.match(IMPORT_PATH_PATTERN, name):
        raise DataError(f"data.name {name!r} is not an import path package.module:Attribute "
                        f"(nor a registered dataset)")
    return _spec(name, _import(name))
