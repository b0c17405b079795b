/******************************************
  One Cloud Run function (2nd gen) with its own identities
 *****************************************/

locals {
  has_trigger = var.event_trigger != null

  # Eventarc documents roles/eventarc.eventReceiver for every event source except Pub/Sub.
  needs_event_receiver = local.has_trigger && !startswith(try(var.event_trigger.event_type, ""), "google.cloud.pubsub.")

  # The trigger's account, when there is one, invokes too. (A for expression, not a conditional:
  # the two branches of a conditional would be objects of different types.)
  invoker_members = merge(
    var.invoker_members,
    { for email in google_service_account.trigger[*].email : "trigger" => "serviceAccount:${email}" },
  )
}

# The function's runtime identity: the data grants are made to it, on each resource, by the caller.
resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = var.service_account_id
  display_name = "Runtime of function ${var.name}"
}

# The identity Eventarc uses to deliver events: it may invoke this function and nothing else.
resource "google_service_account" "trigger" {
  count = local.has_trigger ? 1 : 0

  project      = var.project_id
  account_id   = var.trigger_service_account_id
  display_name = "Eventarc trigger of function ${var.name}"

  lifecycle {
    precondition {
      condition     = var.trigger_service_account_id != null
      error_message = "A function with an event_trigger needs trigger_service_account_id."
    }
  }
}

# Eventarc delivers through a Pub/Sub push subscription whose OIDC token is minted as the trigger's
# account by the project's Pub/Sub service agent; projects whose agent predates April 2021 need
# this grant. On this one account only.
resource "google_service_account_iam_member" "pubsub_agent_mints_trigger_tokens" {
  count = local.has_trigger && var.pubsub_service_agent != null ? 1 : 0

  service_account_id = google_service_account.trigger[0].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = var.pubsub_service_agent
}

# Project-level on purpose: roles/eventarc.eventReceiver cannot be granted on anything narrower
# than a project (IAM lists "Project" as its lowest-level resource). Allowlisted in tests/infra.
resource "google_project_iam_member" "event_receiver" {
  count = local.needs_event_receiver ? 1 : 0

  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.trigger[0].email}"
}

resource "google_cloudfunctions2_function" "function" {
  project     = var.project_id
  location    = var.region
  name        = var.name
  description = var.description
  labels      = var.labels

  build_config {
    runtime           = var.runtime
    entry_point       = var.entry_point
    service_account   = var.build_service_account
    docker_repository = var.docker_repository

    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  service_config {
    available_memory                 = var.available_memory
    available_cpu                    = var.available_cpu
    timeout_seconds                  = var.timeout_seconds
    min_instance_count               = var.min_instance_count
    max_instance_count               = var.max_instance_count
    max_instance_request_concurrency = var.max_instance_request_concurrency
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    environment_variables            = var.environment_variables
  }

  dynamic "event_trigger" {
    for_each = local.has_trigger ? [var.event_trigger] : []
    content {
      event_type            = event_trigger.value.event_type
      retry_policy          = event_trigger.value.retry_policy
      trigger_region        = coalesce(event_trigger.value.trigger_region, var.region)
      pubsub_topic          = event_trigger.value.pubsub_topic
      service_account_email = google_service_account.trigger[0].email

      dynamic "event_filters" {
        for_each = event_trigger.value.event_filters
        content {
          attribute = event_filters.value.attribute
          value     = event_filters.value.value
          operator  = event_filters.value.operator
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.max_instance_request_concurrency == 1 || tonumber(var.available_cpu) >= 1
      error_message = "Request concurrency above 1 needs available_cpu >= 1."
    }
  }

  depends_on = [
    google_project_iam_member.event_receiver,
    google_service_account_iam_member.pubsub_agent_mints_trigger_tokens,
  ]
}

# Invocation is granted on the function's Cloud Run service, to named service accounts only.
resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = local.invoker_members

  project  = var.project_id
  location = var.region
  # A 2nd-gen function's Cloud Run service carries the function's name.
  name   = google_cloudfunctions2_function.function.name
  role   = "roles/run.invoker"
  member = each.value
}
