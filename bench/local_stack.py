"""How long the local cloud takes to start, and `make demo` to run (what tests used to assert).

    python -m bench.local_stack [--starts 3] [--no-demo] [--json]

Starts the whole stack (`localcloud.stack.Stack.start`, as `python -m localcloud up` does:
Pub/Sub emulator, fake-gcs-server, the Healthcare emulator, the three functions under
functions-framework, the router) `--starts` times into fresh state folders and stops it again,
reporting the stack's own `startupSeconds` and the time until everything was stopped. Then runs
`python -m localcloud demo` once in a subprocess and reports its wall time. Targets (the limits
the integration tests used to assert, which made them fail on a loaded machine): start-up under
10 s, the demo under 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from localcloud.components import REPO_ROOT
from localcloud.stack import Stack

STARTUP_TARGET_SECONDS = 10.0
DEMO_TARGET_SECONDS = 60.0


def measure_starts(starts: int) -> list[dict[str, float]]:
    runs = []
    for _ in range(starts):
        with tempfile.TemporaryDirectory(prefix="bench-stack-") as workdir:
            began = time.monotonic()
            stack = Stack.start(Path(workdir) / "state")
            started = time.monotonic() - began
            startup = float(stack.endpoints["startupSeconds"])
            stack.stop()
            runs.append({"startupSeconds": startup, "untilStarted": round(started, 2),
                         "untilStopped": round(time.monotonic() - began, 2)})
    return runs


def measure_demo() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as workdir:
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "localcloud", "demo", "--state-dir", str(Path(workdir) / "state")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ))
        return {"seconds": round(time.monotonic() - began, 2), "exitCode": done.returncode,
                "lastLine": (done.stdout.strip().splitlines() or [""])[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"load1": os.getloadavg()[0], "starts": measure_starts(args.starts)}
    if not args.no_demo:
        result["demo"] = measure_demo()
    if args.json:
        print(json.dumps(result))
        return 0 if result.get("demo", {}).get("exitCode", 0) == 0 else 1
    startups = [r["startupSeconds"] for r in result["starts"]]
    print(f"local stack: {len(startups)} starts (load average {result['load1']:.1f} at the beginning)")
    for number, run in enumerate(result["starts"], 1):
        print(f"  start {number}: up in {run['startupSeconds']:5.2f} s, stopped after {run['untilStopped']:5.2f} s")
    median = statistics.median(startups)
    print(f"  {'met' if median < STARTUP_TARGET_SECONDS else 'MISSED'}: median start-up {median:.2f} s "
          f"(target under {STARTUP_TARGET_SECONDS:.0f} s)")
    if "demo" in result:
        demo = result["demo"]
        verdict = "met" if demo["exitCode"] == 0 and demo["seconds"] < DEMO_TARGET_SECONDS else "MISSED"
        print(f"demo: exit {demo['exitCode']} in {demo['seconds']:.1f} s ({demo['lastLine']})")
        print(f"  {verdict}: demo under {DEMO_TARGET_SECONDS:.0f} s")
        return 0 if demo["exitCode"] == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
