"""What the stages share: their error, logging and progress, seeded data order and
augmentation (the device, precision and determinism are :mod:`nas_core.stages.runtime`'s).

Data order (see docs/architecture.md, "Resume and determinism"): every epoch's permutation of a
part of the data is drawn from a ``torch.Generator`` seeded by ``derive_seed(seed, epoch, tag)``
and cut into batches (:func:`epoch_batches`); a resumed epoch hands the DataLoader only the
batches not done yet (a batch sampler over the remaining batches; nothing is read and thrown
away).  Samples are addressed by ``(epoch, index)`` keys and :class:`SeededDataset` runs the
underlying ``__getitem__`` under a torch RNG seeded by ``derive_seed(seed, epoch, index)``, so
augmentation does not depend on ``num_workers`` or on where a run was resumed.  The DataLoader
gets its own generator, so creating an iterator never draws from the global torch RNG (which
drop-path uses and checkpoints restore).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from nas_core.data.transforms import Cutout
from nas_core.errors import NasCoreError

__all__ = [
    "StageError",
    "setup_logging",
    "progress",
    "derive_seed",
    "epoch_batches",
    "SeededDataset",
    "make_loader",
    "format_metrics",
    "format_duration",
    "state_dict_cpu",
    "KILL_ENV",
]

log = logging.getLogger("nas_core.stages")

#: Test-only hook (read by ``nas_core.stages.loop``): ``NAS_CORE_TEST_KILL_AT_STEP=N`` makes a
#: search/train process SIGKILL itself right after global optimisation step N (1-based, counted
#: over all epochs: ``epoch * steps_per_epoch + step_in_epoch``), after the checkpoint that step
#: may write.  Never set it outside tests.
KILL_ENV = "NAS_CORE_TEST_KILL_AT_STEP"


class StageError(NasCoreError, RuntimeError):
    """A stage cannot run on its inputs; the message is one line naming the fault."""


# -- logging and progress ---------------------------------------------------------------------
_HANDLER_TAG = "_nas_core_handler"


def setup_logging(log_file: str | os.PathLike | None = None, level: int | str = "INFO"):
    """Send the ``nas_core`` loggers to stderr (and ``log_file`` if given), one line per record
    with a timestamp.  Calling it again replaces the handlers it added before.  Returns a
    function that removes them again."""
    logger = logging.getLogger("nas_core")
    logger.setLevel(level)
    _remove_handlers(logger)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                            "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        setattr(h, _HANDLER_TAG, True)
        logger.addHandler(h)
    return lambda: _remove_handlers(logger)


def _remove_handlers(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_TAG, False):
            logger.removeHandler(h)
            h.close()


def progress(total: int, initial: int, desc: str):
    """A live tqdm bar (rate, ETA; redrawn at least once a second) when stderr is a terminal;
    none in a log file, where the epoch lines say the same.  ``NAS_CORE_PROGRESS=1`` forces
    the bar, ``0`` switches it off."""
    forced = os.environ.get("NAS_CORE_PROGRESS")
    enabled = forced == "1" or (forced != "0" and sys.stderr.isatty())
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, mininterval=0.5,
                maxinterval=1.0, dynamic_ncols=True, leave=False, disable=not enabled,
                unit="step")


def format_duration(seconds: float) -> str:
    """``1:02:03`` (hours:minutes:seconds), ``2d 1:02:03`` past a day."""
    total = int(round(max(0.0, seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


# -- seeded data order and augmentation -------------------------------------------------------
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (sha256 of their text), stable across runs and platforms."""
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def epoch_batches(indices: Sequence[int], batch_size: int, seed: int, epoch: int, tag: str,
                  shuffle: bool = True) -> list[list[tuple[int, int]]]:
    """Batches of ``(epoch, index)`` keys: ``indices`` permuted by a generator seeded from
    ``(seed, epoch, tag)`` (kept in order when not ``shuffle``), cut into ``batch_size`` chunks.
    A last batch of one sample is dropped when shuffling (BatchNorm cannot train on it)."""
    idx = list(indices)
    if shuffle:
        g = torch.Generator().manual_seed(derive_seed(seed, epoch, tag))
        perm = torch.randperm(len(idx), generator=g).tolist()
        idx = [idx[p] for p in perm]
    batches = [[(epoch, i) for i in idx[k:k + batch_size]] for k in range(0, len(idx), batch_size)]
    if shuffle and len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


class SeededDataset(Dataset):
    """Wraps a dataset so that sample ``(epoch, index)`` is produced under a torch RNG seeded
    by ``derive_seed(seed, "sample", epoch, index)`` (the global RNG is saved and restored).

    ``cutout > 0`` applies DARTS cutout (``nas_core.data.transforms.Cutout``) after the
    underlying dataset's transform, under the same seeded RNG.  Plain integer keys are
    read without seeding.
    """

    def __init__(self, dataset: Dataset, seed: int, cutout: int = 0):
        self.dataset = dataset
        self.seed = int(seed)
        self.cutout = None
        if cutout > 0:
            self.cutout = Cutout(cutout)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.dataset[key]
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "sample", epoch, index))
            x, y = self.dataset[index]
            if self.cutout is not None:
                x = self.cutout(x)
        return x, y


class _BatchList(Sampler):
    def __init__(self, batches: Sequence[Sequence[Any]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(dataset: Dataset, batches: Sequence[Sequence[Any]], num_workers: int,
                device: torch.device) -> DataLoader:
    """A DataLoader yielding exactly ``batches`` (lists of dataset keys), in order."""
    return DataLoader(dataset, batch_sampler=_BatchList(batches), num_workers=num_workers,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0),
                      persistent_workers=False)


def format_metrics(m: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def state_dict_cpu(model: torch.nn.Module) -> dict:
    """The model's state dict on the CPU, contiguous (canonical bytes), metadata kept."""
    sd = model.state_dict()
    out = OrderedDict((k, v.detach().to("cpu", copy=True).contiguous()) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out
