"""``search.method: random_ws``: random search with weight sharing (Li & Talwalkar, UAI 2019).

The supernet of the DARTS search (the same modules, data split, weight optimizer, schedule,
gradient clip, checkpoints) is trained one sampled path at a time: each step draws a cell pair
uniformly from the search space (:func:`nas_core.samplers.sample_genotype`) and runs, and so
trains, only its operations (:func:`nas_core.single_path.path_forward`).  No architecture
parameter is trained.  After the last epoch ``search.candidates`` cells are drawn and each is
scored by the supernet's loss along its path on the alpha half (the search's validation set,
at most ``max_steps_per_epoch`` batches, eval mode); the lowest loss is the search's cell
(ties: the earlier draw).

Every draw is named by the seed and its place, not by an RNG stream: step ``k`` of the run
(counted over the epochs, kept in checkpoints) trains the path of
``derive_seed(seed, "random_ws", "path", k)``, candidate ``j`` is that of ``(..., "candidate",
j)``, so a resumed run and every data-parallel rank draw the same paths.  An epoch's ``valid``
is the loss along one fixed path (``"monitor"``), the same every epoch, as the curve of the
shared weights' progress.

Outputs are the search stage's (:mod:`nas_core.stages.search`): ``alphas.json`` holds the
chosen cell as one-hot weights (what the genotype rule derives it from) and every candidate
with its loss; ``history.json`` the candidates too.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Sequence

import torch

from nas_core.checkpoint import atomic_torch_save
from nas_core.config import ConfigError
from nas_core.data import DataBundle
from nas_core.distributed import SINGLE
from nas_core.fileio import atomic_write_json
from nas_core.genotypes import Genotype
from nas_core.memory import Probe
from nas_core.model_search import SearchNetwork
from nas_core.samplers import sample_genotype
from nas_core.single_path import path_forward
from nas_core.stages.common import SeededDataset, derive_seed, epoch_batches, state_dict_cpu
from nas_core.stages.driver import Recipe
from nas_core.stages.loop import EpochStage
from nas_core.stages.runtime import Batch, Runtime, evaluate
from nas_core.stages.search_common import (OUTPUTS, sampled_alphas_document, search_network,
                                           search_split)
from nas_core.tasks import get_task

__all__ = ["draw", "PathModel", "RandomWSEpochs", "RandomWSRecipe", "rank_candidates",
           "random_ws_probe"]


def draw(cfg: dict, primitives: Sequence[str], what: str, k: int) -> Genotype:
    """The cell pair named ``(seed, what, k)`` (module docstring), uniform over the space."""
    g = torch.Generator().manual_seed(derive_seed(cfg["seed"], "random_ws", what, k))
    return sample_genotype(g, cfg["steps"], cfg["multiplier"], primitives)


class PathModel(torch.nn.Module):
    """The supernet seen along one genotype's path: ``forward(x)`` is
    :func:`~nas_core.single_path.path_forward` (so :func:`~nas_core.stages.runtime.evaluate`
    scores a path)."""

    def __init__(self, supernet: SearchNetwork, genotype: Genotype):
        super().__init__()
        self.supernet, self.genotype = supernet, genotype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return path_forward(self.supernet, x, self.genotype)


def _optimizer(cfg: dict, model: SearchNetwork) -> torch.optim.SGD:
    return torch.optim.SGD(model.weight_parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                           weight_decay=cfg["weight_decay"], foreach=True)


class RandomWSEpochs(EpochStage):
    """One epoch of single-path training of the supernet on the weight half."""

    def __init__(self, cfg: dict, bundle: DataBundle, runtime: Runtime, model: SearchNetwork,
                 split: tuple[list[int], list[int]]):
        self.cfg, self.bundle, self.runtime, self.model = cfg, bundle, runtime, model
        self.task = get_task(bundle.task)
        self.w_idx, self.a_idx = split
        self.optimizer = _optimizer(cfg, model)
        self.stateful = {"w_optimizer": self.optimizer}
        #: steps done over the run: names the next step's path
        self.paths = 0

    def schedule(self, epoch: int) -> Sequence[list]:
        return (epoch_batches(self.w_idx, self.cfg["batch_size"], self.cfg["seed"], epoch,
                              "search-weights"),)

    def step(self, batches: Sequence[Batch], lr: float, shares: Sequence[float]):
        (x, y), = batches
        genotype = draw(self.cfg, self.model.primitives, "path", self.paths)
        self.paths += 1
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            out = path_forward(self.model, x, genotype)
            loss = self.task.loss(out, y)
        loss.backward()
        params = self.model.weight_parameters()
        self.runtime.world.average([p.grad for p in params if p.grad is not None], shares[0])
        if self.cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg["grad_clip"])
        self.optimizer.step()
        return loss.detach(), out, y

    def score(self, genotype: Genotype) -> dict:
        """Loss and metric of the supernet along ``genotype`` on the alpha half."""
        return evaluate(PathModel(self.model, genotype), self.bundle.train_eval, self.a_idx,
                        self.task, self.runtime, batch_size=self.cfg["batch_size"],
                        max_batches=self.cfg["max_steps_per_epoch"])

    def end_epoch(self, record: dict) -> str:
        record["valid"] = self.score(draw(self.cfg, self.model.primitives, "monitor", 0))
        return f" ({self.paths} paths trained)"

    def state(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.paths = int(ckpt["paths"])


def rank_candidates(stage: RandomWSEpochs) -> tuple[int, list[dict]]:
    """``(index of the chosen, candidates)``: ``search.candidates`` drawn cells, each
    ``{"genotype", "valid": {"loss", metric}}``, the chosen one the lowest loss."""
    cands = []
    for j in range(stage.cfg["candidates"]):
        genotype = draw(stage.cfg, stage.model.primitives, "candidate", j)
        cands.append({"genotype": genotype.to_dict(), "valid": stage.score(genotype)})
    best = min(range(len(cands)), key=lambda j: (cands[j]["valid"]["loss"], j))
    return best, cands


def summary(best: int, cands: list[dict]) -> str:
    """The candidates in a few words for the console."""
    losses = [c["valid"]["loss"] for c in cands]
    return (f"best of {len(cands)} sampled cells by supernet validation loss: "
            f"{losses[best]:.4f} (median {statistics.median(losses):.4f}, "
            f"worst {max(losses):.4f})")


def random_ws_probe(cfg: dict, bundle: DataBundle, runtime: Runtime) -> Probe:
    """The single-path step at a given batch on random data (:mod:`nas_core.memory`)."""
    task = get_task(bundle.task)
    alone = replace(runtime, world=SINGLE)  # rank 0 probes alone: no collectives

    def run(batch: int) -> None:
        model = search_network(cfg, bundle, runtime)
        stage = RandomWSEpochs(cfg, bundle, alone, model, ([], []))
        data = runtime.batch(torch.randn(batch, bundle.in_channels, *bundle.input_size),
                             task.random_targets(batch, bundle.num_outputs))
        for _ in range(2):
            stage.step((data,), cfg["lr"], (1.0,))

    return run


class RandomWSRecipe(Recipe):
    """The search stage's recipe for ``method: random_ws`` (module docstring)."""

    stage = "search"
    outputs = OUTPUTS

    def check(self, cfg: dict, runtime: Runtime) -> None:
        if cfg["cuda_graphs"]:
            raise ConfigError("search.cuda_graphs: not with search.method random_ws (each "
                              "step runs another path)")

    split = staticmethod(search_split)
    probe = staticmethod(random_ws_probe)
    network = staticmethod(search_network)

    def epoch_stage(self, cfg, bundle, runtime, model, split) -> RandomWSEpochs:
        return RandomWSEpochs(cfg, bundle, runtime, model, split)

    def dataset(self, cfg: dict, bundle: DataBundle) -> SeededDataset:
        return SeededDataset(bundle.train, cfg["seed"])

    def started(self, bundle, stage: RandomWSEpochs, runtime, model) -> str:
        return (f"random_ws search on {bundle.name} ({bundle.task}, {len(bundle.train)} "
                f"samples: {len(stage.w_idx)} train single paths, {len(stage.a_idx)} score "
                f"{stage.cfg['candidates']} sampled cells) on {runtime.describe()}")

    def finish(self, stage: RandomWSEpochs, model: SearchNetwork) -> dict[str, Any]:
        self.best, self.candidates = rank_candidates(stage)
        self.genotype = Genotype.from_dict(self.candidates[self.best]["genotype"])
        return {"genotype": self.genotype.to_dict()}

    def history(self, stage: RandomWSEpochs, outcome) -> dict[str, Any]:
        return {"method": "random_ws", "chosen": self.best, "candidates": self.candidates}

    def write(self, paths, stage: RandomWSEpochs, model: SearchNetwork, outcome) -> None:
        atomic_torch_save(state_dict_cpu(model), paths["supernet.pt"])
        atomic_write_json(paths["alphas.json"], sampled_alphas_document(
            self.genotype, model, stage.cfg["epochs"], "random_ws",
            chosen=self.best, candidates=self.candidates))

    def done(self, paths, outcome) -> str:
        return (f"search done (random_ws, {summary(self.best, self.candidates)}): "
                f"{self.genotype.to_legacy()}")
