"""Time our DARTS search step against the plain reference, in one process, on the same inputs.

For every configuration both implementations start from identical weights and alphas (the
reference's state dict is loaded into ours), run the same random batches, alternate step by
step after warm-up, and the script prints the median seconds per step, images/s, peak memory
and the ratios ours / reference.

Peak memory: on the CPU the process RSS only grows, so each implementation runs again in a
fresh child process (``--child``) that prints its peak RSS (VmHWM) after the steps, and the
increase over its RSS after imports and data (the fairer figure); on CUDA
``torch.cuda.max_memory_allocated`` around one step (reset in between; both models resident).
The CPU child also reports the *tensor* peak (``nas_core.memory.peak_bytes``: the CPU
allocator's bytes while a fresh model is built and stepped, counted from zero), which leaves
out the ~0.5-0.7 GiB of libraries and code pages that both implementations' RSS holds.
ops/step: the ATen operators one extra, untimed step dispatches (``--no-ops`` skips it); where
launches and Python bound the step (a GPU at batch 64) time follows that count.

    python benchmarks/search_step.py --quick                 # CPU target configurations
    python benchmarks/search_step.py                         # --preset cpu, every configuration
    python benchmarks/search_step.py --preset gpu            # paper network, bf16 + channels_last

The reference is ``../shared/bench/reference_darts.py`` beside the repository root, or
``--reference PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from nas_core.architect import Architect, search_step  # noqa: E402
from nas_core.graphs import GraphedSearchStep  # noqa: E402
from nas_core.memory import peak_bytes  # noqa: E402
from nas_core.model_search import SearchNetwork  # noqa: E402

DEFAULT_REFERENCE = ROOT.parent / "shared" / "bench" / "reference_darts.py"
LR, MOMENTUM, WD, ARCH_LR, ARCH_WD, CLIP, CLASSES = 0.025, 0.9, 3e-4, 3e-4, 1e-3, 5.0, 10


@dataclass(frozen=True)
class Config:
    shape: tuple[int, int, int]
    channels: int
    layers: int
    batch: int
    order: int
    partial: int = 1          # K of PC-DARTS (ours only; the reference is plain DARTS)
    channels_last: bool = False  # ours
    amp: str = "off"          # ours: "off" | "bf16"
    graphs: bool = False      # ours: the step replayed as a CUDA graph (CUDA)
    batched: bool = False     # ours: SearchNetwork(..., batched_edges=True)

    def label(self) -> str:
        c, h, w = self.shape
        s = f"{c}x{h}x{w} C={self.channels} L={self.layers} B={self.batch} order={self.order}"
        if self.partial > 1:
            s += f" PC K={self.partial}"
        return s

    def ours_label(self) -> str:
        parts = ["channels_last" if self.channels_last else "contiguous"]
        if self.batched:
            parts.append("batched")
        if self.amp != "off":
            parts.append(self.amp)
        if self.graphs:
            parts.append("cuda graph")
        return "ours(" + ",".join(parts) + ")"


def load_reference(path: Path):
    if not path.is_file():
        sys.exit(f"reference implementation not found: {path} (use --reference PATH)")
    spec = importlib.util.spec_from_file_location("reference_darts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(cfg: Config, device: torch.device):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(cfg.batch, *cfg.shape, generator=g).to(device),
             torch.randint(0, CLASSES, (cfg.batch,), generator=g).to(device)) for _ in range(2)]


class Reference:
    name = "reference"

    def __init__(self, ref_mod, cfg: Config, device: torch.device):
        torch.manual_seed(0)
        self.model = ref_mod.SearchNetwork(cfg.shape[0], cfg.channels, CLASSES, cfg.layers).to(device)
        self.searcher = ref_mod.Searcher(self.model, order=cfg.order, lr=LR, momentum=MOMENTUM,
                                         wd=WD, arch_lr=ARCH_LR, arch_wd=ARCH_WD)

    def step(self, data):
        (xt, yt), (xv, yv) = data
        self.searcher.step(xt, yt, xv, yv)


class Ours:
    def __init__(self, cfg: Config, device: torch.device, state_dict=None):
        torch.manual_seed(0)
        self.cfg = cfg
        self.name = cfg.ours_label()
        model = SearchNetwork(cfg.shape[0], cfg.channels, CLASSES, cfg.layers,
                              partial_channels=cfg.partial, batched_edges=cfg.batched)
        if state_dict is not None and cfg.partial == 1:
            model.load_state_dict(state_dict, strict=False)
        model = model.to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # foreach: as the search stage (one _foreach kernel per update instead of a loop)
        self.w_opt = torch.optim.SGD(model.weight_parameters(), LR, momentum=MOMENTUM,
                                     weight_decay=WD, foreach=True)
        self.architect = Architect(model, F.cross_entropy, self.w_opt, order=cfg.order,
                                   arch_lr=ARCH_LR, arch_weight_decay=ARCH_WD)
        self.device = device
        self.graphed = None
        if cfg.graphs:  # the first call runs eagerly, the second captures (both warm-up)
            self.graphed = GraphedSearchStep(model, self.architect, self.w_opt, CLIP,
                                             torch.bfloat16 if cfg.amp == "bf16" else None,
                                             warmup=1)

    def step(self, data):
        (xt, yt), (xv, yv) = data
        if self.cfg.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
            xv = xv.contiguous(memory_format=torch.channels_last)
        if self.graphed is not None:
            self.graphed((xt, yt), (xv, yv), LR)
            return
        ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.amp == "bf16"
               else contextlib.nullcontext())
        with ctx:
            search_step(self.model, self.architect, self.w_opt, (xt, yt), (xv, yv), LR, CLIP)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(impl, data, device) -> tuple[float, float | None]:
    """Seconds of one step and, on CUDA, (peak - start) allocated bytes during it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    impl.step(data)
    sync(device)
    dt = time.perf_counter() - t0
    peak = None
    if device.type == "cuda":
        high = torch.cuda.max_memory_allocated(device)
        peak = (high, high - start)
    return dt, peak


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (forward, backward and optimizers)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(impl, data) -> int:
    """ATen operators of one (extra, untimed) step: where kernel launches and Python bound the
    step (a GPU at small batches), time follows this count rather than the arithmetic."""
    with _CountOps() as mode:
        impl.step(data)
    return mode.count


def proc_status_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process (MiB).  ``VmHWM`` belongs to the address space,
    which ``exec`` replaces; ``ru_maxrss`` would carry the parent's peak over into a child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args, cfg: Config) -> None:
    """One implementation, fresh process: peak RSS (VmHWM) after ``--child-steps`` steps and
    the RSS after imports and data (before the model is built); with ``--child-time`` instead
    the times of ``--warmup`` + ``--steps`` steps."""
    device = torch.device(args.device)
    data = make_data(cfg, device)
    ref_mod = load_reference(Path(args.reference))
    if args.child_time:
        ref = Reference(ref_mod, cfg, device)
        impl = ref if args.child == "reference" else Ours(cfg, device, ref.model.state_dict())
        times = [timed(impl, data, device)[0] for _ in range(args.warmup + args.steps)]
        print(json.dumps({"step_times_s": times[args.warmup:]}))
        return
    base = proc_status_mb("VmRSS")
    if args.child == "reference":
        impl = Reference(ref_mod, cfg, device)
    else:
        impl = Ours(cfg, device)
    for _ in range(args.child_steps):
        impl.step(data)
    peak = proc_status_mb("VmHWM")
    del impl

    def fresh_steps():  # the tensor peak: a fresh model and its steps, counted from zero
        impl = Reference(ref_mod, cfg, device) if args.child == "reference" else Ours(cfg, device)
        for _ in range(args.child_steps):
            impl.step(data)

    tensor = peak_bytes(fresh_steps, device) / 2**20
    print(json.dumps({"peak_rss_mb": peak, "baseline_rss_mb": base, "tensor_peak_mb": tensor}))


def run_child(args, cfg: Config, which: str, time_steps: bool = False) -> dict:
    """:func:`child` in a fresh process: its memory figures, or with ``time_steps`` its step
    times."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which,
           "--child-config", json.dumps(asdict(cfg)), "--threads", str(args.threads),
           "--reference", str(args.reference), "--device", args.device,
           "--child-steps", str(args.child_steps), "--steps", str(args.steps),
           "--warmup", str(args.warmup)] + (["--child-time"] if time_steps else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(args, ref_mod, cfg: Config, ours_variants: list[Config]) -> list[dict]:
    device = torch.device(args.device)
    data = make_data(cfg, device)
    ref = Reference(ref_mod, cfg, device)
    state = ref.model.state_dict()
    impls = [ref] + [Ours(v, device, state) for v in ours_variants]
    times = {i.name: [] for i in impls}
    peaks = {i.name: None for i in impls}
    for it in range(args.warmup + args.steps):
        for impl in impls:  # alternating, same order each round
            dt, peak = timed(impl, data, device)
            if it >= args.warmup:
                times[impl.name].append(dt)
                if peak is not None:
                    peaks[impl.name] = max(peaks[impl.name] or (0, 0), peak)
    rows = []
    for impl, variant in zip(impls, [cfg] + ours_variants):
        med = statistics.median(times[impl.name])
        row = {"config": cfg.label(), "impl": impl.name, "step_s": med,
               "images_s": cfg.batch / med, "steps": len(times[impl.name]),
               "step_times_s": times[impl.name]}
        if device.type == "cuda":
            row["peak_mb"] = peaks[impl.name][0] / 2**20
            row["peak_increase_mb"] = peaks[impl.name][1] / 2**20
        elif args.memory:
            m = run_child(args, variant, "reference" if impl is ref else "ours")
            row["peak_mb"] = m["peak_rss_mb"]
            row["peak_increase_mb"] = m["peak_rss_mb"] - m["baseline_rss_mb"]
            row["tensor_peak_mb"] = m["tensor_peak_mb"]
        if args.ops:
            row["ops"] = count_ops(impl, data)
        if args.alone and device.type == "cpu":
            t = run_child(args, variant, "reference" if impl is ref else "ours", True)
            row["alone_step_times_s"] = t["step_times_s"]
            row["alone_step_s"] = statistics.median(t["step_times_s"])
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["speedup"] = row["images_s"] / base["images_s"]
        if "ops" in row:
            row["ops_ratio"] = row["ops"] / base["ops"]
        if "peak_mb" in row:
            row["mem_ratio"] = row["peak_mb"] / base["peak_mb"]
            row["mem_increase_ratio"] = row["peak_increase_mb"] / max(base["peak_increase_mb"], 1e-9)
        if "tensor_peak_mb" in row:
            row["tensor_ratio"] = row["tensor_peak_mb"] / base["tensor_peak_mb"]
        if "alone_step_s" in row:
            row["alone_speedup"] = base["alone_step_s"] / row["alone_step_s"]
    return rows


def time_alone(args, cfg: Config, make, steps: int) -> dict:
    """Median step of one implementation alone (``make()`` builds it)."""
    device = torch.device(args.device)
    impl = make()
    data = make_data(cfg, device)
    times, peak = [], (0, 0)
    for i in range(args.warmup + steps):
        dt, p = timed(impl, data, device)
        if i >= args.warmup:
            times.append(dt)
            if p is not None:
                peak = max(peak, p)
    med = statistics.median(times)
    return {"config": cfg.label(), "impl": impl.name, "step_s": med, "images_s": cfg.batch / med,
            "steps": steps, "peak_mb": peak[0] / 2**20, "peak_increase_mb": peak[1] / 2**20}


def largest_batch_rows(args, ref_mod, ours_cfg: Config) -> list[dict]:
    """Each implementation at the largest candidate batch it fits (order 1), alone."""
    device = torch.device(args.device)
    cands = [int(b) for b in args.largest_batch.split(",")]
    rows = []
    for which in ("reference", "ours"):
        best = None
        for b in cands:
            cfg = replace(ours_cfg, batch=b, order=1)
            try:
                row = time_alone(args, cfg, (lambda c=cfg: Reference(ref_mod, c, device))
                                 if which == "reference" else (lambda c=cfg: Ours(c, device)),
                                 steps=2)
                best = row
            except torch.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
        if best is None:
            print(f"{which}: no candidate batch of {cands} fits", flush=True)
            continue
        best["config"] = "largest batch: " + best["config"]
        rows.append(best)
    if rows and rows[0]["impl"] == "reference":
        for r in rows:
            r["speedup"] = r["images_s"] / rows[0]["images_s"]
            r["mem_ratio"] = r["peak_mb"] / max(rows[0]["peak_mb"], 1e-9)
            r["mem_increase_ratio"] = r["peak_increase_mb"] / max(rows[0]["peak_increase_mb"], 1e-9)
        print_table(rows)
    return rows


def configurations(args) -> list[tuple[Config, list[Config]]]:
    cuda = args.device.startswith("cuda")
    if args.channels_last == "both":
        cls = [True, False]
    elif args.channels_last == "auto":
        cls = [cuda]
    else:
        cls = [args.channels_last == "on"]
    amp = args.amp if args.amp != "auto" else ("bf16" if cuda else "off")
    batched = {"off": [False], "on": [True], "both": [False, True]}[args.batched]
    if args.preset == "gpu":
        shapes, nets = [(3, 32, 32)], [(16, 8, 64)]
    else:
        shapes, nets = [(3, 32, 32), (1, 28, 28)], [(8, 5, 32), (16, 8, 64)]
    orders = [1, 2]
    if args.quick:
        if args.preset == "gpu":
            orders = [1, 2]
        else:
            shapes, nets = [(3, 32, 32)], [(8, 5, 32)]
    if args.shape:
        shapes = [tuple(int(s) for s in args.shape.split(","))]
    if args.net:
        nets = [tuple(int(s) for s in args.net.split(","))]
    if args.order:
        orders = [args.order]
    out = []
    for shape in shapes:
        for c, layers, batch in nets:
            for order in orders:
                cfg = Config(shape, c, layers, batch, order)
                variants = [replace(cfg, channels_last=cl, amp=amp, batched=b)
                            for cl in cls for b in batched]
                if args.graphs and cuda:
                    variants += [replace(v, graphs=True) for v in variants]
                out.append((cfg, variants))
    if not args.no_partial:  # PC-DARTS, reported separately (a different algorithm)
        shape, (c, layers, batch) = shapes[0], nets[0]
        cfg = Config(shape, c, layers, batch, 1)
        out.append((cfg, [replace(cfg, partial=4, channels_last=cl, amp=amp, batched=b)
                          for cl in cls for b in batched]))
    return out


def print_table(rows: list[dict]) -> None:
    mem = any("peak_mb" in r for r in rows)
    ops = any("ops" in r for r in rows)
    head = f"{'configuration':<44} {'implementation':<26} {'s/step':>8} {'img/s':>8} {'x ref':>6}"
    if ops:
        head += f" {'ops/step':>9} {'x ref':>6}"
    if mem:
        head += f" {'peak MiB':>9} {'x ref':>6} {'+MiB':>8} {'x ref':>6}"
    if any("tensor_peak_mb" in r for r in rows):
        head += f" {'tensor MiB':>10} {'x ref':>6}"
    if any("alone_step_s" in r for r in rows):
        head += f" {'alone s':>8} {'x ref':>6}"
    print(head)
    for r in rows:
        line = (f"{r['config']:<44} {r['impl']:<26} {r['step_s']:8.3f} {r['images_s']:8.1f} "
                f"{r['speedup']:6.2f}")
        if ops:
            line += (f" {r['ops']:9d} {r['ops_ratio']:6.2f}" if "ops" in r
                     else f" {'':>9} {'':>6}")
        if "peak_mb" in r:
            line += (f" {r['peak_mb']:9.0f} {r['mem_ratio']:6.2f} {r['peak_increase_mb']:8.0f} "
                     f"{r['mem_increase_ratio']:6.2f}")
        if "tensor_peak_mb" in r:
            line += f" {r['tensor_peak_mb']:10.0f} {r['tensor_ratio']:6.2f}"
        if "alone_step_s" in r:
            line += f" {r['alone_step_s']:8.3f} {r['alone_speedup']:6.2f}"
        print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="cpu: only 3x32x32 C=8 L=5 B=32 (orders 1, 2, PC)")
    p.add_argument("--shape", help="C,H,W (overrides the preset)")
    p.add_argument("--net", help="channels,layers,batch (overrides the preset)")
    p.add_argument("--order", type=int, choices=(1, 2))
    p.add_argument("--no-partial", action="store_true", help="skip the PC-DARTS row")
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", choices=("auto", "on", "off", "both"), default=None,
                   help="ours: auto = on for CUDA (default on CUDA); cpu default: both")
    p.add_argument("--batched", choices=("off", "on", "both"), default="both",
                   help="ours: the plain path, the batched edges (batched_edges=True), or both")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="ours: auto = bf16 on CUDA, off on the CPU (the reference: float32)")
    p.add_argument("--no-graphs", dest="graphs", action="store_false",
                   help="CUDA: skip the rows of ours replayed as a CUDA graph")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="CPU: skip the child processes that measure peak RSS")
    p.add_argument("--no-ops", dest="ops", action="store_false",
                   help="skip counting the ATen operators of one extra step per implementation")
    p.add_argument("--alone", action="store_true",
                   help="CPU: also time each implementation alone in a fresh process (median "
                        "of --steps after --warmup): the interleaved times of one "
                        "implementation depend on what its neighbours left in the allocator")
    p.add_argument("--child-steps", type=int, default=2)
    p.add_argument("--child-time", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--largest-batch", default="",
                   help="gpu: comma-separated candidate batches; also time ours (order 1) at the "
                        "largest that fits, and the reference at that batch if it fits")
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        d = json.loads(args.child_config)
        d["shape"] = tuple(d["shape"])
        child(args, Config(**d))
        return
    if args.channels_last is None:
        args.channels_last = "auto" if args.device.startswith("cuda") else "both"
    device = torch.device(args.device)
    if args.graphs and device.type == "cuda":
        args.warmup = max(args.warmup, 2)  # graphed rows: one eager step, then the capture
    ref_mod = load_reference(Path(args.reference))
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch threads {torch.get_num_threads()}, steps {args.steps} after {args.warmup} "
          f"warm-up, load average {os.getloadavg()[0]:.2f} (cpus {os.cpu_count()})", flush=True)
    rows = []
    for cfg, variants in configurations(args):
        r = measure(args, ref_mod, cfg, variants)
        print_table(r)
        rows += r
    if args.largest_batch and device.type == "cuda":
        rows += largest_batch_rows(args, ref_mod, configurations(args)[0][1][0])
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
