"""``search.method: random``: the random-sampling baseline of NAS (Li & Talwalkar, UAI 2019).

The search's cell is drawn uniformly from the search space (two distinct inputs and a
non-``none`` operation per node, both cells; :func:`nas_core.samplers.sample_genotype`) by a
generator seeded with ``derive_seed(seed, "random", "cell")``: the same seed gives the same
cell on every machine, another seed another cell.  Nothing is trained; the stage writes the
search's files so that every later stage (selection among seeds, training, test, report) runs
unchanged: ``alphas.json`` with the cell as one-hot weights, ``history.json`` with no epochs,
``timings.json``, and ``supernet.pt``: the supernet at its seeded initialisation (no weight of
it was trained).  Several ``search.seeds`` with the ``select:`` block make it random search
with a short training of each drawn cell as the judge.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from nas_core import __version__, versions
from nas_core.checkpoint import atomic_torch_save
from nas_core.config import validate_stage_cfg
from nas_core.data import load_data
from nas_core.fileio import atomic_write_json
from nas_core.model_search import SearchNetwork
from nas_core.samplers import sample_genotype
from nas_core.stages.common import derive_seed, state_dict_cpu
from nas_core.stages.runtime import seed_everything
from nas_core.stages.search_common import OUTPUTS, sampled_alphas_document
from nas_core.tasks import get_task

__all__ = ["run_random_cell", "random_cell"]

log = logging.getLogger("nas_core.stages.search")


def random_cell(cfg: dict, primitives=None):
    """The cell pair of the ``search`` block ``cfg`` (validated) under its seed."""
    g = torch.Generator().manual_seed(derive_seed(cfg["seed"], "random", "cell"))
    kwargs = {} if primitives is None else {"primitives": primitives}
    return sample_genotype(g, cfg["steps"], cfg["multiplier"], **kwargs)


def run_random_cell(data: dict, cfg: dict, out_dir: str | Path, *,
                    data_root: str | Path = "resources") -> dict:
    """Draw the cell and write the search's files (module docstring); returns what
    :func:`nas_core.stages.run_search` returns (no metrics: nothing was trained)."""
    start = time.perf_counter()
    cfg = validate_stage_cfg("search", cfg)
    bundle = load_data(data, data_root)
    out_dir = Path(out_dir)
    paths = {file: out_dir / file for file in OUTPUTS}
    seed_everything(cfg["seed"])
    model = SearchNetwork(bundle.in_channels, cfg["init_channels"], bundle.num_outputs,
                          cfg["layers"], steps=cfg["steps"], multiplier=cfg["multiplier"])
    genotype = random_cell(cfg, model.primitives)
    atomic_torch_save(state_dict_cpu(model), paths["supernet.pt"])
    atomic_write_json(paths["alphas.json"],
                      sampled_alphas_document(genotype, model, 0, "random", seed=cfg["seed"]))
    atomic_write_json(paths["history.json"], {
        "stage": "search", "results_version": versions.for_stage("search"),
        "metric": get_task(bundle.task).metric, "data": bundle.source,
        "method": "random", "epochs": []})
    atomic_write_json(paths["timings.json"], {
        "stage": "search", "device": "cpu", "nas_core_version": __version__, "epochs": [],
        "total_seconds": time.perf_counter() - start, "memory": None})
    log.info("search done (random: a cell drawn under seed %d, nothing trained): %s",
             cfg["seed"], genotype.to_legacy())
    return {**{file.split(".")[0]: str(p) for file, p in paths.items()},
            "genotype": genotype.to_dict(), "train": None, "valid": None,
            "resumed_from": None}
