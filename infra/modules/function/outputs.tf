output "name" {
  description = "Function name."
  value       = google_cloudfunctions2_function.function.name
}

output "id" {
  description = "Function resource ID."
  value       = google_cloudfunctions2_function.function.id
}

output "uri" {
  description = "run.app URI of the function's Cloud Run service (the URL to call and the OIDC audience)."
  value       = google_cloudfunctions2_function.function.service_config[0].uri
}

output "url" {
  description = "cloudfunctions.net URL of the function."
  value       = google_cloudfunctions2_function.function.url
}

output "service" {
  description = "Name of the underlying Cloud Run service."
  value       = google_cloudfunctions2_function.function.service_config[0].service
}

output "service_account_email" {
  description = "Email of the runtime service account."
  value       = google_service_account.runtime.email
}

output "service_account_member" {
  description = "IAM member of the runtime service account (\"serviceAccount:EMAIL\")."
  value       = "serviceAccount:${google_service_account.runtime.email}"
}

output "trigger_service_account_email" {
  description = "Email of the Eventarc trigger's service account; null for an HTTP function."
  value       = one(google_service_account.trigger[*].email)
}
