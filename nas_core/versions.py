"""Results versions: which nas_core computes which results, declared next to the math.

Each compute rule of the workflow has one integer here.  It names the results the code
computes, not its bytes: a comment, a log line, a refactoring, a faster kernel that gives the
same numbers leave it alone; a change that makes the same config give other results bumps it.
``tests/test_golden.py`` keeps the integers honest: a tiny deterministic run per stage against
the values recorded in ``tests/data/golden.json``; a change of the math fails it and the failure
names the integer to bump (bump it and rewrite the record, ``NAS_CORE_UPDATE_GOLDEN=1``, in the
same commit).

What the versions do:

- the workflow's compute rules take :func:`of` as a param (``results=results_version(rule)``
  in ``workflow/rules/common.smk``): Snakemake reruns a rule exactly when one of its versions
  (or its config) changes, never for an edit that leaves them alone;
- every output records them (``results_version`` in ``history.json``, ``test.json``,
  ``selection.json``, ``model.json``, ``download.json``, and in checkpoints), so that
  :mod:`nas_core.outdated` can say which outputs another version made (the dry run's lines,
  ``python -m nas_core status``);
- the checkpoint fingerprint holds the stage's versions: a run interrupted before an upgrade
  resumes after it when they are unchanged, and starts afresh when they are not.

Torch-free (the workflow imports it when it parses the Snakefile).
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["DATA", "SEARCH", "GENOTYPE", "SELECT", "TRAIN", "TEST", "MODEL_CARD", "VERSIONS",
           "RULES", "STAGE_RULES", "of", "for_stage", "describe", "differences"]

#: the data layer (``nas_core.data``): the tensors a dataset yields (decoding, scaling,
#: normalisation, splits, augmentation, label encoding) and what ``download.json`` records.
#: Bump when a loader gives other samples, another split or another order for the same config.
DATA = 1
#: the search (``stages/search.py``, ``random_ws.py``, ``random_cell.py``, ``model_search.py``,
#: ``search_paths.py``, ``search_kernels.py``, ``architect.py``, ``ops.py``, the epoch loop):
#: bump when the same config gives other alphas, weights or history (an op, an initialisation,
#: a BatchNorm's eps, the batch order, the optimizer's step, what is evaluated).
SEARCH = 1
#: the cell derived from alphas, a published name or a legacy file (``genotypes.py``,
#: ``stages/genotype.py``): bump when the same source gives another ``genotype.json``.
GENOTYPE = 1
#: the selection among search seeds (``stages/select.py``): bump when the same candidates give
#: another ``selection.json`` or winner.
SELECT = 1
#: the training of a cell from scratch, also the selection's short training
#: (``stages/train.py``, ``model_eval.py``, ``ops.py``, the epoch loop): bump when the same
#: config and genotype give other weights or history.
TRAIN = 1
#: the test pass (``stages/test.py``, ``tasks.py``): bump when the same model gives other
#: metrics or predictions.
TEST = 1
#: the model card (``stages/model_card.py``, ``inference.py``'s format): bump when the same
#: results give another ``model.json``.
MODEL_CARD = 1

#: every version by name (the keys of :func:`of`'s answer)
VERSIONS: dict[str, int] = {"data": DATA, "search": SEARCH, "genotype": GENOTYPE,
                            "select": SELECT, "train": TRAIN, "test": TEST,
                            "model_card": MODEL_CARD}

#: the versions each compute rule's results depend on (those of the code it runs; what it
#: reads is an input whose own rule carries its versions)
RULES: dict[str, tuple[str, ...]] = {
    "download": ("data",),
    "search": ("data", "search"),
    "genotype": ("genotype",),
    "seed_genotype": ("genotype",),
    "select_train": ("data", "train"),
    "select": ("select",),
    "train": ("data", "train"),
    "test": ("data", "test"),
    "model_card": ("data", "model_card"),
}

#: the rule whose versions a stage function records (``select`` trains with the train stage)
STAGE_RULES = {"search": "search", "train": "train", "select": "select", "test": "test",
               "genotype": "genotype", "download": "download", "model_card": "model_card"}


def _current() -> dict[str, int]:
    # read the module's integers at call time (tests patch them)
    g = globals()
    return {name: int(g[name.upper()]) for name in VERSIONS}


def of(rule: str) -> dict[str, int]:
    """The versions the results of ``rule`` depend on, e.g. ``{"data": 1, "search": 1}``
    (a plain dict: Snakemake tracks it as a param)."""
    try:
        names = RULES[rule]
    except KeyError:
        raise KeyError(f"no results version for rule {rule!r}; known: "
                       f"{', '.join(RULES)}") from None
    current = _current()
    return {name: current[name] for name in names}


def for_stage(stage: str) -> dict[str, int]:
    """:func:`of` the rule a stage function computes for (``train`` for the selection's
    training too)."""
    return of(STAGE_RULES.get(stage, stage))


def describe(versions: Mapping[str, int] | None = None) -> str:
    """``"data v1, search v2"``; every version of this nas_core when ``versions`` is None."""
    if versions is None:
        versions = _current()
    return ", ".join(f"{name} v{value}" for name, value in versions.items())


def differences(recorded: Mapping[str, int] | None, rule: str) -> tuple[str, str] | None:
    """``(what made it, what this nas_core computes)`` when the versions recorded in an output
    of ``rule`` differ from :func:`of` (only the differing names), else None; a missing record
    (an output of an earlier nas_core) is a difference."""
    now = of(rule)
    if not isinstance(recorded, Mapping):
        return "a nas_core that recorded no results version", describe(now)
    changed = [name for name in now if recorded.get(name) != now[name]]
    changed += [name for name in recorded if name not in now]
    if not changed:
        return None
    made = ", ".join(f"{n} v{recorded[n]}" if n in recorded else f"no {n} version"
                     for n in changed)
    new = ", ".join(f"{n} v{now[n]}" if n in now else f"no {n} version" for n in changed)
    return made, new
