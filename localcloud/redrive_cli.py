"""`dicom-events redrive RECEIPT`: re-import what a failed import's receipt names.

RECEIPT is the failed import's operation id, its completion event's `eventId` (`op-ID`), the
operation name, or the receipt object (`receipts/ID.json`). The command publishes a redrive
request (`{"action": "redrive", ...}`) on the export-requests topic, exactly as a user's own
pipeline would, and waits for its `redrive` completion event: SUCCEEDED when the objects landed,
or when they all were in the store already (then nothing was started, and the event's `reason`
says so).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from functions.core.errors import InvalidExportRequestError
from functions.core.export_request import short_hash
from functions.exports.redrive import ACTION, parse_redrive_request
from localcloud.connect import Connection
from localcloud.export_cli import DEFAULT_TIMEOUT_SECONDS, ExportResult, RequestError, publish_and_wait
from localcloud.progress import Reporter


def build_request(receipt: str, request_id: str | None = None) -> dict[str, Any]:
    """The redrive request, validated with the function's own parser; raises RequestError."""
    body = {"action": ACTION, "receipt": receipt, "requestId": request_id or f"cli-{uuid.uuid4().hex}"}
    try:
        parse_redrive_request(json.dumps(body).encode())
    except InvalidExportRequestError as exc:
        raise RequestError(f"invalid redrive request: {exc.reason}") from None
    return body


def run_redrive(cloud: Connection, request: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                reporter: Reporter | None = None) -> ExportResult:
    key = short_hash("requestId", str(request["requestId"]))
    repeated = cloud.gcs.read(cloud.state_bucket, cloud.state_path("redrives", f"{key}.json")) is not None
    return publish_and_wait(cloud, request, kind=ACTION, repeated=repeated, timeout=timeout, reporter=reporter)
