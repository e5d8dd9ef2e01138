"""Seeded, reproducible index splits (numpy ``RandomState``: stable across torch versions).

Both functions draw ``perm = numpy.random.RandomState(seed).permutation(n)`` and cut it in two;
the parts keep the permutation order and never share an index.
"""

from __future__ import annotations

import math

import numpy as np

from .base import DataError

__all__ = ["split_indices", "random_test_split"]


def split_indices(n: int, first_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into two disjoint parts.

    ``perm = numpy.random.RandomState(seed).permutation(n)``; ``k = floor(first_fraction * n)``;
    returns ``(perm[:k], perm[k:])`` as lists of ints.  Used by search (weights part =
    ``train_portion``, alphas part = the rest) and by train (``1 - valid_fraction`` for the
    weights, the rest for model selection).  ``first_fraction`` 0 or 1 gives an empty part on
    purpose; any other fraction that rounds to an empty part raises ``DataError``.
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"split_indices: n must be a non-negative integer, got {n!r}")
    if not 0.0 <= float(first_fraction) <= 1.0:
        raise DataError(f"split_indices: first_fraction must be in [0, 1], got {first_fraction!r}")
    k = int(math.floor(float(first_fraction) * n))
    if 0.0 < first_fraction < 1.0 and (k == 0 or k == n):
        raise DataError(
            f"split of n={n} samples with first_fraction={first_fraction} leaves an empty part"
        )
    perm = np.random.RandomState(int(seed)).permutation(int(n))
    return perm[:k].tolist(), perm[k:].tolist()


def random_test_split(
    n: int, fraction: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """The 2019 test split: ``perm = RandomState(seed).permutation(n)``,
    ``test = perm[:ceil(fraction * n)]``, ``train = perm[ceil(fraction * n):]``.

    Returns ``(train, test)`` index arrays.  For n = 29,791 and the defaults the test part has
    5,959 rows and starts 1555, 10084, 16238, 21090, 19820.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise DataError(f"test split fraction must be in (0, 1), got {fraction!r}")
    perm = np.random.RandomState(int(seed)).permutation(int(n))
    k = int(math.ceil(float(fraction) * n))
    return perm[k:], perm[:k]
