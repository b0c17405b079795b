terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.50.0" # the root module's pin (tests/infra/provider_schema)
    }
  }
}
