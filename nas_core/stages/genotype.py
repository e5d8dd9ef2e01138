"""The genotype stage: ``genotype.json`` from the search's alphas, a published name, or legacy text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nas_core.fileio import atomic_write_text
from nas_core.genotypes import (Genotype, GenotypeError, derive_genotype, get_genotype,
                                parse_legacy_genotype)
from nas_core.legacy import read_search_log
from nas_core.resolve import genotype_source_kind
from nas_core.stages.common import StageError

__all__ = ["run_genotype", "load_genotype_source", "load_genotype_file", "ALPHAS_FORMAT"]

log = logging.getLogger("nas_core.stages.genotype")

ALPHAS_FORMAT = "nas_core.alphas/1"


def _from_alphas(doc: dict, source: str, max_skip: int | None = None) -> Genotype:
    if max_skip is not None and doc.get("method", "darts") != "darts":
        log.info("%s: genotype.max_skip %d not applied: the cell was sampled (search.method "
                 "%s), not derived", source, max_skip, doc["method"])
        max_skip = None
    try:
        weights = doc["weights"]
        args = (weights["normal"], weights["reduce"], doc["primitives"], int(doc["steps"]),
                int(doc["multiplier"]))
        genotype = derive_genotype(*args, max_skip=max_skip)
        if max_skip is not None:
            plain = derive_genotype(*args)
            log.info("genotype.max_skip %d: %d skip connections in the derived normal cell, "
                     "%d of its operations changed by the limit", max_skip,
                     sum(op == "skip_connect" for op, _ in plain.normal),
                     sum(a != b for a, b in zip(plain.normal, genotype.normal)))
        return genotype
    except (KeyError, TypeError) as exc:
        raise StageError(f"{source}: alphas file lacks {exc}") from None
    except GenotypeError as exc:
        raise StageError(f"{source}: {exc}") from None


def _legacy_expression(text: str) -> str | None:
    """The last balanced ``Genotype(...)`` expression in ``text``, or None."""
    start = text.rfind("Genotype(")
    if start < 0:
        return None
    depth = 0
    for i in range(start + len("Genotype"), len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def _from_text(path: Path, text: str) -> Genotype:
    source = str(path)
    if "genotype = Genotype(" in text:  # a train_search.py log: its last logged genotype
        try:
            found = read_search_log(path).final_genotype
        except ValueError as exc:
            log.warning("%s: not readable as a search log (%s); looking for a Genotype(...) "
                        "text", source, exc)
            found = None
        if found is not None:
            return found
    expr = _legacy_expression(text)
    if expr is None:
        raise StageError(f"{source}: neither JSON (alphas or genotype) nor a legacy log or "
                         f"Genotype(...) text")
    try:
        return parse_legacy_genotype(expr)
    except GenotypeError as exc:
        raise StageError(f"{source}: {exc}") from None


def load_genotype_source(source: str | Path, *, max_skip: int | None = None) -> Genotype:
    """A Genotype from ``source``: an existing file (``alphas.json`` of the search stage, a
    genotype JSON, a JSON object with a ``"genotype"`` entry such as ``test.json``, a legacy
    ``train_search.py`` log.txt, or any text holding a legacy ``Genotype(...)``), else a
    published genotype name (:func:`nas_core.genotypes.get_genotype`); a missing file is an
    error when ``source`` looks like a path (:func:`nas_core.resolve.genotype_source_kind`).
    ``max_skip``: P-DARTS' limit on a DARTS search's derived normal cell
    (:func:`nas_core.genotypes.derive_genotype`); a cell given as such is kept as it is."""
    path = Path(source)
    if not path.is_file():
        text_source = str(source)
        if genotype_source_kind(text_source) == "file":
            raise StageError(f"genotype source {text_source}: no such file")
        try:
            return get_genotype(text_source)
        except GenotypeError as exc:
            raise StageError(f"genotype source {text_source!r}: not a file, and {exc}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StageError(f"{path}: not a text file") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if doc is not None:
        if isinstance(doc, dict) and doc.get("format") == ALPHAS_FORMAT:
            return _from_alphas(doc, str(path), max_skip)
        if isinstance(doc, dict) and "genotype" in doc and "normal" not in doc:
            doc = doc["genotype"]
        try:
            return Genotype.from_dict(doc, source=str(path))
        except GenotypeError as exc:
            raise StageError(str(exc)) from None
    return _from_text(path, text)


def load_genotype_file(path: str | Path) -> Genotype:
    """Read a canonical ``genotype.json``; a one-line StageError names the file on any fault."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"genotype file {path}: no such file")
    try:
        return Genotype.load(path)
    except GenotypeError as exc:
        msg = str(exc)
        raise StageError(msg if str(path) in msg else f"{path}: {msg}") from None


def run_genotype(source: str | Path, output: str | Path, *,
                 max_skip: int | None = None) -> Genotype:
    """Write ``output`` (canonical JSON of the genotype, atomically) from ``source`` (see
    :func:`load_genotype_source`; ``max_skip``: ``genotype.max_skip``); returns the
    genotype."""
    genotype = load_genotype_source(source, max_skip=max_skip)
    atomic_write_text(output, genotype.to_json())
    log.info("genotype from %s: %s -> %s", source, genotype.to_legacy(), output)
    return genotype
