"""Shared types of the data layer: errors, the bundle returned by ``load_data``, an in-memory
dataset over an index list, and file identification (size, sha256) for ``DataBundle.source``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from nas_core.errors import one_line
from nas_core.fileio import sha256_file

__all__ = ["DataError", "DownloadError", "DataBundle", "ArrayDataset", "file_info",
           "require_file", "check_finite", "check_labels", "check_nonempty", "typed_line"]


class DataError(ValueError):
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
