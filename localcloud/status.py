"""`dicom-events status`: what the pipeline is doing, read from the state bucket.

The same for a real deployment and the local cloud (`--local`):

- tracked operations: `operations/` records (started LROs whose completion event is not out yet);
- queued jobs: `jobs/` records (LRO starts waiting for a slot, or being started);
- open windows: `windows/{W}/` records (uploads waiting for their debounce window to be batched);
- receipts: `receipts/` records (imports with objects that did not land: what `redrive` takes);
- the latest completion events: `done/` records, newest first (the poller writes every event it
  publishes there, the export function its REJECTED events);
- signals, the same as the Cloud Monitoring dashboard of infra/monitoring.tf: completion events of
  the last hour by kind and state, the oldest running operation, queued jobs, and the depth of
  the dead-letter subscription (see `Connection.backlog`: a lower bound on Google's service);
- local cloud only: function instances and how many were restarted (endpoints.json, kept by `up`).

`status` takes no event away from another reader: the dead-letter count pulls and at once hands
the messages back.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from functions.imports import window_records
from localcloud.connect import Connection
from localcloud.progress import aligned

DEFAULT_EVENTS = 10
RECEIPTS_SHOWN = 5
SIGNAL_WINDOW_SECONDS = 3600


def _rfc3339(epoch: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def gather(cloud: Connection, *, events: int = DEFAULT_EVENTS) -> dict[str, Any]:
    """The `--json` answer: dicomStore, operations, jobs, windows, events."""
    operations = []
    for blob in cloud.state_objects("operations"):
        record = cloud.read_state(blob)
        if record is None:
            continue
        job = record.get("job") or {}
        operations.append({"name": record.get("name"), "kind": job.get("kind"),
                           "requestId": job.get("request_id"), "startedAt": _rfc3339(record.get("startedAt"))})
    operations.sort(key=lambda o: str(o["startedAt"] or ""))
    jobs = []
    for blob in cloud.state_objects("jobs"):
        record = cloud.read_state(blob)
        if record is None:
            continue
        job = record.get("job") or {}
        jobs.append({"id": job.get("job_id"), "kind": job.get("kind"), "state": record.get("state"),
                     "requestId": job.get("request_id"), "createdAt": _rfc3339(job.get("created_at"))})
    jobs.sort(key=lambda j: str(j["id"]))
    root = cloud.state_path("windows") + "/"
    per_window: dict[str, set[str]] = defaultdict(set)
    for blob in cloud.state_objects("windows"):
        # A record lists the uploads of a group of requests; a redelivered one may be in two.
        entries = window_records.parse(blob.metadata) or []
        per_window[blob.name[len(root):].split("/", 1)[0]] |= {e.key for e in entries}
    windows = [{"window": window, "uploads": len(keys)} for window, keys in sorted(per_window.items())]
    latest = []
    for blob in cloud.state_objects("done")[:max(events, 0)]:
        event = cloud.read_state(blob)
        if event is not None:
            latest.append(event)
    functions = {role: {"instances": len(group), "restarts": sum(int(i.get("restarts", 0)) for i in group)}
                 for role, group in cloud.deployment.function_instances.items()}
    receipts = [receipt_summary(blob, cloud.read_state(blob)) for blob in cloud.state_objects("receipts")]
    return {"project": cloud.project, "dicomStore": cloud.dicom_store, "functions": functions,
            "operations": operations, "jobs": jobs, "windows": windows,
            "receipts": [r for r in receipts if r is not None], "events": latest,
            "signals": signals(cloud, operations, jobs)}


def receipt_summary(blob: Any, receipt: dict[str, Any] | None) -> dict[str, Any] | None:
    """One receipt as `status` and `receipts` list it: ids and counts, no object names."""
    if receipt is None:
        return None
    operation_id = str(blob.name).rsplit("/", 1)[-1].removesuffix(".json")
    failed = receipt.get("failedObjects") or []
    return {"operationId": operation_id, "eventId": f"op-{operation_id}", "operation": receipt.get("operation"),
            "failedObjects": int(receipt.get("failedObjectsTotal") or len(failed)),
            "writtenAt": blob.updated.isoformat(timespec="seconds").replace("+00:00", "Z") if blob.updated else None}


def signals(cloud: Connection, operations: list[dict[str, Any]], jobs: list[dict[str, Any]],
            *, now: float | None = None) -> dict[str, Any]:
    """What the dashboard shows: events of the last hour by kind and state, oldest running
    operation, queued jobs (waiting for a slot) and export requests in the dead-letter topic."""
    now = time.time() if now is None else now
    by_state: dict[str, Counter[str]] = defaultdict(Counter)
    for blob in cloud.state_objects("done"):
        if blob.updated is None or blob.updated.timestamp() < now - SIGNAL_WINDOW_SECONDS:
            break  # newest first: the rest are older still
        event = cloud.read_state(blob)
        if event is not None:
            by_state[str(event.get("kind"))][str(event.get("state"))] += 1
    oldest = None
    if operations:
        first = operations[0]  # sorted by start time
        started = datetime.fromisoformat(str(first["startedAt"]).replace("Z", "+00:00")).timestamp() \
            if first["startedAt"] else None
        oldest = {"name": first["name"], "kind": first["kind"], "startedAt": first["startedAt"],
                  "ageSeconds": round(now - started, 1) if started is not None else None}
    dead_letters = cloud.deployment.export_dead_letter_subscription
    return {
        "lastHour": {kind: dict(sorted(counts.items())) for kind, counts in sorted(by_state.items())},
        "oldestRunningOperation": oldest,
        "queuedJobs": sum(1 for job in jobs if job["state"] == "PENDING"),
        "deadLetters": cloud.backlog(dead_letters) if dead_letters else None,
        # Pub/Sub has no count without Cloud Monitoring: `deadLetters` is what pulls returned,
        # which is every message on the emulator and may be fewer on Google's service.
        "deadLettersExact": cloud.deployment.is_local,
    }


def render(status: dict[str, Any]) -> list[str]:
    from localcloud.ingest import describe_event

    lines = [aligned("dicom store", status["dicomStore"])]
    for role, counts in status.get("functions", {}).items():
        lines.append(aligned(f"fn {role}", f"{counts['instances']} instance(s), {counts['restarts']} restart(s)"))
    lines.append(aligned("operations", f"{len(status['operations'])} tracked"))
    for op in status["operations"]:
        lines.append(aligned("", f"{op['kind'] or '?':<7}{str(op['name']).rsplit('/', 1)[-1]:<38}"
                                 f"{op['requestId'] or '':<40}started {op['startedAt'] or '?'}"))
    lines.append(aligned("jobs", f"{len(status['jobs'])} queued"))
    for job in status["jobs"]:
        lines.append(aligned("", f"{job['kind'] or '?':<7}{job['state'] or '?':<10}{job['id']}"))
    lines.append(aligned("windows", f"{len(status['windows'])} open"))
    for window in status["windows"]:
        lines.append(aligned("", f"{window['window']}  {window['uploads']} uploads"))
    receipts = status.get("receipts", [])
    lines.append(aligned("receipts", f"{len(receipts)} (imports with objects that did not land; "
                                     "dicom-events redrive EVENT-ID)" if receipts else "none"))
    for receipt in receipts[:RECEIPTS_SHOWN]:
        lines.append(aligned("", f"{receipt['eventId']:<40}{receipt['failedObjects']} objects  "
                                 f"{receipt['writtenAt'] or ''}"))
    if len(receipts) > RECEIPTS_SHOWN:
        lines.append(aligned("", f"... and {len(receipts) - RECEIPTS_SHOWN} more (dicom-events receipts)"))
    sig = status["signals"]
    last_hour = ", ".join(f"{kind} {state} {count}" for kind, counts in sig["lastHour"].items()
                          for state, count in counts.items())
    lines.append(aligned("last hour", last_hour or "no completion events"))
    oldest = sig["oldestRunningOperation"]
    lines.append(aligned("oldest op", f"{oldest['kind'] or '?'} {str(oldest['name']).rsplit('/', 1)[-1]}, "
                                           f"{oldest['ageSeconds']} s" if oldest else "none"))
    lines.append(aligned("queued jobs", str(sig["queuedJobs"])))
    depth = sig["deadLetters"]
    lines.append(aligned("dlq depth", "?" if depth is None else str(depth) if sig.get("deadLettersExact", True)
                         else f"{depth} (pulled and handed back: a lower bound; Monitoring's "
                              "num_undelivered_messages is exact)"))
    lines.append(aligned("events", f"latest {len(status['events'])}, newest first"))
    for event in status["events"]:
        ended = str(event.get("endTime") or "")[:19].replace("T", " ")
        lines.append(aligned("", f"{ended:<21}{describe_event(event)}"))
    return lines
