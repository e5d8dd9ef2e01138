"""Results versions (nas_core.versions): what reruns after an upgrade, what resumes, what is said.

The workflow's side on a finished chain (a comment edit reruns nothing, a version bump reruns
the stage and what follows, naming the versions) is in tests/test_workflow.py, on its finished
digits chain; the golden values that keep the versions honest in tests/test_golden.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas_core import identity, outdated, versions
from nas_core.config import NON_RESULT_KEYS, SPECS, Key, validate_stage_cfg
from nas_core.resolve import resolve_dataset

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "workflow" / "rules"
DIGITS = {"name": "digits"}


# -- the workflow's triggers are the versions ------------------------------------------------------


def _rule_params() -> dict[str, str]:
    """rule name -> the text of its params block, over workflow/rules/*.smk."""
    out = {}
    for smk in sorted(RULES_DIR.glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            m = re.match(r"rule (\w+):", block)
            if m:
                params = re.search(r"\n    params:\n((?:        .*\n)+)", block + "\n")
                out[m.group(1)] = params.group(1) if params else ""
    return out


def test_every_compute_rule_takes_its_own_results_version():
    params = _rule_params()
    assert set(versions.RULES) <= set(params), set(versions.RULES) - set(params)
    for rule in versions.RULES:
        assert f'results=results_version("{rule}")' in params[rule], (rule, params[rule])
    for rule, text in params.items():
        if rule not in versions.RULES:
            assert "results_version" not in text, rule


def test_no_source_fingerprint_decides_a_compute_rerun():
    """The hand-kept list of result-neutral modules is gone, and with it the source hash of
    the compute rules; only the figure modules are fingerprinted (report rules)."""
    import nas_core.code_version as cv

    assert not hasattr(cv, "RESULT_NEUTRAL") and not hasattr(cv, "library_fingerprints")
    texts = [p.read_text() for p in (ROOT / "workflow").rglob("*.smk")]
    texts += [p.read_text() for p in (ROOT / "nas_core").rglob("*.py")]
    texts.append((ROOT / "Snakefile").read_text())
    for text in texts:
        assert "library_fingerprints" not in text and "RESULT_NEUTRAL" not in text
        assert "NAS_CORE_VERSION," not in text


def test_versions_of_each_rule():
    assert versions.of("search") == {"data": versions.DATA, "search": versions.SEARCH}
    assert versions.of("select_train") == versions.of("train")  # the train stage's math
    assert versions.for_stage("select") == versions.of("select")
    for rule, names in versions.RULES.items():
        assert set(names) <= set(versions.VERSIONS), rule
    with pytest.raises(KeyError, match="known"):
        versions.of("report_train")
    assert versions.describe({"data": 1, "search": 4}) == "data v1, search v4"
    assert versions.describe().startswith(f"data v{versions.DATA}, search v{versions.SEARCH}, ")


def test_differences_name_only_what_changed(monkeypatch):
    now = versions.of("search")
    assert versions.differences(now, "search") is None
    monkeypatch.setattr(versions, "SEARCH", versions.SEARCH + 1)
    assert versions.differences(now, "search") == (f"search v{now['search']}",
                                                   f"search v{now['search'] + 1}")
    made, new = versions.differences(None, "search")
    assert made == "a nas_core that recorded no results version"


# -- neutral keys: a new key at its neutral default changes no identity ------------------------


def test_keys_at_their_neutral_default_are_left_out():
    cfg = validate_stage_cfg("search", {})
    assert SPECS["search"]["method"].neutral == "darts"
    assert SPECS["search"]["candidates"].neutral == 16
    assert {"method", "candidates"}.isdisjoint(identity.params_cfg("search", cfg))
    assert {"method", "candidates"}.isdisjoint(identity.result_cfg("search", cfg))
    assert NON_RESULT_KEYS.isdisjoint(identity.result_cfg("search", cfg))
    assert "num_workers" in identity.params_cfg("search", cfg)  # a param still (the job's)
    other = validate_stage_cfg("search", {"method": "random_ws", "candidates": 4})
    assert identity.params_cfg("search", other)["method"] == "random_ws"
    assert identity.result_cfg("search", other)["candidates"] == 4
    # the stage, given the params block, runs the same config
    assert validate_stage_cfg("search", identity.params_cfg("search", cfg)) == cfg


def test_a_new_key_with_a_neutral_default_changes_neither_params_nor_fingerprint(monkeypatch):
    before = validate_stage_cfg("search", {"epochs": 3})
    params, run = identity.params_cfg("search", before), identity.run_identity("search", before)
    monkeypatch.setitem(SPECS["search"], "new_knob", Key(0, "int", "a new knob", neutral=0))
    after = validate_stage_cfg("search", {"epochs": 3})
    assert after["new_knob"] == 0
    assert identity.params_cfg("search", after) == params
    assert identity.run_identity("search", after) == run
    turned = validate_stage_cfg("search", {"epochs": 3, "new_knob": 2})
    assert identity.run_identity("search", turned) != run
    # a neutral value that is not the default stays in the params (the stage fills in defaults)
    monkeypatch.setitem(SPECS["search"], "new_knob", Key(1, "int", "a new knob", neutral=0))
    cfg = validate_stage_cfg("search", {"new_knob": 0})
    assert "new_knob" in identity.params_cfg("search", cfg)


def test_the_fingerprint_follows_the_stage_version(monkeypatch):
    cfg = validate_stage_cfg("train", {})
    run = identity.run_identity("train", cfg)
    assert run["results_version"] == versions.of("train")
    monkeypatch.setattr(versions, "SEARCH", versions.SEARCH + 1)  # another stage's version
    assert identity.run_identity("train", cfg) == run
    monkeypatch.setattr(versions, "TRAIN", versions.TRAIN + 1)
    assert identity.run_identity("train", cfg) != run


# -- stale outputs: one line each --------------------------------------------------------------


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture
def finished(tmp_path, monkeypatch) -> dict:
    """A working directory with the compute outputs of digits (one seed), each recording this
    nas_core's versions."""
    monkeypatch.chdir(tmp_path)
    _write(Path("resources/digits/download.json"), {"results_version": versions.of("download")})
    _write(Path("results/digits/search/seed2/history.json"),
           {"results_version": versions.of("search")})
    _write(Path("results/digits/train/history.json"), {"results_version": versions.of("train")})
    _write(Path("results/digits/test.json"), {"results_version": versions.of("test")})
    _write(Path("results/digits/model.json"), {"results_version": versions.of("model_card")})
    for path in Path("results").rglob("*.json"):  # Snakemake's records of the outputs
        _write(Path(".snakemake/metadata") / base64.urlsafe_b64encode(str(path).encode()).decode(),
               {})
    return {"digits": resolve_dataset({"datasets": {"digits": {"data": DIGITS}}}, "digits")}


def test_outputs_of_this_version_are_not_listed(finished):
    assert outdated.outdated(finished) == []


def test_an_output_of_another_version_gets_one_line(finished, monkeypatch):
    monkeypatch.setattr(versions, "SEARCH", 7)
    made = versions.of("search")
    _write(Path("results/digits/search/seed2/history.json"),
           {"results_version": dict(made, search=6)})
    assert outdated.lines(outdated.outdated(finished)) == [
        "results/digits/search/seed2: made by search v6, this nas_core computes search v7: "
        "will rerun"]


def test_an_output_of_the_previous_format_is_stale_with_one_line(finished):
    """An output without a recorded version (nas_core before results versions) is never
    silently kept: Snakemake reruns it (its params changed from the source hash to the
    versions) and the line says why."""
    _write(Path("results/digits/test.json"), {"metrics": {"top1": 90.0}})
    (line,) = outdated.lines(outdated.outdated(finished))
    assert line == ("results/digits/test.json: made by a nas_core that recorded no results "
                    "version (an earlier format), this nas_core computes "
                    f"{versions.describe(versions.of('test'))}: will rerun")


def test_an_output_snakemake_has_no_record_of_is_named_with_its_forcerun(finished):
    _write(Path("results/digits/test.json"), {})
    for record in Path(".snakemake/metadata").iterdir():
        record.unlink()
    (stale,) = outdated.outdated(finished, snakemake_dir=".snakemake")
    assert not stale.tracked and stale.line().endswith(
        "stale, but Snakemake holds no record of it: rerun with --forcerun test")


def test_a_genotype_is_judged_by_snakemake_s_record_of_its_params(finished):
    """genotype.json holds the cell alone: the versions come from the rule's recorded params."""
    geno = Path("results/digits/genotype.json")
    _write(geno, {"normal": []})
    record = Path(".snakemake/metadata") / base64.urlsafe_b64encode(str(geno).encode()).decode()
    now = versions.GENOTYPE
    _write(record, {"record_format_version": 6,
                    "params": ["'results/digits/search/seed2/alphas.json'",
                               repr({"genotype": now})]})
    assert outdated.outdated(finished, snakemake_dir=".snakemake") == []
    _write(record, {"record_format_version": 6, "params": ["'x'", repr({"genotype": now - 1})]})
    assert outdated.lines(outdated.outdated(finished, snakemake_dir=".snakemake")) == [
        f"results/digits/genotype.json: made by genotype v{now - 1}, this nas_core computes "
        f"genotype v{now}: will rerun"]
    _write(record, {"record_format_version": 6, "params": ["'x'", "'3f2a9c0d1b7e4a55'"]})
    (stale,) = outdated.outdated(finished, snakemake_dir=".snakemake")
    assert stale.made.startswith("a nas_core that recorded no results version")
    assert outdated.outdated(finished) == []  # without Snakemake's records: nothing to say


def test_status_command_lists_the_stale_outputs(finished, monkeypatch, capsys):
    from nas_core.cli import main

    Path("config").mkdir()
    Path("config/config.yaml").write_text(yaml.safe_dump(
        {"targets": ["digits"], "datasets": {"digits": {"data": DIGITS}}}))
    assert main(["status"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(versions, "TRAIN", versions.TRAIN + 1)
    assert main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"results/digits/train: made by train v{versions.TRAIN - 1}, this nas_core "
                   f"computes train v{versions.TRAIN}: will rerun"]
    # a config file over config/config.yaml, as snakemake --configfile
    Path("more.yaml").write_text(yaml.safe_dump(
        {"datasets": {"digits": {"search": {"seeds": [2, 5]}}}}))
    assert main(["status", "--config", "more.yaml", "--json"]) == 0
    rules = [s["rule"] for s in json.loads(capsys.readouterr().out)]
    assert rules == ["train"]  # the missing outputs of seed 5 are not stale, just missing


# -- checkpoints across an upgrade ------------------------------------------------------------


SEARCH_KILL = dict(epochs=2, batch_size=16, layers=3, init_channels=4, steps=2, multiplier=2,
                   max_steps_per_epoch=3, checkpoint_every_steps=2, num_workers=0)


def _killed_search(out: Path) -> None:
    """``python -m nas_core search`` killed right after step 2 (its checkpoint written)."""
    import torch

    from nas_core.stages.common import KILL_ENV

    sets = [a for k, v in SEARCH_KILL.items() for a in ("--set", f"search.{k}={json.dumps(v)}")]
    env = dict(os.environ, NAS_CORE_PROGRESS="0", OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env[KILL_ENV] = "2"
    proc = subprocess.run([sys.executable, "-m", "nas_core", "search", "--dataset", "digits",
                           *sets, "--out", str(out), "--device", "cpu"], env=env, cwd=out.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]


def test_a_checkpoint_resumes_across_a_version_neutral_change(tmp_path, monkeypatch, caplog):
    """Killed mid-search; then nas_core 'upgrades' (a new search key with its neutral default,
    no version bumped): the run resumes from its checkpoint.  A bumped search version starts
    afresh and says which version wrote the checkpoint."""
    from nas_core.checkpoint import peek_checkpoint
    from nas_core.stages import run_search

    monkeypatch.setenv("NAS_CORE_PROGRESS", "0")
    out = tmp_path / "search"
    _killed_search(out)
    ckpt = out / "checkpoints" / "last.pt"
    assert peek_checkpoint(ckpt, "results_version")["results_version"] == versions.of("search")

    monkeypatch.setitem(SPECS["search"], "new_knob", Key(0, "int", "a new knob", neutral=0))
    resumed = run_search(DIGITS, SEARCH_KILL, out, device="cpu")
    assert resumed["resumed_from"] == [0, 2]
    history = json.loads((out / "history.json").read_text())
    assert history["results_version"] == versions.of("search") and len(history["epochs"]) == 2

    monkeypatch.setattr(versions, "SEARCH", versions.SEARCH + 1)
    with caplog.at_level(logging.WARNING, logger="nas_core"):
        fresh = run_search(DIGITS, SEARCH_KILL, out, device="cpu")
    assert fresh["resumed_from"] is None
    assert f"written by data v{versions.DATA}, search v{versions.SEARCH - 1}" in caplog.text
    assert json.loads((out / "history.json").read_text())["results_version"]["search"] == \
        versions.SEARCH
