"""Use a trained model: load it and predict.

A dataset's results folder (``results/{dataset}/``) holds everything a trained network needs:

- ``model.json``, the *model card* (written by the workflow's ``model_card`` rule,
  :func:`nas_core.stages.model_card.write_model_card`): the network's build arguments and
  genotype, the weights file, the preprocessing (input channels and size, per-channel
  ``mean``/``std`` of the normalisation, the zero padding the network applies), the class names
  (classification) or the targets' standardisation (regression), the test metric and where the
  netCDF images are (``image_var``, ``layout``);
- ``train/model.pt`` and ``genotype.json``.

Without ``model.json`` (stages run from the CLI), :func:`load_model` reads the same facts
from ``test.json`` (only the input size may then be unknown).

::

    from nas_core import load_model
    model = load_model("results/mnist")       # TrainedModel, eval mode, on the CPU
    model(x)                                  # x: N x C x H x W on the [0, 1] scale -> logits
    model.predict(x).names                    # class names (or values, for regression)
    model.preprocess(x); model.network        # the normalisation; the EvalNetwork itself

``TrainedModel.forward`` takes images on the data's own scale (uint8 pixels / 255, float data
as stored), normalises them as the data layer did and returns the network's logits
(classification) or predictions in the targets' units (regression, also when the targets were
standardised for training).  :mod:`nas_core.export` writes that module as a file that loads
without nas_core.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from nas_core.errors import NasCoreError
from nas_core.genotypes import Genotype

__all__ = ["TrainedModel", "Prediction", "load_model", "model_card", "build_network",
           "read_inputs", "predict_files", "format_rows", "read_json", "CARD_FILE",
           "CARD_FORMAT", "InferenceError"]

#: The model card's file name in a results folder, and its ``format``.
CARD_FILE = "model.json"
CARD_FORMAT = "nas_core.model_card/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


class InferenceError(NasCoreError, ValueError):
    """A results folder, model card or input file that cannot be used (one line)."""


# -- the model -----------------------------------------------------------------------------


@dataclass
class Prediction:
    """What :meth:`TrainedModel.predict` returns for ``N`` inputs.

    ``outputs``: logits ``N x K`` (classification) or values ``N x 1`` (regression, targets'
    units); ``labels``: class indices ``N`` or values ``N``; ``names``: class names
    (classification) or values as floats; ``probabilities``: softmax ``N x K`` (None for
    regression); ``confidence``: the predicted class's probability ``N`` (None for
    regression)."""

    outputs: torch.Tensor
    labels: torch.Tensor
    names: list
    probabilities: torch.Tensor | None
    confidence: torch.Tensor | None


class TrainedModel(nn.Module):
    """A trained evaluation network with its preprocessing, in eval mode.

    ``forward(x)``: ``x`` ``N x C x H x W`` on the data's scale (images: pixels / 255) ->
    normalised (``(x - mean) / std`` per channel, as the data layer did) -> the network's
    logits, or for regression its predictions in the targets' units.  Attributes: ``network``
    (the :class:`~nas_core.model_eval.EvalNetwork`), ``card`` (the model card dict), ``task``,
    ``class_names``, ``in_channels``, ``input_size`` (H, W, or None when unknown), ``dataset``
    (the display name: the results folder's name)."""

    def __init__(self, network: nn.Module, card: dict):
        super().__init__()
        self.network = network.eval()
        self.card = card
        pre = card.get("preprocessing") or {}
        self.task: str = card["task"]
        self.dataset: str = card.get("dataset", "")
        self.in_channels: int = int(pre.get("in_channels") or card["network"]["in_channels"])
        size = pre.get("input_size")
        self.input_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if size else None
        self.class_names: list[str] | None = (list(card["class_names"])
                                              if card.get("class_names") else None)
        mean, std = pre.get("mean"), pre.get("std")
        c = self.in_channels
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean if self.normalize else [0.0] * c,
                                                  dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std if self.normalize else [1.0] * c,
                                                 dtype=torch.float32).view(1, c, 1, 1))
        stats = card.get("target_stats")
        self.standardized = bool(stats) and self.task == "regression"
        self.target_mean = float(stats["mean"]) if self.standardized else 0.0
        self.target_std = float(stats["std"]) if self.standardized else 1.0
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation of the data layer (per-channel mean and std), as tensor ops."""
        x = x.float() if not torch.is_floating_point(x) else x
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(self.preprocess(x))
        if isinstance(out, tuple):  # a network left in training mode
            out = out[0]
        if self.standardized:
            out = out * self.target_std + self.target_mean
        return out

    def train(self, mode: bool = True) -> "TrainedModel":
        """Always eval: a loaded model is for inference (BatchNorm statistics, no drop-path)."""
        return super().train(False)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> Prediction:
        """Predictions for ``x`` (``N x C x H x W`` or one ``C x H x W`` image, data scale)."""
        if x.dim() == 3:
            x = x.unsqueeze(0)
        device = next(self.network.parameters()).device
        outs = [self(x[k:k + batch_size].to(device)).float().cpu()
                for k in range(0, x.shape[0], batch_size)]
        outputs = torch.cat(outs) if outs else torch.empty(0, self.card["network"]["num_outputs"])
        if self.task == "classification":
            probs = torch.softmax(outputs, dim=1)
            conf, labels = probs.max(dim=1)
            names = [self.class_names[i] if self.class_names else str(i)
                     for i in labels.tolist()]
            return Prediction(outputs, labels, names, probs, conf)
        values = outputs.squeeze(-1)
        return Prediction(outputs, values, [float(v) for v in values.tolist()], None, None)


def read_json(path: Path) -> Any:
    """A results folder's JSON file (model card, test.json, genotype.json); InferenceError
    (one line) when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InferenceError(f"{path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InferenceError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _card_from_test_json(folder: Path) -> dict:
    """The model card's facts as far as ``test.json`` (and ``genotype.json``) give them."""
    test_path = folder / "test.json"
    if not test_path.is_file():
        raise InferenceError(f"{folder}: no {CARD_FILE} and no test.json: run the workflow "
                             f"(or python -m nas_core test) for this dataset first")
    test = read_json(test_path)
    data = test.get("data") or {}
    net = test.get("network") or {}
    missing = [k for k in ("in_channels", "num_outputs", "layers", "init_channels")
               if k not in net]
    if missing:
        raise InferenceError(f"{test_path}: no network.{missing[0]} (written by an older "
                             f"nas_core?)")
    norm = data.get("normalize") or {}
    size = data.get("size")
    metrics = test.get("metrics") or {}
    task = test.get("task", "classification")
    metric = "top1" if task == "classification" else "r2"
    genotype = test.get("genotype")
    if (folder / "genotype.json").is_file():
        genotype = read_json(folder / "genotype.json")
    weights = folder / "train" / "model.pt"
    return {
        "format": CARD_FORMAT,
        "dataset": folder.name,
        "data": data.get("dataset"),
        "task": task,
        "network": {k: net[k] for k in ("in_channels", "num_outputs", "layers",
                                        "init_channels", "auxiliary") if k in net},
        "genotype": genotype,
        "genotype_source": test.get("genotype_source"),
        "weights": "train/model.pt",
        "weights_sha256": (test.get("model") or {}).get("sha256") if weights.is_file() else None,
        "preprocessing": {
            "in_channels": net["in_channels"],
            "input_size": list(size) if size else None,
            "scale": "uint8 pixels / 255; float data as stored",
            "mean": norm.get("mean"), "std": norm.get("std"),
        },
        "class_names": data.get("class_names") if task == "classification" else None,
        "target_stats": data.get("standardize") if task == "regression" else None,
        "netcdf": ({"image_var": data["image_var"], "layout": data.get("layout")}
                   if data.get("image_var") else None),
        "test": {"metric": metric, "value": metrics.get(metric),
                 "num_samples": test.get("num_samples")},
        "nas_core_version": test.get("nas_core_version"),
    }


def model_card(folder: str | os.PathLike) -> dict:
    """The model card of a results folder: ``model.json``, else what ``test.json`` says."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InferenceError(f"{folder}: no such results folder")
    path = folder / CARD_FILE
    if path.is_file():
        card = read_json(path)
        if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
            raise InferenceError(f"{path}: not a nas_core model card ({CARD_FORMAT})")
        return card
    return _card_from_test_json(folder)


def build_network(card: dict) -> nn.Module:
    """The :class:`EvalNetwork` a model card describes (untrained)."""
    from nas_core.model_eval import EvalNetwork

    net = card["network"]
    try:
        geno = Genotype.from_dict(card["genotype"])
    except Exception as exc:  # noqa: BLE001 - a bad card: one line
        raise InferenceError(f"model card of {card.get('dataset')}: bad genotype "
                             f"({type(exc).__name__}: {exc})") from None
    return EvalNetwork(geno, int(net["in_channels"]), int(net["init_channels"]),
                       int(net["num_outputs"]), int(net["layers"]),
                       auxiliary=bool(net.get("auxiliary", False)))


def load_model(folder: str | os.PathLike, *, device: str | torch.device = "cpu",
               weights: str | os.PathLike | None = None) -> TrainedModel:
    """The trained network of ``folder`` (``results/{dataset}``) in eval mode, with its
    preprocessing and class names (:class:`TrainedModel`); ``weights`` overrides the card's
    ``train/model.pt``."""
    from nas_core.stages.test import load_model_file

    folder = Path(folder)
    card = model_card(folder)
    network = build_network(card)
    load_model_file(network, Path(weights) if weights is not None else folder / card["weights"])
    model = TrainedModel(network, card)
    return model.to(device)


# -- inputs: image files and netCDF files ------------------------------------------------------


def _read_image(path: Path, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image

    if channels not in (1, 3):
        raise InferenceError(f"{path}: the model takes {channels}-channel inputs; image files "
                             f"give 1 (grey) or 3 (RGB): use a netCDF file")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            w, h = im.size
    except InferenceError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise InferenceError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return data.view(h, w, channels).permute(2, 0, 1).float().div(255.0)


def _read_netcdf(path: Path, card: dict, var: str | None) -> torch.Tensor:
    import numpy as np
    import xarray as xr

    from nas_core.data.netcdf import resolve_dims

    info = card.get("netcdf") or {}
    var = var or info.get("image_var")
    try:
        ds = xr.open_dataset(path, decode_times=False)
    except Exception as exc:  # noqa: BLE001
        raise InferenceError(f"{path}: not a readable netCDF file ({type(exc).__name__}: "
                             f"{exc})") from None
    with ds:
        if var is None:
            candidates = [str(n) for n, v in ds.data_vars.items() if v.ndim in (3, 4)]
            if len(candidates) != 1:
                raise InferenceError(f"{path}: give the image variable with --var (candidates: "
                                     f"{', '.join(candidates) or 'none'})")
            var = candidates[0]
        if var not in ds.variables:
            raise InferenceError(f"{path}: no variable {var!r} (variables: "
                                 f"{', '.join(map(str, ds.variables))})")
        arr = ds[var]
        dims = tuple(map(str, arr.dims))
        layout = info.get("layout") or {}
        configured = {k: v for k, v in layout.items() if v in dims} or None
        try:
            roles = resolve_dims(dims, configured, None, f"{path} variable {var!r}")
        except Exception as exc:  # noqa: BLE001 - DataError: one line
            raise InferenceError(str(exc)) from None
        images = np.asarray(arr.transpose(*roles.values()).values, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    x = torch.from_numpy(np.ascontiguousarray(images))
    if not torch.isfinite(x).all():
        raise InferenceError(f"{path} variable {var!r}: NaN/inf values")
    return x


def read_inputs(card: dict, files: Sequence[str | os.PathLike], *,
                var: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """``(inputs N x C x H x W on the data's scale, one label per input)`` of image files
    (resized to the model's input size when it is known) and netCDF files (every sample of the
    image variable: the card's ``image_var``, or ``var``; labels ``file[i]``)."""
    pre = card.get("preprocessing") or {}
    channels = int(pre.get("in_channels") or card["network"]["in_channels"])
    size = tuple(pre["input_size"]) if pre.get("input_size") else None
    tensors, labels = [], []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise InferenceError(f"{p}: no such file")
        suffix = p.suffix.lower()
        if suffix in NETCDF_SUFFIXES:
            x = _read_netcdf(p, card, var)
            tensors.append(x)
            labels += [f"{p}[{i}]" for i in range(x.shape[0])]
        elif suffix in IMAGE_SUFFIXES:
            tensors.append(_read_image(p, channels, size).unsqueeze(0))
            labels.append(str(p))
        else:
            raise InferenceError(f"{p}: unknown input type {suffix or '(no suffix)'}: image "
                                 f"files ({', '.join(IMAGE_SUFFIXES)}) or netCDF "
                                 f"({', '.join(NETCDF_SUFFIXES)})")
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise InferenceError(f"inputs of different shapes {sorted(shapes)}")
    if tensors:
        c, h, w = tensors[0].shape[1:]
        if c != channels:
            raise InferenceError(f"{files[0]}: {c} channel(s), the model takes {channels}")
        if size is not None and (h, w) != size:
            raise InferenceError(f"{files[0]}: samples are {h}x{w} (H x W), the model was "
                                 f"trained on {size[0]}x{size[1]}")
    x = torch.cat(tensors) if tensors else torch.empty(0, channels, *(size or (1, 1)))
    return x, labels


def predict_files(model: TrainedModel, files: Sequence[str | os.PathLike], *,
                  var: str | None = None, batch_size: int = 256) -> list[dict]:
    """One row per input (``input``, ``prediction``, and for classification ``class`` index
    and ``probability``)."""
    x, labels = read_inputs(model.card, files, var=var)
    pred = model.predict(x, batch_size=batch_size)
    rows = []
    for i, label in enumerate(labels):
        if model.task == "classification":
            rows.append({"input": label, "prediction": pred.names[i],
                         "class": int(pred.labels[i]),
                         "probability": float(pred.confidence[i])})
        else:
            rows.append({"input": label, "prediction": float(pred.labels[i])})
    return rows


def format_rows(rows: Iterable[dict]) -> str:
    """Prediction rows as tab-separated lines with a header."""
    rows = list(rows)
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["\t".join(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            cells.append(f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else str(v))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"
