"""``image-folder``: a folder of image files in the common ``root/<class>/<image>`` layout.

Config: ``data: {name: image-folder, path: ..., size: [H, W], channels: 1|3}``.  Files are found
as torchvision's ``ImageFolder`` finds them (``torchvision.datasets.folder.make_dataset``: class
folders sorted by name, files of ``IMG_EXTENSIONS`` anywhere below them), leaving out hidden
files and folders (``.ipynb_checkpoints``); each is read with PIL, converted to grayscale
(``channels: 1``) or RGB (``3``) and, with ``size``, resized (bilinear).  The images are held in
memory as one uint8 tensor.

Test split: a root holding exactly ``train/`` and ``test/`` (each ``<class>/<image>``) is split
by those folders; otherwise the seeded random rule (fraction 0.2, seed 42), or as ``test_split``
says.  Normalisation (``normalize: train``, the default): per-channel mean and std of the
training part.  A file PIL cannot read stops the download stage (and the loader) with one line
naming it.  ``path`` is absolute or relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arrays import DEFAULT_TEST_SPLIT, bundle_from_arrays, random_split, whole
from .base import DataBundle, DataError, typed_line
from .digest import file_records, records_digest
from .local import LocalInput, describe_missing, resolve_local
from .options import CROP_PADDING, REQUIRED, Option
from .registry import register_dataset

__all__ = ["FOLDER_OPTIONS", "scan_folder", "read_image"]

NAME = "image-folder"


def _extensions() -> tuple[str, ...]:
    """torchvision's ``IMG_EXTENSIONS`` (what ``ImageFolder`` reads)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)

FOLDER_OPTIONS = {
    "path": Option(REQUIRED, "str", "the folder: root/<class>/<image>, or root/train/<class>/"
                                    "<image> and root/test/<class>/<image>; absolute or "
                                    "relative to the working directory"),
    "size": Option(None, "any", "[H, W]: every image is resized to it (bilinear); null: all "
                                "images must have one size", nullable=True),
    "channels": Option(3, "choice", "1 (grayscale) or 3 (RGB): every image is converted",
                       choices=(1, 3)),
    "test_split": Option(
        None, "object", "null: the train/ and test/ folders when the root holds exactly "
                        "those, else random (fraction 0.2, seed 42); {kind: folders}; "
                        "{kind: random, fraction, seed}",
        nullable=True, checked=False, keys={
            "kind": Option("random", "choice", "'folders' (root/train, root/test) or 'random' "
                           "(seeded, nas_core.data.random_test_split)",
                           choices=("folders", "random")),
            "fraction": Option(DEFAULT_TEST_SPLIT["fraction"], "float", "kind random: fraction "
                               "of the images in the test split"),
            "seed": Option(DEFAULT_TEST_SPLIT["seed"], "int", "kind random: seed of the split"),
        }),
    "normalize": Option(
        "train", "any", "'train' (mean/std per channel of the training part), null (none) or "
                        "{mean: [...], std: [...]}",
        checked=False, keys={
            "mean": Option(REQUIRED, "any", "one mean per channel"),
            "std": Option(REQUIRED, "any", "one positive std per channel"),
        }),
    "crop_padding": CROP_PADDING,
    "hflip": Option(False, "bool", "random horizontal flips of the training images"),
}


# ---------------------------------------------------------------------------------------------
# Finding the files


def _root(opts: dict) -> Path:
    return resolve_local(opts["path"])


def _local(opts: dict) -> LocalInput:
    root = _root(opts)
    return LocalInput("path", root, str(opts["path"]), is_folder=True)


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))


def _class_files(folder: Path, classes: list[str], where: str) -> list[tuple[Path, int]]:
    from torchvision.datasets.folder import make_dataset

    exts = _extensions()

    def valid(p: str) -> bool:
        rel = Path(p).relative_to(folder)
        return p.lower().endswith(exts) and not any(part.startswith(".") for part in rel.parts)

    found = make_dataset(str(folder), {c: i for i, c in enumerate(classes)},
                         is_valid_file=valid, allow_empty=True)
    counts = np.bincount([i for _, i in found], minlength=len(classes))
    for c, k in zip(classes, counts):
        if k == 0:
            raise DataError(f"{NAME}: class folder {folder / c} holds no image files "
                            f"({', '.join(exts)}){where}")
    return [(Path(p), i) for p, i in found]


def _split_kind(opts: dict, root: Path, subdirs: list[str]) -> str:
    rule = opts["test_split"]
    if rule is not None and not isinstance(rule, dict):
        raise DataError(f"{NAME}: test_split must be null or a mapping, got {rule!r}")
    kind = (rule or {}).get("kind")
    if kind not in (None, "folders", "random"):
        raise DataError(f"{NAME}: unknown test_split kind {kind!r}; known: folders, random")
    has_split = {"train", "test"} <= set(subdirs)
    if kind == "folders" or (kind is None and rule is None and has_split):
        if not has_split:
            raise DataError(f"{NAME}: test_split kind 'folders' needs {root}/train and "
                            f"{root}/test; found folders: {', '.join(subdirs) or 'none'}")
        others = sorted(set(subdirs) - {"train", "test"})
        if others:
            raise DataError(f"{NAME}: {root} holds train/ and test/ and also "
                            f"{', '.join(others)}/; keep only train/ and test/ (each "
                            f"<class>/<image>), or set test_split: {{kind: random}} to use "
                            f"all folders as classes")
        if set(rule or {}) - {"kind"}:
            raise DataError(f"{NAME}: test_split of kind 'folders' takes no other key")
        return "folders"
    return "random"


def scan_folder(opts: dict) -> dict[str, Any]:
    """``{"root", "layout" ('folders' | 'random'), "classes", "train", "test"}``: the image
    files with their class index (``test`` empty for the random layout)."""
    entry = _local(opts)
    root = entry.path
    if not root.is_dir():
        raise DataError(f"{NAME}: data.path: {describe_missing(entry)}")
    subdirs = _subfolders(root)
    layout = _split_kind(opts, root, subdirs)
    if layout == "folders":
        classes = _subfolders(root / "train")
        if not classes:
            raise DataError(f"{NAME}: {root / 'train'} has no class folders (expected "
                            f"train/<class>/<image>)")
        extra = sorted(set(_subfolders(root / "test")) - set(classes))
        if extra:
            raise DataError(f"{NAME}: {root / 'test'} has class folder(s) "
                            f"{', '.join(map(repr, extra))} that {root / 'train'} lacks")
        train = _class_files(root / "train", classes, "")
        test_classes = [c for c in classes if (root / "test" / c).is_dir()]
        test = _class_files(root / "test", test_classes, "")
        test = [(p, classes.index(test_classes[i])) for p, i in test]
        if not test:
            raise DataError(f"{NAME}: {root / 'test'} has no class folders")
    else:
        classes = subdirs
        if not classes:
            raise DataError(f"{NAME}: {root} has no class folders (expected "
                            f"<class>/<image>)")
        train, test = _class_files(root, classes, ""), []
    return {"root": root, "layout": layout, "classes": classes, "train": train, "test": test}


def _folder_files(opts: dict, folder: Path) -> list[Path]:
    scan = scan_folder(opts)
    return [p for p, _ in scan["train"] + scan["test"]]


def _folder_local(opts: dict, folder: Path) -> list[LocalInput]:
    entry = _local(opts)
    if not entry.exists:
        return [entry]
    files = tuple(sorted(_folder_files(opts, folder)))
    return [LocalInput(entry.key, entry.path, entry.given, files=files, is_folder=True)]


# ---------------------------------------------------------------------------------------------
# Reading


def _size(opts: dict) -> tuple[int, int] | None:
    size = opts["size"]
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    size = [whole(v) for v in size] if isinstance(size, (list, tuple)) else size
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise DataError(f"{NAME}: size must be [H, W] (two positive integers) or null, "
                        f"got {opts['size']!r}")
    return int(size[0]), int(size[1])


def read_image(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """``H x W x C`` uint8 of one image file (PIL), converted and resized; DataError naming
    the file when PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.array(im, dtype=np.uint8)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"{NAME}: cannot read image {path}: {typed_line(e)}") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def _check_images(opts: dict, folder: Path) -> list[Path]:
    """The download stage of a local folder: every image must be readable (PIL's
    ``verify``: headers and checksums, without decoding), so a corrupt file stops the first job
    of the workflow with one line naming it."""
    from PIL import Image

    files = _folder_files(opts, folder)
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:
            raise DataError(f"{NAME}: cannot read image {p}: {typed_line(e)}") from e
    return files


def _describe(opts: dict, folder: Path) -> dict:
    scan = scan_folder(opts)
    counts = ({"train": len(scan["train"]), "test": len(scan["test"])}
              if scan["layout"] == "folders" else {"all": len(scan["train"])})
    return {"class_names": scan["classes"], "layout": scan["layout"], "images": counts}


@register_dataset(NAME, options=FOLDER_OPTIONS, downloader=_check_images, files=_folder_files,
                  local=_folder_local, describe=_describe)
def _load_folder(opts: dict, folder: Path) -> DataBundle:
    channels = whole(opts["channels"])
    if channels not in (1, 3):
        raise DataError(f"{NAME}: channels must be 1 or 3, got {opts['channels']!r}")
    size = _size(opts)
    scan = scan_folder(opts)
    items = scan["train"] + scan["test"]
    first = read_image(items[0][0], channels, size)
    images = torch.empty((len(items), channels, first.shape[0], first.shape[1]),
                         dtype=torch.uint8)
    for i, (path, _) in enumerate(items):
        arr = first if i == 0 else read_image(path, channels, size)
        if arr.shape[:2] != first.shape[:2]:
            raise DataError(f"{NAME}: {path} is {arr.shape[0]}x{arr.shape[1]} (H x W) but "
                            f"{items[0][0]} is {first.shape[0]}x{first.shape[1]}; set size: "
                            f"[H, W] to resize every image")
        images[i] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    labels = np.asarray([c for _, c in items], dtype=np.int64)
    n = len(items)
    if scan["layout"] == "folders":
        n_train = len(scan["train"])
        train, test = np.arange(n_train), np.arange(n_train, n)
        split = {"kind": "folders"}
    else:
        train, test, split = random_split(opts["test_split"], n, NAME)
    root = scan["root"]
    records = file_records([p for p, _ in items], base=root)
    source = {
        "dataset": NAME,
        "folder": {"path": str(opts["path"]), "files": n, "sha256": records_digest(records)},
        "layout": scan["layout"],
        "test_split": split,
        "channels": channels,
        "size": [int(first.shape[0]), int(first.shape[1])],
    }
    return bundle_from_arrays(
        NAME, images, labels, "classification", train, test, label=NAME,
        normalize=opts["normalize"], class_names=list(scan["classes"]),
        num_outputs=len(scan["classes"]), source=source,
        crop_padding=int(opts["crop_padding"]), hflip=bool(opts["hflip"]))
