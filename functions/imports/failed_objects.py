"""The fate of each object of a finished import: landed, failed (with a reason) or undecided.

The API reports only counts (`metadata.counter`); its per-file errors go to Cloud Logging, which
may hold only a sample of them and can be excluded, so they cannot account for every object
(decision 0720). So each object of the job's manifest is judged here:

1. Its header is read with bounded range reads (at most `HEADER_LIMIT` bytes, however large
   the object): no DICM prefix is NOT_DICOM; a Part 10 file whose study, series and SOP Instance
   UIDs cannot be read is UNPARSEABLE.
2. The store is asked for its instance (QIDO on the three UIDs). Not there: the API refused it;
   UNPARSEABLE when our own parser cannot read all of its header either, else NOT_STORED.
3. The store holds an instance with its UIDs. That is this object's only if the content is the
   same: the object landed when the API's failure counter is already explained by steps 1-2 (no
   read at all), else its data set (everything after the file meta group, which the store may
   rewrite) is compared by SHA-256 with the stored instance's, both streamed. Different content
   is UID_CONFLICT.

What cannot be told (the object is gone, the store did not answer, the content is larger than
`COMPARE_LIMIT`, or the comparison contradicts the API's counter) is *undecided*: named as such,
never counted as landed. UIDs are used for lookups only and never logged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from functions.core.errors import ApiError
from functions.gcp.clients import HealthcareApi, ObjectStore
from functions.imports.run_budget import RunBudget, unlimited
from functions.log import fields

logger = logging.getLogger(__name__)
# pydicom logs every invalid value it reads, the value included (a name, an id): none of it may
# reach the function's logs. Its warnings are silenced where files are parsed (below).
logging.getLogger("pydicom").disabled = True

LANDED = "landed"
FAILED = "failed"
UNDECIDED = "undecided"

# Why an object did not land: the reason codes of completion events and receipts.
NOT_DICOM = "NOT_DICOM"
UNPARSEABLE = "UNPARSEABLE"
UID_CONFLICT = "UID_CONFLICT"
NOT_STORED = "NOT_STORED"
# Why an object's fate is undecided.
UNREADABLE = "UNREADABLE"
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
TOO_LARGE = "TOO_LARGE"
COUNTER_MISMATCH = "COUNTER_MISMATCH"

HEADER_LIMIT = 4 * 1024 * 1024  # bytes of an object's beginning read at most to find its UIDs
COMPARE_LIMIT = 512 * 1024 * 1024  # bytes of an object (and of the stored instance) compared at most
_FIRST_READ = 64 * 1024
_CHUNK = 8 * 1024 * 1024
_THREADS = 8
# Objects judged per unit of a poller run's budget (decision 0775): about 30 s at x5 latency on
# `_THREADS` threads, so a run that starts one near its deadline still ends in time.
CHUNK = 256
_PROBE_CHUNK = "a chunk of objects to probe"
_COMPARE_CHUNK = "a chunk of objects to compare"

MESSAGES = {
    NOT_DICOM: "not a DICOM Part 10 file (no DICM prefix); upload a DICOM file under this name and redrive",
    UNPARSEABLE: "a DICOM file whose attributes cannot be read, or without study, series or SOP Instance UID; "
                 "fix the file and redrive",
    UID_CONFLICT: "the store holds an instance with this file's study, series and SOP Instance UIDs and different "
                  "content; delete the stored instance and redrive, or give the file new UIDs",
    NOT_STORED: "a readable DICOM file the API did not store; the operation's log entries (logsUrl) say why; "
                "fix the cause and redrive",
    UNREADABLE: "the object could not be read from Cloud Storage (gone or unavailable); its fate is unknown",
    STORE_UNAVAILABLE: "the DICOM store could not be asked whether it holds this object; its fate is unknown",
    TOO_LARGE: "the object is too large to check against the store; its fate is unknown",
    COUNTER_MISMATCH: "its content differs from the stored instance with its UIDs, but the API counted fewer "
                      "failures than that; its fate is unknown",
}


@dataclass(frozen=True)
class Fate:
    """What became of one object of a job."""

    uri: str
    outcome: str  # LANDED | FAILED | UNDECIDED
    reason: str | None = None  # a MESSAGES key; None when landed
    held: bool = False  # a redrive did not import it again: its reason still held

    def to_dict(self) -> dict[str, str]:
        reason = self.reason or ""
        return {"object": self.uri, "reason": reason, "message": MESSAGES.get(reason, "")}


@dataclass(frozen=True)
class Accounting:
    """Every object of a job, each with its fate, in manifest order."""

    fates: list[Fate] = field(default_factory=list)

    @property
    def objects(self) -> int:
        return len(self.fates)

    @property
    def landed(self) -> int:
        return sum(1 for f in self.fates if f.outcome == LANDED)

    @property
    def failed(self) -> list[Fate]:
        return [f for f in self.fates if f.outcome == FAILED]

    @property
    def undecided(self) -> list[Fate]:
        return [f for f in self.fates if f.outcome == UNDECIDED]

    @property
    def held_back(self) -> int:
        return sum(1 for f in self.fates if f.held)


_CANDIDATE, _CANDIDATE_UNREADABLE = "C", "c"  # stored instance found; its content not compared yet
_CODES = {LANDED: "L", FAILED: "F", UNDECIDED: "U"}
_OUTCOMES = {code: outcome for outcome, code in _CODES.items()}


def _code(fate: Fate) -> str:
    return ("H" if fate.held else _CODES[fate.outcome]) + (f":{fate.reason}" if fate.reason else "")


def _fate(uri: str, code: str) -> Fate:
    letter, _, reason = code.partition(":")
    if letter == "H":
        return Fate(uri, FAILED, reason, held=True)
    return Fate(uri, _OUTCOMES[letter], reason or None)


@dataclass
class Progress:
    """How far the accounting of one job's objects got, so that it can go on in a later run: a code
    per object probed (steps 1-2), in manifest order, and one per candidate compared (step 3), in
    the same order. Codes name outcomes and reasons only, never an object's UIDs."""

    objects: int  # the job's objects: a progress of another count is stale
    probed: list[str] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any], objects: int) -> Progress:
        if data.get("objects") != objects:
            return cls(objects)
        return cls(objects, [str(c) for c in data.get("probed", [])], [str(c) for c in data.get("compared", [])])

    def to_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "probed": self.probed, "compared": self.compared}

    def candidates(self) -> int:
        return sum(1 for c in self.probed if c in (_CANDIDATE, _CANDIDATE_UNREADABLE))

    def named_failures(self) -> int:
        """Objects found failed by their own bytes or the store's answer (not held back by a redrive)."""
        return sum(1 for c in self.probed if c.startswith("F:"))

    def needs_comparing(self, api_failures: int | None) -> bool:
        """Step 3 is needed unless the API's failures are all named already (then every stored
        candidate is its own instance)."""
        return not (api_failures is not None and self.named_failures() >= api_failures)

    def done(self, api_failures: int | None) -> bool:
        if len(self.probed) < self.objects:
            return False
        return not self.needs_comparing(api_failures) or len(self.compared) >= self.candidates()

    def accounting(self, uris: Sequence[str], api_failures: int | None) -> Accounting:
        """The fates of a finished progress, in manifest order."""
        assert self.done(api_failures) and len(uris) == self.objects
        compare = self.needs_comparing(api_failures)
        unexplained = None if api_failures is None else api_failures - self.named_failures()
        conflicts = sum(1 for c in self.compared if c in (f"F:{UID_CONFLICT}", f"F:{UNPARSEABLE}"))
        # More differ than the API says failed: the comparison cannot be trusted for them.
        mistrusted = unexplained is not None and conflicts > unexplained
        fates, compared = [], iter(self.compared)
        for uri, code in zip(uris, self.probed, strict=True):
            if code in (_CANDIDATE, _CANDIDATE_UNREADABLE):
                code = next(compared) if compare else "L"
                if mistrusted and code in (f"F:{UID_CONFLICT}", f"F:{UNPARSEABLE}"):
                    code = f"U:{COUNTER_MISMATCH}"
            fates.append(_fate(uri, code))
        return Accounting(fates)


class KeptProgress:
    """A progress kept in the state bucket between poller runs (`accounting/{operation}.json`). It
    is written on the generation read, so that of two overlapping runs only one goes on; a
    progress finished within one run is never written."""

    def __init__(self, gcs: ObjectStore, bucket: str, path: str, objects: int, api_failures: int | None) -> None:
        self._gcs, self._bucket, self._path, self._api_failures = gcs, bucket, path, api_failures
        record = gcs.read(bucket, path)
        self.progress = Progress.from_json(record.data, objects) if record else Progress(objects)
        self._generation = record.generation if record else None

    def save(self, progress: Progress) -> bool:
        """Whether this run may go on (False: another run wrote it since)."""
        if self._generation is None:
            if progress.done(self._api_failures):
                return True
            self._generation = self._gcs.create(self._bucket, self._path, progress.to_json())
        else:
            self._generation = self._gcs.replace(self._bucket, self._path, progress.to_json(), self._generation)
        return self._generation is not None


# --- pure parts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What an object's first bytes say: its UIDs, or a reason (NOT_DICOM, UNPARSEABLE), or that
    more bytes are needed to tell."""

    uids: tuple[str, str, str] | None = None
    reason: str | None = None
    need_more: bool = False


def read_header(data: bytes, *, complete: bool) -> Header:
    """Judges an object's first bytes (`complete`: they are the whole object)."""
    if len(data) < 132:
        return Header(need_more=True) if not complete else Header(reason=NOT_DICOM)
    if data[128:132] != b"DICM":
        return Header(reason=NOT_DICOM)
    uids = read_uids(data, complete=complete)
    if uids is not None:
        return Header(uids=uids)
    return Header(reason=UNPARSEABLE) if complete else Header(need_more=True)


_LAST_UID_TAG = 0x0020000E  # SeriesInstanceUID: the last of the three in tag order


class _Prefix(io.BytesIO):
    """The beginning of a longer object: a read that runs past it raises instead of coming back
    short (pydicom would take a cut value for the whole one)."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size > 0 and len(data) < size:
            raise EOFError("the read beginning of the object ends here")
        return data


def read_uids(data: bytes, *, complete: bool = True) -> tuple[str, str, str] | None:
    """(study, series, instance) UIDs of a DICOM Part 10 byte string; None if they cannot be read
    from it. With `complete=False`, `data` is the beginning of a longer object: UIDs are returned
    only when they end inside it."""
    from pydicom.filereader import read_partial  # lazy: only the poller's accounting needs it

    def past_uids(tag: int, _vr: str | None, _length: int) -> bool:
        return tag > _LAST_UID_TAG

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid values are judged elsewhere
            dataset = read_partial(io.BytesIO(data) if complete else _Prefix(data), stop_when=past_uids,
                                   defer_size=1024,
                                   specific_tags=[0x0020000D, 0x0020000E, 0x00080018])
            uids = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                    str(dataset.SOPInstanceUID))
    except Exception:  # noqa: BLE001 - any parser failure means "cannot be read from these bytes"
        return None
    return uids if all(uids) else None


_NUMBERS = {"IS": re.compile(r"[+-]?[0-9]+"),
            "DS": re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")}


def attributes_readable(data: bytes) -> bool:
    """Whether the elements before the pixel data parse, and every number string (IS, DS) is a
    number: our view of "parseable", which a store that indexes attributes needs. `data` is the
    object's beginning."""
    from pydicom import dcmread
    from pydicom.multival import MultiValue

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on invalid values; they are judged here
            dataset = dcmread(io.BytesIO(data), stop_before_pixels=True)
            for element in dataset.iterall():
                pattern = _NUMBERS.get(str(element.VR))
                value = element.value
                if pattern is None or value is None or value == "":
                    continue
                values = value if isinstance(value, MultiValue) else [value]
                texts = [str(getattr(v, "original_string", None) or v).strip() for v in values]
                if not all(pattern.fullmatch(t) for t in texts if t):
                    return False
    except Exception:  # noqa: BLE001 - a bad VR, length or structure
        return False
    return True


class DatasetDigest:
    """SHA-256 of a Part 10 stream's data set: the bytes after the file meta group (which the
    store may rewrite). A stream without a readable file meta group length is hashed whole."""

    _HEAD = 144  # preamble, DICM, and the (0002,0000) element in explicit VR little endian

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._head = b""
        self._skip: int | None = None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._skip is None:
            self._head += chunk
            if len(self._head) < self._HEAD:
                return
            chunk, self._head = self._head, b""
            self._skip = _meta_end(chunk)
        if self._skip:
            taken = min(self._skip, len(chunk))
            self._skip -= taken
            chunk = chunk[taken:]
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        if self._skip is None:  # shorter than a file meta group: hash what there is
            return hashlib.sha256(self._head).hexdigest()
        return self._hash.hexdigest()


def _meta_end(head: bytes) -> int:
    """Where the data set starts (0: hash everything) from the first 144 bytes."""
    if head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL" or head[138:140] != b"\x04\x00":
        return 0
    return 144 + int(struct.unpack_from("<I", head, 140)[0])


def digest(chunks: Iterable[bytes], limit: int) -> str | None:
    """The data set digest of a stream; None when it is longer than `limit` bytes."""
    hasher = DatasetDigest()
    for chunk in chunks:
        hasher.update(chunk)
        if hasher.size > limit:
            return None
    return hasher.hexdigest()


# --- I/O -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    uri: str  # as the manifest names it (the user's object)
    bucket: str
    name: str
    generation: int | None


@dataclass
class _Probe:
    source: _Source
    fate: Fate | None = None  # decided without the store's content
    uids: tuple[str, str, str] | None = None
    readable: bool = True  # attributes_readable of its header


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name


def _source(entry: dict[str, Any]) -> _Source:
    # Read the staged copy when there is one: the original may have been replaced since.
    staged = entry.get("staged")
    bucket, name = _split(str(staged or entry["uri"]))
    generation = None if staged else int(entry.get("generation") or 0) or None
    return _Source(str(entry["uri"]), bucket, name, generation)


class FailedObjectFinder:
    """Judges a job's objects against the store (see the module docstring)."""

    def __init__(self, gcs: ObjectStore, healthcare: HealthcareApi, *, header_limit: int = HEADER_LIMIT,
                 compare_limit: int = COMPARE_LIMIT) -> None:
        self._gcs = gcs
        self._hc = healthcare
        self._header_limit = header_limit
        self._compare_limit = compare_limit

    def account(self, entries: Sequence[dict[str, Any]], *, api_failures: int | None) -> Accounting:
        """The fate of every manifest entry, in manifest order.

        `api_failures` is the operation's `counter.failure` when its counters cover every object
        (success + failure = the objects imported), None otherwise. Entries with a `held` reason were not
        imported (a redrive held them back) and fail with it.
        """
        progress = self.account_within(entries, api_failures=api_failures, progress=Progress(len(entries)),
                                       budget=unlimited(lambda: 0.0))
        return progress.accounting([str(e["uri"]) for e in entries], api_failures)

    def account_within(self, entries: Sequence[dict[str, Any]], *, api_failures: int | None, progress: Progress,
                       budget: RunBudget, save: Callable[[Progress], bool] = lambda _: True) -> Progress:
        """Goes on with `progress` a chunk of `CHUNK` objects at a time while `budget` allows, and
        hands each chunk's progress to `save` (which answers False when another run got further:
        then this one stops). The progress is `done` when every object is judged."""
        uids: dict[int, tuple[str, str, str]] = {}  # entry index -> UIDs, found by this call's probes
        while len(progress.probed) < len(entries):
            if not budget.allows(_PROBE_CHUNK):
                return progress
            began, first = budget.clock(), len(progress.probed)
            chunk = entries[first:first + budget.take(CHUNK)]
            with ThreadPoolExecutor(max_workers=_THREADS) as pool:
                probes = list(pool.map(self._probe, chunk))
            for index, probe in enumerate(probes, start=first):
                if probe.fate is not None:
                    progress.probed.append(_code(probe.fate))
                else:
                    progress.probed.append(_CANDIDATE if probe.readable else _CANDIDATE_UNREADABLE)
                    uids[index] = probe.uids  # type: ignore[assignment]
            budget.spent(_PROBE_CHUNK, budget.clock() - began, len(chunk))
            if not save(progress):
                return progress
        if not progress.needs_comparing(api_failures):
            return progress
        candidates = [i for i, c in enumerate(progress.probed) if c in (_CANDIDATE, _CANDIDATE_UNREADABLE)]
        while len(progress.compared) < len(candidates):
            if not budget.allows(_COMPARE_CHUNK):
                return progress
            began, first = budget.clock(), len(progress.compared)
            indices = candidates[first:first + budget.take(CHUNK)]
            probes = [_Probe(_source(entries[i]), uids=uids.get(i), readable=progress.probed[i] == _CANDIDATE)
                      for i in indices]
            self._compare(probes)
            progress.compared.extend(_code(p.fate or Fate(p.source.uri, UNDECIDED, UNREADABLE)) for p in probes)
            budget.spent(_COMPARE_CHUNK, budget.clock() - began, len(indices))
            if not save(progress):
                return progress
        return progress

    # -- steps 1 and 2 ---------------------------------------------------------------------------
    def _probe(self, entry: dict[str, Any]) -> _Probe:
        source = _source(entry)
        held = entry.get("held")
        if isinstance(held, str) and held in MESSAGES:
            return _Probe(source, Fate(source.uri, FAILED, held, held=True))
        try:
            header, data = self._header(source)
        except Exception as exc:  # gone or unreadable: nothing can be said about it
            logger.warning("could not read an object of an import", extra=fields(object=source.uri,
                                                                                error=type(exc).__name__))
            return _Probe(source, Fate(source.uri, UNDECIDED, UNREADABLE))
        if header.need_more:
            return _Probe(source, Fate(source.uri, UNDECIDED, TOO_LARGE))
        if header.reason is not None:
            return _Probe(source, Fate(source.uri, FAILED, header.reason))
        assert header.uids is not None
        try:
            stored = self._hc.instance_exists(*header.uids)
        except Exception as exc:
            logger.warning("could not ask the store about an object", extra=fields(object=source.uri,
                                                                                  error=type(exc).__name__))
            return _Probe(source, Fate(source.uri, UNDECIDED, STORE_UNAVAILABLE))
        readable = attributes_readable(data)
        if not stored:
            return _Probe(source, Fate(source.uri, FAILED, NOT_STORED if readable else UNPARSEABLE))
        return _Probe(source, uids=header.uids, readable=readable)

    def _header(self, source: _Source) -> tuple[Header, bytes]:
        """Reads a growing beginning of the object (64 KiB, then x4) until it tells, at most
        `header_limit` bytes: a multi-gigabyte object costs no more than that."""
        wanted = min(_FIRST_READ, self._header_limit)
        while True:
            data = self._gcs.download(source.bucket, source.name, generation=source.generation, end=wanted - 1)
            complete = len(data) < wanted
            header = read_header(data, complete=complete)
            if not header.need_more or complete or wanted >= self._header_limit:
                return header, data
            wanted = min(wanted * 4, self._header_limit)

    # -- step 3 ----------------------------------------------------------------------------------
    def _compare(self, candidates: list[_Probe]) -> None:
        """Sets each candidate's fate. A candidate probed in an earlier run has no UIDs here: its
        header is read again for them (its UIDs are never stored)."""
        stored_digests: dict[tuple[str, str, str], str | None | Exception] = {}

        def stored(uids: tuple[str, str, str]) -> str | None | Exception:
            if uids not in stored_digests:
                try:
                    stored_digests[uids] = digest(self._hc.retrieve_instance(*uids), self._compare_limit)
                except Exception as exc:  # noqa: BLE001 - judged below as undecided
                    stored_digests[uids] = exc
            return stored_digests[uids]

        def judge(probe: _Probe) -> Fate:
            uri = probe.source.uri
            try:
                mine = digest(self._chunks(probe.source), self._compare_limit)
            except Exception as exc:
                logger.warning("could not read an object of an import", extra=fields(object=uri,
                                                                                    error=type(exc).__name__))
                return Fate(uri, UNDECIDED, UNREADABLE)
            theirs = stored(probe.uids)  # type: ignore[arg-type]
            if isinstance(theirs, ApiError) and theirs.status_code == 404:
                return Fate(uri, FAILED, NOT_STORED)  # deleted since step 2
            if isinstance(theirs, Exception):
                return Fate(uri, UNDECIDED, STORE_UNAVAILABLE)
            if mine is None or theirs is None:
                return Fate(uri, UNDECIDED, TOO_LARGE)
            if mine == theirs:
                return Fate(uri, LANDED)
            # A file that is not parseable would fail under any UIDs: that is the reason to fix first.
            return Fate(uri, FAILED, UID_CONFLICT if probe.readable else UNPARSEABLE)

        def find_uids(probe: _Probe) -> None:
            if probe.uids is not None:
                return
            try:
                probe.uids = self._header(probe.source)[0].uids
            except Exception as exc:
                logger.warning("could not read an object of an import", extra=fields(object=probe.source.uri,
                                                                                    error=type(exc).__name__))
            if probe.uids is None:  # gone, or replaced by other bytes since it was probed
                probe.fate = Fate(probe.source.uri, UNDECIDED, UNREADABLE)

        if any(p.uids is None for p in candidates):
            with ThreadPoolExecutor(max_workers=_THREADS) as pool:
                list(pool.map(find_uids, candidates))
        # Per UID triple in turn (its digest is read once), objects of different triples at once.
        by_uids: dict[tuple[str, str, str], list[_Probe]] = {}
        for probe in candidates:
            if probe.fate is None:
                by_uids.setdefault(probe.uids, []).append(probe)  # type: ignore[arg-type]

        def judge_group(group: list[_Probe]) -> None:
            for probe in group:
                probe.fate = judge(probe)

        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            list(pool.map(judge_group, by_uids.values()))

    def _chunks(self, source: _Source) -> Iterator[bytes]:
        """The object in `_CHUNK` range reads."""
        start = 0
        while True:
            data = self._gcs.download(source.bucket, source.name, generation=source.generation,
                                      start=start, end=start + _CHUNK - 1)
            if data:
                yield data
            if len(data) < _CHUNK:
                return
            start += _CHUNK

