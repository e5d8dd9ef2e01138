"""Search seeds as a wildcard, the selection among them (the DARTS protocol), GPU jobs' threads
under a GPU cap, and four searches at once on four (fake) GPUs.

- config: ``search.seeds`` (a checked list kind of nas_core.config), the ``select:`` block,
  fingerprints that ignore the list;
- ``nas_core.stages.select.run_select``: the winner, ties to the lower seed, selection.json;
- ``nas_core.report_selection``: the candidates side by side;
- the workflow: one search job per seed, selection jobs only with more than one seed, threads
  of the planned jobs (dry runs), and with ``NAS_CORE_FAKE_GPU_COUNT=4`` and ``--cores 4
  --resources gpu=4`` a real digits run whose four search jobs overlap in time on four device
  ids (read from the job logs), then the selection, then train.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from nas_core import config as nas_config
from nas_core.checkpoint import fingerprint
from nas_core.genotypes import get_genotype
from nas_core.resolve import resolve_dataset
from nas_core.stages.common import StageError
from nas_core.stages.select import run_select
from test_schema import check
from test_workflow import copy_workflow, snakemake, write_config

# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ([1, 1], "search.seeds: 1 appears twice in [1, 1]"),
    ([-1], "search.seeds: -1 is out of range [0, inf)"),
    ([], "search.seeds: must not be empty"),
    (3, "search.seeds: must be a list of integers, got 3"),
    ([1, "2"], "search.seeds: must be a list of integers, got '2' in [1, '2']"),
    ([True], "search.seeds: must be a list of integers, got True in [True]"),
])
def test_seeds_are_checked_with_one_line_naming_the_key(value, message):
    with pytest.raises(nas_config.ConfigError) as err:
        nas_config.validate_stage_cfg("search", {"seeds": value})
    assert str(err.value) == message
    with pytest.raises(nas_config.ConfigError, match=r"^datasets\.d: search\.seeds: "):
        resolve_dataset({"datasets": {"d": {"data": {"name": "digits"},
                                            "search": {"seeds": value}}}}, "d")


def test_schema_rejects_bad_seeds_and_select_blocks_with_one_line():
    ds = {"d": {"data": {"name": "digits"}}}
    cfg = {"datasets": {"d": {**ds["d"], "search": {"seeds": [2, 2]}}}}
    assert check(cfg) == "config: datasets.d.search.seeds: [2, 2] has non-unique elements"
    cfg = {"datasets": {"d": {**ds["d"], "search": {"seeds": [1, -3]}}}}
    assert check(cfg) == "config: datasets.d.search.seeds.1: -3 is less than the minimum of 0"
    cfg = {"select": {"valid_fraction": 0}, "datasets": ds}
    assert check(cfg) == ("config: select.valid_fraction: 0 is less than or equal to the "
                          "minimum of 0")
    cfg = {"datasets": {"d": {**ds["d"], "select": {"epochz": 1}}}}
    assert check(cfg).startswith("config: unknown key 'datasets.d.select.epochz' (allowed: ")
    ok = check({"select": {"epochs": 2}, "search": {"seeds": None},
                "datasets": {"d": {**ds["d"], "search": {"seeds": [4, 1]}}}})
    assert ok["select"]["epochs"] == 2 and ok["select"]["valid_fraction"] == 0.2


def test_select_block_is_a_train_block_with_small_defaults():
    select = nas_config.SPECS["select"]
    assert list(select) == list(nas_config.SPECS["train"])
    assert nas_config.SELECT_DEFAULTS["epochs"] < nas_config.TRAIN_DEFAULTS["epochs"]
    # run_train validates the select block as a train block: same keys, same values
    cfg = nas_config.validate_stage_cfg("select", {"epochs": 3})
    assert nas_config.validate_stage_cfg("train", cfg) == cfg
    ds = resolve_dataset({"select": {"epochs": 5, "layers": 4},
                          "datasets": {"d": {"data": {"name": "digits"},
                                             "select": {"epochs": 2}}}}, "d")
    assert ds.select["epochs"] == 2 and ds.select["layers"] == 4
    assert set(ds.blocks()) == {"data", "search", "train", "test", "select"}


def test_seeds_resolve_and_leave_the_search_fingerprint_alone():
    doc = {"datasets": {"one": {"data": {"name": "digits"}},
                        "four": {"data": {"name": "digits"}, "search": {"seeds": [4, 1, 3, 2]}},
                        "pub": {"data": {"name": "digits"}, "search": {"seeds": [1, 2]},
                                "genotype": {"source": "DARTS_V2"}}}}
    one, four, pub = (resolve_dataset(doc, n) for n in ("one", "four", "pub"))
    assert one.seeds == [2] and not one.selects  # null = [seed]
    assert four.seeds == [1, 2, 3, 4] and four.selects  # in order: the list's order is moot
    assert pub.seeds == [] and not pub.selects  # a published genotype: no search at all
    # One seed's job does not see the list: another list leaves its params as they were.
    more = copy.deepcopy(doc)
    more["datasets"]["four"]["search"]["seeds"] = [1, 5]
    assert resolve_dataset(more, "four").search_for_seed(1) == four.search_for_seed(1)
    assert "seeds" not in four.search_for_seed(1) and four.search_for_seed(3)["seed"] == 3
    # ... and the stage's checkpoint fingerprint ignores `seeds` (a search run uses `seed`).
    assert "seeds" in nas_config.NON_RESULT_KEYS
    a = nas_config.validate_stage_cfg("search", {"seed": 1, "seeds": [1, 2]})
    b = nas_config.validate_stage_cfg("search", four.search_for_seed(1))
    strip = lambda cfg: {k: v for k, v in cfg.items() if k not in nas_config.NON_RESULT_KEYS}
    assert fingerprint(strip(a)) == fingerprint(strip(b))


# -- run_select ------------------------------------------------------------------------------

GENOTYPES = ("DARTS_V1", "DARTS_V2", "NASNet", "AmoebaNet")


def _candidate(root: Path, seed: int, values: list, metric: str = "top1",
               genotype: str | None = None, on: str = "valid") -> dict:
    folder = root / f"seed{seed}"
    folder.mkdir(parents=True)
    geno = get_genotype(genotype or GENOTYPES[seed % len(GENOTYPES)])
    geno.save(folder / "genotype.json")
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    epochs = [{"epoch": i, "lr": 0.01, "train": {"loss": 1.0, metric: v},
               "valid": {"loss": 1.0 - v / 200, metric: v}} for i, v in enumerate(values)]
    (folder / "history.json").write_text(json.dumps({
        "stage": "train", "metric": metric,
        "selection": {"on": on, "metric": metric, "best_epoch": best,
                      "best_value": values[best]},
        "epochs": epochs}))
    (folder / "timings.json").write_text(json.dumps({"total_seconds": 12.5}))
    return {"seed": seed, "genotype": folder / "genotype.json",
            "history": folder / "history.json", "timings": folder / "timings.json",
            "search_timings": folder / "missing.json"}


def test_the_best_held_out_metric_wins_and_ties_go_to_the_lower_seed(tmp_path):
    cands = [_candidate(tmp_path, 3, [50.0, 91.0]), _candidate(tmp_path, 1, [80.0, 90.0]),
             _candidate(tmp_path, 4, [91.0, 60.0]), _candidate(tmp_path, 2, [10.0, 20.0])]
    out, geno = tmp_path / "selection.json", tmp_path / "genotype.json"
    doc = run_select(cands, out, geno, cfg={"epochs": 2, "layers": 3, "lr": 0.1})
    assert doc == json.loads(out.read_text())
    assert doc["winner"]["seed"] == 3 and doc["winner"]["valid"] == 91.0  # 3 and 4 tie: 3
    assert [c["seed"] for c in doc["candidates"]] == [1, 2, 3, 4]
    assert doc["rule"]["metric"] == "top1" and doc["rule"]["ties"] == "lower seed"
    assert doc["rule"]["better"] == "higher"
    assert doc["select"] == {"epochs": 2, "layers": 3}
    seed4 = doc["candidates"][3]
    assert seed4["best_epoch"] == 0 and seed4["epochs"] == 2 and seed4["curve"] == [91.0, 60.0]
    assert seed4["select_seconds"] == 12.5 and seed4["search_seconds"] is None
    assert seed4["genotype"] == get_genotype(GENOTYPES[0]).to_dict()
    # genotype.json: the winner's file, byte for byte (what the genotype rule would write)
    assert geno.read_bytes() == (tmp_path / "seed3" / "genotype.json").read_bytes()


def test_regression_and_a_diverged_candidate(tmp_path):
    cands = [_candidate(tmp_path, 7, [0.2, 0.4], metric="r2"),
             _candidate(tmp_path, 8, [0.5, 0.45], metric="r2")]
    doc = run_select(cands, tmp_path / "s.json", tmp_path / "g.json")
    assert doc["winner"]["seed"] == 8 and doc["rule"]["metric"] == "r2"
    # a candidate without a finite score never wins
    h = json.loads(Path(cands[1]["history"]).read_text())
    h["selection"]["best_value"] = float("nan")
    Path(cands[1]["history"]).write_text(json.dumps(h))
    assert run_select(cands, tmp_path / "s.json", tmp_path / "g.json")["winner"]["seed"] == 7


def test_bad_candidates_are_one_line_stage_errors(tmp_path):
    a = _candidate(tmp_path / "a", 1, [1.0], metric="top1")
    b = _candidate(tmp_path / "b", 2, [0.1], metric="r2")
    with pytest.raises(StageError, match="different metrics"):
        run_select([a, b], tmp_path / "s.json", tmp_path / "g.json")
    c = _candidate(tmp_path / "c", 3, [1.0], on="last epoch")
    with pytest.raises(StageError, match=r"no held-out scores \(select.valid_fraction"):
        run_select([c], tmp_path / "s.json", tmp_path / "g.json")
    with pytest.raises(StageError, match="cannot read history"):
        run_select([{**a, "history": tmp_path / "nope.json"}], tmp_path / "s.json",
                   tmp_path / "g.json")
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "g.json").exists()


def test_selection_figure_shows_the_candidates(tmp_path):
    from nas_core.report_selection import cell_text, selection_figure

    cands = [_candidate(tmp_path, s, [50.0 + s, 60.0 + s]) for s in (1, 2, 3, 4)]
    run_select(cands, tmp_path / "demo" / "selection.json", tmp_path / "g.json")
    out = selection_figure(tmp_path / "demo" / "selection.json", tmp_path / "fig" / "sel.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000
    geno = get_genotype("DARTS_V2")
    lines = cell_text(geno.normal, geno.normal_concat)
    assert lines[0] == "n0 = sep_conv_3x3(c_{k-2}) + sep_conv_3x3(c_{k-1})"
    assert lines[-1] == "out = concat(n0, n1, n2, n3)"


# -- the workflow: dry runs ------------------------------------------------------------------


def planned(output: str) -> list[dict]:
    """Each job of a dry run: rule, wildcards and threads (1 when Snakemake prints none)."""
    jobs = []
    for block in re.split(r"\n(?=\s*(?:local)?rule \S+:)", output):
        m = re.match(r"\s*(?:local)?rule (\S+):", block)
        if not m:
            continue
        wc = re.search(r"^\s*wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        threads = re.search(r"^\s*threads: (\d+)$", block, re.M)
        jobs.append({"rule": m.group(1), **wildcards,
                     "threads": int(threads.group(1)) if threads else 1})
    return jobs


@pytest.fixture(scope="module")
def wf(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf_seeds_dry"))


def test_four_seeds_plan_four_searches_and_four_selection_jobs(wf):
    proc = snakemake(wf, "-n", "--cores", "4", "--resources", "gpu=4", "--",
                     "results/mnist/test.json", "results/mnist/figures/selection.png")
    assert proc.returncode == 0, proc.output[-3000:]
    jobs = planned(proc.output)
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    for rule in ("search", "seed_genotype", "select_train"):
        assert sorted(j["seed"] for j in by_rule[rule]) == ["1", "2", "3", "4"], rule
    assert len(by_rule["select"]) == 1 and "genotype" not in by_rule
    # --cores 4 --resources gpu=4: every GPU job gets one thread, so four run at once
    for rule in ("search", "select_train", "train", "test"):
        assert {j["threads"] for j in by_rule[rule]} == {1}, rule
    assert "results/mnist/search/seed3/alphas.json" in proc.output
    assert "results/mnist/select/seed3/history.json" in proc.output
    assert "logs/mnist/search/seed3.log" in proc.output


@pytest.mark.parametrize("args, threads", [
    (("--cores", "8", "--resources", "gpu=4"), {"search": 2, "train": 2, "test": 2}),
    (("--cores", "4", "--resources", "gpu=2"), {"search": 2, "train": 2, "test": 2}),
    (("--cores", "2", "--resources", "gpu=4"), {"search": 1, "train": 1, "test": 1}),
    # no GPU cap, or the CPU: a job gets all the threads it asks for (up to --cores)
    (("--cores", "4"), {"search": 4, "train": 4, "test": 2}),
    (("--cores", "4", "--resources", "gpu=0"), {"search": 4, "train": 4, "test": 2}),
    (("--cores", "2"), {"search": 2, "train": 2, "test": 2}),
])
def test_gpu_jobs_threads_follow_cores_and_the_gpu_cap(wf, args, threads):
    proc = snakemake(wf, "-n", *args, "--", "results/cifar-10/test.json")
    assert proc.returncode == 0, proc.output[-3000:]
    got = {}
    for job in planned(proc.output):
        got.setdefault(job["rule"], set()).add(job["threads"])
    for rule, n in threads.items():
        assert got[rule] == {n}, (rule, got)


def test_one_seed_has_no_selection_stage(wf, tmp_path):
    cfg = write_config(tmp_path / "one.yaml", {"datasets": {"mnist": {
        "data": {"name": "mnist"}, "search": {"seeds": [3]}}}})
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", str(cfg), "--",
                     "results/mnist/test.json")
    assert proc.returncode == 0, proc.output[-3000:]
    jobs = planned(proc.output)
    rules = {j["rule"] for j in jobs}
    assert {"download", "search", "genotype", "train", "test"} == rules, rules
    assert [j["seed"] for j in jobs if j["rule"] == "search"] == ["3"]
    assert "results/mnist/search/seed3/alphas.json" in proc.output


# -- the workflow: four fake GPUs, for real --------------------------------------------------

FAKE = {
    "targets": ["digits"],
    "datasets": {"digits": {
        "data": {"name": "digits"},
        "search": {"seeds": [1, 2, 3, 4], "epochs": 2, "max_steps_per_epoch": 3, "layers": 3,
                   "init_channels": 4, "batch_size": 32, "num_workers": 0},
        "select": {"epochs": 2, "max_steps_per_epoch": 3, "layers": 2, "init_channels": 4,
                   "batch_size": 32, "num_workers": 0},
        "train": {"epochs": 1, "max_steps_per_epoch": 4, "layers": 2, "init_channels": 4,
                  "batch_size": 64, "num_workers": 0},
        "test": {"num_workers": 0},
    }},
}
STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


def _line(log: Path, pattern: str) -> re.Match:
    m = re.search(STAMP + r".*?" + pattern, log.read_text(), re.M)
    assert m, (log, pattern, log.read_text()[-2000:])
    return m


@pytest.fixture(scope="module")
def fake_gpus(tmp_path_factory, monkeypatch_module) -> Path:
    wf = copy_workflow(tmp_path_factory.mktemp("wf_fake_gpus"))
    write_config(wf / "fake.yaml", FAKE)
    monkeypatch_module.setenv("NAS_CORE_FAKE_GPU_COUNT", "4")
    proc = snakemake(wf, "--cores", "4", "--resources", "gpu=4", "--configfile", "fake.yaml",
                     "--", "results/digits/test.json", "results/digits/figures/selection.png")
    assert proc.returncode == 0, proc.output[-6000:]
    return wf


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
def test_four_searches_run_at_once_on_four_devices_then_select_then_train(fake_gpus):
    logs = fake_gpus / "logs" / "digits"
    spans, devices = {}, {}
    for seed in (1, 2, 3, 4):
        log = logs / "search" / f"seed{seed}.log"
        granted = _line(log, r"gpu: granted GPU\(s\) (\S+) ")
        done = _line(log, r"search done: ")
        devices[seed] = granted.group(2)
        spans[seed] = (_time(granted.group(1)), _time(done.group(1)))
    # four different device ids, and one moment when all four searches were running
    assert sorted(devices.values()) == ["0", "1", "2", "3"], devices
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
    searches_end = max(e for _, e in spans.values())
    # the selection trainings are GPU jobs too, after their seed's search
    for seed in (1, 2, 3, 4):
        log = logs / "select" / f"seed{seed}.log"
        start = _time(_line(log, r"gpu: granted GPU\(s\) [0-3] ").group(1))
        assert start > spans[seed][1]
    selected = _time(_line(logs / "select.log",
                           r"select: held-out top1 .* winner seed \d").group(1))
    assert selected > searches_end
    train = _time(_line(logs / "train.log", r"gpu: granted GPU\(s\) [0-3] ").group(1))
    assert train > selected


@pytest.mark.slow
def test_selection_json_lists_every_candidate_and_the_winner_is_the_genotype(fake_gpus):
    results = fake_gpus / "results" / "digits"
    doc = json.loads((results / "selection.json").read_text())
    assert [c["seed"] for c in doc["candidates"]] == [1, 2, 3, 4]
    for c in doc["candidates"]:
        assert c["epochs"] == 2 and c["valid"] is not None and c["select_seconds"] > 0
        assert c["search_seconds"] > 0 and c["metric"] == "top1"
        seed_geno = json.loads((results / "search" / f"seed{c['seed']}" / "genotype.json")
                               .read_text())
        assert c["genotype"] == seed_geno
    best = max(c["valid"] for c in doc["candidates"])
    winner = min(c["seed"] for c in doc["candidates"] if c["valid"] == best)
    assert doc["winner"]["seed"] == winner
    assert json.loads((results / "genotype.json").read_text()) == doc["winner"]["genotype"]
    assert (results / "figures" / "selection.png").read_bytes()[:4] == b"\x89PNG"
    # the held-out part is part of the training data: the test split was never read
    history = json.loads((results / "select" / "seed1" / "history.json").read_text())
    assert history["selection"]["on"] == "valid"
    assert json.loads((results / "test.json").read_text())["num_samples"] > 100


@pytest.mark.slow
def test_changing_the_seed_list_reruns_no_unchanged_search(fake_gpus):
    for seeds, new, select in (([1, 2, 3, 4, 5], {"5"}, True), ([2, 4], set(), True),
                               ([4, 3, 2, 1], set(), False)):
        cfg = copy.deepcopy(FAKE)
        cfg["datasets"]["digits"]["search"]["seeds"] = seeds
        write_config(fake_gpus / "seeds.yaml", cfg)
        proc = snakemake(fake_gpus, "-n", "--cores", "4", "--resources", "gpu=4",
                         "--configfile", "seeds.yaml", "--", "results/digits/test.json")
        assert proc.returncode == 0, proc.output[-3000:]
        jobs = planned(proc.output)
        assert {j["seed"] for j in jobs if j["rule"] in ("search", "select_train")} == new
        assert ("select" in {j["rule"] for j in jobs}) is select, seeds
    assert "Nothing to be done" in proc.output  # the same seeds in another order
