"""Builds the clients and handlers of one function from its settings, once per process."""

from __future__ import annotations

from dataclasses import dataclass

from functions.gcp.gcs import Gcs
from functions.gcp.healthcare import HealthcareClient
from functions.gcp.publish import Publisher
from functions.imports.job_queue import JobQueue
from functions.imports.window_batcher import WindowBatcher
from functions.settings import Settings


@dataclass(frozen=True)
class Deps:
    settings: Settings
    gcs: Gcs
    healthcare: HealthcareClient
    queue: JobQueue
    batcher: WindowBatcher
    publisher: Publisher

    @classmethod
    def from_settings(cls, settings: Settings) -> Deps:
        gcs = Gcs.from_environment(settings.project, timeout=settings.http_timeout_seconds)
        healthcare = HealthcareClient(settings)
        queue = JobQueue(settings, gcs, healthcare)
        return cls(settings=settings, gcs=gcs, healthcare=healthcare, queue=queue,
                   batcher=WindowBatcher(settings, gcs, queue),
                   publisher=Publisher(settings.completion_topic, timeout=settings.http_timeout_seconds))
