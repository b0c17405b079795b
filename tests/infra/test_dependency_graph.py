"""No dependency cycle in infra/, as Terraform itself finds them (tests/infra/graph_mirror.py).

Runs `terraform init` and `terraform validate` on a copy of infra/'s reference graph made of
built-in `terraform_data` resources: no provider is needed, so it runs offline.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.infra.graph_mirror import Mirror, interpolations, validate
from tests.infra.hcl import INFRA, load_dir


def test_terraform_finds_no_cycle_in_infra(tmp_path: Path) -> None:
    result = validate(INFRA, tmp_path / "mirror")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success! The configuration is valid." in result.stdout


def test_the_mirror_holds_every_block_of_infra() -> None:
    for directory in (INFRA, *sorted(p for p in (INFRA / "modules").iterdir() if p.is_dir())):
        config = load_dir(directory)
        text = Mirror(directory).render()
        names = set(re.findall(r'^resource "terraform_data" "(\w+)"', text, re.MULTILINE))
        for mode, prefix in (("resource", ""), ("data", "data__")):
            for rtype, entries in config.get(mode, {}).items():
                for name in entries:
                    assert f"{prefix}{rtype}__{name}" in names, (directory, mode, rtype, name)
        for kind in ("variable", "output", "module"):
            for name in config.get(kind, {}):
                assert re.search(rf'^{kind} "{name}" {{', text, re.MULTILINE), (directory, kind, name)
        for name in config.get("locals", {}):
            assert re.search(rf"^  {name} = \[", text, re.MULTILINE), (directory, name)
    # Edges are kept: depends_on and module outputs by name.
    root = Mirror(INFRA).render()
    assert re.search(r'module\.function\["export"\]\.uri', root)
    assert "depends_on = [terraform_data.google_project_service__enabled" in root


MODULE_WITH_OUTPUT = '''
variable "name" {}
resource "google_service_account" "account" {
  account_id = var.name
}
output "member" {
  value = "serviceAccount:${google_service_account.account.email}"
}
'''

# The shape of the cycle infra/ had: a resource waits for a grant, the grant names a module's
# output, and the module's instances are keyed by a map that holds the resource's name.
CYCLE = '''
resource "google_healthcare_dicom_store" "store" {
  name       = "s"
  dataset    = "d"
  depends_on = [google_bigquery_dataset_iam_member.grants]
}
resource "google_bigquery_dataset_iam_member" "grants" {
  for_each   = { reader = local.runtime["export"] }
  dataset_id = "d"
  role       = "roles/bigquery.dataViewer"
  member     = each.value
}
locals {
  runtime   = { for key, fn in module.function : key => fn.member }
  functions = { export = { store = google_healthcare_dicom_store.store.name } }
}
module "function" {
  source   = "./modules/function"
  for_each = local.functions
  name     = each.value.store
}
'''


def _write(tmp_path: Path, root: str) -> Path:
    source = tmp_path / "original"
    (source / "modules" / "function").mkdir(parents=True)
    (source / "main.tf").write_text(root, encoding="utf-8")
    (source / "modules" / "function" / "main.tf").write_text(MODULE_WITH_OUTPUT, encoding="utf-8")
    return source


def test_a_cycle_through_a_module_call_is_reported(tmp_path: Path) -> None:
    result = validate(_write(tmp_path, CYCLE), tmp_path / "mirror")
    assert result.returncode != 0
    assert "Error: Cycle" in result.stderr, result.stdout + result.stderr


def test_the_same_graph_without_the_wait_on_the_grant_is_valid(tmp_path: Path) -> None:
    acyclic = CYCLE.replace("  depends_on = [google_bigquery_dataset_iam_member.grants]\n", "")
    result = validate(_write(tmp_path, acyclic), tmp_path / "mirror")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_module_input_the_module_does_not_declare_is_reported(tmp_path: Path) -> None:
    wrong = CYCLE.replace("  name     = each.value.store\n", "  name     = each.value.store\n  nmae = 1\n")
    wrong = wrong.replace("  depends_on = [google_bigquery_dataset_iam_member.grants]\n", "")
    result = validate(_write(tmp_path, wrong), tmp_path / "mirror")
    assert result.returncode != 0
    assert 'An argument named "nmae" is not expected here' in result.stderr, result.stderr


def test_interpolations_are_read_from_templates_and_escapes_skipped() -> None:
    text = 'a ${var.x} b $${var.literal} c ${join(",", [for k in local.y : "${k}}"])}'
    assert list(interpolations(text)) == ["var.x", 'join(",", [for k in local.y : "${k}}"])']
