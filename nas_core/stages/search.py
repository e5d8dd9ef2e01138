"""The search stage: bilevel DARTS search of the supernet (first or second order, PC-DARTS).

Outputs in ``out_dir``: ``alphas.json``, ``supernet.pt``, ``history.json`` (compared bit for bit
between interrupted and uninterrupted runs) and ``timings.json`` (wall-clock seconds per epoch;
not reproducible by nature, hence kept out of ``history.json``).  Checkpoints:
``out_dir/checkpoints/last.pt``.

Each step: an alpha step (``Architect``) on a batch of the alpha half, then a weight step (SGD,
gradient clip) on a batch of the weight half (``architect.search_step``); the alpha half is
cycled if it has fewer batches.  After each epoch the supernet is evaluated (eval mode, no
augmentation) on the alpha half (at most ``max_steps_per_epoch`` batches), and the epoch's
softmaxed alphas and genotype (after the epoch's updates) are recorded.

``alphas.json`` (plain JSON): ``format`` ("nas_core.alphas/1"), ``primitives``, ``steps``,
``multiplier``, ``partial_channels``, ``epochs``, ``alphas`` {normal, reduce} (raw, edges x
ops), ``softmax`` {normal, reduce}, with PC-DARTS ``betas`` and ``edge_weights`` (softmax of the
betas per node), and ``weights`` {normal, reduce}: softmax x edge weight, the exact input of
``derive_genotype`` (equal to ``softmax`` without PC-DARTS).

``history.json``: ``{"stage": "search", "metric": "top1"|"r2", "epochs": [{"epoch" (0-based),
"lr", "train": {"loss", metric}, "valid": {"loss", metric}, "alphas": {"normal", "reduce"}
(softmaxed), "genotype": {...}}]}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nas_core import __version__
from nas_core.checkpoint import atomic_torch_save, atomic_write_json, fingerprint
from nas_core.config import NON_RESULT_KEYS, ConfigError, validate_stage_cfg
from nas_core.stages.genotype import ALPHAS_FORMAT
from nas_core.stages.common import (Checkpointer, Meter, SeededDataset, Timer, autocast,
                                    determinism, epoch_batches, format_metrics, kill_step,
                                    lr_of, make_loader, maybe_kill, metric_name, progress,
                                    remove_files, resolve_amp, resolve_channels_last,
                                    resolve_device, seed_everything, state_dict_cpu)

log = logging.getLogger("nas_core.stages.search")

OUTPUTS = ("alphas.json", "supernet.pt", "history.json", "timings.json")


def make_loss_fn(task: str):
    """Cross entropy for classification; MSE on ``output.squeeze(-1)`` for regression."""
    if task == "classification":
        return lambda out, y: F.cross_entropy(out.float(), y)
    return lambda out, y: F.mse_loss(out.squeeze(-1).float(), y.float())


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, indices, *, batch_size: int,
             max_batches: int | None, task: str, loss_fn, device: torch.device,
             amp_dtype, channels_last: bool, num_workers: int, eval_output=None) -> dict:
    """Loss and metric of ``model`` (eval mode) on ``dataset[indices]`` in order; at most
    ``max_batches`` batches.  Returns ``{"loss", "top1"|"r2"}`` (None values when empty)."""
    batches = [list(indices[k:k + batch_size]) for k in range(0, len(indices), batch_size)]
    if max_batches is not None:
        batches = batches[:max_batches]
    meter = Meter(task)
    was_training = model.training
    model.eval()
    try:
        for x, y in make_loader(dataset, batches, num_workers, device):
            x, y = to_device(x, y, device, channels_last)
            with autocast(device, amp_dtype):
                out = model(x)
                if eval_output is not None:
                    out = eval_output(out)
                loss = loss_fn(out, y)
            meter.update(loss, out.float() if task == "classification" else
                         out.squeeze(-1).float(), y)
    finally:
        model.train(was_training)
    return meter.result()


def _matrix(t: torch.Tensor) -> list:
    return t.detach().float().cpu().tolist()


def alphas_document(model, epochs: int) -> dict[str, Any]:
    """The plain-JSON content of ``alphas.json`` (see :func:`run_search`)."""
    wn, wr = model.arch_weights()
    en, er = model.edge_weights()
    doc: dict[str, Any] = {
        "format": ALPHAS_FORMAT,
        "primitives": list(model.primitives),
        "steps": int(model.steps),
        "multiplier": int(model.multiplier),
        "partial_channels": int(model.partial_channels),
        "epochs": int(epochs),
        "alphas": {"normal": _matrix(model.alphas_normal), "reduce": _matrix(model.alphas_reduce)},
        "softmax": {"normal": _matrix(wn), "reduce": _matrix(wr)},
    }
    if model.betas_normal is not None:
        doc["betas"] = {"normal": _matrix(model.betas_normal),
                        "reduce": _matrix(model.betas_reduce)}
        doc["edge_weights"] = {"normal": _matrix(en), "reduce": _matrix(er)}
    # exactly what SearchNetwork.genotype() feeds to derive_genotype (float32 products)
    doc["weights"] = {"normal": _matrix(wn * en[:, None]), "reduce": _matrix(wr * er[:, None])}
    return doc


def run_search(data: dict, cfg: dict, out_dir: str | Path, *, data_root: str | Path = "resources",
               device: str | torch.device | None = None) -> dict:
    """Run (or resume) the DARTS search; see the module docstring and docs/architecture.md.

    Returns ``{"alphas", "supernet", "history", "timings"}`` (paths as str), ``"genotype"``
    (dict), ``"train"`` / ``"valid"`` (metrics of the last epoch) and ``"resumed_from"``
    (``[epoch, step]`` or None).
    """
    from nas_core.architect import Architect, search_step
    from nas_core.data import load_data, split_indices
    from nas_core.graphs import GraphedSearchStep
    from nas_core.model_search import SearchNetwork

    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in OUTPUTS}
    remove_files(list(paths.values()))  # first: a failing run leaves no old outputs behind
    cfg = validate_stage_cfg("search", cfg)
    dev = resolve_device(device)
    if cfg["cuda_graphs"] and dev.type != "cuda":
        raise ConfigError(f"search.cuda_graphs: needs a CUDA device, running on {dev}")
    amp_dtype = resolve_amp(cfg["amp"], dev)
    channels_last = resolve_channels_last(cfg["channels_last"], dev, amp_dtype)

    bundle = load_data(data, data_root)
    task = bundle.task
    n = len(bundle.train)
    w_idx, a_idx = split_indices(n, cfg["train_portion"], cfg["seed"])
    fp = fingerprint({
        "stage": "search",
        "data": data,
        "data_source": bundle.source,
        "cfg": {k: v for k, v in cfg.items() if k not in NON_RESULT_KEYS},
    })
    log.info("search on %s (%s, %d samples: %d for weights, %d for alphas) on %s, amp %s, "
             "channels_last %s", bundle.name, task, n, len(w_idx), len(a_idx), dev,
             amp_dtype, channels_last)

    with determinism(cfg["deterministic"], dev):
        seed_everything(cfg["seed"])
        model = SearchNetwork(bundle.in_channels, cfg["init_channels"], bundle.num_outputs,
                              cfg["layers"], steps=cfg["steps"], multiplier=cfg["multiplier"],
                              partial_channels=cfg["partial_channels"]).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss_fn = make_loss_fn(task)
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=cfg["lr"],
                                momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg["epochs"],
                                                           eta_min=cfg["lr_min"])
        architect = Architect(model, loss_fn, w_opt, order=cfg["order"], arch_lr=cfg["arch_lr"],
                              arch_weight_decay=cfg["arch_weight_decay"])

        start_epoch, start_step = 0, 0
        history: list[dict] = []
        timings: list[dict] = []
        meter = Meter(task)
        partial_seconds = 0.0
        ckpt_path = out_dir / "checkpoints" / "last.pt"
        checkpointer = Checkpointer(ckpt_path, fp, "search", {
            "model": model, "w_optimizer": w_opt,
            "arch_optimizer": architect.arch_optimizer, "scheduler": sched})
        ckpt = checkpointer.restore()
        resumed_from = None
        if ckpt is not None:
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step"])
            history, timings = list(ckpt["history"]), list(ckpt["timings"])
            meter.load(ckpt["meter"])
            partial_seconds = float(ckpt["epoch_seconds"])
            resumed_from = [start_epoch, start_step]
        del ckpt
        graphed = None
        if cfg["cuda_graphs"]:  # after the restore: the arch optimizer's state is final
            try:
                graphed = GraphedSearchStep(model, architect, w_opt, cfg["grad_clip"], amp_dtype)
            except ValueError as e:
                raise ConfigError(f"search.{e}") from None

        def checkpoint(epoch: int, step: int, seconds: float) -> None:
            checkpointer.save(epoch, step, meter=meter.state(), history=history,
                              timings=timings, epoch_seconds=seconds)

        train_set = SeededDataset(bundle.train, cfg["seed"])
        kill_at = kill_step()
        metric = metric_name(task)
        bs, max_steps = cfg["batch_size"], cfg["max_steps_per_epoch"]
        every = cfg["checkpoint_every_steps"]
        for epoch in range(start_epoch, cfg["epochs"]):
            timer = Timer(partial_seconds if epoch == start_epoch else 0.0)
            w_batches = epoch_batches(w_idx, bs, cfg["seed"], epoch, "search-weights")
            a_batches = epoch_batches(a_idx, bs, cfg["seed"], epoch, "search-alphas")
            n_steps = len(w_batches) if max_steps is None else min(len(w_batches), max_steps)
            step0 = start_step if epoch == start_epoch else 0
            if step0 == 0:
                meter = Meter(task)
            lr = lr_of(w_opt)
            w_loader = make_loader(train_set, w_batches[step0:n_steps], cfg["num_workers"], dev)
            a_loader = make_loader(train_set,
                                   [a_batches[k % len(a_batches)] for k in range(step0, n_steps)],
                                   cfg["num_workers"], dev)
            model.train()
            bar = progress(n_steps, step0, f"search {epoch + 1}/{cfg['epochs']}")
            try:
                for step, (bw, ba) in enumerate(zip(w_loader, a_loader), start=step0):
                    xw, yw = to_device(*bw, dev, channels_last)
                    xa, ya = to_device(*ba, dev, channels_last)
                    if graphed is not None:
                        loss, out = graphed((xw, yw), (xa, ya), lr)
                    else:
                        with autocast(dev, amp_dtype):
                            loss, out = search_step(model, architect, w_opt, (xw, yw),
                                                    (xa, ya), lr, cfg["grad_clip"])
                    meter.update(loss, out.float() if task == "classification"
                                 else out.squeeze(-1).float(), yw)
                    bar.update(1)
                    done = step + 1
                    if every and done % every == 0 and done < n_steps:
                        checkpoint(epoch, done, timer.seconds())
                    maybe_kill(kill_at, epoch * n_steps + done)
            finally:
                bar.close()
            valid = evaluate(model, bundle.train_eval, a_idx, batch_size=bs,
                             max_batches=max_steps, task=task, loss_fn=loss_fn, device=dev,
                             amp_dtype=amp_dtype, channels_last=channels_last,
                             num_workers=cfg["num_workers"])
            wn, wr = model.arch_weights()
            genotype = model.genotype()
            record = {
                "epoch": epoch,
                "lr": lr,
                "train": meter.result(),
                "valid": valid,
                "alphas": {"normal": _matrix(wn), "reduce": _matrix(wr)},
                "genotype": genotype.to_dict(),
            }
            history.append(record)
            seconds = timer.seconds()
            timings.append({"epoch": epoch, "seconds": seconds})
            log.info("search epoch %d/%d lr %.4e train %s valid %s %.1fs genotype %s",
                     epoch + 1, cfg["epochs"], lr, format_metrics(record["train"]),
                     format_metrics(valid), seconds, genotype.to_legacy())
            sched.step()
            meter = Meter(task)
            checkpoint(epoch + 1, 0, 0.0)

        genotype = model.genotype()
        atomic_torch_save(state_dict_cpu(model), paths["supernet.pt"])
        atomic_write_json(paths["history.json"], {"stage": "search", "metric": metric,
                                                  "epochs": history})
        atomic_write_json(paths["timings.json"], {
            "stage": "search", "device": str(dev), "nas_core_version": __version__,
            "epochs": timings, "total_seconds": sum(t["seconds"] for t in timings)})
        atomic_write_json(paths["alphas.json"], alphas_document(model, cfg["epochs"]))
    log.info("search done: %s", genotype.to_legacy())
    last = history[-1] if history else {}
    return {
        **{name.split(".")[0]: str(p) for name, p in paths.items()},
        "genotype": genotype.to_dict(),
        "train": last.get("train"),
        "valid": last.get("valid"),
        "resumed_from": resumed_from,
    }
