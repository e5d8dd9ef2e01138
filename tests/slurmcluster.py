"""A real one-node Slurm for tests: munged, slurmctld and slurmd from the Debian packages
(``apt-get install slurm-wlm munge``), started in a scratch folder and stopped afterwards.

Nothing is installed here.  Everything the daemons write (config, key, state, spool, logs,
pid files, the munge socket) lives in one scratch folder under /tmp, removed on stop; the
daemons listen on free ports picked by the OS and talk to each other over 127.0.0.1.  Two
things outside the folder are touched, both restored on stop:

* ``/etc/slurm/slurm.conf`` becomes a link to the scratch config: ``srun`` inside a batch job
  reads that path and ignores ``SLURM_CONF`` (an existing file there is moved aside and put
  back; a Slurm already answering on this machine makes the fixture skip instead);
* ``SLURM_CONF`` in ``os.environ`` points to the scratch config while the fixture runs, so the
  client commands (``sbatch``, ``squeue``, ``scontrol``) and Snakemake's Slurm executor in
  subprocesses reach this cluster.

The cluster has one node (this machine, its real CPU count, 32 GB declared: nothing enforces
memory with ``task/none``) in two partitions named as in ``profiles/slurm/profile.yaml``:
``gpu`` (the default) and ``cpu``. The node declares ``gpus`` (default 2) fake GPUs: GRES
``gpu`` backed by character-device nodes in the scratch folder (major 240, a number reserved
for local use, so nothing opens a real device), so that ``--gpus=N`` is accepted, allocated and
shows up as ``CUDA_VISIBLE_DEVICES`` in the job while CUDA itself finds no GPU (the jobs run on
the CPU). Where device nodes cannot be made (a ``nodev`` /tmp), the node has no GRES and
``cluster.gpus`` is 0. Accounting is off (``accounting_storage/none``) and finished jobs stay
visible to ``squeue`` and ``scontrol`` for ``MinJobAge`` = 300 s, as on the clusters the
profile's status command is meant for.

Use the module-scoped fixture (``from slurmcluster import slurm_cluster``) or ``SlurmCluster``
as a context manager.  The fixture skips with the reason when the programs are missing, when
this is not root (slurmd must be), or when the daemons do not start.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from s3server import free_ports

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "squeue",
            "scontrol", "scancel", "sinfo")
ETC_CONF = Path("/etc/slurm/slurm.conf")
# One test cluster per machine at a time (it owns /etc/slurm/slurm.conf while it runs).
LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp", "nas_core_slurmcluster.lock")
# Partition names: those of profiles/slurm/profile.yaml (the GPU jobs' default, the CPU rules').
GPU_PARTITION = "gpu"
CPU_PARTITION = "cpu"
NODE_MEMORY_MB = 32000


def which(name: str) -> str | None:
    """``name`` on PATH or in the sbin folders (daemons live in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        path = Path(folder, name)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def missing_reason() -> str | None:
    """Why no cluster can be started here, or None."""
    missing = [p for p in PROGRAMS if which(p) is None]
    if missing:
        return (f"Slurm/munge programs not found: {', '.join(missing)} "
                f"(apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "a test Slurm needs root (slurmd runs as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return None


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    """munged + slurmctld + slurmd of one node, in ``workdir`` (a scratch folder)."""

    def __init__(self, workdir: str | Path | None = None, gpus: int = 2) -> None:
        reason = missing_reason()
        if reason:
            raise FileNotFoundError(reason)
        self._own_workdir = workdir is None  # a folder made here is removed by stop()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nas_core_slurm_", dir="/tmp"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # munge's files below must be reachable by its user
        self.conf = self.workdir / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.gpus = gpus
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = None
        self._etc_backup: Path | None = None
        self._etc_linked = False
        self._old_env: str | None = None

    # -- configuration ----------------------------------------------------------------------

    @property
    def munge_socket(self) -> Path:
        return self.workdir / "munge" / "munge.socket"

    def env(self) -> dict[str, str]:
        """os.environ for client commands: SLURM_CONF of this cluster, no inherited job."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _write_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        folder = self.workdir / "munge"
        folder.mkdir(mode=0o700, exist_ok=True)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        for path in (folder, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)

    def _write_gres(self) -> str:
        """Fake GPUs (see the module docstring): the node's ``Gres=`` text, "" without."""
        if self.gpus <= 0:
            return ""
        folder = self.workdir / "dev"
        folder.mkdir(exist_ok=True)
        try:
            for i in range(self.gpus):
                node = folder / f"fakegpu{i}"
                if not node.exists():
                    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(240, i))
        except OSError:
            self.gpus = 0
            return ""
        (self.workdir / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"NodeName={self.host} Name=gpu File={folder}/fakegpu{i}\n"
            for i in range(self.gpus)))
        return f" Gres=gpu:{self.gpus}"

    def _write_conf(self) -> None:
        ctld_port, slurmd_port = free_ports(2)
        w = self.workdir
        for sub in ("state", "spool", "log"):
            (w / sub).mkdir(exist_ok=True)
        gres = self._write_gres()
        self.conf.write_text(f"""\
# one-node test cluster written by tests/slurmcluster.py
ClusterName=nastest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
StateSaveLocation={w / 'state'}
SlurmdSpoolDir={w / 'spool'}
SlurmctldPidFile={w / 'slurmctld.pid'}
SlurmdPidFile={w / 'slurmd.pid'}
SlurmctldLogFile={w / 'log' / 'slurmctld.log'}
SlurmdLogFile={w / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={NODE_MEMORY_MB}{gres}
PartitionName={GPU_PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName={CPU_PARTITION} Nodes=ALL Default=NO MaxTime=INFINITE State=UP
""")

    # -- /etc/slurm/slurm.conf ---------------------------------------------------------------

    def _link_etc_conf(self) -> None:
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        if ETC_CONF.is_symlink() and "nas_core_slurm_" in os.readlink(ETC_CONF):
            ETC_CONF.unlink()  # left behind by an earlier run that was killed
        elif ETC_CONF.exists() or ETC_CONF.is_symlink():
            self._etc_backup = ETC_CONF.with_name(f"slurm.conf.nas_core-{os.getpid()}")
            ETC_CONF.rename(self._etc_backup)
        ETC_CONF.symlink_to(self.conf)
        self._etc_linked = True

    def _unlink_etc_conf(self) -> None:
        if self._etc_linked and ETC_CONF.is_symlink():
            ETC_CONF.unlink()
        self._etc_linked = False
        if self._etc_backup is not None:
            self._etc_backup.rename(ETC_CONF)
            self._etc_backup = None

    # -- start / stop -------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], **kwargs) -> None:
        log = open(self.workdir / "log" / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, cwd=self.workdir,
                                                start_new_session=True, **kwargs)
        finally:
            log.close()

    def _wait(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited ({proc.returncode}) while waiting for "
                                     f"{what}:\n{self.log_tail()}")
            if check():
                return
            time.sleep(0.3)
        raise SlurmError(f"timed out waiting for {what}:\n{self.log_tail()}")

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        """Start munged, slurmctld and slurmd; return once the node takes jobs."""
        self._lock = open(LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise SlurmError(f"another test Slurm is running on this machine ({LOCK} is held)")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        if ETC_CONF.exists() and not (ETC_CONF.is_symlink()
                                      and "nas_core_slurm_" in os.readlink(ETC_CONF)):
            ping = subprocess.run([which("scontrol"), "ping"], capture_output=True, text=True,
                                  timeout=20, env={k: v for k, v in os.environ.items()
                                                   if k != "SLURM_CONF"})
            if "UP" in ping.stdout:
                raise SlurmError(f"a Slurm configured in {ETC_CONF} is running here already")
        (self.workdir / "log").mkdir(exist_ok=True)
        self._write_munge()
        self._write_conf()
        m = self.workdir / "munge"
        self._spawn("munged", [
            which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--log-file={m / 'munged.log'}",
            f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}"],
            user="munge", group="munge", extra_groups=[])
        self._wait("munged's socket", self.munge_socket.exists, timeout)
        self._link_etc_conf()
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)],
                    env=self.env())
        self._wait("slurmctld", lambda: "UP" in self.run("scontrol", "ping", check=False).stdout,
                   timeout)
        self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host],
                    env=self.env())
        self._wait("the node to be idle", self._node_idle, timeout)
        self._old_env = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
        return bool(out) and all(state.rstrip("*") == "idle" for state in out)

    def stop(self) -> None:
        """Cancel the cluster's jobs, end the daemons (only ours), restore /etc and env."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root", check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.run(
                    "squeue", "-h", "-t", "running,completing", check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._old_env is not None:
            os.environ["SLURM_CONF"] = self._old_env
        elif os.environ.get("SLURM_CONF") == str(self.conf):
            del os.environ["SLURM_CONF"]
        self._old_env = None
        self._unlink_etc_conf()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._own_workdir and not self.procs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 3000) -> str:
        parts = []
        for path in sorted((self.workdir / "log").glob("*")) + [self.workdir / "munge" /
                                                                "munged.log"]:
            try:
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-n:]}")
            except OSError:
                continue
        return "\n".join(parts)

    # -- client helpers -----------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], capture_output=True,
                              text=True, timeout=timeout, env=self.env(), **kwargs)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                             f"{proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, script: str, *options: str, cwd: str | Path) -> str:
        """Submit ``script`` (its text); the job id."""
        path = Path(cwd, f"job-{time.monotonic_ns()}.sh")
        path.write_text(script)
        out = self.run("sbatch", "--parsable", *options, str(path), cwd=cwd).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (kept MinJobAge seconds after the end)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return parse_scontrol(out)[0]

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (running, and finished within MinJobAge)."""
        out = self.run("scontrol", "show", "job", "-o", check=False).stdout
        return parse_scontrol(out)

    def wait(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        """Wait until the job has ended; its ``scontrol`` record."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") not in {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                            "SUSPENDED"}:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                raise SlurmError(f"job {job_id} still {info.get('JobState')} after {timeout} s "
                                 f"({info.get('Reason')})")
            time.sleep(0.5)


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """Records of ``scontrol show ... -o`` (one a line, ``Key=Value`` pairs; values may hold
    spaces only in the last keys, which tests do not read)."""
    records = []
    for line in text.splitlines():
        if "=" not in line:
            continue
        records.append(dict(re.findall(r"(\S+?)=(\S*)", line)))
    return records


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node Slurm for one test module; skipped with the reason where it cannot
    start."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster()
    try:
        cluster.start()
    except SlurmError as exc:
        pytest.skip(f"the test Slurm did not start: {str(exc)[:2000]}")
    try:
        yield cluster
    finally:
        cluster.stop()
