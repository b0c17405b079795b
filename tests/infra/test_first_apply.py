"""What a first `terraform apply` on Google Cloud needs, checked offline (see infra/README.md).

Each test holds the configuration to a limit or rule of the google provider or of Google Cloud
that `terraform plan` or `apply` would otherwise only find on a real project: id lengths and
characters, the provider's Healthcare IAM id parsers, custom roles in the store's project, the
build service account, Token Creator for every push identity, ingress per trigger, and the
order of API enablement.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra.hcl import INFRA, MODULE, load_dir, strings, validator

# --- limits, as the google provider (v6) validates them or as the services document them -------
# google/verify/validation.go: RFC1035NameTemplate with 4..28 inner characters.
SERVICE_ACCOUNT_ID = re.compile(r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$")
# google/verify/validation.go: IAMCustomRoleIDRegex.
CUSTOM_ROLE_ID = re.compile(r"^[a-zA-Z0-9_.]{3,64}$")
# Pub/Sub resource names (topics and subscriptions); "goog" is reserved as a prefix.
PUBSUB_NAME = re.compile(r"^(?!goog)[a-zA-Z][-a-zA-Z0-9._~%+]{2,254}$")
# Cloud Run service names (a 2nd-gen function's service carries the function's name): at most 49
# characters so that revision names fit 63 (conservative: the functions API allows 63).
FUNCTION_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,47}[a-z0-9])$")
SCHEDULER_JOB = re.compile(r"^[a-zA-Z0-9_-]{1,500}$")
REPOSITORY_ID = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])$")
BUCKET = re.compile(r"^(?!goog)(?!.*google)[a-z0-9][-a-z0-9_]{1,61}[a-z0-9]$")
# google/services/healthcare/healthcare_utils.go: ParseHealthcareDicomStoreId / DatasetId, the
# relative-link form (the provider's ProjectRegex, simplified to plain project IDs).
PROVIDER_DATASET = re.compile(
    r"^projects/([a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)/locations/([a-z0-9-]+)/datasets/([a-zA-Z0-9_-]{1,256})$")
PROVIDER_STORE = re.compile(PROVIDER_DATASET.pattern[:-1] + r"/dicomStores/([a-zA-Z0-9_-]{1,256})$")
LONGEST_PROJECT_ID = "p" * 30


@pytest.fixture(scope="module")
def root() -> dict[str, Any]:
    return load_dir(INFRA)


@pytest.fixture(scope="module")
def module() -> dict[str, Any]:
    return load_dir(MODULE)


def _allowed(root: dict[str, Any], name: str, candidates: list[str]) -> list[str]:
    accepts = validator(root["variable"][name], name)
    return [c for c in candidates if accepts(c)]


@pytest.fixture(scope="module")
def prefixes(root: dict[str, Any]) -> list[str]:
    """The shortest and the longest name_prefix the variable's validation accepts."""
    allowed = _allowed(root, "name_prefix", ["a" + "b" * n for n in range(0, 40)])
    assert allowed, "no name_prefix accepted"
    shortest, longest = min(allowed, key=len), max(allowed, key=len)
    assert len(longest) == 16, "the documented maximum of name_prefix"
    return [shortest, longest, longest[:8] + "-" + longest[9:]]


def _expand(template: str, prefix: str) -> str:
    """Evaluates the name templates used here: ${var.name_prefix} and its `replace(-, _)` form."""
    text = template.replace('${replace(var.name_prefix, "-", "_")}', prefix.replace("-", "_"))
    text = text.replace("${var.name_prefix}", prefix).replace("${var.project_id}", LONGEST_PROJECT_ID)
    assert "${" not in text, f"cannot evaluate {template!r}"
    return text


# --------------------------------------------------------------------------- derived ids


def test_every_service_account_id_fits_with_any_allowed_prefix(root: dict[str, Any], prefixes: list[str]) -> None:
    ids = root["locals"]["service_account_ids"]
    assert set(ids) == {"import_runtime", "import_trigger", "export_runtime", "poll_runtime", "poll_invoker",
                        "sql_query", "export_push", "build"}
    for prefix in prefixes:
        expanded = {key: _expand(template, prefix) for key, template in ids.items()}
        for key, account_id in expanded.items():
            assert SERVICE_ACCOUNT_ID.fullmatch(account_id), (key, account_id, len(account_id))
        assert len(set(expanded.values())) == len(expanded), "two accounts with one ID"


def test_every_service_account_takes_its_id_from_the_one_map(root: dict[str, Any], module: dict[str, Any]) -> None:
    for name, body in root["resource"]["google_service_account"].items():
        assert re.fullmatch(r"\$\{local\.service_account_ids\.\w+\}", body["account_id"]), (name, body["account_id"])
    call = root["module"]["function"]
    assert call["service_account_id"] == '${local.service_account_ids["${each.key}_runtime"]}'
    assert call["trigger_service_account_id"] == '${lookup(local.service_account_ids, "${each.key}_trigger", null)}'
    accounts = module["resource"]["google_service_account"]
    assert accounts["runtime"]["account_id"] == "${var.service_account_id}"
    assert accounts["trigger"]["account_id"] == "${var.trigger_service_account_id}"
    # Every function with a trigger has a trigger account ID in the map.
    for key, function in root["locals"]["functions"].items():
        if function["event_trigger"] is not None:
            assert f"{key}_trigger" in root["locals"]["service_account_ids"], key


def test_every_other_derived_name_fits_with_any_allowed_prefix(root: dict[str, Any], prefixes: list[str]) -> None:
    resources = root["resource"]
    role_id = resources["google_project_iam_custom_role"]["healthcare"]["role_id"]
    for prefix in prefixes:
        for key in root["locals"]["healthcare_roles"]:
            role = _expand(role_id.replace("${each.key}", key), prefix)
            assert CUSTOM_ROLE_ID.fullmatch(role), role
        for function in root["locals"]["functions"].values():
            assert FUNCTION_NAME.fullmatch(_expand(function["name"], prefix)), function["name"]
        for topic in root["locals"]["topics"].values():
            assert PUBSUB_NAME.fullmatch(_expand(topic, prefix)), topic
        for subscription in resources["google_pubsub_subscription"].values():
            assert PUBSUB_NAME.fullmatch(_expand(subscription["name"], prefix)), subscription["name"]
        job = resources["google_cloud_scheduler_job"]["poll"]["name"]
        assert SCHEDULER_JOB.fullmatch(_expand(job, prefix)), job
        repository = resources["google_artifact_registry_repository"]["functions"]["repository_id"]
        assert REPOSITORY_ID.fullmatch(_expand(repository, prefix)), repository
        bucket = root["locals"]["bucket_names"]
        template = re.search(r'"(\$\{var\.project_id\}-\$\{var\.name_prefix\}-)\$\{key\}"', bucket)
        assert template, bucket
        for key in root["locals"]["buckets"]:
            name = _expand(template.group(1), prefix) + key
            assert BUCKET.fullmatch(name), (name, len(name))


@pytest.mark.parametrize("prefix", ["goog", "googx", "my-google", "a" * 17, "a", "1ab", "ab-", "Ab"])
def test_name_prefixes_that_would_break_a_name_are_refused(root: dict[str, Any], prefix: str) -> None:
    assert not _allowed(root, "name_prefix", [prefix])


# --------------------------------------------------------------------------- Healthcare ids


HEALTHCARE_IDS = ["dicom-pipeline", "a", "A_b-9", "x" * 256, "x" * 257, "with.dot", "with space", "ü", "a/b", ""]


@pytest.mark.parametrize("value", HEALTHCARE_IDS)
def test_dataset_and_store_ids_are_what_the_provider_iam_parser_takes(root: dict[str, Any], value: str) -> None:
    dataset = f"projects/my-project/locations/europe-west4/datasets/{value}"
    parsed = PROVIDER_STORE.fullmatch(f"{dataset}/dicomStores/{value}")
    for name in ("dataset_id", "dicom_store_id"):
        assert bool(_allowed(root, name, [value])) == bool(parsed), (name, value)


EXISTING = [
    "projects/my-project/locations/europe-west4/datasets/prod/dicomStores/ct",
    "projects/other-project-1/locations/us/datasets/a_b-c/dicomStores/S-1",
    "projects/my-project/locations/europe-west4/datasets/prod.v2/dicomStores/ct",
    "projects/my-project/locations/europe-west4/datasets/prod/dicomStores/ct.1",
    "projects/123456789012/locations/europe-west4/datasets/prod/dicomStores/ct",
    "projects/my-project/locations/Europe/datasets/prod/dicomStores/ct",
    "projects/my-project/locations/europe-west4/datasets/prod",
    "projects/my-project/locations/europe-west4/datasets/prod/dicomStores/",
    "my-project/europe-west4/prod/ct",
]


@pytest.mark.parametrize("name", EXISTING)
def test_existing_names_are_what_the_provider_iam_parser_takes(root: dict[str, Any], name: str) -> None:
    store_ok = bool(_allowed(root, "existing_dicom_store", [name]))
    # Our rule is stricter in one way: a project ID, not a number (custom roles are defined there).
    provider_ok = bool(PROVIDER_STORE.fullmatch(name)) and not name.split("/")[1].isdigit()
    assert store_ok == provider_ok, name
    dataset = name.rsplit("/dicomStores/", 1)[0]
    dataset_ok = bool(_allowed(root, "existing_dataset", [dataset]))
    assert dataset_ok == (bool(PROVIDER_DATASET.fullmatch(dataset)) and not dataset.split("/")[1].isdigit()), dataset


def test_iam_grants_address_the_store_and_dataset_by_full_name(root: dict[str, Any]) -> None:
    resources = root["resource"]
    store_grants = resources["google_healthcare_dicom_store_iam_member"]["grants"]
    assert store_grants["dicom_store_id"] == "${local.dicom_store_name}"
    assert resources["google_healthcare_dataset_iam_member"]["grants"]["dataset_id"] == "${local.dataset_name}"
    # Both names are projects/P/locations/L/datasets/D[/dicomStores/S]: the provider's relative-link form.
    locals_ = root["locals"]
    assert "projects/${var.project_id}/locations/${local.healthcare_location}/datasets/" in locals_["dataset_name"]
    assert "${local.dataset_name}/dicomStores/" in locals_["dicom_store_name"]


def test_custom_roles_live_in_the_project_of_the_store(root: dict[str, Any]) -> None:
    resources = root["resource"]
    assert resources["google_project_iam_custom_role"]["healthcare"]["project"] == "${local.healthcare_project}"
    assert resources["google_project_service_identity"]["healthcare"]["project"] == "${local.healthcare_project}"
    expression = root["locals"]["healthcare_project"]
    for source in ("var.existing_dicom_store", "var.existing_dataset"):
        assert f'{source} != null ? split("/", {source})[1]' in expression, expression
    assert expression.rstrip(")}").endswith("var.project_id"), expression
    # The Healthcare agent that reads the buckets is that project's.
    assert root["locals"]["healthcare_agent"] == "serviceAccount:${google_project_service_identity.healthcare.email}"


# --------------------------------------------------------------------------- builds


def test_functions_are_built_as_an_account_with_the_documented_build_roles(
    root: dict[str, Any], module: dict[str, Any]
) -> None:
    resources = root["resource"]
    call = root["module"]["function"]
    assert call["build_service_account"] == "${local.build_service_account}"
    assert call["docker_repository"] == "${google_artifact_registry_repository.functions.id}"
    assert "google_service_account.build[*].id" in root["locals"]["build_service_account"]
    build = _block_list(module["resource"]["google_cloudfunctions2_function"]["function"], "build_config")
    assert build["service_account"] == "${var.build_service_account}"
    assert build["docker_repository"] == "${var.docker_repository}"

    member = "${local.build_member}"
    writer = resources["google_artifact_registry_repository_iam_member"]["build_writer"]
    assert (writer["role"], writer["member"]) == ("roles/artifactregistry.writer", member)
    assert writer["repository"] == "${google_artifact_registry_repository.functions.name}"
    logs = resources["google_project_iam_member"]["build_log_writer"]
    assert (logs["role"], logs["member"]) == ("roles/logging.logWriter", member)
    source = resources["google_storage_bucket_iam_member"]["build_source_reader"]
    assert (source["role"], source["member"]) == ("roles/storage.objectViewer", member)
    assert source["bucket"] == '${google_storage_bucket.buckets["source"].name}'
    copies = resources["google_project_iam_member"]["build_gcf_sources_reader"]
    assert (copies["role"], copies["member"]) == ("roles/storage.objectViewer", member)
    condition = _block_list(copies, "condition")
    assert condition["expression"] == 'resource.name.startsWith("projects/_/buckets/gcf-v2-sources-")'
    # The grants exist before the first build starts.
    for grant in ("google_artifact_registry_repository_iam_member.build_writer",
                  "google_project_iam_member.build_log_writer",
                  "google_storage_bucket_iam_member.build_source_reader",
                  "google_project_iam_member.build_gcf_sources_reader"):
        assert f"${{{grant}}}" in call["depends_on"], grant
    # An account passed in is used as is: nothing is created or granted for it.
    for body in (resources["google_service_account"]["build"], writer, logs, source, copies):
        assert body["count"] == "${var.build_service_account == null ? 1 : 0}"


def _block_list(body: dict[str, Any], name: str) -> dict[str, Any]:
    blocks = body[name]
    assert isinstance(blocks, list) and len(blocks) == 1, name
    return dict(blocks[0])


# --------------------------------------------------------------------------- push identities, ingress


def test_the_pubsub_agent_may_mint_tokens_for_every_push_identity(root: dict[str, Any], module: dict[str, Any]) -> None:
    push = root["resource"]["google_service_account_iam_member"]["pubsub_agent_mints_push_tokens"]
    assert (push["role"], push["member"]) == ("roles/iam.serviceAccountTokenCreator", "${local.pubsub_agent}")
    assert push["service_account_id"] == "${google_service_account.export_push.name}"
    # Eventarc's Cloud Storage trigger pushes with an OIDC token of the trigger's account.
    assert root["module"]["function"]["pubsub_service_agent"] == "${local.pubsub_agent}"
    trigger = module["resource"]["google_service_account_iam_member"]["pubsub_agent_mints_trigger_tokens"]
    assert trigger["role"] == "roles/iam.serviceAccountTokenCreator"
    assert trigger["member"] == "${var.pubsub_service_agent}"
    assert trigger["service_account_id"] == "${google_service_account.trigger[0].name}"
    function = module["resource"]["google_cloudfunctions2_function"]["function"]
    assert "${google_service_account_iam_member.pubsub_agent_mints_trigger_tokens}" in function["depends_on"]
    # No other Token Creator grant anywhere.
    for config in (root, module):
        for rtype, resources in config["resource"].items():
            for name, body in resources.items():
                if body.get("role") == "roles/iam.serviceAccountTokenCreator":
                    assert rtype == "google_service_account_iam_member", (rtype, name)


def test_ingress_is_internal_except_where_pubsub_push_needs_it(root: dict[str, Any], module: dict[str, Any]) -> None:
    defaults = root["locals"]["function_defaults"]
    assert {key: d["ingress_settings"] for key, d in defaults.items()} == {
        "import": "ALLOW_INTERNAL_ONLY", "export": "ALLOW_ALL", "poll": "ALLOW_INTERNAL_ONLY"}
    # The one function open to all traffic is invocable by the push identity alone.
    assert root["locals"]["functions"]["export"]["invoker_members"] == {
        "pubsub_push": "serviceAccount:${google_service_account.export_push.email}"}
    assert root["module"]["function"]["ingress_settings"] == "${local.function_settings[each.key].ingress_settings}"
    service = _block_list(module["resource"]["google_cloudfunctions2_function"]["function"], "service_config")
    assert service["ingress_settings"] == "${var.ingress_settings}"
    assert "ingress_settings" not in root["variable"], "one setting for all functions cannot be right for all three"


# --------------------------------------------------------------------------- API enablement order

# Resource type prefix -> the API it needs (the list in infra/apis.tf must hold each).
API_OF_TYPE = {
    "google_artifact_registry_": "artifactregistry.googleapis.com",
    "google_bigquery_": "bigquery.googleapis.com",
    "google_cloud_scheduler_": "cloudscheduler.googleapis.com",
    "google_cloudfunctions2_": "cloudfunctions.googleapis.com",
    "google_cloud_run_v2_": "run.googleapis.com",
    "google_healthcare_": "healthcare.googleapis.com",
    "google_logging_metric": "logging.googleapis.com",
    "google_monitoring_": "monitoring.googleapis.com",
    "google_project_iam_custom_role": "iam.googleapis.com",
    "google_service_account": "iam.googleapis.com",
    "google_project_iam_member": "cloudresourcemanager.googleapis.com",
    # Enabling APIs and generating service agents needs Service Usage on already.
    "google_project_service": "serviceusage.googleapis.com",
    "google_pubsub_": "pubsub.googleapis.com",
    "google_storage_": "storage.googleapis.com",
}
# Resource types that call no Google API (time_sleep waits in Terraform itself).
NO_API_TYPES = {"time_sleep"}
_REFERENCE = re.compile(r"\b(data\.google_\w+\.\w+|google_\w+\.\w+|module\.\w+|local\.\w+)")


def _graph(root: dict[str, Any]) -> dict[str, set[str]]:
    """Node -> the nodes it references (locals resolved), for resources, data sources and modules."""
    bodies: dict[str, Any] = {}
    for rtype, resources in root.get("resource", {}).items():
        for name, body in resources.items():
            bodies[f"{rtype}.{name}"] = body
    for rtype, sources in root.get("data", {}).items():
        for name, body in sources.items():
            bodies[f"data.{rtype}.{name}"] = body
    for name, body in root.get("module", {}).items():
        bodies[f"module.{name}"] = body
    locals_ = root["locals"]

    def references(value: Any, seen: set[str]) -> set[str]:
        found: set[str] = set()
        for text in strings(value):
            for ref in _REFERENCE.findall(text):
                if ref.startswith("local."):
                    key = ref.removeprefix("local.")
                    if key in locals_ and key not in seen:
                        seen.add(key)
                        found |= references(locals_[key], seen)
                elif ref in bodies or ref.startswith("module."):
                    found.add(ref)
        return found

    return {node: references(body, set()) for node, body in bodies.items()}


def test_every_resource_waits_for_the_apis(root: dict[str, Any]) -> None:
    graph = _graph(root)
    target = "google_project_service.enabled"

    def reaches(node: str, seen: set[str]) -> bool:
        if node == target:
            return True
        seen.add(node)
        return any(reaches(ref, seen) for ref in graph.get(node, ()) if ref not in seen)

    exempt = {target, "data.archive_file.source"}
    late = [node for node in graph if node not in exempt and not reaches(node, set())]
    assert not late, f"created without waiting for google_project_service.enabled: {late}"


def test_every_api_a_resource_needs_is_enabled(root: dict[str, Any], module: dict[str, Any]) -> None:
    services = set(re.findall(r'"([a-z]+\.googleapis\.com)"', root["locals"]["services"]))
    used = set(root["resource"]) | set(module["resource"])
    for rtype in used - NO_API_TYPES:
        needed = [api for prefix, api in API_OF_TYPE.items() if rtype.startswith(prefix)]
        assert needed, f"{rtype}: add the API it needs to API_OF_TYPE"
        assert set(needed) - {"serviceusage.googleapis.com"} <= services, (rtype, needed)
    # Eventarc delivers the Cloud Storage events; functions build with Cloud Build.
    assert {"eventarc.googleapis.com", "cloudbuild.googleapis.com", "logging.googleapis.com"} <= services
