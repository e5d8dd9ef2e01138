"""The model card: ``results/{dataset}/model.json``, what :func:`nas_core.load_model` reads.

:func:`write_model_card` runs after the test stage (the workflow's ``model_card`` rule).  The
card's facts come from the data layer (``load_data``: input size, channels, normalisation,
class names, target standardisation), the train config (the network's build arguments), the
results folder (``genotype.json``, ``train/model.pt``'s sha256) and ``test.json`` (the test
metric; the test stage also wrote the per-sample predictions, ``test_predictions.csv``).  The
card is then checked: its own preprocessing, run on up to 64 raw test samples, must give the
network the data layer's inputs (a warning otherwise).  The format and the card built from
``test.json`` alone are :mod:`nas_core.inference`'s.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from nas_core import __version__, versions
from nas_core.config import validate_stage_cfg
from nas_core.data import load_data
from nas_core.fileio import atomic_write_text, sha256_file
from nas_core.inference import CARD_FILE, CARD_FORMAT, TrainedModel, build_network, read_json
from nas_core.stages.test import load_model_file
from nas_core.tasks import get_task

__all__ = ["write_model_card"]

log = logging.getLogger("nas_core.stages.model_card")

#: Raw test samples the card's preprocessing is checked on.
CHECK_SAMPLES = 64


def write_model_card(data: dict, train_cfg: dict, folder: str | os.PathLike, *,
                     dataset: str | None = None, data_root: str | os.PathLike = "resources",
                     genotype_source: str | None = None, card_out: str | os.PathLike | None = None,
                     device: str | torch.device | None = None) -> dict:
    """Write ``card_out`` (default ``folder/model.json``) and return the card.

    ``folder`` is ``results/{dataset}`` after the test stage (``test.json``, ``genotype.json``,
    ``train/model.pt``); ``data`` / ``train_cfg`` are the dataset's config blocks;
    ``genotype_source`` defaults to test.json's; ``device`` (default: CUDA when available) runs
    the preprocessing check."""
    folder = Path(folder)
    name = dataset or folder.name
    train_cfg = validate_stage_cfg("train", train_cfg)
    test = read_json(folder / "test.json")
    bundle = load_data(data, data_root)
    task = get_task(bundle.task)
    norm = bundle.source.get("normalize") or {}
    weights = folder / "train" / "model.pt"
    card = {
        "format": CARD_FORMAT,
        "dataset": name,
        "data": bundle.name,
        "task": bundle.task,
        "network": {"in_channels": bundle.in_channels, "num_outputs": bundle.num_outputs,
                    "layers": train_cfg["layers"], "init_channels": train_cfg["init_channels"],
                    "auxiliary": train_cfg["auxiliary"]},
        "genotype": read_json(folder / "genotype.json"),
        "genotype_source": genotype_source if genotype_source is not None
        else test.get("genotype_source"),
        "weights": "train/model.pt",
        "weights_sha256": sha256_file(weights) if weights.is_file() else None,
        "preprocessing": {
            "in_channels": bundle.in_channels,
            "input_size": [int(bundle.input_size[0]), int(bundle.input_size[1])],
            "scale": "uint8 pixels / 255; float data as stored",
            "mean": norm.get("mean"), "std": norm.get("std"),
            "pad_to_multiple": None,
        },
        "class_names": (list(bundle.class_names) if bundle.class_names is not None
                        else [str(i) for i in range(bundle.num_outputs)])
        if bundle.task == "classification" else None,
        "target_stats": bundle.target_stats if bundle.task == "regression" else None,
        "netcdf": ({"image_var": bundle.source["image_var"],
                    "layout": bundle.source.get("layout")}
                   if bundle.source.get("image_var") else None),
        "test": {"metric": task.metric, "value": (test.get("metrics") or {}).get(task.metric),
                 "num_samples": test.get("num_samples")},
        "nas_core_version": __version__,
        "results_version": versions.for_stage("model_card"),
    }
    network = build_network(card)
    load_model_file(network, weights)
    card["preprocessing"]["pad_to_multiple"] = int(network.size_multiple)
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    _check_preprocessing(TrainedModel(network, card).to(dev), bundle, dev)
    card_out = Path(card_out) if card_out is not None else folder / CARD_FILE
    atomic_write_text(card_out, json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card


@torch.no_grad()
def _check_preprocessing(model: TrainedModel, bundle, device: torch.device) -> None:
    """The card's preprocessing on raw test samples must give the network's outputs on the data
    layer's samples."""
    test = bundle.test
    if not all(hasattr(test, a) for a in ("images", "indices")) or len(test) == 0:
        return
    n = min(CHECK_SAMPLES, len(test))
    reference = model.network(torch.stack([torch.as_tensor(test[k][0]) for k in range(n)])
                              .to(device)).float().cpu()
    raw = torch.as_tensor(test.images)[torch.as_tensor(test.indices[:n])]
    raw = raw.float().div(255.0) if raw.dtype == torch.uint8 else raw.float()
    mine = model.network(model.preprocess(raw.to(device))).float().cpu()
    diff = float((mine - reference).abs().max())
    if not diff <= 1e-3 * max(1.0, float(reference.abs().max())):
        log.warning("model card %s: the card's preprocessing gives outputs %.3g away from the "
                    "data layer's on raw test samples", model.dataset, diff)
