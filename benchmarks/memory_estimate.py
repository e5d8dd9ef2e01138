"""The stages' memory estimate against the peak of a real step, per configuration.

For each configuration the stage's own probe (``nas_core.stages.search.search_probe``,
``train_probe``, ``test_probe``) runs at two small batches and the fitted line gives the
estimate at the target batch (:mod:`nas_core.memory`); then a fresh child process runs the real
step at the target batch and reports its peak tensor memory (``nas_core.memory.peak_bytes``:
the CPU allocator's events, or ``torch.cuda.max_memory_allocated``) and, on the CPU, its peak
RSS over the RSS before the step (``VmHWM``, reset through ``/proc/self/clear_refs``), which
also holds the code pages the step touches and what the C allocator keeps.

    python benchmarks/memory_estimate.py                 # CPU: the configurations below
    python benchmarks/memory_estimate.py --device cuda   # the same on a GPU
    python benchmarks/memory_estimate.py --only graphene --json out.json
    python benchmarks/memory_estimate.py --device cuda --largest graphene   # + batch_size auto
    python benchmarks/memory_estimate.py --largest graphene --budget 4GiB   # on the CPU

``--largest NAME`` also prints the batch ``batch_size: auto`` chooses for the configuration
(``nas_core.memory.choose_batch``: the largest measured fit, no margin) with and without
``recompute``, within ``--budget`` (default: the device's free memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas_core.config import validate_stage_cfg  # noqa: E402
from nas_core.genotypes import get_genotype  # noqa: E402
from nas_core.memory import choose_batch, device_budget, estimate, peak_bytes  # noqa: E402
from nas_core.sizes import format_bytes, parse_bytes  # noqa: E402
from nas_core.stages.runtime import Runtime  # noqa: E402
from nas_core.stages.search import search_probe  # noqa: E402
from nas_core.stages.test import test_probe  # noqa: E402
from nas_core.stages.train import train_probe  # noqa: E402

#: name -> (stage, input C,H,W, outputs, task, stage settings, target batch)
CONFIGS = {
    "search-cifar-small": ("search", (3, 32, 32), 10, "classification",
                           dict(init_channels=8, layers=5), 32),
    "graphene": ("search", (1, 30, 80), 1, "regression",
                 dict(init_channels=16, layers=8), 24),
    "search-pc-darts": ("search", (3, 32, 32), 10, "classification",
                        dict(init_channels=16, layers=8, partial_channels=4), 64),
    "search-order2": ("search", (1, 28, 28), 10, "classification",
                      dict(init_channels=8, layers=5, order=2), 32),
    "train-darts-v2": ("train", (3, 32, 32), 10, "classification",
                       dict(init_channels=16, layers=8, auxiliary=True), 32),
    "test-mnist": ("test", (1, 28, 28), 10, "classification", {}, 256),
}


def probe_of(name: str, device: str, **overrides):
    stage, (c, h, w), outputs, task, settings, _ = CONFIGS[name]
    settings = dict(settings, **overrides)
    bundle = SimpleNamespace(in_channels=c, input_size=(h, w), num_outputs=outputs, task=task)
    cfg = validate_stage_cfg(stage if stage != "test" else "train", settings)
    runtime = Runtime.resolve(cfg if stage != "test" else validate_stage_cfg("test", {}), device,
                              channels_last=cfg["channels_last"])
    if stage == "search":
        return search_probe(cfg, bundle, runtime), runtime
    geno = get_genotype("DARTS_V2")
    if stage == "train":
        return train_probe(cfg, geno, bundle, runtime), runtime
    return test_probe(cfg, geno, bundle, runtime), runtime


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def child(name: str, device: str, batch: int) -> None:
    """Fresh process: the real step at ``batch``; prints JSON."""
    probe, runtime = probe_of(name, device)
    probe(2)  # libraries, kernels and code pages in place before the measured step
    rss = None
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current RSS
        rss = _status_kib("VmRSS:")
    except OSError:
        pass
    t = time.perf_counter()
    probe(batch)  # plain first: the RSS of the step without the profiler's event buffers
    out = {"seconds": time.perf_counter() - t}
    if rss is not None and runtime.device.type == "cpu":
        out["rss_increase_bytes"] = (_status_kib("VmHWM:") - rss) * 1024
    out["peak_bytes"] = peak_bytes(lambda: probe(batch), runtime.device)
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated configuration names")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--largest", default="", help="configurations whose largest batch to find")
    p.add_argument("--budget", default=None, help="memory budget for --largest, e.g. 4GiB")
    p.add_argument("--skip-estimates", action="store_true", help="only --largest")
    p.add_argument("--child", nargs=2, metavar=("NAME", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child[0], args.device, int(args.child[1]))
        return
    names = [] if args.skip_estimates else [n for n in args.only.split(",") if n] or list(CONFIGS)
    rows = []
    print(f"{'configuration':<20} {'batch':>5} {'estimate':>10} {'measured':>10} {'error':>7} "
          f"{'probe s':>8} {'RSS incr.':>10}")
    for name in names:
        batch = CONFIGS[name][-1]
        probe, runtime = probe_of(name, args.device)
        t = time.perf_counter()
        est = estimate(probe, runtime.device, batch)
        probe_seconds = time.perf_counter() - t
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--threads",
                               str(args.threads), "--child", name, str(batch)],
                              capture_output=True, text=True, env=env, check=True)
        real = json.loads(proc.stdout.strip().splitlines()[-1])
        row = {"name": name, "batch": batch, "estimate_bytes": est.at(batch),
               "measured_bytes": real["peak_bytes"], "probe_seconds": probe_seconds,
               "error": est.at(batch) / real["peak_bytes"] - 1, **est.to_dict(),
               "rss_increase_bytes": real.get("rss_increase_bytes"),
               "step_seconds": real["seconds"]}
        rows.append(row)
        rss = row["rss_increase_bytes"]
        print(f"{name:<20} {batch:>5} {row['estimate_bytes'] / 2**20:>7.0f} MiB "
              f"{row['measured_bytes'] / 2**20:>6.0f} MiB {100 * row['error']:>+6.1f}% "
              f"{probe_seconds:>8.1f} "
              f"{'-' if rss is None else f'{rss / 2**20:.0f} MiB':>10}", flush=True)
    for name in [n for n in args.largest.split(",") if n]:
        for recompute in (False, True):
            probe, runtime = probe_of(name, args.device, recompute=recompute)
            budget, source = device_budget(runtime.device, None if args.budget is None
                                           else parse_bytes(args.budget))
            t = time.perf_counter()
            batch, est, points = choose_batch(probe, runtime.device, budget, margin=0.0)
            row = {"name": name, "largest_batch": batch, "recompute": recompute,
                   "budget_bytes": budget, "budget_source": source,
                   "peak_at_batch_bytes": dict(points).get(batch), "probes": points,
                   "seconds": time.perf_counter() - t}
            rows.append(row)
            print(f"{name}: largest batch {batch} with recompute {recompute} within "
                  f"{format_bytes(budget)} ({source}): measured peak "
                  f"{format_bytes(row['peak_at_batch_bytes'])}, {len(points)} probe steps, "
                  f"{row['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
