"""`make demo`: the whole product on the local cloud, through the three functions.

Start the stack with every function, upload a synthetic study set (the import function batches
it, the poller reports it), export one study as DICOM (Explicit VR Little Endian) and one series
as PNG by publishing export requests (the export function starts them, the poller reports them),
then, once the store has streamed the imported instances to the local BigQuery, export what a
`sql` selector picks from that table; print the completion events and the objects written, stop. The same code paths as
`python -m localcloud ingest` and `python -m localcloud export`.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom

from localcloud import synthetic
from localcloud.components import ComponentError
from localcloud.config import LocalConfig
from localcloud.connect import LocalCloud
from localcloud.export_cli import ExportResult, build_request, render_result, run_export
from localcloud.ingest import render_summary, run_ingest
from localcloud.progress import Reporter, aligned
from localcloud.stack import Stack, StackError

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DICOM_MIME_TYPE = f"application/dicom; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
PNG_MIME_TYPE = "image/png"
UPLOAD_PREFIX = "demo"
EXPORT_PREFIX = "demo"
# Short timings: batches close 2 s after the first upload, the poller runs every second.
DEMO_CONFIG = LocalConfig(poll_interval_seconds=1.0, debounce_seconds=2.0, settle_seconds=0.5)
STEP_TIMEOUT_SECONDS = 60.0
_UID_PART = re.compile(r"(\d+(?:\.\d+)*)(\.[A-Za-z]+)?")


def short_uid(uid: str) -> str:
    """The tail of a UID: enough to tell the demo's studies and series apart on screen."""
    return "…" + uid[-8:]


def short_object(name: str, prefix: str) -> str:
    """`prefix/STUDY/SERIES/INSTANCE.ext` relative to `prefix`, each UID cut to its tail."""
    parts = []
    for part in name[len(prefix):].lstrip("/").split("/"):
        match = _UID_PART.fullmatch(part)
        if match and len(match.group(1)) > 12:
            parts.append(short_uid(match.group(1)) + (match.group(2) or ""))
        else:
            parts.append(part)
    return "/".join(parts)


def _size(num: int) -> str:
    return f"{num / 1024:.1f} KiB" if num >= 1024 else f"{num} B"


def run(state_dir: Path | None = None, reporter: Reporter | None = None) -> int:
    """The demo; 0 when everything succeeded, 1 otherwise."""
    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="localcloud-demo-") as scratch:
        work = Path(scratch)
        started = time.monotonic()
        try:
            stack = Stack.start(state_dir or work / "state", config=DEMO_CONFIG)
        except (StackError, ComponentError) as exc:
            reporter.say("error", str(exc))
            return 1
        with stack, LocalCloud(stack.endpoints) as cloud:
            reporter.say("local cloud", f"up in {time.monotonic() - started:.1f} s "
                                        f"(functions: {', '.join(stack.endpoints['functions'])})")
            ok = _flow(cloud, work, reporter)
        reporter.say("local cloud", "stopped")
        verdict = "everything succeeded" if ok else "something did not succeed (see above)"
        reporter.say("demo", f"{verdict} in {time.monotonic() - started:.1f} s")
        return 0 if ok else 1


def _flow(cloud: LocalCloud, work: Path, reporter: Reporter) -> bool:
    studies = synthetic.generate(work / "synthetic")
    reporter.say("synthetic", f"{len(studies.studies)} studies, {len(studies.files)} instances, "
                              f"{len(studies.studies)} study.json sidecars")
    result = run_ingest(cloud, studies.root, UPLOAD_PREFIX, timeout=STEP_TIMEOUT_SECONDS, reporter=reporter,
                        settings=cloud.import_settings(DEMO_CONFIG))
    for line in render_summary(result):
        reporter.print(line)
    imported = ok = result.ok and result.imported == len(studies.files)

    study = studies.studies[0]
    series_study = studies.studies[1] if len(studies.studies) > 1 else study
    series = series_study.series[0]
    exports = [
        ("dicom", f"study {short_uid(study.uid)} ({study.instance_count} instances) as DICOM Explicit VR LE",
         [f"/studies/{study.uid}"], DICOM_MIME_TYPE, study.instance_count),
        ("png", f"series {short_uid(series.uid)} ({len(series.instances)} instances) as PNG",
         [f"/studies/{series_study.uid}/series/{series.uid}"], PNG_MIME_TYPE, len(series.instances)),
    ]
    for folder, what, resources, mime_type, expected in exports:
        destination = f"gs://{cloud.export_bucket}/{EXPORT_PREFIX}/{folder}"
        reporter.say("export", f"{what} -> {destination}/")
        request = build_request(destination=destination, resources=resources, mime_type=mime_type,
                                request_id=f"demo-{folder}-{int(time.time())}")
        outcome = run_export(cloud, request, timeout=STEP_TIMEOUT_SECONDS, reporter=Reporter.off())
        for line in render_result(outcome):
            reporter.print(line)
        ok = _show_written(cloud, folder, expected, outcome, reporter) and ok
    if not imported:  # the stream would never hold every instance: do not wait for it
        reporter.say("export", "no SQL-selected export: the import did not store every instance")
        return False
    return _sql_export(cloud, studies, len(studies.files), reporter) and ok


def selection_sql(table: str, modality: str) -> str:
    """The seed's selection: resource paths from the stream table, here the first instance of
    every series of one modality (across studies: no single DICOMweb search says that)."""
    return ("SELECT CONCAT('/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, '/instances/', "
            f"SOPInstanceUID) FROM `{table}` WHERE Modality = '{modality}' AND InstanceNumber = 1")


def sql_selected(studies: synthetic.SyntheticSet, modality: str) -> set[str]:
    """`STUDY/SERIES/SOP` of the instances `selection_sql(..., modality)` selects from the set."""
    selected = set()
    for study in studies.studies:
        for series in study.series if study.modality == modality else ():
            for path in series.instances:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                if int(ds.InstanceNumber) == 1:
                    selected.add(f"{study.uid}/{series.uid}/{ds.SOPInstanceUID}")
    return selected


def _sql_export(cloud: LocalCloud, studies: synthetic.SyntheticSet, stored: int, reporter: Reporter) -> bool:
    """Waits for the store to have streamed every imported instance to BigQuery, then exports what
    the seed's SQL selects from that table (the export function runs the query)."""
    table = cloud.stream_table
    if table is None:
        reporter.say("error", "the store does not stream to BigQuery: nothing for SQL to select from")
        return False
    started = time.monotonic()
    streamed = cloud.streamed_instances()
    while streamed < stored and time.monotonic() - started < STEP_TIMEOUT_SECONDS:
        time.sleep(0.5)
        streamed = cloud.streamed_instances()
    reporter.say("bigquery", f"{streamed} of {stored} instances streamed to {table} "
                             f"(waited {time.monotonic() - started:.1f} s)")
    if streamed < stored:
        reporter.say("error", "the store did not stream every imported instance to BigQuery in time")
        return False
    modality = studies.studies[0].modality
    expected = sql_selected(studies, modality)
    folder = "sql"
    destination = f"gs://{cloud.export_bucket}/{EXPORT_PREFIX}/{folder}"
    sql = selection_sql(table, modality)
    reporter.say("export", f"what SQL selects ({len(expected)} instances: the first of every {modality} series) "
                           f"-> {destination}/")
    reporter.print(aligned("sql", sql))
    request = build_request(destination=destination, sql=sql, request_id=f"demo-{folder}-{int(time.time())}")
    outcome = run_export(cloud, request, timeout=STEP_TIMEOUT_SECONDS, reporter=Reporter.off())
    for line in render_result(outcome):
        reporter.print(line)
    return _show_written(cloud, folder, len(expected), outcome, reporter, exactly=expected)


def _show_written(cloud: LocalCloud, folder: str, expected: int, outcome: ExportResult,
                  reporter: Reporter, exactly: set[str] | None = None) -> bool:
    """Lists what the export wrote; True when it succeeded with `expected` objects (and, given
    `exactly`, those instances: `STUDY/SERIES/SOP`, whatever the extension)."""
    prefix = f"{EXPORT_PREFIX}/{folder}"
    blobs = sorted(cloud.storage.list_blobs(cloud.export_bucket, prefix=prefix + "/"), key=lambda b: b.name)
    reporter.say("written", f"{len(blobs)} objects under gs://{cloud.export_bucket}/{prefix}/")
    for line in written_lines([(b.name, int(b.size or 0)) for b in blobs], prefix):
        reporter.print(line)
    if not outcome.ok:
        return False
    if len(blobs) != expected:
        reporter.say("error", f"expected {expected} objects, found {len(blobs)}")
        return False
    written = {b.name[len(prefix) + 1:].rsplit(".", 1)[0] for b in blobs}
    if exactly is not None and written != exactly:
        reporter.say("error", f"{len(written - exactly)} objects not selected, {len(exactly - written)} missing")
        return False
    return True


def written_lines(objects: Sequence[tuple[str, int]], prefix: str) -> list[str]:
    width = max((len(short_object(name, prefix)) for name, _ in objects), default=0)
    return [aligned("", f"{short_object(name, prefix):<{width}}  {_size(size):>9}") for name, size in objects]
