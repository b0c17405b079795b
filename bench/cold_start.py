"""Cold start of the import function: what importing main.py adds to a bare functions-framework import.

    python -m bench.cold_start [--runs 7] [--top 12]

Each measurement is a fresh interpreter (subprocess) with the environment a deployed import
function has (FUNCTION_TARGET=import_dicom_on_upload and its settings variables, pointing at
unreachable loopback endpoints: nothing may touch the network at import). It times
`import functions_framework` alone, and `import functions_framework; import main`, inside the
child with perf_counter (interpreter start-up excluded), median of --runs each, interleaved. Then
`-X importtime` lists the modules that main.py pulls in beyond functions_framework, by cumulative
time (median over 3 runs). Targets (bench/README.md): main.py adds under 50 ms; the first event's
set-up (handler and clients, lazy) stays under 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from functions.settings import ALL_VARIABLES

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 50.0  # what importing main.py may add
FIRST_EVENT_TARGET_MS = 150.0  # the first event's handler and client set-up

# What infra/ sets for the import function (plausible values; no endpoint is reachable).
IMPORT_FUNCTION_ENV = {
    "FUNCTION_TARGET": "import_dicom_on_upload",
    "DICOM_STORE": "projects/bench-project/locations/us-central1/datasets/imaging/dicomStores/main",
    "DICOM_STATE_BUCKET": "bench-project-dicom-state",
    "DICOM_STATE_PREFIX": "",
    "DICOM_IMPORT_PREFIXES": "inbox/,ward/",
    "DICOM_IMPORT_NAME_PATTERN": r"(?i)\.dcm$",
    "DICOM_DEBOUNCE_SECONDS": "5",
    "DICOM_SETTLE_SECONDS": "2",
    "DICOM_MAX_CONCURRENT_OPERATIONS": "5",
    "DICOM_CLAIM_LEASE_SECONDS": "30",
    "DICOM_HTTP_TIMEOUT_SECONDS": "60",
    "DICOM_RETRY_DEADLINE_SECONDS": "30",
    "DICOM_MAX_EVENT_AGE_SECONDS": "3600",
    "DICOM_STORAGE_CLASS_BY_PREFIX": "archive/=ARCHIVE",
    "HEALTHCARE_API_URL": "http://127.0.0.1:9",
    "LOG_LEVEL": "INFO",
    # As if on Cloud Run, but unreachable: a client created at import would fail or hang visibly.
    "K_SERVICE": "import-dicom-on-upload",
    "GOOGLE_CLOUD_PROJECT": "bench-project",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    "NO_PROXY": "*",
}

_TIMED = """
import sys, time
t0 = time.perf_counter()
import functions_framework
t1 = time.perf_counter()
{extra}
t2 = time.perf_counter()
print(f"{{(t1 - t0) * 1000:.3f}} {{(t2 - t1) * 1000:.3f}} {{len(sys.modules)}}")
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALL_VARIABLES}
    env.update(IMPORT_FUNCTION_ENV)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _child(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO_ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120, check=True)


_FIRST_EVENT = """
import time
import functions_framework, main
t0 = time.perf_counter()
main._import_handler()  # what the first event builds: settings, clients (no request is made)
print(f"{(time.perf_counter() - t0) * 1000:.3f}")
"""


def first_event_ms() -> float:
    """The lazy part: building the import handler and its clients on the first event (no network)."""
    return float(_child(_FIRST_EVENT).stdout.split()[-1])


def timed(with_main: bool) -> tuple[float, float, int]:
    """(ms of functions_framework, ms of main after it, modules loaded) in a fresh interpreter."""
    out = _child(_TIMED.format(extra="import main" if with_main else "")).stdout.split()
    return float(out[0]), float(out[1]), int(out[2])


_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def importtime_offenders() -> list[tuple[str, float, float, int]]:
    """Modules imported by `import main` after functions_framework: (name, cumulative ms, self ms, depth)."""
    result = _child("import functions_framework\nimport sys\nprint('---', file=sys.stderr, flush=True)\nimport main",
                    "-X", "importtime")
    after = result.stderr.split("---\n", 1)[1]
    rows = []
    for line in after.splitlines():
        match = _LINE.match(line)
        if match:
            self_us, cumulative_us, indent, name = match.groups()
            rows.append((name, int(cumulative_us) / 1000, int(self_us) / 1000, len(indent) // 2))
    return rows


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    _child("import functions_framework, main")  # warm the bytecode caches once (a deployed image has them)
    bare, with_main, main_only, modules_bare, modules_main = [], [], [], 0, 0
    for _ in range(args.runs):  # interleaved, so drift hits both sides alike
        ff, _unused, modules_bare = timed(False)
        bare.append(ff)
        ff2, added, modules_main = timed(True)
        with_main.append(ff2 + added)
        main_only.append(added)
    first_event = [first_event_ms() for _ in range(args.runs)]
    runs = [importtime_offenders() for _ in range(3)]
    cumulative: dict[str, list[float]] = {}
    self_ms: dict[str, list[float]] = {}
    depth: dict[str, int] = {}
    for rows in runs:
        for name, cum, own, level in rows:
            cumulative.setdefault(name, []).append(cum)
            self_ms.setdefault(name, []).append(own)
            depth[name] = level
    top_level = sorted((n for n in cumulative if n != "main"), key=lambda n: -statistics.median(cumulative[n]))
    med_bare, med_with = statistics.median(bare), statistics.median(with_main)
    offenders: list[dict[str, Any]] = [
        {"module": n, "cumulativeMs": round(statistics.median(cumulative[n]), 1),
         "selfMs": round(statistics.median(self_ms[n]), 1), "depth": depth[n]} for n in top_level[: args.top]]
    summary: dict[str, object] = {
        "runs": args.runs,
        "functionsFrameworkMs": round(med_bare, 1),
        "functionsFrameworkPlusMainMs": round(med_with, 1),
        "differenceMs": round(med_with - med_bare, 1),
        "mainAfterFrameworkMs": round(statistics.median(main_only), 1),
        "mainAfterFrameworkRangeMs": [round(min(main_only), 1), round(max(main_only), 1)],
        "modules": {"functionsFramework": modules_bare, "withMain": modules_main},
        "firstEventSetupMs": round(statistics.median(first_event), 1),
        "targetMs": TARGET_MS,
        "firstEventTargetMs": FIRST_EVENT_TARGET_MS,
        "firstEventMet": statistics.median(first_event) < FIRST_EVENT_TARGET_MS,
        "met": statistics.median(main_only) < TARGET_MS and med_with - med_bare < TARGET_MS,
        "importtimeMainMs": round(statistics.median(cumulative.get("main", [0.0])), 1),
        "offenders": offenders,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return summary
    print(f"fresh interpreters, median of {args.runs} (import time measured inside the child; FUNCTION_TARGET="
          f"import_dicom_on_upload with its settings, no reachable network)")
    print(f"{'import':<44} {'ms':>8}")
    print(f"{'functions_framework':<44} {med_bare:>8.1f}")
    print(f"{'functions_framework; main':<44} {med_with:>8.1f}")
    print(f"{'difference (medians)':<44} {med_with - med_bare:>8.1f}")
    print(f"{'main after functions_framework (same child)':<44} {statistics.median(main_only):>8.1f}"
          f"   (range {min(main_only):.1f}-{max(main_only):.1f})")
    print(f"{'first event: build the import handler + clients':<44} {statistics.median(first_event):>8.1f}"
          f"   (lazy, paid by the first request, not by the import)")
    print(f"modules loaded: {modules_bare} -> {modules_main} (+{modules_main - modules_bare})")
    print(f"target: main.py adds < {TARGET_MS:.0f} ms: {'met' if summary['met'] else 'MISSED'}")
    print(f"target: first event set-up < {FIRST_EVENT_TARGET_MS:.0f} ms: "
          f"{'met' if summary['firstEventMet'] else 'MISSED'}")
    print(f"\n-X importtime, modules main.py pulls in beyond functions_framework (median of 3; main itself "
          f"{summary['importtimeMainMs']} ms cumulative):")
    print(f"{'module':<48} {'cum ms':>8} {'self ms':>8} {'depth':>5}")
    for row in offenders:
        print(f"{'  ' * min(int(row['depth']), 4)}{row['module']:<{48 - 2 * min(int(row['depth']), 4)}} "
              f"{row['cumulativeMs']:>8.1f} {row['selfMs']:>8.1f} {row['depth']:>5}")
    return summary


if __name__ == "__main__":
    main()
