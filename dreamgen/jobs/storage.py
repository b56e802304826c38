"""Where outputs go: one small interface, a local directory or an S3 bucket behind it.

Keys are relative, '/'-separated paths ("job-1/doc/images/00.png"). Nothing here knows about jobs or models.
"""
from __future__ import annotations

import mimetypes
import os
import random
import secrets
import time
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import quote

from .. import settings
from ..errors import KeyNotFound, StorageError

# Transient S3 errors are retried here, not by botocore: its "standard" mode gives up once a client has spent
# its retry quota (500 units, 5 a retry), which a 55% fault rate empties within a hundred requests.
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 10.0  # full jitter: a random wait up to min(max, first * 2^attempt)
CHECK_RETRY_S = 5.0  # the check before a job: a wrong endpoint is a mistake to report now, not in minutes
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
                    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
                    "BandwidthLimitExceeded", "OperationAborted"}
_TEMP_PREFIX = ".tmp-"
FILE_MODE = 0o666  # less the umask: 0644 under the usual 022, like any other tool's files
_CONTENT_TYPES = {".md": "text/markdown; charset=utf-8", ".html": "text/html; charset=utf-8",
                  ".json": "application/json", ".jsonl": "application/x-ndjson", ".png": "image/png",
                  ".epub": "application/epub+zip"}


class Storage(ABC):
    """What the job layout needs from a place to put files."""

    #: where this storage is, for people: a directory path or s3://bucket/prefix
    location: str

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store `data` at `key`, replacing what was there; readers see the old or the new bytes, never a part."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The bytes at `key`; KeyNotFound if there are none."""

    def read_head(self, key: str, size: int) -> bytes:
        """The first `size` bytes at `key` (all of them if there are fewer); KeyNotFound if there are none."""
        return self.read_bytes(key)[:size]

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""

    @abstractmethod
    def create_once(self, key: str, data: bytes, content_type: str | None = None) -> bool:
        """Store `data` only if `key` does not exist yet; True if this call created it.
        Of several concurrent callers, exactly one gets True."""

    @abstractmethod
    def url_for(self, key: str) -> str:
        """A location a person can open (file:// URI, or http(s) URL of the object)."""

    def check(self) -> None:
        """Raise StorageError now if the storage cannot be used (missing bucket, no access)."""


def check_key(key: str) -> str:
    """Keys come from ids that were made safe; this is the last guard against escaping the root."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"unsafe storage key {key!r}")
    return key


def content_type_for(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def shared_location(out: str) -> str:
    """`out` as every worker must see it: an s3:// URL as is, a local folder made absolute (so it must be on
    a file system the workers share)."""
    if out.startswith("s3://"):
        return out
    return str(Path(out).expanduser().resolve())


PRESIGN_S = 7 * 24 * 3600  # the longest a SigV4 presigned link may live


def check_location(url: str) -> None:
    """A location that looks like an S3 URL but is not one ("s3:/bucket", "S3://bucket") would otherwise be a
    local folder named "s3:": an error naming the right spelling."""
    scheme, colon, rest = url.partition(":")
    if colon and scheme.lower() == "s3" and not url.startswith("s3://"):
        fixed = "s3://" + rest.lstrip("/")
        raise StorageError(f"{url!r} is not an S3 URL: did you mean {fixed!r}? (s3://bucket/prefix)")


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    """A storage for `DIR` or `s3://bucket/prefix`. The S3 endpoint comes from the argument, else
    DREAMGEN_S3_ENDPOINT_URL, else AWS. Makes no network call."""
    check_location(url)
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"{url!r} names no bucket; write s3://bucket/prefix")
        return S3Storage(bucket, prefix, endpoint_url=settings.s3_endpoint_url(endpoint_url))
    if "://" in url:
        raise StorageError(f"unsupported output location {url!r}; use a directory or s3://bucket/prefix")
    return LocalStorage(url)


class LocalStorage(Storage):
    """A directory. Writes go to a temp file in the same folder, are fsynced, then renamed into place."""

    def __init__(self, root):
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self._inside(self.root.joinpath(*check_key(key).split("/")))

    def _inside(self, path: Path) -> Path:
        """`path`, if it stays inside the root once symbolic links are followed. A link inside the output folder
        (to a job folder, a document folder, images/) must not carry writes or reads elsewhere (issue 16)."""
        real = os.path.realpath(path)
        if real != self.location and not real.startswith(self.location.rstrip(os.sep) + os.sep):
            raise StorageError(f"refusing to use {path}: a symbolic link leads it to {real}, outside the output "
                               f"folder {self.root}")
        return path

    def write_bytes(self, key, data, content_type=None):
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            os.replace(temp, path)
        except OSError as e:
            _unlink_quietly(temp)
            raise StorageError(f"cannot write {path}: {e.strerror}") from None
        # No fsync of the folder here (it would double the cost of a document): journaling file systems
        # commit renames in order, so once create_once has made a marker durable, the files before it are.

    def create_once(self, key, data, content_type=None):
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            # A hard link appears whole or not at all, and fails if the name exists: atomic create-once.
            os.link(temp, path)
            created = True
        except FileExistsError:
            created = False
        except OSError:  # a file system without hard links: exclusive create, written in place
            created = _create_exclusive(path, data)
        finally:
            _unlink_quietly(temp)
        if created:
            _fsync_dir(path.parent)
        return created

    def read_bytes(self, key):
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(f"not found: {path}") from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror}") from None

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix=""):
        # S3 semantics (a string prefix, not a folder), walking only the folder the prefix lies in.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._inside(self.root.joinpath(*folder.split("/"))) if folder else self.root
        keys = []
        for dirpath, _, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not name.startswith(_TEMP_PREFIX):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key):
        _unlink_quietly(self._path(key))

    def url_for(self, key):
        return self._path(key).as_uri()

    def check(self):
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise StorageError(f"cannot write to {self.root}: {existing} is not a writable directory")

    def _write_temp(self, path: Path, data: bytes) -> str:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = _open_temp(path)
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            _unlink_quietly(temp)
            raise StorageError(f"cannot write {path}: {e.strerror}") from None
        return temp


def _open_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside `path`, created with mode 0666 less the umask, as any tool's output is
    (tempfile.mkstemp makes 0600, which a web server running as another user cannot serve)."""
    while True:
        temp = path.parent / f"{_TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), str(temp)
        except FileExistsError:  # 48 random bits: a clash is all but impossible, but never overwrite one
            continue


def _create_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds the new name (POSIX only)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3Storage(Storage):
    """An S3 bucket (or S3-compatible server) under a key prefix. Credentials come from boto3's chain."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None,
                 retry_s: float | None = None):
        if any(part in (".", "..") for part in prefix.split("/")) or "\\" in prefix:
            # keys would start with ../ and links to them resolve into another bucket (issue 33)
            raise StorageError(f"s3://{bucket}/{prefix}: '.', '..' and backslashes are not allowed in an S3 prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.retry_s = settings.s3_retry_s() if retry_s is None else retry_s
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client
        self._conditional_writes = True  # until the server says it does not support IfNoneMatch

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            options = {"retries": {"mode": "standard", "total_max_attempts": 1},  # retried in _retrying
                       "connect_timeout": 10, "read_timeout": 60}
            if self.endpoint_url:
                # boto3 >= 1.36 sends CRC checksums by default, which S3-compatible servers may reject.
                options.update(request_checksum_calculation="when_required",
                               response_checksum_validation="when_required")
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=Config(**options))
        return self._client

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def write_bytes(self, key, data, content_type=None):
        full = self._full(key)
        with self._errors(full):
            self._retrying(lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                                          ContentType=content_type or content_type_for(key)))

    def create_once(self, key, data, content_type=None):
        from botocore.exceptions import ClientError

        full = self._full(key)
        content_type = content_type or content_type_for(key)
        if self._conditional_writes:
            try:
                with self._errors(full, passthrough=True):
                    # A retry after a lost answer may meet its own object: 412, "exists", which is true.
                    self._retrying(lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                                                  ContentType=content_type, IfNoneMatch="*"))
                return True
            except ClientError as e:
                code = _error_code(e)
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in ("ConditionalRequestConflict", "409"):  # another writer is creating it right now
                    return False
                if code not in ("NotImplemented", "501"):
                    raise self._storage_error(e, full) from None
                self._conditional_writes = False
        # Servers without conditional writes: check, then write. Racy between writers; the best they allow.
        if self.exists(key):
            return False
        self.write_bytes(key, data, content_type)
        return True

    def read_bytes(self, key):
        full = self._full(key)
        with self._errors(full):  # the body's read is retried too: a connection can drop mid-stream
            return self._retrying(lambda: self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

    def read_head(self, key, size):
        from botocore.exceptions import ClientError

        full = self._full(key)
        try:
            with self._errors(full, passthrough=True):  # a ranged GET: a picture's header without its pixels
                return self._retrying(lambda: self.client.get_object(Bucket=self.bucket, Key=full,
                                                                     Range=f"bytes=0-{size - 1}")["Body"].read())
        except ClientError as e:
            if _error_code(e) in ("InvalidRange", "416"):  # an empty object has no first byte
                return b""
            raise self._storage_error(e, full) from None

    def exists(self, key):
        from botocore.exceptions import ClientError

        full = self._full(key)
        try:
            with self._errors(full, passthrough=True):
                self._retrying(lambda: self.client.head_object(Bucket=self.bucket, Key=full))
            return True
        except ClientError as e:
            if _error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._storage_error(e, full) from None

    def list(self, prefix=""):
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        def listing():  # retried whole: a listing is cheap to start again, and pages must not repeat
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
            return [item["Key"][strip:] for page in pages for item in page.get("Contents", [])]

        with self._errors(full_prefix):
            return sorted(self._retrying(listing))

    def delete(self, key):
        full = self._full(key)
        with self._errors(full):
            self._retrying(lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def presigned_url(self, key: str, expires_s: int = PRESIGN_S) -> str:
        """A link that opens `key` without credentials until it expires (signed here, no network call): what a
        person can open on a private bucket, where url_for answers 403. StorageError without credentials."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        try:  # SigV4 (boto3 may sign a presigned URL with the old SigV2, which newer regions refuse)
            signer = boto3.client("s3", endpoint_url=self.endpoint_url, config=Config(signature_version="s3v4"))
            return signer.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._full(key)},
                                                 ExpiresIn=expires_s)
        except BotoCoreError as e:  # no credentials here: nothing to sign with
            raise StorageError(f"cannot presign a link: {e}") from None

    def url_for(self, key):
        full = quote(self._full(key), safe="/")
        if self.endpoint_url:
            return f"{self.endpoint_url}/{self.bucket}/{full}"
        return f"https://{self.bucket}.s3.amazonaws.com/{full}"

    def check(self):
        with self._errors(""):
            self._retrying(lambda: self.client.head_bucket(Bucket=self.bucket), min(self.retry_s, CHECK_RETRY_S))

    def _retrying(self, call, retry_s: float | None = None):
        """call(), again after each transient error (throttling, 5xx, a dropped or timed-out connection), with
        exponential backoff and full jitter, for up to `retry_s` seconds (DREAMGEN_S3_RETRY_S); then the error."""
        budget = self.retry_s if retry_s is None else retry_s
        started, attempt = time.monotonic(), 0
        while True:
            try:
                return call()
            except Exception as e:
                wait = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** attempt))
                if not _transient(e) or time.monotonic() + wait - started > budget:
                    raise
            attempt += 1
            time.sleep(wait)

    def _errors(self, key: str, passthrough: bool = False):
        return _S3Errors(self, key, passthrough)

    def _storage_error(self, error, key: str) -> StorageError:
        """One line a person can act on; never the request, headers or credentials."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        if isinstance(error, NoCredentialsError):
            return StorageError(f"no AWS credentials found for s3://{self.bucket}: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(error, EndpointConnectionError):
            return StorageError(f"cannot reach the S3 endpoint{where or ' of AWS'} for bucket {self.bucket!r}")
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and not key):
                return StorageError(f"S3 bucket {self.bucket!r} does not exist{where}")
            if code in ("NoSuchKey", "404", "NotFound"):
                return KeyNotFound(f"not found: s3://{self.bucket}/{key}")
            if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"access denied to S3 bucket {self.bucket!r}{where} ({code}); check the "
                                    "credentials boto3 finds and the bucket policy")
            return StorageError(f"S3 error on s3://{self.bucket}/{key}{where}: {code}")
        return StorageError(f"S3 error on s3://{self.bucket}/{key}{where}: {type(error).__name__}")


class _S3Errors:
    """Turn botocore exceptions into StorageError (or let ClientError through when the caller inspects it)."""

    def __init__(self, storage: S3Storage, key: str, passthrough: bool):
        self.storage, self.key, self.passthrough = storage, key, passthrough

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from botocore.exceptions import BotoCoreError, ClientError

        if exc is None or isinstance(exc, StorageError):
            return False
        if self.passthrough and isinstance(exc, ClientError):
            return False
        if isinstance(exc, (ClientError, BotoCoreError)):
            raise self.storage._storage_error(exc, self.key) from None
        return False


def _transient(error) -> bool:
    """An S3 error that may pass if the same request is sent again."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, IncompleteReadError

    if isinstance(error, (ConnectionError, HTTPClientError, IncompleteReadError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return _error_code(error) in _TRANSIENT_CODES or status == 429 or (status >= 500 and status != 501)
    return False


def _error_code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
