"""Data-parallel training throughput: images/s of the evaluation network for 1..N processes.

Each row runs ``--steps`` timed training steps (after ``--warmup``) of the train stage's step
(forward, cross entropy with the auxiliary head off, backward, the weighted gradient all-reduce
of ``nas_core.distributed.World.average``, gradient clipping, SGD) at a fixed *global* batch,
cut across the processes exactly as the train stage cuts it, and prints the median seconds per
step, images/s and the speed-up over one process.  On a GPU machine each process takes
``cuda:RANK`` (NCCL); on the CPU the processes share the cores (gloo), so the CPU row measures
the overhead of the collectives more than a speed-up (and OpenMP threads suffer badly from any
other load: compare rows only on an idle machine; the header prints the load average).

    python benchmarks/train_scaling.py --quick               # 1 vs 2 processes on this CPU
    python benchmarks/train_scaling.py --preset gpu          # 1..all visible GPUs, paper net
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas_core.distributed import current_world, launch  # noqa: E402
from nas_core.genotypes import get_genotype  # noqa: E402
from nas_core.model_eval import EvalNetwork  # noqa: E402
from nas_core.tasks import get_task  # noqa: E402

PRESETS = {
    # input C x H x W, init_channels, layers, global batch
    "cpu": dict(shape=(1, 28, 28), channels=16, layers=8, batch=64),
    "gpu": dict(shape=(3, 32, 32), channels=36, layers=20, batch=256),
}


def _steps(shape: tuple, channels: int, layers: int, batch: int, steps: int,
           warmup: int) -> list[float]:
    """Seconds of each timed step on this rank (run inside a process group or alone)."""
    world = current_world()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", world.local_rank) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = EvalNetwork(get_genotype("DARTS_V2"), shape[0], channels, 10, layers).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    task = get_task("classification")
    part = world.shard(range(batch))
    x = torch.randn(len(part), *shape, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (len(part),), device=device)
    times = []
    for k in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        world.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits, _ = model(x)
            loss = task.loss(logits, y)
        loss.backward()
        world.average([p.grad for p in model.parameters() if p.grad is not None],
                      world.share(batch))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        world.barrier()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="network and batch (default: gpu with CUDA, else cpu)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up")
    parser.add_argument("--max-procs", type=int, default=None,
                        help="largest process count (default: GPUs visible, or 2 on the CPU)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    preset = PRESETS[args.preset or ("gpu" if cuda else "cpu")]
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    top = args.max_procs or (torch.cuda.device_count() if cuda else 2)
    name = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    load = f", load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cpus)" if not cuda else ""
    print(f"torch {torch.__version__}, {name}{load}; EvalNetwork C={preset['channels']} "
          f"L={preset['layers']} input {'x'.join(map(str, preset['shape']))}, global batch "
          f"{preset['batch']}, {steps} steps after {warmup} warm-up")
    print(f"{'processes':>9} {'s/step':>9} {'img/s':>9} {'x 1 proc':>9}")
    base = None
    for n in range(1, top + 1):
        # every row in fresh processes (one process too), each with its share of the threads
        run = launch(_steps, n, **preset, steps=steps, warmup=warmup)
        median = statistics.median(run)
        rate = preset["batch"] / median
        base = base or rate
        print(f"{n:>9} {median:>9.3f} {rate:>9.1f} {rate / base:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
