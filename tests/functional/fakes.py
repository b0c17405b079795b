"""In-memory fakes of the three clients (functions.gcp.clients), with the semantics the protocol needs.

- `FakeObjectStore`: Cloud Storage objects with generations; create-if-absent, compare-and-swap
  replace and delete answer like `ifGenerationMatch` (None / False for a 412); listings are
  ordered by name, with prefix, delimiter (non-recursive), max_results, metadata and
  timeCreated; `copy` and `download` of a generation that is gone raise NotFound. Its behaviour
  is held against fake-gcs-server by tests/integration/test_object_store_contract.py.
- `FakeHealthcare`: imports and exports are operations that run until the test finishes them
  (`finish`, `finish_all`). An import resolves its `gcsSource.uri` when it starts (the emulator's
  own wildcard rules), and on finishing reads each object: Part 10 bytes land (pydicom reads the
  UIDs), anything else counts as a failure. It keeps what the test asks about: how often each
  instance was imported, how many operations ran at once.
- `FakePublisher`: the published completion events, decoded.
- `FakeBigQuery`: `SqlRunner` over a fixed table of rows: the test says which columns and rows a
  query returns (or which error it raises), and it counts how many rows were read.

Every call goes through `Faults` (tests/functional/faults.py) before and after it takes effect,
and, when given, `CloudConditions` (tests/functional/cloud_limits.py): the time calls take and
Cloud Storage's request limits.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from sortedcontainers import SortedList

from functions.core.errors import PermanentApiError, api_error
from functions.core.sql_gate import DryRun, TableRef
from functions.gcp.clients import ObjectInfo, QueryResult, Record
from tests.functional.faults import Faults

if TYPE_CHECKING:
    from tests.functional.cloud_limits import CloudConditions

Clock = Callable[[], float]


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Object:
    data: bytes
    generation: int
    time_created: float
    metadata: dict[str, str]


class FakeObjectStore:
    """Buckets spring into existence on first use."""

    def __init__(self, clock: Clock, faults: Faults, conditions: CloudConditions | None = None) -> None:
        self._clock = clock
        self._faults = faults
        self.conditions = conditions
        self._lock = threading.RLock()
        self._buckets: dict[str, dict[str, _Object]] = {}
        # Names in order per bucket: a listing walks its prefix only, never sorts the bucket.
        self._sorted: dict[str, SortedList] = {}
        self._generations = itertools.count(1_700_000_000_000_001)
        self.writes: Counter[str] = Counter()  # object name -> successful writes and deletes
        # object name -> the metadata of its last write, deleted objects too; None: not kept (the bench)
        self.written_metadata: dict[str, dict[str, str]] | None = None

    # -- helpers for tests -------------------------------------------------------------------
    def put(self, bucket: str, name: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """An upload by a user (no fault injection): the new generation."""
        with self._lock:
            obj = self._store(bucket, name, data, metadata)
        return ObjectInfo(name, obj.generation, len(data), dict(obj.metadata), obj.time_created)

    def names(self, bucket: str, prefix: str = "") -> builtins.list[str]:
        with self._lock:
            return builtins.list(self._names_from(bucket, prefix))

    def json(self, bucket: str, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(json.loads(self._buckets[bucket][name].data))

    def peek(self, bucket: str, name: str, generation: int | None = None) -> bytes | None:
        """The bytes (of `generation`, when given) or None; for the other fakes, no fault injection."""
        with self._lock:
            obj = self._buckets.get(bucket, {}).get(name)
            if obj is None or (generation is not None and obj.generation != generation):
                return None
            return obj.data

    def get(self, bucket: str, name: str) -> ObjectInfo | None:
        with self._lock:
            obj = self._buckets.get(bucket, {}).get(name)
            if obj is None:
                return None
            return ObjectInfo(name, obj.generation, len(obj.data), dict(obj.metadata), obj.time_created)

    # -- ObjectStore -------------------------------------------------------------------------
    def create(self, bucket: str, name: str, data: dict[str, Any] | bytes | str,
               metadata: dict[str, str] | None = None) -> int | None:
        with self._call("create", name, bucket):
            if name in self._objects(bucket):
                return None
            return self._store(bucket, name, _encode(data), metadata).generation

    def read(self, bucket: str, name: str) -> Record | None:
        with self._call("read", name, bucket):
            obj = self._objects(bucket).get(name)
            return None if obj is None else Record(json.loads(obj.data), obj.generation)

    def replace(self, bucket: str, name: str, data: dict[str, Any], generation: int) -> int | None:
        with self._call("replace", name, bucket):
            obj = self._objects(bucket).get(name)
            if obj is None or obj.generation != generation:
                return None
            return self._store(bucket, name, _encode(data), None).generation

    def write(self, bucket: str, name: str, data: dict[str, Any] | bytes | str) -> None:
        with self._call("write", name, bucket):
            self._store(bucket, name, _encode(data), None)

    def delete(self, bucket: str, name: str, generation: int | None = None) -> bool:
        with self._call("delete", name, bucket):
            objects = self._objects(bucket)
            obj = objects.get(name)
            if obj is None or (generation is not None and obj.generation != generation):
                return False
            del objects[name]
            self._index(bucket).remove(name)
            self.writes[name] += 1
            if self.conditions is not None:
                self.conditions.wrote(bucket, name)
            return True

    def list(self, bucket: str, prefix: str, *, recursive: bool = True,
             max_results: int | None = None) -> Iterator[ObjectInfo]:
        with self._call("list", prefix, bucket):
            objects = self._objects(bucket)
            found = []
            for name in self._names_from(bucket, prefix, recursive=recursive):
                obj = objects[name]
                found.append(ObjectInfo(name, obj.generation, len(obj.data), dict(obj.metadata), obj.time_created))
                if max_results is not None and len(found) >= max_results:
                    break
        if self.conditions is not None:
            self.conditions.paged("store", "list", len(found))
        return iter(found)

    def list_prefixes(self, bucket: str, prefix: str) -> builtins.list[str]:
        with self._call("list_prefixes", prefix, bucket):
            folders = builtins.list(self._folders(bucket, prefix))
        if self.conditions is not None:
            self.conditions.paged("store", "list_prefixes", len(folders))
        return folders

    def copy(self, src_bucket: str, src_name: str, generation: int, dst_bucket: str, dst_name: str) -> None:
        with self._call("copy", dst_name, dst_bucket):
            source = self._objects(src_bucket).get(src_name)
            if source is None or source.generation != generation:
                raise gexc.NotFound(f"gs://{src_bucket}/{src_name}#{generation}")
            self._store(dst_bucket, dst_name, source.data, dict(source.metadata))

    def download(self, bucket: str, name: str, *, generation: int | None = None,
                 start: int = 0, end: int | None = None) -> bytes:
        with self._call("download", name, bucket):
            obj = self._objects(bucket).get(name)
            if obj is None or (generation is not None and obj.generation != generation):
                raise gexc.NotFound(f"gs://{bucket}/{name}")
            return obj.data[start:] if end is None else obj.data[start:end + 1]

    def open_writer(self, bucket: str, name: str, content_type: str = "text/plain") -> Any:
        return _Writer(lambda text: self.write(bucket, name, text.encode()))

    # -- internals ---------------------------------------------------------------------------
    def _objects(self, bucket: str) -> dict[str, _Object]:
        return self._buckets.setdefault(bucket, {})

    def _index(self, bucket: str) -> SortedList:
        return self._sorted.setdefault(bucket, SortedList())

    def _names_from(self, bucket: str, prefix: str, *, recursive: bool = True) -> Iterator[str]:
        """Names under `prefix` in order; not `recursive`: those without a further `/`."""
        index = self._index(bucket)
        position = index.bisect_left(prefix)
        while position < len(index):
            name = index[position]
            if not name.startswith(prefix):
                return
            slash = name.find("/", len(prefix))
            if recursive or slash < 0:
                yield name
                position += 1
            else:  # skip the whole folder
                position = index.bisect_left(name[:slash] + "0")  # "0" follows "/"
        return

    def _folders(self, bucket: str, prefix: str) -> Iterator[str]:
        """The folders (`prefix` + `x/`) right under `prefix`, in order."""
        index = self._index(bucket)
        position = index.bisect_left(prefix)
        while position < len(index):
            name = index[position]
            if not name.startswith(prefix):
                return
            slash = name.find("/", len(prefix))
            if slash < 0:
                position += 1
                continue
            yield name[:slash + 1]
            position = index.bisect_left(name[:slash] + "0")

    def _store(self, bucket: str, name: str, data: bytes, metadata: dict[str, str] | None) -> _Object:
        obj = _Object(data, next(self._generations), self._clock(), dict(metadata or {}))
        objects = self._objects(bucket)
        if name not in objects:
            self._index(bucket).add(name)
        objects[name] = obj
        self.writes[name] += 1
        if self.written_metadata is not None and obj.metadata:
            self.written_metadata[name] = dict(obj.metadata)
        if self.conditions is not None:
            self.conditions.wrote(bucket, name)
        return obj

    def _call(self, method: str, name: str, bucket: str) -> _Checked:
        return _Checked(self._faults, self._lock, "store", method, name, self.conditions, bucket)


class _Checked:
    """Runs the fault checks (and the cloud's conditions) around a call; the call itself holds the
    fake's lock."""

    def __init__(self, faults: Faults, lock: Any, client: str, method: str, name: str,
                 conditions: CloudConditions | None = None, bucket: str = "") -> None:
        self._faults, self._lock, self._client, self._method, self._name = faults, lock, client, method, name
        self._conditions, self._bucket = conditions, bucket

    def __enter__(self) -> None:
        if self._conditions is not None:
            self._conditions.before(self._client, self._method, self._bucket, self._name)
        self._faults.check(self._client, self._method, self._name, "before")
        self._lock.acquire()

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self._lock.release()
        if kind is None:
            if self._conditions is not None and self._method not in ("list", "list_prefixes"):
                self._conditions.counted(self._client, self._method)
            self._faults.check(self._client, self._method, self._name, "after")


class _Writer(io.StringIO):
    def __init__(self, on_close: Callable[[str], None]) -> None:
        super().__init__()
        self._on_close = on_close

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self._on_close(self.getvalue())
        super().__exit__(kind, *rest)


def _encode(data: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(data, dict):
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return data.encode() if isinstance(data, str) else bytes(data)


# -- Healthcare API ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    patient_id: str = ""


@dataclass
class FakeOperation:
    name: str
    kind: str  # import | export | storageClass
    uri: str
    created: float
    objects: list[tuple[str, str, int]] = field(default_factory=list)  # import: bucket, name, generation
    done: bool = False
    ended: float | None = None
    success: int = 0
    failure: int = 0
    error: dict[str, Any] | None = None
    storage_class: str = ""  # storageClass


class FakeHealthcare:
    def __init__(self, store: FakeObjectStore, clock: Clock, dataset: str, faults: Faults,
                 conditions: CloudConditions | None = None) -> None:
        self._store = store
        self.conditions = conditions
        self._clock = clock
        self._dataset = dataset
        self._faults = faults
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.operations: dict[str, FakeOperation] = {}
        self.instances: dict[str, Instance] = {}
        self.blobs: dict[str, bytes] = {}  # SOP instance UID -> the bytes stored for it
        self.imported: Counter[str] = Counter()  # SOP instance UID -> times an import stored it
        self.storage_classes: dict[str, str] = {}  # SOP instance UID -> blob storage class (absent: STANDARD)
        self.max_running = 0

    # -- helpers for tests -------------------------------------------------------------------
    @property
    def running(self) -> builtins.list[FakeOperation]:
        with self._lock:
            return [op for op in self.operations.values() if not op.done]

    def finish(self, name: str, *, error: dict[str, Any] | None = None) -> FakeOperation:
        """Runs the operation to its end now: reads its objects (import) or counts the export."""
        with self._lock:
            op = self.operations[name]
            assert not op.done, f"{name} finished already"
            if op.kind == "import":
                self._run_import(op)
            elif op.kind == "storageClass":
                self._run_storage_class(op)
            else:
                self._run_export(op)
            op.done, op.ended, op.error = True, self._clock(), error
            return op

    def finish_all(self) -> int:
        """Finishes every running operation; how many there were."""
        running = self.running
        for op in running:
            self.finish(op.name)
        return len(running)

    def imports_of(self, sop: str) -> int:
        return self.imported[sop]

    # -- HealthcareApi -----------------------------------------------------------------------
    def import_dicom(self, uri: str, *, storage_class: str | None = None) -> str:
        from localcloud.healthcare.errors import ApiError as EmulatorError
        from localcloud.healthcare.wildcards import parse_source_uri

        with self._call("import_dicom", uri):
            try:
                pattern = parse_source_uri(uri)
            except EmulatorError as exc:
                raise api_error(400, str(exc), status="INVALID_ARGUMENT", resource=uri) from None
            # The LRO lists the bucket as it starts: objects uploaded later are not read.
            matched = self._matching(pattern)
            return self._start("import", uri, matched)

    def export_dicom(self, uri_prefix: str, *, mime_type: str | None = None,
                     filter_uri: str | None = None) -> str:
        with self._call("export_dicom", uri_prefix):
            return self._start("export", filter_uri or "", [])

    def set_blob_storage_settings(self, filter_uri: str | None, storage_class: str) -> str:
        with self._call("set_blob_storage_settings", filter_uri or "(store)"):
            name = self._start("storageClass", filter_uri or "", [])
            self.operations[name].storage_class = storage_class
            return name

    def get_operation(self, name: str) -> dict[str, Any]:
        with self._call("get_operation", name):
            op = self.operations.get(name)
            if op is None:
                raise api_error(404, f"{name} not found", status="NOT_FOUND", resource=name)
            return _operation_json(op)

    def list_operations(self, dataset: str) -> Iterator[dict[str, Any]]:
        with self._call("list_operations", dataset):
            with self._lock:
                listed = [_operation_json(op) for op in self.operations.values()
                          if op.name.startswith(f"{dataset}/operations/")]
        yield from listed

    def search(self, level: str, params: Mapping[str, str]) -> builtins.list[dict[str, Any]]:
        with self._call("search", level):
            if level != "studies":
                raise PermanentApiError(400, f"the fake searches studies only, not {level}")
            wanted = {k: v for k, v in params.items() if k in ("PatientID", "StudyInstanceUID")}
            studies = sorted({i.study for i in self.instances.values()
                              if all(getattr(i, _FIELDS[k]) == v for k, v in wanted.items())})
            offset, limit = int(params.get("offset", 0)), int(params.get("limit", 1000))
            return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in studies[offset:offset + limit]]

    def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        with self._call("instance_exists", sop_uid):
            found = self.instances.get(sop_uid)
            return found is not None and (found.study, found.series) == (study_uid, series_uid)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Iterator[bytes]:
        with self._call("retrieve_instance", sop_uid):
            found = self.instances.get(sop_uid)
            if found is None or (found.study, found.series) != (study_uid, series_uid):
                raise api_error(404, f"instance {sop_uid} not found", status="NOT_FOUND", resource=sop_uid)
            data = self.blobs.get(sop_uid, b"")
        yield data

    # -- internals ---------------------------------------------------------------------------
    def _matching(self, pattern: Any) -> builtins.list[tuple[str, str, int]]:
        matched = []
        for name in self._store.names(pattern.bucket, pattern.literal_prefix):
            info = self._store.get(pattern.bucket, name)
            if info is not None and pattern.matches(name):
                matched.append((pattern.bucket, name, info.generation))
        return matched

    def _start(self, kind: str, uri: str, objects: builtins.list[tuple[str, str, int]]) -> str:
        with self._lock:
            name = f"{self._dataset}/operations/{next(self._ids):06d}"
            self.operations[name] = FakeOperation(name, kind, uri, self._clock(), objects)
            self.max_running = max(self.max_running, len(self.running))
            return name

    def _run_import(self, op: FakeOperation) -> None:
        for bucket, name, generation in op.objects:
            data = self._store.peek(bucket, name, generation)
            instance = _parse(data) if data is not None else None
            if instance is None or self.blobs.get(instance.sop, data) != data:
                op.failure += 1  # not DICOM, or the same SOP Instance UID with different content
                continue
            self.instances[instance.sop] = instance
            self.blobs[instance.sop] = data or b""
            self.imported[instance.sop] += 1
            op.success += 1

    def _run_export(self, op: FakeOperation) -> None:
        op.success = len(self._selected(op))

    def _run_storage_class(self, op: FakeOperation) -> None:
        selected = self._selected(op)
        for instance in selected:
            self.storage_classes[instance.sop] = op.storage_class
        op.success = len(selected)

    def _selected(self, op: FakeOperation) -> builtins.list[Instance]:
        selected = list(self.instances.values())
        if op.uri:  # a filter file: /studies/S[/series/X[/instances/I]] per line
            bucket, _, name = op.uri[len("gs://"):].partition("/")
            lines = (self._store.peek(bucket, name) or b"").decode().split()
            selected = [i for i in selected if any(_selects(line, i) for line in lines)]
        return selected

    def _call(self, method: str, name: str) -> _Checked:
        return _Checked(self._faults, self._lock, "healthcare", method, name, self.conditions)


def _parse(data: bytes) -> Instance | None:
    """The instance a Part 10 byte string holds; None when it is not DICOM."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        return Instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                        str(ds.get("PatientID", "")))
    except (InvalidDicomError, AttributeError, EOFError, ValueError, OSError, KeyError, TypeError):
        return None


_FIELDS = {"PatientID": "patient_id", "StudyInstanceUID": "study"}


def _selects(path: str, instance: Instance) -> bool:
    parts = path.strip("/").split("/")
    wanted = dict(zip(parts[::2], parts[1::2], strict=False))
    return (wanted.get("studies") == instance.study
            and wanted.get("series", instance.series) == instance.series
            and wanted.get("instances", instance.sop) == instance.sop)
_METHODS = {"import": "ImportDicomData", "export": "ExportDicomData", "storageClass": "SetBlobStorageSettings"}


def _operation_json(op: FakeOperation) -> dict[str, Any]:
    """The shape of `operations.get`: int64 counters as strings, zeros left out."""
    counter = {k: str(v) for k, v in (("success", op.success), ("failure", op.failure)) if v}
    metadata: dict[str, Any] = {
        "@type": "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata",
        "apiMethodName": f"google.cloud.healthcare.v1.dicom.DicomService.{_METHODS[op.kind]}",
        "createTime": rfc3339(op.created),
    }
    if counter:
        metadata["counter"] = counter
    body: dict[str, Any] = {"name": op.name, "metadata": metadata}
    if op.done:
        metadata["endTime"] = rfc3339(op.ended or op.created)
        body["done"] = True
        if op.error is not None:
            body["error"] = op.error
        else:
            response = "google.protobuf.Empty" if op.kind == "storageClass" else \
                f"google.cloud.healthcare.v1.dicom.{_METHODS[op.kind]}Response"
            body["response"] = {"@type": f"type.googleapis.com/{response}"}
    return body


# -- Pub/Sub -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    data: dict[str, Any]
    attributes: dict[str, str]

    @property
    def event_id(self) -> str:
        return self.attributes["eventId"]


class FakePublisher:
    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._lock = threading.Lock()
        self.events: builtins.list[Published] = []

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        with _Checked(self._faults, self._lock, "publisher", "publish", attributes.get("eventId", "")):
            self.events.append(Published(json.loads(data), dict(attributes)))
            return str(len(self.events))


# -- BigQuery -----------------------------------------------------------------------------------


class FakeBigQuery:
    """Answers every query with `columns` and `rows` (or raises `error`); records the queries.

    Its dry run answers `dry` (default: a SELECT of `p.dicom_stream.instances`, 1,000 bytes)."""

    def __init__(self, columns: tuple[str, ...] = ("path",), rows: builtins.list[tuple[Any, ...]] | None = None,
                 *, error: Exception | None = None, report_total: bool = True, dry: DryRun | None = None,
                 dry_error: Exception | None = None) -> None:
        self.dry_error = dry_error
        self.dry = dry or DryRun("SELECT", (TableRef("p", "dicom_stream", "instances"),), (), 1000)
        self.dry_runs: builtins.list[str] = []
        self.max_bytes_billed: builtins.list[int] = []
        self.columns = columns
        self.rows = rows or []
        self.error = error
        self.report_total = report_total  # False: like a result whose row count is not known up front
        self.queries: builtins.list[str] = []
        self.rows_read = 0

    def dry_run(self, sql: str) -> DryRun:
        self.dry_runs.append(sql)
        if self.dry_error is not None:
            raise self.dry_error
        return self.dry

    def run_query(self, sql: str, *, timeout_seconds: float, max_bytes_billed: int) -> QueryResult:
        self.queries.append(sql)
        self.max_bytes_billed.append(max_bytes_billed)
        if self.error is not None:
            raise self.error
        return QueryResult(columns=self.columns, total_rows=len(self.rows) if self.report_total else None,
                           rows=self._stream())

    def _stream(self) -> Iterator[tuple[Any, ...]]:
        for row in self.rows:
            self.rows_read += 1
            yield row
