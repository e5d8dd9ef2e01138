"""What the search methods share (``search.method``: darts, random, random_ws): the supernet
they build, the data split, and the files they write (:data:`OUTPUTS`).

``alphas.json`` (plain JSON): ``format`` ("nas_core.alphas/1"), ``method``, ``primitives``,
``steps``, ``multiplier``, ``partial_channels``, ``epochs``, ``alphas`` {normal, reduce} (raw,
edges x ops), ``softmax`` {normal, reduce}, with PC-DARTS ``betas`` and ``edge_weights``
(softmax of the betas per node), and ``weights`` {normal, reduce}: softmax x edge weight, the
exact input of ``derive_genotype`` (equal to ``softmax`` without PC-DARTS).  A sampled cell
(random, random_ws) has no alphas: its one-hot weights (:func:`nas_core.samplers.
genotype_weights`) stand in ``alphas``, ``softmax`` and ``weights`` alike, so the genotype rule
derives it like any other; random_ws adds ``candidates`` and ``chosen``.
"""

from __future__ import annotations

from typing import Any

import torch

from nas_core.data import DataBundle, split_indices
from nas_core.genotypes import Genotype
from nas_core.model_search import SearchNetwork
from nas_core.samplers import genotype_weights
from nas_core.stages.genotype import ALPHAS_FORMAT
from nas_core.stages.runtime import Runtime

__all__ = ["OUTPUTS", "search_split", "search_network", "alphas_document",
           "sampled_alphas_document"]

OUTPUTS = ("alphas.json", "supernet.pt", "history.json", "timings.json")


def matrix(t: torch.Tensor) -> list:
    """A tensor as nested lists of float32 values."""
    return t.detach().float().cpu().tolist()


def search_split(cfg: dict, bundle: DataBundle) -> tuple[list[int], list[int]]:
    """The training part's indices that train the weights, and those that train the alphas
    (random_ws: score the candidates)."""
    return split_indices(len(bundle.train), cfg["train_portion"], cfg["seed"])


def search_network(cfg: dict, bundle: DataBundle, runtime: Runtime) -> SearchNetwork:
    """The supernet of the ``search`` block ``cfg`` on ``runtime``'s device."""
    return runtime.model(SearchNetwork(
        bundle.in_channels, cfg["init_channels"], bundle.num_outputs, cfg["layers"],
        steps=cfg["steps"], multiplier=cfg["multiplier"],
        partial_channels=cfg["partial_channels"], recompute=cfg["recompute"],
        aux_skip=cfg["aux_skip"]))


def _head(model: SearchNetwork, epochs: int, method: str) -> dict[str, Any]:
    return {"format": ALPHAS_FORMAT, "method": method, "primitives": list(model.primitives),
            "steps": int(model.steps), "multiplier": int(model.multiplier),
            "partial_channels": int(model.partial_channels), "epochs": int(epochs)}


def alphas_document(model: SearchNetwork, epochs: int) -> dict[str, Any]:
    """``alphas.json`` of a DARTS search (module docstring)."""
    wn, wr = model.arch_weights()
    en, er = model.edge_weights()
    doc = {**_head(model, epochs, "darts"),
           "alphas": {"normal": matrix(model.alphas_normal),
                      "reduce": matrix(model.alphas_reduce)},
           "softmax": {"normal": matrix(wn), "reduce": matrix(wr)}}
    if model.betas_normal is not None:
        doc["betas"] = {"normal": matrix(model.betas_normal),
                        "reduce": matrix(model.betas_reduce)}
        doc["edge_weights"] = {"normal": matrix(en), "reduce": matrix(er)}
    # exactly what SearchNetwork.genotype() feeds to derive_genotype (float32 products)
    doc["weights"] = {"normal": matrix(wn * en[:, None]), "reduce": matrix(wr * er[:, None])}
    return doc


def sampled_alphas_document(genotype: Genotype, model: SearchNetwork, epochs: int,
                            method: str, **extra: Any) -> dict[str, Any]:
    """``alphas.json`` of a sampled cell: one-hot weights everywhere (module docstring)."""
    wn, wr = genotype_weights(genotype, model.steps, model.primitives)
    hard = {"normal": matrix(wn), "reduce": matrix(wr)}
    return {**_head(model, epochs, method), "alphas": hard, "softmax": hard, "weights": hard,
            **extra}
