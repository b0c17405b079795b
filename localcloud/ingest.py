"""`python -m localcloud ingest DIR`: upload a folder, wait until the import function is done with it.

Every file under DIR is uploaded to the upload bucket as `PREFIX/relative/path`. Each uploaded
object is classified with the import function's own rule (`functions.selection.ignore_reason`
with the import function's settings): *expected* objects are the ones it imports, *skipped* ones
it ignores by design (sidecars, zero-byte files, names outside the pattern or prefixes).

When is the ingest done? The import function batches uploads into debounce windows, so how many
import operations (and completion events) an upload causes is not known up front. The rule:

1. **Seen**: every expected object has its duplicate marker `seen/{window}/{key}` in the state
   bucket (`key` = `functions.windows.object_key(bucket, name, generation)`; matched by key alone,
   so the function's debounce length need not be known here). The function writes it
   right after the object's window record, so from then on the object is in the pipeline's
   durable state.
2. **Quiet**: then, read in this order, there is no import work left in the state bucket: no
   `windows/` record, no import `jobs/`, no import `operations/`. The order matters: a window
   record is deleted only after its jobs exist, and a job only after its operation is tracked,
   so an object cannot slip between two listings. An operation record is deleted only after its
   completion event is published, so once quiet, every event of this upload is on the topic.
3. The events are collected from a private subscription opened before the upload (see
   `localcloud.connect`), drained once more after the quiet check.

Then each expected object is looked up in the store by its UIDs (read from the local file with
pydicom; QIDO-RS on study, series and SOP Instance UID). `imported` counts the expected objects
found, `failed` lists the others (the import events name them in `failedObjects`; a file that is
not DICOM cannot be found at all), `skipped` the ignored ones. At the timeout, whatever is not
stored counts as failed.

Limits: "quiet" is store-wide, so another upload in flight at the same time delays the end of
this one (never its result). Events belong to this ingest when they are import events of this
store whose `source` covers one of its objects, whose `failedObjects` name one, or whose source
is a staged copy in the state bucket (those cannot be told apart without the batch manifest).
Other events are counted and left alone (they stay in the state bucket's `done/` records).
"""

from __future__ import annotations

import mimetypes
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from functions.events import STORAGE_FINALIZED, StorageObjectEvent
from functions.failed_objects import read_uids
from functions.gcs import Gcs
from functions.gcs_wildcards import api_wildcard_match
from functions.selection import ignore_reason
from functions.settings import Settings
from functions.windows import object_key
from localcloud.connect import EventStream, LocalCloud
from localcloud.progress import Reporter, aligned

DEFAULT_TIMEOUT_SECONDS = 120.0
_THREADS = 8
_POLL_SECONDS = 0.5
_LISTED_NAMES = 10  # skipped/failed names shown in the human summary


@dataclass(frozen=True)
class UploadedObject:
    path: Path
    name: str
    bucket: str
    generation: int
    size: int
    skip_reason: str | None  # None: the import function takes it
    uids: tuple[str, str, str] | None  # study, series, instance; None: not DICOM

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


@dataclass
class IngestResult:
    uploaded: int
    imported: int
    failed: list[str]
    skipped: list[str]
    operations: list[dict[str, Any]]
    timed_out: bool = False
    destination: str = ""
    skip_reasons: dict[str, str] = field(default_factory=dict)
    other_events: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.timed_out

    def to_json(self) -> dict[str, Any]:
        """The `--json` answer (issue 3): exactly these keys."""
        return {
            "uploaded": self.uploaded,
            "imported": self.imported,
            "failed": list(self.failed),
            "skipped": list(self.skipped),
            "operations": list(self.operations),
        }


def object_name(prefix: str, relative: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{relative}" if prefix else relative


def local_files(root: Path) -> list[tuple[Path, str]]:
    """(path, path relative to root with forward slashes), sorted; hidden files and folders included."""
    return sorted(((p, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file()),
                  key=lambda item: item[1])


def classify(bucket: str, name: str, generation: int, size: int, settings: Settings) -> str | None:
    """Why the import function ignores this object, or None when it imports it."""
    event = StorageObjectEvent(event_id="", event_type=STORAGE_FINALIZED, bucket=bucket, name=name,
                               generation=generation, size=size, time_created=datetime.now(UTC),
                               event_time=None)
    return ignore_reason(event, settings)


def local_uids(path: Path) -> tuple[str, str, str] | None:
    try:
        return read_uids(path.read_bytes())
    except OSError:
        return None


def event_belongs(event: dict[str, Any], store: str, objects: Sequence[UploadedObject],
                  state_bucket: str) -> bool:
    """Is this completion event one of this ingest's imports? (See the module docstring.)"""
    if event.get("kind") != "import" or event.get("dicomStore") != store:
        return False
    uris = {o.uri for o in objects}
    if uris.intersection(event.get("failedObjects") or []):
        return True
    source = str(event.get("source") or "")
    if not source.startswith("gs://"):
        return False
    bucket, _, pattern = source[len("gs://"):].partition("/")
    if bucket == state_bucket:
        return True  # a staged batch: its objects are copies under staging/
    return any(o.bucket == bucket and api_wildcard_match(pattern, o.name) for o in objects)


def describe_event(event: dict[str, Any]) -> str:
    """One compact line: kind, state, counters, where, how long."""
    counters = event.get("counters") or {}
    where = event.get("source") or event.get("destination") or ""
    # The widest kind (storageClass) and state (SUCCEEDED_WITH_ERRORS) keep a space after them.
    parts = [f"{event.get('kind', '?'):<6} {event.get('state', '?'):<21} "]
    if event.get("state") == "REJECTED":
        parts.append(str(event.get("reason", ""))[:160])
    else:
        parts.append(f"{counters.get('success', 0)} ok, {counters.get('failure', 0)} failed")
    if where:
        parts.append(f"  {where}")
    if event.get("durationSeconds") is not None:
        parts.append(f"  {float(event['durationSeconds']):.1f} s")
    if event.get("error"):
        # The operation's log link is printed on its own line by the CLI (the emulator's for the
        # local cloud): a console link cut at 120 characters helps nobody.
        message = re.sub(r"\s*\(?https?://\S+\)?", "", str(event["error"].get("message", "")))
        parts.append(f"  error: {message[:120]}")
    return "".join(parts)


def render_summary(result: IngestResult) -> list[str]:
    """The human summary after an ingest."""
    lines = [aligned("uploaded", f"{result.uploaded} objects to {result.destination}"),
             aligned("imported", f"{result.imported} instances stored")]
    lines.append(aligned("skipped", f"{len(result.skipped)} objects (ignored by design)"))
    lines.extend(_listed(result.skipped, result.skip_reasons))
    if result.failed:
        lines.append(aligned("failed", f"{len(result.failed)} objects not imported"))
        lines.extend(_listed(result.failed, {}))
    lines.append(aligned("events", f"{len(result.operations)} import completion events"
                         + (f" ({result.other_events} others ignored)" if result.other_events else "")))
    verdict = "timed out" if result.timed_out else ("with failures" if result.failed else "all imported")
    lines.append(aligned("done", f"{verdict} in {result.seconds:.1f} s"))
    return lines


def _listed(uris: Sequence[str], reasons: dict[str, str]) -> list[str]:
    lines = [aligned("", f"{uri}  ({reasons[uri]})" if uri in reasons else uri) for uri in uris[:_LISTED_NAMES]]
    if len(uris) > _LISTED_NAMES:
        lines.append(aligned("", f"... and {len(uris) - _LISTED_NAMES} more"))
    return lines


def upload(cloud: LocalCloud, files: Sequence[tuple[Path, str]], settings: Settings,
           reporter: Reporter) -> list[UploadedObject]:
    """Uploads in parallel; returns the objects in the order of `files`."""
    bucket = cloud.storage.bucket(cloud.upload_bucket)

    def one(item: tuple[Path, str]) -> UploadedObject:
        path, name = item
        blob = bucket.blob(name)
        content_type = "application/dicom" if path.suffix.lower() == ".dcm" else (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        blob.upload_from_filename(str(path), content_type=content_type)
        generation, size = int(blob.generation or 0), int(blob.size or 0)
        reason = classify(cloud.upload_bucket, name, generation, size, settings)
        return UploadedObject(path=path, name=name, bucket=cloud.upload_bucket, generation=generation,
                              size=size, skip_reason=reason, uids=None if reason else local_uids(path))

    uploaded: list[UploadedObject] = []
    with reporter.bar("upload", len(files), "files") as bar, ThreadPoolExecutor(_THREADS) as pool:
        for obj in pool.map(one, files):
            uploaded.append(obj)
            bar.update_to(len(uploaded))
    return uploaded


def import_work_left(gcs: Gcs, settings: Settings) -> bool:
    """Is there import work in the state bucket: a window, an import job or operation? (The
    listing order is step 2 of the module docstring.)"""
    bucket, path = settings.state_bucket, settings.state_path
    if gcs.list_prefixes(bucket, path("windows/")):
        return True
    for folder in ("jobs/", "operations/"):
        for info in gcs.list(bucket, path(folder)):
            record = gcs.read(bucket, info.name)
            if record is not None and (record.data.get("job") or {}).get("kind") == "import":
                return True
    return False


class _Waiter:
    """Tracks the expected objects until the rule of the module docstring says done."""

    def __init__(self, cloud: LocalCloud, settings: Settings, expected: list[UploadedObject],
                 on_event: Callable[[dict[str, Any]], None]) -> None:
        self.cloud = cloud
        self.gcs = cloud.gcs
        self.s = settings
        self.expected = expected
        self.unseen = {object_key(o.bucket, o.name, o.generation): o for o in expected}
        self.stored: set[str] = set()
        self.named_failed: set[str] = set()
        self.events: list[dict[str, Any]] = []
        self.event_ids: set[str] = set()
        self.other_events = 0
        self.on_event = on_event

    def take_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if not event_belongs(event, self.cloud.dicom_store, self.expected, self.cloud.state_bucket):
                self.other_events += 1
                continue
            if event.get("eventId") in self.event_ids:
                continue  # at-least-once delivery: the same event again
            self.event_ids.add(str(event.get("eventId")))
            self.events.append(event)
            self.named_failed.update(event.get("failedObjects") or [])
            self.on_event(event)

    def check_seen(self) -> None:
        if self.unseen:
            seen = {info.name.rsplit("/", 1)[-1] for info in self.gcs.list(self.s.state_bucket,
                                                                              self.s.state_path("seen/"))}
            for key in [k for k in self.unseen if k in seen]:
                del self.unseen[key]

    def check_store(self, pool: ThreadPoolExecutor) -> None:
        todo = [o for o in self.expected if o.uri not in self.stored and o.uids is not None]
        for obj, found in zip(todo, pool.map(lambda o: self.cloud.instance_stored(*o.uids), todo), strict=True):
            if found:
                self.stored.add(obj.uri)

    def quiet(self) -> bool:
        return not import_work_left(self.gcs, self.s)

    @property
    def accounted(self) -> int:
        return len(self.stored) + len({o.uri for o in self.expected} & self.named_failed - self.stored)


def run_ingest(cloud: LocalCloud, root: Path, prefix: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
               reporter: Reporter | None = None, settings: Settings | None = None) -> IngestResult:
    """Uploads `root` under `prefix`, waits (see the module docstring), and sums up."""
    reporter = reporter or Reporter.off()
    settings = settings or cloud.import_settings()
    started = time.monotonic()
    files = [(path, object_name(prefix, relative)) for path, relative in local_files(root)]
    with cloud.event_stream() as stream:
        objects = upload(cloud, files, settings, reporter)
        expected = [o for o in objects if o.skip_reason is None]
        waiter = _Waiter(cloud, settings, expected, lambda e: reporter.print(aligned("event", describe_event(e))))
        timed_out = _wait(waiter, stream, reporter, deadline=started + timeout)
    failed = [o.uri for o in expected if o.uri not in waiter.stored]
    skipped = [o for o in objects if o.skip_reason is not None]
    return IngestResult(
        uploaded=len(objects),
        imported=len(waiter.stored),
        failed=failed,
        skipped=[o.uri for o in skipped],
        operations=waiter.events,
        timed_out=timed_out,
        destination=f"gs://{cloud.upload_bucket}/{object_name(prefix, '')}",
        skip_reasons={o.uri: str(o.skip_reason) for o in skipped},
        other_events=waiter.other_events,
        seconds=time.monotonic() - started,
    )


def _wait(waiter: _Waiter, stream: EventStream, reporter: Reporter, *, deadline: float) -> bool:
    """Waits until done; True when the deadline passed first."""
    if not waiter.expected:
        return False
    with reporter.bar("import", len(waiter.expected), "objects") as bar, ThreadPoolExecutor(_THREADS) as pool:
        while True:
            waiter.take_events(stream.pull())
            waiter.check_seen()
            waiter.check_store(pool)
            bar.update_to(waiter.accounted)
            if not waiter.unseen and waiter.quiet():
                break
            if time.monotonic() > deadline:
                waiter.take_events(stream.drain())
                return True
            time.sleep(_POLL_SECONDS)
        # Every event is published by now; give the emulator a moment to deliver the last ones.
        waiter.take_events(stream.drain())
        time.sleep(0.2)
        waiter.take_events(stream.drain())
        waiter.check_store(pool)
        bar.update_to(waiter.accounted)
    return False
