"""Import of the 2019 DARTS outputs: ``log.txt`` of ``train_search.py`` / ``train.py``, the
hand-pasted ``test.py`` stdout, and the ``normal_NNN.npy`` / ``reduce_NNN.npy`` alpha files.

Log lines start with ``2019-10-04 16:08:33,803 `` (log.txt) or ``10/11 02:34:43 PM `` (stdout);
lines without such a prefix continue the previous message (the multi-line alpha dumps).
Nothing is evaluated: the ``Namespace(...)`` and ``Genotype(...)`` texts are parsed with ``ast``.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nas_core.errors import NasCoreError
from nas_core.genotypes import Genotype, GenotypeError, parse_legacy_genotype

__all__ = [
    "LegacyFormatError",
    "SearchLog",
    "EvalLog",
    "read_search_log",
    "read_eval_log",
    "read_alpha_npy",
]


class LegacyFormatError(NasCoreError, ValueError):
    """A legacy file does not have the expected format; the message names file and line."""


_PREFIX = re.compile(
    r"^(?:\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}|\d{2}/\d{2} \d{2}:\d{2}:\d{2} [AP]M) ?(.*)$")
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_EPOCH = re.compile(rf"^epoch (\d+) lr ({_FLOAT})\s*$")
_METRIC = re.compile(
    rf"^(train_acc|valid_acc|test_acc)(?: \(R\^2 for regression\))? ({_FLOAT})\s*$")
_STEP = re.compile(rf"^(train|valid|test) (\d+) ({_FLOAT})(?: ({_FLOAT}))*\s*$")
_PARAM = re.compile(rf"^param size = ({_FLOAT})MB\s*$")
#: The fork's later epoch summaries (Nov 2019 on): ``training loss; R2: 1.78e-01 -220.8`` and
#: ``validation loss; accuracy: 2.3e-01 91.2`` (the epoch's mean loss, then the metric).
_SUMMARY = re.compile(
    rf"^(training|validation) loss; ([^:]+): ({_FLOAT}) ({_FLOAT})\s*$")
_ALPHA_HEAD = re.compile(r"^alphas_(normal|reduce) = (.*)$", re.S)
_TORCH_SIZE = re.compile(r"^\[torch\.\S*Tensor of size (\d+)x(\d+).*\]$")


@dataclass
class SearchLog:
    """What a ``train_search.py`` log.txt holds.

    ``metrics[epoch]`` has ``lr``, ``train_acc``, ``valid_acc`` (percent, or R^2 in the fork's
    regression runs: the fork labels both ``... (R^2 for regression)``) and ``train_loss`` /
    ``valid_loss``: the running average on the last step line logged before the accuracy line
    (report_freq granularity, not the exact epoch mean).  The fork's later logs summarise each
    epoch as ``training loss; R2: <loss> <metric>`` / ``validation loss; accuracy: ...``: there
    both values are the epoch's own and are read as such.
    """

    path: Path
    args: dict[str, Any]
    param_size_mb: float | None
    genotypes: dict[int, Genotype] = field(default_factory=dict)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    alphas: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def final_genotype(self) -> Genotype | None:
        """The genotype logged last (at the start of the last epoch), or None."""
        return self.genotypes[max(self.genotypes)] if self.genotypes else None


@dataclass
class EvalLog:
    """What a ``train.py`` log.txt (metrics per epoch) or a ``test.py`` stdout holds."""

    path: Path
    args: dict[str, Any]
    param_size_mb: float | None
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    test_acc: float | None = None


def _messages(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, message) per log record; continuation lines are joined with newlines."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LegacyFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    current: list[str] | None = None
    start = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _PREFIX.match(line)
        if m:
            if current is not None:
                yield start, "\n".join(current)
            current, start = [m.group(1)], lineno
        elif current is not None:
            current.append(line)
        # lines before the first record (e.g. the pasted command) are ignored
    if current is not None:
        yield start, "\n".join(current)


def _parse_namespace(text: str, where: str) -> dict[str, Any]:
    first = text.split("\n", 1)[0].strip()
    try:
        node = ast.parse(first, mode="eval").body
    except SyntaxError as exc:
        raise LegacyFormatError(f"{where}: args: not a Namespace(...) expression: "
                                f"{exc.msg}") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "Namespace" and not node.args):
        raise LegacyFormatError(f"{where}: args: expected Namespace(key=value, ...)")
    out: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise LegacyFormatError(f"{where}: args: '**' not allowed")
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError):
            raise LegacyFormatError(f"{where}: args: value of {kw.arg!r} is not a literal: "
                                    f"{ast.unparse(kw.value)[:60]}") from None
    return out


def _parse_alphas(body: str, where: str) -> np.ndarray:
    """Parse a ``Variable containing:`` dump (torch 0.3) or a ``tensor([[...]])`` repr."""
    body = body.strip()
    if body.startswith("Variable containing:"):
        rows: list[list[float]] = []
        size: tuple[int, int] | None = None
        for line in body.split("\n")[1:]:
            line = line.strip()
            if not line:
                continue
            m = _TORCH_SIZE.match(line)
            if m:
                size = (int(m.group(1)), int(m.group(2)))
                break
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError:
                raise LegacyFormatError(f"{where}: alphas: bad row {line[:60]!r}") from None
        if size is None:
            raise LegacyFormatError(f"{where}: alphas: missing '[torch.*Tensor of size AxB]' "
                                    f"trailer")
        if not rows or any(len(r) != size[1] for r in rows) or len(rows) != size[0]:
            raise LegacyFormatError(f"{where}: alphas: rows do not match size "
                                    f"{size[0]}x{size[1]}")
        return np.asarray(rows, dtype=np.float32)
    if body.startswith("tensor("):
        m = re.match(r"tensor\((\[.*\])\s*(?:,\s*[a-z_]+=.*)?\)\s*$", body, re.S)
        try:
            values = ast.literal_eval(m.group(1)) if m else None
        except (ValueError, SyntaxError):
            values = None
        arr = np.asarray(values, dtype=np.float32) if values is not None else None
        if arr is None or arr.ndim != 2:
            raise LegacyFormatError(f"{where}: alphas: cannot parse tensor(...) dump")
        return arr
    raise LegacyFormatError(f"{where}: alphas: unknown dump format {body[:40]!r}")


def _parse(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    out: dict[str, Any] = {"path": path, "args": {}, "param_size_mb": None, "genotypes": {},
                           "metrics": {}, "alphas": {}, "test_acc": None}
    epoch: int | None = None
    last_loss: float | None = None
    for lineno, msg in _messages(path):
        where = f"{path}:{lineno}"
        head = msg.split("\n", 1)[0].strip()
        if head.startswith("args = "):
            out["args"] = _parse_namespace(msg[msg.index("args = ") + 7:], where)
        elif m := _PARAM.match(head):
            out["param_size_mb"] = float(m.group(1))
        elif m := _EPOCH.match(head):
            epoch = int(m.group(1))
            out["metrics"].setdefault(epoch, {})["lr"] = float(m.group(2))
            last_loss = None
        elif head.startswith("genotype = "):
            if epoch is None:
                raise LegacyFormatError(f"{where}: genotype logged before any 'epoch N lr' line")
            try:
                out["genotypes"][epoch] = parse_legacy_genotype(head[len("genotype = "):])
            except GenotypeError as exc:
                raise LegacyFormatError(f"{where}: {exc}") from None
        elif m := _STEP.match(head):
            last_loss = float(m.group(3))
        elif m := _SUMMARY.match(head):
            part = "train" if m.group(1) == "training" else "valid"
            if epoch is None:
                raise LegacyFormatError(f"{where}: {m.group(1)} loss logged before any "
                                        f"'epoch N lr' line")
            row = out["metrics"][epoch]
            row[f"{part}_loss"] = float(m.group(3))
            row[f"{part}_acc"] = float(m.group(4))
            last_loss = None
        elif m := _METRIC.match(head):
            name, value = m.group(1), float(m.group(2))
            if name == "test_acc":
                out["test_acc"] = value
                continue
            if epoch is None:
                raise LegacyFormatError(f"{where}: {name} logged before any 'epoch N lr' line")
            row = out["metrics"][epoch]
            row[name] = value
            if last_loss is not None:
                row[name.replace("_acc", "_loss")] = last_loss
            last_loss = None
        elif m := _ALPHA_HEAD.match(msg.strip()):
            if epoch is None:
                raise LegacyFormatError(f"{where}: alphas logged before any 'epoch N lr' line")
            arr = _parse_alphas(m.group(2), where)
            out["alphas"].setdefault(epoch, {})[m.group(1)] = arr
    return out


def read_search_log(path: str | os.PathLike) -> SearchLog:
    """Genotypes, metrics and alpha dumps per epoch of a ``train_search.py`` log.txt."""
    d = _parse(path)
    for epoch, pair in d["alphas"].items():
        if set(pair) != {"normal", "reduce"}:
            missing = ({"normal", "reduce"} - set(pair)).pop()
            raise LegacyFormatError(f"{d['path']}: epoch {epoch}: alphas_{missing} dump missing")
    return SearchLog(path=d["path"], args=d["args"], param_size_mb=d["param_size_mb"],
                     genotypes=d["genotypes"], metrics=d["metrics"], alphas=d["alphas"])


def read_eval_log(path: str | os.PathLike) -> EvalLog:
    """Metrics per epoch of a ``train.py`` log.txt, or ``test_acc`` of a ``test.py`` stdout."""
    d = _parse(path)
    return EvalLog(path=d["path"], args=d["args"], param_size_mb=d["param_size_mb"],
                   metrics=d["metrics"], test_acc=d["test_acc"])


def read_alpha_npy(directory: str | os.PathLike, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """``(normal, reduce)`` softmaxed alphas from ``normal_NNN.npy`` / ``reduce_NNN.npy``."""
    directory = Path(directory)
    arrays = []
    for kind in ("normal", "reduce"):
        file = directory / f"{kind}_{epoch:03d}.npy"
        try:
            arr = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise LegacyFormatError(f"{file}: no such file") from None
        except (ValueError, OSError) as exc:
            raise LegacyFormatError(f"{file}: not a plain .npy array: {exc}") from None
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise LegacyFormatError(f"{file}: expected a 2-D float array (edges x ops), got "
                                    f"shape {arr.shape} dtype {arr.dtype}")
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise LegacyFormatError(f"{directory}: epoch {epoch}: normal shape {arrays[0].shape} "
                                f"!= reduce shape {arrays[1].shape}")
    return arrays[0], arrays[1]
