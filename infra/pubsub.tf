/******************************************
  Topics: export requests (+ dead letters), completion events
 *****************************************/

locals {
  topics = {
    export_requests    = "${var.name_prefix}-export-requests"
    export_dead_letter = "${var.name_prefix}-export-requests-dead-letter"
    completions        = "${var.name_prefix}-completions"
    uploads            = "${var.name_prefix}-uploads"
  }
}

resource "google_pubsub_topic" "topics" {
  # checkov:skip=CKV_GCP_83:CMEK is optional (var.pubsub_kms_key_name); without it Pub/Sub encrypts with Google-managed keys.
  for_each = local.topics

  project      = var.project_id
  name         = each.value
  kms_key_name = var.pubsub_kms_key_name
  labels       = local.labels

  depends_on = [google_project_service.enabled]
}

/******************************************
  Export requests -> export function
 *****************************************/

# Delivery of export requests. A 2nd-gen Pub/Sub event_trigger makes Eventarc create and own the
# subscription, and Terraform cannot attach a dead-letter policy to a subscription it does not
# manage. So this configuration owns the subscription: a push subscription to the export
# function (OIDC-authenticated), with retry backoff and a dead-letter topic. functions-framework
# turns the push envelope into the same `google.cloud.pubsub.topic.v1.messagePublished`
# CloudEvent Eventarc would deliver; the endpoint path names the topic so that the event's
# `source` is //pubsub.googleapis.com/projects/P/topics/T. See infra/README.md.
resource "google_pubsub_subscription" "export_requests" {
  project = var.project_id
  name    = "${var.name_prefix}-export-requests-push"
  topic   = google_pubsub_topic.topics["export_requests"].id
  labels  = local.labels

  # The whole export handler runs before the ack: the deadline covers the function timeout.
  ack_deadline_seconds       = min(600, max(10, local.function_settings.export.timeout_seconds))
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${module.function["export"].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.topics["export_requests"].name}"

    oidc_token {
      service_account_email = google_service_account.export_push.email
      audience              = module.function["export"].uri
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topics["export_dead_letter"].id
    max_delivery_attempts = var.export_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher,
    google_service_account_iam_member.pubsub_agent_mints_push_tokens,
  ]
}

# Keeps what the dead-letter topic receives, so dead letters can be inspected and replayed.
resource "google_pubsub_subscription" "export_dead_letter" {
  project = var.project_id
  name    = "${var.name_prefix}-export-requests-dead-letter"
  topic   = google_pubsub_topic.topics["export_dead_letter"].id
  labels  = local.labels

  ack_deadline_seconds       = 60
  message_retention_duration = "${var.dead_letter_retention_days * 86400}s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# The operator CLI's mailbox of completion events (`dicom-events events`): events published while
# nobody reads are kept here for a week instead of being lost. Never expires while unused.
resource "google_pubsub_subscription" "completions_cli" {
  project = var.project_id
  name    = "${var.name_prefix}-completions-cli"
  topic   = google_pubsub_topic.topics["completions"].id
  labels  = local.labels

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

/******************************************
  Uploads -> import function
 *****************************************/

# Uploads reach the import function as Cloud Storage Pub/Sub notifications on a topic of ours.
# An Eventarc Cloud Storage trigger publishes through a topic Eventarc creates, for which the
# Cloud Storage service agent needs pubsub.publisher on the whole project; with our own topic it
# gets it on this one topic only (docs/decisions/0882). The import function reads both forms.
resource "google_storage_notification" "uploads" {
  bucket         = google_storage_bucket.buckets["upload"].name
  payload_format = "JSON_API_V1"
  topic          = google_pubsub_topic.topics["uploads"].id
  event_types    = ["OBJECT_FINALIZE"]

  depends_on = [google_pubsub_topic_iam_member.gcs_agent_uploads_publisher]
}
