"""Builds the clients and handlers of one function from its settings, once per process."""

from __future__ import annotations

from dataclasses import dataclass

from functions.batching import WindowBatcher
from functions.gcs import Gcs
from functions.healthcare import HealthcareClient
from functions.jobs import JobQueue
from functions.publish import Publisher
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
