output "functions" {
  description = "Per function (import, export, poll): name, run.app URI, runtime service account."
  value = {
    for key, fn in module.function : key => {
      name            = fn.name
      uri             = fn.uri
      service_account = fn.service_account_email
    }
  }
}

output "poll_function_uri" {
  description = "URI the scheduler calls (POST, OIDC)."
  value       = module.function["poll"].uri
}

output "buckets" {
  description = "Bucket names by role: upload, export, state, source."
  value       = { for key, bucket in google_storage_bucket.buckets : key => bucket.name }
}

output "upload_bucket" {
  description = "Bucket to upload .dcm files to."
  value       = google_storage_bucket.buckets["upload"].name
}

output "export_requests_topic" {
  description = "Topic to publish export requests to (projects/P/topics/T)."
  value       = google_pubsub_topic.topics["export_requests"].id
}

output "export_dead_letter_topic" {
  description = "Dead-letter topic of export requests."
  value       = google_pubsub_topic.topics["export_dead_letter"].id
}

output "export_dead_letter_subscription" {
  description = "Subscription that keeps dead-lettered export requests."
  value       = google_pubsub_subscription.export_dead_letter.id
}

output "completion_topic" {
  description = "Topic of completion events (DICOM_COMPLETION_TOPIC)."
  value       = google_pubsub_topic.topics["completions"].id
}

output "dataset" {
  description = "Healthcare dataset (projects/P/locations/L/datasets/D)."
  value       = local.dataset_name
}

output "dicom_store" {
  description = "DICOM store (DICOM_STORE: projects/P/locations/L/datasets/D/dicomStores/S)."
  value       = local.dicom_store_name
}

output "scheduler_job" {
  description = "Cloud Scheduler job that runs the poller."
  value       = google_cloud_scheduler_job.poll.id
}

output "healthcare_service_agent" {
  description = "Cloud Healthcare service agent (reads uploads and filters, writes exports)."
  value       = google_project_service_identity.healthcare.email
}

output "build_service_account" {
  description = "Service account Cloud Build builds the functions as (projects/P/serviceAccounts/EMAIL)."
  value       = local.build_service_account
}

output "functions_repository" {
  description = "Artifact Registry repository of the functions' images."
  value       = google_artifact_registry_repository.functions.id
}

# Read by the operator CLI (`dicom-events configure --from-terraform infra/`).
output "project_id" {
  description = "Project that hosts the pipeline."
  value       = var.project_id
}

output "region" {
  description = "Region of the functions and buckets."
  value       = var.region
}

output "completion_subscription" {
  description = "Pull subscription on the completion topic that keeps events for the operator CLI (dicom-events events)."
  value       = google_pubsub_subscription.completions_cli.id
}

output "import_environment" {
  description = "The import function's environment: the CLI classifies uploads and finds the state prefix with the function's own settings."
  value       = local.functions.import.environment
}
