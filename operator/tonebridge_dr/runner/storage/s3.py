"""`s3://bucket/prefix` repositories on AWS S3 or any S3-compatible endpoint.

The client is configured only from the standard AWS environment: the endpoint from
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, the region from AWS_REGION /
AWS_DEFAULT_REGION (default us-east-1), credentials from the usual chain (env,
shared files, IRSA / instance roles).

Deadlines: a call may go without progress (no answer, no byte) for at most
TONEBRIDGE_DR_STORAGE_TIMEOUT seconds (default 120) over all its attempts: each of
MAX_ATTEMPTS attempts gets a third of it as read timeout. A connection refused
fails within seconds. Once a call failed because the endpoint stopped answering,
clean-up calls (aborting the multipart upload, deleting what the failed backup
wrote) are not sent to it for the next deadline: they would hang just as long, and
`prune` removes what they would have (a folder without manifest, an unfinished
upload). So a hung endpoint fails a Job in about the deadline, with exit 4.

Server-side encryption comes from TONEBRIDGE_DR_S3_SSE (`AES256` or `aws:kms`) and
TONEBRIDGE_DR_S3_SSE_KMS_KEY_ID; it applies to every object written.

Archive tiers: `change_storage_class` copies an object onto itself (CopyObject with
StorageClass and MetadataDirective=COPY, plus the SSE settings above, so the copy stays
encrypted the same way); an object larger than S3's single-copy limit (5 GiB) is copied
with a multipart UploadPartCopy guarded by the source's ETag. `archive_state` reads the
HEAD answer (StorageClass, the `Restore` header: ongoing-request="false" means a
readable rehydrated copy exists, ArchiveStatus of Intelligent-Tiering archive tiers);
`request_rehydration` sends RestoreObject (Days, Tier). In a versioned bucket an
in-place copy adds a version: the STANDARD one stays as a noncurrent version until a
lifecycle rule expires it.

Object Lock comes from TONEBRIDGE_DR_S3_OBJECT_LOCK_MODE (`GOVERNANCE` or `COMPLIANCE`)
and TONEBRIDGE_DR_S3_OBJECT_LOCK_RETAIN (a duration such as `30d`): every object written
(PutObject, CreateMultipartUpload) carries the mode and a retain-until date of the write
time plus that duration, except markers (`put_marker`). S3 wants a checksum on such
uploads, so the client then always sends one (request_checksum_calculation
"when_supported", whatever AWS_REQUEST_CHECKSUM_CALCULATION says). A completed multipart
upload is checked (HEAD) and given its retention with PutObjectRetention when the store
ignored the headers of CreateMultipartUpload (moto does; S3 does not).

Versioned buckets (every Object Lock bucket is one): a plain DeleteObject only hides a
key behind a delete marker and keeps its data, so `delete` / `delete_many` remove every
version of the key (DeleteObject(s) with VersionId), data versions before delete markers.
S3 refuses that for a version under Object Lock (403 AccessDenied): such a refusal is
checked against the version's lock and becomes ObjectLocked (exit 18), naming the key and
its retain-until date. Whether the bucket is versioned is asked once
(GetBucketVersioning); when that is denied, a bucket with objectLock configured counts as
versioned, any other as not.

Every botocore failure becomes a runner error with one sentence: a missing bucket is
a RepositoryConfigError, a missing key an ObjectNotFound, everything else a
StorageError naming the operation and the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import boto3
import botocore.config
import botocore.exceptions
import botocore.session
import botocore.utils
import urllib3.exceptions

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.storage import S3Config, base

TIMEOUT_ENV = runner_contract.ENV_STORAGE_TIMEOUT
DEFAULT_TIMEOUT = 120.0
SSE_ENV = runner_contract.ENV_S3_SSE
SSE_KMS_KEY_ENV = runner_contract.ENV_S3_SSE_KMS_KEY_ID
SSE_MODES = ("AES256", "aws:kms")
LOCK_MODE_ENV = runner_contract.ENV_S3_OBJECT_LOCK_MODE
LOCK_RETAIN_ENV = runner_contract.ENV_S3_OBJECT_LOCK_RETAIN
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")

STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "GLACIER_IR",
        "DEEP_ARCHIVE",
        "OUTPOSTS",
        "SNOW",
        "EXPRESS_ONEZONE",
    }
)

#: Retrieval tiers of RestoreObject (DEEP_ARCHIVE has no Expedited: S3 says so).
REHYDRATION_TIERS = ("Standard", "Bulk", "Expedited")
#: Intelligent-Tiering's archive access tiers also need a RestoreObject.
_ARCHIVE_ACCESS = frozenset({"ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"})
_ARCHIVED_CODES = frozenset({"InvalidObjectState", "ObjectNotInActiveTierError"})
_RESTORE_EXPIRY_RE = re.compile(r'expiry-date="([^"]+)"')

_MISSING_KEY_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)
# Failures of the connection itself rather than answers from S3.
#: The endpoint accepted the connection (or nothing at all) but stopped answering.
_TIMEOUT_ERRORS = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    urllib3.exceptions.TimeoutError,
    TimeoutError,
)
_NETWORK_ERRORS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
)


#: What an object carries besides its bytes that a bucket backup keeps and a restore puts
#: back: GetObject answer fields, which are also PutObject / CreateMultipartUpload arguments.
OBJECT_ATTRIBUTES = (
    "ContentType", "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage",
    "Metadata",
)


@dataclasses.dataclass
class Download:
    """One GetObject answer: the object's info and attributes, and its bytes (iterate once)."""

    info: base.ObjectInfo
    attributes: dict[str, Any]
    chunks: Iterator[bytes]


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise errors.UsageError(f"invalid object key {key!r}")


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class S3Storage(base.Storage):
    """Objects live under `prefix/` in `bucket`; keys handed in and out are relative to it.

    Writes are atomic by construction: a PutObject, or a multipart upload that only
    becomes visible when completed and is aborted on any error.
    """

    #: Bytes per uploaded part; also the most a put_stream buffers.
    part_size: int = 8 * 1024 * 1024
    #: S3's smallest allowed part (every part but the last).
    MIN_PART_SIZE = 5 * 1024 * 1024
    #: S3's largest part, and its part count limit.
    MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
    MAX_PARTS = 10_000
    #: Parts per size tier: after this many parts the part size doubles, so a stream of
    #: unknown length can reach terabytes within MAX_PARTS.
    PARTS_PER_TIER = 1000

    #: Above this size CopyObject is refused by S3: the copy becomes a multipart
    #: UploadPartCopy of `copy_part_size` parts.
    copy_limit: int = 5 * 1024 * 1024 * 1024
    copy_part_size: int = 1024 * 1024 * 1024

    #: Keys per ListObjectsV2 page (S3's maximum); every page is read.
    list_page_size: int = 1000

    CONNECT_TIMEOUT = 5.0
    MAX_ATTEMPTS = 3

    def __init__(
        self, url: str, bucket: str, prefix: str = "", config: S3Config | None = None
    ) -> None:
        """`config` (optional) gives explicit credentials, endpoint and region; whatever
        it leaves None comes from the AWS environment as usual."""
        super().__init__(url)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        explicit = config or S3Config()
        # A second repository of the same process (a replica) takes none of the
        # environment's settings, which describe the primary repository.
        self._extra = self._sse_args() if explicit.from_env else {}
        self.object_lock = explicit.object_lock or (
            _object_lock() if explicit.from_env else None
        )
        self._versioned: bool | None = None  # asked once, see _is_versioned
        self._lock_enabled: bool | None = None  # asked once, see _locks_possible
        self.region = explicit.region or (_region() if explicit.from_env else "us-east-1")
        self.timeout = _timeout()
        attempt = max(1.0, self.timeout / self.MAX_ATTEMPTS)
        checksums: dict[str, Any] = {}
        if self.object_lock is not None:  # S3 refuses locked uploads without a checksum
            checksums["request_checksum_calculation"] = "when_supported"
        client_config = botocore.config.Config(
            region_name=self.region,
            connect_timeout=min(self.CONNECT_TIMEOUT, attempt),
            read_timeout=attempt,
            retries={"mode": "standard", "max_attempts": self.MAX_ATTEMPTS},
            **checksums,
        )
        self._stalled_at: float | None = None  # monotonic time the endpoint last hung
        self.endpoint = explicit.endpoint_url or (_endpoint() if explicit.from_env else None)
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_parse_timestamp
        )
        session = boto3.session.Session(
            botocore_session=core,
            aws_access_key_id=explicit.access_key_id,
            aws_secret_access_key=explicit.secret_access_key,
            aws_session_token=explicit.session_token,
        )
        try:
            self.client: Any = session.client(
                "s3", endpoint_url=self.endpoint, config=client_config
            )
        except ValueError as exc:  # e.g. a malformed endpoint URL
            raise errors.RepositoryConfigError(
                f"invalid S3 endpoint configuration: {exc}"
            ) from None

    @staticmethod
    def _sse_args() -> dict[str, str]:
        mode = os.environ.get(SSE_ENV, "").strip()
        kms_key = os.environ.get(SSE_KMS_KEY_ENV, "").strip()
        if not mode:
            if kms_key:
                raise errors.RepositoryConfigError(
                    f"{SSE_KMS_KEY_ENV} is set but {SSE_ENV} is not aws:kms"
                )
            return {}
        if mode not in SSE_MODES:
            raise errors.RepositoryConfigError(
                f"{SSE_ENV} must be one of {', '.join(SSE_MODES)}, got {mode!r}"
            )
        args = {"ServerSideEncryption": mode}
        if kms_key:
            if mode != "aws:kms":
                raise errors.RepositoryConfigError(
                    f"{SSE_KMS_KEY_ENV} needs {SSE_ENV}=aws:kms, got {mode!r}"
                )
            args["SSEKMSKeyId"] = kms_key
        return args

    # -- keys and errors ---------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _error(self, exc: BaseException, operation: str, key: str | None) -> errors.DRError:
        """One runner error with one sentence for a botocore/network failure."""
        what = f"{operation} {key}" if key is not None else operation
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "NoSuchBucket":
                return errors.RepositoryConfigError(f"bucket {self.bucket} does not exist")
            if code in _ARCHIVED_CODES and key is not None:
                storage_class = str(error.get("StorageClass") or "an archive class")
                return errors.BackupArchived(
                    f"cannot {operation} {key} in {self._where()}: it is in storage class "
                    f"{storage_class} and has no readable rehydrated copy; rehydrate it first "
                    "(tonebridge-dr backups rehydrate ID --repo URL)"
                )
            if code in _MISSING_KEY_CODES and key is not None:
                return errors.ObjectNotFound(f"object {key} not found in {self._where()}")
            if code in _DENIED_CODES:
                return errors.StorageError(f"access denied to {what} in {self._where()} ({code})")
            message = str(error.get("Message", "")).strip() or "no details"
            if code == "InvalidRequest" and "objectlock" in message.lower().replace(" ", ""):
                return errors.RepositoryConfigError(
                    f"bucket {self.bucket} does not have S3 Object Lock enabled, but "
                    f"{LOCK_MODE_ENV} asks for locked objects ({what} refused)"
                )
            return errors.StorageError(
                f"S3 refused to {what} in {self._where()}: {code or 'error'}: {message}"
            )
        if isinstance(exc, _NETWORK_ERRORS):
            endpoint = self.endpoint or f"of region {self.region}"
            return errors.StorageError(f"cannot reach S3 endpoint {endpoint}: {what} failed")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return errors.StorageError(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "a profile, or a workload role"
            )
        return errors.StorageError(f"S3 {what} in {self._where()} failed: {exc}")

    def _cleanup_call(self, operation: str, key: str, method: str, **kwargs: Any) -> Any:
        """`_call` for clean-up (abort, delete): not sent to an endpoint that just hung."""
        if self._recently_stalled():
            raise errors.StorageError(
                f"S3 endpoint {self.endpoint or self.region} stopped answering: did not "
                f"{operation} {key}; prune removes it later"
            )
        return self._call(operation, key, method, **kwargs)

    def _call(self, operation: str, key: str | None, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            self._note_stall(exc)
            raise self._error(exc, operation, key) from None
        except _NETWORK_ERRORS as exc:
            self._note_stall(exc)
            raise self._error(exc, operation, key) from None

    def _note_stall(self, exc: BaseException) -> None:
        if isinstance(exc, _TIMEOUT_ERRORS):
            self._stalled_at = time.monotonic()

    def _recently_stalled(self) -> bool:
        return self._stalled_at is not None and time.monotonic() - self._stalled_at < self.timeout

    # -- primitives ----------------------------------------------------------------------

    def _part_limit(self, part_number: int) -> int:
        """Size of part `part_number` (1-based): doubles every PARTS_PER_TIER parts."""
        tier = (part_number - 1) // self.PARTS_PER_TIER
        size = max(self.part_size, self.MIN_PART_SIZE) << tier
        return min(size, self.MAX_PART_SIZE)

    def put_marker(self, key: str, data: bytes) -> None:
        """PutObject without Object Lock (a claim its writer deletes)."""
        _check_key(key)
        self._call("upload", key, "put_object", Key=self._full(key), Body=data, **self._extra)

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        storage_class: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> int:
        """`attributes` (S3 only): OBJECT_ATTRIBUTES of the new object (content type, user
        metadata, ...), as a bucket restore puts them back."""
        _check_key(key)
        extra: dict[str, Any] = dict(self._extra)
        for name, value in (attributes or {}).items():
            if name not in OBJECT_ATTRIBUTES:
                raise errors.UsageError(f"unknown object attribute {name!r}")
            extra[name] = value
        if self.object_lock is not None:
            extra["ObjectLockMode"] = self.object_lock.mode
            extra["ObjectLockRetainUntilDate"] = self.object_lock.until(dt.datetime.now(dt.UTC))
        if storage_class is not None:
            self._check_class(storage_class)
            extra["StorageClass"] = storage_class
        full = self._full(key)
        it = iter(chunks)
        # One part buffer, handed to botocore as it is (bytes-like, no copy): memory is one
        # part plus the chunk being split, not two parts. A full part is sent only once
        # more data arrives: a stream of exactly one part stays a single PutObject.
        part = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in it:
                size += len(chunk)
                rest = memoryview(chunk)
                while rest:
                    limit = self._part_limit(len(parts) + 1)
                    if len(part) >= limit:
                        if upload_id is None:
                            created = self._call(
                                "start a multipart upload of",
                                key,
                                "create_multipart_upload",
                                Key=full,
                                **extra,
                            )
                            upload_id = str(created["UploadId"])
                        if len(parts) + 1 > self.MAX_PARTS:
                            raise errors.StorageError(
                                f"object {key} is too large for one S3 multipart upload"
                            )
                        number = len(parts) + 1
                        body, part = part, bytearray()
                        parts.append(self._upload_part(key, full, upload_id, number, body))
                        del body
                        limit = self._part_limit(len(parts) + 1)
                    room = limit - len(part)
                    part += rest[:room]
                    rest = rest[room:]
            if upload_id is None:
                self._call("upload", key, "put_object", Key=full, Body=part, **extra)
            else:
                parts.append(self._upload_part(key, full, upload_id, len(parts) + 1, part))
                completed = self._call(
                    "complete the upload of",
                    key,
                    "complete_multipart_upload",
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                upload_id = None
                if "ObjectLockMode" in extra:
                    self._ensure_retention(
                        key, completed.get("VersionId"), extra["ObjectLockMode"],
                        extra["ObjectLockRetainUntilDate"],
                    )
            part = bytearray()
        except BaseException:
            # Whatever failed (S3, the input, Ctrl-C, a closed generator), leave no
            # half-written upload behind; the original error is what the caller sees.
            part = bytearray()
            if upload_id is not None:
                self._abort(full, upload_id)
            close = getattr(it, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            raise
        return size

    def _ensure_retention(
        self, key: str, version_id: str | None, mode: str, until: dt.datetime
    ) -> None:
        """Give a completed multipart upload the lock its CreateMultipartUpload asked for,
        when the store did not apply it (S3 does; some S3-compatible stores do not)."""
        version = {"VersionId": version_id} if version_id else {}
        head = self._call("inspect", key, "head_object", Key=self._full(key), **version)
        current = head.get("ObjectLockRetainUntilDate")
        if current is not None and _utc(_as_datetime(current)) >= until:
            return
        self._call(
            "lock", key, "put_object_retention", Key=self._full(key), **version,
            Retention={"Mode": mode, "RetainUntilDate": until},
        )

    def _upload_part(
        self, key: str, full: str, upload_id: str, number: int, body: bytes | bytearray
    ) -> dict[str, Any]:
        answer = self._call(
            f"upload part {number} of",
            key,
            "upload_part",
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _abort(self, full: str, upload_id: str) -> None:
        # Best effort: when the endpoint is gone this fails too; prune (and the bucket's
        # lifecycle rule for incomplete uploads) are the backstop.
        with contextlib.suppress(Exception):
            self._cleanup_call("abort the upload of", full, "abort_multipart_upload",
                               Key=full, UploadId=upload_id)

    def list_leftovers(self, prefix: str = "") -> Iterator[base.Leftover]:
        """Multipart uploads under `prefix` that were never completed or aborted."""
        full_prefix = self._full(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        marker: dict[str, str] = {}
        while True:
            page = self._call(
                "list incomplete uploads", prefix or "/", "list_multipart_uploads",
                Prefix=full_prefix, **marker,
            )
            for upload in page.get("Uploads", []):
                yield base.Leftover(
                    key=self._relative(upload["Key"]),
                    started=_utc(_as_datetime(upload["Initiated"])),
                    handle=upload["UploadId"],
                )
            if not page.get("IsTruncated"):
                return
            marker = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    def discard_leftover(self, leftover: base.Leftover) -> None:
        _check_key(leftover.key)
        self._call(
            "abort the upload of", leftover.key, "abort_multipart_upload",
            Key=self._full(leftover.key), UploadId=leftover.handle,
        )

    def get_stream(self, key: str) -> Iterator[bytes]:
        _check_key(key)
        answer = self._call("download", key, "get_object", Key=self._full(key))
        return self._read(key, answer["Body"])

    def download(self, key: str) -> Download:
        """GetObject of `key` with what a bucket backup keeps of it: size, ETag, time and
        the OBJECT_ATTRIBUTES of this very version (one request; ObjectNotFound when gone)."""
        _check_key(key)
        answer = self._call("download", key, "get_object", Key=self._full(key))
        info = base.ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            last_modified=_utc(answer["LastModified"]),
            storage_class=answer.get("StorageClass") or "STANDARD",
            etag=_etag(answer.get("ETag")),
        )
        attributes = {name: answer[name] for name in OBJECT_ATTRIBUTES if answer.get(name)}
        return Download(info, attributes, self._read(key, answer["Body"]))

    def _read(self, key: str, body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(self.read_chunk_size)
        except (botocore.exceptions.BotoCoreError, *_NETWORK_ERRORS) as exc:
            raise self._error(exc, "download", key) from None
        finally:
            with contextlib.suppress(Exception):
                body.close()

    def list(self, prefix: str = "") -> Iterator[base.ObjectInfo]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        return self._list(prefix, full_prefix)

    def _list(self, prefix: str, full_prefix: str) -> Iterator[base.ObjectInfo]:
        infos: list[base.ObjectInfo] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=full_prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            ):
                for item in page.get("Contents", ()):
                    infos.append(
                        base.ObjectInfo(
                            key=self._relative(item["Key"]),
                            size=int(item["Size"]),
                            last_modified=_utc(item["LastModified"]),
                            storage_class=item.get("StorageClass") or "STANDARD",
                            etag=_etag(item.get("ETag")),
                        )
                    )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(exc, "list", prefix or "/") from None
        except _NETWORK_ERRORS as exc:
            raise self._error(exc, "list", prefix or "/") from None
        # S3 lists in UTF-8 byte order, which is code point order, but not every
        # S3-compatible store promises it: sort to keep the contract everywhere.
        infos.sort(key=lambda info: info.key)
        yield from infos

    def list_after(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> Iterator[base.ObjectInfo]:
        """ListObjectsV2 with StartAfter and MaxKeys: one small request when `limit` is small."""
        if limit is not None and limit <= 0:
            return
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        params: dict[str, Any] = {"Prefix": full_prefix}
        if start_after:
            params["StartAfter"] = self._full(start_after)
        count = 0
        while True:
            want = self.list_page_size if limit is None else min(self.list_page_size, limit - count)
            page = self._call("list", prefix or "/", "list_objects_v2", MaxKeys=want, **params)
            for item in page.get("Contents", ()):
                yield base.ObjectInfo(
                    key=self._relative(item["Key"]),
                    size=int(item["Size"]),
                    last_modified=_utc(item["LastModified"]),
                    storage_class=item.get("StorageClass") or "STANDARD",
                    etag=_etag(item.get("ETag")),
                )
                count += 1
                if limit is not None and count >= limit:
                    return
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params = {"Prefix": full_prefix, "ContinuationToken": token}

    def delete_many(self, keys: Iterable[str]) -> int:
        """DeleteObjects, up to 1000 keys (or versions) a request; any per-key error fails
        the call (ObjectLocked when a version is under Object Lock)."""
        wanted = list(keys)
        for key in wanted:
            _check_key(key)
        if wanted and self._is_versioned():
            self._delete_versions(self._versions(wanted))
            return len(wanted)
        for start in range(0, len(wanted), 1000):
            self._delete_batch(wanted[start:start + 1000])
        return len(wanted)

    def _delete_batch(self, keys: Sequence[str]) -> None:
        answer = self._call(
            "delete",
            keys[0],
            "delete_objects",
            Delete={"Objects": [{"Key": self._full(key)} for key in keys], "Quiet": True},
        )
        failed = answer.get("Errors") or []
        if failed:
            first = failed[0]
            raise errors.StorageError(
                f"S3 refused to delete {len(failed)} of {len(keys)} objects in {self._where()}, "
                f"e.g. {self._relative(str(first.get('Key', '?')))}: {first.get('Code', 'error')}"
            )

    def head(self, key: str) -> base.ObjectInfo | None:
        _check_key(key)
        try:
            answer = self._call("inspect", key, "head_object", Key=self._full(key))
        except errors.ObjectNotFound:
            return None
        return base.ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            last_modified=_utc(answer["LastModified"]),
            storage_class=answer.get("StorageClass") or "STANDARD",
            etag=_etag(answer.get("ETag")),
        )

    # -- archive tiers -------------------------------------------------------------------

    def archive_state(self, key: str) -> base.ArchiveState | None:
        """HEAD: readable unless in an archive class without a finished rehydration."""
        _check_key(key)
        try:
            answer = self._call("inspect", key, "head_object", Key=self._full(key))
        except errors.ObjectNotFound:
            return None
        storage_class = answer.get("StorageClass") or "STANDARD"
        archived = (
            storage_class in base.ARCHIVE_CLASSES
            or answer.get("ArchiveStatus") in _ARCHIVE_ACCESS
        )
        restore = str(answer.get("Restore") or "")
        ongoing = 'ongoing-request="true"' in restore
        done = 'ongoing-request="false"' in restore
        until: dt.datetime | None = None
        match = _RESTORE_EXPIRY_RE.search(restore)
        if match is not None:
            with contextlib.suppress(TypeError, ValueError):
                until = _utc(email.utils.parsedate_to_datetime(match.group(1)))
        return base.ArchiveState(
            key=key,
            storage_class=storage_class,
            readable=not archived or done,
            restoring=archived and ongoing,
            restored_until=until if done else None,
        )

    def _check_class(self, storage_class: str) -> None:
        if storage_class not in STORAGE_CLASSES:
            raise errors.UsageError(
                f"unknown S3 storage class {storage_class!r}: use one of "
                f"{', '.join(sorted(STORAGE_CLASSES))}"
            )

    def change_storage_class(self, key: str, storage_class: str) -> None:
        """Copy `key` onto itself in `storage_class` (metadata and SSE kept). An archived
        source without a rehydrated copy cannot be copied: BackupArchived."""
        _check_key(key)
        self._check_class(storage_class)
        full = self._full(key)
        answer = self._call("inspect", key, "head_object", Key=full)
        size = int(answer["ContentLength"])
        source = {"Bucket": self.bucket, "Key": full}
        if size <= self.copy_limit:
            self._call(
                "change the storage class of", key, "copy_object",
                Key=full, CopySource=source, CopySourceIfMatch=answer["ETag"],
                StorageClass=storage_class, MetadataDirective="COPY", **self._extra,
            )
            return
        self._multipart_copy(key, full, answer, size, storage_class)

    def _multipart_copy(
        self, key: str, full: str, head: dict[str, Any], size: int, storage_class: str
    ) -> None:
        """UploadPartCopy in ranges; every part pinned to the source's ETag, so an object
        replaced meanwhile fails the copy instead of mixing two objects. Aborted on error."""
        part_size = max(self.copy_part_size, self.MIN_PART_SIZE, math.ceil(size / self.MAX_PARTS))
        settings: dict[str, Any] = {"Metadata": head.get("Metadata") or {}}
        for name in ("ContentType", "ContentEncoding", "ContentDisposition", "CacheControl"):
            if head.get(name):
                settings[name] = head[name]
        created = self._call(
            "start a multipart copy of", key, "create_multipart_upload",
            Key=full, StorageClass=storage_class, **settings, **self._extra,
        )
        upload_id = str(created["UploadId"])
        parts: list[dict[str, Any]] = []
        try:
            for number, offset in enumerate(range(0, size, part_size), start=1):
                last = min(offset + part_size, size) - 1
                copied = self._call(
                    f"copy part {number} of", key, "upload_part_copy",
                    Key=full, UploadId=upload_id, PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": full},
                    CopySourceIfMatch=head["ETag"], CopySourceRange=f"bytes={offset}-{last}",
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            self._call(
                "complete the copy of", key, "complete_multipart_upload",
                Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(full, upload_id)
            raise

    def request_rehydration(self, key: str, *, days: int, tier: str) -> str:
        """RestoreObject: 202 requested, 200 a copy is already readable (S3 extends its
        expiry), 409 RestoreAlreadyInProgress; an object not archived is readable."""
        _check_key(key)
        if days < 1:
            raise errors.UsageError(f"rehydration days must be at least 1, got {days}")
        if tier not in REHYDRATION_TIERS:
            raise errors.UsageError(
                f"unknown retrieval tier {tier!r}: use one of {', '.join(REHYDRATION_TIERS)}"
            )
        request = {"Days": days, "GlacierJobParameters": {"Tier": tier}}
        try:
            answer = self.client.restore_object(
                Bucket=self.bucket, Key=self._full(key), RestoreRequest=request
            )
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "RestoreAlreadyInProgress":
                return base.REHYDRATION_IN_PROGRESS
            if code == "InvalidObjectState":  # not in an archive class: nothing to do
                return base.REHYDRATION_READABLE
            self._note_stall(exc)
            raise self._error(exc, "rehydrate", key) from None
        except (botocore.exceptions.BotoCoreError, *_NETWORK_ERRORS) as exc:
            self._note_stall(exc)
            raise self._error(exc, "rehydrate", key) from None
        status = int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 202))
        return base.REHYDRATION_READABLE if status == 200 else base.REHYDRATION_REQUESTED

    def delete(self, key: str) -> None:
        _check_key(key)
        if not self._recently_stalled() and self._is_versioned():
            self._delete_versions(self._versions([key]))
            return
        self._cleanup_call("delete", key, "delete_object", Key=self._full(key))

    # -- versions and Object Lock --------------------------------------------------------

    def _is_versioned(self) -> bool:
        """Whether deletes must remove versions (asked once per storage)."""
        if self._versioned is None:
            try:
                answer = self.client.get_bucket_versioning(Bucket=self.bucket)
                self._versioned = answer.get("Status") in ("Enabled", "Suspended")
            except botocore.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in _DENIED_CODES:
                    raise self._error(exc, "read the versioning of the bucket", None) from None
                self._versioned = self.object_lock is not None
            except (botocore.exceptions.BotoCoreError, *_NETWORK_ERRORS) as exc:
                self._note_stall(exc)
                raise self._error(exc, "read the versioning of the bucket", None) from None
        return self._versioned

    def object_lock_enabled(self) -> bool:
        """Whether the bucket has S3 Object Lock enabled (GetObjectLockConfiguration);
        StorageError when that cannot be asked (denied, unreachable)."""
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "ObjectLockConfigurationNotFoundError":
                return False
            raise self._error(exc, "read the Object Lock configuration of the bucket",
                              None) from None
        except (botocore.exceptions.BotoCoreError, *_NETWORK_ERRORS) as exc:
            raise self._error(exc, "read the Object Lock configuration of the bucket",
                              None) from None
        config = answer.get("ObjectLockConfiguration") or {}
        return bool(config.get("ObjectLockEnabled") == "Enabled")

    def _locks_possible(self) -> bool:
        """False only when the bucket surely has no Object Lock (asked once)."""
        if self.object_lock is not None:
            return True
        if self._lock_enabled is None:
            try:
                self._lock_enabled = self.object_lock_enabled()
            except errors.StorageError:
                self._lock_enabled = True  # cannot tell: look at every key
        return self._lock_enabled

    def _versions(self, keys: Sequence[str]) -> Sequence[_Version]:
        """Every version and delete marker of `keys` (relative), one listing per folder."""
        folders: dict[str, set[str]] = {}
        for key in keys:
            full = self._full(key)
            folder = full.rsplit("/", 1)[0] + "/" if len(keys) > 1 and "/" in full else full
            folders.setdefault(folder, set()).add(full)
        found: list[_Version] = []
        for folder, wanted in folders.items():
            marker: dict[str, str] = {}
            while True:
                page = self._call("list the versions of", self._relative(folder) or "/",
                                  "list_object_versions", Prefix=folder, **marker)
                for kind, is_marker in (("Versions", False), ("DeleteMarkers", True)):
                    for item in page.get(kind) or ():
                        if item["Key"] in wanted:
                            found.append(_Version(item["Key"], str(item["VersionId"]), is_marker))
                if not page.get("IsTruncated"):
                    break
                marker = {"KeyMarker": page.get("NextKeyMarker", ""),
                          "VersionIdMarker": page.get("NextVersionIdMarker", "")}
        return found

    def _delete_versions(self, versions: Sequence[_Version]) -> None:
        """Data versions first, then (only when all of them went) the delete markers, so a
        refusal never uncovers a hidden object. A locked version raises ObjectLocked."""
        data = [v for v in versions if not v.delete_marker]
        markers = [v for v in versions if v.delete_marker]
        for group in (data, markers):
            for start in range(0, len(group), 1000):
                batch = group[start:start + 1000]
                answer = self._cleanup_call(
                    "delete", self._relative(batch[0].key), "delete_objects",
                    Delete={"Objects": [{"Key": v.key, "VersionId": v.version_id}
                                        for v in batch], "Quiet": True},
                )
                failed = answer.get("Errors") or []
                if failed:
                    self._raise_delete_refused(failed, len(batch))

    def _raise_delete_refused(self, failed: Sequence[dict[str, Any]], asked: int) -> NoReturn:
        for item in failed:
            if str(item.get("Code", "")) not in _DENIED_CODES:
                continue
            key = self._relative(str(item.get("Key", "")))
            lock = self._version_lock(key, item.get("VersionId"))
            if lock is not None:
                mode, until = lock
                what = "an S3 Object Lock legal hold" if until == base.LEGAL_HOLD else (
                    f"S3 Object Lock ({mode}) until {until:%Y-%m-%dT%H:%M:%SZ}")
                raise errors.ObjectLocked(
                    f"object {key} in {self._where()} is under {what}: it cannot be deleted "
                    f"before then ({len(failed)} of {asked} versions refused)",
                    until=None if until == base.LEGAL_HOLD else until,
                )
        first = failed[0]
        raise errors.StorageError(
            f"S3 refused to delete {len(failed)} of {asked} object versions in {self._where()}, "
            f"e.g. {self._relative(str(first.get('Key', '?')))}: {first.get('Code', 'error')}"
        )

    def _version_lock(
        self, key: str, version_id: str | None
    ) -> tuple[str, dt.datetime] | None:
        """(mode, retain-until) of a version still locked now; None when it is not (or gone)."""
        version = {"VersionId": version_id} if version_id else {}
        try:
            head = self._call("inspect", key, "head_object", Key=self._full(key), **version)
        except errors.StorageError:
            return None
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return "legal hold", base.LEGAL_HOLD
        until = head.get("ObjectLockRetainUntilDate")
        if until is None:
            return None
        until = _utc(_as_datetime(until))
        if until <= dt.datetime.now(dt.UTC):
            return None
        return str(head.get("ObjectLockMode") or "retention"), until

    def retained_until(self, keys: Iterable[str]) -> dict[str, dt.datetime]:
        """HEAD of every version of every key (only when the bucket may hold locks)."""
        wanted = list(keys)
        for key in wanted:
            _check_key(key)
        if not wanted or not self._locks_possible():
            return {}
        dates: dict[str, dt.datetime] = {}
        for version in self._versions(wanted):
            if version.delete_marker:
                continue
            key = self._relative(version.key)
            try:
                head = self._call("inspect", key, "head_object", Key=version.key,
                                  VersionId=version.version_id)
            except errors.ObjectNotFound:
                continue  # deleted meanwhile
            if head.get("ObjectLockLegalHoldStatus") == "ON":
                until = base.LEGAL_HOLD
            elif head.get("ObjectLockRetainUntilDate") is not None:
                until = _utc(_as_datetime(head["ObjectLockRetainUntilDate"]))
            else:
                continue
            dates[key] = max(until, dates.get(key, until))
        return dates

    def extend_retention(self, key: str, until: dt.datetime, mode: str | None = None) -> bool:
        """PutObjectRetention on every version of `key` whose date is earlier than `until`."""
        _check_key(key)
        until = base.retain_date(until)
        changed = False
        for version in self._versions([key]):
            if version.delete_marker:
                continue
            head = self._call("inspect", key, "head_object", Key=version.key,
                              VersionId=version.version_id)
            current = head.get("ObjectLockRetainUntilDate")
            if current is not None and _utc(_as_datetime(current)) >= until:
                continue
            modes = {m for m in (mode, head.get("ObjectLockMode"),
                                 self.object_lock.mode if self.object_lock else None) if m}
            if not modes:
                raise errors.UsageError(
                    f"no Object Lock mode for {key}: set {LOCK_MODE_ENV} or pass a mode"
                )
            chosen = "COMPLIANCE" if "COMPLIANCE" in modes else "GOVERNANCE"
            self._call("lock", key, "put_object_retention", Key=version.key,
                       VersionId=version.version_id,
                       Retention={"Mode": chosen, "RetainUntilDate": until})
            changed = True
        return changed

    def check(self) -> None:
        """The bucket exists and its prefix can be listed; else a one-sentence error."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise errors.RepositoryConfigError(f"bucket {self.bucket} does not exist") from None
            raise self._error(exc, "open the bucket", None) from None
        except (botocore.exceptions.BotoCoreError, *_NETWORK_ERRORS) as exc:
            raise self._error(exc, "open the bucket", None) from None
        prefix = f"{self.prefix}/" if self.prefix else ""
        self._call("list", prefix or "/", "list_objects_v2", Prefix=prefix, MaxKeys=1)


@dataclasses.dataclass(frozen=True)
class _Version:
    key: str  # full key
    version_id: str
    delete_marker: bool


def _object_lock() -> base.ObjectLock | None:
    """The Object Lock of written objects from the environment (both or neither set)."""
    mode = os.environ.get(LOCK_MODE_ENV, "").strip()
    retain = os.environ.get(LOCK_RETAIN_ENV, "").strip()
    if not mode and not retain:
        return None
    if mode not in LOCK_MODES:
        raise errors.RepositoryConfigError(
            f"{LOCK_MODE_ENV} must be one of {', '.join(LOCK_MODES)}, got {mode!r}"
        )
    from tonebridge_dr.api import formats  # standard library only

    try:
        duration = formats.parse_duration(retain)
    except ValueError:
        duration = dt.timedelta(0)
    if duration <= dt.timedelta(0):
        raise errors.RepositoryConfigError(
            f"{LOCK_RETAIN_ENV} must be a duration longer than zero such as 30d, got {retain!r}"
        )
    return base.ObjectLock(mode=mode, retain=duration)


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value < 1:
        raise errors.UsageError(f"{TIMEOUT_ENV} must be a number of seconds >= 1, got {raw!r}")
    return value


def _parse_timestamp(value: Any) -> dt.datetime:
    """Timestamps in S3 answers. A listing carries one ISO 8601 LastModified per object:
    `datetime.fromisoformat` reads it ~20x faster than botocore's dateutil parser (which
    cost ~25 ms per 250-object page); anything else (HTTP dates) goes to botocore's."""
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T":
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return botocore.utils.parse_timestamp(value)


def _as_datetime(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else _parse_timestamp(value)


def _etag(value: Any) -> str | None:
    return str(value).strip('"') if value else None


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
