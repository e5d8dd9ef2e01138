"""``synthetic``: dotted lines in noise, generated from a seed; a task where the cell matters.

Each image is ``1 x size x size``: one line of ``dots`` single-pixel dots (value 1) on a zero
background, ``clutter`` more dots at uniformly drawn pixels, then Gaussian noise of standard
deviation ``noise`` on every pixel.  The class is the line's direction (4 classes, balanced to
one sample), ``s`` the gap between neighbouring dots, drawn per image from ``min_spacing ..
max_spacing``:

======  ================  ====================================
class   name              step from one dot to the next (y, x)
======  ================  ====================================
0       ``row``           ``(0, s)``
1       ``column``        ``(s, 0)``
2       ``diagonal``      ``(s, s)`` (down to the right)
3       ``antidiagonal``  ``(-s, s)`` (up to the right)
======  ================  ====================================

The line's first dot is uniform among the positions that keep the whole line in the image.

Why it needs spatial features beyond the stem: at ``s >= 3`` no 3x3 window holds two dots of
the line, so the network's 3x3 stem sees isolated dots, alike in every class; the direction
lies only in how dots three or more pixels apart are arranged.  Square max / average pooling
and skip connections do not change under transposition (which swaps ``row`` and ``column``)
nor under a 90-degree rotation, so a cell made of them can tell the directions apart only
through the stem's footprint around each dot; convolutions after the stem (separable, dilated)
can match the offset between dots directly.  Lines at ``s = 2`` (in the default range) are
visible to the stem; ``min_spacing = max_spacing = 1`` gives solid lines, a local task.
Measured with the train stage (benchmarks/README.md, "The synthetic task: does the cell
matter?"; 5 cells, 8 channels, 6 epochs, 5 seeds): a cell of only pooling and skip ops scores
47 +- 7 % (70 % on the lines at ``s = 2``, 39 and 33 % at ``s = 3, 4``; chance is 25 %),
separable convolutions 77 +- 6 % (80 / 76 / 74 %), DARTS_V2 86 +- 2 % (87 / 85 / 84 %).

Generation is vectorised numpy from ``numpy.random.default_rng(seed)``: the same options give
the same arrays (for one numpy version; ``source.sha256`` identifies them).  The test split is
``random_test_split(samples, test_fraction, seed)``; pixels are normalised with the mean and std
of the training part.  Needs no download.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .base import ArrayDataset, DataBundle, DataError, check_nonempty
from .options import Option
from .registry import register_dataset
from .splits import random_test_split
from .transforms import build_transform

__all__ = ["generate", "load_synthetic", "CLASS_NAMES", "OPTIONS"]

NAME = "synthetic"

#: Class index -> name.
CLASS_NAMES = ("row", "column", "diagonal", "antidiagonal")

#: Unit step (dy, dx) from one dot to the next, per class.
_STEPS = np.array([[0, 1], [1, 0], [1, 1], [-1, 1]], dtype=np.int64)

OPTIONS = {
    "samples": Option(4000, "int", "images generated (train + test)", minimum=2),
    "size": Option(16, "int", "height and width of the images in pixels", minimum=2),
    "dots": Option(4, "int", "dots on the line", minimum=2),
    "min_spacing": Option(2, "int", "smallest gap between neighbouring dots in pixels (>= 3: "
                                    "the 3x3 stem never sees two of them)", minimum=1),
    "max_spacing": Option(4, "int", "largest gap between neighbouring dots in pixels; "
                                    "(dots - 1) * max_spacing must be below size", minimum=1),
    "clutter": Option(4, "int", "distractor dots at random pixels", minimum=0),
    "noise": Option(0.3, "float", "standard deviation of the Gaussian pixel noise (dots are 1)",
                    minimum=0),
    "test_fraction": Option(0.2, "float", "fraction of the images held out as the test split",
                            minimum=0, maximum=1, exclusive_minimum=True,
                            exclusive_maximum=True),
    "seed": Option(0, "int", "seed of the images and of the test split", minimum=0),
}


def _check(opts: dict) -> dict:
    """The options typed (``int`` / ``float``) and in their declared ranges; one-line
    DataError naming the key otherwise."""
    out = {}
    for key, opt in OPTIONS.items():
        value = opts[key]
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        if opt.kind == "float":
            ok = ok or isinstance(value, (float, np.floating))
        if not ok or (opt.kind == "float" and not np.isfinite(value)):
            what = "a finite number" if opt.kind == "float" else "an integer"
            raise DataError(f"{NAME}: {key}: expected {what}, got {value!r}")
        value = float(value) if opt.kind == "float" else int(value)
        lo, hi = opt.minimum, opt.maximum
        if lo is not None and (value <= lo if opt.exclusive_minimum else value < lo):
            sign = ">" if opt.exclusive_minimum else ">="
            raise DataError(f"{NAME}: {key}: must be {sign} {lo}, got {value!r}")
        if hi is not None and (value >= hi if opt.exclusive_maximum else value > hi):
            sign = "<" if opt.exclusive_maximum else "<="
            raise DataError(f"{NAME}: {key}: must be {sign} {hi}, got {value!r}")
        out[key] = value
    if out["min_spacing"] > out["max_spacing"]:
        raise DataError(f"{NAME}: min_spacing {out['min_spacing']} is larger than max_spacing "
                        f"{out['max_spacing']}")
    if (out["dots"] - 1) * out["max_spacing"] >= out["size"]:
        raise DataError(f"{NAME}: a line of {out['dots']} dots {out['max_spacing']} pixels "
                        f"apart does not fit a {out['size']}x{out['size']} image")
    return out


def generate(samples: int, size: int, seed: int, *, dots: int = 4, min_spacing: int = 2,
             max_spacing: int = 4, clutter: int = 4,
             noise: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, labels, spacing)``: float32 ``samples x 1 x size x size``, int64 class per
    image and int64 gap between its dots, as the module docstring describes; the same
    arguments give the same arrays."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(samples) % len(CLASS_NAMES))
    spacing = rng.integers(min_spacing, max_spacing + 1, samples)
    step = _STEPS[labels] * spacing[:, None]
    span = step * (dots - 1)
    start = rng.integers(np.maximum(-span, 0), size - np.maximum(span, 0))
    line = start[:, None, :] + np.arange(dots)[None, :, None] * step[:, None, :]
    extra = rng.integers(0, size, (samples, clutter, 2))
    points = np.concatenate([line, extra], axis=1)  # samples x (dots + clutter) x (y, x)
    images = np.zeros((samples, size, size), dtype=np.float32)
    images[np.repeat(np.arange(samples), points.shape[1]),
           points[..., 0].ravel(), points[..., 1].ravel()] = 1.0
    images += np.float32(noise) * rng.standard_normal(images.shape, dtype=np.float32)
    return images[:, None], labels.astype(np.int64), spacing.astype(np.int64)


@register_dataset(NAME, options=OPTIONS)
def load_synthetic(opts: dict, folder: Path) -> DataBundle:
    """Generate ``synthetic``; ``folder`` is unused (nothing is read or written)."""
    o = _check(opts)
    images, labels, _ = generate(o["samples"], o["size"], o["seed"], dots=o["dots"],
                              min_spacing=o["min_spacing"], max_spacing=o["max_spacing"],
                              clutter=o["clutter"], noise=o["noise"])
    n, size = o["samples"], o["size"]
    try:
        train_idx, test_idx = random_test_split(n, o["test_fraction"], o["seed"])
    except DataError as e:
        raise DataError(f"{NAME}: {e}") from None
    check_nonempty(NAME, train=len(train_idx), test=len(test_idx))

    train_pixels = images[train_idx]
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    tf = build_transform((size, size), [mean], [std])
    return DataBundle(
        name=NAME,
        task="classification",
        num_outputs=len(CLASS_NAMES),
        in_channels=1,
        input_size=(size, size),
        train=ArrayDataset(x, y, train_idx, "classification", tf),
        train_eval=ArrayDataset(x, y, train_idx, "classification", tf),
        test=ArrayDataset(x, y, test_idx, "classification", tf),
        class_names=list(CLASS_NAMES),
        source={
            "dataset": NAME,
            "origin": "nas_core.data.synthetic.generate",
            "numpy_version": np.__version__,
            "options": {k: o[k] for k in OPTIONS},
            "sha256": digest,
            "n": int(n),
            "n_train": len(train_idx),
            "n_test": len(test_idx),
            "test_split": {"kind": "random", "fraction": o["test_fraction"], "seed": o["seed"]},
            "normalize": {"mean": [mean], "std": [std]},
        },
    )
