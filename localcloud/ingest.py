"""`python -m localcloud ingest DIR`: upload a folder, wait until the import function is done with it.

Every file under DIR is uploaded to the upload bucket as `PREFIX/relative/path`. Each uploaded
object is classified with the import function's own rule (`functions.core.selection.ignore_reason`
with the import function's settings): *expected* objects are the ones it imports, *skipped* ones
it ignores by design (sidecars, zero-byte files, names outside the pattern or prefixes).

When is the ingest done? The import function batches uploads into debounce windows, so how many
import operations (and completion events) an upload causes is not known up front. The rule:

1. **Seen**: every expected object is in the pipeline's durable state: a window record
   `windows/{window}/*.json` lists it (`functions.imports.window_records`), or its key is in its
   window's seen file `seen/{window}.json`
   (`key` = `functions.core.windows.object_key(bucket, name, generation)`; matched by key alone, so the
   function's debounce length need not be known here). Records are listed before seen files are
   read: a leader adds a record's keys to the seen file before it deletes the record, so an object
   cannot slip between the two.
2. **Quiet**: then, read in this order, there is no import work left in the state bucket: no
   `windows/` record, no import `jobs/`, no import `operations/`. The order matters: a window
   record is deleted only after its jobs exist, and a job only after its operation is tracked,
   so an object cannot slip between two listings. An operation record is deleted only after its
   completion event is published, so once quiet, every event of this upload is on the topic.
3. The events are collected from a private subscription opened before the upload (see
   `localcloud.connect`), drained once more after the quiet check.

Then each expected object gets its outcome, the way the poller decides it
(`functions.imports.failed_objects`): *imported* when the store holds its very instance (its UIDs, read
from the local file, are found by QIDO-RS and the stored instance's data set has the file's
SHA-256; the same UIDs with other content are not this file's), *failed* when an import event
names it (`failures`, with the reason), *undecided* when an event says its fate is unknown, or
when the work is done and it is neither stored as itself nor named. At the timeout, objects with
none of these outcomes yet are *pending*, not failed. `instances` is how many distinct instances
the imported files make in the store (identical copies of one file are one instance).

Exit codes (`exit_code`): 0 everything imported; 1 some object failed or is undecided; 3 the
timeout passed with objects pending; 4 (`--strict` only) nothing was there to import (every file
skipped, or an empty folder). A warning says so without `--strict` too.

Limits: "quiet" is store-wide, so another upload in flight at the same time delays the end of
this one (never its result). Events belong to this ingest when they are import events of this
store whose `source` covers one of its objects, whose `failedObjects` name one, or whose source
is a staged copy in the staging (or state) bucket (those cannot be told apart without the batch manifest).
Other events are counted and left alone (they stay in the state bucket's `done/` records).
"""

from __future__ import annotations

import mimetypes
import re
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from functions.core.events import STORAGE_FINALIZED, StorageObjectEvent
from functions.core.gcs_wildcards import api_wildcard_match
from functions.core.selection import ignore_reason
from functions.core.windows import is_window_id, object_key, window_close
from functions.gcp.gcs import Gcs
from functions.gcp.healthcare import HealthcareClient
from functions.imports import window_records
from functions.imports.failed_objects import HEADER_LIMIT, digest, read_uids
from functions.imports.window_batcher import read_seen
from functions.settings import Settings
from localcloud.connect import EventStream, LocalCloud
from localcloud.progress import Reporter, aligned

DEFAULT_TIMEOUT_SECONDS = 120.0
EXIT_OK = 0
EXIT_FAILED = 1  # an object failed or is undecided
EXIT_PENDING = 3  # the timeout passed with objects still in flight
EXIT_NOTHING = 4  # --strict: nothing was there to import
_COMPARE_LIMIT = 1024**3
_THREADS = 8
_POLL_SECONDS = 0.5
# Seen files of windows that closed before the ingest began, less this (our clock and the one
# that stamped the uploads' creation times), are skipped.
_CLOCK_ALLOWANCE_SECONDS = 60.0
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
    digest: str | None = None  # data set SHA-256 (functions.imports.failed_objects.digest) of a DICOM file

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


@dataclass
class IngestResult:
    uploaded: int
    imported: int  # objects stored as themselves
    failed: list[str]
    skipped: list[str]
    operations: list[dict[str, Any]]
    timed_out: bool = False
    destination: str = ""
    skip_reasons: dict[str, str] = field(default_factory=dict)
    other_events: int = 0
    seconds: float = 0.0
    instances: int = 0  # distinct instances the imported objects make in the store
    failures: list[dict[str, str]] = field(default_factory=list)  # {"object", "reason", "message"} per failed
    undecided: list[dict[str, str]] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # still in flight at the timeout

    @property
    def ok(self) -> bool:
        return not self.failed and not self.undecided and not self.pending and not self.timed_out

    @property
    def nothing_to_import(self) -> bool:
        return self.uploaded == len(self.skipped)

    def to_json(self) -> dict[str, Any]:
        """The `--json` answer. uploaded = imported + failed + undecided + pending + skipped."""
        return {
            "uploaded": self.uploaded,
            "imported": self.imported,
            "instances": self.instances,
            "failed": list(self.failed),
            "failures": list(self.failures),
            "undecided": list(self.undecided),
            "pending": list(self.pending),
            "skipped": list(self.skipped),
            "operations": list(self.operations),
        }


def exit_code(result: IngestResult, *, strict: bool = False) -> int:
    """The command's exit status (see the module docstring)."""
    if result.failed or result.undecided:
        return EXIT_FAILED
    if result.pending or result.timed_out:
        return EXIT_PENDING
    if strict and result.nothing_to_import:
        return EXIT_NOTHING
    return EXIT_OK


def warnings_for(result: IngestResult) -> list[str]:
    """What a user should hear about even when nothing failed."""
    if result.nothing_to_import:
        return [f"warning: nothing to import: all {result.uploaded} files were skipped (ignored by design)"
                if result.uploaded else "warning: nothing to import: the folder holds no files"]
    return []


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
        with path.open("rb") as file:
            head = file.read(HEADER_LIMIT)  # the header, however large the file
        return read_uids(head, complete=len(head) < HEADER_LIMIT)
    except OSError:
        return None


def local_digest(path: Path) -> str | None:
    """The file's data set digest, compared with the stored instance's; None if unreadable."""
    try:
        with path.open("rb") as file:
            return digest(iter(lambda: file.read(1024 * 1024), b""), _COMPARE_LIMIT)
    except OSError:
        return None


def event_belongs(event: dict[str, Any], store: str, objects: Sequence[UploadedObject],
                  staging_buckets: Collection[str]) -> bool:
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
    if bucket in staging_buckets:
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
    distinct = f" ({result.instances} distinct)" if result.instances and result.instances != result.imported else ""
    lines = [aligned("uploaded", f"{result.uploaded} objects to {result.destination}"),
             aligned("imported", f"{result.imported} instances stored{distinct}")]
    lines.append(aligned("skipped", f"{len(result.skipped)} objects (ignored by design)"))
    lines.extend(_listed(result.skipped, result.skip_reasons))
    if result.failed:
        lines.append(aligned("failed", f"{len(result.failed)} objects not imported"))
        lines.extend(_listed(result.failed, {f["object"]: f["reason"] for f in result.failures}))
    if result.undecided:
        lines.append(aligned("undecided", f"{len(result.undecided)} objects whose fate is unknown"))
        lines.extend(_listed([u["object"] for u in result.undecided],
                             {u["object"]: u["reason"] for u in result.undecided}))
    if result.pending:
        lines.append(aligned("pending", f"{len(result.pending)} objects still in flight at the timeout"))
        lines.extend(_listed(result.pending, {}))
    lines.append(aligned("events", f"{len(result.operations)} import completion events"
                         + (f" ({result.other_events} others ignored)" if result.other_events else "")))
    verdict = ("with failures" if result.failed or result.undecided else
               "timed out" if result.timed_out else
               "nothing to import" if result.nothing_to_import else "all imported")
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
        uids = None if reason else local_uids(path)
        return UploadedObject(path=path, name=name, bucket=cloud.upload_bucket, generation=generation,
                              size=size, skip_reason=reason, uids=uids, digest=local_digest(path) if uids else None)

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
        self.healthcare = HealthcareClient(settings)
        self.expected = expected
        self.unseen = {object_key(o.bucket, o.name, o.generation): o for o in expected}
        self.since = time.time() - _CLOCK_ALLOWANCE_SECONDS
        self.seen_files: dict[tuple[str, int], frozenset[str]] = {}  # (name, generation) -> keys
        self.stored: set[str] = set()  # stored as themselves
        self.other_content: set[str] = set()  # their UIDs are stored with other content
        self.failures: dict[str, dict[str, str]] = {}  # uri -> {"object", "reason", "message"}
        self.undecided: dict[str, dict[str, str]] = {}
        self.events: list[dict[str, Any]] = []
        self.event_ids: set[str] = set()
        self.other_events = 0
        self.on_event = on_event

    def take_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if not event_belongs(event, self.cloud.dicom_store, self.expected,
                                 {self.cloud.state_bucket, self.s.staging}):
                self.other_events += 1
                continue
            if event.get("eventId") in self.event_ids:
                continue  # at-least-once delivery: the same event again
            self.event_ids.add(str(event.get("eventId")))
            self.events.append(event)
            reasons = {f.get("object"): f for f in event.get("failures") or []}
            for uri in event.get("failedObjects") or []:
                self.failures[uri] = reasons.get(uri) or {"object": uri, "reason": "", "message": ""}
            for fate in event.get("undecidedObjects") or []:
                self.undecided[str(fate.get("object"))] = fate
            self.on_event(event)

    def check_seen(self) -> None:
        if not self.unseen:
            return
        found = {entry.key for info in self.gcs.list(self.s.state_bucket, self.s.state_path("windows/"))
                 for entry in window_records.parse(info.metadata) or []}
        root = self.s.state_path("seen/")
        for info in self.gcs.list(self.s.state_bucket, root):
            # Only windows that close after this ingest began can hold its objects.
            window = info.name[len(root):].removesuffix(".json")
            if not is_window_id(window) or window_close(window, self.s.debounce_seconds) < self.since:
                continue
            if (info.name, info.generation) not in self.seen_files:
                self.seen_files[(info.name, info.generation)] = read_seen(self.gcs, self.s.state_bucket,
                                                                          info.name).keys
            found |= self.seen_files[(info.name, info.generation)]
        for key in [k for k in self.unseen if k in found]:
            del self.unseen[key]

    def check_store(self, pool: ThreadPoolExecutor) -> None:
        todo = [o for o in self.expected
                if o.uri not in self.stored and o.uri not in self.other_content and o.uids is not None]
        for obj, outcome in zip(todo, pool.map(self._stored_as_itself, todo), strict=True):
            if outcome is True:
                self.stored.add(obj.uri)
            elif outcome is False:
                self.other_content.add(obj.uri)  # the store never replaces an instance: final

    def _stored_as_itself(self, obj: UploadedObject) -> bool | None:
        """True: the store holds this file's instance; False: its UIDs with other content; None: neither yet."""
        assert obj.uids is not None
        if not self.cloud.instance_stored(*obj.uids):
            return None
        theirs = digest(self.healthcare.retrieve_instance(*obj.uids), _COMPARE_LIMIT)
        return theirs is not None and theirs == obj.digest

    def quiet(self) -> bool:
        return not import_work_left(self.gcs, self.s)

    @property
    def accounted(self) -> int:
        named = set(self.failures) | set(self.undecided)
        return len(self.stored) + len({o.uri for o in self.expected} & named - self.stored)


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
    skipped = [o for o in objects if o.skip_reason is not None]
    outcomes = outcomes_of(expected, waiter, timed_out=timed_out)
    return IngestResult(
        uploaded=len(objects),
        imported=len(waiter.stored),
        failed=[f["object"] for f in outcomes["failed"]],
        skipped=[o.uri for o in skipped],
        operations=waiter.events,
        timed_out=timed_out,
        destination=f"gs://{cloud.upload_bucket}/{object_name(prefix, '')}",
        skip_reasons={o.uri: str(o.skip_reason) for o in skipped},
        other_events=waiter.other_events,
        seconds=time.monotonic() - started,
        instances=len({o.uids for o in expected if o.uri in waiter.stored}),
        failures=outcomes["failed"],
        undecided=outcomes["undecided"],
        pending=[f["object"] for f in outcomes["pending"]],
    )


def outcomes_of(expected: Sequence[UploadedObject], waiter: _Waiter, *,
                timed_out: bool) -> dict[str, list[dict[str, str]]]:
    """Each expected object that is not stored as itself: failed, undecided or pending, in upload order."""
    out: dict[str, list[dict[str, str]]] = {"failed": [], "undecided": [], "pending": []}
    for obj in expected:
        if obj.uri in waiter.stored:
            continue
        if obj.uri in waiter.failures:
            out["failed"].append(waiter.failures[obj.uri])
        elif obj.uri in waiter.undecided:
            out["undecided"].append(waiter.undecided[obj.uri])
        elif timed_out:
            out["pending"].append({"object": obj.uri, "reason": "", "message": ""})
        else:
            # The work is done, yet no event names it and the store does not hold it as itself.
            out["undecided"].append({"object": obj.uri, "reason": "UNACCOUNTED",
                                     "message": "not stored as itself and named by no completion event"})
    return out


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
