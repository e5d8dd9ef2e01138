"""The Snakemake workflow: schema, lint, dry runs of every dataset, a real end-to-end run of the
default target on the CPU, its report, and the rerun-only-what-is-stale cases.

Snakemake runs in subprocesses (``python -m snakemake``) inside a temporary copy of the
workflow files; nas_core is imported from the installed (editable) package.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles")
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = ROOT / "config" / "config.yaml"
CHAIN = ("download", "search", "genotype", "train", "test")
# A dataset with several search seeds (mnist, ...: four) picks its cell among them.
SELECT_CHAIN = ("download", "search", "seed_genotype", "select_train", "select", "train", "test")
COMPUTE = {"download", "search", "genotype", "train", "test", "seed_genotype", "select_train", "select"}
FIGURES = ("search_curves", "alphas_normal", "alphas_reduce", "cell_normal", "cell_reduce",
           "train_curves", "test_metrics")

# A tiny budget for the end-to-end run (about a minute on two CPU cores): the digits chain with
# a search, plus a second dataset that trains a published genotype (no search).
TINY = {
    "targets": ["digits", "digits-pub"],
    "datasets": {
        "digits": {
            "data": {"name": "digits"},
            "search": {"epochs": 2, "max_steps_per_epoch": 3, "layers": 3, "init_channels": 4,
                       "batch_size": 32, "num_workers": 0, "seeds": None},  # one search: seed 2
            "train": {"epochs": 3, "layers": 3, "init_channels": 8, "batch_size": 64,
                      "num_workers": 0},
            "test": {"num_workers": 0},
        },
        "digits-pub": {
            "data": {"name": "digits"},
            "genotype": {"source": "DARTS_V2"},
            "train": {"epochs": 1, "max_steps_per_epoch": 2, "layers": 2, "init_channels": 4,
                      "batch_size": 64, "num_workers": 0, "valid_fraction": 0.0},
            "test": {"num_workers": 0},
        },
    },
}


# -- helpers ------------------------------------------------------------------------------


def copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    if (workdir / "nas_core").is_dir():  # a private copy of the library (versions tests)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["NAS_CORE_GPU_LOCK_DIR"] = str(workdir / ".gpu_locks")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )
    proc.output = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def planned_jobs(output: str) -> set[tuple[str, str]]:
    """(rule, dataset) of every job a dry run lists ('' for jobs without a dataset)."""
    jobs = set()
    for block in re.split(r"\n(?=\s*(?:local)?rule \S+:)", output):
        m = re.match(r"\s*(?:local)?rule (\S+):", block)
        if not m:
            continue
        ds = re.search(r"wildcards: .*?dataset=([^\s,]+)", block)
        jobs.add((m.group(1), ds.group(1) if ds else ""))
    return jobs


def dag_edges(output: str) -> set[tuple[str, str]]:
    """Edges of `snakemake --dag` as (upstream rule, downstream rule)."""
    names = {m.group(1): m.group(2).split("\\n")[0]
             for m in re.finditer(r'^\s*(\d+)\[label = "([^"]+)"', output, re.M)}
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", output, re.M)}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# -- schema and config --------------------------------------------------------------------


def _walk_objects(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for k, v in node.items():
            yield from _walk_objects(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_objects(v, f"{path}[{i}]")


def test_schema_documents_every_key_and_rejects_unknown_ones():
    schema = yaml.safe_load(SCHEMA.read_text())
    for path, obj in _walk_objects(schema):
        for key, prop in (obj.get("properties") or {}).items():
            if key == "name" and path.endswith((".then", ".if")):
                continue
            assert prop.get("description") or "$ref" in prop, f"{path}.{key} has no description"
    assert schema["additionalProperties"] is False
    for name in ("search", "train", "test", "gpus", "genotype", "dataset", "source"):
        assert schema["$defs"][name]["additionalProperties"] is False, name
    for stage in ("search", "train", "test"):
        for key, prop in schema["$defs"][stage]["properties"].items():
            assert "default" in prop and prop.get("description"), f"{stage}.{key}"


def test_config_has_every_dataset_with_its_overrides():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert {"digits", "mnist", "fashion-mnist", "cifar-10", "graphene"} <= set(cfg["datasets"])
    assert cfg["targets"] == ["digits"]
    graphene = cfg["datasets"]["graphene"]
    assert graphene["search"] == {"seeds": [1, 2, 3, 4], "batch_size": 24}
    assert graphene["train"] == {"layers": 8, "lr": 0.01, "epochs": 200}
    assert cfg["datasets"]["cifar-10"]["train"] == {"auxiliary": True, "cutout": 16}
    for name, block in cfg["datasets"].items():
        assert block["data"]["name"] == name


# -- snakemake without running jobs -------------------------------------------------------


@pytest.fixture(scope="module")
def wf(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf_dry"))


def test_lint_is_clean(wf):
    proc = snakemake(wf, "--lint")
    assert proc.returncode == 0, proc.output
    assert "Congratulations" in proc.output, proc.output


def test_workflow_files_are_snakefmt_clean():
    """The Snakefile and workflow/ as `snakefmt` formats them (the snakemake-workflows rule)."""
    snakefmt = pytest.importorskip("snakefmt")
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (snakefmt.__name__, proc.stdout + proc.stderr)


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "cifar-10", "graphene"])
def test_dry_run_chains_every_stage(wf, dataset):
    target = f"results/{dataset}/test.json"
    # The target first: --resources takes several values and would swallow it.
    proc = snakemake(wf, target, "-n", "--cores", "4", "--resources", "gpu=4")
    assert proc.returncode == 0, proc.output
    jobs = planned_jobs(proc.output)
    assert {(rule, dataset) for rule in SELECT_CHAIN} <= jobs, jobs
    assert {d for _, d in jobs} == {dataset}
    dag = snakemake(wf, "--dag", "dot", "--", target)
    assert dag.returncode == 0, dag.output
    edges = dag_edges(dag.stdout)
    for upstream, downstream in zip(SELECT_CHAIN, SELECT_CHAIN[1:]):
        assert (upstream, downstream) in edges, (upstream, downstream, edges)
    # Every stage that reads data waits for the download.
    assert {("download", "train"), ("download", "test")} <= edges


def test_dry_run_of_all_datasets_at_once(wf):
    targets = [f"results/{d}/test.json" for d in ("mnist", "fashion-mnist", "cifar-10", "graphene")]
    proc = snakemake(wf, "-n", "--cores", "4", "--resources", "gpu=2", "--", *targets)
    assert proc.returncode == 0, proc.output
    jobs = planned_jobs(proc.output)
    for d in ("mnist", "fashion-mnist", "cifar-10", "graphene"):
        assert {(rule, d) for rule in SELECT_CHAIN} <= jobs


def test_published_genotype_skips_the_search(wf, tmp_path):
    cfg = write_config(tmp_path / "pub.yaml", {"datasets": {"mnist": {
        "data": {"name": "mnist"}, "genotype": {"source": "DARTS_V2"}}}})
    proc = snakemake(wf, "results/mnist/test.json", "-n", "--cores", "1", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.output
    rules = {r for r, _ in planned_jobs(proc.output)}
    assert {"download", "genotype", "train", "test"} <= rules
    assert "search" not in rules


def _fails_before_any_job(wf: Path, proc) -> str:
    assert proc.returncode != 0, proc.output
    assert not (wf / "logs").exists() and not (wf / "results").exists(), proc.output
    assert "Traceback (most recent call last)" not in proc.output
    return proc.output


def test_config_typo_fails_before_any_job_naming_the_key(wf, tmp_path):
    cfg = write_config(tmp_path / "typo.yaml", {"datasets": {"digits": {
        "data": {"name": "digits"}, "train": {"epochz": 3}}}})
    out = _fails_before_any_job(wf, snakemake(wf, "--cores", "1", "--configfile", str(cfg)))
    assert "unknown key 'datasets.digits.train.epochz'" in out, out
    # One line: the message and the allowed keys.
    line = next(l for l in out.splitlines() if "epochz" in l)
    assert "epochs" in line

    cfg = write_config(tmp_path / "typo2.yaml", {"serch": {"epochs": 3}})
    out = _fails_before_any_job(wf, snakemake(wf, "--cores", "1", "--configfile", str(cfg)))
    assert "unknown key 'serch'" in out, out

    cfg = write_config(tmp_path / "typo3.yaml", {"datasets": {"digits": {
        "data": {"name": "digits"}, "search": {"lr": "fast"}}}})
    out = _fails_before_any_job(wf, snakemake(wf, "--cores", "1", "--configfile", str(cfg)))
    assert "datasets.digits.search.lr" in out, out

    # Cross-key rules of nas_core.config are checked before any job too.
    cfg = write_config(tmp_path / "typo4.yaml", {"datasets": {"digits": {
        "data": {"name": "digits"}, "train": {"lr": 0.01, "lr_min": 0.1}}}})
    out = _fails_before_any_job(wf, snakemake(wf, "--cores", "1", "--configfile", str(cfg)))
    assert "datasets.digits: train.lr_min" in out, out


def test_missing_dataset_fails_before_any_job_naming_it(wf, tmp_path):
    out = _fails_before_any_job(wf, snakemake(wf, "results/mnsit/test.json", "--cores", "1"))
    assert "dataset 'mnsit'" in out and "not in config 'datasets'" in out, out

    cfg = write_config(tmp_path / "targets.yaml", {"targets": ["fashion_mnist"]})
    out = _fails_before_any_job(wf, snakemake(wf, "--cores", "1", "--configfile", str(cfg)))
    assert "dataset 'fashion_mnist'" in out, out

    cfg = write_config(tmp_path / "geno.yaml", {"datasets": {"mnist": {
        "data": {"name": "mnist"}, "genotype": {"source": "DARTS_V9"}}}})
    out = _fails_before_any_job(wf, snakemake(wf, "results/mnist/test.json", "--cores", "1",
                                              "--configfile", str(cfg)))
    assert "datasets.mnist.genotype.source" in out and "DARTS_V9" in out, out


# -- the real thing: end to end on the CPU, the report, reruns ----------------------------


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """The default target run to completion with the tiny budget."""
    wf = copy_workflow(tmp_path_factory.mktemp("wf_run"))
    shutil.copytree(ROOT / "nas_core", wf / "nas_core", ignore=shutil.ignore_patterns("__pycache__"))
    write_config(wf / "tiny.yaml", TINY)
    proc = snakemake(wf, "--cores", "2", "--configfile", "tiny.yaml", "--resources", "gpu=0")
    assert proc.returncode == 0, proc.output[-6000:]
    (wf / "console.txt").write_text(proc.output)  # what Snakemake printed
    return wf


@pytest.mark.slow
def test_console_shows_each_epoch_with_its_eta(done):
    """The stages' start, epoch (with ETA) and end lines reach Snakemake's console, not only
    the job logs; no progress-bar noise in the logs."""
    console = (done / "console.txt").read_text()
    for rule in ("search", "train"):
        epochs = re.findall(rf"rule {rule}: {rule} digits epoch (\d+)/(\d+) .* ETA \d+:\d\d:\d\d",
                            console)
        assert epochs and epochs[-1][0] == epochs[-1][1], (rule, console[-3000:])
        assert re.search(rf"rule {rule}: {rule} digits: epoch 1 of \d+", console), rule
        assert re.search(rf"rule {rule}: {rule} digits: \d+ epochs done in", console), rule
        log = (done / "logs" / "digits" / {"search": "search/seed2.log",
                                             "train": "train.log"}[rule]).read_text()
        assert "ETA" in log and "\r" not in log and "step/s" not in log
    assert re.search(r"rule test: test on digits: top1 \d", console)
    for stage in ("search/seed2", "train"):
        rows = (done / "results" / "digits" / stage / "metrics.csv").read_text().splitlines()
        assert rows[0] == "epoch,lr,train_loss,train_top1,valid_loss,valid_top1,seconds"
        history = json.loads((done / "results" / "digits" / stage / "history.json").read_text())
        assert len(rows) == 1 + len(history["epochs"])


@pytest.mark.slow
def test_default_target_end_to_end(done):
    for name in ("digits", "digits-pub"):
        res = json.loads((done / "results" / name / "test.json").read_text())
        assert res["task"] == "classification"
        assert res["num_samples"] > 100
        for rule in ("download", "genotype", "train", "test"):
            assert (done / "logs" / name / f"{rule}.log").is_file()
            assert (done / "benchmarks" / name / f"{rule}.tsv").is_file()
        assert (done / "results" / name / "genotype.json").is_file()
        assert (done / "results" / name / "train" / "model.pt").stat().st_size > 0
    # Far above chance (10 %) even with the tiny budget.
    top1 = json.loads((done / "results/digits/test.json").read_text())["metrics"]["top1"]
    assert top1 > 50, top1
    for f in ("alphas.json", "supernet.pt", "history.json"):
        assert (done / "results/digits/search/seed2" / f).stat().st_size > 0
    assert (done / "resources/digits/download.json").is_file()
    # The published genotype was trained as is: no search for digits-pub.
    assert not (done / "results/digits-pub/search").exists()
    from nas_core.genotypes import get_genotype

    geno = json.loads((done / "results/digits-pub/genotype.json").read_text())
    assert geno == get_genotype("DARTS_V2").to_dict()
    for name in FIGURES:
        png = done / "results/digits/figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for cell in ("normal", "reduce"):
        assert "digraph" in (done / f"results/digits/figures/cell_{cell}.dot").read_text()


@pytest.mark.slow
def test_report_holds_every_figure(done):
    proc = snakemake(done, "--configfile", "tiny.yaml", "--report", "report.html")
    assert proc.returncode == 0, proc.output[-4000:]
    html = (done / "report.html").read_text(errors="replace")
    for name in FIGURES:
        assert f"{name}.png" in html, name
    for name in ("cell_normal", "test_metrics", "train_curves"):
        assert f"{name}.png" in html
    assert "digits-pub" in html


@pytest.mark.slow
def test_rerun_with_nothing_changed_does_nothing(done):
    proc = snakemake(done, "-n", "--cores", "2", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.output
    assert "Nothing to be done" in proc.output, proc.output
    assert not planned_jobs(proc.output)


def _changed(done: Path, edit) -> set[tuple[str, str]]:
    cfg = copy.deepcopy(TINY)
    edit(cfg["datasets"])
    write_config(done / "changed.yaml", cfg)
    proc = snakemake(done, "-n", "--cores", "2", "--configfile", "changed.yaml")
    assert proc.returncode == 0, proc.output
    return planned_jobs(proc.output)


@pytest.mark.slow
def test_changing_train_reruns_train_and_test_only(done):
    jobs = _changed(done, lambda d: d["digits"]["train"].update(epochs=4))
    compute = {(r, d) for r, d in jobs if r in COMPUTE}
    assert compute == {("train", "digits"), ("test", "digits")}, jobs
    assert {d for _, d in jobs} <= {"digits", ""}  # nothing of digits-pub


@pytest.mark.slow
def test_changing_one_dataset_touches_nothing_of_another(done):
    jobs = _changed(done, lambda d: d["digits-pub"]["train"].update(seed=1))
    assert jobs and {d for _, d in jobs} <= {"digits-pub", ""}, jobs
    jobs = _changed(done, lambda d: d["digits"]["search"].update(seed=3))
    assert ("search", "digits") in jobs
    assert {d for _, d in jobs} <= {"digits", ""}, jobs
    # The data block too: digits' download and chain rerun, digits-pub (same loader) is untouched.
    jobs = _changed(done, lambda d: d["digits"]["data"].update(seed=7))
    assert ("download", "digits") in jobs
    assert {d for _, d in jobs} <= {"digits", ""}, jobs


def _edited(path: Path, edit):
    """Context: ``path`` rewritten by ``edit(text)``, then its bytes and mtime restored."""
    import contextlib

    @contextlib.contextmanager
    def run():
        original, stat = path.read_bytes(), path.stat()
        try:
            path.write_text(edit(original.decode()))
            yield
        finally:
            path.write_bytes(original)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return run()


@pytest.mark.slow
def test_a_comment_edit_of_nas_core_reruns_nothing(done):
    """The compute rules rerun on results versions (nas_core.versions), not on source bytes:
    an edit that leaves the versions alone (a comment in the S3 client, in the search stage)
    reruns no search, selection or training."""
    with _edited(done / "nas_core" / "data" / "s3.py", lambda t: t + "\n# a comment\n"), \
            _edited(done / "nas_core" / "stages" / "search.py",
                    lambda t: t.replace('"""The search stage', '"""The (mended) search stage')):
        proc = snakemake(done, "-n", "--cores", "2", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.output
    assert "Nothing to be done" in proc.output, proc.output
    assert not planned_jobs(proc.output) and "made by" not in proc.output


@pytest.mark.slow
def test_a_version_bump_reruns_the_stage_and_what_follows_naming_the_versions(done):
    """A change of the search's math comes with a bump of nas_core.versions.SEARCH (the golden
    test insists): the dry run reruns digits' search and everything after it, nothing of
    digits-pub (no search), and says so in one line."""
    from nas_core import versions

    old = versions.SEARCH
    bump = lambda t: t.replace(f"\nSEARCH = {old}\n", f"\nSEARCH = {old + 1}\n")  # noqa: E731
    with _edited(done / "nas_core" / "versions.py", bump):
        proc = snakemake(done, "-n", "--cores", "2", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.output
    jobs = planned_jobs(proc.output)
    compute = {(r, d) for r, d in jobs if r in COMPUTE | {"model_card"}}
    assert compute == {(r, "digits") for r in ("search", "genotype", "train", "test",
                                               "model_card")}, jobs
    line = (f"results/digits/search/seed2: made by search v{old}, this nas_core computes "
            f"search v{old + 1}: will rerun")
    assert line in proc.output.splitlines(), proc.output
    assert proc.output.count("made by") == 1, proc.output


@pytest.mark.slow
def test_an_output_without_a_results_version_is_named_as_stale(done):
    """An output of the earlier format (no results_version recorded) gets its line; the real
    one reruns through its params (the source hash param became the versions)."""
    test_json = done / "results" / "digits-pub" / "test.json"

    def strip(text):
        doc = json.loads(text)
        doc.pop("results_version")
        return json.dumps(doc)

    with _edited(test_json, strip):
        proc = snakemake(done, "-n", "--cores", "2", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.output
    assert ("results/digits-pub/test.json: made by a nas_core that recorded no results version "
            "(an earlier format), this nas_core computes data v") in proc.output, proc.output


@pytest.mark.slow
def test_editing_the_figure_modules_reruns_only_the_figures(done):
    report = done / "nas_core" / "report.py"
    with _edited(report, lambda t: t + "\n# an edit\n"):
        proc = snakemake(done, "-n", "--cores", "2", "--configfile", "tiny.yaml")
    assert proc.returncode == 0, proc.output
    rules = {r for r, _ in planned_jobs(proc.output)}
    assert rules and rules <= {"report_search", "report_cells", "report_train",
                               "report_test", "all"}, proc.output


# -- the summary and the report ---------------------------------------------------------------
# (the figures themselves, cells drawn without graphviz included: tests/test_report.py)


@pytest.mark.slow
def test_summary_table_ends_the_console_output(done):
    """The onsuccess handler prints every finished dataset's row last, and results/summary.tsv
    holds the same rows (the values of test.json)."""
    console = (done / "console.txt").read_text().rstrip().splitlines()
    header = max(i for i, line in enumerate(console) if line.startswith("dataset "))
    assert console[header - 1].startswith("Summary of the finished datasets"), console[-12:]
    assert console[header].split() == ["dataset", "task", "test", "metric", "parameters",
                                       "genotype", "time"]
    table = console[header + 1:]
    assert [line.split()[0] for line in table] == ["digits", "digits-pub"], console[-12:]
    rows = (done / "results" / "summary.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["dataset", "task", "metric", "value"]
    for line, row in zip(table, rows[1:]):
        cells = row.split("\t")
        res = json.loads((done / "results" / cells[0] / "test.json").read_text())
        assert float(cells[3]) == pytest.approx(res["metrics"]["top1"], rel=1e-5)
        assert int(cells[5]) == res["num_parameters"]
        assert f"top-1 {res['metrics']['top1']:.2f} %" in line
        assert f"{res['num_parameters']:,}" in line
    assert table[0].split()[-2] == "search" and table[1].split()[-2] == "DARTS_V2"
    # the model card of each dataset, for nas_core.load_model
    card = json.loads((done / "results" / "digits" / "model.json").read_text())
    assert card["dataset"] == "digits" and card["preprocessing"]["input_size"] == [8, 8]


@pytest.mark.slow
def test_report_opens_with_the_summary_and_labels_its_results(done):
    proc = snakemake(done, "--configfile", "tiny.yaml", "--report", "report_labels.html")
    assert proc.returncode == 0, proc.output[-4000:]
    html = (done / "report_labels.html").read_text(errors="replace")
    # The landing page shows the workflow description: it holds the summary table.
    desc = json.loads(re.search(r'workflow_desc = (".*?");\n', html, re.S).group(1))
    assert '<table class="nas-summary">' in desc
    assert desc.index("<td>digits</td>") < desc.index("<td>digits-pub</td>")
    results = json.loads(re.search(r"results = (\{.*?\});\n", html, re.S).group(1))
    labels = {path: entry["labels"] for path, entry in results.items()}
    assert labels["results/digits-pub/figures/cell_reduce.png"] == {
        "dataset": "digits-pub", "figure": "cell", "cell": "reduction"}
    assert labels["results/digits/figures/test_metrics.html"]["view"] == "metrics table"
    assert results["results/digits/figures/test_metrics.html"]["mime_type"] == "text/html"
    assert labels["results/summary.html"]["figure"] == "summary table"


@pytest.mark.slow
def test_random_baseline_through_the_workflow(tmp_path):
    """search.method random: two drawn cells (seeds 1 and 2), the select stage picks one, and
    training, test and figures run as for a DARTS search."""
    wf = copy_workflow(tmp_path / "wf")
    cfg = {"targets": ["digits"], "datasets": {"digits": {
        "data": {"name": "digits"},
        "search": {"method": "random", "seeds": [1, 2], "layers": 3, "init_channels": 4},
        "select": {"epochs": 1, "max_steps_per_epoch": 2, "layers": 2, "init_channels": 4,
                   "num_workers": 0},
        "train": {"epochs": 1, "max_steps_per_epoch": 3, "layers": 2, "init_channels": 4,
                  "num_workers": 0},
        "test": {"num_workers": 0}}}}
    write_config(wf / "random.yaml", cfg)
    proc = snakemake(wf, "--cores", "2", "--configfile", "random.yaml", "--resources", "gpu=0")
    assert proc.returncode == 0, proc.output[-6000:]
    assert proc.output.count("search done (random: a cell drawn under seed") == 2
    results = wf / "results" / "digits"
    selection = json.loads((results / "selection.json").read_text())
    chosen = json.loads((results / "genotype.json").read_text())
    seeds = {c["seed"]: c for c in selection["candidates"]}
    assert set(seeds) == {1, 2}
    drawn = {s: json.loads((results / f"search/seed{s}/genotype.json").read_text())
             for s in (1, 2)}
    assert drawn[1] != drawn[2]
    assert chosen == drawn[selection["winner"]["seed"]]
    assert json.loads((results / "test.json").read_text())["genotype"] == chosen
    figures = results / "figures"
    for png in ("seed1/alphas_normal.png", "seed2/search_curves.png", "selection.png",
                "cell_normal.png", "test_metrics.png"):
        assert (figures / png).read_bytes()[:4] == b"\x89PNG", png
