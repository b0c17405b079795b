"""Cloud Storage calls the pipeline makes: atomic claims, compare-and-swap records, listings, copies.

Every claim is a create with `ifGenerationMatch=0`: exactly one concurrent creator wins. A 412 is
always read as "somebody else owns this"; if that somebody died, a lease lets the poller take over.
So an ambiguous retry (our own create landed, the answer got lost) delays work, never loses it.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.cloud.storage.retry import DEFAULT_RETRY as _STORAGE_RETRY

from functions.gcp.clients import ObjectInfo, Record
from functions.gcp.retry import is_transient

if TYPE_CHECKING:
    from google.cloud import storage


_POOL_SIZE = 64
# How long one call waits out 429s and 5xx before the fault reaches the caller. Shorter than the
# lease a leader keeps before each round of calls (`min(lease / 2, 10 s)`, decision 0700), so that
# a throttled call never outlasts its claim; the leader then retries the round itself, renewing
# its claim in between (decision 0752). google-cloud-storage's own deadline is 120 s.
STORAGE_RETRY_SECONDS = 8.0
# google-cloud-storage's backoff (1 s doubling to 60 s), with that deadline and our classification
# of what is transient (the same one the event boundary uses, so a fault retried here is one the
# platform would redeliver).
DEFAULT_RETRY = _STORAGE_RETRY.with_predicate(is_transient).with_timeout(STORAGE_RETRY_SECONDS)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


class Gcs:
    """Thin wrapper over a `google.cloud.storage.Client`; thread-safe like the client."""

    def __init__(self, client: storage.Client, *, timeout: float = 60.0) -> None:
        self._client = client
        self._timeout = timeout

    @classmethod
    def from_environment(cls, project: str, *, timeout: float = 60.0) -> Gcs:
        from google.cloud import storage  # lazy: keeps cold start small
        from requests.adapters import HTTPAdapter

        # With STORAGE_EMULATOR_HOST set the client uses anonymous credentials by itself.
        client = storage.Client(project=project)
        # The default pool keeps 10 connections; a function serving many concurrent requests
        # (and the leader's parallel copies) would open and drop connections all the time.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=_POOL_SIZE)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
        return cls(client, timeout=timeout)

    def _blob(self, bucket: str, name: str, generation: int | None = None) -> storage.Blob:
        return self._client.bucket(bucket).blob(name, generation=generation)

    def create(self, bucket: str, name: str, data: dict[str, Any] | bytes | str,
               metadata: dict[str, str] | None = None) -> int | None:
        """Creates the object if absent; returns its generation, or None when it already exists.

        `metadata` (custom object metadata) comes back in listings, so a reader of many small
        records needs one list call instead of one read per record.
        """
        blob = self._blob(bucket, name)
        if metadata:
            blob.metadata = metadata
        body = _dumps(data) if isinstance(data, dict) else data
        try:
            blob.upload_from_string(body, content_type=_content_type(data), if_generation_match=0,
                                    timeout=self._timeout, retry=DEFAULT_RETRY)
        except gexc.PreconditionFailed:
            return None
        return int(blob.generation or 0)

    def read(self, bucket: str, name: str) -> Record | None:
        """Reads a JSON object with its generation; None when it does not exist."""
        blob = self._blob(bucket, name)
        try:
            raw = blob.download_as_bytes(timeout=self._timeout, retry=DEFAULT_RETRY)
        except gexc.NotFound:
            return None
        return Record(json.loads(raw), int(blob.generation or 0))

    def replace(self, bucket: str, name: str, data: dict[str, Any], generation: int) -> int | None:
        """Overwrites only if the object is still at `generation`; None when somebody else wrote it."""
        blob = self._blob(bucket, name)
        try:
            blob.upload_from_string(_dumps(data), content_type="application/json",
                                    if_generation_match=generation, timeout=self._timeout,
                                    retry=DEFAULT_RETRY)
        except (gexc.PreconditionFailed, gexc.NotFound):
            return None
        return int(blob.generation or 0)

    def write(self, bucket: str, name: str, data: dict[str, Any] | bytes | str) -> None:
        """Unconditional write (for objects only one writer ever produces)."""
        body = _dumps(data) if isinstance(data, dict) else data
        self._blob(bucket, name).upload_from_string(body, content_type=_content_type(data),
                                                    timeout=self._timeout, retry=DEFAULT_RETRY)

    def delete(self, bucket: str, name: str, generation: int | None = None) -> bool:
        """Deletes (only at `generation` when given); False when it was gone or had changed."""
        try:
            self._blob(bucket, name).delete(if_generation_match=generation, timeout=self._timeout,
                                            retry=DEFAULT_RETRY)
        except (gexc.NotFound, gexc.PreconditionFailed):
            return False
        return True

    def list(self, bucket: str, prefix: str, *, recursive: bool = True,
             max_results: int | None = None) -> Iterator[ObjectInfo]:
        """Objects under `prefix` (direct children only when not recursive)."""
        blobs = self._client.list_blobs(bucket, prefix=prefix, delimiter=None if recursive else "/",
                                        max_results=max_results, timeout=self._timeout,
                                        retry=DEFAULT_RETRY)
        for blob in blobs:
            created = blob.time_created.timestamp() if blob.time_created else 0.0
            yield ObjectInfo(blob.name, int(blob.generation or 0), int(blob.size or 0), dict(blob.metadata or {}),
                             created)

    def list_prefixes(self, bucket: str, prefix: str) -> builtins.list[str]:
        """The "folders" directly under `prefix`."""
        iterator = self._client.list_blobs(bucket, prefix=prefix, delimiter="/", timeout=self._timeout,
                                           retry=DEFAULT_RETRY)
        for _ in iterator.pages:
            pass
        return sorted(iterator.prefixes)

    def copy(self, src_bucket: str, src_name: str, generation: int, dst_bucket: str, dst_name: str) -> None:
        """Server-side copy of one generation (rewrite loop: large objects take several calls)."""
        source = self._blob(src_bucket, src_name, generation)
        target = self._blob(dst_bucket, dst_name)
        token, _, _ = target.rewrite(source, timeout=self._timeout, retry=DEFAULT_RETRY)
        while token is not None:
            token, _, _ = target.rewrite(source, token=token, timeout=self._timeout, retry=DEFAULT_RETRY)

    def download(self, bucket: str, name: str, *, generation: int | None = None,
                 start: int = 0, end: int | None = None) -> bytes:
        """Object bytes from `start` (through `end` when given, inclusive): a Range read, so a
        bounded part of a huge object costs only that part."""
        blob = self._blob(bucket, name, generation)
        try:
            data: bytes = blob.download_as_bytes(start=start or None, end=end, timeout=self._timeout,
                                                 retry=DEFAULT_RETRY)
        except gexc.RequestRangeNotSatisfiable:
            return b""  # `start` at or past the end of the object
        return data

    def open_writer(self, bucket: str, name: str, content_type: str = "text/plain") -> Any:
        """A text file-like writer that streams a large object (resumable upload)."""
        return self._blob(bucket, name).open("wt", content_type=content_type, timeout=self._timeout)


def _content_type(data: dict[str, Any] | bytes | str) -> str:
    return "application/json" if isinstance(data, dict) else "application/octet-stream"
