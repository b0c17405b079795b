"""How long validating a large export request takes (what a unit test used to assert).

    python -m bench.export_request [--paths 100000] [--runs 5] [--json]

Builds an export request with `--paths` instance paths (near the Pub/Sub size limit at 100,000)
and times `parse_export_request` on it, median of `--runs`, in this process. The limit the unit
test used to assert (5 s for 100,000 paths) guards against an accidental quadratic; here it is a
target that is printed, not a pass/fail of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from functions.core.export_request import ResourcesSelector, parse_export_request

TARGET_SECONDS = 5.0


def measure(paths: int, runs: int) -> dict[str, Any]:
    resources = [f"/studies/1.2.840.{i}/series/1.2.{i}.1/instances/1.2.{i}.1.{i % 7}" for i in range(paths)]
    data = json.dumps({"requestId": "bench", "destination": "gs://exports/bench", "resources": resources}).encode()
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        parsed = parse_export_request(data)
        seconds.append(time.perf_counter() - began)
        assert isinstance(parsed.selector, ResourcesSelector) and len(parsed.selector.paths) == paths
    return {"paths": paths, "bytes": len(data), "runs": [round(s, 3) for s in seconds],
            "median": round(statistics.median(seconds), 3), "load1": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.paths, args.runs)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"export request: {result['paths']:,} paths ({result['bytes'] / 1e6:.1f} MB), "
          f"median {result['median']:.2f} s over {len(result['runs'])} runs {result['runs']} "
          f"(load average {result['load1']:.1f})")
    per_path = TARGET_SECONDS * args.paths / 100_000
    verdict = "met" if result["median"] < per_path else "MISSED"
    print(f"  {verdict}: under {per_path:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
