"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

Pixels 0..16 are scaled to [0, 1], then normalised with the mean and std of the training part
(one channel; computed after the split, so the test part does not leak into them).  The test
part is the seeded rule of ``random_test_split``.  Needs no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import ArrayDataset, DataBundle, DataError, check_nonempty
from .options import CROP_PADDING, Option
from .registry import register_dataset
from .splits import random_test_split
from .transforms import build_transform

__all__ = ["load_digits", "OPTIONS"]

OPTIONS = {
    "test_fraction": Option(0.2, "float", "fraction of the 1797 images held out as the test "
                                          "split", minimum=0, maximum=1,
                            exclusive_minimum=True, exclusive_maximum=True),
    "seed": Option(42, "int", "seed of the test split", minimum=0),
    "crop_padding": CROP_PADDING,
}


@register_dataset("digits", options=OPTIONS)
def load_digits(opts: dict, folder: Path) -> DataBundle:
    """Load ``digits``; ``folder`` is unused (the data ships with scikit-learn)."""
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits

    raw = sk_load_digits()
    images = (raw.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = raw.target.astype(np.int64)
    n = images.shape[0]
    try:
        train_idx, test_idx = random_test_split(n, float(opts["test_fraction"]), int(opts["seed"]))
    except DataError as e:
        raise DataError(f"digits: {e}") from None
    check_nonempty("digits", train=len(train_idx), test=len(test_idx))

    train_pixels = images[train_idx]
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    crop = int(opts["crop_padding"])
    train_tf = build_transform((8, 8), [mean], [std], crop_padding=crop)
    eval_tf = build_transform((8, 8), [mean], [std])
    return DataBundle(
        name="digits",
        task="classification",
        num_outputs=10,
        in_channels=1,
        input_size=(8, 8),
        train=ArrayDataset(x, y, train_idx, "classification", train_tf),
        train_eval=ArrayDataset(x, y, train_idx, "classification", eval_tf),
        test=ArrayDataset(x, y, test_idx, "classification", eval_tf),
        source={
            "dataset": "digits",
            "origin": "sklearn.datasets.load_digits",
            "sklearn_version": sklearn.__version__,
            "n": int(n),
            "n_train": len(train_idx),
            "n_test": len(test_idx),
            "test_split": {"kind": "random", "fraction": float(opts["test_fraction"]),
                           "seed": int(opts["seed"])},
            "normalize": {"mean": [mean], "std": [std]},
        },
    )
