"""The download stage against a real S3 server (SeaweedFS on loopback), no network."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from datafiles import write_graphene_nc
from faultproxy import Cut, FaultProxy, Flip, Stall, Status
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
    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s3mod, "_write", full)
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


# -- transient faults, through a fault-injecting proxy in front of SeaweedFS ---------------------
BLOB = 934_656  # bytes; the size in the original report
STALL_S = 2.5  # how long a stalled proxy stays silent; read_timeout is 1 s


@pytest.fixture(scope="module")
def blobs(seaweedfs, tmp_path_factory):  # noqa: F811
    """Objects in ``faults-data`` (public-read): ``crc.bin`` (single-part upload with boto3's
    default CRC32 checksum: stored checksum and MD5 ETag), ``etag-only.bin`` (no checksum: MD5
    ETag only) and ``multipart.bin`` (two parts, no checksum: nothing S3 offers is verifiable)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, BLOB, dtype=np.uint8).tobytes()
    big = rng.integers(0, 256, 5 * 2**20 + 4096, dtype=np.uint8).tobytes()
    seaweedfs.make_bucket("faults-data", public_read=True)
    admin = seaweedfs.client()
    admin.put_object(Bucket="faults-data", Key="crc.bin", Body=small)
    no_checksum = seaweedfs.client(request_checksum_calculation="when_required")
    no_checksum.put_object(Bucket="faults-data", Key="etag-only.bin", Body=small)
    up = no_checksum.create_multipart_upload(Bucket="faults-data", Key="multipart.bin")
    parts = []
    for i, part in enumerate((big[: 5 * 2**20], big[5 * 2**20:]), 1):
        r = no_checksum.upload_part(Bucket="faults-data", Key="multipart.bin",
                                    UploadId=up["UploadId"], PartNumber=i, Body=part)
        parts.append({"ETag": r["ETag"], "PartNumber": i})
    no_checksum.complete_multipart_upload(Bucket="faults-data", Key="multipart.bin",
                                          UploadId=up["UploadId"],
                                          MultipartUpload={"Parts": parts})
    return {"crc.bin": small, "etag-only.bin": small, "multipart.bin": big}


@pytest.fixture(scope="module")
def _proxy(seaweedfs):  # noqa: F811
    with FaultProxy(seaweedfs.port, stall_s=STALL_S, timeout=10) as p:
        yield p


@pytest.fixture
def proxy(_proxy, monkeypatch):
    """The module's fault proxy with no faults scripted and no requests counted; tiny backoff."""
    _proxy.reset()
    monkeypatch.setattr(s3mod, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(s3mod, "BACKOFF_CAP", 0.05)
    monkeypatch.setattr(s3mod, "_WARNED", set())
    yield _proxy
    _proxy.reset()


def via(proxy, key="crc.bin", **source) -> dict:
    src = {"endpoint_url": proxy.endpoint_url, "bucket": "faults-data", "key": key,
           "max_attempts": 3, "connect_timeout": 1, "read_timeout": 1, **source}
    return {"name": "netcdf", "path": key, "image_var": "x", "target_var": "y",
            "task": "regression", "source": src}


def dest_of(tmp_path, key="crc.bin") -> Path:
    return tmp_path / "netcdf" / key


def verification(manifest: Path, dest: Path) -> dict:
    """The ``verification`` record of ``dest`` in the ``download.json`` at ``manifest``."""
    records = json.loads(manifest.read_text())["verification"]
    return next(r for r in records if r["file"] == str(dest))


def gets(proxy) -> list[str | None]:
    """The Range header of each GET the proxy saw (None: the whole object)."""
    return [r["range"] for r in proxy.requests if r["method"] == "GET"]


def test_one_cut_mid_body_resumes_to_an_identical_file(blobs, proxy, tmp_path):
    proxy.script("GET", [Cut(0.5)])
    manifest = tmp_path / "download.json"
    [dest] = download_data(via(proxy), tmp_path, manifest=manifest)
    assert dest.read_bytes() == blobs["crc.bin"]
    assert leftovers(dest.parent) == ["crc.bin"]
    first, second = gets(proxy)
    assert first is None and second.startswith("bytes=") and second != "bytes=0-"
    assert verification(manifest, dest)["checks"] == ["CRC32 (S3 checksum)", "MD5 (ETag)"]


def test_one_stall_past_the_read_timeout_resumes(blobs, proxy, tmp_path):
    proxy.script("GET", [Stall(0.6)])
    [dest] = download_data(via(proxy), tmp_path)
    assert dest.read_bytes() == blobs["crc.bin"]
    assert len(gets(proxy)) == 2 and gets(proxy)[1].startswith("bytes=")


def test_http_503_twice_then_success(blobs, proxy, tmp_path):
    proxy.script("HEAD", [Status(503)])
    proxy.script("GET", [Status(503), Status(503)])
    [dest] = download_data(via(proxy), tmp_path)
    assert dest.read_bytes() == blobs["crc.bin"]
    assert (proxy.count("HEAD"), proxy.count("GET")) == (2, 3)


@pytest.mark.parametrize("attempts", [1, 3])
def test_always_cut_names_the_cut_and_the_attempts(blobs, proxy, tmp_path, attempts):
    proxy.always("GET", Cut(0.3))
    with pytest.raises(DownloadError) as e:
        download_data(via(proxy, max_attempts=attempts), tmp_path)
    msg = str(e.value)
    assert re.search(r"failed: connection cut after \d{1,3}(,\d{3})* of 934,656 bytes "
                     rf"\(attempt {attempts} of {attempts}\)$", msg), msg
    assert "\n" not in msg and "RetriesExceeded" not in msg
    assert proxy.count("GET") == attempts  # exactly max_attempts requests, no hidden retries
    assert proxy.count("HEAD") == 1
    assert leftovers(dest_of(tmp_path).parent) == []


def test_always_stalled_names_the_read_timeout(blobs, proxy, tmp_path):
    proxy.always("GET", Stall(0.5))
    with pytest.raises(DownloadError, match=r"read timed out after 1 s, at [\d,]+ of 934,656 "
                                            r"bytes \(attempt 2 of 2\)$"):
        download_data(via(proxy, max_attempts=2), tmp_path)
    assert proxy.count("GET") == 2
    assert leftovers(dest_of(tmp_path).parent) == []


def test_head_503_every_time_counts_max_attempts(blobs, proxy, tmp_path):
    proxy.always("HEAD", Status(503))
    with pytest.raises(DownloadError, match=r"HTTP 503 from http://127\.0\.0\.1:\d+.* "
                                            r"\(attempt 3 of 3\)$"):
        download_data(via(proxy), tmp_path)
    assert (proxy.count("HEAD"), proxy.count("GET")) == (3, 0)


@pytest.mark.parametrize("key, check", [("crc.bin", r"CRC32 \(S3 checksum\)"),
                                        ("etag-only.bin", r"MD5 \(ETag\)")])
def test_flipped_bytes_fail_without_a_configured_sha256(blobs, proxy, tmp_path, key, check):
    proxy.always("GET", Flip())
    with pytest.raises(DownloadError, match=rf"checksum mismatch: {check} of the received bytes "
                                            r"is \S+, the object's is \S+ \(attempt 3 of 3\)$"):
        download_data(via(proxy, key), tmp_path)
    assert proxy.count("GET") == 3  # damage on the way: each attempt starts over
    assert leftovers(dest_of(tmp_path, key).parent) == []


def test_flipped_once_restarts_and_succeeds(blobs, proxy, tmp_path):
    proxy.script("GET", [Flip()])
    manifest = tmp_path / "download.json"
    [dest] = download_data(via(proxy, "etag-only.bin"), tmp_path, manifest=manifest)
    assert dest.read_bytes() == blobs["etag-only.bin"]
    assert gets(proxy) == [None, None]
    assert verification(manifest, dest)["checks"] == ["MD5 (ETag)"]


def test_configured_sha256_mismatch_is_not_retried(blobs, proxy, tmp_path):
    with pytest.raises(DownloadError, match=r"checksum mismatch: sha256 [0-9a-f]{64}, "
                                            r"expected f{64}$"):
        download_data(via(proxy, sha256="f" * 64), tmp_path)
    assert proxy.count("GET") == 1


def test_present_file_with_flipped_byte_is_downloaded_again(blobs, proxy, tmp_path):
    """Same size, one byte different, no sha256 configured: the ETag catches it."""
    dest = dest_of(tmp_path, "etag-only.bin")
    dest.parent.mkdir(parents=True)
    bad = bytearray(blobs["etag-only.bin"])
    bad[1000] ^= 0xFF
    dest.write_bytes(bytes(bad))
    download_data(via(proxy, "etag-only.bin"), tmp_path)
    assert dest.read_bytes() == blobs["etag-only.bin"]
    assert proxy.count("GET") == 1
    download_data(via(proxy, "etag-only.bin"), tmp_path)  # now verified: no GET
    assert proxy.count("GET") == 1


def test_nothing_verifiable_warns_once_and_records_size_only(blobs, proxy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nas_core.data.s3")
    proxy.script("GET", [Cut(0.5)])
    [dest] = download_data(via(proxy, "multipart.bin"), tmp_path)
    assert dest.read_bytes() == blobs["multipart.bin"]
    manifest = tmp_path / "download.json"
    # present: kept, no second warning
    download_data(via(proxy, "multipart.bin"), tmp_path, manifest=manifest)
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "only the size is checked" in r.getMessage()]
    assert len(warned) == 1 and "multipart ETag" in warned[0], warned
    assert verification(manifest, dest)["checks"] == []
    assert any("verified: size only" in r.getMessage() for r in caplog.records)


def test_checks_are_logged(blobs, proxy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nas_core.data.s3")
    c = via(proxy)
    c["source"]["sha256"] = hashlib.sha256(blobs["crc.bin"]).hexdigest()
    manifest = tmp_path / "download.json"
    [dest] = download_data(c, tmp_path, manifest=manifest)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "verified: sha256 (configured), CRC32 (S3 checksum), MD5 (ETag)" in text
    rec = verification(manifest, dest)
    assert rec["size"] == BLOB and rec["etag"] == hashlib.md5(blobs["crc.bin"]).hexdigest()


def test_download_manifest_names_the_checks(blobs, proxy, tmp_path):
    """download.json (the workflow's download output) says which checks were applied."""
    manifest = tmp_path / "download.json"
    download_data(via(proxy), tmp_path, manifest=manifest)
    entry = json.loads(manifest.read_text())
    if "verification" not in entry:
        pytest.fail("download_data(manifest=...) must add the verification record "
                    "(nas_core.data.s3.S3Download) of each downloaded file under 'verification'")
    assert [v["checks"] for v in entry["verification"]] == [["CRC32 (S3 checksum)",
                                                             "MD5 (ETag)"]]


def test_max_attempts_must_be_positive(tmp_path):
    with pytest.raises(DataError, match="max_attempts must be a positive integer"):
        download_data({"name": "graphene", "source": {"max_attempts": 0}}, tmp_path)


def test_read_only_target_folder_is_one_line(blobs, proxy, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(s3mod.tempfile, "mkstemp", refuse)
    with pytest.raises(DownloadError, match=r"failed: Read-only file system: /"):
        download_data(via(proxy), tmp_path)
