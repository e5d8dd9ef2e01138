"""Writers of tiny data files in the real formats, for tests (importable as ``datafiles``).

* ``write_graphene_nc(path, n, seed)``: the kirigami netCDF layout, made the way the real file
  was made (random 15-bit cut patterns on a 3x5 grid).
* ``write_idx(path, array)`` / ``write_mnist(root, name, n_train, n_test)``: uncompressed IDX
  files where torchvision's MNIST / FashionMNIST look for them (``root/{name}/{Class}/raw/``).
* ``write_cifar_batches(root, n_per_batch, n_test)``: CIFAR-10 python pickle batches in
  ``root/cifar-10/cifar-10-batches-py/``.
* ``draw_shapes(n, size, channels, seed)``: images of three kinds of drawn shapes (circle,
  square, triangle) with their labels; ``write_image_folder(root, ...)``: the same as PNG files
  in ``root/<class>/`` or ``root/{train,test}/<class>/`` (torchvision's ``ImageFolder`` layout).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

_IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def graphene_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays of ``n`` kirigami samples.

    Each sample is a random 15-bit pattern on a 3x5 grid (``coarse_image``: 1 = no cut,
    0 = cut).  ``fine_image`` (30x80) is 1 except, for every cut cell at grid position
    (Nx, Ny), rows ``Nx*10+4 .. Nx*10+6`` and columns ``Ny*16 .. Ny*16+15``, which are 0.
    ``strain`` and ``stress`` are deterministic functions of the pattern plus small noise.
    """
    rng = np.random.RandomState(seed)
    codes = rng.randint(0, 2**15, size=n)
    bits = ((codes[:, None] >> np.arange(15)) & 1).astype(np.float32)
    coarse = bits.reshape(n, 3, 5)
    fine = np.ones((n, 30, 80), dtype=np.float32)
    for s, nx, ny in zip(*np.nonzero(coarse == 0)):
        fine[s, nx * 10 + 4: nx * 10 + 7, ny * 16: ny * 16 + 16] = 0.0
    cuts = (coarse == 0).sum(axis=(1, 2)).astype(np.float32)
    rows_cut = (coarse == 0).any(axis=2).sum(axis=1).astype(np.float32)
    strain = (0.2 + 0.05 * cuts + 0.1 * rows_cut + 0.01 * rng.randn(n)).astype(np.float32)
    stress = (2.0 - 0.1 * cuts + 0.05 * rng.randn(n)).astype(np.float32)
    return {"fine_image": fine, "coarse_image": coarse, "strain": strain, "stress": stress}


def write_graphene_nc(path: str | Path, n: int = 64, seed: int = 0, **overrides) -> Path:
    """Write a graphene-format netCDF file (float32, no coordinates) and return its path.

    ``overrides`` replace variables: ``name=(dims, array)`` or ``name=None`` to drop one.
    """
    import xarray as xr

    a = graphene_arrays(n, seed)
    variables = {
        "fine_image": (("sample", "y", "x"), a["fine_image"]),
        "coarse_image": (("sample", "y_c", "x_c"), a["coarse_image"]),
        "strain": (("sample",), a["strain"]),
        "stress": (("sample",), a["stress"]),
    }
    for k, v in overrides.items():
        if v is None:
            variables.pop(k, None)
        else:
            variables[k] = v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(variables).to_netcdf(path, engine="netcdf4")
    return path


def write_netcdf(path: str | Path, variables: dict) -> Path:
    """Write ``{name: (dims, array)}`` as a netCDF file."""
    import xarray as xr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(variables).to_netcdf(path, engine="netcdf4")
    return path


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an uncompressed IDX file (big-endian, as LeCun's format)."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = _IDX_TYPES[np.dtype(dtype)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, code, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(dtype).tobytes())
    return path


def write_mnist(root: str | Path, name: str = "mnist", n_train: int = 20, n_test: int = 10,
                seed: int = 0, labels: np.ndarray | None = None) -> list[Path]:
    """Tiny MNIST-format IDX files under ``root/{name}/{MNIST|FashionMNIST}/raw/``."""
    cls = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    raw = Path(root) / name / cls / "raw"
    rng = np.random.RandomState(seed)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = rng.randint(0, 10, size=n).astype(np.uint8)
        if labels is not None and prefix == "train":
            y = np.asarray(labels, dtype=np.uint8)
        out.append(write_idx(raw / f"{prefix}-images-idx3-ubyte", images))
        out.append(write_idx(raw / f"{prefix}-labels-idx1-ubyte", y))
    return out


def write_cifar_batches(root: str | Path, n_per_batch: int = 4, n_test: int = 6,
                        seed: int = 0, labels: list[int] | None = None) -> list[Path]:
    """Tiny CIFAR-10 python batches (``data`` N x 3072 uint8, ``labels`` list) and
    ``batches.meta`` under ``root/cifar-10/cifar-10-batches-py/``."""
    base = Path(root) / "cifar-10" / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    out = []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        y = rng.randint(0, 10, size=n).tolist()
        if labels is not None and name == "data_batch_1":
            y = list(labels)
        entry = {
            "batch_label": f"{name} (test fixture)",
            "labels": y,
            "data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out.append(base / name)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"], "num_cases_per_batch": n_per_batch,
            "num_vis": 3072}
    with open(base / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return out


SHAPES = ("circle", "square", "triangle")


def draw_shapes(n: int, size: int = 16, channels: int = 1, seed: int = 0,
                ) -> tuple[np.ndarray, list[str]]:
    """``(images n x size x size x channels uint8, labels)``: one filled shape per image (a
    circle, a square or a triangle, in turn) of random size, place and colour on a noisy dark
    background, drawn with PIL."""
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(seed)
    images, labels = [], []
    for i in range(n):
        kind = SHAPES[i % 3]
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.randint(0, 60, 3)))
        draw = ImageDraw.Draw(img)
        r = rng.uniform(0.25, 0.4) * size
        cx, cy = rng.uniform(r, size - r, 2)
        colour = tuple(int(v) for v in rng.randint(150, 256, 3))
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.int16)
        arr = arr + rng.randint(-12, 13, arr.shape)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        images.append(arr[:, :, None] if arr.ndim == 2 else arr)
        labels.append(kind)
    return np.stack(images), labels


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``H x W x C`` (C = 1 or 3) uint8 as a PNG file."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image[:, :, 0] if image.shape[2] == 1 else image
    Image.fromarray(arr).save(path, format="PNG")
    return path


def write_image_folder(root: str | Path, n: int = 30, size: int = 16, channels: int = 1,
                       seed: int = 0, split: bool = False, test_every: int = 5) -> list[Path]:
    """``n`` drawn-shape PNGs in ``root/<shape>/<i>.png``; with ``split``, every
    ``test_every``-th image goes to ``root/test/<shape>/`` and the others to
    ``root/train/<shape>/``.  Returns the files in writing order."""
    images, labels = draw_shapes(n, size, channels, seed)
    root = Path(root)
    out = []
    for i, (img, label) in enumerate(zip(images, labels)):
        part = ("test" if i % test_every == 0 else "train") if split else ""
        out.append(write_png(root / part / label / f"{i:04d}.png", img))
    return out
