"""Command line: ``python -m nas_core COMMAND`` (download, search, genotype, train, test, memory,
predict, export, status).

The options mirror the workflow's config (config/config.yaml): ``--config FILE --dataset NAME``
takes the dataset's block (``datasets: {NAME: {data:, search:, train:, test:}}``) over the
file's top-level shared ``search:`` / ``train:`` / ``test:`` blocks and the built-in defaults
(``nas_core.config``); ``--set STAGE.KEY=VALUE`` overrides single keys (values are YAML:
``3``, ``0.1``, ``true``, ``null``).  Paths default to the workflow's layout under
``results/NAME/``.  ``predict`` and ``export`` take a results folder (``results/NAME``) and use
the trained model there (:mod:`nas_core.inference`, :mod:`nas_core.export`).  ``memory STAGE``
prints a stage's expected peak memory per device without running it
(:mod:`nas_core.stages.estimate`).  ``status`` lists the workflow's outputs that another results
version made (:mod:`nas_core.outdated`): what the next run recomputes after an upgrade.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from nas_core import __version__, versions
from nas_core.fileio import dumps_json
from nas_core.config import SEARCH_DEFAULTS, STAGES, ConfigError, describe
from nas_core.data import download_data
from nas_core.distributed import slurm_env
from nas_core.errors import is_known, one_line
from nas_core.resolve import DatasetConfig, resolve_dataset
from nas_core.stages import run_genotype, run_search, run_test, run_train
from nas_core.stages.common import setup_logging
from nas_core.stages.estimate import estimate_stage, format_estimate

__all__ = ["main", "build_parser", "resolve_config", "CliError", "COMMANDS"]

COMMANDS = ("download", "search", "genotype", "train", "test", "memory", "predict", "export",
            "status")


class CliError(ValueError):
    """A bad command line or config file (one line)."""


# -- config assembly ----------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML as the safe loader reads it, but ``1e-4`` is a number (YAML 1.2), not the text
    PyYAML's YAML 1.1 rules make of it (they want ``1.0e-4``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _load_yaml(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=_Loader)
    except OSError as exc:
        raise CliError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        first = one_line(exc, 200)
        raise CliError(f"config file {path}: not valid YAML: {first}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise CliError(f"config file {path}: top level must be a mapping")
    return doc


def _parse_set(items: Sequence[str], default_stage: str | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--set {item!r}: expected KEY=VALUE (e.g. search.epochs=3)")
        key, text = item.split("=", 1)
        key = key.strip()
        if "." in key:
            block, name = key.split(".", 1)
        elif default_stage is not None:
            block, name = default_stage, key
        else:
            raise CliError(f"--set {item!r}: give the block, e.g. data.{key}=...")
        if block not in ("data",) + STAGES or not name:
            raise CliError(f"--set {item!r}: the key must start with data., "
                           f"{', '.join(b + '.' for b in STAGES)}")
        try:
            value = yaml.load(text, Loader=_Loader) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out.setdefault(block, {})[name] = value
    return out


def resolve_config(config: str | None, dataset: str | None, sets: Sequence[str],
                   default_stage: str | None = None) -> tuple[str, dict[str, dict]]:
    """``(dataset name, {"data": ..., "search": ..., "train": ..., "test": ...})`` from a config
    file in the workflow's format, a dataset name and ``--set`` overrides (not yet validated:
    the stage validates its block)."""
    name, resolved = _resolve(config, dataset, sets, default_stage, validate=False)
    return name, resolved.blocks()


def _resolve(config: str | None, dataset: str | None, sets: Sequence[str],
             default_stage: str | None, *, validate: bool) -> tuple[str, DatasetConfig]:
    """The dataset's settings through :func:`nas_core.resolve.resolve_dataset`, the resolver
    the workflow uses too."""
    doc = _load_yaml(config)
    datasets = doc.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise CliError(f"config file {config}: 'datasets' must be a mapping")
    overrides = _parse_set(sets, default_stage)
    if dataset is None:
        data_name = (overrides.get("data") or {}).get("name")
        if data_name is not None:
            dataset = str(data_name)
        elif len(datasets) == 1:
            dataset = next(iter(datasets))
        else:
            known = ", ".join(datasets) if datasets else "none in the config"
            raise CliError(f"choose a dataset with --dataset (known: {known})")
    try:
        return dataset, resolve_dataset(doc, dataset, overrides, validate=validate)
    except ConfigError as exc:
        where = f"config file {config}: " if config else ""
        raise CliError(f"{where}{exc}") from None


def _searched_alphas(base: Path) -> str:
    """The one search's ``alphas.json`` under ``base/search/seed*/`` (the workflow's layout)."""
    found = sorted(str(p) for p in base.glob("search/seed*/alphas.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError(f"no search results under {base}/search/seed*/: give SOURCE")
    raise CliError(f"several searches under {base}/search/ ({', '.join(found)}): give SOURCE "
                   f"(the workflow's selection picks one)")


# -- parser ---------------------------------------------------------------------------------------
def _keys_epilog(stages: Sequence[str]) -> str:
    lines = ["config keys (--set BLOCK.KEY=VALUE; default in brackets):"]
    for stage in stages:
        for key, default, text in describe(stage):
            shown = json.dumps(default)
            lines.append(f"  {stage}.{key} [{shown}]: {text}")
    lines.append("  data.name [--dataset] and the dataset's own options: see nas_core.data")
    return "\n".join(lines)


def _common(p: argparse.ArgumentParser, stage: str | None) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help="YAML config in the workflow's format (default: none, built-in "
                        "defaults only)")
    p.add_argument("--dataset", metavar="NAME", default=None,
                   help="dataset block of the config (default: the only one in the config, "
                        "or data.name from --set)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                   help="override one config key, e.g. search.epochs=3 or data.seed=1; a key "
                        f"without a block means {stage + '.' if stage else 'data.'}KEY; "
                        "repeatable (default: none)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder of the datasets' files (default: the workflow's: resources, "
                        "or resources/NAME when data.name differs from NAME)")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="also write the log to FILE (default: stderr only)")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA if available, "
                        "else CPU)")


def _nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", metavar="N", type=int, default=None,
                   help="data-parallel processes (torch.distributed: NCCL on the first N "
                        "visible GPUs, gloo on the CPU; default: 1)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m nas_core", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    parser.add_argument("--version", action="version",
                        version=f"nas_core {__version__} (results: {versions.describe()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="fetch a dataset's files into --data-root",
                       description="Fetch the dataset's files into DATA_ROOT/NAME/ (nothing "
                                   "for digits).", formatter_class=fmt)
    _common(p, None)

    p = sub.add_parser("search", help="DARTS search: alphas.json, supernet.pt, history.json",
                       description="Run or resume the DARTS search (checkpoints in "
                                   "OUT/checkpoints/).", formatter_class=fmt,
                       epilog=_keys_epilog(["search"]))
    _common(p, "search")
    _device(p)
    _nproc(p)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: results/NAME/search)")

    p = sub.add_parser("genotype", help="genotype.json from alphas, a name or legacy text",
                       description="Write genotype.json from SOURCE: the search's "
                                   "alphas.json, a published genotype name (e.g. DARTS_V2), a "
                                   "legacy train_search.py log.txt, or a text or JSON file "
                                   "holding a genotype.", formatter_class=fmt)
    p.add_argument("source", nargs="?", default=None,
                   help="alphas.json, genotype name or file (default: "
                        "results/NAME/search/alphas.json)")
    p.add_argument("--dataset", metavar="NAME", default=None,
                   help="dataset, for the default paths (default: none)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="output file (default: results/NAME/genotype.json, or genotype.json "
                        "without --dataset)")
    p.add_argument("--max-skip", metavar="M", type=int, default=None,
                   help="at most M skip connections in a DARTS search's normal cell "
                        "(P-DARTS' limit, the config's genotype.max_skip; default: none)")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="also write the log to FILE (default: stderr only)")

    p = sub.add_parser("train", help="train the network of a genotype: model.pt, history.json",
                       description="Run or resume full training (checkpoints in "
                                   "OUT/checkpoints/).", formatter_class=fmt,
                       epilog=_keys_epilog(["train"]))
    _common(p, "train")
    _device(p)
    _nproc(p)
    p.add_argument("--genotype", metavar="FILE", default=None,
                   help="genotype.json (default: results/NAME/genotype.json)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: results/NAME/train)")

    p = sub.add_parser("test", help="evaluate a model on the test split: test.json, "
                                    "test_predictions.csv",
                       description="Evaluate MODEL (built from GENOTYPE and the train "
                                   "config's layers, init_channels, auxiliary) on the test "
                                   "split.", formatter_class=fmt,
                       epilog=_keys_epilog(["test", "train"]))
    _common(p, "test")
    _device(p)
    p.add_argument("--genotype", metavar="FILE_OR_NAME", default=None,
                   help="genotype.json or a published genotype name (default: "
                        "results/NAME/genotype.json)")
    p.add_argument("--model", metavar="FILE", default=None,
                   help="model state dict (default: results/NAME/train/model.pt)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="output file (default: results/NAME/test.json); the per-sample "
                        "predictions go beside it (test.json -> test_predictions.csv)")

    p = sub.add_parser("memory", help="a stage's expected peak memory per device, without "
                                      "running it",
                       description="Measure STAGE's step at two small batches on the device "
                                   "(the stage's own network, optimizers, amp and memory "
                                   "format, on random data of the dataset's shape), fit peak = "
                                   "fixed + per sample x batch, and print the expected peak per "
                                   "device for the configured batch and for --batch-sizes, "
                                   "against the budget (memory_limit, else the device's free "
                                   "memory).  With batch_size auto, also the batch the stage "
                                   "would choose (measured).", formatter_class=fmt,
                       epilog=_keys_epilog(["search", "train", "test"]))
    p.add_argument("stage", choices=["search", "train", "select", "test"],
                   help="the stage whose step is measured")
    _common(p, None)
    _device(p)
    p.add_argument("--batch-sizes", metavar="B,B,...", default="",
                   help="also give the estimate at these batch sizes per device, e.g. "
                        "32,64,128 (default: the configured batch only)")
    p.add_argument("--genotype", metavar="FILE_OR_NAME", default=None,
                   help="train, select, test: genotype.json or a published name, e.g. "
                        "DARTS_V2 (default: results/NAME/genotype.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("predict", help="predictions of a trained model for image or netCDF files",
                       description="Print the predictions of the model in RESULTS (e.g. "
                                   "results/mnist: model.json or test.json, genotype.json, "
                                   "train/model.pt) for image files (resized to the model's "
                                   "input size) and netCDF files (every sample of the image "
                                   "variable), one tab-separated line per input.",
                       formatter_class=fmt)
    p.add_argument("results", metavar="RESULTS", help="results folder of a dataset")
    p.add_argument("files", metavar="FILE", nargs="+", help="image or netCDF files")
    p.add_argument("--var", default=None,
                   help="image variable of the netCDF files (default: the dataset's image_var)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="also write the log to FILE (default: stderr only)")

    p = sub.add_parser("export", help="write a trained model as TorchScript, exported program "
                                      "or ONNX",
                       description="Write the model in RESULTS (normalisation included: inputs "
                                   "on the data's scale, N x C x H x W) as a file that loads "
                                   "without nas_core, load it back and compare its outputs "
                                   "with nas_core's.", formatter_class=fmt)
    p.add_argument("results", metavar="RESULTS", help="results folder of a dataset")
    p.add_argument("--format", dest="fmt", default="torchscript",
                   choices=["torchscript", "onnx", "exported-program"],
                   help="torchscript (torch.jit.load), exported-program (torch.export.load) or "
                        "onnx (needs pip install 'nas-core[onnx]'); default: torchscript")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="output file (default: RESULTS/export/model.torchscript.pt, "
                        "model.pt2 or model.onnx)")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="also write the log to FILE (default: stderr only)")

    p = sub.add_parser("status", help="the workflow's outputs made by another results version",
                       description="List every existing output of the workflow's datasets "
                                   "that another results version of nas_core made (or an "
                                   "earlier nas_core that recorded none), one line each: "
                                   "what the next run recomputes.  Nothing printed: every "
                                   "output is this nas_core's.  The config is the workflow's: "
                                   "config/config.yaml (when present), then each --config "
                                   "file over it, as snakemake --configfile does.",
                       formatter_class=fmt)
    p.add_argument("--config", metavar="FILE", action="append", default=[],
                   help="a config file over config/config.yaml (repeatable; default: none)")
    p.add_argument("--results", metavar="DIR", default="results",
                   help="results folder (default: results)")
    p.add_argument("--resources", metavar="DIR", default="resources",
                   help="folder of download.json (default: resources)")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="also write the log to FILE (default: stderr only)")
    return parser


# -- status ---------------------------------------------------------------------------------------
def _deep_update(base: dict, over: dict) -> dict:
    """``over`` into ``base`` key by key, nested mappings merged (Snakemake's --configfile)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _status(args: argparse.Namespace) -> Any:
    from nas_core import outdated
    from nas_core.pipeline import resolve_datasets

    default = Path("config") / "config.yaml"
    doc: dict = _load_yaml(str(default)) if default.is_file() else {}
    for path in args.config:
        _deep_update(doc, _load_yaml(path))
    doc.setdefault("datasets", {})
    doc.setdefault("targets", [])
    try:
        datasets = resolve_datasets(doc)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    stale = outdated.outdated(datasets, results=args.results, resources=args.resources,
                              snakemake_dir=".snakemake")
    if args.json:
        return [{"rule": s.rule, "output": s.output, "made_by": s.made, "now": s.now,
                 "tracked": s.tracked, "line": s.line()} for s in stale]
    return "".join(line + "\n" for line in outdated.lines(stale))


# -- main -----------------------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> Any:
    cmd = args.command
    if cmd in ("predict", "export"):
        if cmd == "export":
            from nas_core.export import export_model

            return export_model(args.results, args.fmt, args.out)
        from nas_core.inference import format_rows, load_model, predict_files

        rows = predict_files(load_model(args.results, device=args.device), args.files,
                             var=args.var)
        return rows if args.json else format_rows(rows)
    if cmd == "status":
        return _status(args)
    if cmd == "genotype":
        base = Path("results") / args.dataset if args.dataset else None
        source = args.source or (_searched_alphas(base) if base else None)
        if source is None:
            raise CliError("give SOURCE (alphas.json, a genotype name or file) or --dataset")
        out = args.out or (base / "genotype.json" if base else Path("genotype.json"))
        genotype = run_genotype(source, out, max_skip=args.max_skip)
        return {"genotype": genotype.to_dict(), "output": str(out)}

    block = args.stage if cmd == "memory" else None if cmd == "download" else cmd
    name, ds = _resolve(args.config, args.dataset, args.sets, block, validate=False)
    base, root = ds.results, args.data_root or ds.data_root
    if cmd == "memory":
        return _memory(args, ds, base, root)
    if cmd == "download":
        return {"files": [str(p) for p in download_data(ds.data, root)]}
    if cmd == "search":
        seed = ds.search.get("seed", SEARCH_DEFAULTS["seed"])  # the workflow's folder
        return run_search(ds.data, ds.search, args.out or base / "search" / f"seed{seed}",
                          data_root=root, device=args.device, nproc=args.nproc)
    if cmd == "train":
        return run_train(ds.data, ds.train, args.genotype or base / "genotype.json",
                         args.out or base / "train", data_root=root, device=args.device,
                         nproc=args.nproc)
    if cmd == "test":
        return run_test(ds.data, ds.train, ds.test, args.genotype or base / "genotype.json",
                        args.model or base / "train" / "model.pt",
                        args.out or base / "test.json", data_root=root, device=args.device)
    raise CliError(f"unknown command {cmd!r}")  # pragma: no cover


def _memory(args: argparse.Namespace, ds: DatasetConfig, base: Path, root: str | Path) -> Any:
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise CliError(f"--batch-sizes {args.batch_sizes!r}: expected integers, e.g. "
                       f"32,64,128") from None
    if any(b < 1 for b in sizes):
        raise CliError(f"--batch-sizes {args.batch_sizes!r}: batch sizes start at 1")
    genotype = args.genotype or base / "genotype.json"
    if args.stage != "search" and args.genotype is None and not Path(genotype).is_file():
        raise CliError(f"{genotype}: no such file; give --genotype (a genotype.json or a "
                       f"published name such as DARTS_V2)")
    blocks = ds.blocks()
    doc = estimate_stage(args.stage, ds.data, blocks[args.stage], train_cfg=blocks["train"],
                         genotype=genotype, data_root=root, device=args.device,
                         batch_sizes=sizes)
    return doc if args.json else format_estimate(doc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 error with a one-line message, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    remove_logging = setup_logging(args.log)
    try:
        result = _run(args)
    except Exception as exc:  # noqa: BLE001 (known errors become one line, others propagate)
        if os.environ.get("NAS_CORE_DEBUG") or not (
                is_known(exc) or isinstance(exc, (ValueError, OSError))):
            raise
        msg = one_line(exc)
        print(f"python -m nas_core {args.command}: error: {msg}", file=sys.stderr)
        return 1
    finally:
        remove_logging()
    slurm = slurm_env()
    if slurm is None or slurm["rank"] == 0:  # one result per run, also from srun's tasks
        sys.stdout.write(result if isinstance(result, str) else dumps_json(result))
    return 0
