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
    for key in ["upload", "export", "state", "source"] :
    key => coalesce(lookup(var.bucket_names, key, null), "${var.project_id}-${var.name_prefix}-${key}")
  }

  export_allowed_destinations = coalesce(var.export_allowed_destinations, ["gs://${local.bucket_names.export}"])
}

# Google-managed service agents that need grants on our resources. They are created lazily by
# Google; generating them here makes the grants below safe on a fresh project.
resource "google_project_service_identity" "agents" {
  provider = google-beta
  for_each = toset(["healthcare.googleapis.com", "pubsub.googleapis.com"])

  project = var.project_id
  service = each.value

  depends_on = [google_project_service.enabled]
}

# The Cloud Storage service agent publishes the bucket's events to Eventarc's transport topic.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.enabled]
}
