"""`streamConfigs`: every newly stored instance becomes a row of each configured BigQuery table.

The store's instance listener only queues (store, SOP Instance UID): a STOW or import never waits
for BigQuery. One thread drains the queue in batches, reading the rows back from the index (so a
row shows the instance as committed) and writing them to every table the store streams to.
Google streams with `tabledata.insertAll`; the local BigQuery lacks it, so rows go in by DML
INSERT (docs/decisions/0800). Instance deletions are not applied, as on Google.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict

from .bqsink import BigQuerySink, SinkError, parse_table_uri
from .dicomfile import InstanceInfo
from .exporter import instance_facts
from .store import Store

log = logging.getLogger(__name__)
BATCH = 500


class Streamer:
    def __init__(self, store: Store, sink: BigQuerySink | None) -> None:
        self._store = store
        self._sink = sink
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="bigquery-stream", daemon=True)
        self._thread.start()

    def instance_stored(self, store: str, info: InstanceInfo, storage_class: str, action: str) -> None:
        if self._stream_tables(store):
            self._queue.put((store, info.sop))

    def _stream_tables(self, store: str) -> list[str]:
        configs = self._store.get_store_config(store).get("streamConfigs") or []
        uris = [(c.get("bigqueryDestination") or {}).get("tableUri") for c in configs]
        return [str(u) for u in uris if u]

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_store: dict[str, list[str]] = defaultdict(list)
            for store, sop in batch:
                by_store[store].append(sop)
            for store, sops in by_store.items():
                try:
                    self._write(store, sops)
                except Exception:  # noqa: BLE001 - the stream thread must outlive any one failure
                    log.exception("streaming %d instance(s) of %s to BigQuery failed", len(sops), store)

    def _write(self, store: str, sops: list[str]) -> None:
        if self._sink is None:
            log.warning("%s streams to BigQuery but no BigQuery endpoint is configured; %d row(s) lost",
                        store, len(sops))
            return
        facts = [instance_facts(r) for sop in dict.fromkeys(sops) for r in self._store.instances(store, sop=sop)]
        for uri in self._stream_tables(store):
            table = parse_table_uri(uri)
            if table is None:
                log.warning("%s: stream destination %s is not bq://PROJECT.DATASET.TABLE", store, uri)
                continue
            try:
                written = self._sink.write(table, facts, "WRITE_APPEND")
            except SinkError as exc:
                log.warning("%s: streaming %d row(s) to %s failed: %s", store, len(facts), table.path, exc)
                continue
            log.info("%s: streamed %d row(s) to %s", store, written, table.path)
