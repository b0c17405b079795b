/******************************************
  Project services
 *****************************************/

locals {
  services = toset([
    "artifactregistry.googleapis.com", # function images
    "bigquery.googleapis.com",         # the store's stream table; sql selectors
    "cloudbuild.googleapis.com",       # function builds
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com", # project-level IAM grants
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "healthcare.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",    # build logs; log-based metrics (monitoring.tf)
    "monitoring.googleapis.com", # alert policies, dashboard (monitoring.tf)
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "enabled" {
  for_each = var.enable_apis ? local.services : toset([])

  project = var.project_id
  service = each.value

  # Turning an API off on destroy would break anything else in the project that uses it.
  disable_on_destroy = false
}
