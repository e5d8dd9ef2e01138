"""The four stages end to end on the CPU: resume after SIGKILL gives bit-identical files, stale
checkpoints are ignored, search -> genotype -> train -> test on digits, regression on a
graphene-format file, the authors' DARTS_V2 CIFAR-10 state-dict layout, one-line errors, CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from darts_shared import DARTS_FIXTURES, read_layout
from nas_core.fileio import sha256_file
from nas_core.cli import main as cli_main, resolve_config
from nas_core.config import SPECS, ConfigError
from nas_core.genotypes import Genotype, get_genotype
from nas_core.stages import StageError, run_genotype, run_search, run_test, run_train
from nas_core.stages.common import KILL_ENV

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"name": "digits"}

#: Tiny search: 2 epochs x 3 steps, checkpoint every 2 steps.
SEARCH_KILL = dict(epochs=2, batch_size=16, layers=3, init_channels=4, steps=2, multiplier=2,
                   max_steps_per_epoch=3, checkpoint_every_steps=2, num_workers=0)
#: Tiny training with every source of randomness on: drop-path, cutout, auxiliary head.
TRAIN_KILL = dict(epochs=2, batch_size=16, layers=3, init_channels=4, max_steps_per_epoch=3,
                  checkpoint_every_steps=2, auxiliary=True, drop_path_prob=0.2, cutout=3,
                  valid_fraction=0.2, num_workers=0)


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("NAS_CORE_PROGRESS", "0")


def _sets(stage: str, cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        out += ["--set", f"{stage}.{k}={json.dumps(v)}"]
    return out


def _cli(args: list[str], kill_at: int | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m nas_core ARGS`` in a subprocess with this process's thread count."""
    env = dict(os.environ, NAS_CORE_PROGRESS="0", OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "nas_core", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _ckpt_position(out_dir: Path) -> tuple[int, int]:
    state = torch.load(out_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return int(state["epoch"]), int(state["step"])


def _assert_killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}: {proc.stderr[-2000:]}"


def _assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- resume after SIGKILL ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("darts", {}), ("random_ws", {}),
    # the eigenvalues so far (R-DARTS' rule reads them) and SDARTS-RS' generator travel in
    # the checkpoint; beta-DARTS' and DARTS-'s weights follow the epoch
    ("darts", {"hessian_every": 1, "hessian_batches": 1, "beta_decay": 10.0, "aux_skip": True,
               "sdarts_epsilon": 0.3})], ids=["darts", "random_ws", "guarded"])
def test_search_killed_and_restarted_is_bit_identical(tmp_path, method, extra):
    cfg = dict(SEARCH_KILL, method=method, candidates=3, **extra)
    ref = tmp_path / "ref"
    run_search(DIGITS, cfg, ref, device="cpu")

    out = tmp_path / "killed"
    args = ["search", "--dataset", "digits", *_sets("search", cfg), "--out", str(out),
            "--device", "cpu"]
    # killed right after its first checkpoint (epoch 0, step 2)
    _assert_killed(_cli(args, kill_at=2))
    assert _ckpt_position(out) == (0, 2)
    assert not (out / "alphas.json").exists()
    # killed mid-epoch: global step 4 = epoch 1, step 1 (resumes from the epoch-end checkpoint)
    proc = _cli(args, kill_at=4)
    _assert_killed(proc)
    assert "resuming from" in proc.stderr and "epoch 0 step 2" in proc.stderr
    assert _ckpt_position(out) == (1, 0)
    proc = _cli(args)
    _assert_ok(proc)
    assert "epoch 1 step 0" in proc.stderr

    for name in ("alphas.json", "history.json", "supernet.pt"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    run_genotype(ref / "alphas.json", ref / "genotype.json")
    run_genotype(out / "alphas.json", out / "genotype.json")
    assert (out / "genotype.json").read_bytes() == (ref / "genotype.json").read_bytes()
    assert json.loads(proc.stdout)["resumed_from"] == [1, 0]


@pytest.mark.slow
def test_train_killed_and_restarted_is_bit_identical(tmp_path, monkeypatch):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    for d in (ref, killed):
        run_genotype("DARTS_V2", d / "genotype.json")
    run_train(DIGITS, TRAIN_KILL, ref / "genotype.json", ref / "train", device="cpu")

    args = ["train", "--dataset", "digits", *_sets("train", TRAIN_KILL),
            "--genotype", str(killed / "genotype.json"), "--out", str(killed / "train"),
            "--device", "cpu"]
    _assert_killed(_cli(args, kill_at=2))
    assert _ckpt_position(killed / "train") == (0, 2)
    # another worker count (not part of the fingerprint; results must not depend on it)
    proc = _cli(args + ["--set", "train.num_workers=2"], kill_at=4)
    _assert_killed(proc)
    assert "resuming from" in proc.stderr
    _assert_ok(_cli(args))

    for name in ("model.pt", "history.json"):
        assert (killed / "train" / name).read_bytes() == (ref / "train" / name).read_bytes(), name

    tests = {}
    for d in (ref, killed):  # relative paths, so that test.json can be compared byte for byte
        monkeypatch.chdir(d)
        run_test(DIGITS, TRAIN_KILL, {"num_workers": 0}, "genotype.json", "train/model.pt",
                 "test.json", device="cpu")
        tests[d] = (d / "test.json").read_bytes()
    assert tests[ref] == tests[killed]


TINY_SEARCH = dict(epochs=1, batch_size=16, layers=3, init_channels=4, steps=1, multiplier=1,
                   max_steps_per_epoch=2, num_workers=0)


def test_changed_config_ignores_stale_checkpoint(tmp_path, caplog):
    out = tmp_path / "search"
    first = run_search(DIGITS, TINY_SEARCH, out, device="cpu")
    assert first["resumed_from"] is None
    alphas = (out / "alphas.json").read_bytes()
    # same config: the finished checkpoint is reused, outputs are rewritten identically
    again = run_search(DIGITS, dict(TINY_SEARCH, num_workers=0, checkpoint_every_steps=7), out,
                       device="cpu")
    assert again["resumed_from"] == [1, 0]
    assert (out / "alphas.json").read_bytes() == alphas
    with caplog.at_level(logging.INFO, logger="nas_core"):
        changed = run_search(DIGITS, dict(TINY_SEARCH, lr=0.05), out, device="cpu")
    assert changed["resumed_from"] is None
    assert "ignoring checkpoint" in caplog.text and "configuration changed" in caplog.text
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"][0]["lr"] == 0.05


@pytest.mark.parametrize("variant", [
    dict(order=2, partial_channels=2),
    dict(amp="bf16", channels_last=True, deterministic=True),
])
def test_search_variants(tmp_path, variant):
    out = tmp_path / "search"
    res = run_search(DIGITS, dict(TINY_SEARCH, steps=2, multiplier=2, **variant), out,
                     device="cpu")
    doc = json.loads((out / "alphas.json").read_text())
    if variant.get("partial_channels", 1) > 1:
        assert len(doc["betas"]["normal"]) == len(doc["edge_weights"]["reduce"]) == 5
    assert run_genotype(out / "alphas.json", tmp_path / "g.json").to_dict() == res["genotype"]
    assert torch.are_deterministic_algorithms_enabled() is False  # restored after the stage


def test_unreadable_checkpoint_is_moved_aside_and_run_starts_fresh(tmp_path, caplog):
    out = tmp_path / "search"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"\x00truncated")
    with caplog.at_level(logging.WARNING, logger="nas_core"):
        result = run_search(DIGITS, TINY_SEARCH, out, device="cpu")
    assert result["resumed_from"] is None
    assert (out / "checkpoints" / "last.pt.corrupt").read_bytes() == b"\x00truncated"
    assert "moved aside" in caplog.text
    assert _ckpt_position(out) == (1, 0)


def test_failing_stage_leaves_the_previous_outputs_in_place(tmp_path):
    """Outputs are replaced only on success: a failing run leaves the earlier ones as they were
    (Snakemake removes a job's outputs itself before running it)."""
    out = tmp_path / "train"
    out.mkdir()
    (out / "model.pt").write_bytes(b"old")
    (out / "history.json").write_text("{}")

    def assert_old_outputs():
        assert (out / "model.pt").read_bytes() == b"old"
        assert (out / "history.json").read_text() == "{}"

    bad = tmp_path / "genotype.json"
    bad.write_text('{"normal": [["sep_conv_3x3", 0]], "normal_concat": [2]}')
    with pytest.raises(StageError) as info:
        run_train(DIGITS, TRAIN_KILL, bad, out, device="cpu")
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert_old_outputs()
    with pytest.raises(ConfigError, match=r"^train\.epochs: 0 is out of range"):
        run_train(DIGITS, dict(TRAIN_KILL, epochs=0), bad, out, device="cpu")
    assert_old_outputs()
    run_genotype("DARTS_V2", bad)
    with pytest.raises(ValueError, match="unknown dataset"):
        run_train({"name": "no-such-dataset"}, TRAIN_KILL, bad, out, device="cpu")
    assert_old_outputs()


def test_failed_cli_runs_keep_the_earlier_good_outputs(tmp_path, capsys):
    good = {name: tmp_path / name for name in ("genotype.json", "search", "train", "test.json")}
    run_genotype("DARTS_V2", good["genotype.json"])
    good["search"].mkdir()
    for name in ("alphas.json", "supernet.pt", "history.json", "timings.json"):
        (good["search"] / name).write_bytes(b"good " + name.encode())
    good["train"].mkdir()
    for name in ("model.pt", "history.json", "timings.json"):
        (good["train"] / name).write_bytes(b"good " + name.encode())
    good["test.json"].write_text('{"good": true}')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    runs = [
        ["genotype", "NOPE_V9", "--out", str(good["genotype.json"])],
        ["search", "--dataset", "digits", "--set", "search.epochs=0",
         "--out", str(good["search"]), "--device", "cpu"],
        ["search", "--dataset", "digits", "--set", "data.name=no-such-dataset",
         "--out", str(good["search"]), "--device", "cpu"],
        ["train", "--dataset", "digits", "--genotype", str(tmp_path / "missing.json"),
         "--out", str(good["train"]), "--device", "cpu"],
        ["test", "--dataset", "digits", "--genotype", str(good["genotype.json"]),
         "--model", str(tmp_path / "missing.pt"), "--out", str(good["test.json"]),
         "--device", "cpu"],
    ]
    for args in runs:
        assert cli_main(args) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith(f"python -m nas_core {args[0]}: error: "), err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# -- digits end to end ------------------------------------------------------------------------
@pytest.mark.slow
def test_digits_search_genotype_train_test(tmp_path):
    search_cfg = dict(epochs=2, batch_size=16, layers=3, init_channels=4,
                      max_steps_per_epoch=4, num_workers=0)
    res = run_search(DIGITS, search_cfg, tmp_path / "search", device="cpu")

    alphas = json.loads((tmp_path / "search" / "alphas.json").read_text())
    assert list(alphas) == ["format", "method", "primitives", "steps", "multiplier", "partial_channels",
                            "epochs", "alphas", "softmax", "weights"]
    assert len(alphas["alphas"]["normal"]) == 14 and len(alphas["alphas"]["normal"][0]) == 8
    assert all(abs(sum(row) - 1) < 1e-5 for row in alphas["softmax"]["reduce"])
    history = json.loads((tmp_path / "search" / "history.json").read_text())
    assert history["stage"] == "search" and len(history["epochs"]) == 2
    epoch = history["epochs"][-1]
    assert set(epoch) == {"epoch", "lr", "train", "valid", "alphas", "genotype", "collapse"}
    assert set(epoch["train"]) == set(epoch["valid"]) == {"loss", "top1"}
    timings = json.loads((tmp_path / "search" / "timings.json").read_text())
    assert [t["epoch"] for t in timings["epochs"]] == [0, 1]
    sd = torch.load(tmp_path / "search" / "supernet.pt", weights_only=True)
    assert "alphas_normal" in sd

    genotype = run_genotype(tmp_path / "search" / "alphas.json", tmp_path / "genotype.json")
    assert Genotype.load(tmp_path / "genotype.json") == genotype
    assert genotype.to_dict() == res["genotype"] == epoch["genotype"]

    train_cfg = dict(epochs=3, batch_size=32, layers=3, init_channels=8, lr=0.05,
                     auxiliary=True, drop_path_prob=0.1, num_workers=0)
    tr = run_train(DIGITS, train_cfg, tmp_path / "genotype.json", tmp_path / "train",
                   device="cpu")
    th = json.loads((tmp_path / "train" / "history.json").read_text())
    assert [e["drop_path_prob"] for e in th["epochs"]] == pytest.approx([0, 0.1 / 3, 0.2 / 3])
    assert th["selection"]["best_epoch"] == tr["best_epoch"]
    best = th["epochs"][tr["best_epoch"]]["valid"]["top1"]
    assert best == max(e["valid"]["top1"] for e in th["epochs"])

    result = run_test(DIGITS, train_cfg, {"num_workers": 0}, tmp_path / "genotype.json",
                      tmp_path / "train" / "model.pt", tmp_path / "test.json", device="cpu")
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved) == {"dataset", "task", "metrics", "num_samples", "batch",
                          "num_parameters", "genotype", "genotype_source", "network", "model",
                          "data", "nas_core_version", "results_version"}
    from nas_core import versions
    assert saved["results_version"] == versions.of("test")
    assert saved["batch"] == {"batch_size": 256, "auto": False}
    assert saved["dataset"] == "digits" and saved["task"] == "classification"
    m = saved["metrics"]
    assert set(m) == {"top1", "top5", "loss", "per_class_accuracy"}
    assert m["top1"] > 50, m  # chance is 10%
    assert m["top5"] >= m["top1"] and len(m["per_class_accuracy"]) == 10
    assert saved["num_samples"] == 360
    assert saved["genotype"] == genotype.to_dict()
    assert saved["model"]["sha256"] == sha256_file(tmp_path / "train" / "model.pt")
    assert saved["model"]["bytes"] == (tmp_path / "train" / "model.pt").stat().st_size
    assert saved["data"]["dataset"] == "digits"
    state = torch.load(tmp_path / "train" / "model.pt", weights_only=True)
    assert any(k.startswith("auxiliary_head.") for k in state)
    from nas_core.model_eval import EvalNetwork, count_parameters

    net = EvalNetwork(genotype, 1, 8, 10, 3, auxiliary=True)
    assert saved["num_parameters"] == count_parameters(net) < sum(p.numel() for p in
                                                                   net.parameters())


# -- regression ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_graphene_regression_end_to_end(tmp_path):
    datafiles = pytest.importorskip("datafiles")
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from nas_core.data import load_data
    from nas_core.model_eval import EvalNetwork

    root = tmp_path / "resources"
    datafiles.write_graphene_nc(root / "graphene" / "graphene_processed.nc", n=80)
    data = {"name": "graphene"}
    search_cfg = dict(epochs=1, batch_size=16, layers=3, init_channels=4, steps=2,
                      multiplier=2, max_steps_per_epoch=2, num_workers=0)
    run_search(data, search_cfg, tmp_path / "search", data_root=root, device="cpu")
    history = json.loads((tmp_path / "search" / "history.json").read_text())
    assert history["metric"] == "r2" and set(history["epochs"][0]["train"]) == {"loss", "r2"}
    run_genotype(tmp_path / "search" / "alphas.json", tmp_path / "genotype.json")

    train_cfg = dict(epochs=2, batch_size=16, layers=3, init_channels=4, lr=0.01,
                     valid_fraction=0.2, num_workers=0)
    run_train(data, train_cfg, tmp_path / "genotype.json", tmp_path / "train", data_root=root,
              device="cpu")
    result = run_test(data, train_cfg, {"batch_size": 7, "num_workers": 0},
                      tmp_path / "genotype.json", tmp_path / "train" / "model.pt",
                      tmp_path / "test.json", data_root=root, device="cpu")
    m = result["metrics"]
    assert set(m) == {"r2", "mse", "mae", "loss"} and result["task"] == "regression"

    bundle = load_data(data, root)
    net = EvalNetwork(Genotype.load(tmp_path / "genotype.json"), 1, 4, 1, 3)
    net.load_state_dict(torch.load(tmp_path / "train" / "model.pt", weights_only=True))
    net = net.to(memory_format=torch.channels_last).eval()  # the CPU default ("auto")
    xs, ys = zip(*[bundle.test[i] for i in range(len(bundle.test))])
    with torch.no_grad():  # batches of 7, as in the test stage (same kernels, same numbers)
        preds = torch.cat([net(torch.stack(xs[k:k + 7]).contiguous(
            memory_format=torch.channels_last)) for k in range(0, len(xs), 7)])
    y = torch.stack(ys).double().numpy()
    p = preds.squeeze(-1).double().numpy()
    assert result["num_samples"] == len(y) == 16
    assert m["r2"] == pytest.approx(sklearn_metrics.r2_score(y, p), rel=1e-9, abs=1e-12)
    assert m["mse"] == pytest.approx(sklearn_metrics.mean_squared_error(y, p), rel=1e-9)
    assert m["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y, p), rel=1e-9)
    # over the whole split, not a mean of per-batch R^2
    per_batch = np.mean([sklearn_metrics.r2_score(y[k:k + 7], p[k:k + 7])
                         for k in range(0, len(y), 7)])
    assert m["r2"] != pytest.approx(per_batch, rel=1e-6)


# -- the authors' DARTS_V2 CIFAR-10 checkpoint layout ---------------------------------------
def _darts_v2_state_dict() -> dict:
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, dims in read_layout("darts_v2_cifar_state_dict.tsv"):
        if key.endswith("num_batches_tracked"):  # absent from torch 0.3.1 checkpoints
            continue
        if key.endswith("running_var"):
            sd[key] = torch.ones(dims)
        elif key.endswith("running_mean"):
            sd[key] = torch.zeros(dims)
        else:
            sd[key] = 0.05 * torch.randn(dims, generator=gen)
    return sd


@pytest.fixture
def darts_v2_cifar(tmp_path):
    state_dict = _darts_v2_state_dict()
    datafiles = pytest.importorskip("datafiles")
    root = tmp_path / "resources"
    datafiles.write_cifar_batches(root, n_per_batch=2, n_test=6)
    model = tmp_path / "weights.pt"
    torch.save(state_dict, model)
    return root, model


DARTS_V2_TRAIN = {"layers": 20, "init_channels": 36, "auxiliary": True}


def test_darts_v2_cifar_checkpoint_is_evaluated(tmp_path, darts_v2_cifar):
    root, model = darts_v2_cifar
    result = run_test({"name": "cifar-10"}, DARTS_V2_TRAIN, {"batch_size": 4, "num_workers": 0},
                      "DARTS_V2", model, tmp_path / "test.json", data_root=root, device="cpu")
    assert result["num_parameters"] == 3_349_342
    assert result["num_samples"] == 6 and result["dataset"] == "cifar-10"
    assert result["genotype"] == get_genotype("DARTS_V2").to_dict()
    assert all(np.isfinite(result["metrics"][k]) for k in ("top1", "top5", "loss"))
    assert json.loads((tmp_path / "test.json").read_text())["model"]["path"] == str(model)


@pytest.mark.parametrize("train_cfg, match", [
    (dict(DARTS_V2_TRAIN, auxiliary=False), r"unexpected key 'auxiliary_head\."),
    (dict(DARTS_V2_TRAIN, layers=14), r"missing key 'cells\.5\.preprocess0\.conv_1\.weight'"),
    (dict(DARTS_V2_TRAIN, init_channels=16), r"'stem\.0\.weight' has shape 108x3x3x3, the "
                                             r"network expects 48x3x3x3"),
])
def test_model_that_does_not_match_gives_one_line_error(tmp_path, darts_v2_cifar, train_cfg,
                                                        match):
    root, model = darts_v2_cifar
    with pytest.raises(StageError, match=match) as info:
        run_test({"name": "cifar-10"}, train_cfg, {"num_workers": 0}, "DARTS_V2", model,
                 tmp_path / "test.json", data_root=root, device="cpu")
    msg = str(info.value)
    assert str(model) in msg and "\n" not in msg
    assert not (tmp_path / "test.json").exists()


def test_unreadable_model_file(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(StageError, match=r"model file .*model\.pt: cannot be read"):
        run_test(DIGITS, {"layers": 3, "init_channels": 4}, {"num_workers": 0}, "DARTS_V2",
                 bad, tmp_path / "test.json", device="cpu")


# -- genotype stage -----------------------------------------------------------------------------
def test_genotype_from_name_text_json_and_legacy_log(tmp_path):
    out = tmp_path / "genotype.json"
    g = run_genotype("DARTS_V2", out)
    assert g == get_genotype("DARTS_V2")
    assert out.read_text() == g.to_json()

    text = tmp_path / "genotype.txt"
    text.write_text(f"best cell found:\ngenotype = {g.to_legacy()}\n")
    assert run_genotype(text, out) == g
    wrapped = tmp_path / "test.json"
    wrapped.write_text(json.dumps({"dataset": "x", "genotype": g.to_dict()}))
    assert run_genotype(wrapped, out) == g
    assert run_genotype(tmp_path / "genotype.json", tmp_path / "copy.json") == g

    log_file = DARTS_FIXTURES / "logs" / "search-MNIST-20191004-160833" / "log.txt"
    if log_file.is_file():
        assert run_genotype(log_file, out) == get_genotype("MNIST")


@pytest.mark.parametrize("content, match", [
    ("no genotype here", r"neither JSON"),
    ('{"normal": []}', r"lacks key"),
    ("Genotype(normal=[('bogus_op', 0)])", r"src\.txt: legacy genotype: missing field"),
])
def test_genotype_bad_sources(tmp_path, content, match):
    src = tmp_path / "src.txt"
    src.write_text(content)
    with pytest.raises((StageError, ValueError), match=match) as info:
        run_genotype(src, tmp_path / "genotype.json")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "genotype.json").exists()


def test_genotype_unknown_name_or_missing_file(tmp_path):
    with pytest.raises(StageError, match="not a file, and unknown genotype"):
        run_genotype("NO_SUCH_CELL", tmp_path / "g.json")
    with pytest.raises(StageError, match="no such file"):
        run_genotype(tmp_path / "missing.json", tmp_path / "g.json")


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_help_documents_every_key(capsys):
    for cmd, stages in (("search", ["search"]), ("train", ["train"]),
                        ("test", ["test", "train"])):
        with pytest.raises(SystemExit) as info:
            cli_main([cmd, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        for stage in stages:
            for key in SPECS[stage]:
                assert f"{stage}.{key} [" in text, (cmd, key)
        for opt in ("--config", "--dataset", "--set", "--data-root", "--device", "--out"):
            assert opt in text


def test_cli_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("search: {epochs: 7, lr: 0.1}\ntrain: {layers: 8}\n"
                   "datasets:\n  graphene:\n    data: {name: graphene, target: stress}\n"
                   "    search: {epochs: 5}\n  digits:\n    data: {name: digits}\n")
    name, blocks = resolve_config(str(cfg), "graphene", ["search.batch_size=8", "data.target=strain",
                                                        "epochs=3"], "search")
    assert name == "graphene"
    assert blocks["search"] == {"epochs": 3, "lr": 0.1, "batch_size": 8}
    assert blocks["train"] == {"layers": 8}
    assert blocks["data"] == {"name": "graphene", "target": "strain"}
    name, blocks = resolve_config(None, "digits", [], "search")
    assert blocks["data"] == {"name": "digits"} and blocks["search"] == {}


def test_cli_bad_value_is_a_one_line_error(tmp_path, capsys):
    code = cli_main(["search", "--dataset", "digits", "--set", "search.epochs=0",
                     "--out", str(tmp_path / "s"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "search.epochs: 0 is out of range" in err
    code = cli_main(["train", "--dataset", "digits", "--genotype", str(tmp_path / "none.json"),
                     "--out", str(tmp_path / "t"), "--device", "cpu"])
    assert code == 1 and "no such file" in capsys.readouterr().err


def test_cli_genotype(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert cli_main(["genotype", "DARTS_V2", "--out", str(out)]) == 0
    assert Genotype.load(out) == get_genotype("DARTS_V2")
    assert json.loads(capsys.readouterr().out)["output"] == str(out)


def test_set_reads_exponent_floats_as_numbers(tmp_path):
    """PyYAML's YAML 1.1 rules read ``1e-4`` as text; --set and --config read it as the
    number a user means (YAML 1.2)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets:\n  digits:\n    data: {name: digits}\n    search: {arch_lr: 3e-4}\n")
    _, blocks = resolve_config(str(cfg), "digits", ["search.lr=1e-2", "train.lr=2.5E-2"])
    assert blocks["search"]["arch_lr"] == 3e-4 and blocks["search"]["lr"] == 0.01
    assert blocks["train"]["lr"] == 0.025
