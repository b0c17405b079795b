"""The Terraform configuration in infra/, held against the code it deploys.

Terraform providers cannot be downloaded here, so `terraform validate` cannot run; these tests
parse the HCL (python-hcl2) and check what matters to the product: each function's entry point
exists in main.py, each function gets exactly the environment variables functions/settings.py
reads for it, the triggers deliver the events the functions handle, and IAM stays narrow.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from pathlib import Path
from typing import Any

import pytest

from functions.settings import FUNCTION_VARIABLES
from tests.infra.hcl import INFRA, MODULE, ROOT, load_dir, strings

ENTRY_POINTS = {
    "import": "import_dicom_on_upload",
    "export": "export_dicom_on_message",
    "poll": "poll_dicom_operations",
}

# Project-level grants are allowed only for roles that cannot be granted on anything narrower
# for the job they do. Role -> why.
PROJECT_LEVEL_ALLOWLIST = {
    # IAM lists "Project" as the lowest-level resource of this role.
    "roles/eventarc.eventReceiver": "Eventarc trigger identity of the Cloud Storage trigger",
    # Logs Writer has no narrower resource; the build account writes build logs.
    "roles/logging.logWriter": "build service account: build logs",
    # Only with a condition naming the gcf-v2-sources buckets (created by Google, so unnamed here).
    "roles/storage.objectViewer": "build service account: the function source copies",
    # bigquery.jobs.create is a project permission; the data is granted on the allowed datasets only.
    "roles/bigquery.jobUser": "query account (sql selectors) and Healthcare service agent (streaming)",
}

# Healthcare API permissions the custom roles may carry (access-control page of the API).
HEALTHCARE_PERMISSIONS = {
    "healthcare.dicomStores.import",
    "healthcare.dicomStores.export",
    "healthcare.dicomStores.dicomWebRead",
    "healthcare.operations.get",
    "healthcare.dicomStores.dicomWebWrite",  # what dicomStores.setBlobStorageSettings checks
}

PUBLIC_PRINCIPALS = ("allusers", "allauthenticatedusers")


# --------------------------------------------------------------------------- parsing helpers


@pytest.fixture(scope="module")
def root() -> dict[str, Any]:
    return load_dir(INFRA)


@pytest.fixture(scope="module")
def module() -> dict[str, Any]:
    return load_dir(MODULE)


def _resources(config: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return config.get("resource", {}).get(rtype, {})


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block `name` of a resource body."""
    blocks = body[name]
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block"
    return blocks[0]


def _environment_names(root: dict[str, Any], function_key: str) -> set[str]:
    """Resolves `environment = merge(local.a, local.b, ...)` of one function to its variable names."""
    expression = root["locals"]["functions"][function_key]["environment"]
    match = re.fullmatch(r"\$\{merge\(((?:local\.\w+)(?:, local\.\w+)*)\)\}", expression)
    assert match, f"{function_key}: environment must be merge() of named locals, got {expression!r}"
    names: set[str] = set()
    for ref in match.group(1).split(", "):
        piece = root["locals"][ref.removeprefix("local.")]
        assert isinstance(piece, dict), f"{ref} must be a literal map"
        overlap = names & set(piece)
        assert not overlap, f"{function_key}: {sorted(overlap)} set twice"
        names |= set(piece)
    return names


# --------------------------------------------------------------------------- code <-> config


def test_entry_points_are_decorated_functions_in_main_py() -> None:
    main = ROOT / "main.py"
    assert main.exists(), "main.py (the functions' entry points) does not exist yet"
    tree = ast.parse(main.read_text(encoding="utf-8"))
    decorated = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.decorator_list
    }
    missing = set(ENTRY_POINTS.values()) - decorated
    assert not missing, f"entry points missing from main.py (or not decorated): {sorted(missing)}"


def test_the_functions_are_the_three_entry_points(root: dict[str, Any]) -> None:
    functions = root["locals"]["functions"]
    assert {key: fn["entry_point"] for key, fn in functions.items()} == ENTRY_POINTS
    assert set(ENTRY_POINTS.values()) == set(FUNCTION_VARIABLES)


@pytest.mark.parametrize("function_key", sorted(ENTRY_POINTS))
def test_environment_is_exactly_what_the_function_reads(root: dict[str, Any], function_key: str) -> None:
    names = _environment_names(root, function_key)
    expected = set(FUNCTION_VARIABLES[ENTRY_POINTS[function_key]])
    assert not expected - names, f"{function_key}: not set: {sorted(expected - names)}"
    assert not names - expected, f"{function_key}: set but never read: {sorted(names - expected)}"


def test_the_framework_has_a_thread_for_every_request_an_instance_takes(root: dict[str, Any]) -> None:
    # functions-framework's gunicorn runs THREADS threads (by default 4 per CPU); a request beyond
    # them waits in the socket, and an import request waits for its group's record write.
    framework = root["locals"]["framework_environment"]
    assert framework == ("${{for key, settings in local.function_settings : "
                         "key => {THREADS = tostring(settings.max_instance_request_concurrency)}}}")
    assert root["locals"]["function_defaults"]["import"]["max_instance_request_concurrency"] >= 32


def test_environment_values_point_at_the_deployed_resources(root: dict[str, Any]) -> None:
    locals_ = root["locals"]
    assert locals_["env_common"]["DICOM_STORE"] == "${local.dicom_store_name}"
    assert locals_["env_common"]["DICOM_STATE_BUCKET"] == '${google_storage_bucket.buckets["state"].name}'
    assert (
        locals_["env_completion"]["DICOM_COMPLETION_TOPIC"]
        == '${google_pubsub_topic.topics["completions"].id}'
    )
    assert "local.export_allowed_destinations" in locals_["env_export"]["DICOM_EXPORT_ALLOWED_DESTINATIONS"]
    # By default an export may write to the export bucket only.
    assert "gs://${local.bucket_names.export}" in locals_["export_allowed_destinations"]


def test_one_function_module_deploys_all_three(root: dict[str, Any], module: dict[str, Any]) -> None:
    assert not _resources(root, "google_cloudfunctions2_function"), "functions belong in modules/function"
    call = root["module"]["function"]
    assert call["source"] == "./modules/function"
    assert call["for_each"] == "${local.functions}"
    assert call["entry_point"] == "${each.value.entry_point}"
    assert call["environment_variables"] == "${merge(each.value.environment, local.framework_environment[each.key])}"

    (function,) = _resources(module, "google_cloudfunctions2_function").values()
    assert _block(function, "build_config")["entry_point"] == "${var.entry_point}"
    service = _block(function, "service_config")
    assert service["environment_variables"] == "${var.environment_variables}"
    assert service["service_account_email"] == "${google_service_account.runtime.email}"
    assert _resources(module, "google_service_account")["runtime"], "one runtime identity per function"


# --------------------------------------------------------------------------- triggers


def test_import_is_triggered_by_finalize_on_the_upload_bucket(
    root: dict[str, Any], module: dict[str, Any]
) -> None:
    # The upload bucket's finalize notifications go to the uploads topic, which triggers the import.
    trigger = root["locals"]["functions"]["import"]["event_trigger"]
    assert trigger["event_type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    assert trigger["pubsub_topic"] == '${google_pubsub_topic.topics["uploads"].id}'
    notification = _resources(root, "google_storage_notification")["uploads"]
    assert notification["bucket"] == '${google_storage_bucket.buckets["upload"].name}'
    assert notification["topic"] == '${google_pubsub_topic.topics["uploads"].id}'
    assert notification["event_types"] == ["OBJECT_FINALIZE"] and notification["payload_format"] == "JSON_API_V1"
    assert "${google_pubsub_topic_iam_member.gcs_agent_uploads_publisher}" in notification["depends_on"]
    # The module turns the object into the function's event_trigger block.
    (function,) = _resources(module, "google_cloudfunctions2_function").values()
    dynamic = function["dynamic"][0]["event_trigger"]
    content = dynamic["content"][0]
    assert content["event_type"] == "${event_trigger.value.event_type}"
    assert content["retry_policy"] == "${event_trigger.value.retry_policy}"
    assert content["service_account_email"] == "${google_service_account.trigger[0].email}"


def test_export_is_delivered_from_the_export_requests_topic_with_a_dead_letter_topic(
    root: dict[str, Any],
) -> None:
    export = root["locals"]["functions"]["export"]
    assert export["event_trigger"] is None, "delivery is the push subscription (dead-letter policy)"

    subscriptions = _resources(root, "google_pubsub_subscription")
    push = subscriptions["export_requests"]
    assert push["topic"] == '${google_pubsub_topic.topics["export_requests"].id}'
    push_config = _block(push, "push_config")
    # The path names the topic: functions-framework then sets the CloudEvent's source to it.
    assert push_config["push_endpoint"] == (
        '${module.function["export"].uri}/projects/${var.project_id}/topics/'
        '${google_pubsub_topic.topics["export_requests"].name}'
    )
    oidc = _block(push_config, "oidc_token")
    assert oidc["audience"] == '${module.function["export"].uri}'
    assert oidc["service_account_email"] == "${google_service_account.export_push.email}"
    assert export["invoker_members"] == {
        "pubsub_push": "serviceAccount:${google_service_account.export_push.email}"
    }
    assert "no_wrapper" not in push_config, "functions-framework needs the standard push envelope"

    dead_letter = _block(push, "dead_letter_policy")
    assert dead_letter["dead_letter_topic"] == '${google_pubsub_topic.topics["export_dead_letter"].id}'
    assert _block(push, "retry_policy")["maximum_backoff"] == "600s"
    # Dead letters are kept by a subscription of their own.
    assert (
        subscriptions["export_dead_letter"]["topic"]
        == '${google_pubsub_topic.topics["export_dead_letter"].id}'
    )
    assert set(root["locals"]["topics"]) == {"export_requests", "export_dead_letter", "completions", "uploads"}


def test_poller_is_called_over_http_by_the_scheduler_with_oidc(root: dict[str, Any]) -> None:
    poll = root["locals"]["functions"]["poll"]
    assert poll["event_trigger"] is None
    assert poll["invoker_members"] == {
        "scheduler": "serviceAccount:${google_service_account.scheduler.email}"
    }

    (job,) = _resources(root, "google_cloud_scheduler_job").values()
    target = _block(job, "http_target")
    assert target["uri"] == '${module.function["poll"].uri}'
    assert target["http_method"] == "POST"
    assert target["headers"] == {"Content-Type": "application/json"}
    oidc = _block(target, "oidc_token")
    assert oidc["audience"] == '${module.function["poll"].uri}'
    assert oidc["service_account_email"] == "${google_service_account.scheduler.email}"
    assert job["attempt_deadline"] == "${local.function_settings.poll.timeout_seconds}s"
    assert root["variable"]["poll_schedule"]["default"] == "* * * * *"


# --------------------------------------------------------------------------- sizing


def test_functions_serve_concurrent_requests_on_a_whole_cpu(root: dict[str, Any]) -> None:
    defaults = root["locals"]["function_defaults"]
    assert set(defaults) == set(ENTRY_POINTS)
    for key, settings in defaults.items():
        assert settings["max_instance_request_concurrency"] > 1, key
        assert float(settings["available_cpu"]) >= 1, key


def test_timeouts_fit_the_work(root: dict[str, Any]) -> None:
    defaults = root["locals"]["function_defaults"]
    variables = root["variable"]
    batching = variables["debounce_seconds"]["default"] + variables["settle_seconds"]["default"]
    assert defaults["import"]["timeout_seconds"] >= batching + 30
    assert defaults["export"]["timeout_seconds"] == 120
    assert defaults["poll"]["timeout_seconds"] == 300
    # Pub/Sub waits for the export handler before redelivering.
    ack = _resources(root, "google_pubsub_subscription")["export_requests"]["ack_deadline_seconds"]
    assert "local.function_settings.export.timeout_seconds" in ack


# --------------------------------------------------------------------------- IAM


def test_no_public_principals(root: dict[str, Any], module: dict[str, Any]) -> None:
    for config in (root, module):
        for block_type in ("resource", "data", "locals", "module"):
            for text in strings(config.get(block_type, {})):
                assert not any(p in text.lower() for p in PUBLIC_PRINCIPALS), text


def test_project_level_grants_are_allowlisted(root: dict[str, Any], module: dict[str, Any]) -> None:
    seen = set()
    for config in (root, module):
        for rtype in (
            "google_project_iam_binding",
            "google_project_iam_policy",
            "google_project_iam_audit_config",
        ):
            assert not _resources(config, rtype), f"{rtype} is not allowed"
        for name, body in _resources(config, "google_project_iam_member").items():
            assert body["role"] in PROJECT_LEVEL_ALLOWLIST, f"project-level {body['role']} ({name})"
            seen.add(body["role"])
    assert seen == set(PROJECT_LEVEL_ALLOWLIST)
    # Nobody publishes project-wide: the Cloud Storage service agent publishes to the uploads topic.
    grant = _resources(root, "google_pubsub_topic_iam_member")["gcs_agent_uploads_publisher"]
    assert grant["topic"] == '${google_pubsub_topic.topics["uploads"].name}'
    assert (grant["role"], grant["member"]) == (
        "roles/pubsub.publisher", "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}")
    # The one project-level storage grant is confined to the function-source buckets.
    (viewer,) = (
        body
        for body in _resources(root, "google_project_iam_member").values()
        if body["role"] == "roles/storage.objectViewer"
    )
    (condition,) = viewer["condition"]
    assert condition["expression"] == 'resource.name.startsWith("projects/_/buckets/gcf-v2-sources-")'
    # And only an Eventarc trigger identity receives events.
    receiver = _resources(module, "google_project_iam_member")["event_receiver"]
    assert receiver["member"] == "serviceAccount:${google_service_account.trigger[0].email}"


def test_healthcare_permissions_are_custom_roles_bound_on_the_store_or_dataset(root: dict[str, Any]) -> None:
    roles = root["locals"]["healthcare_roles"]
    for name, role in roles.items():
        assert set(role["permissions"]) <= HEALTHCARE_PERMISSIONS, name
    assert set().union(*(set(r["permissions"]) for r in roles.values())) == HEALTHCARE_PERMISSIONS

    store = root["locals"]["dicom_store_grants"]
    dataset = root["locals"]["dataset_grants"]
    # operations.get is checked on the dataset; the rest on the store.
    assert {g["role"] for g in dataset.values()} == {"operationReader"}
    assert "operationReader" not in {g["role"] for g in store.values()}

    def granted(grants: dict[str, Any], function_key: str) -> set[str]:
        return {g["role"] for g in grants.values() if g["member"] == f'${{local.runtime["{function_key}"]}}'}

    assert granted(store, "import") == {"dicomImporter"}
    # + redrive (import), + setStorageClass (dicomStorageClassWriter)
    assert granted(store, "export") == {"dicomExporter", "dicomWebReader", "dicomImporter", "dicomStorageClassWriter"}
    assert granted(store, "poll") == {"dicomImporter", "dicomExporter", "dicomWebReader", "dicomStorageClassWriter"}
    assert granted(dataset, "poll") == {"operationReader"}
    assert _resources(root, "google_healthcare_dicom_store_iam_member")["grants"]["dicom_store_id"] == (
        "${local.dicom_store_name}"
    )
    assert (
        _resources(root, "google_healthcare_dataset_iam_member")["grants"]["dataset_id"]
        == "${local.dataset_name}"
    )


def test_bucket_grants_follow_the_data_flow(root: dict[str, Any]) -> None:
    grants = root["locals"]["bucket_grants"]
    by_member: dict[str, set[tuple[str, str]]] = {}
    for grant in grants.values():
        by_member.setdefault(grant["member"], set()).add((grant["bucket"], grant["role"]))
    viewer, user, admin = (
        "roles/storage.objectViewer",
        "roles/storage.objectUser",
        "roles/storage.objectAdmin",
    )
    assert by_member['${local.runtime["import"]}'] == {("upload", viewer), ("state", user), ("staging", user)}
    # upload: redrives stage copies of the receipt's objects
    assert by_member['${local.runtime["export"]}'] == {("state", user), ("upload", viewer), ("staging", user)}
    assert by_member['${local.runtime["poll"]}'] == {("upload", viewer), ("state", user), ("staging", user)}
    assert by_member["${local.healthcare_agent}"] == {
        ("upload", viewer),
        ("state", viewer),
        ("staging", viewer),  # reads staged copies, never writes them
        ("export", admin),
    }
    # Nobody else may touch staged copies.
    assert {m for m, grants in by_member.items() if any(b == "staging" for b, _ in grants)} == {
        '${local.runtime["import"]}', '${local.runtime["export"]}', '${local.runtime["poll"]}',
        "${local.healthcare_agent}"}
    topics = root["locals"]["topic_grants"]
    assert {(g["topic"], g["member"]) for g in topics.values()} == {
        ("completions", '${local.runtime["export"]}'),
        ("completions", '${local.runtime["poll"]}'),
    }


# --------------------------------------------------------------------------- storage, source, variables


def test_buckets_are_private_uniform_and_expire_state(root: dict[str, Any]) -> None:
    bucket = _resources(root, "google_storage_bucket")["buckets"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert set(root["locals"]["buckets"]) == {"upload", "export", "state", "staging", "source"}
    staging = root["locals"]["buckets"]["staging"]
    assert staging["lifecycle_rules"] == ["${local.staging_lifecycle_rule}"]
    assert root["locals"]["staging_lifecycle_rule"]["matches_prefix"] == ["${local.state_prefix}staging/"]
    assert root["locals"]["staging_lifecycle_rule"]["age"] == "${var.staging_retention_days}"
    assert (staging["versioning"], staging["soft_delete_seconds"]) == (False, 0)
    assert root["locals"]["env_common"]["DICOM_STAGING_BUCKET"] == '${google_storage_bucket.buckets["staging"].name}'
    prefixes = set()
    for rule in root["locals"]["state_lifecycle_rules"]:
        if rule == "${local.staging_lifecycle_rule}":
            rule = root["locals"]["staging_lifecycle_rule"]
        for prefix in rule["matches_prefix"]:
            prefixes.add(prefix.removeprefix("${local.state_prefix}"))
    assert {"seen/", "done/", "receipts/", "staging/", "filters/", "exports/", "manifests/", "refusals/",
            "redrives/"} <= prefixes
    assert "${local.staging_lifecycle_rule}" in root["locals"]["state_lifecycle_rules"]  # copies staged before


def test_the_seen_files_outlive_the_oldest_event_taken(root: dict[str, Any]) -> None:
    checks = root["check"] if isinstance(root["check"], dict) else {k: v for c in root["check"] for k, v in c.items()}
    (assertion,) = checks["seen_files_outlive_late_events"]["assert"]
    assert assertion["condition"] == "${var.state_retention_days * 86400 > var.max_event_age_seconds}"
    variables = root["variable"]
    assert variables["state_retention_days"]["default"] * 86400 > variables["max_event_age_seconds"]["default"]


def test_source_archive_is_the_repository_root_without_non_runtime_files(root: dict[str, Any]) -> None:
    archive = root["data"]["archive_file"]["source"]
    assert archive["source_dir"] == "${path.module}/.."
    assert archive["excludes"] == "${local.source_excludes}"
    excludes = root["locals"]["source_excludes"]
    for directory in ("tests", "infra", "localcloud", "bench", "docs", "contracts", ".git"):
        assert directory in excludes, directory
    assert any(fnmatch.fnmatch(".venv-checkov", pattern) for pattern in excludes)
    assert any(fnmatch.fnmatch(".venv", pattern) for pattern in excludes)
    # Named by content: a code change is a new object, hence a redeploy.
    source = _resources(root, "google_storage_bucket_object")["source"]
    assert "${data.archive_file.source.output_md5}" in source["name"]
    # gcloud deployments leave out the same directories.
    ignored = {
        line.strip().strip("/")
        for line in (ROOT / ".gcloudignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for directory in ("tests", "infra", "localcloud", "bench", "docs", "contracts", ".git"):
        assert directory in ignored, f".gcloudignore misses {directory}/"


def _excluded(relative: str, patterns: list[str]) -> bool:
    """archive_file's exclude test (doublestar globs on the path relative to source_dir), approximated."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if fnmatch.fnmatchcase(relative, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(name, pattern[3:]):
            return True
    return False


def test_source_archive_holds_what_the_functions_run(root: dict[str, Any]) -> None:
    patterns = root["locals"]["source_excludes"]
    kept: list[str] = []
    for directory, subdirectories, files in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else f"{base}/"
        # An excluded directory is skipped with everything under it, as archive_file does.
        subdirectories[:] = [d for d in subdirectories if not _excluded(prefix + d, patterns)]
        kept.extend(prefix + f for f in files if not _excluded(prefix + f, patterns))
    for required in ("main.py", "requirements.txt", "functions/__init__.py", "functions/settings.py"):
        assert required in kept, f"{required} would be missing from the source archive"
    for path in kept:
        top = path.split("/")[0]
        assert top not in {"tests", "infra", "localcloud", "bench", "docs", "contracts", ".git"}, path
        assert not top.startswith(".venv"), path
        assert "__pycache__" not in path, path


@pytest.mark.parametrize("directory", [INFRA, MODULE], ids=["root", "module"])
def test_every_variable_has_a_description_and_a_type(directory: Path) -> None:
    variables = load_dir(directory)["variable"]
    for name, body in variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"


def test_enumerable_variables_are_validated(root: dict[str, Any]) -> None:
    variables = root["variable"]
    for name in (
        "region",
        "log_level",
        "export_bucket_storage_class",
        "storage_class_by_prefix",
        "function_settings",
        "runtime",
        "existing_dicom_store",
    ):
        assert variables[name].get("validation"), f"variable {name} has no validation"


def test_terraform_version_is_a_range(root: dict[str, Any]) -> None:
    # The providers are pinned to the versions whose schemas are checked (test_provider_schema.py).
    (terraform,) = root["terraform"]
    assert terraform["required_version"] == ">= 1.5"


def test_the_readme_variable_table_matches_variables_tf(root: dict[str, Any]) -> None:
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `[^`]*` \| [^|]* \| (.*) \|$", readme, re.MULTILINE))
    variables = root["variable"]
    assert list(rows) == list(variables), "the table lists the variables of variables.tf, in order"
    for name, body in variables.items():
        assert rows[name] == body["description"].replace("|", "\\|"), name


def test_bigquery_grants_are_least_privilege(root: dict[str, Any]) -> None:
    grants = _resources(root, "google_bigquery_dataset_iam_member")
    assert set(grants) == {"healthcare_stream_writer", "sql_readers"}
    writer = grants["healthcare_stream_writer"]
    assert (writer["role"], writer["member"]) == ("roles/bigquery.dataEditor", "${local.healthcare_agent}")
    # The query account reads the allowed datasets; the export function holds no BigQuery role.
    readers = grants["sql_readers"]
    assert readers["role"] == "roles/bigquery.dataViewer"
    assert readers["member"] == "serviceAccount:${google_service_account.sql.email}"
    assert readers["for_each"] == "${local.sql_readable_datasets}"
    jobs = _resources(root, "google_project_iam_member")["bigquery_job_users"]
    assert jobs["role"] == "roles/bigquery.jobUser"
    assert set(jobs["for_each"]) == {"sql", "healthcare"}
    assert "runtime[\"export\"]" not in str(jobs["for_each"])
    # The export function may impersonate the query account, and only it.
    token = _resources(root, "google_service_account_iam_member")["export_impersonates_sql"]
    assert token["service_account_id"] == "${google_service_account.sql.name}"
    assert token["role"] == "roles/iam.serviceAccountTokenCreator"
    assert root["locals"]["env_export"]["DICOM_SQL_SERVICE_ACCOUNT"] == "${google_service_account.sql.email}"
    # The query account has no Cloud Storage role anywhere.
    for config_resources in root["resource"].values():
        for body in config_resources.values():
            if "storage" in str(body.get("role", "")):
                assert "google_service_account.sql" not in str(body.get("member", "")), body


def test_export_requests_publishers_come_from_the_variable(root: dict[str, Any]) -> None:
    grants = root["locals"]["request_publisher_grants"]
    assert "var.export_request_publishers" in str(grants)
    assert "request_publisher_grants" in _resources(root, "google_pubsub_topic_iam_member")["grants"]["for_each"]


def test_a_slow_query_ends_inside_one_delivery(root: dict[str, Any]) -> None:
    checks = root["check"] if isinstance(root["check"], dict) else {k: v for c in root["check"] for k, v in c.items()}
    (assertion,) = checks["sql_timeout_fits_one_delivery"]["assert"]
    condition = assertion["condition"]
    assert "var.sql_timeout_seconds + 30" in condition
    assert "local.function_settings.export.timeout_seconds" in condition
    assert "google_pubsub_subscription.export_requests.ack_deadline_seconds" in condition
    defaults = root["locals"]["function_defaults"]
    assert root["variable"]["sql_timeout_seconds"]["default"] + 30 <= defaults["export"]["timeout_seconds"]


# The export function's row of the IAM table names each role it holds and where; read from the
# Terraform: role (custom roles by their key) -> what it is granted on.
_EXPORT = "local.runtime[\"export\"]"


def _export_grants_in_terraform(root: dict[str, Any]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    locals_ = root["locals"]
    for grant in locals_["dicom_store_grants"].values():
        if _EXPORT in grant["member"]:
            found.add((grant["role"], "DICOM store"))
    for grant in locals_["bucket_grants"].values():
        if _EXPORT in grant["member"]:
            found.add((grant["role"], f"{grant['bucket']} bucket"))
    for grant in locals_["topic_grants"].values():
        if _EXPORT in grant["member"]:
            found.add((grant["role"], f"{grant['topic']} topic"))
    for rtype, resources in root["resource"].items():
        if rtype.endswith("_iam_member") and rtype not in ("google_healthcare_dicom_store_iam_member",
                                                           "google_storage_bucket_iam_member",
                                                           "google_pubsub_topic_iam_member"):
            for body in resources.values():
                member = str(body.get("member", ""))
                if _EXPORT in member or "runtime[\"export\"]" in str(body.get("for_each", "")):
                    found.add((body["role"], rtype))
    return found


def _export_rows_in_readme() -> set[tuple[str, str]]:
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    rows = set()
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("export function"):
            role = re.search(r"`(roles/[\w.]+)`|custom `(\w+)`", cells[1])
            assert role, line
            rows.add((role.group(1) or role.group(2), cells[2]))
    return rows


_WHERE = {"DICOM store": "DICOM store", "state bucket": "state bucket", "upload bucket": "upload bucket",
          "completions topic": "completions topic",
          "google_service_account_iam_member": "the query account only"}


def test_the_iam_table_lists_exactly_the_export_functions_grants(root: dict[str, Any]) -> None:
    terraform = {(role, _WHERE.get(where, where)) for role, where in _export_grants_in_terraform(root)}
    readme = _export_rows_in_readme()
    assert readme == terraform, (f"README only: {sorted(readme - terraform)}; "
                                 f"Terraform only: {sorted(terraform - readme)}")


def _readme_rows(principal_prefix: str) -> set[tuple[str, str]]:
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    rows = set()
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith(principal_prefix):
            role = re.search(r"`(roles/[\w.]+)`", cells[1])
            assert role, line
            rows.add((role.group(1), cells[2].split(" (")[0]))
    return rows


def _grants_to(root: dict[str, Any], member_text: str) -> set[tuple[str, str]]:
    """(role, resource type) of every IAM grant whose member (or for_each of members) names `member_text`."""
    found = set()
    for rtype, resources in root["resource"].items():
        if not rtype.endswith("_iam_member"):
            continue
        for body in resources.values():
            if member_text in str(body.get("member", "")) or member_text in str(body.get("for_each", "")):
                found.add((body["role"], rtype))
    return found


def test_the_iam_table_lists_the_query_accounts_and_the_storage_agents_grants(root: dict[str, Any]) -> None:
    where = {"google_project_iam_member": "**project**",
             "google_bigquery_dataset_iam_member": "each allowed dataset of this project",
             "google_pubsub_topic_iam_member": "uploads topic"}
    query = {(role, where[rtype]) for role, rtype in _grants_to(root, "google_service_account.sql.email")}
    assert query == _readme_rows("query account"), (query, _readme_rows("query account"))
    storage_agent = {(role, where[rtype]) for role, rtype in
                     _grants_to(root, "data.google_storage_project_service_account.gcs.email_address")}
    assert storage_agent == _readme_rows("Cloud Storage service agent") == {("roles/pubsub.publisher", "uploads topic")}
    publishers = _readme_rows("members of `export_request_publishers`")
    assert publishers == {("roles/pubsub.publisher", "export-requests topic")}
    assert "var.export_request_publishers" in str(root["locals"]["request_publisher_grants"])
