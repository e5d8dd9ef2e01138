"""The download stage against a real S3 server (SeaweedFS on loopback), no network."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

from datafiles import write_graphene_nc
from nas_core.data import DataError, DownloadError, download_data, load_data
from nas_core.data import s3 as s3mod
from s3server import free_ports, seaweedfs  # noqa: F401  (module-scoped fixture)

KEY = "data/graphene_processed.nc"


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch, tmp_path):
    """No credentials from the machine: empty env, no config files, no instance metadata."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def remote(seaweedfs, tmp_path_factory):  # noqa: F811
    """Buckets ``public-data`` (public-read) and ``private-data`` holding a graphene file."""
    src = write_graphene_nc(tmp_path_factory.mktemp("upload") / "graphene_processed.nc", n=40)
    seaweedfs.make_bucket("public-data", public_read=True)
    seaweedfs.make_bucket("private-data")
    seaweedfs.put_file("public-data", KEY, src)
    seaweedfs.put_file("private-data", KEY, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    return {"server": seaweedfs, "file": src, "sha256": digest}


def cfg(remote, **source) -> dict:
    base = {"endpoint_url": remote["server"].endpoint_url, "bucket": "public-data", "key": KEY,
            "max_attempts": 1, "connect_timeout": 2, "read_timeout": 5}
    return {"name": "graphene", "source": {**base, **source}}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def use_credentials(monkeypatch, server) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)


def test_anonymous_download_from_public_bucket(remote, tmp_path):
    paths = download_data(cfg(remote), tmp_path)
    dest = tmp_path / "graphene" / "graphene_processed.nc"
    assert paths == [dest]
    assert dest.read_bytes() == remote["file"].read_bytes()
    assert leftovers(dest.parent) == ["graphene_processed.nc"]
    bundle = load_data(cfg(remote), tmp_path)
    assert bundle.task == "regression" and len(bundle.train) + len(bundle.test) == 40
    assert bundle.source["files"][0]["sha256"] == remote["sha256"]
    assert bundle.source["s3"].startswith("s3://public-data/data/graphene_processed.nc")


def test_signed_download_from_private_bucket(remote, tmp_path, monkeypatch):
    use_credentials(monkeypatch, remote["server"])
    c = cfg(remote, bucket="private-data", sha256=remote["sha256"].upper())
    [dest] = download_data(c, tmp_path)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == remote["sha256"]


def test_private_bucket_without_credentials(remote, tmp_path):
    with pytest.raises(DownloadError, match=r"s3://private-data/data/graphene_processed\.nc "
                                            r"\(endpoint http://127\.0\.0\.1:\d+\).*access denied"
                       ) as e:
        download_data(cfg(remote, bucket="private-data"), tmp_path)
    assert "\n" not in str(e.value) and "unsigned" in str(e.value)
    assert leftovers(tmp_path / "graphene") == []


def test_signed_request_with_wrong_secret(remote, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", remote["server"].access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(DownloadError, match="access denied"):
        download_data(cfg(remote, bucket="private-data"), tmp_path)
    assert leftovers(tmp_path / "graphene") == []


def test_anonymous_false_without_credentials(remote, tmp_path):
    with pytest.raises(DownloadError, match="no AWS credentials"):
        download_data(cfg(remote, anonymous=False), tmp_path)


def test_missing_key(remote, tmp_path):
    with pytest.raises(DownloadError, match=r"s3://public-data/data/nothing\.nc .*no such key"):
        download_data(cfg(remote, key="data/nothing.nc"), tmp_path)
    assert leftovers(tmp_path / "graphene") == []


def test_missing_bucket(remote, tmp_path, monkeypatch):
    use_credentials(monkeypatch, remote["server"])
    with pytest.raises(DownloadError, match=r"s3://no-such-bucket/.*no such bucket"):
        download_data(cfg(remote, bucket="no-such-bucket"), tmp_path)


def test_wrong_checksum_leaves_nothing(remote, tmp_path):
    with pytest.raises(DownloadError, match=r"checksum mismatch: sha256 [0-9a-f]{64}, "
                                            r"expected 0{64}"):
        download_data(cfg(remote, sha256="0" * 64), tmp_path)
    assert leftovers(tmp_path / "graphene") == []


def test_disk_full_leaves_nothing(remote, tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s3mod._HashingWriter, "write", full)
    with pytest.raises(DownloadError, match=r"s3://public-data/.*disk full"):
        download_data(cfg(remote), tmp_path)
    assert leftovers(tmp_path / "graphene") == []


def test_server_down(tmp_path):
    [port] = free_ports(1)
    c = {"name": "graphene", "source": {"endpoint_url": f"http://127.0.0.1:{port}",
                                        "max_attempts": 1, "connect_timeout": 1}}
    with pytest.raises(DownloadError, match=r"s3://capstone2019-google/data/graphene_processed"
                                            r"\.nc \(endpoint .*\).*connection refused"):
        download_data(c, tmp_path)
    assert leftovers(tmp_path / "graphene") == []


def test_server_not_answering_times_out(tmp_path):
    """A socket that accepts connections but never answers: read timeout, one line."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        c = {"name": "graphene", "source": {
            "endpoint_url": f"http://127.0.0.1:{sock.getsockname()[1]}",
            "max_attempts": 1, "connect_timeout": 1, "read_timeout": 1}}
        with pytest.raises(DownloadError, match="timed out"):
            download_data(c, tmp_path)
    finally:
        stop.set()
        t.join()
        for conn in conns:
            conn.close()
        sock.close()
    assert leftovers(tmp_path / "graphene") == []


def test_present_verified_file_is_not_downloaded_again(remote, tmp_path, monkeypatch):
    [dest] = download_data(cfg(remote, sha256=remote["sha256"]), tmp_path)
    before = dest.stat()

    def no_fetch(*a, **k):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(s3mod, "_fetch", no_fetch)
    assert download_data(cfg(remote, sha256=remote["sha256"]), tmp_path) == [dest]
    assert download_data(cfg(remote), tmp_path) == [dest]
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_present_file_with_wrong_size_is_replaced(remote, tmp_path):
    dest = tmp_path / "graphene" / "graphene_processed.nc"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"truncated")
    download_data(cfg(remote), tmp_path)
    assert dest.read_bytes() == remote["file"].read_bytes()
    assert leftovers(dest.parent) == ["graphene_processed.nc"]


def test_present_file_when_server_is_down(remote, tmp_path):
    dest = tmp_path / "graphene" / "graphene_processed.nc"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(remote["file"].read_bytes())
    [port] = free_ports(1)
    offline = {"endpoint_url": f"http://127.0.0.1:{port}", "max_attempts": 1}
    # No sha256 configured: accepted with a warning; matching sha256: accepted.
    assert download_data({"name": "graphene", "source": offline}, tmp_path) == [dest]
    ok = {**offline, "sha256": remote["sha256"]}
    assert download_data({"name": "graphene", "source": ok}, tmp_path) == [dest]
    bad = {**offline, "sha256": "f" * 64}
    with pytest.raises(DownloadError, match="connection refused"):
        download_data({"name": "graphene", "source": bad}, tmp_path)
    assert dest.is_file()


def test_present_file_when_server_answers_error(remote, tmp_path):
    """The server is reachable and says no such key: an unverified present file is an error,
    one that matches the configured sha256 is kept."""
    dest = tmp_path / "graphene" / "graphene_processed.nc"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(remote["file"].read_bytes())
    with pytest.raises(DownloadError, match="no such key"):
        download_data(cfg(remote, key="data/gone.nc"), tmp_path)
    c = cfg(remote, key="data/gone.nc", sha256=remote["sha256"])
    assert download_data(c, tmp_path) == [dest]


def test_netcdf_dataset_with_s3_source(remote, tmp_path):
    c = {"name": "netcdf", "path": "kirigami/cuts.nc", "image_var": "fine_image",
         "target_var": "stress", "task": "regression",
         "source": cfg(remote)["source"]}
    [dest] = download_data(c, tmp_path)
    assert dest == tmp_path / "netcdf" / "kirigami" / "cuts.nc"
    b = load_data(c, tmp_path)
    x, y = b.test[0]
    assert tuple(x.shape) == (1, 30, 80) and y.dtype == torch.float32 and y.ndim == 0


def test_unknown_source_key(tmp_path):
    with pytest.raises(DataError, match="unknown source key.*'bukket'"):
        download_data({"name": "graphene", "source": {"bukket": "x"}}, tmp_path)
