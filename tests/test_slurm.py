"""The workflow and the data-parallel stages on a real one-node Slurm (tests/slurmcluster.py:
munged, slurmctld and slurmd from Debian's ``slurm-wlm`` and ``munge``; skipped with the reason
where they are not installed or cannot start).

* the digits chain through ``profiles/slurm`` as it is, with only the overrides the profile
  documents (a config file, ``--max-threads``, the status-poll interval): every job is a Slurm
  job, polled with squeue (accounting is off), the CPU rules in the ``cpu`` partition with
  their small memory, the GPU rules in ``gpu``; each job asks the GPUs the config's ``gpus:``
  block gives its stage: ``--gpus=1`` for train (one of the cluster's fake GPUs: CUDA finds
  none, the job runs on the CPU), nothing for search and test (``gpus: 0``);
* one training stage as a Slurm step of two tasks (``srun -n 2 python -m nas_core train``
  inside ``sbatch``): both tasks join one process group from Slurm's environment
  (``nas_core.distributed.slurm_env``) and rank 0 writes the model.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
import pytest
import yaml

from slurmcluster import GPU_PARTITION, slurm_cluster  # noqa: F401 (fixture)
from test_workflow import ROOT, TINY, copy_workflow, snakemake, write_config

PROFILE = ROOT / "profiles" / "slurm" / "profile.yaml"
# Rules that never become Slurm jobs (besides those marked `localrule: True`): the default
# target, and a guard that only stops the DAG.
NOT_JOBS = {"all", "unknown_dataset"}

# The digits chain of test_workflow's tiny budget, under a dataset name of its own (so that
# nothing of config/config.yaml's digits block, such as several search seeds, is merged in).
DATASET = "slurm-digits"
CHAIN = {
    "targets": [DATASET],
    "datasets": {DATASET: copy.deepcopy(TINY["datasets"]["digits"])},
}


def _profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def _workflow_rules() -> dict[str, str]:
    """Every rule of workflow/rules/*.smk -> its text."""
    rules = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"^rule (\w+):", path.read_text(), flags=re.M)
        rules.update(zip(parts[1::2], parts[2::2]))
    return rules


def _expected(rule: str, profile: dict) -> dict:
    """A rule's Slurm resources by the profile: set-resources over default-resources."""
    return {**profile["default-resources"], **(profile["set-resources"].get(rule) or {})}


# -- the profile itself (no Slurm needed) ------------------------------------------------------


def test_profile_polls_with_squeue_and_leaves_gpus_to_the_config():
    profile = _profile()
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"  # works without accounting
    for block in [profile["default-resources"], *profile["set-resources"].values()]:
        # `gpu` comes from the config's gpus: block; gpu_model would make gpu=0 ask --gpus=M:0
        assert not {"gpu", "gpu_model", "gres", "gpus", "nvidia_gpu"} & set(block), block
    assert "resources" not in profile  # no global --resources gpu=N cap on a cluster


def test_profile_puts_every_cpu_rule_in_the_cpu_partition():
    """Every rule without GPUs gets the CPU partition and little memory; every GPU rule the
    default (GPU) partition. A new rule fails here until the profile names it."""
    profile = _profile()
    gpu_partition = profile["default-resources"]["slurm_partition"]
    rules = {name: text for name, text in _workflow_rules().items()
             if name not in NOT_JOBS and not re.search(r"^\s+localrule:\s*True", text, re.M)}
    assert {"download", "search", "genotype", "train", "test"} <= set(rules)
    for name, text in rules.items():
        res = _expected(name, profile)
        if re.search(r"^\s+gpu=", text, flags=re.M):
            assert res["slurm_partition"] == gpu_partition, name
        else:
            assert res["slurm_partition"] != gpu_partition, (name, "not in the CPU partition")
            assert res["mem_mb"] <= 4000 and res["runtime"] <= 60, name
    assert set(profile["set-resources"]) <= set(rules)


# -- on a real Slurm ---------------------------------------------------------------------------


def _job_rule(job: dict) -> str:
    """The rule of a job submitted by the plugin (its --comment: rule_RULE_wildcards_...)."""
    m = re.match(r"rule_([A-Za-z0-9_]+?)(?:_wildcards_.*)?$", job.get("Comment", ""))
    return m.group(1) if m else ""


@pytest.mark.slow
def test_digits_chain_through_the_slurm_profile(slurm_cluster, tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm",
                        reason="snakemake-executor-plugin-slurm is not installed "
                               "(pip install -e '.[test]')")
    wf = copy_workflow(tmp_path / "wf")
    # GPUs per job from the config only: 1 for train (a fake GPU; none where /tmp is nodev),
    # 0 for every other stage of the config's gpus: block
    train_gpus = 1 if slurm_cluster.gpus else 0
    gpus = {stage: 0 for stage in yaml.safe_load((wf / "config/config.yaml").read_text())["gpus"]}
    gpus["train"] = train_gpus
    write_config(wf / "tiny.yaml", {**CHAIN, "gpus": gpus})
    before = {j["JobId"] for j in slurm_cluster.jobs()}
    proc = snakemake(
        wf, f"results/{DATASET}/test.json", "--workflow-profile", "profiles/slurm",
        "--configfile", "tiny.yaml",
        # the documented per-run overrides: a 2-core node, short polls for short jobs
        "--max-threads", "1", "--slurm-init-seconds-before-status-checks", "2",
        "--verbose",  # prints each sbatch call and the status command of each poll
        timeout=900)
    logs = "\n".join(f"--- {p.relative_to(wf)}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted((wf / ".snakemake" / "slurm_logs").rglob("*.log")))
    assert proc.returncode == 0, proc.output[-6000:] + logs[-6000:]
    result = json.loads((wf / f"results/{DATASET}/test.json").read_text())
    assert result["num_samples"] > 100 and result["metrics"]["top1"] > 10
    # every poll used squeue (sacct fails without accounting, and the run would never end)
    assert "command=squeue" in proc.output, proc.output[-3000:]
    assert "command=sacct" not in proc.output and "back to 'sacct'" not in proc.output
    submits = [line for line in proc.output.splitlines() if line.startswith("sbatch call:")]
    with_gpus = [s for s in submits if "--gpus" in s or "--gres" in s]
    if train_gpus:  # the config's gpus: {train: 1}, not the profile, sets it; no gpu_model
        assert len(with_gpus) == 1 and "--comment rule_train_" in with_gpus[0], with_gpus
        assert " --gpus=1 " in with_gpus[0] + " ", with_gpus
    else:
        assert not with_gpus, with_gpus

    jobs = [j for j in slurm_cluster.jobs() if j["JobId"] not in before]
    assert len(jobs) == len(submits), (submits, jobs)  # one submission per job, no retries
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(_job_rule(job), []).append(job)
    assert set(by_rule) == {"download", "search", "genotype", "train", "test"}, jobs
    profile = _profile()
    for rule, rule_jobs in by_rule.items():
        want = _expected(rule, profile)
        for job in rule_jobs:
            assert job["JobState"] == "COMPLETED", (rule, job)
            assert job["Partition"] == want["slurm_partition"], (rule, job)
            assert job["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, job)
            assert job["TimeLimit"] == _slurm_time(want["runtime"]), (rule, job)
            assert _job_gpus(job) == gpus.get(rule, 0), (rule, job)
    assert by_rule["genotype"][0]["Partition"] != GPU_PARTITION


def _job_gpus(job: dict) -> int:
    """GPUs a job asked for (--gpus=N: scontrol's TresPerJob=gres:gpu:N)."""
    text = " ".join(job.get(k, "") for k in ("TresPerJob", "TresPerNode", "TRES"))
    m = re.search(r"gpu(?::[\w.]+)?[:=](\d+)", text)
    return int(m.group(1)) if m else 0


def _slurm_time(minutes: int) -> str:
    days, rest = divmod(int(minutes), 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


@pytest.mark.slow
def test_train_with_two_tasks_rendezvous_through_slurm(slurm_cluster, tmp_path):
    from nas_core.genotypes import get_genotype

    run = tmp_path / "run"
    run.mkdir()
    get_genotype("DARTS_V2").save(run / "genotype.json")
    write_config(run / "cfg.yaml", {"datasets": {"digits": {
        "data": {"name": "digits"},
        "train": {"epochs": 1, "max_steps_per_epoch": 3, "layers": 2, "init_channels": 4,
                  "batch_size": 64, "num_workers": 0, "valid_fraction": 0.0}}}})
    train = [sys.executable, "-m", "nas_core", "train", "--config", "cfg.yaml",
             "--dataset", "digits", "--genotype", "genotype.json", "--out", "out",
             "--device", "cpu", "--log", "train.log"]
    script = ("#!/bin/bash\n"
              "set -e\n"
              "srun --kill-on-bad-exit=1 bash -c 'echo task $SLURM_PROCID of $SLURM_NTASKS "
              "on $(hostname -s)'\n"
              f"srun --kill-on-bad-exit=1 {shlex.join(train)}\n")
    job_id = slurm_cluster.sbatch(
        script, "--ntasks=2", "--cpus-per-task=1", "--mem=4000", "--time=10",
        f"--partition={GPU_PARTITION}", "--output=slurm.out", cwd=run)
    info = slurm_cluster.wait(job_id, timeout=300)
    out = (run / "slurm.out").read_text(errors="replace") if (run / "slurm.out").exists() else ""
    log = (run / "train.log").read_text(errors="replace") if (run / "train.log").exists() else ""
    assert info["JobState"] == "COMPLETED", f"{info}\n{out[-4000:]}\n{log[-2000:]}"
    # the step had two tasks, and both joined one gloo group from Slurm's environment
    assert sorted(re.findall(r"task (\d) of (\d)", out)) == [("0", "2"), ("1", "2")], out
    assert re.search(r"2 processes \(gloo\)", log), log[-3000:]
    assert (run / "out" / "model.pt").stat().st_size > 0
    assert json.loads((run / "out" / "history.json").read_text())["epochs"]
    leftovers = [p.name for p in (run / "out").iterdir() if p.name.startswith((".", "tmp"))]
    assert not leftovers, leftovers  # rank 0 alone wrote, atomically
