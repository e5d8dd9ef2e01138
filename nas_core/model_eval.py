"""The evaluation network: a stack of cells built from a genotype (the original ``NetworkCIFAR``).

The module tree equals the original's key for key (``stem``, ``cells.{i}.preprocess0/1``,
``cells.{i}._ops.{k}``, ``auxiliary_head.features.{2,3,5,6}``, ``auxiliary_head.classifier``,
``global_pooling``, ``classifier``), so the authors' checkpoints load with ``strict=True``.
Differences: any number of input channels and outputs, inputs of any H x W (zero-padded to a
multiple of 2 ** reductions), an auxiliary head that also works on feature maps other than 8x8,
an out-of-place drop-path, and ``forward`` returning the logits tensor in eval mode (the
original returns ``(logits, None)``, which neither traces nor exports).

``EvalNetwork(..., recompute=True)`` runs cells under activation recomputation
(:func:`nas_core.recompute.checkpointed`) in training mode with gradients on: less memory, one
more forward of those cells per backward; same gradients, the same drop-path masks, BatchNorm
running statistics updated once, the global RNG state as without.  Which cells:
:attr:`EvalNetwork.recompute_cells`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from nas_core.genotypes import Genotype
from nas_core.network_parts import build_cells, pad_to_multiple, reduction_layers
from nas_core.ops import FactorizedReduce, Identity, ReLUConvBN, create_op
from nas_core.recompute import (RecomputedCells, checkpointed, recompute_active,
                                recompute_plan)

__all__ = ["EvalNetwork", "EvalCell", "AuxiliaryHead", "AuxiliaryPool", "drop_path",
           "count_parameters", "fill_num_batches_tracked"]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (out of place)."""
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty((x.size(0), 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x.div(keep_prob).mul(mask)


class EvalCell(nn.Module):
    """One normal or reduction cell of a genotype (original ``Cell``)."""

    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        spec, concat = ((genotype.reduce, genotype.reduce_concat) if reduction
                        else (genotype.normal, genotype.normal_concat))
        self.reduction = reduction
        self._steps = len(spec) // 2
        self._indices = tuple(j for _, j in spec)
        self._concat = tuple(concat)
        self.multiplier = len(concat)
        self._ops = nn.ModuleList(
            create_op(name, c, 2 if reduction and j < 2 else 1, True) for name, j in spec)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        apply_drop = self.training and drop_prob > 0.0
        for i in range(self._steps):
            out = None
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if apply_drop and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                out = h if out is None else out + h
            states.append(out)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryPool(nn.Module):
    """The original ``AvgPool2d(5, stride=3, count_include_pad=False)`` on 8x8 features (-> 2x2);
    adaptive average pooling to 2x2 on any other size (the original crashes there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (8, 8):
            return F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False)
        return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHead(nn.Module):
    """Original ``AuxiliaryHeadCIFAR`` (keys ``features.{2,3,5,6}``, ``classifier``)."""

    def __init__(self, c: int, num_outputs: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # the original is in place; out of place keeps s1 intact
            AuxiliaryPool(),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


class EvalNetwork(RecomputedCells, nn.Module):
    """Original ``NetworkCIFAR`` generalised to ``in_channels`` inputs and ``num_outputs`` outputs.

    ``forward(x)``: in eval mode (inference) the logits tensor ``N x num_outputs``, so the
    network traces and exports as is (``torch.jit.trace``, ``torch.export``, ONNX); in training
    mode ``(logits, logits_aux)``, ``logits_aux`` None unless ``auxiliary`` (the head is used
    in training only).  ``logits(x)`` is the logits tensor in either mode.  Set
    ``drop_path_prob`` per epoch (used in training mode only).  ``recompute``: cells'
    activations are recomputed in the backward pass instead of kept (training mode with
    gradients on; see the module docstring and :attr:`recompute_cells`).
    """

    def __init__(self, genotype: Genotype, in_channels: int, channels: int, num_outputs: int,
                 layers: int, auxiliary: bool = False, drop_path_prob: float = 0.0,
                 stem_multiplier: int = 3, *, recompute: bool = False):
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise TypeError(f"genotype must be a Genotype, got {type(genotype).__name__}")
        for name, value in (("in_channels", in_channels), ("channels", channels),
                            ("num_outputs", num_outputs), ("layers", layers)):
            if int(value) < 1:
                raise ValueError(f"EvalNetwork: {name} must be >= 1, got {value}")
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"EvalNetwork: drop_path_prob must be in [0, 1), got {drop_path_prob}")
        self.genotype = genotype
        self.in_channels = in_channels
        self.num_outputs = num_outputs
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.reduction_layers = reduction_layers(layers)
        self.aux_layer = 2 * layers // 3
        #: H and W are zero-padded to multiples of this (2 ** number of reduction cells).
        self.size_multiple = 2 ** len(self.reduction_layers)

        stack = build_cells(in_channels, channels, layers, stem_multiplier,
                            lambda *shape: EvalCell(genotype, *shape))
        self.stem, self.cells = stack.stem, stack.cells
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(stack.out_channels[self.aux_layer], num_outputs)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(stack.out_channels[-1], num_outputs)
        self._recompute_cells = recompute_plan(stack.sizes) if recompute else ()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Eval mode: the logits; training mode: ``(logits, logits_aux or None)``."""
        logits, logits_aux = self._run(x, with_aux=self.training)
        if self.training:
            return logits, logits_aux
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits in either mode (no auxiliary head)."""
        return self._run(x, with_aux=False)[0]

    def _run(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"EvalNetwork: expected input N x {self.in_channels} x H x W, "
                             f"got {tuple(x.shape)}")
        x = pad_to_multiple(x, self.size_multiple)
        logits_aux = None
        recompute = self._recompute_cells if recompute_active(self) else ()
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            if i in recompute:
                s0, s1 = s1, checkpointed(cell, s0, s1, self.drop_path_prob)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_layer and self._auxiliary and with_aux:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        logits = self.classifier(out.flatten(1))
        return logits, logits_aux

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):
        """As ``nn.Module.load_state_dict``; BatchNorm ``num_batches_tracked`` entries missing
        from old (torch 0.3.1) checkpoints are filled with 0 when the layer's other buffers
        are present, whatever the state dict's metadata says."""
        return super().load_state_dict(fill_num_batches_tracked(self, state_dict),
                                       strict=strict, assign=assign)


def fill_num_batches_tracked(model: nn.Module,
                             state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Copy of ``state_dict`` with absent ``num_batches_tracked`` entries of ``model``'s
    BatchNorm layers set to ``tensor(0)`` (only where that layer's ``running_mean`` is present)."""
    out: OrderedDict[str, Any] = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            prefix = f"{name}." if name else ""
            key = prefix + "num_batches_tracked"
            if key not in out and prefix + "running_mean" in out:
                out[key] = torch.tensor(0, dtype=torch.long)
    return out


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameters; by default without the auxiliary head (as the DARTS papers count)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and "auxiliary" in name))
