"""The ``synthetic`` dataset: seeded and deterministic, balanced, the promised geometry, its
options checked with one-line errors, loaded through the registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nas_core.data import DataError, dataset_files, download_data, load_data
from nas_core.data.synthetic import CLASS_NAMES, OPTIONS, generate

#: (dy, dx) unit step of each class, as the module docstring's table.
STEPS = {"row": (0, 1), "column": (1, 0), "diagonal": (1, 1), "antidiagonal": (-1, 1)}


def one_line_error(fn, match: str) -> DataError:
    with pytest.raises(DataError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return e.value


def test_same_seed_same_arrays_other_seed_others():
    x, y, s = generate(300, 16, 5)
    x2, y2, s2 = generate(300, 16, 5)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(s, s2)
    x3, y3, s3 = generate(300, 16, 6)
    assert not np.array_equal(x, x3) and not np.array_equal(y, y3)


def test_shapes_and_balance():
    x, y, s = generate(403, 12, 0, dots=3)
    assert x.shape == (403, 1, 12, 12) and x.dtype == np.float32
    assert y.shape == (403,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=len(CLASS_NAMES))
    assert len(counts) == len(CLASS_NAMES) == 4 and counts.max() - counts.min() <= 1
    assert np.isfinite(x).all()
    assert s.shape == (403,) and s.dtype == np.int64 and set(s) == {2, 3, 4}


@pytest.mark.parametrize("spacing", [(1, 1), (2, 4), (3, 5)])
def test_each_image_is_a_line_of_its_class(spacing):
    lo, hi = spacing
    x, y, s = generate(200, 16, 3, dots=4, min_spacing=lo, max_spacing=hi, clutter=0, noise=0.0)
    assert set(np.unique(x)) == {0.0, 1.0}
    for image, label, spacing in zip(x[:, 0], y, s):
        unit = np.array(STEPS[CLASS_NAMES[label]])
        pts = np.argwhere(image == 1.0)  # (y, x) of the dots
        assert len(pts) == 4
        steps = np.diff(pts[np.argsort(pts @ unit)], axis=0)
        gap = steps[0] @ unit // (unit @ unit)
        assert (steps == gap * unit).all() and gap == spacing and lo <= gap <= hi
        if lo >= 3:  # the promise: no 3x3 window holds two dots of the line
            assert np.abs(pts[:, None] - pts[None]).max(-1)[~np.eye(4, dtype=bool)].min() >= 3


def test_clutter_and_noise():
    clean, y, _ = generate(50, 16, 1, clutter=0, noise=0.0)
    cluttered, y2, _ = generate(50, 16, 1, clutter=3, noise=0.0)
    assert np.array_equal(y, y2)
    assert ((cluttered == 1).sum(axis=(1, 2, 3)) <= 4 + 3).all()
    assert (cluttered == 1).sum() > (clean == 1).sum()
    noisy, _, _ = generate(50, 16, 1, clutter=0, noise=0.5)  # the same draws, the noise added
    assert abs(float((noisy - clean).std()) - 0.5) < 0.01


def test_load_data(tmp_path):
    b = load_data({"name": "synthetic"}, tmp_path)
    n = OPTIONS["samples"].default
    n_test = math.ceil(OPTIONS["test_fraction"].default * n)
    assert (b.name, b.task, b.num_outputs, b.in_channels, b.input_size) == (
        "synthetic", "classification", 4, 1, (16, 16))
    assert b.class_names == list(CLASS_NAMES)
    assert len(b.test) == n_test and len(b.train) == len(b.train_eval) == n - n_test
    assert not set(b.train.indices) & set(b.test.indices)
    x, label = b.train[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and isinstance(label, int)
    train = torch.stack([b.train_eval[i][0] for i in range(len(b.train_eval))])
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-3
    json.dumps(b.source)
    assert b.source["n_test"] == n_test and b.source["options"]["seed"] == 0
    again = load_data({"name": "synthetic"}, tmp_path)
    assert again.source == b.source and torch.equal(again.test[3][0], b.test[3][0])
    other = load_data({"name": "synthetic", "seed": 1, "samples": 100, "size": 13}, tmp_path)
    assert other.source["sha256"] != b.source["sha256"] and other.input_size == (13, 13)
    assert len(other.test) == 20
    assert download_data({"name": "synthetic"}, tmp_path) == []
    assert dataset_files({"name": "synthetic"}, tmp_path) == []
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("cfg, match", [
    ({"samples": 1}, r"synthetic: samples: must be >= 2, got 1"),
    ({"samples": 10.0}, r"synthetic: samples: expected an integer, got 10\.0"),
    ({"dots": True}, r"synthetic: dots: expected an integer, got True"),
    ({"noise": -0.1}, r"synthetic: noise: must be >= 0, got -0\.1"),
    ({"noise": "high"}, r"synthetic: noise: expected a finite number, got 'high'"),
    ({"noise": float("nan")}, r"synthetic: noise: expected a finite number"),
    ({"test_fraction": 1}, r"synthetic: test_fraction: must be < 1, got 1\.0"),
    ({"test_fraction": 0.0}, r"synthetic: test_fraction: must be > 0, got 0\.0"),
    ({"min_spacing": 3, "max_spacing": 2}, r"min_spacing 3 is larger than max_spacing 2"),
    ({"dots": 5, "max_spacing": 4}, r"a line of 5 dots 4 pixels apart does not fit a 16x16"),
    ({"spacing": 3}, r"synthetic: unknown config key\(s\) 'spacing'"),
])
def test_bad_options(tmp_path, cfg, match):
    one_line_error(lambda: load_data({"name": "synthetic", **cfg}, tmp_path), match)


def test_integral_numbers_accepted(tmp_path):
    b = load_data({"name": "synthetic", "samples": np.int64(40), "noise": 0, "size": 10,
                   "dots": 3}, tmp_path)
    assert len(b.train) + len(b.test) == 40 and b.source["options"]["noise"] == 0.0
