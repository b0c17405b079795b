/******************************************
  Healthcare dataset and DICOM store (created, or existing ones passed in)
 *****************************************/

locals {
  create_dicom_store  = var.existing_dicom_store == null
  create_dataset      = local.create_dicom_store && var.existing_dataset == null
  healthcare_location = coalesce(var.healthcare_location, var.region)

  # Full resource names: projects/P/locations/L/datasets/D[/dicomStores/S].
  dataset_name = (
    var.existing_dicom_store != null ? regex("^(projects/[^/]+/locations/[^/]+/datasets/[^/]+)/dicomStores/", var.existing_dicom_store)[0] :
    var.existing_dataset != null ? var.existing_dataset :
    "projects/${var.project_id}/locations/${local.healthcare_location}/datasets/${one(google_healthcare_dataset.dataset[*].name)}"
  )
  dicom_store_name = (
    local.create_dicom_store
    ? "${local.dataset_name}/dicomStores/${one(google_healthcare_dicom_store.store[*].name)}"
    : var.existing_dicom_store
  )
}

resource "google_healthcare_dataset" "dataset" {
  count = local.create_dataset ? 1 : 0

  project   = var.project_id
  name      = var.dataset_id
  location  = local.healthcare_location
  time_zone = "UTC"

  depends_on = [google_project_service.enabled]
}

resource "google_healthcare_dicom_store" "store" {
  # stream_configs exists only in google-beta (docs/decisions/0411).
  provider = google-beta
  count    = local.create_dicom_store ? 1 : 0

  name    = var.dicom_store_id
  dataset = local.dataset_name
  labels  = local.labels

  # Every stored instance's metadata lands in BigQuery, where sql selectors find it.
  stream_configs {
    bigquery_destination {
      table_uri = local.stream_table_uri
    }
  }

  # With existing_dataset nothing else orders this after the API is enabled; the stream needs the
  # service agent's grant on the dataset first (and only that grant: docs/decisions/0412).
  depends_on = [google_project_service.enabled, google_bigquery_dataset_iam_member.healthcare_stream_writer]
}
