"""The search stage: ``search.method`` darts (the default; the bilevel DARTS search of the
supernet, first or second order, PC-DARTS), random_ws (:mod:`nas_core.stages.random_ws`) or
random (:mod:`nas_core.stages.random_cell`), all writing the same files.

Outputs in ``out_dir``: ``alphas.json``, ``supernet.pt``, ``history.json`` (compared bit for bit
between interrupted and uninterrupted runs) and ``timings.json`` (wall-clock seconds per epoch;
not reproducible by nature, hence kept out of ``history.json``).  Checkpoints:
``out_dir/checkpoints/last.pt``.  ``alphas.json``: :mod:`nas_core.stages.search_common`.

Each DARTS step: an alpha step (``Architect``) on a batch of the alpha half, then a weight step
(SGD, gradient clip) on a batch of the weight half (``architect.search_step``); the alpha half
is cycled if it has fewer batches.  After each epoch the supernet is evaluated (eval mode, no
augmentation) on the alpha half (at most ``max_steps_per_epoch`` batches), and the epoch's
softmaxed alphas and genotype (after the epoch's updates) are recorded.  The last log line
names the cell and how far the normal and reduction cells' weights moved from uniform
(:func:`nas_core.alpha_stats.moved_line`).

``history.json``: ``{"stage": "search", "metric": "top1"|"r2", "data", "batch": {"batch_size",
"auto"}, "method", "epochs": [{"epoch" (0-based),
"lr", "train": {"loss", metric}, "valid": {"loss", metric}, "alphas": {"normal", "reduce"}
(softmaxed), "genotype": {...}}]}`` (random_ws: no alphas or genotype per epoch; its
``candidates`` and ``chosen``).  ``timings.json`` also holds ``"memory"``: the estimate,
the budget and, on CUDA, the run's measured peak (:meth:`nas_core.stages.budget.BatchPlan.
memory_record`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from nas_core import collapse
from nas_core.alpha_stats import moved_line
from nas_core.architect import Architect
from nas_core.checkpoint import atomic_torch_save
from nas_core.config import ConfigError, validate_stage_cfg
from nas_core.data import DataBundle
from nas_core.distributed import data_parallel
from nas_core.early_stop import EarlyStop
from nas_core.fileio import atomic_write_json
from nas_core.graphs import make_search_step
from nas_core.guards import Guards
from nas_core.hessian import supernet_eigenvalue
from nas_core.memory import Probe
from nas_core.model_search import SearchNetwork
from nas_core.stages.common import SeededDataset, derive_seed, epoch_batches, state_dict_cpu
from nas_core.stages.driver import Recipe, drive
from nas_core.stages.loop import EpochStage
from nas_core.stages.random_cell import run_random_cell
from nas_core.stages.random_ws import RandomWSRecipe
from nas_core.stages.runtime import Batch, Runtime, evaluate, index_batches
from nas_core.stages.search_common import (OUTPUTS, alphas_document, matrix, search_network,
                                           search_split)
from nas_core.tasks import Task, get_task

log = logging.getLogger("nas_core.stages.search")

__all__ = ["run_search", "search_probe", "search_split", "alphas_document", "OUTPUTS"]


def _optimizers(cfg: dict, model: SearchNetwork,
                task: Task) -> tuple[torch.optim.Optimizer, Architect]:
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                            weight_decay=cfg["weight_decay"], foreach=True)
    return w_opt, Architect(model, task.loss, w_opt, order=cfg["order"], arch_lr=cfg["arch_lr"],
                            arch_weight_decay=cfg["arch_weight_decay"])


def search_probe(cfg: dict, bundle: DataBundle, runtime: Runtime) -> Probe:
    """The search step of ``cfg`` at a given batch on random data of ``bundle``'s shape: a
    fresh supernet and optimizers, two steps (the second with the optimizer states in
    place), eager also when ``cuda_graphs`` is on (:mod:`nas_core.memory`)."""
    task = get_task(bundle.task)

    def run(batch: int) -> None:
        model = search_network(cfg, bundle, runtime)
        w_opt, architect = _optimizers(cfg, model, task)
        guards = Guards(cfg, model, architect, derive_seed(cfg["seed"], "sdarts"))
        step = make_search_step(model, architect, w_opt, cfg["grad_clip"], runtime.amp_dtype,
                                perturbation=guards.perturbation)
        data = [runtime.batch(torch.randn(batch, bundle.in_channels, *bundle.input_size),
                              task.random_targets(batch, bundle.num_outputs)) for _ in range(2)]
        for _ in range(2):
            step(data[0], data[1], cfg["lr"])

    return run


class _Search(EpochStage):
    """One epoch of bilevel search: batches of the weight half, the alpha half cycled."""

    def __init__(self, cfg: dict, bundle: DataBundle, runtime: Runtime, model: SearchNetwork,
                 w_opt: torch.optim.Optimizer, architect: Architect,
                 split: tuple[list[int], list[int]]):
        self.cfg, self.bundle, self.runtime, self.model = cfg, bundle, runtime, model
        self.task = get_task(bundle.task)
        self.w_idx, self.a_idx = split
        self.architect = architect
        self.optimizer = w_opt  # the weights' SGD, which the cosine schedule drives
        self.stateful = {"w_optimizer": w_opt, "arch_optimizer": architect.arch_optimizer}
        self.search_step = None
        self.shares = {"train": 1.0, "val": 1.0}
        #: R-DARTS' indicator so far, ``[epoch, value]`` (checkpointed)
        self.eigenvalues: list[list] = []
        self._hessian_data: list[Batch] | None = None
        self.stopper = EarlyStop(cfg)
        #: beta-DARTS, DARTS-, SDARTS-RS (their weights set per epoch; checkpointed)
        self.guards = Guards(cfg, model, architect, derive_seed(cfg["seed"], "sdarts"))
        #: the alphas at the last measurements, for R-DARTS' early stop (checkpointed)
        self.snapshots: dict[int, list[torch.Tensor]] = {}
        if runtime.world.size > 1:
            self.architect.grad_reduce = self._reduce

    def prepare(self) -> None:  # after the restore: the arch optimizer's state is final
        if self.cfg["cuda_graphs"] and self.runtime.world.size > 1:
            raise ConfigError(f"search.cuda_graphs: not with {self.runtime.world.size} "
                              f"data-parallel processes (use one process per search)")
        try:
            self.search_step = make_search_step(
                self.model, self.architect, self.optimizer, self.cfg["grad_clip"],
                self.runtime.amp_dtype, cuda_graphs=self.cfg["cuda_graphs"],
                perturbation=self.guards.perturbation)
        except ValueError as e:
            raise ConfigError(f"search.{e}") from None

    def schedule(self, epoch: int) -> Sequence[list]:
        bs, seed = self.cfg["batch_size"], self.cfg["seed"]
        return (epoch_batches(self.w_idx, bs, seed, epoch, "search-weights"),
                epoch_batches(self.a_idx, bs, seed, epoch, "search-alphas"))

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        return self.guards.begin_epoch(epoch)

    def step(self, batches: Sequence[Batch], lr: float, shares: Sequence[float]):
        weights, alphas = batches
        self.shares = {"train": shares[0], "val": shares[1]}
        loss, out = self.search_step(weights, alphas, lr)
        return loss, out, weights[1]

    def _reduce(self, grads: list[torch.Tensor], which: str) -> None:
        """Gradients of this rank's part -> those of the global batch (weights on the
        ``train`` batch, alphas on the ``val`` batch)."""
        self.runtime.world.average(grads, self.shares[which])

    def end_epoch(self, record: dict) -> str:
        record["valid"] = evaluate(self.model, self.bundle.train_eval, self.a_idx, self.task,
                                   self.runtime, batch_size=self.cfg["batch_size"],
                                   max_batches=self.cfg["max_steps_per_epoch"])
        wn, wr = self.model.arch_weights()
        genotype = self.model.genotype()
        record["alphas"] = {"normal": matrix(wn), "reduce": matrix(wr)}
        record["genotype"] = genotype.to_dict()
        record["collapse"] = diag = collapse.diagnostics(record["alphas"]["normal"],
                                                         record["alphas"]["reduce"],
                                                         record["genotype"])
        epoch, eigenvalue = record["epoch"], None
        if self._measures_hessian(epoch):
            eigenvalue = diag["hessian_eigenvalue"] = self.eigenvalue()
            self.eigenvalues.append([epoch, eigenvalue])
            if self.stopper.hessian:
                self.snapshots[epoch] = [p.detach().cpu().clone()
                                         for p in self.model.arch_parameters()]
                for old in sorted(self.snapshots)[:-(collapse.RDARTS_K + 1)]:
                    del self.snapshots[old]
        values = [v for _, v in self.eigenvalues] if eigenvalue is not None else ()
        decision = self.stopper.update(epoch, record["genotype"], self.eigenvalues,
                                       measured=eigenvalue is not None)
        if self.runtime.world.is_main:
            for line in collapse.warnings(diag, values):
                log.warning("search seed %s epoch %d: %s", self.cfg["seed"], epoch + 1, line)
            if decision is not None:
                log.warning("search seed %s: early stop after epoch %d of %d: %s",
                            self.cfg["seed"], epoch + 1, self.cfg["epochs"],
                            decision["reason"])
        return f" genotype {genotype.to_legacy()}{collapse.epoch_note(diag, eigenvalue)}"

    def stopped(self) -> bool:
        return self.stopper.decision is not None

    def keep_stopping_alphas(self) -> None:
        """After an early stop that keeps an earlier epoch's alphas (R-DARTS), put them back
        into the supernet, so its files and genotype are that epoch's."""
        decision = self.stopper.decision
        if decision is None or decision["keep"] == decision["epoch"]:
            return
        with torch.no_grad():
            for p, saved in zip(self.model.arch_parameters(), self.snapshots[decision["keep"]]):
                p.copy_(saved.to(p.device))

    def _measures_hessian(self, epoch: int) -> bool:
        every = self.cfg["hessian_every"]
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg["epochs"])

    def eigenvalue(self) -> float:
        """R-DARTS' indicator on the fixed batches of the alpha half (``hessian_batches``)."""
        if self._hessian_data is None:
            batches = index_batches(self.a_idx, self.cfg["batch_size"],
                                    self.cfg["hessian_batches"])
            self._hessian_data = [self.runtime.batch(x, y) for x, y in
                                  self.runtime.loader(self.bundle.train_eval, batches)]
        return supernet_eigenvalue(self.model, self._hessian_data, self.task.loss,
                                   seed=self.cfg["seed"])

    def state(self) -> dict[str, Any]:
        return {"eigenvalues": [list(e) for e in self.eigenvalues],
                "early_stop": self.stopper.state(),
                "alpha_snapshots": [[k, v] for k, v in sorted(self.snapshots.items())],
                **self.guards.state()}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.eigenvalues = [[int(e), float(v)] for e, v in ckpt.get("eigenvalues", ())]
        self.stopper.load(ckpt.get("early_stop"))
        self.snapshots = {int(k): v for k, v in ckpt.get("alpha_snapshots", ())}
        self.guards.load(ckpt)


class _SearchRecipe(Recipe):
    stage = "search"
    outputs = OUTPUTS

    def check(self, cfg: dict, runtime: Runtime) -> None:
        if cfg["cuda_graphs"] and runtime.device.type != "cuda":
            raise ConfigError(f"search.cuda_graphs: needs a CUDA device, running on "
                              f"{runtime.device}")
        if cfg["cuda_graphs"] and cfg["recompute"]:
            raise ConfigError("search.recompute: not with search.cuda_graphs (a captured step "
                              "cannot recompute)")

    split = staticmethod(search_split)
    probe = staticmethod(search_probe)
    network = staticmethod(search_network)

    def epoch_stage(self, cfg, bundle, runtime, model, split) -> _Search:
        w_opt, architect = _optimizers(cfg, model, get_task(bundle.task))
        return _Search(cfg, bundle, runtime, model, w_opt, architect, split)

    def dataset(self, cfg: dict, bundle: DataBundle) -> SeededDataset:
        return SeededDataset(bundle.train, cfg["seed"])

    def started(self, bundle, stage, runtime, model) -> str:
        return (f"search on {bundle.name} ({bundle.task}, {len(bundle.train)} samples: "
                f"{len(stage.w_idx)} for weights, {len(stage.a_idx)} for alphas) on "
                f"{runtime.describe()}")

    def finish(self, stage: _Search, model: SearchNetwork) -> dict[str, Any]:
        stage.keep_stopping_alphas()
        self.stop = stage.stopper.decision
        self.genotype = model.genotype()
        self.moved = moved_line(*model.arch_weights())
        return {"genotype": self.genotype.to_dict()}

    def history(self, stage: _Search, outcome) -> dict[str, Any]:
        return {"method": "darts", **({"early_stop": self.stop} if self.stop else {})}

    def write(self, paths, stage: _Search, model: SearchNetwork, outcome) -> None:
        atomic_torch_save(state_dict_cpu(model), paths["supernet.pt"])
        epochs = self.stop["epoch"] + 1 if self.stop else stage.cfg["epochs"]
        atomic_write_json(paths["alphas.json"], alphas_document(model, epochs))

    def done(self, paths, outcome) -> str:
        stop = (f" (stopped early after epoch {self.stop['epoch'] + 1}: {self.stop['reason']})"
                if self.stop else "")
        return f"search done{stop}: {self.genotype.to_legacy()}; {self.moved}"


def run_search(data: dict, cfg: dict, out_dir: str | Path, *, data_root: str | Path = "resources",
               device: str | torch.device | None = None, nproc: int | None = None) -> dict:
    """Run (or resume) the search of ``search.method`` (darts, random_ws; random draws a cell
    and trains nothing, :mod:`nas_core.stages.random_cell`); see the module docstring and
    docs/architecture.md.

    Returns ``{"alphas", "supernet", "history", "timings"}`` (paths as str), ``"genotype"``
    (dict), ``"train"`` / ``"valid"`` (metrics of the last epoch) and ``"resumed_from"``
    (``[epoch, step]`` or None).  ``nproc=N`` searches data-parallel in N processes
    (:mod:`nas_core.distributed`): weight and alpha gradients averaged over the ranks.
    """
    if validate_stage_cfg("search", cfg)["method"] == "random":
        return run_random_cell(data, cfg, out_dir, data_root=data_root)
    return _run_trained_search(data, cfg, out_dir, data_root=data_root, device=device,
                               nproc=nproc)


@data_parallel
def _run_trained_search(data: dict, cfg: dict, out_dir: str | Path, *,
                        data_root: str | Path, device: str | torch.device | None) -> dict:
    recipe = RandomWSRecipe() if cfg.get("method") == "random_ws" else _SearchRecipe()
    return drive(recipe, data, cfg, out_dir, data_root=data_root, device=device)
