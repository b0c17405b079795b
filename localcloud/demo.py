"""The demo's manual flow: what the functions automate, done by hand against the emulators.

Upload a synthetic set, import it with one wildcard `:import`, export one study with a filter
file, and show what landed. It uses only public API shapes (Cloud Storage JSON API, Healthcare
API v1 REST), so it doubles as an end-to-end check of the emulators.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud import synthetic

EXPORT_MIME_TYPE = "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"  # explicit VR little endian
UPLOAD_PREFIX = "demo"
EXPORT_PREFIX = "demo-export"
_HTTP_TIMEOUT = 30.0


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class OperationResult:
    name: str
    seconds: float
    success: int
    failure: int
    error: str | None


def storage_client(endpoints: Mapping[str, Any]) -> storage.Client:
    return storage.Client(
        project=endpoints["project"],
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoints["storage"]},
    )


def upload_tree(client: storage.Client, bucket: str, root: Path, prefix: str) -> list[str]:
    """Uploads every file under `root` (sidecars included) to gs://bucket/prefix/...; returns names."""
    names = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = f"{prefix}/{path.relative_to(root).as_posix()}"
        content_type = "application/dicom" if path.suffix == ".dcm" else "application/json"
        client.bucket(bucket).blob(name).upload_from_filename(str(path), content_type=content_type)
        names.append(name)
    return names


def start_operation(healthcare: str, store: str, verb: str, body: Mapping[str, Any]) -> str:
    response = requests.post(f"{healthcare}/v1/{store}:{verb}", json=body, timeout=_HTTP_TIMEOUT)
    if response.status_code != 200:
        raise DemoError(f":{verb} refused: HTTP {response.status_code} {response.text[:500]}")
    return str(response.json()["name"])


def wait_operation(healthcare: str, name: str, timeout: float = 120.0) -> OperationResult:
    """Polls operations.get with backoff (0.2 s growing to 2 s), as a client of the real API would."""
    started = time.monotonic()
    delay = 0.2
    while True:
        response = requests.get(f"{healthcare}/v1/{name}", timeout=_HTTP_TIMEOUT)
        response.raise_for_status()
        operation = response.json()
        if operation.get("done"):
            counter = operation.get("metadata", {}).get("counter", {})
            error = operation.get("error")
            return OperationResult(
                name=name,
                seconds=time.monotonic() - started,
                success=int(counter.get("success", 0)),
                failure=int(counter.get("failure", 0)),
                error=error.get("message") if error else None,
            )
        if time.monotonic() - started > timeout:
            raise DemoError(f"{name} not done after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def run_manual_flow(endpoints: Mapping[str, Any], workdir: Path, say: Callable[[str, str], None]) -> None:
    """Runs the whole flow against the stack described by `endpoints`, reporting through `say`."""
    client = storage_client(endpoints)
    buckets = endpoints["buckets"]
    healthcare, store = endpoints["healthcare"], endpoints["dicomStore"]

    studies = synthetic.generate(workdir / "synthetic")
    say(
        "synthetic", f"{len(studies.studies)} studies, {len(studies.files)} instances (+ study.json sidecars)"
    )
    names = upload_tree(client, buckets["upload"], studies.root, UPLOAD_PREFIX)
    say("upload", f"{len(names)} objects -> gs://{buckets['upload']}/{UPLOAD_PREFIX}/")

    source = f"gs://{buckets['upload']}/**.dcm"
    operation = start_operation(healthcare, store, "import", {"gcsSource": {"uri": source}})
    say("import", f"{source} -> {operation.rsplit('/', 1)[-1]}")
    result = wait_operation(healthcare, operation)
    say("import", _summary(result))

    chosen = studies.studies[0]
    filter_name = f"{UPLOAD_PREFIX}/filter-{chosen.uid}.txt"
    client.bucket(buckets["state"]).blob(filter_name).upload_from_string(
        f"/studies/{chosen.uid}\n", content_type="text/plain"
    )
    destination = f"gs://{buckets['export']}/{EXPORT_PREFIX}"
    body = {
        "gcsDestination": {"uriPrefix": destination, "mimeType": EXPORT_MIME_TYPE},
        "filterConfig": {"resourcePathsGcsUri": f"gs://{buckets['state']}/{filter_name}"},
    }
    operation = start_operation(healthcare, store, "export", body)
    say("export", f"study {_short(chosen.uid)} ({chosen.instance_count} instances) -> {destination}/")
    result = wait_operation(healthcare, operation)
    say("export", _summary(result))

    exported = sorted(b.name for b in client.list_blobs(buckets["export"], prefix=f"{EXPORT_PREFIX}/"))
    say("exported", f"{len(exported)} objects as {EXPORT_PREFIX}/STUDY/SERIES/INSTANCE.dcm")
    per_series = Counter(name.rsplit("/", 1)[0] for name in exported)
    for folder, count in sorted(per_series.items()):
        _, study, series = folder.split("/")
        say("", f"study {_short(study)}  series {_short(series)}  {count} instances")
    if len(exported) != chosen.instance_count:
        raise DemoError(f"expected {chosen.instance_count} exported instances, found {len(exported)}")


def _short(uid: str) -> str:
    """The tail of a UID: enough to tell the demo's studies and series apart on screen."""
    return "…" + uid[-8:]


def _summary(result: OperationResult) -> str:
    text = f"done in {result.seconds:.1f} s: {result.success} succeeded, {result.failure} failed"
    return f"{text} ({result.error})" if result.error else text
