"""infra/ against the providers' own schemas, at exactly the versions versions.tf allows.

The schemas are extracted from the prebuilt CDK provider packages (generated from each provider's
published schema) by tests/infra/provider_schema/refresh.py; see infra/README.md, "Checks".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.infra.hcl import INFRA, load_dir
from tests.infra.provider_schema.refresh import PACKAGES, from_terraform
from tests.infra.schema_check import check_dir, provider_schema, provider_source, required_providers

MODULE_DIRS = [INFRA, *sorted(p for p in (INFRA / "modules").iterdir() if p.is_dir())]


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_resource_type_argument_and_block_is_in_the_provider_schema(directory: Path) -> None:
    errors, checked = check_dir(directory)
    assert checked, f"nothing checked in {directory}"
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=lambda p: str(p.relative_to(INFRA)))
def test_versions_tf_pins_exactly_the_checked_provider_versions(directory: Path) -> None:
    config = load_dir(directory, explicit_blocks=True)
    pinned = required_providers(config)
    assert pinned, f"{directory}: no required_providers"
    for local, spec in pinned.items():
        source = spec["source"].removeprefix("registry.terraform.io/")
        assert source in PACKAGES, f"{local} ({source}): no schema is extracted for it (refresh.py PACKAGES)"
        checked = provider_schema(source).provider_version
        constraint = re.sub(r"\s+", "", spec.get("version", ""))
        assert constraint in (checked, f"={checked}"), (
            f"{directory.name}: {local} allows {spec.get('version')!r}, but only {checked} is checked")
    # Every provider a resource uses is declared, so the pin above applies to it.
    for mode in ("resource", "data"):
        for rtype, entries in config.get(mode, {}).items():
            for body in entries.values():
                local, _ = provider_source(config, rtype, body)
                assert local in pinned, f"{directory.name}: {rtype} uses provider {local}, not in required_providers"


def test_the_committed_schemas_come_from_the_pinned_packages() -> None:
    for source, (package, version) in PACKAGES.items():
        schema = provider_schema(source)
        assert schema.source == source
        # From the pinned CDK package, or from Terraform's own output (refresh.py --from-terraform).
        assert schema.package == f"{package}=={version}" or schema.package.startswith(
            "terraform providers schema -json"), schema.package
        assert len(schema.resource) + len(schema.data) > 0
    # The whole google providers, not a hand-picked subset: grants another file might add are covered.
    for source in ("hashicorp/google", "hashicorp/google-beta"):
        resources = provider_schema(source).resource
        assert len(resources) > 1000, source
        for rtype in ("google_service_account_iam_member", "google_pubsub_topic_iam_member",
                      "google_pubsub_subscription", "google_bigquery_dataset_iam_member",
                      "google_project_iam_member", "google_storage_bucket_iam_member",
                      "google_cloud_run_v2_service_iam_member", "google_secret_manager_secret_iam_member"):
            assert rtype in resources, (source, rtype)


# --------------------------------------------------------------------------- the checker can fail


def _check(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "versions.tf").write_text(
        'terraform {\n  required_providers {\n'
        '    google      = { source = "hashicorp/google", version = "6.50.0" }\n'
        '    google-beta = { source = "hashicorp/google-beta", version = "6.50.0" }\n'
        '  }\n}\n', encoding="utf-8")
    (tmp_path / "main.tf").write_text(text, encoding="utf-8")
    errors, _ = check_dir(tmp_path)
    return errors


STORE = '''
resource "google_healthcare_dicom_store" "store" {
  %s
  name    = "s"
  dataset = "projects/p/locations/l/datasets/d"
  stream_configs {
    bigquery_destination {
      table_uri = "bq://p.d.t"
    }
  }
}
'''


def test_a_beta_only_block_is_refused_with_the_ga_provider(tmp_path: Path) -> None:
    errors = _check(tmp_path, STORE % "")
    assert len(errors) == 1 and "unsupported block type 'stream_configs'" in errors[0], errors
    assert "(google 6.50.0)" in errors[0]


def test_a_beta_only_block_is_accepted_with_the_beta_provider(tmp_path: Path) -> None:
    assert _check(tmp_path, STORE % "provider = google-beta") == []


def test_a_required_nested_block_must_be_set(tmp_path: Path) -> None:
    text = (STORE % "provider = google-beta").replace(
        'bigquery_destination {\n      table_uri = "bq://p.d.t"\n    }', "")
    errors = _check(tmp_path, text)
    assert errors == [f"{tmp_path.name}/google_healthcare_dicom_store.store (google-beta 6.50.0).stream_configs[0]: "
                      "at least 1 'bigquery_destination' block is required"], errors


CASES: dict[str, tuple[str, str]] = {
    "unknown argument": (
        'resource "google_pubsub_topic" "t" {\n  name = "t"\n  retention = "1d"\n}\n',
        "unsupported argument 'retention'"),
    "missing required argument": (
        'resource "google_pubsub_subscription" "s" {\n  name = "s"\n}\n',
        "the argument 'topic' is required"),
    "unknown nested argument": (
        'resource "google_pubsub_subscription" "s" {\n  name = "s"\n  topic = "t"\n'
        '  retry_policy {\n    minimum = "10s"\n  }\n}\n',
        "retry_policy[0]: unsupported argument 'minimum'"),
    "unknown block": (
        'resource "google_pubsub_topic" "t" {\n  name = "t"\n  schema {\n    name = "x"\n  }\n}\n',
        "unsupported block type 'schema'"),
    "block written as an argument": (
        'resource "google_pubsub_subscription" "s" {\n  name = "s"\n  topic = "t"\n'
        '  retry_policy = { minimum_backoff = "10s" }\n}\n',
        "an argument named 'retry_policy' is not expected here"),
    "argument written as a block": (
        'resource "google_pubsub_topic" "t" {\n  name = "t"\n  labels {\n    a = "b"\n  }\n}\n',
        "unsupported block type 'labels'"),
    "two of a single block": (
        'resource "google_pubsub_subscription" "s" {\n  name = "s"\n  topic = "t"\n'
        '  retry_policy {\n    minimum_backoff = "1s"\n  }\n  retry_policy {\n    minimum_backoff = "2s"\n  }\n}\n',
        "no more than 1 'retry_policy' block"),
    "unknown argument in a dynamic block": (
        'resource "google_storage_bucket" "b" {\n  name = "b"\n  location = "EU"\n'
        '  dynamic "lifecycle_rule" {\n    for_each = [1]\n    content {\n'
        '      action {\n        type = "Delete"\n      }\n      condition {\n        age_days = 1\n      }\n'
        '    }\n  }\n}\n',
        "lifecycle_rule[0].condition[0]: unsupported argument 'age_days'"),
    "resource type only in beta": (
        'resource "google_project_service_identity" "a" {\n  service = "pubsub.googleapis.com"\n}\n',
        "the provider has no resource type 'google_project_service_identity'; hashicorp/google-beta has it"),
    "unknown data source": (
        'data "google_storage_bucket_objects" "a" {\n  bucket = "b"\n}\n'
        'data "google_no_such_thing" "a" {\n}\n',
        "the provider has no data type 'google_no_such_thing'"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_checker_reports_what_terraform_would(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    errors = _check(tmp_path, text)
    assert len(errors) == 1 and expected in errors[0], errors


def test_meta_arguments_and_lifecycle_are_not_arguments(tmp_path: Path) -> None:
    text = ('resource "google_pubsub_topic" "t" {\n  count = 1\n  provider = google\n  name = "t"\n'
            '  depends_on = []\n  lifecycle {\n    prevent_destroy = true\n  }\n}\n')
    assert _check(tmp_path, text) == []


def test_terraforms_own_schema_output_converts_to_the_same_format() -> None:
    schemas = {"format_version": "1.0", "provider_schemas": {"registry.terraform.io/hashicorp/google": {
        "resource_schemas": {"google_pubsub_subscription": {"version": 0, "block": {
            "attributes": {
                "name": {"type": "string", "required": True},
                "labels": {"type": ["map", "string"], "optional": True},
                "project": {"type": "string", "optional": True, "computed": True},
                "effective_labels": {"type": ["map", "string"], "computed": True},
            },
            "block_types": {
                "retry_policy": {"nesting_mode": "list", "max_items": 1, "block": {
                    "attributes": {"minimum_backoff": {"type": "string", "optional": True}}}},
                "push_config": {"nesting_mode": "list", "min_items": 1, "max_items": 1, "block": {
                    "attributes": {"push_endpoint": {"type": "string", "required": True}}}},
                "filters": {"nesting_mode": "set", "block": {}},
            }}}},
        "data_source_schemas": {}}}}
    versions = {"terraform_version": "1.11.4",
                "provider_selections": {"registry.terraform.io/hashicorp/google": "7.1.0"}}
    converted = from_terraform(schemas, versions)["hashicorp/google"]
    assert converted["provider_version"] == "7.1.0"
    assert converted["resource"]["google_pubsub_subscription"] == {
        "required": ["name"], "optional": ["labels", "project"], "blocks": {
            "filters": {"required": [], "optional": [], "min_items": 0, "repeated": True},
            "push_config": {"required": ["push_endpoint"], "optional": [], "min_items": 1, "repeated": False},
            "retry_policy": {"required": [], "optional": ["minimum_backoff"], "min_items": 0, "repeated": False},
        }}
