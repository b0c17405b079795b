"""How long one poller run takes with many operations in flight (target: 1,000 in one 60 s run).

    python -m bench.poller_scale [--operations 1000] [--lros 20] [--concurrency 16] [--json]

Starts the emulators, starts `--lros` real imports that stay running (the emulator holds them
for 10 minutes), and tracks `--operations` operation records that point at them round-robin, as
the import and export functions write them. Then times `Poller.run()` twice: every record is
read and every operation polled with `operations.get`; none finishes, so the run's cost is the
cost of watching. Prints seconds per run, calls made, and whether the target holds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.import_patterns import Emulators
from functions.imports.job_queue import Job, StartedOperation
from tests import dicom_factory
from tests.integration.harness import Deployment

TARGET_SECONDS = 60.0
HOLD_SECONDS = 600.0


def run(operations: int, lros: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-poller-") as workdir:
        emu = Emulators(Path(workdir), operation_delay=HOLD_SECONDS)
        emu.start()
        try:
            emu.control("config", {"operationDelaySeconds": HOLD_SECONDS})
            d = Deployment.create(emu.healthcare_url, poll_concurrency=concurrency)
            d.upload("held/one.dcm", dicom_factory.instance())
            uri = f"gs://{d.upload_bucket}/held/one.dcm"
            names = [d.deps.healthcare.import_dicom(uri) for _ in range(lros)]
            now = time.time()
            for index in range(operations):
                job = Job(job_id=f"bench-{index:05d}", kind="import", request_id=f"bench-{index:05d}",
                          created_at=now, import_uri=uri)
                record = StartedOperation(name=names[index % lros], job=job, slot=0, started_at=now)
                path = d.settings.state_path("operations", f"bench-{index:05d}.json")
                d.deps.gcs.write(d.settings.state_bucket, path, record.to_json())
            counting = d.counting()
            runs = []
            for _ in range(2):
                before_get = emu.control("stats")["calls"].get("operations.get", 0)
                calls_before = counting.calls
                started = time.monotonic()
                summary = d.poller().run()
                seconds = time.monotonic() - started
                runs.append({
                    "seconds": round(seconds, 2),
                    "tracked": summary.tracked,
                    "running": summary.running,
                    "errors": len(summary.errors),
                    "operationsGet": emu.control("stats")["calls"].get("operations.get", 0) - before_get,
                    "storageCalls": counting.calls - calls_before,
                })
            return {"operations": operations, "lros": lros, "concurrency": concurrency, "runs": runs,
                    "targetSeconds": TARGET_SECONDS,
                    "met": all(r["seconds"] < TARGET_SECONDS and r["tracked"] == operations for r in runs)}
        finally:
            emu.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--lros", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16, help="DICOM_POLL_CONCURRENCY")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.operations, args.lros, args.concurrency)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"poller: {result['operations']} tracked operations ({result['lros']} running LROs), "
              f"DICOM_POLL_CONCURRENCY={result['concurrency']}")
        for number, r in enumerate(result["runs"], 1):
            print(f"  run {number}: {r['seconds']:6.2f} s  tracked {r['tracked']}  running {r['running']}  "
                  f"errors {r['errors']}  operations.get {r['operationsGet']}  Cloud Storage calls {r['storageCalls']}")
        verdict = "ok  " if result["met"] else "MISS"
        print(f"  {verdict} one run under {TARGET_SECONDS:.0f} s with {result['operations']} operations")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
