"""Tensor transforms for ``C x H x W`` float samples on the [0, 1] scale."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision import transforms as T

__all__ = ["Cutout", "build_transform"]


class Cutout:
    """DARTS cutout: zero one ``length x length`` square (clipped at the border) centred on a
    uniformly drawn pixel, on all channels.  Applied after normalisation, as in DARTS.

    DARTS drew the centre with ``numpy.random``; this draws it with torch's generator, which
    DataLoader re-seeds in every worker (numpy's is not, so workers would repeat masks).
    """

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"cutout length must be positive, got {length}")
        self.length = int(length)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy = int(torch.randint(h, (1,)))
        cx = int(torch.randint(w, (1,)))
        half = self.length // 2
        y1, y2 = max(cy - half, 0), min(cy + half, h)
        x1, x2 = max(cx - half, 0), min(cx + half, w)
        x = x.clone()
        x[..., y1:y2, x1:x2] = 0.0
        return x

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def build_transform(
    size: tuple[int, int],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    crop_padding: int = 0,
    hflip: bool = False,
    cutout: int = 0,
) -> T.Compose | None:
    """Crop with zero padding (on the [0, 1] scale, before normalising, as torchvision's PIL
    pipeline in DARTS), horizontal flip, normalise, cutout; ``None`` when nothing to do."""
    steps: list = []
    if crop_padding > 0:
        steps.append(T.RandomCrop(size, padding=int(crop_padding)))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if mean is not None and std is not None:
        steps.append(T.Normalize(list(mean), list(std)))
    if cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps) if steps else None
