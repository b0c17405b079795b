"""`dicom-events receipts [RECEIPT]`: imports with objects that did not land, and what they name.

A receipt (`receipts/{operation id}.json` in the state bucket, written by the poller) lists every
object of one import that is not in the store; `redrive` re-imports those still missing. Object
names are shown, never file contents or tag values.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from functions.core.errors import InvalidExportRequestError
from functions.exports.redrive import operation_id_of
from localcloud.connect import Connection
from localcloud.progress import aligned
from localcloud.status import receipt_summary


def run(connection: Connection, reference: str | None, *, as_json: bool) -> int:
    if reference is None:
        receipts = [receipt_summary(blob, connection.read_state(blob)) for blob in connection.state_objects("receipts")]
        listed = [r for r in receipts if r is not None]
        if as_json:
            print(json.dumps({"receipts": listed}, indent=2))
            return 0
        print(aligned("receipts", f"{len(listed)}, newest first" if listed else "none"))
        for receipt in listed:
            print(aligned("", f"{receipt['eventId']:<40}{receipt['failedObjects']} objects  "
                              f"{receipt['writtenAt'] or ''}"))
        return 0
    try:
        operation_id = operation_id_of(reference)
    except InvalidExportRequestError as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    record = connection.gcs.read(connection.state_bucket, connection.state_path("receipts", f"{operation_id}.json"))
    if record is None:
        print(f"error: no receipt for operation {operation_id}: only imports with objects that did not land "
              "have one (dicom-events receipts lists them)", file=sys.stderr)
        return 1
    data: dict[str, Any] = dict(record.data)
    failed = [str(uri) for uri in data.get("failedObjects") or []]
    if as_json:
        print(json.dumps({"operationId": operation_id, **data}, indent=2))
        return 0
    print(aligned("receipt", f"op-{operation_id}: {len(failed)} objects not in the store when it was written"))
    print(aligned("operation", str(data.get("operation") or "")))
    for uri in failed:
        print(aligned("", uri))
    print(aligned("redrive", f"dicom-events redrive op-{operation_id}  (re-imports those still missing)"))
    return 0
