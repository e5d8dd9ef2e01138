"""Genotypes: the discrete architecture of a DARTS cell pair.

A :class:`Genotype` lists, for the normal and the reduction cell, the ``(operation, input)``
pairs of every intermediate node (two per node, in order) and the node indices that are
concatenated into the cell output.  States 0 and 1 are the two cell inputs; node ``k`` (list
positions ``2k`` and ``2k+1``) is state ``k + 2`` and may read states ``0 .. k + 1``.

This module also holds the derivation rule of the original DARTS code
(:func:`derive_genotype`), a safe parser of the legacy ``Genotype(...)`` text found in 2019 logs
(:func:`parse_legacy_genotype`), and the published genotypes by name (:func:`get_genotype`).
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nas_core.errors import NasCoreError
from nas_core.fileio import atomic_write_text
from nas_core.ops import PARAMETER_FREE, PRIMITIVES, has_op, list_ops

__all__ = [
    "Genotype",
    "GenotypeError",
    "derive_genotype",
    "parse_legacy_genotype",
    "get_genotype",
    "list_genotypes",
]

CellSpec = tuple[tuple[str, int], ...]

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


class GenotypeError(NasCoreError, ValueError):
    """A genotype (or its JSON / legacy text) is malformed; the message names the fault."""


def _fail(source: str | None, message: str) -> GenotypeError:
    return GenotypeError(f"{source}: {message}" if source else message)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _normalize_cell(name: str, value: Any, source: str | None) -> CellSpec:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(source, f"{name}: expected a list of (operation, input) pairs, "
                            f"got {type(value).__name__}")
    items = list(value)
    if not items:
        raise _fail(source, f"{name}: empty; a cell needs at least one node (two entries)")
    if len(items) % 2:
        raise _fail(source, f"{name}: {len(items)} entries; every node needs exactly two "
                            f"inputs (an even number of entries)")
    cell = []
    for pos, item in enumerate(items):
        if isinstance(item, (str, bytes)) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise _fail(source, f"{name}[{pos}]: expected an (operation, input) pair, got {item!r}")
        op, j = item
        if not isinstance(op, str):
            raise _fail(source, f"{name}[{pos}]: operation must be a string, got {op!r}")
        if not has_op(op):
            raise _fail(source, f"{name}[{pos}]: unknown operation {op!r}; "
                                f"known: {', '.join(list_ops())}")
        if not _is_int(j):
            raise _fail(source, f"{name}[{pos}]: input index must be an integer, got {j!r}")
        node = pos // 2
        if not 0 <= j <= node + 1:
            raise _fail(source, f"{name}[{pos}]: input {int(j)} out of range for node {node} "
                                f"(allowed 0..{node + 1})")
        cell.append((op, int(j)))
    return tuple(cell)


def _normalize_concat(name: str, value: Any, n_states: int, source: str | None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(source, f"{name}: expected a list of state indices, "
                            f"got {type(value).__name__}")
    items = list(value)
    if not items:
        raise _fail(source, f"{name}: empty; at least one state must be concatenated")
    out = []
    for pos, idx in enumerate(items):
        if not _is_int(idx):
            raise _fail(source, f"{name}[{pos}]: state index must be an integer, got {idx!r}")
        if not 0 <= idx < n_states:
            raise _fail(source, f"{name}[{pos}]: state {int(idx)} out of range "
                                f"(allowed 0..{n_states - 1})")
        if int(idx) in out:
            raise _fail(source, f"{name}[{pos}]: state {int(idx)} listed twice")
        out.append(int(idx))
    return tuple(out)


@dataclass(frozen=True)
class Genotype:
    """Immutable, validated genotype; lists and ranges are normalised to tuples."""

    normal: CellSpec
    normal_concat: tuple[int, ...]
    reduce: CellSpec
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        self._validate(None)

    def _validate(self, source: str | None) -> None:
        normal = _normalize_cell("normal", self.normal, source)
        reduce = _normalize_cell("reduce", self.reduce, source)
        object.__setattr__(self, "normal", normal)
        object.__setattr__(self, "reduce", reduce)
        object.__setattr__(self, "normal_concat", _normalize_concat(
            "normal_concat", self.normal_concat, len(normal) // 2 + 2, source))
        object.__setattr__(self, "reduce_concat", _normalize_concat(
            "reduce_concat", self.reduce_concat, len(reduce) // 2 + 2, source))

    @classmethod
    def _build(cls, values: dict[str, Any], source: str | None) -> "Genotype":
        """Construct with ``source`` prefixed to validation errors."""
        obj = object.__new__(cls)
        for name in _FIELDS:
            object.__setattr__(obj, name, values[name])
        obj._validate(source)
        return obj

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, list]:
        """Plain JSON-able dict: pairs as ``[op, input]`` lists, concats as lists."""
        return {
            "normal": [[op, j] for op, j in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, j] for op, j in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> "Genotype":
        """Inverse of :meth:`to_dict`; exactly the four keys are required."""
        if not isinstance(d, dict):
            raise _fail(source, f"genotype must be a JSON object, got {type(d).__name__}")
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise _fail(source, f"genotype lacks key {missing[0]!r} "
                                f"(needs {', '.join(_FIELDS)})")
        extra = sorted(str(k) for k in d if k not in _FIELDS)
        if extra:
            raise _fail(source, f"genotype has unknown key {extra[0]!r} "
                                f"(allowed {', '.join(_FIELDS)})")
        return cls._build(d, source)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, compact separators, one trailing newline."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str | None = None) -> "Genotype":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _fail(source, f"invalid JSON: {exc}") from None
        return cls.from_dict(d, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` atomically (temporary file in the same folder, fsync, rename)."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Genotype":
        """Read a genotype JSON file; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise GenotypeError(f"{path}: not UTF-8 text: {exc}") from None
        return cls.from_json(text, source=str(path))

    # -- convenience -------------------------------------------------------------------------
    @property
    def steps_normal(self) -> int:
        return len(self.normal) // 2

    @property
    def steps_reduce(self) -> int:
        return len(self.reduce) // 2

    def parameter_free(self, cell: str = "normal") -> int:
        """How many of ``cell``'s ("normal" or "reduce") operations have no weights: pooling,
        ``skip_connect`` (the identity; on a reduction cell's strided edges it is a
        FactorizedReduce, counted all the same, as the DARTS literature counts skips) and
        ``none`` (:data:`PARAMETER_FREE`): the figure a collapsed search drives up."""
        return sum(op in PARAMETER_FREE for op, _ in getattr(self, cell))

    def to_legacy(self) -> str:
        """The original ``Genotype(normal=[...], normal_concat=[...], ...)`` text."""
        def cell(c: CellSpec) -> str:
            return "[" + ", ".join(f"({op!r}, {j})" for op, j in c) + "]"
        return (f"Genotype(normal={cell(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={cell(self.reduce)}, reduce_concat={list(self.reduce_concat)})")


# -- derivation from alphas (the original rule) ------------------------------------------------
def _as_matrix(name: str, weights: Any, n_edges: int, n_ops: int) -> np.ndarray:
    if hasattr(weights, "detach"):  # torch tensor (any device / dtype, incl. bf16)
        weights = weights.detach().float().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_edges, n_ops):
        raise GenotypeError(f"{name}: expected shape ({n_edges}, {n_ops}) (edges x ops), "
                            f"got {tuple(w.shape)}")
    if not np.all(np.isfinite(w)):
        raise GenotypeError(f"{name}: contains NaN or infinite values")
    return w


def _parse_cell(w: np.ndarray, primitives: Sequence[str], steps: int) -> list[tuple[str, int]]:
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    gene: list[tuple[str, int]] = []
    start, n = 0, 2
    for i in range(steps):
        W = w[start:start + n]
        # Stable sort on the negated best non-none weight: ties keep the lower input first.
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in candidates))[:2]
        for j in edges:
            k_best = None
            for k in candidates:  # strict '>' : the first maximum wins
                if k_best is None or W[j][k] > W[j][k_best]:
                    k_best = k
            gene.append((primitives[k_best], j))
        start += n
        n += 1
    return gene


def _limit_skips(w: np.ndarray, primitives: Sequence[str], steps: int,
                 max_skip: int) -> list[tuple[str, int]]:
    """P-DARTS' derivation limit (Chen et al., "Progressive Differentiable Architecture
    Search", ICCV 2019, section 3.3): while the derived cell keeps more than ``max_skip``
    ``skip_connect`` operations, the kept skip with the smallest weight is taken out of its
    edge (its weight set below every other) and the cell is derived again, so that edge's
    next-best operation, or the node's next-best edge, takes its place."""
    w = np.array(w, dtype=np.float64)
    skip = list(primitives).index("skip_connect")
    starts = [sum(t + 2 for t in range(i)) for i in range(steps)]
    while True:
        gene = _parse_cell(w, primitives, steps)
        kept = [starts[k // 2] + j for k, (op, j) in enumerate(gene) if op == "skip_connect"]
        if len(kept) <= max_skip:
            return gene
        weakest = min(kept, key=lambda row: (w[row][skip], row))
        w[weakest][skip] = -np.inf


def derive_genotype(weights_normal: Any, weights_reduce: Any,
                    primitives: Sequence[str] = PRIMITIVES, steps: int = 4,
                    multiplier: int = 4, max_skip: int | None = None) -> Genotype:
    """Genotype from softmaxed architecture weights (edges x ops), by the original DARTS rule.

    For node i keep the two incoming edges with the largest best non-``none`` weight (stable:
    ties go to the lower input), strongest first; on each, the best non-``none`` op (first
    maximum wins).  Concat is ``range(2 + steps - multiplier, steps + 2)``.  ``max_skip``
    (``genotype.max_skip``; None: DARTS as published): at most that many skip connections in
    the normal cell, by P-DARTS' rule (:func:`_limit_skips`).
    """
    primitives = tuple(primitives)
    if steps < 1:
        raise GenotypeError(f"steps must be >= 1, got {steps}")
    if not 1 <= multiplier <= steps:
        raise GenotypeError(f"multiplier must be in 1..{steps} (steps), got {multiplier}")
    if not any(p != "none" for p in primitives):
        raise GenotypeError(f"primitives {primitives!r}: no operation other than 'none'")
    n_edges = steps * (steps + 3) // 2
    wn = _as_matrix("weights_normal", weights_normal, n_edges, len(primitives))
    wr = _as_matrix("weights_reduce", weights_reduce, n_edges, len(primitives))
    concat = tuple(range(2 + steps - multiplier, steps + 2))
    if max_skip is not None and "skip_connect" in primitives:
        if max_skip < 0:
            raise GenotypeError(f"max_skip must be >= 0, got {max_skip}")
        normal = _limit_skips(wn, primitives, steps, max_skip)
    else:
        normal = _parse_cell(wn, primitives, steps)
    return Genotype(normal=tuple(normal), normal_concat=concat,
                    reduce=tuple(_parse_cell(wr, primitives, steps)), reduce_concat=concat)


# -- legacy text ------------------------------------------------------------------------------
def _describe(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every parsed node
        text = type(node).__name__
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(node).__name__} `{text}` at column {getattr(node, 'col_offset', 0) + 1}"


def _literal(node: ast.AST) -> Any:
    """Evaluate literals, lists, tuples and ``range(...)`` of ints; reject anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
            and isinstance(node.operand, ast.Constant) and _is_int(node.operand.value):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "range":
            if node.keywords or not 1 <= len(node.args) <= 3:
                raise GenotypeError(f"legacy genotype: range() takes 1 to 3 positional "
                                    f"integers: {_describe(node)}")
            args = [_literal(a) for a in node.args]
            if not all(_is_int(a) for a in args):
                raise GenotypeError(f"legacy genotype: range() arguments must be integers: "
                                    f"{_describe(node)}")
            return list(range(*args))
        raise GenotypeError(f"legacy genotype: call not allowed (only Genotype and range): "
                            f"{_describe(node)}")
    raise GenotypeError(f"legacy genotype: construct not allowed (only literals, lists, "
                        f"tuples, range): {_describe(node)}")


def parse_legacy_genotype(text: str) -> Genotype:
    """Parse ``Genotype(normal=[('op', j), ...], normal_concat=range(2, 6), ...)`` without eval."""
    if not isinstance(text, str):
        raise GenotypeError(f"legacy genotype: expected text, got {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise GenotypeError(f"legacy genotype: not a Python expression: {exc.msg} "
                            f"(column {exc.offset})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id == "Genotype"):
        if isinstance(call, ast.Call):
            raise GenotypeError(f"legacy genotype: call not allowed (only Genotype and range): "
                                f"{_describe(call)}")
        raise GenotypeError(f"legacy genotype: expected a Genotype(...) call, got "
                            f"{_describe(call)}")
    if len(call.args) > len(_FIELDS):
        raise GenotypeError(f"legacy genotype: Genotype() takes at most {len(_FIELDS)} "
                            f"positional arguments, got {len(call.args)}")
    values: dict[str, Any] = {}
    for name, arg in zip(_FIELDS, call.args):
        if isinstance(arg, ast.Starred):
            raise GenotypeError(f"legacy genotype: construct not allowed: {_describe(arg)}")
        values[name] = _literal(arg)
    for kw in call.keywords:
        if kw.arg is None:
            raise GenotypeError(f"legacy genotype: construct not allowed: **{_describe(kw.value)}")
        if kw.arg not in _FIELDS:
            raise GenotypeError(f"legacy genotype: unknown field {kw.arg!r} "
                                f"(allowed {', '.join(_FIELDS)})")
        if kw.arg in values:
            raise GenotypeError(f"legacy genotype: field {kw.arg!r} given twice")
        values[kw.arg] = _literal(kw.value)
    missing = [k for k in _FIELDS if k not in values]
    if missing:
        raise GenotypeError(f"legacy genotype: missing field {missing[0]!r}")
    return Genotype._build(values, "legacy genotype")


# -- published genotypes ---------------------------------------------------------------------
# Product data: the genotypes of quark0/darts (genotypes.py) and of the 2019 capstone fork.
# Operation order inside normal / reduce is significant (it fixes state-dict indices).

NASNet = Genotype(
    normal=[
        ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
        ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
        ("sep_conv_3x3", 1), ("skip_connect", 1),
    ],
    normal_concat=(2, 3, 4, 5, 6),
    reduce=[
        ("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
        ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
        ("sep_conv_3x3", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=(4, 5, 6),
)

AmoebaNet = Genotype(
    normal=[
        ("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
        ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
        ("skip_connect", 0), ("avg_pool_3x3", 1),
    ],
    normal_concat=(4, 5, 6),
    reduce=[
        ("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
        ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5),
    ],
    reduce_concat=(3, 4, 6),
)

DARTS_V1 = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0),
    ],
    reduce_concat=(2, 3, 4, 5),
)

DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=(2, 3, 4, 5),
)

CIFAR_10 = DARTS_V2  # alias used by the fork"s dataset-named lookups

MNIST = Genotype(
    normal=[
        ("max_pool_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("sep_conv_3x3", 2),
        ("sep_conv_3x3", 3), ("sep_conv_3x3", 2), ("sep_conv_5x5", 4), ("sep_conv_3x3", 3),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("avg_pool_3x3", 0), ("avg_pool_3x3", 1), ("avg_pool_3x3", 0), ("avg_pool_3x3", 1),
        ("avg_pool_3x3", 0), ("dil_conv_5x5", 3), ("avg_pool_3x3", 0), ("dil_conv_5x5", 4),
    ],
    reduce_concat=(2, 3, 4, 5),
)

FASHION_MNIST = Genotype(
    normal=[
        ("skip_connect", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 1), ("skip_connect", 0),
        ("sep_conv_5x5", 3), ("sep_conv_3x3", 0), ("sep_conv_3x3", 4), ("sep_conv_5x5", 1),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("avg_pool_3x3", 0), ("dil_conv_3x3", 1), ("avg_pool_3x3", 0), ("skip_connect", 2),
        ("avg_pool_3x3", 0), ("dil_conv_5x5", 2), ("avg_pool_3x3", 0), ("skip_connect", 2),
    ],
    reduce_concat=(2, 3, 4, 5),
)

GRAPHENE = Genotype(
    normal=[
        ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 2), ("skip_connect", 1),
        ("avg_pool_3x3", 3), ("avg_pool_3x3", 2), ("avg_pool_3x3", 3), ("skip_connect", 4),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("skip_connect", 0), ("skip_connect", 1), ("sep_conv_5x5", 2), ("sep_conv_3x3", 0),
        ("avg_pool_3x3", 3), ("avg_pool_3x3", 2), ("sep_conv_5x5", 4), ("sep_conv_3x3", 2),
    ],
    reduce_concat=(2, 3, 4, 5),
)

GALAXY_ZOO = Genotype(
    normal=[
        ("dil_conv_3x3", 0), ("dil_conv_5x5", 1), ("dil_conv_5x5", 2), ("max_pool_2x2", 0),
        ("dil_conv_5x5", 0), ("sep_conv_5x5", 2), ("sep_conv_5x5", 4), ("max_pool_3x3", 1),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2),
        ("dil_conv_5x5", 2), ("dil_conv_5x5", 3), ("dil_conv_5x5", 4), ("dil_conv_5x5", 0),
    ],
    reduce_concat=(2, 3, 4, 5),
)

CHEST_XRAY_V1 = Genotype(
    normal=[
        ("max_pool_3x3", 0), ("dil_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_5x5", 2), ("skip_connect", 2), ("max_pool_3x3", 0),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_5x5", 2), ("dil_conv_5x5", 0),
        ("dil_conv_5x5", 3), ("sep_conv_5x5", 2), ("sep_conv_5x5", 2), ("dil_conv_5x5", 3),
    ],
    reduce_concat=(2, 3, 4, 5),
)

CHEST_XRAY_20191206_UNNAMED = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("max_pool_3x3", 1),
        ("sep_conv_5x5", 2), ("sep_conv_3x3", 3), ("skip_connect", 2), ("max_pool_3x3", 0),
    ],
    normal_concat=(2, 3, 4, 5),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("dil_conv_5x5", 2), ("dil_conv_5x5", 0),
        ("max_pool_3x3", 3), ("dil_conv_5x5", 2), ("dil_conv_5x5", 3), ("sep_conv_3x3", 4),
    ],
    reduce_concat=(2, 3, 4, 5),
)

#: The fork's ``CHEST_XRAY``: the cell of the chest X-ray search logged on 2019-12-04 ("best
#: discovered architecture for ChestXRay 2019-12-04", epoch 4), named so in the fork's
#: genotypes.py from 2019-12-04 and used to train its chest-xray runs 1-3 (their genotype.arch).
#: On 2019-12-06 the fork renamed it CHEST_XRAY_V1 (hence equal to it).  The fork's earlier
#: ``CHEST_XRAY = DARTS_V2`` (2019-12-03) was a placeholder before any chest X-ray search: not
#: this name's meaning here (DARTS_V2 keeps its own name).
CHEST_XRAY = CHEST_XRAY_V1

_PUBLISHED: dict[str, Genotype] = {
    "NASNet": NASNet,
    "AmoebaNet": AmoebaNet,
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "CIFAR_10": CIFAR_10,
    "MNIST": MNIST,
    "FASHION_MNIST": FASHION_MNIST,
    "GRAPHENE": GRAPHENE,
    "GALAXY_ZOO": GALAXY_ZOO,
    "CHEST_XRAY": CHEST_XRAY,
    "CHEST_XRAY_V1": CHEST_XRAY_V1,
    "CHEST_XRAY_20191206_UNNAMED": CHEST_XRAY_20191206_UNNAMED,
}

#: ``DARTS`` in the original code meant DARTS_V2.
_ALIASES = {"DARTS": "DARTS_V2"}


def _lookup_key(name: str) -> str:
    return name.strip().upper().replace("-", "_").replace(" ", "_")


_BY_KEY = {_lookup_key(k): k for k in _PUBLISHED}
_BY_KEY.update({_lookup_key(a): t for a, t in _ALIASES.items()})


def list_genotypes() -> list[str]:
    """Names of the published genotypes, in publication order."""
    return list(_PUBLISHED)


def get_genotype(name: str) -> Genotype:
    """A published genotype by name.

    Matching ignores case and treats ``-`` and spaces as ``_``, so dataset names work:
    ``darts_v2``, ``DARTS`` (= DARTS_V2), ``cifar-10`` (= DARTS_V2), ``fashion-mnist``.
    """
    canonical = _BY_KEY.get(_lookup_key(name)) if isinstance(name, str) else None
    if canonical is None:
        raise GenotypeError(f"unknown genotype {name!r}; known: {', '.join(list_genotypes())}")
    return _PUBLISHED[canonical]
