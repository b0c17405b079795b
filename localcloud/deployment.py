"""What the operator CLI talks to: one deployment of the pipeline, real or local, as plain data.

A `Deployment` names the project, the DICOM store, the buckets, topics and subscriptions, and the
import function's environment (so that the CLI classifies uploads with the function's own rule).
It comes from one of three places, and the rest of the CLI cannot tell them apart:

- Terraform's outputs (`terraform output -json` of infra/): a real project. `emulators` is None,
  so the clients use Google's endpoints and the application default credentials.
- the config file `dicom-events configure` writes from those outputs (the same data, saved, so an
  operator needs no Terraform state on the machine that runs the CLI);
- a running local cloud's `endpoints.json` (`--local`): the same names on the emulators, with
  anonymous credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions.core.errors import ConfigurationError
from functions.settings import Settings
from localcloud.config import IMPORT_TARGET, LocalConfig

CONFIG_ENV = "DICOM_EVENTS_CONFIG"
CONFIG_FORMAT = 1
# Terraform outputs (infra/outputs.tf) this module reads; tests/infra holds them against the file.
TERRAFORM_OUTPUTS = (
    "project_id", "region", "dicom_store", "buckets", "export_requests_topic", "completion_topic",
    "export_dead_letter_topic", "completion_subscription", "export_dead_letter_subscription", "import_environment",
)
_TERRAFORM_TIMEOUT_SECONDS = 120


class DeploymentError(ValueError):
    """No usable deployment description; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Emulators:
    """Where the local cloud's emulators listen (endpoints.json)."""

    storage: str  # http://host:port
    pubsub: str  # host:port (gRPC, no TLS)
    healthcare: str  # http://host:port
    bigquery: str  # http://host:port


@dataclass(frozen=True, kw_only=True)
class Deployment:
    project: str
    dicom_store: str  # projects/P/locations/L/datasets/D/dicomStores/S
    upload_bucket: str
    export_bucket: str
    state_bucket: str
    export_requests_topic: str  # projects/P/topics/T
    completion_topic: str
    export_dead_letter_topic: str | None
    # The CLI's durable pull subscription on the completion topic (`events` reads it).
    completion_subscription: str | None
    export_dead_letter_subscription: str | None
    # The import function's environment (FUNCTION_VARIABLES["import_dicom_on_upload"]).
    import_environment: Mapping[str, str]
    region: str | None = None
    stream_table: str | None = None  # project.dataset.table the store streams to (local cloud only)
    emulators: Emulators | None = None  # None: Google's endpoints and application default credentials
    # Local cloud only: function instances and restarts, for `status`.
    function_instances: Mapping[str, Any] = field(default_factory=dict)
    logs: str | None = None  # local cloud only: the folder of the emulators' and functions' logs
    origin: str = ""  # where this description came from, for messages

    @property
    def is_local(self) -> bool:
        return self.emulators is not None

    def import_settings(self) -> Settings:
        """The import function's settings, exactly as it reads them at its start."""
        try:
            return Settings.from_env(dict(self.import_environment), IMPORT_TARGET)
        except ConfigurationError as exc:
            raise DeploymentError(f"{self.origin}: the import function's environment is not usable: {exc}") from None

    # -- the config file -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        if self.emulators is not None:
            raise DeploymentError("a local cloud is found by --local, not by a config file")
        return {
            "format": CONFIG_FORMAT,
            "project": self.project,
            "region": self.region,
            "dicomStore": self.dicom_store,
            "buckets": {"upload": self.upload_bucket, "export": self.export_bucket, "state": self.state_bucket},
            "topics": {"exportRequests": self.export_requests_topic, "completions": self.completion_topic,
                       "exportDeadLetter": self.export_dead_letter_topic},
            "subscriptions": {"completions": self.completion_subscription,
                              "exportDeadLetter": self.export_dead_letter_subscription},
            "importEnvironment": dict(self.import_environment),
        }

    @classmethod
    def from_config(cls, data: Mapping[str, Any], origin: str) -> Deployment:
        """A config file's content (`to_json`); raises DeploymentError."""
        if data.get("format") != CONFIG_FORMAT:
            raise DeploymentError(f"{origin}: not a dicom-events config (format {CONFIG_FORMAT}); "
                                  "write one with: dicom-events configure --from-terraform infra/")
        try:
            buckets, topics, subs = data["buckets"], data["topics"], data["subscriptions"]
            deployment = cls(
                project=str(data["project"]), region=data.get("region"), dicom_store=str(data["dicomStore"]),
                upload_bucket=str(buckets["upload"]), export_bucket=str(buckets["export"]),
                state_bucket=str(buckets["state"]), export_requests_topic=str(topics["exportRequests"]),
                completion_topic=str(topics["completions"]), export_dead_letter_topic=topics.get("exportDeadLetter"),
                completion_subscription=subs.get("completions"),
                export_dead_letter_subscription=subs.get("exportDeadLetter"),
                import_environment={str(k): str(v) for k, v in dict(data["importEnvironment"]).items()},
                origin=origin,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeploymentError(f"{origin}: incomplete config ({type(exc).__name__}: {exc})") from None
        deployment.import_settings()  # a broken environment is refused now, not at the first upload
        return deployment

    # -- Terraform -------------------------------------------------------------------------
    @classmethod
    def from_terraform_outputs(cls, outputs: Mapping[str, Any], origin: str) -> Deployment:
        """`terraform output -json` of infra/ (each output is `{"value": ..., "type": ...}`)."""
        missing = [name for name in TERRAFORM_OUTPUTS if name not in outputs]
        if missing:
            raise DeploymentError(f"{origin}: Terraform outputs missing: {', '.join(missing)} "
                                  "(apply infra/ of this version first: terraform apply)")

        def value(name: str) -> Any:
            entry = outputs[name]
            return entry.get("value") if isinstance(entry, Mapping) and "value" in entry else entry

        buckets = value("buckets") or {}
        try:
            deployment = cls(
                project=str(value("project_id")), region=value("region"), dicom_store=str(value("dicom_store")),
                upload_bucket=str(buckets["upload"]), export_bucket=str(buckets["export"]),
                state_bucket=str(buckets["state"]), export_requests_topic=str(value("export_requests_topic")),
                completion_topic=str(value("completion_topic")),
                export_dead_letter_topic=value("export_dead_letter_topic"),
                completion_subscription=value("completion_subscription"),
                export_dead_letter_subscription=value("export_dead_letter_subscription"),
                import_environment={str(k): str(v) for k, v in dict(value("import_environment")).items()},
                origin=origin,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeploymentError(f"{origin}: unexpected Terraform outputs ({type(exc).__name__}: {exc})") from None
        deployment.import_settings()
        return deployment

    # -- the local cloud -------------------------------------------------------------------
    @classmethod
    def from_local_endpoints(cls, endpoints: Mapping[str, Any], config: LocalConfig | None = None,
                             origin: str = "the local cloud") -> Deployment:
        """A running local cloud (its endpoints.json). endpoints.json does not carry the
        functions' environment: it is built as the stack builds it (`LocalConfig.function_env`),
        so settings a caller of `Stack.start` overrode are only known when `config` is given."""
        emulators = Emulators(storage=str(endpoints["storage"]), pubsub=str(endpoints["pubsub"]),
                              healthcare=str(endpoints["healthcare"]), bigquery=str(endpoints.get("bigquery", "")))
        buckets = endpoints["buckets"]
        env = (config or LocalConfig()).function_env(IMPORT_TARGET, storage=emulators.storage, pubsub=emulators.pubsub,
                                                     healthcare=emulators.healthcare, bigquery=emulators.bigquery)
        env.update(DICOM_STORE=str(endpoints["dicomStore"]), DICOM_STATE_BUCKET=str(buckets["state"]))
        topics = endpoints.get("topics") or {}
        subs = endpoints.get("subscriptions") or {}
        project = str(endpoints["project"])
        return cls(
            project=project, region=endpoints.get("location"), dicom_store=str(endpoints["dicomStore"]),
            upload_bucket=str(buckets["upload"]), export_bucket=str(buckets["export"]),
            state_bucket=str(buckets["state"]),
            export_requests_topic=str(topics.get("exportRequests", f"projects/{project}/topics/"
                                                                   f"{LocalConfig.export_requests_topic}")),
            completion_topic=str(topics.get("completions", f"projects/{project}/topics/"
                                                          f"{LocalConfig.completions_topic}")),
            export_dead_letter_topic=topics.get("exportDeadLetter"),
            completion_subscription=subs.get("completions"),
            export_dead_letter_subscription=subs.get("exportDeadLetter"),
            import_environment=env,
            stream_table=endpoints.get("streamTable"),
            emulators=emulators,
            function_instances=dict(endpoints.get("functionInstances") or {}),
            logs=endpoints.get("logs"),
            origin=origin,
        )


def default_config_path() -> Path:
    """$DICOM_EVENTS_CONFIG, else $XDG_CONFIG_HOME/dicom-events/deployment.json (~/.config/...)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dicom-events" / "deployment.json"


def load_config(path: Path) -> Deployment:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DeploymentError(f"no deployment configured ({path} does not exist); write it once with: "
                              "dicom-events configure --from-terraform infra/ (or add --local for the local "
                              "cloud)") from None
    except OSError as exc:
        raise DeploymentError(f"{path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise DeploymentError(f"{path} is not JSON; write it again with: dicom-events configure") from None
    if not isinstance(data, dict):
        raise DeploymentError(f"{path} is not a dicom-events config")
    return Deployment.from_config(data, str(path))


def save_config(deployment: Deployment, path: Path) -> None:
    """Writes the config atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(deployment.to_json(), indent=2) + "\n")
    tmp.replace(path)


def terraform_outputs(infra_dir: Path) -> dict[str, Any]:
    """`terraform output -json` in `infra_dir`; raises DeploymentError."""
    terraform = shutil.which("terraform")
    if terraform is None:
        raise DeploymentError("terraform is not on PATH (or save `terraform output -json` to a file and "
                              "pass it with --from-outputs FILE)")
    if not Path(infra_dir).is_dir():
        raise DeploymentError(f"{infra_dir} is not a folder")
    try:
        done = subprocess.run([terraform, f"-chdir={infra_dir}", "output", "-json", "-no-color"],
                              capture_output=True, text=True, timeout=_TERRAFORM_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"terraform output in {infra_dir} did not answer within "
                              f"{_TERRAFORM_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        raise DeploymentError(f"terraform output in {infra_dir} failed: {done.stderr.strip()[:500]}")
    return read_outputs(done.stdout, f"terraform output in {infra_dir}")


def read_outputs(text: str, origin: str) -> dict[str, Any]:
    try:
        outputs = json.loads(text)
    except ValueError:
        raise DeploymentError(f"{origin}: not the JSON of `terraform output -json`") from None
    if not isinstance(outputs, dict) or not outputs:
        raise DeploymentError(f"{origin}: no outputs (was `terraform apply` run in infra/?)")
    return outputs
