"""Does the cell matter on the ``synthetic`` task?  Train and test three fixed cells, several seeds.

The cells, at one network size and budget: ``pool`` (max / average pooling and skip
connections on all 8 edges of both cells), ``sep`` (separable 3x3 / 5x5 convolutions on the
same edges), ``DARTS_V2`` (the published cell).  ``pool`` and ``sep`` are wired alike (node k
reads a cell input and node k - 1), so only the operations differ.  Every run is the project's
own train stage (``nas_core.stages.run_train``, the train block's ``seed`` varied) and test
stage (``run_test``) on the CPU; the table gives test top-1 per seed, mean +- std (sample std),
the mean top-1 on the test lines of each dot spacing (from ``test_predictions.csv``) and wall
seconds per train + test.

    python benchmarks/task_spread.py --threads 1         # 5 seeds, the defaults below
    python benchmarks/task_spread.py --seeds 0,1,2 --epochs 3 --cells pool,sep --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas_core.data import load_data  # noqa: E402
from nas_core.data.synthetic import generate  # noqa: E402
from nas_core.genotypes import Genotype, get_genotype  # noqa: E402
from nas_core.stages import run_test, run_train  # noqa: E402

#: Node k reads (a cell input, the previous node): the inputs of the 8 edges, in order.
INPUTS = (0, 1, 1, 2, 0, 3, 3, 4)
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3", "max_pool_3x3", "skip_connect",
            "avg_pool_3x3", "max_pool_3x3", "skip_connect", "avg_pool_3x3")
SEP_OPS = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_5x5", "sep_conv_3x3",
           "sep_conv_3x3", "sep_conv_5x5", "sep_conv_3x3", "sep_conv_5x5")


def fixed_cell(ops: tuple[str, ...]) -> Genotype:
    """The same cell, wired by :data:`INPUTS`, as the normal and the reduction cell."""
    cell = list(zip(ops, INPUTS))
    return Genotype(cell, (2, 3, 4, 5), cell, (2, 3, 4, 5))


CELLS = {"pool": fixed_cell(POOL_OPS), "sep": fixed_cell(SEP_OPS),
         "DARTS_V2": get_genotype("DARTS_V2")}


def test_spacing(data: dict) -> np.ndarray:
    """The dot spacing of each test sample of ``data``, in the test split's order."""
    bundle = load_data(data)
    o = bundle.source["options"]
    _, _, spacing = generate(o["samples"], o["size"], o["seed"], dots=o["dots"],
                             min_spacing=o["min_spacing"], max_spacing=o["max_spacing"],
                             clutter=o["clutter"], noise=o["noise"])
    return spacing[bundle.test.indices]


def top1_by_spacing(predictions: Path, spacing: np.ndarray) -> dict[int, float]:
    """Test top-1 (%) per dot spacing, from a ``test_predictions.csv``."""
    with open(predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    s = spacing[[int(r["index"]) for r in rows]]
    right = np.array([r["target"] == r["prediction"] for r in rows])
    return {int(k): float(100 * right[s == k].mean()) for k in np.unique(s)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="train seeds, comma-separated")
    p.add_argument("--cells", default=",".join(CELLS), help="cells, comma-separated")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--data", default="{}", help="JSON options of the synthetic data block")
    p.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    data = {"name": "synthetic", **json.loads(args.data)}
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = args.cells.split(",")
    base = {"epochs": args.epochs, "batch_size": args.batch_size, "layers": args.layers,
            "init_channels": args.init_channels, "lr": args.lr, "auxiliary": False,
            "drop_path_prob": 0.0, "cutout": 0, "num_workers": 0}
    print(f"data {json.dumps(data)}; train {json.dumps(base)}; seeds {seeds}; "
          f"{args.threads} threads", flush=True)
    spacing = test_spacing(data)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in cells:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            genotype = CELLS[name].save(folder / "genotype.json")
            runs = []
            for seed in seeds:
                cfg = {**base, "seed": seed}
                run = folder / f"seed{seed}"
                t0 = time.perf_counter()
                run_train(data, cfg, genotype, run / "train", device="cpu")
                test = run_test(data, cfg, {"num_workers": 0}, genotype, run / "train" / "model.pt",
                                run / "test.json", device="cpu")
                seconds = time.perf_counter() - t0
                top1 = float(test["metrics"]["top1"])
                by_spacing = top1_by_spacing(run / "test_predictions.csv", spacing)
                runs.append({"seed": seed, "top1": top1, "by_spacing": by_spacing,
                             "seconds": seconds})
                print(f"  {name} seed {seed}: test top-1 {top1:.2f} %  ({seconds:.0f} s)",
                      flush=True)
            results[name] = runs

    gaps = sorted({k for runs in results.values() for r in runs for k in r["by_spacing"]})
    print(f"\n| cell | seeds | test top-1 per seed (%) | mean +- std (%) | "
          f"mean at spacing {' / '.join(map(str, gaps))} (%) | s per train + test |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        top1 = [r["top1"] for r in runs]
        std = statistics.stdev(top1) if len(top1) > 1 else 0.0
        secs = statistics.mean(r["seconds"] for r in runs)
        at = " / ".join(f"{statistics.mean(r['by_spacing'][k] for r in runs):.0f}" for k in gaps)
        print(f"| {name} | {len(runs)} | {', '.join(f'{v:.1f}' for v in top1)} | "
              f"{statistics.mean(top1):.1f} +- {std:.1f} | {at} | {secs:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"data": data, "train": base, "threads": args.threads,
                                         "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
