"""Stage configuration keys: defaults, types, ranges and descriptions, in one place.

Every key of the ``search:``, ``train:`` and ``test:`` blocks is declared once below (``SPECS``);
``SEARCH_DEFAULTS`` / ``TRAIN_DEFAULTS`` / ``TEST_DEFAULTS`` are derived from it, the CLI builds
its ``--help`` from it, and :func:`json_schema` renders it as JSON Schema so that the workflow's
``workflow/schemas/config.schema.yaml`` can be checked against it (a test can compare the two).

:func:`validate_stage_cfg` fills in defaults and rejects unknown keys and out-of-range values
with a one-line :class:`ConfigError` naming the key.  :func:`merge` layers config blocks
(shared defaults, then the dataset's block, then command-line overrides).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = [
    "ConfigError",
    "Key",
    "SPECS",
    "SEARCH_DEFAULTS",
    "TRAIN_DEFAULTS",
    "TEST_DEFAULTS",
    "STAGES",
    "defaults",
    "merge",
    "validate_stage_cfg",
    "json_schema",
    "describe",
]

STAGES = ("search", "train", "test")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


@dataclass(frozen=True)
class Key:
    """One configuration key.

    ``kind``: ``int``, ``float``, ``bool``, ``choice`` (one of ``choices``), or ``auto_bool``
    (``"auto"``, ``true`` or ``false``).  ``minimum`` / ``maximum`` are inclusive unless
    ``exclusive_minimum`` / ``exclusive_maximum``; ``nullable`` allows ``null``.
    """

    default: Any
    kind: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: tuple | None = None
    nullable: bool = False
    #: accepted spellings mapped to a canonical value, e.g. YAML's ``off`` (read as false)
    aliases: tuple = ()


# -- shared key declarations ----------------------------------------------------------------
_AMP = Key("auto", "choice",
           'mixed precision: "auto" (bf16 autocast on CUDA, off on the CPU), "bf16" or "off" '
           "(YAML's unquoted off/false means \"off\", true means \"bf16\")",
           choices=("auto", "bf16", "off"), aliases=((False, "off"), (True, "bf16")))
_CHANNELS_LAST = Key("auto", "auto_bool",
                     'channels_last memory format: "auto" (on with CUDA, and on the CPU unless '
                     'amp is bf16), true or false')
_DETERMINISTIC = Key(False, "bool",
                     "deterministic mode: torch.use_deterministic_algorithms, cuDNN "
                     "deterministic, no cuDNN benchmark (slower on CUDA)")
_NUM_WORKERS = Key(2, "int", "DataLoader worker processes (0 = load in the main process); "
                             "results do not depend on it", minimum=0)
_MAX_STEPS = Key(None, "int", "cap on the optimisation steps per epoch (null = full epochs; "
                              "for demos and tests)", minimum=1, nullable=True)
_CKPT_EVERY = Key(200, "int", "also write a checkpoint every N steps within an epoch "
                              "(0 = at epoch ends only)", minimum=0)

SPECS: dict[str, dict[str, Key]] = {
    "search": {
        "epochs": Key(50, "int", "search epochs", minimum=1),
        "batch_size": Key(64, "int", "batch size (weights half and alphas half alike)",
                          minimum=1),
        "layers": Key(8, "int", "cells of the supernet (reduction cells at layers//3 and "
                                "2*layers//3)", minimum=1),
        "init_channels": Key(16, "int", "channels of the first cell", minimum=1),
        "steps": Key(4, "int", "intermediate nodes per cell", minimum=1),
        "multiplier": Key(4, "int", "nodes concatenated into the cell output (<= steps)",
                          minimum=1),
        "lr": Key(0.025, "float", "initial learning rate of the weights (SGD)", minimum=0,
                  exclusive_minimum=True),
        "lr_min": Key(0.001, "float", "final learning rate of the cosine schedule (<= lr)",
                      minimum=0),
        "momentum": Key(0.9, "float", "SGD momentum", minimum=0, maximum=1,
                        exclusive_maximum=True),
        "weight_decay": Key(3e-4, "float", "weight decay of the weights", minimum=0),
        "grad_clip": Key(5.0, "float", "gradient norm clip of the weights (0 = off)",
                         minimum=0),
        "arch_lr": Key(3e-4, "float", "learning rate of the architecture parameters (Adam, "
                                      "betas 0.5, 0.999)", minimum=0, exclusive_minimum=True),
        "arch_weight_decay": Key(1e-3, "float", "weight decay of the architecture parameters",
                                 minimum=0),
        "order": Key(1, "choice", "1 = first-order DARTS, 2 = second order (unrolled)",
                     choices=(1, 2)),
        "partial_channels": Key(1, "int", "K of PC-DARTS: 1/K of the channels go through the "
                                          "mixed op (1 = plain DARTS); must divide "
                                          "init_channels", minimum=1),
        "train_portion": Key(0.5, "float", "fraction of the training part used for the "
                                           "weights; the rest trains the alphas and is the "
                                           "search's validation set", minimum=0, maximum=1,
                             exclusive_minimum=True, exclusive_maximum=True),
        "seed": Key(2, "int", "random seed (weights, data order, augmentation, split)",
                    minimum=0),
        "max_steps_per_epoch": _MAX_STEPS,
        "checkpoint_every_steps": _CKPT_EVERY,
        "amp": _AMP,
        "channels_last": _CHANNELS_LAST,
        "cuda_graphs": Key(False, "bool", "replay each search step as one CUDA graph (CUDA "
                                          "only): fewer CPU-side kernel launches at small "
                                          "batches"),
        "deterministic": _DETERMINISTIC,
        "num_workers": _NUM_WORKERS,
    },
    "train": {
        "epochs": Key(600, "int", "training epochs", minimum=1),
        "batch_size": Key(96, "int", "batch size", minimum=1),
        "layers": Key(20, "int", "cells of the evaluation network", minimum=1),
        "init_channels": Key(36, "int", "channels of the first cell", minimum=1),
        "lr": Key(0.025, "float", "initial learning rate (SGD)", minimum=0,
                  exclusive_minimum=True),
        "lr_min": Key(0.0, "float", "final learning rate of the cosine schedule (<= lr)",
                      minimum=0),
        "momentum": Key(0.9, "float", "SGD momentum", minimum=0, maximum=1,
                        exclusive_maximum=True),
        "weight_decay": Key(3e-4, "float", "weight decay", minimum=0),
        "grad_clip": Key(5.0, "float", "gradient norm clip (0 = off)", minimum=0),
        "auxiliary": Key(False, "bool", "auxiliary head on cell 2*layers//3 (its weights are "
                                        "part of model.pt)"),
        "auxiliary_weight": Key(0.4, "float", "weight of the auxiliary loss", minimum=0),
        "drop_path_prob": Key(0.2, "float", "drop-path probability, ramped linearly: "
                                            "drop_path_prob * epoch / epochs", minimum=0,
                              maximum=1, exclusive_maximum=True),
        "cutout": Key(0, "int", "cutout length in pixels for training augmentation "
                                "(0 = off)", minimum=0),
        "valid_fraction": Key(0.1, "float", "fraction of the training part held out for "
                                            "model selection (0 = none: keep the last "
                                            "epoch's weights)", minimum=0, maximum=1,
                              exclusive_maximum=True),
        "seed": Key(0, "int", "random seed (weights, data order, augmentation, split)",
                    minimum=0),
        "max_steps_per_epoch": _MAX_STEPS,
        "checkpoint_every_steps": _CKPT_EVERY,
        "amp": _AMP,
        "channels_last": _CHANNELS_LAST,
        "deterministic": _DETERMINISTIC,
        "num_workers": _NUM_WORKERS,
    },
    "test": {
        "batch_size": Key(256, "int", "evaluation batch size", minimum=1),
        "amp": _AMP,
        "num_workers": _NUM_WORKERS,
    },
}


def _specs(stage: str) -> dict[str, Key]:
    try:
        return SPECS[stage]
    except KeyError:
        raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}") from None


def defaults(stage: str) -> dict[str, Any]:
    """A fresh dict of the defaults of ``stage``."""
    return {k: spec.default for k, spec in _specs(stage).items()}


SEARCH_DEFAULTS: dict[str, Any] = defaults("search")
TRAIN_DEFAULTS: dict[str, Any] = defaults("train")
TEST_DEFAULTS: dict[str, Any] = defaults("test")

#: Keys that do not change a stage's results; left out of checkpoint fingerprints.
NON_RESULT_KEYS = frozenset({"num_workers", "checkpoint_every_steps"})


def merge(*blocks: Mapping[str, Any] | None) -> dict[str, Any]:
    """Layer config blocks: later blocks override earlier ones key by key (None = empty)."""
    out: dict[str, Any] = {}
    for block in blocks:
        if block is None:
            continue
        if not isinstance(block, Mapping):
            raise ConfigError(f"a config block must be a mapping, got {type(block).__name__}")
        out.update(block)
    return out


def _fmt_range(spec: Key) -> str:
    lo = hi = ""
    if spec.minimum is not None:
        lo = ("(" if spec.exclusive_minimum else "[") + f"{spec.minimum:g}"
    else:
        lo = "(-inf"
    if spec.maximum is not None:
        hi = f"{spec.maximum:g}" + (")" if spec.exclusive_maximum else "]")
    else:
        hi = "inf)"
    return f"{lo}, {hi}"


def _check_value(stage: str, key: str, spec: Key, value: Any) -> Any:
    where = f"{stage}.{key}"
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{where}: must not be null")
    for alias, canonical in spec.aliases:
        if value == alias and type(value) is type(alias):
            return canonical
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if spec.kind == "auto_bool":
        if isinstance(value, bool) or value == "auto":
            return value
        raise ConfigError(f'{where}: must be "auto", true or false, got {value!r}')
    if spec.kind == "choice":
        for c in spec.choices:
            if value == c and type(value) is type(c):
                return value
        raise ConfigError(f"{where}: must be one of "
                          f"{', '.join(map(repr, spec.choices))}, got {value!r}")
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{where}: must be an integer, got {value!r}")
    elif spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be finite, got {value!r}")
    else:  # pragma: no cover - declaration error
        raise AssertionError(f"bad kind {spec.kind!r} for {where}")
    bad = False
    if spec.minimum is not None:
        bad |= value <= spec.minimum if spec.exclusive_minimum else value < spec.minimum
    if spec.maximum is not None:
        bad |= value >= spec.maximum if spec.exclusive_maximum else value > spec.maximum
    if bad:
        raise ConfigError(f"{where}: {value!r} is out of range {_fmt_range(spec)}")
    return value


def validate_stage_cfg(stage: str, cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg`` over the defaults of ``stage``, type- and range-checked.

    Returns a new dict holding every key of the stage (floats as ``float``).  Raises
    :class:`ConfigError` (one line, naming ``stage.key``) on an unknown key, a wrong type, a
    value out of range, or an inconsistent pair (``lr_min > lr``, ``multiplier > steps``,
    ``partial_channels`` not dividing ``init_channels``).
    """
    specs = _specs(stage)
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{stage}: config block must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(str(k) for k in cfg if k not in specs)
    if unknown:
        raise ConfigError(f"{stage}.{unknown[0]}: unknown key; known: {', '.join(specs)}")
    out = {}
    for key, spec in specs.items():
        out[key] = _check_value(stage, key, spec, cfg.get(key, spec.default))
    if "lr_min" in out and out["lr_min"] > out["lr"]:
        raise ConfigError(f"{stage}.lr_min: {out['lr_min']!r} is larger than "
                          f"{stage}.lr {out['lr']!r}")
    if stage == "search":
        if out["multiplier"] > out["steps"]:
            raise ConfigError(f"search.multiplier: {out['multiplier']} is larger than "
                              f"search.steps {out['steps']}")
        if out["init_channels"] % out["partial_channels"]:
            raise ConfigError(f"search.partial_channels: {out['partial_channels']} does not "
                              f"divide search.init_channels {out['init_channels']}")
    return out


def _schema_of(spec: Key) -> dict[str, Any]:
    s: dict[str, Any] = {"description": spec.description, "default": spec.default}
    if spec.kind == "bool":
        s["type"] = "boolean"
    elif spec.kind == "auto_bool":
        s["enum"] = ["auto", True, False]
    elif spec.kind == "choice":
        s["enum"] = list(spec.choices) + [a for a, _ in spec.aliases]
    else:
        s["type"] = "integer" if spec.kind == "int" else "number"
        if spec.nullable:
            s["type"] = [s["type"], "null"]
        if spec.minimum is not None:
            s["exclusiveMinimum" if spec.exclusive_minimum else "minimum"] = spec.minimum
        if spec.maximum is not None:
            s["exclusiveMaximum" if spec.exclusive_maximum else "maximum"] = spec.maximum
    return s


def json_schema(stage: str) -> dict[str, Any]:
    """JSON Schema (draft 7 / 2020-12 compatible) of one stage block: every key with its type,
    range, default and description, ``additionalProperties: false``.  Cross-key rules
    (lr_min <= lr, multiplier <= steps, partial_channels | init_channels) are checked by
    :func:`validate_stage_cfg` only."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: _schema_of(v) for k, v in _specs(stage).items()},
    }


def describe(stage: str) -> Iterable[tuple[str, Any, str]]:
    """``(key, default, description)`` of every key of ``stage``, in declaration order."""
    for key, spec in _specs(stage).items():
        yield key, spec.default, spec.description
