"""Cloud Functions entry points. Wiring only: the work lives in `functions/`.

Settings are read at cold start for the deployed target (FUNCTION_TARGET), so a bad variable
fails the deployment instead of the first event; network clients are created on first use.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Any

import functions_framework

from functions import log
from functions.boundary import attributes_of, run_event
from functions.settings import FUNCTION_VARIABLES, Settings

if TYPE_CHECKING:
    import flask
    from cloudevents.http import CloudEvent

    from functions.wiring import Deps

# Before the settings, so that their error is logged as JSON too; a bad LOG_LEVEL falls back to
# INFO here and is then rejected by the settings with the variable's name.
log.configure(log.level_or_default(os.environ.get("LOG_LEVEL")))


@functools.cache
def _settings(function: str) -> Settings:
    return Settings.from_env(os.environ, function)


@functools.cache
def _deps(function: str) -> Deps:
    from functions.wiring import Deps

    return Deps.from_settings(_settings(function))


@functools.cache
def _import_handler() -> Any:
    from functions.imports.import_on_upload import ImportOnUpload

    deps = _deps("import_dicom_on_upload")
    return ImportOnUpload(deps.settings, deps.gcs, deps.batcher)


if os.environ.get("FUNCTION_TARGET") in FUNCTION_VARIABLES:
    _settings(os.environ["FUNCTION_TARGET"])  # fail fast at cold start


@functions_framework.cloud_event
def import_dicom_on_upload(cloud_event: CloudEvent) -> None:
    """Cloud Storage object finalized: record the upload; the window's leader batches it."""
    from functions.core.events import StorageObjectEvent

    attributes = attributes_of(cloud_event)

    def work() -> None:
        event = StorageObjectEvent.from_cloud_event(attributes, cloud_event.data)
        with log.context(object=event.uri):
            _import_handler().handle(event)

    run_event("import_dicom_on_upload", str(attributes.get("id", "")), work)


@functions_framework.cloud_event
def export_dicom_on_message(cloud_event: CloudEvent) -> None:
    """Pub/Sub message on the export-requests topic: validate it and start a filtered export
    (or, for `"action": "redrive"`, re-import what a failed import's receipt names)."""
    from functions.core.events import PubsubMessage
    from functions.exports.export_on_message import ExportOnMessage
    from functions.exports.redrive import Redriver, is_redrive

    attributes = attributes_of(cloud_event)
    deps = _deps("export_dicom_on_message")

    def work() -> None:
        message = PubsubMessage.from_cloud_event(attributes, cloud_event.data)
        if is_redrive(message.data):
            Redriver.from_deps(deps).handle(message)
        else:
            ExportOnMessage.from_deps(deps).handle(message)

    run_event("export_dicom_on_message", str(attributes.get("id", "")), work)


@functions_framework.http
def poll_dicom_operations(request: flask.Request) -> flask.typing.ResponseReturnValue:
    """Cloud Scheduler tick: publish completion events, start queued jobs, recover dead work."""
    from functions.imports.poll_operations import Poller

    deps = _deps("poll_dicom_operations")
    with log.context(function="poll_dicom_operations"):
        summary = Poller(deps.settings, deps.gcs, deps.healthcare, deps.queue, deps.batcher,
                         deps.publisher).run()
    body = summary.to_json()
    # Partial failure is reported in the body; only a run that achieved nothing is an error.
    status = 500 if summary.errors and not (summary.finished or summary.jobs_started or summary.running) else 200
    return json.dumps(body), status, {"Content-Type": "application/json"}
