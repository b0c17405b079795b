terraform {
  # `check` blocks and `optional()` object attributes with defaults need Terraform >= 1.5.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
    # google_project_service_identity (the Healthcare and Pub/Sub service agents) is beta-only.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.0, < 8.0"
    }
    # Glob patterns in archive_file.excludes need archive >= 2.5 (hashicorp/terraform-provider-archive#354).
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.5, < 3.0"
    }
  }
}
