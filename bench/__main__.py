"""All benchmarks in sequence (`make bench`).

    python -m bench [--quick]

Runs, each in its own interpreter so that one failing does not stop the others:
  bench.emulator_import   emulator import throughput (modest sizes)
  bench.import_patterns   upload patterns through the pipeline vs one import per file (--quick: < 2 min)
  bench.import_patterns   the bulk tree alone, 10,000 files (--quick: 1,200)
  bench.simulate          the bulk tree on the functional fakes with Cloud Storage's limits,
                          100,000 files at 500/s (--quick: 10,000)
  bench.cold_start        what importing main.py adds to a bare functions-framework import
  bench.poller_scale      one poller run with 1,000 tracked operations in flight
  bench.export_request    validating an export request of 100,000 paths
  bench.accounting        pydicom's test files: what judging every object of an import costs
  bench.local_stack       start-up of the local cloud, and the demo end to end
  bench.chaos             10,000 files (--quick: 1,000) through the local cloud while instances
                          are SIGKILLed and the API answers 429/503; checks nothing is lost
Exits non-zero when any of them failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    # (module, arguments, arguments with --quick)
    ("bench.emulator_import", ["--small", "300", "--large", "2", "--frames", "20", "--size", "256"],
     ["--small", "100", "--large", "1", "--frames", "10", "--size", "256"]),
    ("bench.import_patterns", [], ["--quick"]),
    # The bulk tree of a migration through the emulators, at the sizes they carry.
    ("bench.import_patterns", ["--patterns", "bulk", "--no-naive", "--files", "10000"],
     ["--patterns", "bulk", "--no-naive", "--files", "1200", "--quick"]),
    # Larger migrations on the functional fakes with Cloud Storage's limits (bench/README.md has
    # the 100,000 and 1,000,000-file runs and their commands).
    ("bench.simulate", ["--files", "100000", "--rate", "500"], ["--files", "10000", "--rate", "500"]),
    ("bench.cold_start", [], ["--runs", "5"]),
    ("bench.poller_scale", [], ["--operations", "300"]),
    ("bench.export_request", [], ["--runs", "3"]),
    ("bench.accounting", [], []),
    ("bench.local_stack", [], ["--starts", "1"]),
    ("bench.chaos", [], ["--quick"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes everywhere")
    args = parser.parse_args()
    failed = []
    for module, full, quick in BENCHMARKS:
        argv = [sys.executable, "-m", module, *(quick if args.quick else full)]
        print(f"\n### {' '.join(['python', *argv[1:]])}", flush=True)
        started = time.monotonic()
        code = subprocess.run(argv, check=False).returncode
        print(f"### {module}: exit {code}, {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(module)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
