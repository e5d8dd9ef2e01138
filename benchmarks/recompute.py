"""Activation recomputation (``recompute=True``): peak memory and step time against without.

Two steps, in one process: the DARTS search step (``nas_core.architect.search_step`` on
``SearchNetwork``) and a training step of the evaluation network (``EvalNetwork`` with the
DARTS_V2 genotype, auxiliary head, drop-path), each without recomputation ("plain"), with the
default choice of recomputed cells ("recompute", ``recompute_cells``) and, with
``--every-cell``, with every cell recomputed.

* peak memory: ``nas_core.memory.peak_bytes`` (the tensor peak of PyTorch's allocator, counted
  from zero) of one step that builds its model and optimizers inside the measured call;
* time: the variants start from identical states (same seed), run the same batches and
  alternate step by step after warm-up; the median seconds per step of each.  The variants
  stay equal step after step (``max |a-b|/|b|`` over the parameters is printed at the end:
  recomputation changes no result).

    python benchmarks/recompute.py                        # CPU: search 3x32x32 C=8 L=5 B=32
    python benchmarks/recompute.py --order 2 --every-cell
    python benchmarks/recompute.py --search-net 16,8,64 --train-net 36,20,96 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nas_core.architect import Architect, search_step  # noqa: E402
from nas_core.genotypes import DARTS_V2  # noqa: E402
from nas_core.memory import peak_bytes  # noqa: E402
from nas_core.sizes import format_bytes  # noqa: E402
from nas_core.model_eval import EvalNetwork  # noqa: E402
from nas_core.model_search import SearchNetwork  # noqa: E402

LR, MOMENTUM, WD, ARCH_LR, ARCH_WD, CLIP, CLASSES = 0.025, 0.9, 3e-4, 3e-4, 1e-3, 5.0, 10
AUX_WEIGHT, DROP_PATH = 0.4, 0.2


@dataclass(frozen=True)
class Setup:
    device: torch.device
    channels_last: bool
    amp: bool  # bf16 autocast

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(shape: tuple[int, int, int], batch: int, n: int, setup: Setup,
                 seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(setup.inputs(torch.randn(batch, *shape, generator=g)),
             torch.randint(0, CLASSES, (batch,), generator=g).to(setup.device))
            for _ in range(n)]


def cells_label(model: nn.Module) -> str:
    cells = model.recompute_cells
    if not cells:
        return "plain"
    if len(cells) == len(model.cells):
        return "recompute, every cell"
    return f"recompute, cells {','.join(map(str, cells))} of {len(model.cells)}"


# -- the two steps -----------------------------------------------------------------------------
class SearchStep:
    """The search stage's step: Architect (first or second order), then the weight step."""

    def __init__(self, args, setup: Setup, variant: str):
        c, layers, _ = args.search_net
        torch.manual_seed(0)
        model = SearchNetwork(args.shape[0], c, CLASSES, layers, recompute=variant != "plain")
        if variant == "every":
            model.recompute_cells = range(layers)
        self.model = setup.model(model)
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), LR, momentum=MOMENTUM,
                                     weight_decay=WD)
        self.architect = Architect(self.model, F.cross_entropy, self.w_opt, order=args.order,
                                   arch_lr=ARCH_LR, arch_weight_decay=ARCH_WD)
        self.setup = setup
        self.name = cells_label(self.model)

    def __call__(self, data) -> None:
        train, val = data
        with self.setup.autocast():
            search_step(self.model, self.architect, self.w_opt, train, val, LR, CLIP)


class TrainStep:
    """The train stage's step: DARTS_V2 with auxiliary head and drop-path, SGD."""

    def __init__(self, args, setup: Setup, variant: str):
        c, layers, _ = args.train_net
        torch.manual_seed(0)
        model = EvalNetwork(DARTS_V2, args.shape[0], c, CLASSES, layers, auxiliary=True,
                            drop_path_prob=DROP_PATH, recompute=variant != "plain")
        if variant == "every":
            model.recompute_cells = range(layers)
        self.model = setup.model(model).train()
        self.opt = torch.optim.SGD(self.model.parameters(), LR, momentum=MOMENTUM,
                                   weight_decay=WD)
        self.setup = setup
        self.name = cells_label(self.model)

    def __call__(self, data) -> None:
        x, y = data
        self.opt.zero_grad(set_to_none=True)
        with self.setup.autocast():
            logits, logits_aux = self.model(x)
            loss = F.cross_entropy(logits, y) + AUX_WEIGHT * F.cross_entropy(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()


# -- measuring ---------------------------------------------------------------------------------
def measure(title: str, make: Callable[[str], Callable], data_for: Callable[[int], object],
            variants: list[str], args, device: torch.device) -> list[dict]:
    """Peak memory of one fresh step per variant, then the alternating timed steps."""
    rows = []
    peaks = {}
    for v in variants:
        def fn(v=v):
            make(v)(data_for(0))
            sync(device)
        peaks[v] = peak_bytes(fn, device)
    impls = {v: make(v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for it in range(args.warmup + args.steps):
        data = data_for(it)
        rng = torch.get_rng_state()  # each variant sees the same RNG stream (drop-path)
        for v in variants:
            torch.set_rng_state(rng)
            sync(device)
            t0 = time.perf_counter()
            impls[v](data)
            sync(device)
            if it >= args.warmup:
                times[v].append(time.perf_counter() - t0)
    base = impls[variants[0]].model
    for v in variants:
        with torch.no_grad():
            diff = max(float((p - q).norm() / q.norm().clamp_min(1e-30))
                       for p, q in zip(impls[v].model.parameters(), base.parameters()))
        rows.append({"step": title, "variant": impls[v].name,
                     "step_s": statistics.median(times[v]), "peak": peaks[v], "diff": diff})
    for r in rows:
        r["time_ratio"] = r["step_s"] / rows[0]["step_s"]
        r["mem_ratio"] = r["peak"] / rows[0]["peak"]
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'step':<44} {'variant':<34} {'s/step':>7} {'x plain':>7} {'peak':>10} "
          f"{'x plain':>7} {'max rel diff':>12}")
    for r in rows:
        print(f"{r['step']:<44} {r['variant']:<34} {r['step_s']:7.3f} {r['time_ratio']:7.2f} "
              f"{format_bytes(r['peak']):>10} {r['mem_ratio']:7.2f} {r['diff']:12.1e}",
              flush=True)


def triple(text: str) -> tuple[int, int, int]:
    parts = tuple(int(s) for s in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers, got {text!r}")
    return parts  # type: ignore[return-value]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=triple, default=(3, 32, 32), help="C,H,W of the inputs")
    p.add_argument("--search-net", type=triple, default=(8, 5, 32),
                   help="search step: channels,layers,batch (default 8,5,32)")
    p.add_argument("--train-net", type=triple, default=(16, 8, 32),
                   help="train step: channels,layers,batch (default 16,8,32)")
    p.add_argument("--order", type=int, choices=(1, 2), default=1, help="search step order")
    p.add_argument("--steps", type=int, default=7, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="auto: on (as the stages, without bf16 on the CPU)")
    p.add_argument("--amp", choices=("off", "bf16"), default="off")
    p.add_argument("--every-cell", action="store_true",
                   help="also a variant that recomputes every cell")
    p.add_argument("--only", choices=("search", "train"), help="run one of the two steps")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = args.amp == "bf16"
    cl = (args.channels_last == "on" or
          (args.channels_last == "auto" and not (amp and device.type == "cpu")))
    setup = Setup(device, cl, amp)
    variants = ["plain", "auto"] + (["every"] if args.every_cell else [])
    c, h, w = args.shape
    print(f"torch {torch.__version__}, device {device}, torch threads {torch.get_num_threads()}, "
          f"channels_last {'on' if cl else 'off'}, amp {args.amp}, steps {args.steps} after "
          f"{args.warmup} warm-up, load average {os.getloadavg()[0]:.2f} "
          f"(cpus {os.cpu_count()})", flush=True)
    rows = []
    if args.only in (None, "search"):
        sc, sl, sb = args.search_net
        n = args.warmup + args.steps
        batches = make_batches(args.shape, sb, 2 * n, setup)
        title = f"search {c}x{h}x{w} C={sc} L={sl} B={sb} order={args.order}"
        r = measure(title, lambda v: SearchStep(args, setup, v),
                    lambda i: (batches[2 * i], batches[2 * i + 1]), variants, args, device)
        print_rows(r)
        rows += r
    if args.only in (None, "train"):
        tc, tl, tb = args.train_net
        n = args.warmup + args.steps
        batches = make_batches(args.shape, tb, n, setup, seed=2)
        title = f"train DARTS_V2 {c}x{h}x{w} C={tc} L={tl} B={tb} aux"
        r = measure(title, lambda v: TrainStep(args, setup, v), lambda i: batches[i],
                    variants, args, device)
        if args.only is None:
            print()
        print_rows(r)
        rows += r
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
