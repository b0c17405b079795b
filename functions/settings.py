"""Typed, frozen configuration read once from the environment at cold start.

Every variable name is part of the product: `infra/` sets exactly the variables each function
reads (`FUNCTION_VARIABLES`, checked by tests/infra). A bad value raises `ConfigurationError`
naming the variable, so a broken deployment fails at start instead of on the first event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from functions import log
from functions.core.errors import ConfigurationError, InvalidExportRequestError

T = TypeVar("T")

STORE_NAME_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+$")
TOPIC_NAME_RE = re.compile(r"^projects/[^/]+/topics/[A-Za-z][-A-Za-z0-9._~%+]{2,254}$")
BUCKET_RE = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$")
STORAGE_CLASSES = frozenset({"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"})
DEFAULT_HEALTHCARE_API_URL = "https://healthcare.googleapis.com"
DEFAULT_BIGQUERY_API_URL = "https://bigquery.googleapis.com"

# Variables read by every function.
_COMMON = (
    "DICOM_STORE",
    "DICOM_STATE_BUCKET",
    "DICOM_STATE_PREFIX",
    "DICOM_STAGING_BUCKET",
    "DICOM_UPLOAD_BUCKET",
    "HEALTHCARE_API_URL",
    "DICOM_MAX_CONCURRENT_OPERATIONS",
    "DICOM_CLAIM_LEASE_SECONDS",
    "DICOM_HTTP_TIMEOUT_SECONDS",
    "DICOM_RETRY_DEADLINE_SECONDS",
    "LOG_LEVEL",
)
# Variables that shape import batches; the poller reads them too because it finishes batches
# whose starter died.
_IMPORT = (
    "DICOM_IMPORT_PREFIXES",
    "DICOM_IMPORT_NAME_PATTERN",
    "DICOM_DEBOUNCE_SECONDS",
    "DICOM_SETTLE_SECONDS",
    "DICOM_STORAGE_CLASS_BY_PREFIX",
    "DICOM_IMPORT_COALESCE_SECONDS",
)

FUNCTION_VARIABLES: Mapping[str, frozenset[str]] = {
    "import_dicom_on_upload": frozenset(_COMMON + _IMPORT + ("DICOM_MAX_EVENT_AGE_SECONDS",)),
    "export_dicom_on_message": frozenset(
        _COMMON
        + ("DICOM_COMPLETION_TOPIC", "DICOM_EXPORT_ALLOWED_DESTINATIONS", "DICOM_MAX_EVENT_AGE_SECONDS",
           "BIGQUERY_API_URL", "DICOM_SQL_MAX_ROWS", "DICOM_SQL_TIMEOUT_SECONDS",
           "DICOM_SQL_ALLOWED_DATASETS", "DICOM_SQL_MAX_BYTES_BILLED", "DICOM_SQL_SERVICE_ACCOUNT")
    ),
    "poll_dicom_operations": frozenset(
        _COMMON + _IMPORT + ("DICOM_COMPLETION_TOPIC", "DICOM_POLL_CONCURRENCY", "DICOM_FAILED_OBJECTS_CAP")
    ),
}
ALL_VARIABLES: frozenset[str] = frozenset().union(*FUNCTION_VARIABLES.values())


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Configuration of one deployment. Field docs name the environment variable."""

    dicom_store: str  # DICOM_STORE: projects/P/locations/L/datasets/D/dicomStores/S
    state_bucket: str  # DICOM_STATE_BUCKET: claims, queue, operation records, staging, receipts
    state_prefix: str = ""  # DICOM_STATE_PREFIX: "" or "some/prefix/" inside the state bucket
    # DICOM_STAGING_BUCKET: where staged copies go (under `{state_prefix}staging/`); "" = the state
    # bucket. A bucket of their own keeps their copy and delete off the state bucket's write rate
    # (docs/decisions/0754).
    staging_bucket: str = ""
    # DICOM_UPLOAD_BUCKET: the only bucket (besides the state bucket's staging) imports read; ""
    # = any bucket but the state bucket (functions.core.job_checks).
    upload_bucket: str = ""
    completion_topic: str = ""  # DICOM_COMPLETION_TOPIC: projects/P/topics/T
    healthcare_api_url: str = DEFAULT_HEALTHCARE_API_URL  # HEALTHCARE_API_URL
    import_prefixes: tuple[str, ...] = ()  # DICOM_IMPORT_PREFIXES: comma-separated; empty = whole bucket
    import_name_pattern: re.Pattern[str] = field(  # DICOM_IMPORT_NAME_PATTERN (regex, searched)
        default_factory=lambda: re.compile(r"(?i)\.dcm$")
    )
    debounce_seconds: float = 5.0  # DICOM_DEBOUNCE_SECONDS: batching window length
    settle_seconds: float = 2.0  # DICOM_SETTLE_SECONDS: wait after a window closes for stragglers
    max_concurrent_operations: int = 5  # DICOM_MAX_CONCURRENT_OPERATIONS: LROs per store at once
    # DICOM_IMPORT_COALESCE_SECONDS: while another import runs, a queued import waits (taking later
    # uploads) until it is this old; 0 starts it at once when a slot is free. See docs/decisions/0700.
    import_coalesce_seconds: float = 300.0
    claim_lease_seconds: float = 30.0  # DICOM_CLAIM_LEASE_SECONDS: after this a dead starter's work is taken over
    max_event_age_seconds: float = 3600.0  # DICOM_MAX_EVENT_AGE_SECONDS: older events are dropped
    storage_class_by_prefix: tuple[tuple[str, str], ...] = ()  # DICOM_STORAGE_CLASS_BY_PREFIX: "p/=NEARLINE,..."
    export_allowed_destinations: tuple[str, ...] = ()  # DICOM_EXPORT_ALLOWED_DESTINATIONS: gs:// prefixes
    bigquery_api_url: str = DEFAULT_BIGQUERY_API_URL  # BIGQUERY_API_URL: the `sql` selector's BigQuery
    sql_max_rows: int = 1_000_000  # DICOM_SQL_MAX_ROWS: more rows from a `sql` selector are REJECTED
    sql_timeout_seconds: float = 60.0  # DICOM_SQL_TIMEOUT_SECONDS: a slower `sql` query is REJECTED
    # DICOM_SQL_ALLOWED_DATASETS: `dataset` (in the store's project) or `project.dataset` entries a
    # `sql` selector may read; empty = the selector is refused (docs/decisions/0870).
    sql_allowed_datasets: tuple[str, ...] = ()
    sql_max_bytes_billed: int = 10 * 1024**3  # DICOM_SQL_MAX_BYTES_BILLED: maximumBytesBilled of each query
    # DICOM_SQL_SERVICE_ACCOUNT: the account queries run as (impersonated); "" = the function's own.
    sql_service_account: str = ""
    poll_concurrency: int = 16  # DICOM_POLL_CONCURRENCY: parallel operations.get calls
    failed_objects_cap: int = 100  # DICOM_FAILED_OBJECTS_CAP: names listed in a completion event
    http_timeout_seconds: float = 60.0  # DICOM_HTTP_TIMEOUT_SECONDS: per HTTP call
    retry_deadline_seconds: float = 30.0  # DICOM_RETRY_DEADLINE_SECONDS: in-process retry budget
    log_level: str = "INFO"  # LOG_LEVEL

    @property
    def dataset(self) -> str:
        """projects/P/locations/L/datasets/D"""
        return self.dicom_store.rsplit("/dicomStores/", 1)[0]

    @property
    def staging(self) -> str:
        """The bucket staged copies are written to."""
        return self.staging_bucket or self.state_bucket

    def is_staging_bucket(self, bucket: str) -> bool:
        """May staged copies of this deployment be in `bucket`? The staging bucket, or the state
        bucket (where they were before a staging bucket of their own was set)."""
        return bucket in (self.state_bucket, self.staging)

    @property
    def project(self) -> str:
        return self.dicom_store.split("/")[1]

    @property
    def sql_datasets(self) -> tuple[tuple[str, str], ...]:
        """`sql_allowed_datasets` as (project, dataset) pairs; a bare dataset is in `project`."""
        from functions.core.sql_gate import parse_allowed_datasets

        return parse_allowed_datasets(self.sql_allowed_datasets, self.project)

    def state_path(self, *parts: str) -> str:
        """Object name inside the state bucket, under the configured prefix."""
        return self.state_prefix + "/".join(parts)

    def storage_class_for(self, object_name: str) -> str | None:
        """The blob storage class of the longest matching configured prefix, if any."""
        best: tuple[int, str] | None = None
        for prefix, storage_class in self.storage_class_by_prefix:
            if object_name.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), storage_class)
        return best[1] if best else None

    @classmethod
    def from_env(cls, env: Mapping[str, str], function: str | None = None) -> Settings:
        """Reads the variables of `function` (all variables when None) from `env`.

        Raises:
            ConfigurationError: a required variable is missing or a value is malformed.
        """
        names = FUNCTION_VARIABLES[function] if function else ALL_VARIABLES
        reader = _Reader(env, names)
        return cls(
            dicom_store=reader.required(
                "DICOM_STORE", _match(STORE_NAME_RE, "projects/P/locations/L/datasets/D/dicomStores/S")
            ),
            state_bucket=reader.required("DICOM_STATE_BUCKET", _match(BUCKET_RE, "a bucket name")),
            state_prefix=reader.optional("DICOM_STATE_PREFIX", _prefix, ""),
            staging_bucket=reader.optional("DICOM_STAGING_BUCKET", _match(BUCKET_RE, "a bucket name"), ""),
            upload_bucket=reader.optional("DICOM_UPLOAD_BUCKET", _match(BUCKET_RE, "a bucket name"), ""),
            completion_topic=reader.required_if_read(
                "DICOM_COMPLETION_TOPIC", _match(TOPIC_NAME_RE, "projects/P/topics/T"), ""
            ),
            healthcare_api_url=reader.optional("HEALTHCARE_API_URL", _url, DEFAULT_HEALTHCARE_API_URL),
            import_prefixes=reader.optional("DICOM_IMPORT_PREFIXES", _csv, ()),
            import_name_pattern=reader.optional(
                "DICOM_IMPORT_NAME_PATTERN", _regex, re.compile(r"(?i)\.dcm$")
            ),
            debounce_seconds=reader.optional("DICOM_DEBOUNCE_SECONDS", _positive_float, 5.0),
            settle_seconds=reader.optional("DICOM_SETTLE_SECONDS", _non_negative_float, 2.0),
            max_concurrent_operations=reader.optional("DICOM_MAX_CONCURRENT_OPERATIONS", _positive_int, 5),
            import_coalesce_seconds=reader.optional("DICOM_IMPORT_COALESCE_SECONDS", _non_negative_float, 300.0),
            claim_lease_seconds=reader.optional("DICOM_CLAIM_LEASE_SECONDS", _positive_float, 30.0),
            max_event_age_seconds=reader.optional("DICOM_MAX_EVENT_AGE_SECONDS", _positive_float, 3600.0),
            storage_class_by_prefix=reader.optional("DICOM_STORAGE_CLASS_BY_PREFIX", _storage_classes, ()),
            export_allowed_destinations=reader.optional(
                "DICOM_EXPORT_ALLOWED_DESTINATIONS", _gcs_prefixes, ()
            ),
            bigquery_api_url=reader.optional("BIGQUERY_API_URL", _url, DEFAULT_BIGQUERY_API_URL),
            sql_max_rows=reader.optional("DICOM_SQL_MAX_ROWS", _positive_int, 1_000_000),
            sql_timeout_seconds=reader.optional("DICOM_SQL_TIMEOUT_SECONDS", _positive_float, 60.0),
            sql_allowed_datasets=reader.optional("DICOM_SQL_ALLOWED_DATASETS", _datasets, ()),
            sql_max_bytes_billed=reader.optional("DICOM_SQL_MAX_BYTES_BILLED", _positive_int, 10 * 1024**3),
            sql_service_account=reader.optional("DICOM_SQL_SERVICE_ACCOUNT", _service_account, ""),
            poll_concurrency=reader.optional("DICOM_POLL_CONCURRENCY", _positive_int, 16),
            failed_objects_cap=reader.optional("DICOM_FAILED_OBJECTS_CAP", _positive_int, 100),
            http_timeout_seconds=reader.optional("DICOM_HTTP_TIMEOUT_SECONDS", _positive_float, 60.0),
            retry_deadline_seconds=reader.optional("DICOM_RETRY_DEADLINE_SECONDS", _positive_float, 30.0),
            log_level=reader.optional("LOG_LEVEL", _log_level, "INFO"),
        )


class _Reader:
    """Reads only the variables a function owns; the rest keep their defaults."""

    def __init__(self, env: Mapping[str, str], names: frozenset[str]) -> None:
        self._env = env
        self._names = names

    def _parse(self, name: str, parse: Callable[[str], T]) -> T:
        raw = self._env[name].strip()
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigurationError(f"invalid {name}={raw!r}: {exc}") from None

    def required(self, name: str, parse: Callable[[str], T]) -> T:
        if not self._env.get(name, "").strip():
            raise ConfigurationError(f"missing required environment variable {name}")
        return self._parse(name, parse)

    def required_if_read(self, name: str, parse: Callable[[str], T], default: T) -> T:
        return self.required(name, parse) if name in self._names else default

    def optional(self, name: str, parse: Callable[[str], T], default: T) -> T:
        if name not in self._names or not self._env.get(name, "").strip():
            return default
        return self._parse(name, parse)


def _match(pattern: re.Pattern[str], expected: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not pattern.match(raw):
            raise ValueError(f"expected {expected}")
        return raw

    return parse


def _prefix(raw: str) -> str:
    return raw.strip("/") + "/"


def _url(raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise ValueError("expected an http(s) URL")
    return raw.rstrip("/")


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _regex(raw: str) -> re.Pattern[str]:
    try:
        return re.compile(raw)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from None


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("expected a number > 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("expected a number >= 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def _storage_classes(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _csv(raw):
        prefix, sep, storage_class = item.rpartition("=")
        if not sep or storage_class.upper() not in STORAGE_CLASSES:
            raise ValueError(f"expected prefix=CLASS pairs, CLASS one of {sorted(STORAGE_CLASSES)}")
        pairs.append((prefix, storage_class.upper()))
    return tuple(pairs)


def _gcs_prefixes(raw: str) -> tuple[str, ...]:
    # The export function's own rule: an entry that passes here is one a destination can match.
    from functions.core.export_request import normalize_allowlist_entry

    prefixes = []
    for entry in _csv(raw):
        try:
            prefixes.append(normalize_allowlist_entry(entry))
        except InvalidExportRequestError as exc:
            raise ValueError(f"{exc.reason}; expected gs://bucket[/prefix]") from None
    return tuple(prefixes)


def _datasets(raw: str) -> tuple[str, ...]:
    from functions.core.sql_gate import parse_allowed_datasets

    entries = _csv(raw)
    parse_allowed_datasets(entries, "project")  # the form only; the project comes from DICOM_STORE
    return entries


def _service_account(raw: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com", raw):
        raise ValueError("expected a service account e-mail (NAME@PROJECT.iam.gserviceaccount.com)")
    return raw


def _log_level(raw: str) -> str:
    # The same rule `log.configure` applies: a value accepted here never fails there.
    return log.parse_level(raw)
