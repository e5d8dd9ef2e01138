"""Does the search beat a random cell at the same budget?  Every search method and guard.

Methods (``search.method`` and its switches): ``darts1`` (first order), ``darts2`` (second
order), ``pcdarts`` (first order, partial channels), ``random_ws`` (random search with weight
sharing) and ``random`` (a cell drawn under the seed), each with several search seeds; and
``--reference`` cells drawn by ``random`` under seeds of their own, the distribution a method
is judged against.  Every cell runs the project's own stages, on the CPU, in its folder under
``--out``: ``run_search`` -> ``run_genotype`` (the genotype rule on ``alphas.json``) ->
``run_train`` -> ``run_test``, with one search budget for every method and one training budget
for every final cell (the train block's seed fixed, so cells differ only by their search).  A
stage whose output exists is not run again, and an interrupted stage resumes from its
checkpoint: rerun the same command to continue.

Guards against collapse (config/README.md, "Collapse"): ``beta_darts``, ``darts_minus``, ``sdarts_rs`` and
``robust`` are first-order DARTS searches with ``search.beta_decay``, ``aux_skip``,
``sdarts_epsilon`` or the ``robust`` preset.  ``max_skip``, ``es_skips``, ``es_stable`` and
``es_hessian`` search nothing of their own: they read ``darts1``'s search of the same seed, the
first through the genotype rule with ``genotype.max_skip`` (P-DARTS), the others by replaying
their early-stop rule on its recorded epochs (:meth:`nas_core.early_stop.EarlyStop.replay`: a
search that stops is the unstopped one cut short, so the replay is what it computes; the
search seconds are ``darts1``'s times the share of epochs it would have run).
``--hessian-every K`` measures the Hessian's dominant eigenvalue every K epochs in the searches
of ``--hessian-methods`` (default darts1, which the ``es_hessian`` row and the curves read; a
measurement costs about as much as an epoch on the CPU).  ``--dataset`` picks the task
(``synthetic`` by default, ``digits`` for the long search: on ``synthetic`` plain DARTS does
not collapse, benchmarks/README.md).  Each ``darts1`` search's curves (skip connections,
movement, entropy and eigenvalue per epoch, :func:`nas_core.report.curves_figure`) are written
to ``--out/curves_darts1_seed{N}.png``.

It prints one table (method, cells, test top-1 mean +- std, search wall seconds, parameter-free
operations in the normal cell (wall seconds of the whole search stage: a resumed search
counts only its last part), and the share of reference cells each method's mean beats), and
writes ``quality.json`` and ``quality.png`` (the reference distribution with each method's
cells marked; :func:`nas_core.report.quality_figure`) into ``--out``.

    python benchmarks/search_quality.py --jobs 2                # the defaults below
    python benchmarks/search_quality.py --methods darts1,random --seeds 1 --reference 2 \\
        --search '{"epochs": 1, "max_steps_per_epoch": 2}' --train '{"epochs": 1}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: each method's switches over the shared search block
METHODS = {
    "darts1": {"method": "darts", "order": 1},
    "darts2": {"method": "darts", "order": 2},
    "pcdarts": {"method": "darts", "order": 1, "partial_channels": 2},
    "random_ws": {"method": "random_ws"},
    "random": {"method": "random"},
    "beta_darts": {"method": "darts", "order": 1, "beta_decay": 25.0},
    "darts_minus": {"method": "darts", "order": 1, "aux_skip": True},
    "sdarts_rs": {"method": "darts", "order": 1, "sdarts_epsilon": 0.3},
    "robust": {"method": "darts", "order": 1, "robust": True},
}
#: rows that read darts1's search of the same seed (module docstring): a genotype option or
#: early-stop keys (the papers' values; DARTS+ stability shortened from 10 of 50 epochs)
DERIVED = {
    "max_skip": {"max_skip": 2},
    "es_skips": {"early_stop_skips": 2},
    "es_stable": {"early_stop_stable": 5},
    "es_hessian": {"early_stop_hessian": True},
}

#: the search budget shared by every method (60 steps of batch 64: a tenth of a full epoch
#: of the 1600-image weight half x 6); arch_lr scaled to the few alpha steps as for digits
#: (config/README.md: ~1 logit of Adam travel in 60 steps instead of DARTS' ~6 in 19,550)
SEARCH = {"epochs": 6, "max_steps_per_epoch": 10, "batch_size": 64, "layers": 5,
          "init_channels": 8, "lr": 0.1, "arch_lr": 0.03, "num_workers": 0}
#: the training budget of every final cell (that of benchmarks/task_spread.py)
TRAIN = {"epochs": 6, "batch_size": 64, "layers": 5, "init_channels": 8, "lr": 0.1,
         "auxiliary": False, "drop_path_prob": 0.0, "cutout": 0, "num_workers": 0, "seed": 0}
#: the search seeds of the reference cells start here (apart from the methods' seeds)
REFERENCE_SEED0 = 1000


def _derived_genotype(label: str, source: Path, genotype: Path) -> float:
    """A DERIVED row's genotype from ``source`` (darts1's cell folder); returns the share of
    the search's epochs it ran."""
    from nas_core.early_stop import EarlyStop
    from nas_core.genotypes import Genotype
    from nas_core.stages import run_genotype

    rules = DERIVED[label]
    if "max_skip" in rules:
        run_genotype(source / "search" / "alphas.json", genotype, max_skip=rules["max_skip"])
        return 1.0
    history = json.loads((source / "search" / "history.json").read_text())
    decision, cell = EarlyStop.replay(history, rules)
    Genotype.from_dict(cell).save(genotype)
    ran = len(history["epochs"]) if decision is None else decision["epoch"] + 1
    return ran / len(history["epochs"])


def run_cell(label: str, seed: int, data: dict, search: dict, train: dict, out: str,
             threads: int) -> dict:
    """One cell through the stages (resumable); its record for the table."""
    import torch

    from nas_core.genotypes import Genotype
    from nas_core.stages import run_genotype, run_search, run_test, run_train

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    folder = Path(out) / label / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**search, "seed": seed}
    source = Path(out) / "darts1" / f"seed{seed}" if label in DERIVED else folder
    wall = source / "search_wall_seconds.json"  # the whole search stage, scoring included
    if not (source / "search" / "alphas.json").is_file():
        t0 = time.perf_counter()
        run_search(data, cfg, source / "search", device="cpu")
        wall.write_text(json.dumps(time.perf_counter() - t0))
    genotype = folder / "genotype.json"
    share = folder / "search_share.json"
    if not genotype.is_file():
        if label in DERIVED:
            share.write_text(json.dumps(_derived_genotype(label, source, genotype)))
        else:
            run_genotype(folder / "search" / "alphas.json", genotype)
    if not (folder / "train" / "model.pt").is_file():
        run_train(data, train, genotype, folder / "train", device="cpu")
    if not (folder / "test.json").is_file():
        run_test(data, train, {"num_workers": 0}, genotype, folder / "train" / "model.pt",
                 folder / "test.json", device="cpu")
    test = json.loads((folder / "test.json").read_text())
    cell = Genotype.load(genotype)
    seconds = float(json.loads(wall.read_text()))
    if share.is_file():
        seconds *= float(json.loads(share.read_text()))
    if label == "darts1" and (folder / "search" / "history.json").is_file():
        from nas_core.report import curves_figure
        curves_figure(folder / "search" / "history.json",
                      Path(out) / f"curves_darts1_seed{seed}.png",
                      f"darts1 seed {seed}: {data['name']}")
    return {"label": label, "seed": seed, "top1": float(test["metrics"]["top1"]),
            "search_seconds": seconds, "parameter_free": cell.parameter_free("normal"),
            "skips": sum(op == "skip_connect" for op, _ in cell.normal),
            "genotype": cell.to_dict()}


def table(rows: list[dict], reference: list[float]) -> list[str]:
    """The Markdown table of :func:`main`."""
    out = ["| method | cells | test top-1 (%) mean +- std | per cell | search s per cell | "
           "parameter-free ops, normal cell (of 8) | skip connections, normal cell | "
           "reference cells below the mean |",
           "|---|---|---|---|---|---|---|---|"]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for label in labels:
        runs = [r for r in rows if r["label"] == label]
        top1 = [r["top1"] for r in runs]
        mean = statistics.mean(top1)
        std = statistics.stdev(top1) if len(top1) > 1 else 0.0
        below = sum(v < mean for v in reference)
        out.append(f"| {label} | {len(runs)} | {mean:.1f} +- {std:.1f} | "
                   f"{', '.join(f'{v:.1f}' for v in top1)} | "
                   f"{statistics.mean(r['search_seconds'] for r in runs):.0f} | "
                   f"{', '.join(str(r['parameter_free']) for r in runs)} | "
                   f"{', '.join(str(r['skips']) for r in runs)} | "
                   f"{below} of {len(reference)} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(list(METHODS)[:5]),
                   help="comma-separated, of: " + ", ".join([*METHODS, *DERIVED])
                   + " (default: %(default)s)")
    p.add_argument("--dataset", default="synthetic", help="the task (default: %(default)s)")
    p.add_argument("--seeds", default="1,2,3", help="search seeds of every method")
    p.add_argument("--reference", type=int, default=8, help="random reference cells")
    p.add_argument("--search", default="{}", help="JSON over the shared search block")
    p.add_argument("--train", default="{}", help="JSON over the shared train block")
    p.add_argument("--hessian-every", type=int, default=0,
                   help="search.hessian_every of the --hessian-methods searches (0 = off)")
    p.add_argument("--hessian-methods", default="darts1",
                   help="comma-separated searches that measure the eigenvalue")
    p.add_argument("--data", default="{}", help="JSON options of the data block")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "search_quality",
                   help="runs, quality.json and quality.png (default: %(default)s)")
    args = p.parse_args(argv)

    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS and m not in DERIVED]
    if unknown:
        p.error(f"--methods: unknown {unknown[0]!r}; known: {', '.join([*METHODS, *DERIVED])}")
    if any(m in DERIVED for m in methods) and "darts1" not in methods:
        p.error(f"--methods: {', '.join(m for m in methods if m in DERIVED)} read darts1's "
                f"searches: add darts1")
    data = {"name": args.dataset, **json.loads(args.data)}
    search = {**SEARCH, **json.loads(args.search)}
    train = {**TRAIN, **json.loads(args.train)}
    seeds = [int(s) for s in args.seeds.split(",")]
    order = [m for m in methods if m not in DERIVED] + [m for m in methods if m in DERIVED]
    hessian = {"hessian_every": args.hessian_every, "hessian_batches": 1}
    measured = set(args.hessian_methods.split(",")) if args.hessian_every else set()
    units = [(m, s, {**search, **METHODS.get(m, METHODS["darts1"]),
                     **(hessian if m in measured or (m in DERIVED and "darts1" in measured)
                        else {})})
             for m in order for s in seeds]
    units += [("reference", REFERENCE_SEED0 + k, {**search, **METHODS["random"]})
              for k in range(args.reference)]
    print(f"data {json.dumps(data)}\nsearch {json.dumps(search)}\ntrain {json.dumps(train)}\n"
          f"{len(units)} cells, {args.jobs} jobs x {args.threads} threads, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    t0 = time.perf_counter()
    rows = []
    # two waves: the derived rows start once darts1's searches are done
    for wave in ([u for u in units if u[0] not in DERIVED], [u for u in units if u[0] in DERIVED]):
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_cell, label, seed, data, cfg, train, str(args.out),
                                   args.threads) for label, seed, cfg in wave]
            for f in futures:
                rows.append(f.result())
                r = rows[-1]
                print(f"  {r['label']} seed {r['seed']}: test top-1 {r['top1']:.2f} %, "
                      f"search {r['search_seconds']:.0f} s, {r['parameter_free']} "
                      f"parameter-free ops ({r['skips']} skips)", flush=True)
    reference = [r["top1"] for r in rows if r["label"] == "reference"]
    print(f"\n{time.perf_counter() - t0:.0f} s, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    lines = table(rows, reference)
    if reference:
        lines.append(f"\nreference: median {statistics.median(reference):.1f} %, spread "
                     f"(std) {statistics.stdev(reference) if len(reference) > 1 else 0:.1f}")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(
        {"data": data, "search": search, "train": train, "methods": methods, "seeds": seeds,
         "rows": rows}, indent=1) + "\n")
    from nas_core.report import quality_figure

    quality_figure(rows, args.out / "quality.png")
    print(f"\nwrote {args.out / 'quality.json'} and {args.out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
