/******************************************
  BigQuery: the dataset the DICOM store streams its metadata to (sql selectors query it)
 *****************************************/

locals {
  stream_table_uri = "bq://${var.project_id}.${google_bigquery_dataset.stream.dataset_id}.${var.stream_table_id}"
}

resource "google_bigquery_dataset" "stream" {
  # checkov:skip=CKV_GCP_81:CMEK is optional (var.bigquery_kms_key_name); without it BigQuery encrypts with Google-managed keys.
  project     = var.project_id
  dataset_id  = var.stream_dataset_id
  location    = coalesce(var.healthcare_location, var.region)
  description = "DICOM metadata streamed by the store (streamConfigs); queried by the export function's sql selector."
  labels      = local.labels

  dynamic "default_encryption_configuration" {
    for_each = var.bigquery_kms_key_name == null ? [] : [var.bigquery_kms_key_name]
    content {
      kms_key_name = default_encryption_configuration.value
    }
  }

  depends_on = [google_project_service.enabled]
}

# The Healthcare service agent creates and appends to the stream table. A resource of its own: the
# DICOM store waits for it, and a wait on a grant to a function's account would be a dependency
# cycle (the functions' environment names the store; docs/decisions/0412).
resource "google_bigquery_dataset_iam_member" "healthcare_stream_writer" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.stream.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = local.healthcare_agent
}

locals {
  # DICOM_SQL_ALLOWED_DATASETS: the stream dataset unless the variable lists others.
  sql_allowed_datasets = coalesce(var.sql_allowed_datasets, [google_bigquery_dataset.stream.dataset_id])
  # The allowed datasets of this project (bare ids, or qualified with this project's id).
  sql_readable_datasets = toset([for d in local.sql_allowed_datasets : element(split(".", d), length(split(".", d)) - 1)
  if length(split(".", d)) == 1 || startswith(d, "${var.project_id}.")])
}

# The query account reads the allowed datasets, and nothing else (docs/decisions/0872).
resource "google_bigquery_dataset_iam_member" "sql_readers" {
  for_each = local.sql_readable_datasets

  project    = var.project_id
  dataset_id = each.value
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.sql.email}"

  depends_on = [google_bigquery_dataset.stream]
}

# Running a query job is a project permission (bigquery.jobs.create): jobUser has no narrower
# resource. The data itself is reachable only through the dataset grants above.
resource "google_project_iam_member" "bigquery_job_users" {
  for_each = {
    sql        = "serviceAccount:${google_service_account.sql.email}"
    healthcare = local.healthcare_agent
  }

  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = each.value
}
