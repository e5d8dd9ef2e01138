"""Export a trained model as a file that loads without nas_core.

:func:`export_model` writes the whole :class:`~nas_core.inference.TrainedModel` (the data
layer's normalisation, the network, regression outputs in the targets' units) as TorchScript,
a ``torch.export`` program or ONNX, each taking any batch size; the model card goes with it as
``nas_core.json`` (TorchScript / exported program extra file, ONNX metadata).
:func:`load_exported` loads such a file back the way a user without nas_core would.

::

    from nas_core.export import export_model, load_exported
    export_model("results/mnist", "onnx")     # results/mnist/export/model.onnx, checked
    load_exported("results/mnist/export/model.onnx")(x)
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from nas_core.fileio import atomic_write_bytes
from nas_core.inference import CARD_FILE, InferenceError, TrainedModel, load_model

__all__ = ["export_model", "load_exported", "EXPORT_FORMATS"]

log = logging.getLogger(__name__)

#: ``--format`` of :func:`export_model` -> default file name in ``results/{dataset}/export/``.
EXPORT_FORMATS = {"torchscript": "model.torchscript.pt", "exported-program": "model.pt2",
                  "onnx": "model.onnx"}


def _example(model: TrainedModel, batch: int = 2) -> torch.Tensor:
    if model.input_size is None:
        raise InferenceError(f"{model.dataset}: the input size is unknown (no {CARD_FILE}); "
                             f"run the workflow's model_card rule for this dataset")
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, model.in_channels, *model.input_size, generator=g)


def _card_text(model: TrainedModel, fmt: str) -> str:
    card = dict(model.card)
    card["export"] = {
        "format": fmt,
        "input": "N x C x H x W float32 on the data's scale (uint8 pixels / 255); the file "
                 "normalises it",
        "output": ("logits N x classes" if model.task == "classification"
                   else "predictions N x 1 in the targets' units"),
        "torch_version": torch.__version__,
    }
    return json.dumps(card, indent=2)


def export_model(source: str | os.PathLike | TrainedModel, fmt: str,
                 out: str | os.PathLike | None = None, *, check: bool = True) -> dict:
    """Write ``source`` (a results folder or a loaded model) as ``fmt`` (``torchscript``,
    ``exported-program``, ``onnx``) to ``out`` (default ``results/{dataset}/export/`` +
    :data:`EXPORT_FORMATS` name).  The file holds the whole :class:`TrainedModel` (normalisation,
    network, regression units), takes any batch size and loads without nas_core.  With
    ``check``, it is loaded back and run on a random batch; returns ``{"path", "format",
    "max_abs_diff"}`` (the largest difference from the nas_core model, None without check)."""
    if fmt not in EXPORT_FORMATS:
        raise InferenceError(f"unknown export format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")
    model = source if isinstance(source, TrainedModel) else load_model(source)
    model = model.to("cpu").float().eval()
    if out is None:
        if isinstance(source, TrainedModel):
            raise InferenceError("give the output file of a loaded model")
        out = Path(source) / "export" / EXPORT_FORMATS[fmt]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _example(model)
    card = _card_text(model, fmt)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / deprecation warnings of the exporters
        if fmt == "torchscript":
            traced = torch.jit.trace(model, example, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf, _extra_files={"nas_core.json": card})
            atomic_write_bytes(out, buf.getvalue())
        elif fmt == "exported-program":
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            buf = io.BytesIO()
            torch.export.save(program, buf, extra_files={"nas_core.json": card})
            atomic_write_bytes(out, buf.getvalue())
        else:
            atomic_write_bytes(out, _onnx_bytes(model, example, card))
    result = {"path": str(out), "format": fmt, "max_abs_diff": None}
    if check:
        x = _example(model, batch=3)  # another batch size than the traced one
        with torch.no_grad():
            ref = model(x)
            got = load_exported(out, fmt)(x)
        result["max_abs_diff"] = float((got - ref).abs().max())
    log.info("export %s: %s (%s)", model.dataset, out, fmt)
    return result


def _onnx_bytes(model: TrainedModel, example: torch.Tensor, card: str) -> bytes:
    try:
        import onnx
    except ImportError:
        raise InferenceError("ONNX export needs the onnx package: pip install "
                             "'nas-core[onnx]' (onnx, onnxscript, onnxruntime)") from None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        kwargs = dict(input_names=["images"], output_names=["outputs"],
                      dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
                      opset_version=18)
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(model, (example,), str(path), **kwargs)
        proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "nas_core.json", card
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def load_exported(path: str | os.PathLike, fmt: str | None = None):
    """A callable ``x -> outputs`` (torch tensors) of an exported file, loaded the way a user
    without nas_core would (``torch.jit.load``, ``torch.export.load``, onnxruntime or the onnx
    reference evaluator)."""
    path = Path(path)
    fmt = fmt or {".onnx": "onnx", ".pt2": "exported-program"}.get(path.suffix, "torchscript")
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        return lambda x: module(x)
    if fmt == "exported-program":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))
        return lambda x: torch.from_numpy(evaluator.run(None, {"images": x.numpy()})[0])
