"""The one description of the local cloud's resources: names, defaults and the functions' env.

Everything the stack creates and every variable it hands to a function comes from here, so the
stack, the CLI, the demo and the tests cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from functions.settings import FUNCTION_VARIABLES

IMPORT_TARGET = "import_dicom_on_upload"
EXPORT_TARGET = "export_dicom_on_message"
POLL_TARGET = "poll_dicom_operations"
# Short role name (endpoints.json key, CLI) -> functions-framework target in main.py.
FUNCTION_TARGETS: Mapping[str, str] = {"import": IMPORT_TARGET, "export": EXPORT_TARGET, "poll": POLL_TARGET}

# Variables every local function gets besides its own settings: where the emulators are.
EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    project: str = "local-project"
    location: str = "us-central1"
    dataset: str = "local-dataset"
    dicom_store: str = "local-store"
    # The BigQuery dataset and table the store streams its instances to (streamConfigs): what
    # `sql` selectors query. The names are infra/'s defaults (stream_dataset_id, stream_table_id).
    stream_dataset: str = "dicom_stream"
    stream_table: str = "instances"
    # Off for bulk loads that need no SQL: the local BigQuery writes about 10 rows a second.
    stream_to_bigquery: bool = True
    upload_bucket: str = "dicom-upload"
    export_bucket: str = "dicom-export"
    state_bucket: str = "dicom-state"
    export_requests_topic: str = "dicom-export-requests"
    completions_topic: str = "dicom-completions"
    notifications_topic: str = "gcs-notifications"
    export_dead_letter_topic: str = "dicom-export-requests-dlq"
    # Pull subscription the CLI reads completion events from.
    completions_subscription: str = "dicom-completions-local"
    # Streaming-pull subscription of the router (plays the import function's Eventarc Pub/Sub trigger).
    notifications_subscription: str = "gcs-notifications-router"
    # Push subscription to the export function (plays Eventarc's Pub/Sub trigger).
    export_push_subscription: str = "dicom-export-requests-push"
    # Pull subscription that keeps dead-lettered export requests visible.
    export_dead_letter_subscription: str = "dicom-export-requests-dlq-local"
    push_min_backoff_seconds: float = 1.0
    push_max_backoff_seconds: float = 10.0
    max_delivery_attempts: int = 5
    poll_interval_seconds: float = 3.0
    debounce_seconds: float = 2.0
    settle_seconds: float = 1.0
    claim_lease_seconds: float = 10.0
    log_level: str = "INFO"
    # Extra or overriding function variables (e.g. DICOM_IMPORT_PREFIXES), applied where a
    # function reads them.
    extra_function_env: Mapping[str, str] = field(default_factory=dict)

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription}"

    @property
    def dataset_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/datasets/{self.dataset}"

    @property
    def dicom_store_path(self) -> str:
        return f"{self.dataset_path}/dicomStores/{self.dicom_store}"

    @property
    def stream_table_path(self) -> str:
        """`project.dataset.table` of the stream table, as SQL names it (in backquotes)."""
        return f"{self.project}.{self.stream_dataset}.{self.stream_table}"

    def function_env(
        self, target: str, *, storage: str, pubsub: str, healthcare: str, bigquery: str
    ) -> dict[str, str]:
        """The environment of one function: only the settings it reads, plus the emulator hosts
        (`bigquery`: the local BigQuery the export function's `sql` selectors query)."""
        candidates = {
            "DICOM_STORE": self.dicom_store_path,
            "DICOM_STATE_BUCKET": self.state_bucket,
            "DICOM_UPLOAD_BUCKET": self.upload_bucket,
            "DICOM_COMPLETION_TOPIC": self.topic_path(self.completions_topic),
            "DICOM_EXPORT_ALLOWED_DESTINATIONS": f"gs://{self.export_bucket}",
            "HEALTHCARE_API_URL": healthcare,
            "BIGQUERY_API_URL": bigquery,
            "DICOM_SQL_ALLOWED_DATASETS": self.stream_dataset,
            "DICOM_DEBOUNCE_SECONDS": _number(self.debounce_seconds),
            "DICOM_SETTLE_SECONDS": _number(self.settle_seconds),
            "DICOM_CLAIM_LEASE_SECONDS": _number(self.claim_lease_seconds),
            "LOG_LEVEL": self.log_level,
            **self.extra_function_env,
        }
        owned = FUNCTION_VARIABLES[target]
        env = {name: value for name, value in candidates.items() if name in owned}
        env.update(
            STORAGE_EMULATOR_HOST=storage, PUBSUB_EMULATOR_HOST=pubsub, GOOGLE_CLOUD_PROJECT=self.project
        )
        return env


def _number(value: float) -> str:
    """2.0 -> "2", 0.5 -> "0.5": what a person would write in the variable."""
    return f"{value:g}"
