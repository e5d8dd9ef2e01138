"""Shared types of the data layer: errors, the bundle returned by ``load_data``, an in-memory
dataset over an index list, and file identification (size, sha256) for ``DataBundle.source``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from nas_core.errors import NasCoreError, one_line
from nas_core.fileio import sha256_file

__all__ = ["DataError", "DownloadError", "DataBundle", "ArrayDataset", "file_info",
           "require_file", "check_finite", "check_labels", "encode_labels", "check_nonempty",
           "typed_line"]


class DataError(NasCoreError, ValueError):
    """Bad or missing data; the message is one line naming the file, variable or value."""


class DownloadError(DataError):
    """A download failed; the message names the URL (and endpoint) and the cause."""


@dataclass
class DataBundle:
    """Everything a stage needs to know about one dataset (see docs/architecture.md)."""

    name: str
    task: str
    num_outputs: int
    in_channels: int
    input_size: tuple[int, int]
    train: Dataset
    train_eval: Dataset
    test: Dataset
    source: dict = field(default_factory=dict)
    #: classification: the name of each class index (``None``: the indices are the names)
    class_names: list[str] | None = None
    #: regression with ``standardize``: ``{"mean", "std"}`` of the training part's targets; the
    #: datasets yield ``(y - mean) / std`` and the test stage reports metrics in the original
    #: units (``y * std + mean``).  ``None``: targets as stored.
    target_stats: dict | None = None


class ArrayDataset(Dataset):
    """Samples ``(transform(images[i]), targets[i])`` for ``i`` in ``indices``.

    ``images`` is an ``N x C x H x W`` tensor (uint8 or float32) shared between the splits, so
    the data is held in memory once; ``to_float`` turns one stored sample into float32 on the
    [0, 1] scale (or leaves float data as is) before ``transform`` runs.  Classification targets
    come out as ``int``, regression targets as 0-d float32 tensors.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        indices: Sequence[int] | np.ndarray,
        task: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.targets = targets
        self.indices = np.asarray(indices, dtype=np.int64)
        self.task = task
        self.transform = transform

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        j = int(self.indices[i])
        x = self.images[j]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.transform is not None:
            x = self.transform(x)
        if self.task == "classification":
            return x, int(self.targets[j])
        return x, self.targets[j].float()


# ---------------------------------------------------------------------------------------------
# File identification

def file_info(path: str | Path, root: str | Path | None = None) -> dict:
    """``{"path", "size", "sha256"}`` of a file; ``path`` relative to ``root`` when inside it."""
    p = Path(path)
    shown = str(p)
    if root is not None:
        try:
            shown = str(p.resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return {"path": shown, "size": p.stat().st_size, "sha256": sha256_file(p)}


# ---------------------------------------------------------------------------------------------
# Checks


def require_file(path: Path, dataset: str) -> Path:
    """Raise a one-line DataError when ``path`` is missing."""
    if not path.is_file():
        raise DataError(
            f"{dataset}: missing file {path}; run the download stage first "
            f"(python -m nas_core download)"
        )
    return path


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise when ``values`` holds NaN or inf, naming ``what`` and the count."""
    if np.issubdtype(values.dtype, np.floating):
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise DataError(f"{what} has {bad} NaN/inf value(s)")


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    """Integer class labels in ``[0, num_classes)``; returns them as int64."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        check_finite(labels, what)
        if not np.all(labels == np.round(labels)):
            example = labels[labels != np.round(labels)][0].item()
            raise DataError(f"{what} holds non-integer class labels (e.g. {example!r})")
    lo, hi = labels.min().item(), labels.max().item()
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{what}: label {bad!r} out of range [0, {num_classes}) "
            f"({int(np.count_nonzero((labels < 0) | (labels >= num_classes)))} bad)"
        )
    return labels.astype(np.int64)


def _label_text(values: np.ndarray, what: str) -> np.ndarray | None:
    """``values`` as an array of ``str`` when they are text (str, bytes, or objects that are
    all str/bytes); None for numbers."""
    kind = values.dtype.kind
    if kind in "U":
        return values.astype(str)
    if kind not in "SO":
        return None
    out = []
    for v in values.ravel().tolist():
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{what}: label {v!r} is not UTF-8 text") from None
        if not isinstance(v, str):
            if kind == "O" and not out:
                return None  # objects that are not text: numbers, checked by the caller
            raise DataError(f"{what}: labels mix text and {type(v).__name__} (e.g. {v!r})")
        out.append(v)
    return np.asarray(out, dtype=object).reshape(values.shape).astype(str)


def encode_labels(labels: Any, what: str,
                  num_classes: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Class labels of any values -> ``(class indices int64, class names)``.

    ``num_classes`` None: the distinct labels, sorted (numbers by value, text as text), are the
    classes ``0..K-1``; a class's name is its label as text (``"1"``, ``"cat"``), so labels
    numbered from 1 give ``K`` classes, not ``K + 1``.  ``num_classes`` N: the labels must be
    the integers ``0..N-1`` (class ``i`` is label ``i``, named ``"i"``; a class may be absent).
    Floats must be whole numbers; NaN, inf and mixed text/numbers are refused (one line)."""
    values = np.asarray(labels)
    if values.ndim != 1:
        values = values.reshape(-1)
    text = _label_text(values, what)
    if text is not None:
        if num_classes is not None:
            raise DataError(f"{what}: num_classes applies to integer labels 0..N-1, the labels "
                            f"are text (e.g. {text[0]!r}); leave num_classes null")
        names, idx = np.unique(text, return_inverse=True)
        return idx.astype(np.int64).reshape(-1), [str(n) for n in names]
    if values.dtype.kind == "O":
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{what}: labels must be integers or text, got "
                            f"{type(values[0]).__name__} (e.g. {values[0]!r})") from None
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind not in "iuf":
        raise DataError(f"{what}: labels must be integers or text, got {values.dtype}")
    if num_classes is not None:
        return check_labels(values, num_classes, what), [str(i) for i in range(num_classes)]
    if values.dtype.kind == "f":
        check_finite(values, what)
        if not np.all(values == np.round(values)):
            example = values[values != np.round(values)][0].item()
            raise DataError(f"{what} holds non-integer class labels (e.g. {example!r})")
        values = values.astype(np.int64)
    classes, idx = np.unique(values, return_inverse=True)
    return idx.astype(np.int64).reshape(-1), [str(int(c)) for c in classes]


def check_nonempty(name: str, **parts: int) -> None:
    """Raise when any named split has no samples."""
    for part, n in parts.items():
        if n <= 0:
            sizes = ", ".join(f"{k}={v}" for k, v in parts.items())
            raise DataError(f"{name}: the {part} split is empty ({sizes})")


def typed_line(e: BaseException) -> str:
    """``ExceptionType: message`` on one line (:func:`nas_core.errors.one_line`)."""
    text = one_line(str(e))
    name = type(e).__name__
    return f"{name}: {text}" if text else name
