"""`python -m localcloud status`: what the pipeline is doing, read from the state bucket.

- tracked operations: `operations/` records (started LROs whose completion event is not out yet);
- queued jobs: `jobs/` records (LRO starts waiting for a slot, or being started);
- open windows: `windows/{W}/` records (uploads waiting for their debounce window to be batched);
- function instances and how many were restarted (from endpoints.json, kept by `up`);
- the latest completion events: `done/` records, newest first (the poller writes every event it
  publishes there). REJECTED export events are published by the export function and have no
  `done/` record; `export` prints them.

Nothing here pulls a subscription, so `status` never takes an event away from another reader.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from localcloud.connect import LocalCloud
from localcloud.progress import aligned

DEFAULT_EVENTS = 10


def _rfc3339(epoch: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def gather(cloud: LocalCloud, *, events: int = DEFAULT_EVENTS) -> dict[str, Any]:
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
    per_window = Counter(blob.name[len(root):].split("/", 1)[0] for blob in cloud.state_objects("windows"))
    windows = [{"window": window, "uploads": count} for window, count in sorted(per_window.items())]
    latest = []
    for blob in cloud.state_objects("done")[:max(events, 0)]:
        event = cloud.read_state(blob)
        if event is not None:
            latest.append(event)
    functions = {role: {"instances": len(group), "restarts": sum(int(i.get("restarts", 0)) for i in group)}
                 for role, group in (cloud.endpoints.get("functionInstances") or {}).items()}
    return {"dicomStore": cloud.dicom_store, "functions": functions, "operations": operations, "jobs": jobs,
            "windows": windows, "events": latest}


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
    lines.append(aligned("events", f"latest {len(status['events'])}, newest first"))
    for event in status["events"]:
        ended = str(event.get("endTime") or "")[:19].replace("T", " ")
        lines.append(aligned("", f"{ended:<21}{describe_event(event)}"))
    return lines
