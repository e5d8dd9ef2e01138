"""The test stage: evaluate a trained model on the test split and write ``test.json`` and the
per-sample predictions ``test_predictions.csv`` (one pass over the split gives both).

The network is rebuilt from the genotype (a genotype.json path or a published name) and the
train config (``layers``, ``init_channels``, ``auxiliary``); ``model`` is loaded with
``torch.load(weights_only=True)`` and ``strict=True``.  Model files of the original DARTS code
load too: a plain state dict (missing BatchNorm ``num_batches_tracked`` entries are filled in),
also when wrapped as ``{"state_dict": ...}`` / ``{"model": ...}`` or saved from
``nn.DataParallel`` (``module.`` prefixes).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from nas_core import __version__, versions
from nas_core.fileio import atomic_write_json, sha256_file
from nas_core.config import validate_stage_cfg
from nas_core.data import load_data
from nas_core.errors import one_line
from nas_core.fileio import atomic_write_text
from nas_core.memory import Probe
from nas_core.model_eval import EvalNetwork, count_parameters
from nas_core.stages.budget import plan_batch
from nas_core.stages.common import StageError
from nas_core.stages.genotype import load_genotype_file, load_genotype_source
from nas_core.stages.runtime import Runtime, index_batches
from nas_core.tasks import get_task

__all__ = ["run_test", "test_probe", "load_model_file"]

log = logging.getLogger("nas_core.stages.test")


def _shape(t: Any) -> str:
    return "x".join(map(str, tuple(t.shape))) if hasattr(t, "shape") else type(t).__name__


def _unwrap(state: Any, path: Path) -> Mapping[str, Any]:
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise StageError(f"model file {path}: not a state dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = type(state)((k[len("module."):], v) for k, v in state.items())
    return state


def load_model_file(model: torch.nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` (strict); StageError naming the file and the first
    missing / unexpected key or wrong shape otherwise."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"model file {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = one_line(exc, 200)
        raise StageError(f"model file {path}: cannot be read ({type(exc).__name__}: "
                         f"{reason})") from None
    state = _unwrap(state, path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    what = "does not match the network (genotype, layers, init_channels, auxiliary?)"
    if missing:
        raise StageError(f"model file {path} {what}: missing key {missing[0]!r} "
                         f"({len(missing)} missing)")
    if unexpected:
        raise StageError(f"model file {path} {what}: unexpected key {unexpected[0]!r} "
                         f"({len(unexpected)} unexpected)")
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(expected[k].shape):
            raise StageError(f"model file {path} {what}: {k!r} has shape {_shape(v)}, the "
                             f"network expects {_shape(expected[k])}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StageError(f"model file {path} {what}: "
                         f"{one_line(exc, 300)}") from None


def _network(train_cfg: dict, geno, bundle) -> EvalNetwork:
    return EvalNetwork(geno, bundle.in_channels, train_cfg["init_channels"], bundle.num_outputs,
                       train_cfg["layers"], auxiliary=train_cfg["auxiliary"])


def test_probe(train_cfg: dict, geno, bundle, runtime: Runtime) -> Probe:
    """The test stage's forward pass (eval mode, no gradients) at a given batch on random data
    of ``bundle``'s shape (:mod:`nas_core.memory`)."""

    @torch.no_grad()
    def run(batch: int) -> None:
        net = runtime.model(_network(train_cfg, geno, bundle)).eval()
        x, _ = runtime.batch(torch.randn(batch, bundle.in_channels, *bundle.input_size),
                             torch.zeros(batch))
        with runtime.autocast():
            net(x)

    return run


test_probe.__test__ = False  # a stage function, not a pytest test where it is imported


def _resolve_genotype(genotype: str | Path):
    p = Path(genotype)
    if p.is_file() and p.suffix == ".json":
        return load_genotype_file(p)
    return load_genotype_source(genotype)


def _predictions_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run_test(data: dict, train_cfg: dict, cfg: dict, genotype: str | Path, model: str | Path,
             output: str | Path, *, predictions: str | Path | None = None,
             data_root: str | Path = "resources",
             device: str | torch.device | None = None) -> dict:
    """Evaluate ``model`` on the test split of ``data``; write ``predictions`` (default:
    beside ``output``, named after it: ``test.json`` -> ``test_predictions.csv``), then
    ``output`` (test.json), and return test.json's content.

    ``test_predictions.csv``: one row per test sample in the split's order (``index``,
    ``target``, ``prediction``; classification adds ``target_name``, ``prediction_name``,
    ``probability``; regression in the targets' original units), from the same outputs as the
    metrics (:meth:`nas_core.tasks.Task.prediction_rows`).

    ``test.json``: ``dataset``, ``task``, ``metrics`` (classification: ``top1``, ``top5``
    (percent; top-k with k = min(5, classes)), ``loss`` (mean cross entropy),
    ``per_class_accuracy`` (percent per class index, null for a class without test samples),
    and ``per_class_accuracy_by_name`` when the data names its classes (netcdf labels,
    image-folder class folders; the names are also in ``data.class_names``); regression:
    ``r2`` (over the whole split), ``mse``, ``mae``, ``loss`` (mean MSE), in the targets'
    original units also when the data standardised them (``standardize``)),
    ``num_samples``, ``batch`` (``{"batch_size", "auto"}``: the evaluation batch, chosen by
    ``batch_size: auto`` or configured), ``num_parameters`` (without the auxiliary head),
    ``genotype`` (dict), ``genotype_source``, ``network`` (in_channels, num_outputs, layers,
    init_channels, auxiliary), ``model`` (path as given, sha256, bytes), ``data`` (the data
    layer's source identifiers) and ``nas_core_version``.
    """
    output = Path(output)
    predictions = (Path(predictions) if predictions is not None
                   else output.with_name(f"{output.stem}_predictions.csv"))
    train_cfg = validate_stage_cfg("train", train_cfg)
    cfg = validate_stage_cfg("test", cfg)
    geno = _resolve_genotype(genotype)
    runtime = Runtime.resolve(cfg, device, channels_last=train_cfg["channels_last"])
    bundle = load_data(data, data_root)
    task = get_task(bundle.task)

    net = _network(train_cfg, geno, bundle)
    load_model_file(net, model)
    n = len(bundle.test)
    plan = plan_batch("test", cfg, test_probe(train_cfg, geno, bundle, runtime), runtime,
                      samples=max(1, n))
    net = runtime.model(net)

    outputs, targets = [], []
    with plan.guard(cfg):
        for out, y in runtime.outputs(net, bundle.test, index_batches(range(n), plan.batch_size)):
            outputs.append(out.float().cpu())
            targets.append(y.cpu())
    if not outputs:
        raise StageError(f"{bundle.name}: the test split is empty")
    out, tgt = torch.cat(outputs), torch.cat(targets)
    if bundle.target_stats is not None:  # standardised targets: metrics in the original units
        mean, std = float(bundle.target_stats["mean"]), float(bundle.target_stats["std"])
        out = out.double().mul(std).add(mean).float()
        tgt = tgt.double().mul(std).add(mean).float()
    metrics = task.test_metrics(out, tgt, class_names=bundle.class_names)

    model_path = Path(model)
    result = {
        "results_version": versions.for_stage("test"),
        "dataset": bundle.name,
        "task": task.name,
        "metrics": metrics,
        "num_samples": n,
        "batch": plan.record(),
        "num_parameters": count_parameters(net, exclude_auxiliary=True),
        "genotype": geno.to_dict(),
        "genotype_source": str(genotype),
        "network": {"in_channels": bundle.in_channels, "num_outputs": bundle.num_outputs,
                    "layers": train_cfg["layers"], "init_channels": train_cfg["init_channels"],
                    "auxiliary": train_cfg["auxiliary"]},
        "model": {"path": str(model), "sha256": sha256_file(model_path),
                  "bytes": model_path.stat().st_size},
        "data": bundle.source,
        "nas_core_version": __version__,
    }
    atomic_write_text(predictions, _predictions_csv(
        task.prediction_rows(out, tgt, class_names=bundle.class_names)))
    atomic_write_json(output, result)
    log.info("test on %s: %s", bundle.name,
             " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return result
