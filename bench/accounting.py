"""What accounting for every object of an import costs the poller (decision 0720).

    python -m bench.accounting [--copies 1] [--json]

Starts the emulators, uploads pydicom's test files (`pydicom.data.get_testdata_files()`, every
file; `--copies N` uploads the set N times under N prefixes, so N-1 of every DICOM file are UID
conflicts or identical duplicates) through the import function, and runs the poller until the
pipeline is quiet. Prints the wall time of the whole run, the time the poller spent judging
objects, the bytes it read from Cloud Storage and from the store for that, and the outcomes.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_files

from bench.import_patterns import Emulators
from functions.imports import failed_objects
from tests.integration.harness import Deployment, deliver_all, distinct


class _Meter:
    """Counts the bytes and seconds of the finder's reads (wraps the poller's clients)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.object_bytes = 0
        self.store_bytes = 0
        self.seconds = 0.0
        self.accounted = 0

    def add(self, name: str, amount: float) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)


def run(copies: int) -> dict[str, Any]:
    root = Path(pydicom.data.__file__).parent / "test_files"
    files = [Path(p) for p in get_testdata_files() if Path(p).is_file()]
    meter = _Meter()
    original_account = failed_objects.FailedObjectFinder.account

    def account(self: failed_objects.FailedObjectFinder, entries: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return original_account(self, entries, **kwargs)
        finally:
            meter.add("seconds", time.monotonic() - started)
            meter.add("accounted", len(entries))

    with tempfile.TemporaryDirectory(prefix="bench-accounting-") as workdir:
        emu = Emulators(Path(workdir), operation_delay=0.0)
        emu.start()
        failed_objects.FailedObjectFinder.account = account  # type: ignore[method-assign]
        try:
            d = Deployment.create(emu.healthcare_url, import_name_pattern=re.compile("."), failed_objects_cap=10_000)
            download = d.deps.gcs.download
            original_retrieve = d.deps.healthcare.retrieve_instance

            def counted_download(bucket: str, name: str, **kwargs: Any) -> bytes:
                data = download(bucket, name, **kwargs)
                if bucket != d.settings.state_bucket or name.startswith(d.settings.state_path("staging")):
                    meter.add("object_bytes", len(data))
                return data

            def counted_retrieve(*uids: str) -> Iterator[bytes]:
                for chunk in original_retrieve(*uids):
                    meter.add("store_bytes", len(chunk))
                    yield chunk

            d.deps.gcs.download = counted_download  # type: ignore[method-assign]
            d.deps.healthcare.retrieve_instance = counted_retrieve  # type: ignore[method-assign,assignment]
            started = time.monotonic()
            uploads = [d.upload(f"copy{copy}/{path.relative_to(root).as_posix()}", path.read_bytes())
                       for copy in range(copies) for path in files]
            deliver_all(d.handler(), uploads)
            events = [e for e in distinct(d.completions_until_quiet(timeout=1800)) if e["kind"] == "import"]
            seconds = time.monotonic() - started
        finally:
            failed_objects.FailedObjectFinder.account = original_account  # type: ignore[method-assign]
            emu.stop()
    reasons = Counter(f["reason"] for e in events for f in e.get("failures", []))
    return {
        "files": len(uploads), "events": len(events), "seconds": round(seconds, 1),
        "accountingSeconds": round(meter.seconds, 2), "objectsJudged": meter.accounted,
        "objectBytesRead": meter.object_bytes, "storeBytesRead": meter.store_bytes,
        "uploadedBytes": sum(p.stat().st_size for p in files) * copies,
        "landed": sum(e["objects"]["landed"] for e in events),
        "failed": dict(reasons), "undecided": sum(e["objects"]["undecided"] for e in events),
        "countersAgree": all(e["objects"]["countersAgree"] for e in events),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.copies)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"accounting: {result['files']} files (pydicom's test files x {args.copies}), "
              f"{result['events']} import events, {result['seconds']} s end to end")
        print(f"  judged {result['objectsJudged']} objects in {result['accountingSeconds']} s (poller time); "
              f"read {result['objectBytesRead']:,} bytes of objects and {result['storeBytesRead']:,} bytes of "
              f"stored instances (uploaded {result['uploadedBytes']:,} bytes)")
        print(f"  landed {result['landed']}, failed {result['failed']}, undecided {result['undecided']}, "
              f"counters agree: {result['countersAgree']}")
    return 0 if result["countersAgree"] and not result["undecided"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
