"""Candidate operations of the DARTS search space, as one registry.

Operation names are registry keys and the same strings appear in genotypes.  Every factory has
the signature ``(channels, stride, affine) -> nn.Module`` and keeps the module layout of the
original DARTS code, so that state-dict keys match (``op.1``, ``op.2`` ... inside
``nn.Sequential``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

OpFactory = Callable[[int, int, bool], nn.Module]

_OPS: dict[str, OpFactory] = {}

#: The eight DARTS primitives, in the original order (the column order of the alphas).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: The primitives without weights of their own (in a normal cell): the operations a
#: collapsing DARTS search fills its cells with.
PARAMETER_FREE = frozenset({"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"})


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    """Decorator that registers ``factory(channels, stride, affine)`` under ``name``."""

    def wrap(factory: OpFactory) -> OpFactory:
        if name in _OPS:
            raise ValueError(f"operation {name!r} is already registered")
        _OPS[name] = factory
        return factory

    return wrap


def list_ops() -> list[str]:
    """Names of all registered operations, sorted."""
    return sorted(_OPS)


def has_op(name: str) -> bool:
    return name in _OPS


def create_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Build the operation ``name`` on ``channels`` channels with the given stride."""
    try:
        factory = _OPS[name]
    except KeyError:
        raise KeyError(f"unknown operation {name!r}; known: {', '.join(list_ops())}") from None
    if stride not in (1, 2):
        raise ValueError(f"operation {name!r}: stride must be 1 or 2, got {stride}")
    return factory(channels, stride, affine)


class ReLUConvBN(nn.Module):
    """ReLU -> Conv -> BatchNorm, stored as ``op.{0,1,2}``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1, offset: int = 0) -> torch.Tensor:
    """``F.conv2d`` of ``x[:, :, offset:, offset:]`` (zero padding given as numbers).  On the
    CPU a strided convolution that reads only every ``stride``-th pixel (per dimension: a 1x1
    kernel or the dilation equal to the stride, and the padding a multiple of it) is computed
    as the stride-1, undilated convolution of those pixels (``x[:, :, offset::s, offset::s]``,
    padding ``p / s``; the same products and sums, the same output size).  Two oneDNN kernels
    of torch 2.14.1 are routed around so: the strided dilated depthwise convolution (the
    reduction cells' dil_conv), 2-10x slower than that, and the weight gradient of the strided
    1x1 convolution in channels_last (FactorizedReduce), which corrupts the heap (e.g. 8 -> 4
    channels at 32x80, batch 8; ``tests/test_ops.py`` has both cases)."""
    s, p, d = (_pair(v) for v in (stride, padding, dilation))
    if (x.device.type == "cpu" and x.dim() == 4 and s != (1, 1)
            and all(p_ % s_ == 0 and (k == 1 or d_ == s_)
                    for s_, p_, d_, k in zip(s, p, d, weight.shape[2:]))):
        return F.conv2d(x[:, :, offset::s[0], offset::s[1]], weight, bias, 1,
                        (p[0] // s[0], p[1] // s[1]), 1, groups)
    return F.conv2d(x[:, :, offset:, offset:] if offset else x, weight, bias, s, p, d, groups)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class DilatedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) computed by :func:`conv2d`: the
    depthwise convolution of :class:`DilConv`, strided in the reduction cells."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BatchNorm (``op.{0..3}``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            DilatedConv2d(c_in, c_in, kernel, stride=stride, padding=padding,
                          dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise, pointwise, BatchNorm) blocks (``op.{0..7}``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset 1x1 stride-2 convolutions (``conv_1``, ``conv_2``, ``bn``)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.convolve(self.relu(x)))

    def convolve(self, r: torch.Tensor) -> torch.Tensor:
        """The two offset convolutions of the rectified input ``r``, concatenated (before BN)."""
        return torch.cat([strided_1x1(self.conv_1, r, 0), strided_1x1(self.conv_2, r, 1)], dim=1)


def strided_1x1(conv: nn.Conv2d, x: torch.Tensor, offset: int) -> torch.Tensor:
    """``conv(x[:, :, offset:, offset:])`` for FactorizedReduce's 1x1 stride-2 convolutions,
    through :func:`conv2d` (on the CPU: the stride-1 convolution of every second pixel)."""
    return conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                  conv.groups, offset)


def strided_1x1_weight(weight: torch.Tensor, x: torch.Tensor, offset: int) -> torch.Tensor:
    """:func:`strided_1x1` with a bare weight (no bias, one group): the stacked convolution of
    several FactorizedReduce modules (``nas_core.search_paths``)."""
    return conv2d(x, weight, None, 2, offset=offset)


class MaxPool2x2(nn.Module):
    """2x2 max pooling that keeps the size at stride 1 (pads right/bottom) and halves it at stride 2."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x = F.pad(x, (0, 1, 0, 1), value=float("-inf"))
        return F.max_pool2d(x, 2, self.stride)


class AvgPool2x2(nn.AvgPool2d):
    """The 2019 fork's ``avg_pool_2x2``: 2x2 average pooling that keeps the size at stride 1
    (zero row and column added right/bottom, counted in the average, as the fork's
    ``ZeroPad2d((0, 1, 0, 1))``) and halves it at stride 2.  An ``nn.AvgPool2d``, so the search
    network pools and normalises it like the other pools."""

    def __init__(self, stride: int):
        super().__init__(2, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


register_op("none")(lambda c, stride, affine: Zero(stride))
register_op("avg_pool_3x3")(
    lambda c, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
register_op("max_pool_3x3")(lambda c, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
register_op("max_pool_2x2")(lambda c, stride, affine: MaxPool2x2(stride))
register_op("avg_pool_2x2")(lambda c, stride, affine: AvgPool2x2(stride))
register_op("skip_connect")(
    lambda c, stride, affine: Identity() if stride == 1 else FactorizedReduce(c, c, affine))
register_op("sep_conv_3x3")(lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine))
register_op("sep_conv_5x5")(lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine))
register_op("sep_conv_7x7")(lambda c, stride, affine: SepConv(c, c, 7, stride, 3, affine))
register_op("dil_conv_3x3")(lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine))
register_op("dil_conv_5x5")(lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine))
register_op("conv_7x1_1x7")(
    lambda c, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(c, c, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(c, c, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(c, affine=affine),
    ))
