terraform {
  # `check` blocks and `optional()` object attributes with defaults need Terraform >= 1.5.
  required_version = ">= 1.5"

  # Exactly the versions whose schemas tests/infra checks this configuration against
  # (tests/infra/provider_schema/, docs/decisions/0410); change them together.
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.50.0"
    }
    # Where the GA schema lacks what is used (docs/decisions/0411): google_project_service_identity
    # (the service agents) and the DICOM store's stream_configs.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "6.50.0"
    }
    # Glob patterns in archive_file.excludes need archive >= 2.5.
    archive = {
      source  = "hashicorp/archive"
      version = "2.7.1"
    }
    # time_sleep: the wait for new log-based metrics before the alert policies on them.
    time = {
      source  = "hashicorp/time"
      version = "0.13.1"
    }
  }
}
