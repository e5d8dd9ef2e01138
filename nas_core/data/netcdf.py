"""``netcdf`` (any netCDF file described in config) and ``graphene`` (the kirigami file, i.e.
``netcdf`` with fixed settings and an S3 source).

Arrays are read once with xarray into memory as float32 images ``N x C x H x W``.  The image
variable's dimensions are found by name, never by position: ``data.dims`` names them
(``{sample: n, channel: band, y: lat, x: lon}``, any subset); the others are matched against
conventional names (:data:`DIM_NAMES`: ``sample``/``time``/``n``..., ``channel``/``band``/``c``...,
``y``/``lat``/``row``/``height``..., ``x``/``lon``/``col``/``width``...); the sample dimension is
also the target variable's only dimension; one role left for one dimension left is deduced.
Anything else (two candidates, two unnamed dimensions) is a one-line error asking for
``data.dims``.  So channel-last and channel-first files, with any number of channels, read the
same.  A rank-3 image variable has one channel.

Classification labels may be any integers or text: the distinct values, sorted, are the classes
``0..K-1`` and their names are kept (``DataBundle.class_names``, ``download.json``, test.json).
Regression targets can be standardised with the training part's statistics (``standardize``).
Default test split: the 2019 rule of ``random_test_split`` (``fraction`` 0.2, ``seed`` 42).

``path``: without ``source`` the user's file, absolute or relative to the working directory (a
relative path not found there is still looked up under ``resources/{dataset}/netcdf/``, the
place of earlier versions); with ``source`` where the download goes, relative to
``resources/{dataset}/netcdf/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .arrays import DEFAULT_TEST_SPLIT, bundle_from_arrays, random_split, whole
from .base import (
    DataBundle,
    DataError,
    check_finite,
    encode_labels,
    file_info,
    require_file,
    typed_line,
)
from .local import LocalInput, describe_missing, resolve_local
from .options import REQUIRED, Option, source_option
from .registry import register_dataset
from .s3 import S3Download, download_s3, resolve_source, s3_url

__all__ = ["read_netcdf", "resolve_dims", "netcdf_bundle", "GRAPHENE_FILE", "GRAPHENE_SOURCE",
           "GRAPHENE_SHAPE", "GRAPHENE_TARGETS", "DEFAULT_TEST_SPLIT", "DIM_ROLES", "DIM_NAMES",
           "NETCDF_OPTIONS"]

GRAPHENE_FILE = "graphene_processed.nc"
GRAPHENE_SOURCE = {"bucket": "capstone2019-google", "key": "data/graphene_processed.nc"}
GRAPHENE_SHAPE = (30, 80)
GRAPHENE_TARGETS = ("strain", "stress")

#: The roles of an image variable's dimensions, in the order the arrays are transposed to.
DIM_ROLES = ("sample", "channel", "y", "x")
#: Conventional dimension names of each role (compared case-insensitively).
DIM_NAMES: dict[str, tuple[str, ...]] = {
    "sample": ("sample", "samples", "n", "index", "idx", "record", "records", "id", "image",
               "images", "time", "t", "case", "cases", "example", "examples", "batch", "item",
               "items"),
    "channel": ("channel", "channels", "c", "ch", "band", "bands", "rgb", "color", "colour",
                "colors", "colours"),
    "y": ("y", "lat", "latitude", "row", "rows", "height", "h", "ny", "south_north", "rlat"),
    "x": ("x", "lon", "longitude", "col", "cols", "column", "columns", "width", "w", "nx",
          "west_east", "rlon"),
}


# ---------------------------------------------------------------------------------------------
# Layout by dimension names


def resolve_dims(dims: tuple[str, ...], configured: Mapping[str, Any] | None,
                 target_dim: str | None, where: str) -> dict[str, str]:
    """``{role: dimension}`` of an image variable with dimensions ``dims`` (see the module
    docstring); ``where`` (``"netcdf: f.nc variable 'img'"``) starts every error."""
    dims = tuple(str(d) for d in dims)
    if len(dims) not in (3, 4):
        raise DataError(f"{where} has dims {dims} (rank {len(dims)}); expected (sample, y, x) "
                        f"or (sample, channel, y, x), in any order")
    roles = DIM_ROLES if len(dims) == 4 else ("sample", "y", "x")
    configured = dict(configured or {})
    unknown = sorted(set(configured) - set(DIM_ROLES))
    if unknown:
        raise DataError(f"{where}: data.dims: unknown role(s) {', '.join(map(repr, unknown))}; "
                        f"roles: {', '.join(DIM_ROLES)}")
    found: dict[str, str] = {}
    for role in DIM_ROLES:
        name = configured.get(role)
        if name is None:
            continue
        name = str(name)
        if name not in dims:
            raise DataError(f"{where}: data.dims.{role} {name!r} is not one of its dims {dims}")
        if role not in roles:
            raise DataError(f"{where} has dims {dims} (rank 3: sample, y, x), so no channel "
                            f"dimension; data.dims.channel {name!r} does not fit")
        if name in found.values():
            other = next(r for r, d in found.items() if d == name)
            raise DataError(f"{where}: data.dims.{role} and data.dims.{other} are both {name!r}")
        found[role] = name
    if target_dim is not None and target_dim in dims:
        if "sample" in found and found["sample"] != target_dim:
            raise DataError(f"{where}: data.dims.sample is {found['sample']!r} but the target "
                            f"variable's dimension is {target_dim!r}")
        if "sample" not in found and target_dim not in found.values():
            found["sample"] = target_dim
    for role in roles:
        if role in found:
            continue
        free = [d for d in dims if d not in found.values()]
        hits = [d for d in free if d.lower() in DIM_NAMES[role]]
        if len(hits) > 1:
            raise DataError(f"{where} has dims {dims}: {hits[0]!r} and {hits[1]!r} both look "
                            f"like the {role} dimension; name it with data.dims.{role}")
        if hits:
            found[role] = hits[0]
    left_roles = [r for r in roles if r not in found]
    left_dims = [d for d in dims if d not in found.values()]
    if len(left_roles) == 1 and len(left_dims) == 1:
        found[left_roles[0]] = left_dims[0]
    elif left_roles:
        example = ", ".join(f"{r}: {d}" for r, d in zip(left_roles, left_dims))
        raise DataError(f"{where} has dims {dims}: cannot tell which dimension is "
                        f"{' / '.join(left_roles)} ({', '.join(map(repr, left_dims))} unnamed); "
                        f"name them with data.dims, e.g. dims: {{{example}}}")
    return {r: found[r] for r in roles}


def _open(path: Path, label: str):
    import xarray as xr

    require_file(path, label)
    try:
        return xr.open_dataset(path, decode_times=False)
    except Exception as e:
        raise DataError(f"{label}: {path} is not a readable netCDF file ({typed_line(e)})") from e


def _check_variables(ds, path: Path, label: str, names: list[str]) -> None:
    missing = [v for v in names if v not in ds.variables]
    if missing:
        raise DataError(
            f"{label}: {path} has no variable {missing[0]!r} "
            f"(variables: {', '.join(map(str, ds.variables)) or 'none'})"
        )


def _layout(ds, path: Path, label: str, image_var: str, target_var: str,
            dims: Mapping[str, Any] | None) -> dict[str, str]:
    target = ds[target_var]
    target_dim = str(target.dims[0]) if target.ndim == 1 else None
    return resolve_dims(ds[image_var].dims, dims, target_dim,
                        f"{label}: {path} variable {image_var!r}")


def read_netcdf(
    path: Path,
    image_var: str,
    target_var: str,
    label: str,
    split_var: str | None = None,
    dims: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, str]]:
    """``(images N x C x H x W float32, targets (N,), split flags (N,) or None, layout)`` of a
    file; ``layout`` is ``{role: dimension}`` (:func:`resolve_dims`)."""
    ds = _open(path, label)
    with ds:
        names = [image_var, target_var] + ([split_var] if split_var else [])
        _check_variables(ds, path, label, names)
        layout = _layout(ds, path, label, image_var, target_var, dims)
        sample_dim = layout["sample"]
        for var in names[1:]:
            v = ds[var]
            if tuple(map(str, v.dims)) != (sample_dim,):
                raise DataError(
                    f"{label}: {path} variable {var!r} has dims {tuple(map(str, v.dims))}; "
                    f"expected ({sample_dim},) like the sample dim of {image_var!r}"
                )
        img = ds[image_var].transpose(*layout.values())
        images = np.asarray(img.values, dtype=np.float32)
        targets = np.asarray(ds[target_var].values)
        flags = np.asarray(ds[split_var].values) if split_var else None
    check_finite(images, f"{label}: {path} variable {image_var!r}")
    if np.issubdtype(targets.dtype, np.number):
        check_finite(targets, f"{label}: {path} variable {target_var!r}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    return np.ascontiguousarray(images), targets, flags, layout


# ---------------------------------------------------------------------------------------------
# Splits


def _test_split(rule: Any, n: int, flags: np.ndarray | None, label: str,
                path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    if rule is not None and not isinstance(rule, dict):
        raise DataError(f"{label}: test_split must be null or a mapping, got {rule!r}")
    kind = (rule or {}).get("kind", "random")
    if kind == "random":
        return random_split(rule, n, label)
    if kind == "variable":
        unknown = set(rule) - {"kind", "var"}
        if unknown or not rule.get("var"):
            raise DataError(f"{label}: test_split of kind 'variable' needs exactly 'var'")
        assert flags is not None
        if np.issubdtype(flags.dtype, np.floating):
            check_finite(flags, f"{label}: {path} variable {rule['var']!r}")
        if not np.isin(flags, (0, 1)).all():
            bad = flags[~np.isin(flags, (0, 1))][0].item()
            raise DataError(f"{label}: {path} variable {rule['var']!r} must hold 0/1 "
                            f"(1 = test), found {bad!r}")
        test = np.flatnonzero(flags != 0)
        train = np.flatnonzero(flags == 0)
        return train, test, {"kind": "variable", "var": rule["var"]}
    raise DataError(f"{label}: unknown test_split kind {kind!r}; known: random, variable")


# ---------------------------------------------------------------------------------------------
# Bundle


def _targets(targets: np.ndarray, task: str, num_classes: int | None, label: str,
             what: str) -> tuple[np.ndarray, list[str] | None]:
    """Class indices and names (classification), or float64 targets (regression)."""
    if task == "classification":
        if num_classes is not None and (not isinstance(num_classes, int)
                                        or isinstance(num_classes, bool) or num_classes < 1):
            raise DataError(f"{label}: num_classes must be a positive integer or null, got "
                            f"{num_classes!r}")
        return encode_labels(targets, what, num_classes)
    if not np.issubdtype(targets.dtype, np.number) or targets.dtype.kind == "b":
        raise DataError(f"{what} is {targets.dtype}, not numeric (task regression)")
    return targets.astype(np.float64), None


def netcdf_bundle(
    name: str,
    path: Path,
    image_var: str,
    target_var: str,
    task: str,
    num_classes: int | None,
    test_split: Any,
    normalize: Any,
    root: Path,
    expect_hw: tuple[int, int] | None = None,
    s3: str | None = None,
    dims: Mapping[str, Any] | None = None,
    standardize: bool = False,
) -> DataBundle:
    """Read ``path`` and build the bundle (shared by ``netcdf`` and ``graphene``)."""
    label = name
    if task not in ("classification", "regression"):
        raise DataError(f"{label}: task must be 'classification' or 'regression', got {task!r}")
    if standardize and task != "regression":
        raise DataError(f"{label}: standardize applies to regression targets only "
                        f"(task is {task})")
    split_var = test_split.get("var") if isinstance(test_split, dict) \
        and test_split.get("kind") == "variable" else None
    images, targets, flags, layout = read_netcdf(path, image_var, target_var, label, split_var,
                                                 dims)
    if expect_hw is not None and images.shape[1:] != (1, *expect_hw):
        raise DataError(f"{label}: {path} variable {image_var!r} has sample shape "
                        f"{tuple(images.shape[1:])} (channel, y, x), expected {(1, *expect_hw)}")
    n = images.shape[0]
    if n == 0:
        raise DataError(f"{label}: {path} variable {image_var!r} has no samples")
    train, test, split_info = _test_split(test_split, n, flags, label, path)
    y, class_names = _targets(targets, task, num_classes, label,
                              f"{label}: {path} variable {target_var!r}")
    source = {
        "dataset": name,
        "files": [file_info(path, root)],
        "image_var": image_var,
        "target_var": target_var,
        "layout": layout,
        "test_split": split_info,
    }
    if s3:
        source["s3"] = s3
    return bundle_from_arrays(
        name, images, y, task, train, test, label=label, normalize=normalize,
        standardize=bool(standardize), class_names=class_names,
        num_outputs=len(class_names) if class_names is not None else None, source=source)


# ---------------------------------------------------------------------------------------------
# graphene


def _graphene_files(opts: dict, folder: Path) -> list[Path]:
    return [folder / GRAPHENE_FILE]


def _graphene_source(opts: dict) -> dict:
    return resolve_source(opts["source"], GRAPHENE_SOURCE, "graphene")


def _download_graphene(opts: dict, folder: Path) -> list[S3Download]:
    return [download_s3(_graphene_source(opts), folder / GRAPHENE_FILE, "graphene")]


@register_dataset(
    "graphene",
    options={
        "target": Option("strain", "choice", "regression target variable of the kirigami file",
                         choices=GRAPHENE_TARGETS),
        "source": source_option("S3 source overriding the public kirigami file (bucket, key, "
                                "endpoint_url, ...)"),
    },
    downloader=_download_graphene,
    files=_graphene_files,
)
def _load_graphene(opts: dict, folder: Path) -> DataBundle:
    if opts["target"] not in GRAPHENE_TARGETS:
        raise DataError(f"graphene: target must be one of {', '.join(GRAPHENE_TARGETS)}, "
                        f"got {opts['target']!r}")
    return netcdf_bundle(
        "graphene", folder / GRAPHENE_FILE, "fine_image", opts["target"], "regression",
        None, None, None, folder.parent, expect_hw=GRAPHENE_SHAPE,
        s3=s3_url(_graphene_source(opts)),
    )


# ---------------------------------------------------------------------------------------------
# netcdf

_DIM_KEYS = {role: Option(None, "str", f"the {role} dimension's name (null = found by name: "
                                       f"{', '.join(DIM_NAMES[role][:4])}, ...)", nullable=True)
             for role in DIM_ROLES}

NETCDF_OPTIONS = {
    "path": Option(REQUIRED, "str", "the .nc file: absolute, or relative to the working "
                                    "directory (where snakemake runs); with 'source', where the "
                                    "download goes, relative to resources/{dataset}/netcdf/"),
    "image_var": Option(REQUIRED, "str", "variable holding the images: dims sample, y, x and "
                                         "optionally channel, in any order, found by name "
                                         "(see dims)"),
    "target_var": Option(REQUIRED, "str", "variable holding the targets, (sample,): numbers, "
                                          "or (classification) integers of any value or text"),
    "task": Option(REQUIRED, "choice", "what the target is",
                   choices=("classification", "regression")),
    "num_classes": Option(None, "int", "null: the distinct labels, sorted, are the classes "
                                       "(names kept); N: the labels are the integers 0..N-1; "
                                       "classification only", minimum=1, nullable=True),
    "dims": Option(None, "object", "names of the image variable's dimensions by role, e.g. "
                                   "{sample: n, channel: band, y: lat, x: lon}; roles left out "
                                   "are found by conventional names (null = all)",
                   nullable=True, keys=_DIM_KEYS),
    "standardize": Option(False, "bool", "regression: train on (y - mean) / std with the "
                                         "training part's mean and std; test metrics stay in "
                                         "the original units"),
    "test_split": Option(
        None, "object", "null (random, fraction 0.2, seed 42), {kind: random, fraction, seed} "
                        "or {kind: variable, var: <0/1 variable, 1 = test>}",
        nullable=True, checked=False, keys={
            "kind": Option(DEFAULT_TEST_SPLIT["kind"], "choice", "'random' (seeded, "
                           "nas_core.data.random_test_split) or 'variable' (a 0/1 variable of "
                           "the file)", choices=("random", "variable")),
            "fraction": Option(DEFAULT_TEST_SPLIT["fraction"], "float", "kind random: fraction "
                               "of the samples in the test split"),
            "seed": Option(DEFAULT_TEST_SPLIT["seed"], "int", "kind random: seed of the split"),
            "var": Option(REQUIRED, "str", "kind variable: the variable flagging the test "
                                           "samples, (sample,), 1 = test, 0 = training"),
        }),
    "normalize": Option(
        None, "any", "null (none), 'train' (mean/std of the training part) or {mean: [...], "
                     "std: [...]}",
        checked=False, keys={
            "mean": Option(REQUIRED, "any", "one mean per channel"),
            "std": Option(REQUIRED, "any", "one positive std per channel"),
        }),
    "source": source_option("S3 source to download the file from (null = the file must "
                            "exist)"),
}


def _netcdf_path(opts: dict, folder: Path) -> Path:
    if opts["source"] is not None:  # the download's destination, in the dataset's folder
        p = Path(str(opts["path"])).expanduser()
        return p if p.is_absolute() else folder / p
    return resolve_local(opts["path"], legacy_folder=folder)


def _netcdf_files(opts: dict, folder: Path) -> list[Path]:
    return [_netcdf_path(opts, folder)]


def _netcdf_local(opts: dict, folder: Path) -> list[LocalInput]:
    if opts["source"] is not None:
        return []
    path = _netcdf_path(opts, folder)
    return [LocalInput("path", path, str(opts["path"]),
                       files=(path,) if path.is_file() else ())]


def _download_netcdf(opts: dict, folder: Path) -> list[Path | S3Download]:
    path = _netcdf_path(opts, folder)
    if opts["source"] is None:
        if not path.is_file():
            entry = _netcdf_local(opts, folder)[0]
            raise DataError(f"netcdf: data.path: {describe_missing(entry, 'missing')}, and "
                            f"no 'source' block to download it from")
        return [path]
    return [download_s3(resolve_source(opts["source"], None, "netcdf"), path, "netcdf")]


def _describe_netcdf(opts: dict, folder: Path) -> dict:
    """``layout`` (dimension by role) and, for classification, ``class_names``: read from the
    file's dimensions and target variable only (the images are not loaded).  Best effort: a
    file that cannot be described yet adds nothing (the loader reports what is wrong)."""
    try:
        return _describe(opts, folder)
    except DataError:
        return {}


def _describe(opts: dict, folder: Path) -> dict:
    path = _netcdf_path(opts, folder)
    image_var, target_var = str(opts["image_var"]), str(opts["target_var"])
    with _open(path, "netcdf") as ds:
        _check_variables(ds, path, "netcdf", [image_var, target_var])
        out: dict[str, Any] = {"layout": _layout(ds, path, "netcdf", image_var, target_var,
                                                 opts["dims"])}
        if opts["task"] == "classification":
            targets = np.asarray(ds[target_var].values)
            _, names = _targets(targets, "classification", whole(opts["num_classes"]),
                                "netcdf", f"netcdf: {path} variable {target_var!r}")
            out["class_names"] = names
    return out


@register_dataset("netcdf", options=NETCDF_OPTIONS, downloader=_download_netcdf,
                  files=_netcdf_files, local=_netcdf_local, describe=_describe_netcdf)
def _load_netcdf(opts: dict, folder: Path) -> DataBundle:
    s3 = s3_url(resolve_source(opts["source"], None, "netcdf")) if opts["source"] else None
    path = _netcdf_path(opts, folder)
    if opts["source"] is None and not path.is_file():
        entry = _netcdf_local(opts, folder)[0]
        raise DataError(f"netcdf: data.path: {describe_missing(entry)}")
    return netcdf_bundle(
        "netcdf", path, str(opts["image_var"]), str(opts["target_var"]),
        opts["task"], whole(opts["num_classes"]), opts["test_split"], opts["normalize"],
        folder.parent, s3=s3, dims=opts["dims"], standardize=bool(opts["standardize"]),
    )
