"""Declared options of the datasets' ``data:`` blocks: default, kind, range, description.

A dataset registers its options as ``{key: Option(...)}`` (``register_dataset(name,
options=...)``; a plain value is still accepted as a bare default).  The registry takes the
defaults from them; :mod:`nas_core.schema` renders them into the workflow's config schema, so the
descriptions below are the documentation of every ``data:`` key.

A nested block (``source:``, ``test_split:``, ``normalize:``) declares its sub-keys in ``keys``;
``checked=False`` documents them only (the loader checks them, the schema does not).  Sub-keys
never carry a schema ``default`` (Snakemake's ``set_default`` would write into a ``null`` or a
string value): their defaults are named in their descriptions instead.  ``shared`` names a block
rendered once under the schema's ``$defs`` (``source``) and referenced by each option using it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from nas_core.config import range_schema

__all__ = ["REQUIRED", "Option", "KINDS", "CROP_PADDING", "SOURCE_KEYS", "SOURCE", "SHARED",
           "IMPORT_PATH_PATTERN", "IMPORT_PATH_KEYS", "source_option", "option_schema",
           "block_schema", "import_path_branch"]


class _Required:
    """Marker of an option without a default (the config must name it)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: ``kind`` -> JSON Schema type (``choice``: an ``enum`` of ``choices``; ``any``: no type).
KINDS = {"int": "integer", "float": "number", "bool": "boolean", "str": "string",
         "object": "object", "choice": None, "any": None}


@dataclass(frozen=True)
class Option:
    """One key of a dataset's ``data:`` block (mirrors :class:`nas_core.config.Key`).

    ``default``: the value taken when the key is left out (:data:`REQUIRED`: none, the config
    must give it).  ``kind``: one of :data:`KINDS`.  ``minimum`` / ``maximum`` are inclusive
    unless ``exclusive_minimum`` / ``exclusive_maximum``; ``nullable`` also allows ``null``.
    ``keys``: the sub-keys of a nested block, checked by the schema unless ``checked=False``.
    ``shared``: the name of the ``$defs`` block the schema refers to for this option.
    """

    default: Any = REQUIRED
    kind: str = "any"
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple | None = None
    nullable: bool = False
    keys: Mapping[str, "Option"] | None = None
    checked: bool = True
    shared: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Option kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "choice") != (self.choices is not None):
            raise ValueError("Option: choices go with kind 'choice' (and only with it)")


# -- shared declarations -----------------------------------------------------------------------

CROP_PADDING = Option(0, "int", "random-crop padding in pixels for training augmentation "
                                "(0 = off)", minimum=0)

#: The ``source:`` block read by ``nas_core.data.s3.resolve_source`` (defaults equal its
#: ``SOURCE_DEFAULTS``; tests/test_schema.py checks that they agree).
SOURCE_KEYS: dict[str, Option] = {
    "bucket": Option(None, "str", "S3 bucket", nullable=True),
    "key": Option(None, "str", "object key in the bucket", nullable=True),
    "endpoint_url": Option(None, "str", "S3 endpoint (null = AWS)", nullable=True),
    "region": Option(None, "str", "S3 region", nullable=True),
    "anonymous": Option(None, "bool", "unsigned requests (null = try credentials, then "
                                      "anonymous)", nullable=True),
    "sha256": Option(None, "str", "expected sha256 of the file (checked after download)",
                     nullable=True),
    "max_attempts": Option(5, "int", "download attempts", minimum=1),
    "connect_timeout": Option(10, "float", "seconds", minimum=0, exclusive_minimum=True),
    "read_timeout": Option(60, "float", "seconds", minimum=0, exclusive_minimum=True),
}
SOURCE = Option(None, "object", "an S3 object (nas_core.data.s3); keys left out take the "
                                "defaults named in their descriptions",
                nullable=True, keys=SOURCE_KEYS)

#: Blocks rendered once under the schema's ``$defs`` and referenced by name (``shared=``).
SHARED: dict[str, Option] = {"source": SOURCE}

#: ``data.name`` of a user's own dataset: ``package.module:Attribute`` (nas_core.data.custom).
IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"

#: The keys nas_core reads from the data block of a dataset given by import path; every other
#: key is passed to the user's class or function as a keyword argument.
IMPORT_PATH_KEYS: dict[str, Option] = {
    "task": Option(None, "choice", "what the target is (null = the dataset's 'task' attribute)",
                   choices=("classification", "regression"), nullable=True),
    "test_split": Option(None, "object", "null (the dataset's test_indices, else random, "
                                         "fraction 0.2, seed 42) or {kind: random, fraction, "
                                         "seed}", nullable=True),
    "normalize": Option("train", "any", "'train' (mean/std per channel of the training part), "
                                        "null (none) or {mean: [...], std: [...]}"),
    "standardize": Option(False, "bool", "regression: train on standardised targets (the "
                                         "training part's mean and std)"),
}


def source_option(description: str) -> Option:
    """A dataset's ``source:`` option: the shared S3 block, with the dataset's own description."""
    return replace(SOURCE, description=description, shared="source")


# -- JSON Schema -------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    """``value`` as YAML writes it, for "(default ...)" in a description."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _type_schema(opt: Option) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if opt.kind == "choice":
        s["enum"] = list(opt.choices) + ([None] if opt.nullable else [])
    elif KINDS[opt.kind] is not None:
        s["type"] = [KINDS[opt.kind], "null"] if opt.nullable else KINDS[opt.kind]
    s.update(range_schema(opt))
    return s


def _sub_keys(opt: Option) -> dict[str, Any]:
    """``additionalProperties`` / ``properties`` of a nested block (no defaults, see above)."""
    if not opt.keys:
        return {}
    if not opt.checked:  # documented only: a description per key, no constraint
        return {"properties": {k: {"description": _describe(v, False)}
                               for k, v in opt.keys.items()}}
    return {"additionalProperties": False,
            "properties": {k: option_schema(v, with_default=False) for k, v in opt.keys.items()}}


def _describe(opt: Option, with_default: bool) -> str:
    if opt.default is REQUIRED:
        return f"{opt.description} (REQUIRED)"
    if not with_default:
        return f"{opt.description} (default {_scalar(opt.default)})"
    return opt.description


def option_schema(opt: Option, *, with_default: bool = True) -> dict[str, Any]:
    """JSON Schema of one option: type or enum, range, default, description, then the sub-keys
    of a nested block.  A ``shared`` option is a ``$ref`` to ``#/$defs/<shared>``.  Without
    ``with_default`` (sub-keys), the default goes into the description instead."""
    s = {"$ref": f"#/$defs/{opt.shared}"} if opt.shared else _type_schema(opt)
    if with_default and opt.default is not REQUIRED:
        s["default"] = opt.default
    s["description"] = _describe(opt, with_default)
    if not opt.shared:
        s.update(_sub_keys(opt))
    return s


def block_schema(opt: Option) -> dict[str, Any]:
    """JSON Schema of a shared block (a ``$defs`` entry): description, type, sub-keys."""
    return {"description": opt.description, **_type_schema(opt), **_sub_keys(opt)}


def import_path_branch(names: list[str]) -> dict[str, Any]:
    """The ``data`` block's rule for ``name``: an import path ``package.module:Attribute``
    (then the keys of :data:`IMPORT_PATH_KEYS` are typed, any other key goes to the user's
    class), else one of the registered ``names``."""
    return {
        "if": {"properties": {"name": {
            "pattern": IMPORT_PATH_PATTERN,
            "description": "the import path of your own dataset class or function"}},
            "required": ["name"]},
        "then": {"properties": {k: option_schema(o, with_default=False)
                                for k, o in IMPORT_PATH_KEYS.items()}},
        "else": {"properties": {"name": {"enum": list(names),
                                         "description": "registered dataset loader"}}},
    }
