"""Chaos: ingest many files through the local cloud while instances die and the API throttles.

    python -m bench.chaos [--quick] [--files 10000] [--instances 3] [--kill-every 4]
                          [--fault-every 3] [--max-operations 5] [--timeout 3600] [--json]

Starts the real local cloud (`localcloud.stack.Stack`: Pub/Sub emulator, fake-gcs-server, the
Healthcare emulator, the functions under functions-framework) with `--instances` processes for
the import and the poll function behind the stack's balancer. Then, at the same time:

  uploads   `--files` tiny DICOM instances (studies of 100) into the upload bucket with 16
            threads; their finalize events take the real path (fake-gcs-server -> Pub/Sub
            emulator -> router -> balancer -> an import instance)
  chaos     every `--kill-every` seconds SIGKILLs the process group of one random import or
            poll instance (the stack's supervisor starts a new one on the same port)
  faults    every `--fault-every` seconds makes the next 1-5 calls of one of `import`,
            `operations.get`, `operations.list`, `dicomWeb.search` answer 429 or 503
            (`POST /_emulator/faults`)

Chaos and faults run until the store holds as many instances as were uploaded (or the timeout);
then they stop, pending faults are cleared, and the benchmark waits until no import work is left
(no window, import job or import operation record in the state bucket, no running LRO).

Printed: files uploaded, imported (their SOP Instance UIDs found by QIDO-RS), lost, objects the
emulator's imports read more than once, import LROs (operations.list), the most LROs running at
once against the cap (`DICOM_MAX_CONCURRENT_OPERATIONS`), completion events against operations,
instance kills and restarts, injected faults, wall time and load average. Exits 1 when an
invariant broke: a file lost, the cap exceeded, an operation without a completion event, or the
timeout. Timings are printed, never checked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from pydicom.uid import generate_uid

from bench.common import dicom_instance, emulator_control, get_retrying, session, stored_sops
from localcloud.config import LocalConfig
from localcloud.connect import EventStream, LocalCloud
from localcloud.ingest import import_work_left
from localcloud.stack import Stack

FULL_FILES = 10_000
QUICK_FILES = 1_000
FULL_CHAOS_SECONDS = 900.0
QUICK_CHAOS_SECONDS = 180.0
INSTANCES_PER_STUDY = 100
UPLOAD_THREADS = 16
KILLED_ROLES = ("import", "poll")
FAULT_METHODS = ("import", "operations.get", "operations.list", "dicomWeb.search")
FAULT_STATUSES = (429, 503)
WAIT_STEP_SECONDS = 1.0


@dataclass(frozen=True)
class Options:
    files: int
    instances: int
    kill_every: float
    fault_every: float
    max_operations: int
    chaos_seconds: float
    timeout: float
    seed: int | None
    json: bool
    state_dir: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FILES:,} files (unless --files)")
    parser.add_argument("--files", type=int, help=f"files to upload (default {FULL_FILES:,})")
    parser.add_argument("--instances", type=int, default=3, help="processes of the import and of the poll function")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between SIGKILLs (0: none)")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds between fault bursts (0: none)")
    parser.add_argument("--max-operations", type=int, default=5, help="DICOM_MAX_CONCURRENT_OPERATIONS")
    parser.add_argument("--chaos-seconds", type=float,
                        help=f"chaos ends after this long even if files are missing (default {FULL_CHAOS_SECONDS:g}, "
                             f"--quick {QUICK_CHAOS_SECONDS:g})")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds until the run gives up")
    parser.add_argument("--seed", type=int, help="seed of the chaos and fault choices")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("--state-dir", type=Path, help="keep the stack's state and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    files = args.files if args.files is not None else (QUICK_FILES if args.quick else FULL_FILES)
    chaos_seconds = args.chaos_seconds if args.chaos_seconds is not None else (
        QUICK_CHAOS_SECONDS if args.quick else FULL_CHAOS_SECONDS)
    if files < 1 or args.instances < 1 or args.max_operations < 1 or args.timeout <= 0 or chaos_seconds < 0:
        parser.error("--files, --instances, --max-operations must be at least 1, --timeout positive, "
                     "--chaos-seconds not negative")
    if args.kill_every < 0 or args.fault_every < 0:
        parser.error("--kill-every and --fault-every must not be negative")
    return Options(files=files, instances=args.instances, kill_every=args.kill_every,
                   fault_every=args.fault_every, max_operations=args.max_operations,
                   chaos_seconds=chaos_seconds, timeout=args.timeout,
                   seed=args.seed, json=args.json, state_dir=args.state_dir)


@dataclass
class Result:
    uploaded: int = 0
    imported: int = 0
    lost: int = 0  # not in the store although no import work is left
    missing_at_timeout: int = 0  # not in the store when the run gave up with work still left
    extra_in_store: int = 0  # instances in the store that were not uploaded by this run
    object_reads: int = 0
    objects_read_more_than_once: int = 0
    lros: int = 0
    lros_failed: int = 0
    import_calls: int = 0  # POSTs, faulted ones included
    max_concurrent_lros: int = 0
    cap: int = 0
    completion_events: int = 0  # distinct eventIds of import events
    events_delivered: int = 0  # messages pulled, redeliveries included
    operations_with_event: int = 0
    operations_without_event: list[str] = field(default_factory=list)
    operations_with_several_events: int = 0
    events_for_unknown_operations: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    fault_bursts: int = 0
    faulted_calls: int = 0
    timed_out: bool = False
    work_left: dict[str, int] = field(default_factory=dict)  # state records left at the end
    chaos_seconds: float = 0.0
    upload_seconds: float = 0.0
    until_imported_seconds: float = 0.0
    wall_seconds: float = 0.0
    load_average: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def violations(result: Result) -> list[str]:
    """The invariants the run must keep (timings are never among them)."""
    broken = []
    if result.lost:
        broken.append(f"{result.lost} uploaded files are not in the store")
    if result.max_concurrent_lros > result.cap:
        broken.append(f"{result.max_concurrent_lros} LROs ran at once, the cap is {result.cap}")
    if result.operations_without_event:
        broken.append(f"{len(result.operations_without_event)} operations have no completion event")
    if result.timed_out:
        broken.append("timed out before the pipeline was done")
    return broken


# -- the moving parts -------------------------------------------------------------------------

def make_files(count: int) -> list[tuple[str, bytes, str]]:
    """(object name, bytes, SOP Instance UID): studies of 100 instances, 10 series each."""
    files = []
    run = generate_uid()[-8:]
    study = series = ""
    for n in range(count):
        if n % INSTANCES_PER_STUDY == 0:
            study = generate_uid()
        if n % (INSTANCES_PER_STUDY // 10) == 0:
            series = generate_uid()
        data, sop = dicom_instance(study, series)
        files.append((f"chaos-{run}/{study}/{series}/{n:06d}.dcm", data, sop))
    return files


class Chaos(threading.Thread):
    """SIGKILLs the process group of a random live import/poll instance every `every` seconds."""

    def __init__(self, stack: Stack, every: float, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(name="chaos", daemon=True)
        self.stack, self.every, self.rng, self.stop_event = stack, every, rng, stop
        self.kills: Counter[str] = Counter()

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            live = [i for role in KILLED_ROLES for i in self.stack.instances.get(role, [])
                    if i.component.running()]
            if not live:
                continue
            victim = self.rng.choice(live)
            try:
                # The group: functions-framework's gunicorn master and its workers.
                os.killpg(victim.component.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills[victim.role] += 1


class Faults(threading.Thread):
    """Posts a 429/503 burst for one random API method every `every` seconds."""

    def __init__(self, healthcare: str, every: float, rng: random.Random, stop: threading.Event) -> None:
        super().__init__(name="faults", daemon=True)
        self.healthcare, self.every, self.rng, self.stop_event = healthcare, every, rng, stop
        self.bursts = 0
        self.calls = 0
        self.http = session(4)

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            count = self.rng.randint(1, 5)
            body = {"method": self.rng.choice(FAULT_METHODS), "count": count,
                    "status": self.rng.choice(FAULT_STATUSES)}
            try:
                emulator_control(self.http, self.healthcare, "faults", body)
            except requests.RequestException:
                continue  # the emulator is busy; the next burst comes anyway
            self.bursts += 1
            self.calls += count


def upload(cloud: LocalCloud, files: list[tuple[str, bytes, str]]) -> None:
    bucket = cloud.storage.bucket(cloud.upload_bucket)
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda f: bucket.blob(f[0]).upload_from_string(f[1], content_type="application/dicom"),
                      files))


def instance_count(http: requests.Session, cloud: LocalCloud) -> int:
    metrics = get_retrying(http, f"{cloud.endpoints['healthcare']}/v1/{cloud.dicom_store}:getDICOMStoreMetrics")
    return int(metrics.json().get("instanceCount", 0))


def import_operations(http: requests.Session, cloud: LocalCloud) -> Iterator[dict[str, Any]]:
    dataset = str(cloud.endpoints["dataset"])
    token = ""
    while True:
        params = {"pageSize": "1000", **({"pageToken": token} if token else {})}
        page = get_retrying(http, f"{cloud.endpoints['healthcare']}/v1/{dataset}/operations", params=params).json()
        for op in page.get("operations", []):
            if "Import" in str((op.get("metadata") or {}).get("apiMethodName", "")):
                yield op
        token = page.get("nextPageToken", "")
        if not token:
            return


def state_records(cloud: LocalCloud) -> dict[str, int]:
    """How many records each folder of the state bucket holds (what is left to explain a timeout)."""
    folders: Counter[str] = Counter()
    for blob in cloud.storage.list_blobs(cloud.state_bucket, timeout=60):
        folders[blob.name.split("/", 1)[0]] += 1
    return dict(folders)


class Events:
    """Import completion events from a private subscription, deduplicated by eventId."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.delivered = 0
        self.by_id: dict[str, dict[str, Any]] = {}

    def take(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("kind") != "import":
                continue
            self.delivered += 1
            self.by_id.setdefault(str(event.get("eventId")), event)

    def pull(self) -> None:
        self.take(self.stream.pull())

    def drain(self) -> None:
        self.take(self.stream.drain())


def compare(result: Result, operations: list[dict[str, Any]], events: Events) -> None:
    names = {str(op["name"]) for op in operations}
    per_operation = Counter(str(e.get("operation", "")) for e in events.by_id.values())
    result.lros = len(names)
    result.lros_failed = sum(1 for op in operations if op.get("error"))
    result.completion_events = len(events.by_id)
    result.events_delivered = events.delivered
    result.operations_with_event = len(names & set(per_operation))
    result.operations_without_event = sorted(names - set(per_operation))
    result.operations_with_several_events = sum(1 for name in names if per_operation[name] > 1)
    result.events_for_unknown_operations = sum(n for name, n in per_operation.items() if name not in names)


# -- the run ----------------------------------------------------------------------------------

def run(options: Options, say: Any) -> Result:
    rng = random.Random(options.seed)
    result = Result(cap=options.max_operations)
    say(f"generating {options.files:,} files")
    files = make_files(options.files)
    # No BigQuery stream: writing thousands of rows to the local BigQuery would load the machine
    # the chaos runs on, and nothing here queries them.
    config = LocalConfig(extra_function_env={"DICOM_MAX_CONCURRENT_OPERATIONS": str(options.max_operations)},
                         stream_to_bigquery=False)
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        state_dir = options.state_dir or Path(tmp) / "state"
        instances = {role: options.instances for role in KILLED_ROLES}
        say(f"starting the local cloud in {state_dir} ({options.instances} import and poll instances)")
        with Stack.start(state_dir, config=config, instances=instances) as stack, \
                LocalCloud(stack.endpoints) as cloud, cloud.event_stream() as stream:
            healthcare = str(cloud.endpoints["healthcare"])
            http = session(8)
            events = Events(stream)
            stop = threading.Event()
            chaos = Chaos(stack, options.kill_every, rng, stop)
            faults = Faults(healthcare, options.fault_every, rng, stop)
            began = time.monotonic()
            deadline = began + options.timeout
            if options.kill_every:
                chaos.start()
            if options.fault_every:
                faults.start()
            try:
                say(f"uploading with {UPLOAD_THREADS} threads; chaos every {options.kill_every:g} s, "
                    f"faults every {options.fault_every:g} s")
                upload(cloud, files)
                result.uploaded = len(files)
                result.upload_seconds = round(time.monotonic() - began, 1)
                say(f"uploaded in {result.upload_seconds} s; waiting for the store")
                chaos_ends = min(deadline, began + options.chaos_seconds)
                last = -1
                while (count := instance_count(http, cloud)) < len(files) and time.monotonic() < chaos_ends:
                    events.pull()
                    if count != last:
                        say(f"  {count:,} of {len(files):,} in the store, {sum(chaos.kills.values())} kills, "
                            f"{faults.bursts} fault bursts")
                        last = count
                    time.sleep(WAIT_STEP_SECONDS)
            finally:
                stop.set()
                for thread in (chaos, faults):
                    if thread.is_alive():
                        thread.join()
                http.delete(f"{healthcare}/_emulator/faults", timeout=30).raise_for_status()
            result.chaos_seconds = round(time.monotonic() - began, 1)
            say(f"chaos over after {result.chaos_seconds} s; waiting for the store and until no import work is left")
            settings = cloud.import_settings(config)
            last = -1
            while (count := instance_count(http, cloud)) < len(files) or (
                import_work_left(cloud.gcs, settings)
                or emulator_control(http, healthcare, "stats")["runningOperations"]
            ):
                events.pull()
                if count != last:
                    say(f"  {count:,} of {len(files):,} in the store")
                    last = count
                if count >= len(files) and not result.until_imported_seconds:
                    result.until_imported_seconds = round(time.monotonic() - began, 1)
                if time.monotonic() > deadline:
                    result.timed_out = True
                    result.work_left = state_records(cloud)
                    break
                time.sleep(WAIT_STEP_SECONDS)
            if not result.until_imported_seconds and count >= len(files):
                result.until_imported_seconds = round(time.monotonic() - began, 1)
            # Every event is on the topic once no operation record is left (ingest's rule).
            events.drain()
            time.sleep(0.5)
            events.drain()
            result.wall_seconds = round(time.monotonic() - began, 1)

            stored = stored_sops(http, healthcare, cloud.dicom_store)
            uploaded = {sop for _, _, sop in files}
            result.imported = len(uploaded & stored)
            missing = len(uploaded - stored)
            if result.timed_out and result.work_left:
                result.missing_at_timeout = missing  # unknown yet whether lost: work is still queued
            else:
                result.lost = missing
            result.extra_in_store = len(stored - uploaded)
            stats = emulator_control(http, healthcare, "stats")
            result.object_reads = sum(stats["objectReads"].values())
            result.objects_read_more_than_once = len(stats["objectsReadMoreThanOnce"])
            result.import_calls = int(stats["calls"].get("import", 0))
            result.max_concurrent_lros = int(stats["maxConcurrentOperations"])
            compare(result, list(import_operations(http, cloud)), events)
            result.kills = dict(chaos.kills)
            result.restarts = stack.restarts()
            result.fault_bursts, result.faulted_calls = faults.bursts, faults.calls
            result.load_average = [round(x, 2) for x in os.getloadavg()]
    return result


def render(result: Result, options: Options) -> list[str]:
    rows = [
        ("uploaded", f"{result.uploaded:,} files in {result.upload_seconds} s"),
        ("imported", f"{result.imported:,} found in the store by SOP Instance UID"
                     + (f" (+{result.extra_in_store} not from this run)" if result.extra_in_store else "")),
        ("lost", f"{result.lost:,}  (must be 0)" + (
            f"; {result.missing_at_timeout:,} not in the store at the timeout, with work still queued"
            if result.missing_at_timeout else "")),
        ("read twice", f"{result.objects_read_more_than_once:,} objects read more than once by imports "
                       f"({result.object_reads:,} reads)"),
        ("LROs", f"{result.lros:,} import operations ({result.lros_failed} failed), "
                 f"{result.import_calls:,} import calls (faulted included)"),
        ("concurrent", f"at most {result.max_concurrent_lros} LROs at once, cap {result.cap}  (must not exceed)"),
        ("events", f"{result.completion_events:,} completion events ({result.events_delivered:,} deliveries) for "
                   f"{result.lros:,} operations: {result.operations_with_event:,} with an event, "
                   f"{len(result.operations_without_event)} without, {result.operations_with_several_events} with "
                   f"several, {result.events_for_unknown_operations} for unknown operations"),
        ("kills", f"{sum(result.kills.values())} SIGKILLs {result.kills}, restarts {result.restarts}"),
        ("faults", f"{result.fault_bursts} bursts, {result.faulted_calls} calls answered 429/503"),
        ("wall", f"{result.wall_seconds} s ({result.until_imported_seconds or '-'} s until all were in the "
                 f"store, chaos for the first {result.chaos_seconds} s)"),
        ("load", " ".join(f"{x:.2f}" for x in result.load_average)
                 + f" (2-core shared machine; {options.instances} instances per function)"),
    ]
    if result.work_left:
        rows.append(("left", f"state records at the timeout: {result.work_left}"))
    lines = [f"{label:<11}{text}" for label, text in rows]
    broken = violations(result)
    lines.append(f"{'verdict':<11}" + ("OK: invariants kept" if not broken else "BROKEN: " + "; ".join(broken)))
    return lines


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through the stack's `with`, which stops every process


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)

    def say(line: str) -> None:
        print(line, file=sys.stderr if options.json else sys.stdout, flush=True)

    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    result = run(options, say)
    if options.json:
        print(json.dumps({**result.to_json(), "violations": violations(result)}))
    else:
        for line in render(result, options):
            print(line)
    return 1 if violations(result) else 0


if __name__ == "__main__":
    sys.exit(main())
