"""Memory: the probe's measurement and fit, ``batch_size: auto`` against a ``memory_limit``, the
choice kept by a resumed run, the estimate's accuracy, the one-line out-of-memory error and the
``memory`` command."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from nas_core.cli import main as cli_main
from nas_core.config import ConfigError, json_schema, validate_stage_cfg
from nas_core.data import load_data
from nas_core.memory import choose_batch, estimate, fit, is_out_of_memory, peak_bytes
from nas_core.sizes import format_bytes, parse_bytes
from nas_core.stages import StageError, run_genotype, run_search, run_train
from nas_core.stages.runtime import Runtime
from nas_core.stages.search import _Search, search_probe

CPU = torch.device("cpu")
DIGITS = {"name": "digits"}
#: A small supernet on digits (8x8): probes take well under a second.
SEARCH = dict(epochs=1, layers=2, init_channels=4, steps=2, multiplier=2, max_steps_per_epoch=2,
              num_workers=0)
MiB = 2**20


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("NAS_CORE_PROGRESS", "0")


def test_sizes_parse_and_print():
    assert parse_bytes("12GiB") == 12 * 2**30
    assert parse_bytes("800 MiB") == 800 * MiB
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(4096) == 4096
    for bad in ("12 parsecs", "-3GiB", "", "0", True, 0):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_bytes(456 * MiB) == "456 MiB"
    assert format_bytes(7.5 * MiB) == "7.5 MiB"
    assert format_bytes(None) == "?"


def test_config_keys():
    cfg = validate_stage_cfg("search", {"batch_size": "auto", "memory_limit": "2GiB"})
    assert cfg["batch_size"] == "auto" and cfg["memory_limit"] == 2 * 2**30
    assert validate_stage_cfg("train", {})["batch_size"] == 96
    for block, bad, match in [("search", {"batch_size": "big"}, "search.batch_size"),
                              ("train", {"memory_limit": "3 parsecs"}, "train.memory_limit"),
                              ("test", {"memory_margin": 0.95}, "test.memory_margin"),
                              ("search", {"lr_scaling": "sqrt"}, "search.lr_scaling")]:
        with pytest.raises(ConfigError, match=match):
            validate_stage_cfg(block, bad)
    schema = json_schema("search")["properties"]
    assert {"const": "auto"} in schema["batch_size"]["oneOf"]
    assert "null" in schema["memory_limit"]["type"]


def test_peak_bytes_counts_allocations_and_frees():
    def work():
        a = torch.empty(4 * MiB, dtype=torch.uint8)
        b = torch.empty(4 * MiB, dtype=torch.uint8)
        del a
        c = torch.empty(1 * MiB, dtype=torch.uint8)
        return b, c

    assert peak_bytes(work, CPU) == 8 * MiB


def _synthetic(peak_of):
    """A probe whose step holds exactly ``peak_of(batch)`` bytes at its peak."""
    return lambda b: torch.empty(int(peak_of(b)), dtype=torch.uint8).fill_(1)


def test_fit_and_choose_batch_find_the_measured_boundary():
    line = _synthetic(lambda b: 3 * MiB + b * 100_000)
    est = estimate(line, CPU)
    assert est.fixed == pytest.approx(3 * MiB, abs=64) and est.per_sample == pytest.approx(1e5)
    assert est.at(1000) == pytest.approx(3 * MiB + 1e8, abs=64)
    # curved: the line from small probes overestimates the room; the measured search corrects it
    curved = _synthetic(lambda b: 1 * MiB + 50_000 * b + 300 * b * b)
    budget = 40 * MiB
    batch, est, points = choose_batch(curved, CPU, budget, margin=0.0)
    peak = dict(points)
    assert peak[batch] <= budget < peak[batch + 1]
    assert fit([(1, 10), (3, 30)]).per_sample == 10
    assert choose_batch(curved, CPU, 512 * 1024, margin=0.0)[0] == 0  # not even one sample


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] . "
                                         "DefaultCPUAllocator: can't allocate memory: you tried "
                                         "to allocate 1099511627776 bytes."))
    assert not is_out_of_memory(RuntimeError("shapes cannot be multiplied"))


def test_estimate_from_small_probes_is_within_15_percent_of_a_real_step():
    cfg = validate_stage_cfg("search", dict(SEARCH, init_channels=8, layers=3))
    bundle = load_data(DIGITS, "resources")
    runtime = Runtime.resolve(cfg, "cpu")
    probe = search_probe(cfg, bundle, runtime)
    est = estimate(probe, CPU, 64)
    measured = peak_bytes(lambda: probe(64), CPU)
    assert abs(est.at(64) / measured - 1) < 0.15, (est, measured)


def test_auto_batch_fits_the_limit_and_one_more_sample_would_not(tmp_path, caplog):
    limit = 24 * MiB
    cfg = dict(SEARCH, batch_size="auto", memory_limit=limit, memory_margin=0.0,
               reference_batch_size=64)
    with caplog.at_level(logging.INFO, logger="nas_core"):
        run_search(DIGITS, cfg, tmp_path / "s", device="cpu")
    memory = json.loads((tmp_path / "s" / "timings.json").read_text())["memory"]
    history = json.loads((tmp_path / "s" / "history.json").read_text())
    batch = memory["batch_size"]
    assert memory["chosen"] == "measured" and history["batch"] == {"batch_size": batch,
                                                                  "auto": True}
    valid = validate_stage_cfg("search", cfg)
    probe = search_probe(valid, load_data(DIGITS, "resources"), Runtime.resolve(valid, "cpu"))
    assert peak_bytes(lambda: probe(batch), CPU) <= limit < peak_bytes(lambda: probe(batch + 1),
                                                                        CPU)
    # lr_scaling linear: the learning rate of the first epoch is lr * batch / reference
    assert history["epochs"][0]["lr"] == pytest.approx(0.025 * batch / 64)
    assert f"search batch_size auto: {batch} (largest measured fit" in caplog.text
    assert "search memory: expected peak" in caplog.text


def test_resumed_auto_run_keeps_the_batch_of_its_checkpoint(tmp_path, caplog):
    cfg = dict(SEARCH, batch_size="auto", memory_limit="24MiB")
    run_search(DIGITS, cfg, tmp_path / "s", device="cpu")
    first = json.loads((tmp_path / "s" / "timings.json").read_text())["memory"]["batch_size"]
    # a tighter limit would choose a smaller batch; the checkpoint's batch is kept
    with caplog.at_level(logging.INFO, logger="nas_core"):
        out = run_search(DIGITS, dict(cfg, memory_limit="12MiB"), tmp_path / "s", device="cpu")
    memory = json.loads((tmp_path / "s" / "timings.json").read_text())["memory"]
    assert memory["chosen"] == "checkpoint" and memory["batch_size"] == first
    assert out["resumed_from"] is not None
    assert "kept from the checkpoint" in caplog.text


def test_out_of_memory_in_a_stage_is_one_line(tmp_path, monkeypatch, capsys):
    def oom(self, batches, lr, shares):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 "
                                     "has a total capacity of 79.19 GiB\nof which 1 GiB is free")

    monkeypatch.setattr(_Search, "step", oom)
    sets = [f"--set=search.{k}={json.dumps(v)}" for k, v in dict(SEARCH, batch_size=16).items()]
    assert cli_main(["search", "--dataset", "digits", *sets, "--out", str(tmp_path / "s"),
                     "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m nas_core search: error: search ran out of memory on cpu "
                          "at batch 16: expected peak ")
    for part in ("the device has", "would fit: ", "batch_size: auto", "partial_channels: 4",
                 "recompute: true", "amp: bf16", "OutOfMemoryError: CUDA out of memory. Tried "
                 "to allocate 20.00 GiB"):
        assert part in err, part
    assert not (tmp_path / "s" / "alphas.json").exists()


def test_train_auto_batch_and_the_memory_command(tmp_path, capsys):
    run_genotype("DARTS_V2", tmp_path / "genotype.json")
    cfg = dict(epochs=1, layers=2, init_channels=4, max_steps_per_epoch=1, num_workers=0,
               batch_size="auto", memory_limit="16MiB", lr_scaling="none")
    out = run_train(DIGITS, cfg, tmp_path / "genotype.json", tmp_path / "t", device="cpu")
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    assert history["batch"]["auto"] and history["epochs"][0]["lr"] == 0.025  # lr_scaling none
    assert out["best_epoch"] == 0

    sets = [f"--set=train.{k}={json.dumps(v)}" for k, v in cfg.items()]
    assert cli_main(["memory", "train", "--dataset", "digits", "--genotype", "DARTS_V2", *sets,
                     "--batch-sizes", "8,32", "--device", "cpu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["auto_batch"] == history["batch"]["batch_size"]
    rows = {r["batch"]: r for r in doc["rows"]}
    assert set(rows) == {8, 32, doc["auto_batch"]} and rows[doc["auto_batch"]]["fits"]
    assert cli_main(["memory", "search", "--dataset", "digits", "--device", "cpu",
                     *[f"--set=search.{k}={json.dumps(v)}" for k, v in SEARCH.items()],
                     "--batch-sizes", "128"]) == 0
    text = capsys.readouterr().out
    assert "expected peak" in text and "(configured)" in text and "     128 " in text
    assert cli_main(["memory", "train", "--dataset", "digits", "--device", "cpu",
                     "--batch-sizes", "x"]) == 1
    assert "--batch-sizes 'x'" in capsys.readouterr().err


def test_plan_errors_are_one_line(tmp_path):
    cfg = dict(SEARCH, batch_size="auto", memory_limit=1024)
    with pytest.raises(StageError, match=r"search.batch_size auto: not even one sample per "
                                         r"device fits"):
        run_search(DIGITS, cfg, tmp_path / "s", device="cpu")
    assert not (tmp_path / "s" / "alphas.json").exists()


def test_recompute_gives_the_same_search_and_training(tmp_path):
    """recompute is outside the fingerprint because the runs are the same, bit for bit."""
    for flag in (False, True):
        run_search(DIGITS, dict(SEARCH, batch_size=16, recompute=flag), tmp_path / f"s{flag}",
                   device="cpu")
        run_train(DIGITS, dict(epochs=1, layers=3, init_channels=4, max_steps_per_epoch=2,
                               num_workers=0, batch_size=16, auxiliary=True, recompute=flag,
                               drop_path_prob=0.3), _geno(tmp_path),
                  tmp_path / f"t{flag}", device="cpu")
    for name in ("s{}/history.json", "s{}/alphas.json", "s{}/supernet.pt", "t{}/history.json",
                 "t{}/model.pt"):
        assert ((tmp_path / name.format(False)).read_bytes()
                == (tmp_path / name.format(True)).read_bytes()), name


def _geno(tmp_path):
    path = tmp_path / "genotype.json"
    if not path.exists():
        run_genotype("DARTS_V2", path)
    return path


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_from_input_equals_max_pool_and_keeps_no_indices(channels_last):
    from nas_core.search_kernels import MaxPoolFromInput

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (3, 5, 9, 9), generator=g).double()  # many ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(3, 5, 5, 5, generator=g, dtype=torch.float64)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = torch.nn.functional.max_pool2d(a, 3, 2, 1), MaxPoolFromInput.apply(b, 3, 2, 1)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t,
                                                  lambda t: t):
        MaxPoolFromInput.apply(x.clone().requires_grad_(), 3, 1, 1)
    assert saved == [torch.float64]  # the input only, no int64 indices


def test_data_parallel_auto_batch_and_a_plan_that_fails_on_rank_0(tmp_path):
    from nas_core.distributed import DistributedError

    cfg = dict(SEARCH, batch_size="auto", memory_limit="16MiB", memory_margin=0.0)
    run_search(DIGITS, cfg, tmp_path / "s", device="cpu", nproc=2)
    memory = json.loads((tmp_path / "s" / "timings.json").read_text())["memory"]
    assert memory["batch_size"] == 2 * memory["per_device_batch"] > 2
    # rank 0 cannot plan: both processes stop, with rank 0's one line
    with pytest.raises(DistributedError, match=r"not even one sample per device fits"):
        run_search(DIGITS, dict(cfg, memory_limit=1024), tmp_path / "t", device="cpu",
                   nproc=2)
