"""The GPU lock pool (nas_core.gpu) with a faked GPU count: separate processes, real flocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nas_core.gpu import GPUError, acquire_gpus, visible_gpus

HOLDER = textwrap.dedent(
    """
    import json, os, sys, time
    from nas_core.gpu import acquire_gpus
    count, hold, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    with acquire_gpus(count, poll_seconds=0.05) as gpus:
        start = time.time()
        env = os.environ["CUDA_VISIBLE_DEVICES"]
        print("granted", env, flush=True)
        time.sleep(hold)
        end = time.time()
    with open(out, "w") as f:
        json.dump({"gpus": gpus, "env": env, "start": start, "end": end}, f)
    """
)


def _env(tmp_path: Path, fake: int | None = 4, visible: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["NAS_CORE_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    if fake is not None:
        env["NAS_CORE_FAKE_GPU_COUNT"] = str(fake)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def _spawn(tmp_path: Path, env: dict, count: int, hold: float, name: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), str(hold), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _overlaps(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.parametrize("per_job,jobs", [(1, 8), (2, 5)])
def test_concurrent_jobs_never_share_a_gpu(tmp_path, per_job, jobs):
    env = _env(tmp_path, fake=4)
    procs = [_spawn(tmp_path, env, per_job, 0.6, f"job{i}") for i in range(jobs)]
    records = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        records.append(json.loads(out.read_text()))
    for rec in records:
        assert len(rec["gpus"]) == per_job
        assert rec["env"] == ",".join(rec["gpus"])
        assert set(rec["gpus"]) <= {"0", "1", "2", "3"}
    # No two holders that ran at the same time share a device.
    for i, a in enumerate(records):
        for b in records[i + 1 :]:
            if _overlaps(a, b):
                assert not set(a["gpus"]) & set(b["gpus"]), (a, b)
    # The pool was really used in parallel (4 GPUs, per_job each).
    concurrent = max(sum(_overlaps(a, b) for b in records) for a in records)
    assert concurrent >= 4 // per_job


def test_killed_holder_releases_its_gpu(tmp_path, monkeypatch):
    env = _env(tmp_path, fake=1)
    victim, _ = _spawn(tmp_path, env, 1, 600, "victim")
    try:
        assert victim.stdout.readline().split() == ["granted", "0"]
        # While the victim lives, GPU 0 is taken.
        monkeypatch.setenv("NAS_CORE_GPU_LOCK_DIR", env["NAS_CORE_GPU_LOCK_DIR"])
        monkeypatch.setenv("NAS_CORE_FAKE_GPU_COUNT", "1")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        with pytest.raises(TimeoutError):
            with acquire_gpus(1, poll_seconds=0.05, timeout=0.5):
                pass
    finally:
        victim.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs in the holder
        victim.wait(timeout=30)
    waiter, out = _spawn(tmp_path, env, 1, 0.0, "waiter")
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert json.loads(out.read_text())["gpus"] == ["0"]


def test_zero_gpus_means_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_CORE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("NAS_CORE_FAKE_GPU_COUNT", "4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with acquire_gpus(0) as gpus:
        assert gpus == []
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not list(tmp_path.iterdir())  # no lock taken


def test_machine_without_gpus_runs_on_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_CORE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("NAS_CORE_FAKE_GPU_COUNT", "0")
    monkeypatch.setattr("nas_core.gpu._driver_gpu_ids", lambda: [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with acquire_gpus(1) as gpus:
        assert gpus == []
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_scheduler_assignment_is_respected(monkeypatch, tmp_path):
    """Slurm/Kubernetes set CUDA_VISIBLE_DEVICES to exactly the job's GPUs: no locking."""
    monkeypatch.setenv("NAS_CORE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("NAS_CORE_FAKE_GPU_COUNT", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with acquire_gpus(2) as gpus:
        assert gpus == ["5", "7"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
        with acquire_gpus(2) as again:  # a second job on the same node: not blocked
            assert again == ["5", "7"]
    assert not (tmp_path / "locks").exists()


def test_pool_is_restricted_to_visible_devices(tmp_path):
    """A list in CUDA_VISIBLE_DEVICES larger than the request is the pool to pick from."""
    env = _env(tmp_path, fake=None, visible="3,6")
    procs = [_spawn(tmp_path, env, 1, 1.0, f"v{i}") for i in range(3)]
    seen = []
    for proc, out in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        seen.append(json.loads(out.read_text()))
    assert {g for rec in seen for g in rec["gpus"]} == {"3", "6"}
    for i, a in enumerate(seen):
        for b in seen[i + 1 :]:
            if _overlaps(a, b):
                assert a["gpus"] != b["gpus"]


def test_more_gpus_than_the_machine_has_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_CORE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("NAS_CORE_FAKE_GPU_COUNT", "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1"]
    with pytest.raises(GPUError, match="3 GPU"):
        with acquire_gpus(3):
            pass
