"""Verified, resumable, atomic download of one S3 object with boto3.

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
``max_attempts``          total attempts (default 5): for the HeadObject request, and for the
                          transfer (every GET, resumed or restarted, counts as one attempt)
``connect_timeout``       seconds (default 10)
``read_timeout``          seconds without a byte from the server (default 60)
========================  ====================================================================

**Transfer.**  ``HeadObject`` gives the size, the ETag and any checksum S3 stored with the
object.  The object then goes into a temporary file in the target folder (``.NAME.*.part``),
hashed as it is written.  When a transfer breaks (connection cut, no data for ``read_timeout``,
HTTP 5xx, throttling), the next attempt asks for the rest with ``Range: bytes=N-`` (N = the
bytes already on disk and hashed) and ``If-Match`` on the ETag, after an exponential backoff;
a server that ignores the range sends the whole object again and the file restarts from byte
0.  botocore's own retries are off, so ``max_attempts`` is exactly the number of requests.

**Integrity.**  A complete file is checked against every check available: the configured
``sha256``; the object's stored full-object checksum (``x-amz-checksum-sha256``, ``-sha1``,
``-crc32``); the ETag when it is a plain MD5 (single-part upload, not SSE-KMS / SSE-C).  A
mismatch with S3's own checksum or ETag means the bytes were damaged on the way: the transfer
restarts from byte 0 (while attempts remain).  A mismatch with the configured sha256 alone
means the object is not the expected one: no retry.  When no check is possible (multipart
ETag, composite or CRC32C/CRC64NVME checksum, no ``sha256``) only the size is checked and a
warning says so, once.  The checks applied are logged and returned for the download manifest
(:class:`S3Download`).  Only then fsync and ``os.replace``: the final file appears whole and
verified, or not at all (any failure removes the temporary file).

**Present file.**  A present file whose size matches and which passes the same checks is kept.
When the endpoint is unreachable (connection refused, timeouts), a present file is kept if it
matches ``sha256``, or with a warning if no sha256 is configured; when the server answers with
an error (no such key, access denied), a present file is kept only if it matches ``sha256``.

**Errors** are one-line ``DownloadError``s: ``LABEL: downloading s3://bucket/key (endpoint
URL) failed: CAUSE``, where CAUSE is e.g. ``connection cut after 623,104 of 934,656 bytes
(attempt 3 of 3)``, ``read timed out after 2 s, at 311,296 of 934,656 bytes (attempt 3 of
3)``, ``HTTP 503 SlowDown from http://127.0.0.1:9000: Please reduce your request rate.
(attempt 5 of 5)``, ``checksum mismatch: CRC32 (S3 checksum) of the received bytes is
4Dk7Zw==, the object's is g2U4ow== (attempt 3 of 3)``, ``no such key``, ``access denied
(...)``, ``disk full (No space left on device)``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import random
import re
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from nas_core.errors import one_line
from nas_core.fileio import fsync_dir, sha256_file

from .base import DataError, DownloadError, typed_line

__all__ = ["download_s3", "S3Download", "resolve_source", "s3_url", "make_client",
           "SOURCE_DEFAULTS"]

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
#: S3 error codes worth another attempt (besides any HTTP 5xx).
_RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "503", "500"}

#: Backoff before attempt n+1: ``min(BACKOFF_CAP, BACKOFF_BASE * 2**(n-1))`` seconds times a
#: random factor in [0.5, 1].  Tests make these tiny.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0
#: Bytes per read from the response body (also the granularity of a resume).
CHUNK = 256 * 1024

_JITTER = random.Random()  # not the global RNG: downloads must not shift seeded streams
_WARNED: set[str] = set()


@dataclass(frozen=True)
class S3Download:
    """A file :func:`download_s3` delivered: its ``path`` and how it was verified,
    ``verification`` = ``{"file", "url", "size", "etag", "checks": [...]}`` (``checks`` empty:
    size only; for a present file kept while the endpoint was unreachable, ``["unverified
    (endpoint unreachable)"]`` or ``["sha256 (configured)"]``): the record ``download.json``
    lists under ``verification``."""

    path: Path
    verification: dict[str, Any]


class _Mismatch(Exception):
    """The received bytes differ from what was expected; not worth another attempt."""


class _Corrupt(Exception):
    """The received bytes fail S3's own checksum or ETag: damaged on the way; restart."""


class _Failed(Exception):
    """A request failed for good; ``cause`` is the one-line text, ``exc`` the last error."""

    def __init__(self, cause: str, exc: BaseException | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.exc = exc


class _Broken(Exception):
    """One GET failed after ``got`` bytes of the object were on disk."""

    def __init__(self, exc: BaseException, got: int) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.got = got


class _WriteFailed(Exception):
    """Writing the temporary file failed (disk full, file-size limit): never retried."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(str(exc))
        self.exc = exc


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
    try:
        src["max_attempts"] = int(src["max_attempts"])
    except (TypeError, ValueError):
        src["max_attempts"] = 0
    if src["max_attempts"] < 1:
        raise DataError(f"{label}: source max_attempts must be a positive integer, "
                        f"got {source.get('max_attempts')!r}")
    return src


def s3_url(src: dict) -> str:
    """``s3://bucket/key`` plus the endpoint when one is configured."""
    url = f"s3://{src['bucket']}/{src['key']}"
    return f"{url} (endpoint {src['endpoint_url']})" if src.get("endpoint_url") else url


def make_client(src: dict) -> tuple[Any, bool]:
    """An S3 client for ``src`` and whether its requests are unsigned.

    botocore's retries are off (one request per call): :func:`download_s3` retries itself, so
    that a broken transfer resumes instead of starting over, and ``max_attempts`` is exact.
    botocore's own response checksum validation is off too; the download verifies instead."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    session = boto3.session.Session()
    anonymous = src["anonymous"]
    if anonymous is None:
        anonymous = session.get_credentials() is None
    kwargs: dict[str, Any] = {
        "retries": {"total_max_attempts": 1, "mode": "standard"},
        "connect_timeout": float(src["connect_timeout"]),
        "read_timeout": float(src["read_timeout"]),
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
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


# -- integrity checks ---------------------------------------------------------------------------
class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


#: S3 checksum algorithms this module can compute: header suffix -> hasher factory.
_S3_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "SHA256": hashlib.sha256,
    "SHA1": hashlib.sha1,
    "CRC32": _Crc32,
}


class _Check:
    """One integrity check: ``name`` (as logged and recorded), a hasher factory, the expected
    value and how to render a digest for comparison; ``transit`` when it is S3's own (a
    mismatch means damage on the way, worth a fresh attempt)."""

    def __init__(self, name: str, factory: Callable[[], Any], expected: str,
                 render: Callable[[bytes], str], transit: bool) -> None:
        self.name, self.factory, self.expected = name, factory, expected
        self.render, self.transit = render, transit


def _b64(d: bytes) -> str:
    return base64.b64encode(d).decode("ascii")


def _hex(d: bytes) -> str:
    return d.hex()


class _Remote:
    """What ``HeadObject`` says about the object, and the checks it allows."""

    def __init__(self, head: dict, sha256: str | None) -> None:
        self.size = int(head["ContentLength"])
        self.etag_header = head.get("ETag")
        self.etag = (self.etag_header or "").strip('"') or None
        self.checks: list[_Check] = []
        self.unverifiable: list[str] = []
        if sha256 is not None:
            self.checks.append(_Check("sha256 (configured)", hashlib.sha256, sha256, _hex,
                                      transit=False))
        composite = str(head.get("ChecksumType") or "").upper() == "COMPOSITE"
        for field, value in head.items():
            if not field.startswith("Checksum") or field == "ChecksumType" or not value:
                continue
            alg = field[len("Checksum"):]
            if composite or "-" in str(value):
                self.unverifiable.append(f"composite {alg} checksum")
            elif alg in _S3_ALGORITHMS:
                self.checks.append(_Check(f"{alg} (S3 checksum)", _S3_ALGORITHMS[alg],
                                          str(value), _b64, transit=True))
            else:
                self.unverifiable.append(f"{alg} checksum (not computable here)")
        encrypted = (head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse")
                     or head.get("SSECustomerAlgorithm"))
        if self.etag and re.fullmatch(r"[0-9a-fA-F]{32}", self.etag) and not encrypted:
            self.checks.append(_Check("MD5 (ETag)", hashlib.md5, self.etag.lower(), _hex,
                                      transit=True))
        elif self.etag:
            kind = "multipart" if "-" in self.etag else "encrypted" if encrypted else "opaque"
            self.unverifiable.append(f"{kind} ETag")

    def digests(self) -> "_Digests":
        return _Digests(self.checks)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checks]


class _Digests:
    """Running hashers for a list of checks."""

    def __init__(self, checks: list[_Check]) -> None:
        self.checks = checks
        self.reset()

    def reset(self) -> None:
        self.hashers = [c.factory() for c in self.checks]

    def update(self, data: bytes) -> None:
        for h in self.hashers:
            h.update(data)

    def verify(self) -> None:
        """_Corrupt for a failed S3 check (they come first), _Mismatch for the configured one."""
        failed = [(c, c.render(h.digest())) for c, h in zip(self.checks, self.hashers)
                  if c.render(h.digest()) != c.expected]
        transit = [(c, got) for c, got in failed if c.transit]
        if transit:
            c, got = transit[0]
            raise _Corrupt(f"checksum mismatch: {c.name} of the received bytes is {got}, "
                           f"the object's is {c.expected}")
        if failed:
            c, got = failed[0]
            raise _Mismatch(f"checksum mismatch: sha256 {got}, expected {c.expected}")


def _file_passes(path: Path, remote: _Remote) -> str | None:
    """None when the file at ``path`` passes every check; else the failure text."""
    if not remote.checks:
        return None
    digests = remote.digests()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digests.update(chunk)
    try:
        digests.verify()
    except (_Corrupt, _Mismatch) as e:
        return str(e)
    return None


def _record(dest: Path, url: str, remote: _Remote | None, checks: list[str]) -> S3Download:
    return S3Download(dest, {
        "file": str(dest),
        "url": url,
        "size": remote.size if remote else dest.stat().st_size,
        "etag": remote.etag if remote else None,
        "checks": list(checks),
    })


def _warn_unverified(url: str, remote: _Remote, label: str) -> None:
    if remote.checks or url in _WARNED:
        return
    _WARNED.add(url)
    why = ", ".join(remote.unverifiable) or "no ETag or checksum"
    log.warning("%s: %s offers nothing to verify the content against (%s) and no sha256 is "
                "configured: only the size is checked; set source.sha256 to verify it",
                label, url, why)


def _checks_text(remote: _Remote) -> str:
    return ", ".join(remote.names) if remote.checks else "size only"


# -- download -----------------------------------------------------------------------------------
class _Job:
    """One download: the client, its settings and how to describe failures."""

    def __init__(self, source: dict, label: str) -> None:
        self.src = source
        self.label = label
        self.url = s3_url(source)
        self.client, self.anonymous = make_client(source)
        self.attempts = int(source["max_attempts"])
        self.endpoint = str(getattr(self.client.meta, "endpoint_url", "") or "the endpoint")
        self.etag: str | None = None  # the object's, once HeadObject answered

    def backoff(self, attempt: int) -> float:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
        return delay * _JITTER.uniform(0.5, 1.0)

    def retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with up to ``attempts`` attempts on transient errors; _Failed otherwise."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - classified below
                if not self.transient(e):
                    raise _Failed(self.describe(e), e) from e
                cause = self.describe(e)
                if attempt == self.attempts:
                    raise _Failed(f"{cause} (attempt {attempt} of {self.attempts})", e) from e
                delay = self.backoff(attempt)
                log.warning("%s: %s %s: %s (attempt %d of %d); trying again in %.2g s",
                            self.label, what, self.url, cause, attempt, self.attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    @staticmethod
    def transient(e: BaseException) -> bool:
        """Whether another attempt may succeed."""
        from botocore import exceptions as bx

        if isinstance(e, bx.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or status == 429 or code in _RETRY_CODES
        if isinstance(e, bx.NoCredentialsError):
            return False
        return isinstance(e, (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError,
                              _Corrupt))

    def describe(self, e: BaseException, got: int | None = None, size: int | None = None) -> str:
        """One-line cause; ``got``/``size`` place a failure inside the body."""
        from botocore import exceptions as bx

        where = f"{got:,} of {size:,} bytes" if got is not None and size is not None else None
        if isinstance(e, (_Mismatch, _Corrupt)):
            return str(e)
        if isinstance(e, bx.ClientError):
            return self._describe_answer(e)
        if isinstance(e, bx.ReadTimeoutError):
            text = f"read timed out after {float(self.src['read_timeout']):g} s"
            return f"{text}, at {where}" if where else f"{text} ({self.endpoint})"
        if isinstance(e, bx.ConnectTimeoutError):
            return (f"connection timed out after {float(self.src['connect_timeout']):g} s "
                    f"({self.endpoint})")
        if isinstance(e, (bx.ResponseStreamingError, bx.IncompleteReadError)) and where:
            return f"connection cut after {where}"
        if isinstance(e, bx.ConnectionClosedError):
            return (f"connection cut after {where}" if where else
                    f"connection closed by {self.endpoint} before an answer")
        if isinstance(e, bx.EndpointConnectionError):
            inner = one_line(str(getattr(e, "kwargs", {}).get("error", "")))
            if "refused" in inner.lower():
                return f"connection refused by {self.endpoint}"
            return f"cannot connect to {self.endpoint} ({inner or 'endpoint unreachable'})"
        if isinstance(e, bx.NoCredentialsError):
            return "no AWS credentials found (anonymous: false needs credentials)"
        if isinstance(e, bx.HTTPClientError):
            inner = getattr(e, "kwargs", {}).get("error")
            text = one_line(str(inner or e))
            return f"connection error at {where}: {text}" if where else f"connection error: {text}"
        if isinstance(e, OSError):
            return _os_error(e)
        return typed_line(e)

    def _describe_answer(self, e: Any) -> str:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return "no such bucket"
        if code == "NoSuchKey":
            return "no such key"
        if code in ("404", "NotFound"):
            return ("no such bucket" if _bucket_missing(self.client, self.src["bucket"])
                    else "no such key")
        if code in _DENIED or status == 403:
            detail = {"InvalidAccessKeyId": "invalid access key id",
                      "SignatureDoesNotMatch": "signature does not match (wrong secret key)"}
            why = detail.get(code)
            hint = ("unsigned request: configure AWS credentials or set anonymous: false"
                    if self.anonymous else "signed request: check the credentials' permissions")
            return f"access denied ({why + '; ' if why else ''}{hint})"
        if code in ("PreconditionFailed", "412") or status == 412:
            return (f"the object changed on the server during the download (its ETag is no "
                    f"longer {self.etag}); run the download again")
        message = one_line(str(err.get("Message", "")))
        named = f" {code}" if code and code != str(status) else ""
        return f"HTTP {status}{named} from {self.endpoint}{': ' + message if message else ''}"


def _os_error(e: OSError) -> str:
    text = e.strerror or one_line(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({text})"
    if e.errno == errno.EFBIG:
        return f"file too large for this file system or the file-size limit ({text})"
    return f"{text}{': ' + str(e.filename) if e.filename else ''}"


def download_s3(source: dict, dest: str | Path, label: str = "data") -> S3Download:
    """Download ``source`` (a resolved ``source:`` block) to ``dest`` unless already verified;
    the file and how it was verified."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(source, label)
    url, expected_sha = job.url, source["sha256"]
    try:
        head = job.retry("HEAD", lambda: job.client.head_object(
            Bucket=source["bucket"], Key=source["key"], ChecksumMode="ENABLED"))
    except _Failed as f:
        e, cause = f.exc, f.cause
        if dest.is_file() and _offline(e):
            return _accept_offline(dest, expected_sha, url, cause, label)
        if dest.is_file() and expected_sha is not None and sha256_file(dest) == expected_sha:
            log.warning("%s: %s answers: %s; the present %s matches sha256, keeping it",
                        label, url, cause, dest)
            return _record(dest, url, None, ["sha256 (configured)"])
        raise DownloadError(f"{label}: downloading {url} failed: {cause}") from e
    remote = _Remote(head, expected_sha)
    job.etag = remote.etag

    if dest.is_file():
        present = dest.stat().st_size
        problem = (f"size {present:,}, expected {remote.size:,}" if present != remote.size
                   else _file_passes(dest, remote))
        if problem is None:
            _warn_unverified(url, remote, label)
            log.info("%s: %s is present and verified against %s (%s); not downloading",
                     label, dest, url, _checks_text(remote))
            return _record(dest, url, remote, remote.names)
        log.warning("%s: %s differs from %s (%s); downloading again", label, dest, url, problem)

    try:
        attempts = _fetch(job, remote, dest)
    except _Failed as f:
        raise DownloadError(f"{label}: downloading {url} failed: {f.cause}") from f.exc
    except OSError as e:  # creating or renaming the temporary file
        raise DownloadError(f"{label}: downloading {url} failed: {_os_error(e)}") from e
    _warn_unverified(url, remote, label)
    log.info("%s: downloaded %s to %s (%s bytes, %d attempt%s; verified: %s)", label, url, dest,
             f"{remote.size:,}", attempts, "" if attempts == 1 else "s", _checks_text(remote))
    return _record(dest, url, remote, remote.names)


def _fetch(job: _Job, remote: _Remote, dest: Path) -> int:
    """GET into a temporary file next to ``dest`` (resuming broken transfers), verify, fsync,
    rename; the number of GET requests made.  The temporary file is removed on any failure."""

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    tty = sys.stderr.isatty()
    n = job.attempts
    try:
        with os.fdopen(fd, "w+b") as f:
            digests = remote.digests()
            got = 0
            with tqdm(total=remote.size, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=Path(job.src["key"]).name, file=sys.stderr,
                      mininterval=0.5 if tty else 30.0, miniters=1) as bar:
                for attempt in range(1, n + 1):
                    try:
                        got = _get(job, remote, f, digests, got, bar)
                        if got != remote.size:
                            raise _Mismatch(f"size mismatch: received {got:,} bytes, "
                                            f"HeadObject said {remote.size:,}")
                        digests.verify()
                        break
                    except _WriteFailed as e:
                        raise _Failed(_os_error(e.exc), e.exc) from e.exc
                    except _Mismatch as e:
                        raise _Failed(str(e), e) from e
                    except _Corrupt as e:
                        cause, exc, restart = str(e), e, True
                    except _Broken as e:
                        got = e.got
                        cause, exc, restart = job.describe(e.exc, got, remote.size), e.exc, False
                        if not job.transient(e.exc):
                            raise _Failed(cause, e.exc) from e.exc
                    if attempt == n:
                        raise _Failed(f"{cause} (attempt {attempt} of {n})", exc)
                    delay = job.backoff(attempt)
                    if restart:
                        f.seek(0)
                        f.truncate()
                        digests.reset()
                        got = 0
                        bar.reset(total=remote.size)
                    log.warning("%s: %s: %s (attempt %d of %d); %s in %.2g s", job.label,
                                job.url, cause, attempt, n,
                                f"resuming at byte {got:,}" if got else "starting over", delay)
                    time.sleep(delay)
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise _Failed(_os_error(e), e) from e
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return attempt
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(f, data: bytes) -> None:
    """Write to the temporary file (a seam for tests)."""
    f.write(data)


def _get(job: _Job, remote: _Remote, f, digests: _Digests, start: int, bar) -> int:
    """One GET from byte ``start`` into ``f`` (at ``start``); the bytes on disk afterwards.
    _Broken on a failed request or body, _WriteFailed when the disk refuses."""
    kwargs: dict[str, Any] = {"Bucket": job.src["bucket"], "Key": job.src["key"]}
    if remote.etag_header:
        kwargs["IfMatch"] = remote.etag_header
    if start:
        kwargs["Range"] = f"bytes={start}-"
    try:
        resp = job.client.get_object(**kwargs)
    except Exception as e:  # noqa: BLE001 - classified by the caller
        raise _Broken(e, start) from e
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if start and status != 206:
        log.info("%s: %s ignored the range request; starting over", job.label, job.url)
        f.seek(0)
        f.truncate()
        digests.reset()
        bar.reset(total=remote.size)
        start = 0
    elif start and not str(resp.get("ContentRange", "")).startswith(f"bytes {start}-"):
        resp["Body"].close()
        raise _Mismatch(f"asked for bytes {start:,}- and got {resp.get('ContentRange')!r}")
    f.seek(start)
    got = start
    body = resp["Body"]
    try:
        for chunk in body.iter_chunks(CHUNK):
            try:
                _write(f, chunk)
            except OSError as e:
                raise _WriteFailed(e) from e
            digests.update(chunk)
            got += len(chunk)
            bar.update(len(chunk))
    except _WriteFailed:
        raise
    except Exception as e:  # noqa: BLE001 - classified by the caller
        raise _Broken(e, got) from e
    finally:
        body.close()
    return got


def _offline(e: BaseException | None) -> bool:
    """Whether ``e`` means the endpoint could not be reached (as opposed to an S3 answer)."""
    from botocore import exceptions as bx

    return isinstance(e, (bx.ConnectionError, bx.ReadTimeoutError, bx.ConnectionClosedError))


def _accept_offline(dest: Path, sha: str | None, url: str, cause: str,
                    label: str) -> S3Download:
    """A present file while the endpoint is unreachable: keep it if its sha256 matches, or
    with a warning when no sha256 is configured."""
    if sha is None:
        log.warning("%s: cannot reach %s (%s); using the present %s unverified", label, url,
                    cause, dest)
        return _record(dest, url, None, ["unverified (endpoint unreachable)"])
    got = sha256_file(dest)
    if got != sha:
        raise DownloadError(f"{label}: {dest} has sha256 {got}, expected {sha}, and {url} "
                            f"cannot be fetched: {cause}")
    log.info("%s: cannot reach %s (%s); present %s matches sha256", label, url, cause, dest)
    return _record(dest, url, None, ["sha256 (configured)"])


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
