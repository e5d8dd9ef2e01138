"""Verified, atomic download of one S3 object with boto3.

The ``source:`` block of a dataset config (all keys optional except where a dataset has no
default bucket/key):

========================  ====================================================================
``bucket``, ``key``       the object (graphene: ``capstone2019-google``,
                          ``data/graphene_processed.nc``)
``endpoint_url``          S3-compatible endpoint (``null`` = AWS); path-style addressing when set
``region``                region name (``null`` = boto3's chain, e.g. ``AWS_DEFAULT_REGION``)
``anonymous``             ``null`` (default): unsigned requests unless the standard AWS chain finds
                          credentials; ``true``: always unsigned; ``false``: always signed
``sha256``                expected hex digest (checked on download and for a present file)
``max_attempts``          botocore ``standard`` retry mode total attempts (default 5)
``connect_timeout``       seconds (default 10)
``read_timeout``          seconds (default 60)
========================  ====================================================================

The object goes to a temporary file in the target folder (``.NAME.*.part``), hashed while it is
written; its size is checked against ``HeadObject``'s ContentLength and its sha256 against
``sha256`` when given; then fsync and ``os.replace``.  Any failure removes the temporary file.
A present file whose size matches ContentLength (and sha256 when given) is kept.  When the
endpoint is unreachable (connection refused, timeouts), a present file is kept if it matches
``sha256``, or with a warning if no sha256 is configured; when the server answers with an error
(no such key, access denied), a present file is kept only if it matches ``sha256``.  Errors
are one-line ``DownloadError``s naming ``s3://bucket/key``, the endpoint and the cause.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from nas_core.fileio import fsync_dir, sha256_file

from .base import DataError, DownloadError, one_line

log = logging.getLogger(__name__)

SOURCE_DEFAULTS: dict[str, Any] = {
    "bucket": None,
    "key": None,
    "endpoint_url": None,
    "region": None,
    "anonymous": None,
    "sha256": None,
    "max_attempts": 5,
    "connect_timeout": 10,
    "read_timeout": 60,
}
_DENIED = {"403", "AccessDenied", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
           "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


class _Mismatch(Exception):
    """Size or checksum of the fetched bytes differs from what was expected."""


def resolve_source(source: dict | None, defaults: dict | None = None, label: str = "data") -> dict:
    """Merge a ``source:`` block over the defaults; DataError on unknown keys or no bucket/key."""
    if source is not None and not isinstance(source, dict):
        raise DataError(f"{label}: 'source' must be a mapping, got {source!r}")
    source = dict(source or {})
    unknown = sorted(set(source) - set(SOURCE_DEFAULTS))
    if unknown:
        raise DataError(f"{label}: unknown source key(s) {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(sorted(SOURCE_DEFAULTS))}")
    src = {**SOURCE_DEFAULTS, **(defaults or {}), **source}
    if not src["bucket"] or not src["key"]:
        raise DataError(f"{label}: source needs 'bucket' and 'key'")
    if src["sha256"] is not None:
        src["sha256"] = str(src["sha256"]).strip().lower()
    return src


def s3_url(src: dict) -> str:
    """``s3://bucket/key`` plus the endpoint when one is configured."""
    url = f"s3://{src['bucket']}/{src['key']}"
    return f"{url} (endpoint {src['endpoint_url']})" if src.get("endpoint_url") else url


def make_client(src: dict) -> tuple[Any, bool]:
    """An S3 client for ``src`` and whether its requests are unsigned."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    session = boto3.session.Session()
    anonymous = src["anonymous"]
    if anonymous is None:
        anonymous = session.get_credentials() is None
    kwargs: dict[str, Any] = {
        "retries": {"max_attempts": int(src["max_attempts"]), "mode": "standard"},
        "connect_timeout": float(src["connect_timeout"]),
        "read_timeout": float(src["read_timeout"]),
    }
    if anonymous:
        kwargs["signature_version"] = UNSIGNED
    if src["endpoint_url"]:
        kwargs["s3"] = {"addressing_style": "path"}
    client = session.client(
        "s3",
        endpoint_url=src["endpoint_url"] or None,
        region_name=src["region"] or None,
        config=Config(**kwargs),
    )
    return client, bool(anonymous)


def download_s3(source: dict, dest: str | Path, label: str = "data") -> Path:
    """Download ``source`` (a resolved ``source:`` block) to ``dest`` unless already verified."""
    dest = Path(dest)
    url = s3_url(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    client, anonymous = make_client(source)
    expected_sha = source["sha256"]
    try:
        size = int(client.head_object(Bucket=source["bucket"], Key=source["key"])["ContentLength"])
    except Exception as e:
        cause = _describe(e, client, source, anonymous)
        if dest.is_file() and _offline(e):
            return _accept_offline(dest, expected_sha, url, cause, label)
        if dest.is_file() and expected_sha is not None and sha256_file(dest) == expected_sha:
            log.warning("%s: %s answers: %s; the present %s matches sha256, keeping it",
                        label, url, cause, dest)
            return dest
        raise DownloadError(f"{label}: downloading {url} failed: {cause}") from e

    if dest.is_file():
        present = dest.stat().st_size
        if present == size and (expected_sha is None or sha256_file(dest) == expected_sha):
            log.info("%s: %s is present and verified against %s; not downloading", label, dest, url)
            return dest
        log.warning("%s: %s differs from %s (size %d, expected %d%s); downloading again",
                    label, dest, url, present, size, ", or sha256" if expected_sha else "")

    try:
        _fetch(client, source, dest, size)
    except DownloadError:
        raise
    except Exception as e:
        raise DownloadError(
            f"{label}: downloading {url} failed: {_describe(e, client, source, anonymous)}"
        ) from e
    log.info("%s: downloaded %s to %s (%d bytes)", label, url, dest, size)
    return dest


class _HashingWriter:
    """File wrapper that hashes and counts what is written.  Not seekable, so boto3's transfer
    manager writes the parts in order."""

    def __init__(self, f) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha.update(data)
        self.nbytes += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False


def _fetch(client: Any, src: dict, dest: Path, size: int) -> None:
    """GET into a temporary file next to ``dest``, verify, fsync, rename; clean up on failure."""
    from boto3.s3.transfer import TransferConfig
    from tqdm import tqdm

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    tty = sys.stderr.isatty()
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _HashingWriter(f)
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=Path(src["key"]).name, file=sys.stderr,
                      mininterval=0.5 if tty else 30.0, miniters=1) as bar:
                client.download_fileobj(
                    src["bucket"], src["key"], writer,
                    Config=TransferConfig(
                        multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20,
                        max_concurrency=4, num_download_attempts=int(src["max_attempts"]),
                    ),
                    Callback=bar.update,
                )
            f.flush()
            os.fsync(f.fileno())
        if writer.nbytes != size:
            raise _Mismatch(f"size mismatch: received {writer.nbytes} bytes, "
                            f"ContentLength is {size}")
        got = writer.sha.hexdigest()
        if src["sha256"] is not None and got != src["sha256"]:
            raise _Mismatch(f"checksum mismatch: sha256 {got}, expected {src['sha256']}")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _offline(e: BaseException) -> bool:
    """Whether ``e`` means the endpoint could not be reached (as opposed to an S3 answer)."""
    from botocore import exceptions as bx

    return isinstance(e, (bx.ConnectionError, bx.ReadTimeoutError, bx.ConnectionClosedError))


def _accept_offline(dest: Path, sha: str | None, url: str, cause: str, label: str) -> Path:
    """A present file while the endpoint is unreachable: keep it if its sha256 matches, or
    with a warning when no sha256 is configured."""
    if sha is None:
        log.warning("%s: cannot reach %s (%s); using the present %s unverified", label, url,
                    cause, dest)
        return dest
    got = sha256_file(dest)
    if got != sha:
        raise DownloadError(f"{label}: {dest} has sha256 {got}, expected {sha}, and {url} "
                            f"cannot be fetched: {cause}")
    log.info("%s: cannot reach %s (%s); present %s matches sha256", label, url, cause, dest)
    return dest


def _describe(e: BaseException, client: Any, src: dict, anonymous: bool) -> str:
    """One-line cause of a boto3/OS failure."""
    from botocore import exceptions as bx

    if isinstance(e, _Mismatch):
        return str(e)
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return "no such bucket"
        if code == "NoSuchKey":
            return "no such key"
        if code in ("404", "NotFound"):
            return "no such bucket" if _bucket_missing(client, src["bucket"]) else "no such key"
        if code in _DENIED or status == 403:
            detail = {"InvalidAccessKeyId": "invalid access key id",
                      "SignatureDoesNotMatch": "signature does not match (wrong secret key)"}
            why = detail.get(code)
            hint = ("unsigned request: configure AWS credentials or set anonymous: false"
                    if anonymous else "signed request: check the credentials' permissions")
            return f"access denied ({why + '; ' if why else ''}{hint})"
        message = " ".join(str(err.get("Message", "")).split())
        return f"HTTP {status} {code}{': ' + message if message else ''}"
    if isinstance(e, bx.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(e, bx.ReadTimeoutError):
        return "read timed out"
    if isinstance(e, bx.EndpointConnectionError):
        inner = str(getattr(e, "kwargs", {}).get("error", ""))
        if "refused" in inner.lower():
            return "connection refused"
        return f"cannot connect ({' '.join(inner.split()) or 'endpoint unreachable'})"
    if isinstance(e, bx.NoCredentialsError):
        return "no AWS credentials found (anonymous: false needs credentials)"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"disk full ({one_line(e)})"
    return one_line(e)


def _bucket_missing(client: Any, bucket: str) -> bool:
    """Whether HeadBucket says 404; any other answer counts as 'the bucket exists'."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchBucket", "NotFound")
    except Exception:
        return False
    return False
