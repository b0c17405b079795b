/******************************************
  Shared names, labels and service agents
 *****************************************/

locals {
  labels = merge(
    {
      app        = "dicom-pipeline"
      managed-by = "terraform"
    },
    var.labels,
  )

  # DICOM_STATE_PREFIX as functions/settings.py normalises it: "" or "some/prefix/".
  state_prefix = var.state_prefix == "" ? "" : "${trim(var.state_prefix, "/")}/"

  bucket_names = {
    for key in ["upload", "export", "state", "staging", "source"] :
    key => coalesce(lookup(var.bucket_names, key, null), "${var.project_id}-${var.name_prefix}-${key}")
  }

  export_allowed_destinations = coalesce(var.export_allowed_destinations, ["gs://${local.bucket_names.export}"])

  # Every service account this configuration creates (account_id: 6-30 characters of [a-z0-9-],
  # starting with a letter). The longest suffix plus a 16-character name_prefix is 29 characters;
  # tests/infra checks each ID with the longest and the shortest allowed prefix.
  service_account_ids = {
    import_runtime = "${var.name_prefix}-import-fn"
    import_trigger = "${var.name_prefix}-import-trg"
    export_runtime = "${var.name_prefix}-export-fn"
    poll_runtime   = "${var.name_prefix}-poll-fn"
    poll_invoker   = "${var.name_prefix}-poll-invoker"
    export_push    = "${var.name_prefix}-export-push"
    build          = "${var.name_prefix}-build"
    sql_query      = "${var.name_prefix}-sql"
  }

  # The project that holds the DICOM store: this one, or the one of an existing dataset or store.
  # The custom Healthcare roles are defined there (IAM grants a project's custom role only on
  # that project's resources) and its Healthcare service agent is the one that reads the buckets.
  healthcare_project = (
    var.existing_dicom_store != null ? split("/", var.existing_dicom_store)[1] :
    var.existing_dataset != null ? split("/", var.existing_dataset)[1] :
    var.project_id
  )
}

# Google-managed service agents that need grants on our resources. They are created lazily by
# Google; generating them here makes the grants below safe on a fresh project.
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [google_project_service.enabled]
}

# The Healthcare service agent of the store's project: it reads the import sources and filter
# files and writes the exports.
resource "google_project_service_identity" "healthcare" {
  provider = google-beta

  project = local.healthcare_project
  service = "healthcare.googleapis.com"

  depends_on = [google_project_service.enabled]
}

# The Cloud Storage service agent publishes the bucket's events to Eventarc's transport topic.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.enabled]
}
