"""The train stage: full training of the evaluation network built from ``genotype.json``.

The training part of the data is split by ``split_indices(n, 1 - valid_fraction, seed)`` into
the samples that train the weights and a held-out part for model selection.  After every epoch
the network is evaluated on the held-out part; ``model.pt`` holds the weights of the epoch with
the best held-out metric (top-1, or R^2 for regression; the earliest epoch wins ties).  With
``valid_fraction: 0`` there is no held-out part and ``model.pt`` holds the last epoch's weights.

Outputs in ``out_dir``: ``model.pt`` (state dict only), ``history.json`` (compared bit for bit
between interrupted and uninterrupted runs), ``timings.json`` (wall-clock seconds; not
reproducible, so kept apart).  Checkpoints: ``out_dir/checkpoints/last.pt`` (also holds the
best weights so far).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nas_core import __version__
from nas_core.checkpoint import atomic_torch_save, atomic_write_json, fingerprint
from nas_core.config import NON_RESULT_KEYS, validate_stage_cfg
from nas_core.stages.common import (Checkpointer, Meter, SeededDataset, Timer, autocast, determinism,
                                    epoch_batches, format_metrics, kill_step, lr_of,
                                    make_loader, maybe_kill, metric_name, progress,
                                    remove_files, resolve_amp, resolve_channels_last,
                                    resolve_device, seed_everything, state_dict_cpu)
from nas_core.stages.genotype import load_genotype_file
from nas_core.stages.search import evaluate, make_loss_fn, to_device

log = logging.getLogger("nas_core.stages.train")

OUTPUTS = ("model.pt", "history.json", "timings.json")


def _first(out):
    return out[0]


def run_train(data: dict, cfg: dict, genotype: str | Path, out_dir: str | Path, *,
              data_root: str | Path = "resources",
              device: str | torch.device | None = None) -> dict:
    """Train (or resume training) the network of ``genotype`` (a genotype.json path).

    Returns ``{"model", "history", "timings"}`` (paths as str), ``"best_epoch"``,
    ``"train"`` / ``"valid"`` (metrics of the last epoch) and ``"resumed_from"``.
    """
    from nas_core.data import load_data, split_indices
    from nas_core.model_eval import EvalNetwork, count_parameters

    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in OUTPUTS}
    remove_files(list(paths.values()))  # first: a failing run leaves no old outputs behind
    cfg = validate_stage_cfg("train", cfg)
    geno = load_genotype_file(genotype)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    dev = resolve_device(device)
    amp_dtype = resolve_amp(cfg["amp"], dev)
    channels_last = resolve_channels_last(cfg["channels_last"], dev, amp_dtype)

    bundle = load_data(data, data_root)
    task = bundle.task
    n = len(bundle.train)
    tr_idx, va_idx = split_indices(n, 1.0 - cfg["valid_fraction"], cfg["seed"])
    fp = fingerprint({
        "stage": "train",
        "data": data,
        "data_source": bundle.source,
        "genotype": geno.to_dict(),
        "cfg": {k: v for k, v in cfg.items() if k not in NON_RESULT_KEYS},
    })

    with determinism(cfg["deterministic"], dev):
        seed_everything(cfg["seed"])
        model = EvalNetwork(geno, bundle.in_channels, cfg["init_channels"], bundle.num_outputs,
                            cfg["layers"], auxiliary=cfg["auxiliary"]).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        log.info("train on %s (%s, %d samples: %d train, %d held out) on %s, amp %s, "
                 "channels_last %s; %d parameters (without auxiliary head)", bundle.name, task,
                 n, len(tr_idx), len(va_idx), dev, amp_dtype, channels_last,
                 count_parameters(model))
        loss_fn = make_loss_fn(task)
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"],
                                                           eta_min=cfg["lr_min"])

        start_epoch, start_step = 0, 0
        history: list[dict] = []
        timings: list[dict] = []
        meter = Meter(task)
        partial_seconds = 0.0
        best = {"epoch": None, "value": None, "state": None}
        resumed_from = None
        checkpointer = Checkpointer(ckpt_path, fp, "train",
                                    {"model": model, "optimizer": opt, "scheduler": sched})
        ckpt = checkpointer.restore()
        if ckpt is not None:
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step"])
            history, timings = list(ckpt["history"]), list(ckpt["timings"])
            meter.load(ckpt["meter"])
            partial_seconds = float(ckpt["epoch_seconds"])
            best = dict(ckpt["best"])
            resumed_from = [start_epoch, start_step]
        del ckpt

        def checkpoint(epoch: int, step: int, seconds: float) -> None:
            checkpointer.save(epoch, step, meter=meter.state(), history=history,
                              timings=timings, epoch_seconds=seconds, best=best)

        train_set = SeededDataset(bundle.train, cfg["seed"], cutout=cfg["cutout"])
        kill_at = kill_step()
        metric = metric_name(task)
        bs, max_steps = cfg["batch_size"], cfg["max_steps_per_epoch"]
        every = cfg["checkpoint_every_steps"]
        aux_w = cfg["auxiliary_weight"]
        for epoch in range(start_epoch, cfg["epochs"]):
            timer = Timer(partial_seconds if epoch == start_epoch else 0.0)
            batches = epoch_batches(tr_idx, bs, cfg["seed"], epoch, "train")
            n_steps = len(batches) if max_steps is None else min(len(batches), max_steps)
            step0 = start_step if epoch == start_epoch else 0
            if step0 == 0:
                meter = Meter(task)
            lr = lr_of(opt)
            drop_prob = cfg["drop_path_prob"] * epoch / cfg["epochs"]
            model.drop_path_prob = drop_prob
            loader = make_loader(train_set, batches[step0:n_steps], cfg["num_workers"], dev)
            model.train()
            bar = progress(n_steps, step0, f"train {epoch + 1}/{cfg['epochs']}")
            try:
                for step, batch in enumerate(loader, start=step0):
                    x, y = to_device(*batch, dev, channels_last)
                    opt.zero_grad(set_to_none=True)
                    with autocast(dev, amp_dtype):
                        logits, logits_aux = model(x)
                        loss = loss_fn(logits, y)
                        if logits_aux is not None:
                            loss = loss + aux_w * loss_fn(logits_aux, y)
                    loss.backward()
                    if cfg["grad_clip"] > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                    opt.step()
                    meter.update(loss.detach(), logits.detach().float() if task == "classification"
                                 else logits.detach().squeeze(-1).float(), y)
                    bar.update(1)
                    done = step + 1
                    if every and done % every == 0 and done < n_steps:
                        checkpoint(epoch, done, timer.seconds())
                    maybe_kill(kill_at, epoch * n_steps + done)
            finally:
                bar.close()
            if va_idx:
                valid = evaluate(model, bundle.train_eval, va_idx, batch_size=bs,
                                 max_batches=max_steps, task=task, loss_fn=loss_fn, device=dev,
                                 amp_dtype=amp_dtype, channels_last=channels_last,
                                 num_workers=cfg["num_workers"], eval_output=_first)
            else:
                valid = None
            record = {"epoch": epoch, "lr": lr, "drop_path_prob": drop_prob,
                      "train": meter.result(), "valid": valid}
            history.append(record)
            value = valid.get(metric) if valid else None
            if valid is None or (value is not None and (best["value"] is None
                                                       or value > best["value"])):
                best = {"epoch": epoch, "value": value,
                        "state": state_dict_cpu(model) if valid is not None else None}
            seconds = timer.seconds()
            timings.append({"epoch": epoch, "seconds": seconds})
            log.info("train epoch %d/%d lr %.4e drop_path %.3f train %s valid %s %.1fs%s",
                     epoch + 1, cfg["epochs"], lr, drop_prob, format_metrics(record["train"]),
                     format_metrics(valid) if valid else "-", seconds,
                     " (best)" if best["epoch"] == epoch and valid is not None else "")
            sched.step()
            meter = Meter(task)
            checkpoint(epoch + 1, 0, 0.0)

        final_state = best["state"] if best["state"] is not None else state_dict_cpu(model)
        atomic_write_json(paths["history.json"], {
            "stage": "train",
            "metric": metric,
            "selection": {"on": "valid" if va_idx else "last epoch", "metric": metric,
                          "best_epoch": best["epoch"], "best_value": best["value"]},
            "epochs": history,
        })
        atomic_write_json(paths["timings.json"], {
            "stage": "train", "device": str(dev), "nas_core_version": __version__,
            "epochs": timings, "total_seconds": sum(t["seconds"] for t in timings)})
        atomic_torch_save(final_state, paths["model.pt"])
    log.info("train done: model %s (epoch %s)", paths["model.pt"], best["epoch"])
    last = history[-1] if history else {}
    return {
        **{name.split(".")[0]: str(p) for name, p in paths.items()},
        "best_epoch": best["epoch"],
        "train": last.get("train"),
        "valid": last.get("valid"),
        "resumed_from": resumed_from,
    }
