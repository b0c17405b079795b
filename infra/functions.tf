/******************************************
  Source archive: the repository root, without what the functions do not run
 *****************************************/

locals {
  # Keep in step with /.gcloudignore (tests/infra checks both).
  source_excludes = [
    ".git",
    ".github",
    ".ci",
    ".venv*",
    ".localcloud",
    ".terraform",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "**/__pycache__",
    "**/*.pyc",
    "tests",
    "infra",
    "localcloud",
    "bench",
    "docs",
    "contracts",
    "Makefile",
    "pyproject.toml",
    "requirements-dev.txt",
  ]
}

data "archive_file" "source" {
  type        = "zip"
  source_dir  = "${path.module}/.."
  output_path = "${path.module}/build/function-source.zip"
  excludes    = local.source_excludes
}

# Named by the archive's MD5: any code change is a new object, hence a new build and revision.
resource "google_storage_bucket_object" "source" {
  bucket       = google_storage_bucket.buckets["source"].name
  name         = "functions/source-${data.archive_file.source.output_md5}.zip"
  source       = data.archive_file.source.output_path
  content_type = "application/zip"
}

/******************************************
  Sizing
 *****************************************/

locals {
  # Concurrency above 1 (with a whole vCPU) so that a burst of events does not mean one cold
  # instance per event. Import: debounce + settle + planning + starting the LRO. Poller: one
  # Scheduler run at a time (Scheduler never overlaps runs; one instance is plenty).
  # Ingress (docs/decisions/0404): Eventarc and Cloud Scheduler of the same project count as
  # internal; Pub/Sub push is documented to need a publicly reachable endpoint, so the export
  # function takes all traffic and relies on IAM (only the push account may invoke it).
  function_defaults = {
    import = {
      ingress_settings                 = "ALLOW_INTERNAL_ONLY"
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = 120
      min_instance_count               = 0
      max_instance_count               = 20
      max_instance_request_concurrency = 80
    }
    export = {
      ingress_settings                 = "ALLOW_ALL"
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = 120
      min_instance_count               = 0
      max_instance_count               = 10
      max_instance_request_concurrency = 8
    }
    poll = {
      ingress_settings                 = "ALLOW_INTERNAL_ONLY"
      available_memory                 = "1Gi"
      available_cpu                    = "1"
      timeout_seconds                  = 300
      min_instance_count               = 0
      max_instance_count               = 1
      max_instance_request_concurrency = 2
    }
  }

  function_settings = {
    for key, defaults in local.function_defaults :
    key => merge(defaults, { for attr, value in try(var.function_settings[key], {}) : attr => value if value != null })
  }

  # functions-framework serves one request per gunicorn thread (THREADS, by default 4 per CPU): as
  # many threads as the instance takes requests, or the rest wait in its socket. An import request
  # waits for its window's record write and its leader for the window to close (docs/decisions/0770),
  # so an import instance mostly waits, on up to 80 requests at once.
  framework_environment = {
    for key, settings in local.function_settings :
    key => { THREADS = tostring(settings.max_instance_request_concurrency) }
  }
}

# A slow query must end REJECTED inside one delivery: if the function or the ack deadline ran out
# first, the request would be redelivered and finally dead-lettered without an event.
check "sql_timeout_fits_one_delivery" {
  assert {
    condition     = var.sql_timeout_seconds + 30 <= min(local.function_settings.export.timeout_seconds, google_pubsub_subscription.export_requests.ack_deadline_seconds)
    error_message = "sql_timeout_seconds + 30 must not exceed the export function's timeout and the export-requests subscription's ack deadline."
  }
}

check "import_timeout_covers_the_batching_window" {
  assert {
    condition     = local.function_settings.import.timeout_seconds >= var.debounce_seconds + var.settle_seconds + 30
    error_message = "The import function's timeout must exceed debounce_seconds + settle_seconds by at least 30 s: the window's leader waits for the window to close before it plans and starts the import."
  }
}

/******************************************
  Environment: per function exactly FUNCTION_VARIABLES[entry_point] of functions/settings.py
 *****************************************/

locals {
  # Read by every function.
  env_common = {
    DICOM_STORE                     = local.dicom_store_name
    DICOM_STATE_BUCKET              = google_storage_bucket.buckets["state"].name
    DICOM_STAGING_BUCKET            = google_storage_bucket.buckets["staging"].name
    DICOM_UPLOAD_BUCKET             = google_storage_bucket.buckets["upload"].name
    DICOM_STATE_PREFIX              = local.state_prefix
    HEALTHCARE_API_URL              = var.healthcare_api_url
    DICOM_MAX_CONCURRENT_OPERATIONS = tostring(var.max_concurrent_operations)
    DICOM_CLAIM_LEASE_SECONDS       = tostring(var.claim_lease_seconds)
    DICOM_HTTP_TIMEOUT_SECONDS      = tostring(var.http_timeout_seconds)
    DICOM_RETRY_DEADLINE_SECONDS    = tostring(var.retry_deadline_seconds)
    LOG_LEVEL                       = var.log_level
  }

  # What shapes import batches: the import function and the poller (it finishes orphaned batches).
  env_batching = {
    DICOM_IMPORT_PREFIXES         = join(",", var.import_prefixes)
    DICOM_IMPORT_NAME_PATTERN     = var.import_name_pattern
    DICOM_DEBOUNCE_SECONDS        = tostring(var.debounce_seconds)
    DICOM_SETTLE_SECONDS          = tostring(var.settle_seconds)
    DICOM_STORAGE_CLASS_BY_PREFIX = join(",", [for prefix, class in var.storage_class_by_prefix : "${prefix}=${upper(class)}"])
    DICOM_IMPORT_COALESCE_SECONDS = tostring(var.import_coalesce_seconds)
  }

  # Event-driven functions drop events older than this.
  env_event_age = {
    DICOM_MAX_EVENT_AGE_SECONDS = tostring(var.max_event_age_seconds)
  }

  # Functions that publish completion events.
  env_completion = {
    DICOM_COMPLETION_TOPIC = google_pubsub_topic.topics["completions"].id
  }

  env_export = {
    DICOM_EXPORT_ALLOWED_DESTINATIONS = join(",", local.export_allowed_destinations)
    BIGQUERY_API_URL                  = var.bigquery_api_url
    DICOM_SQL_MAX_ROWS                = tostring(var.sql_max_rows)
    DICOM_SQL_TIMEOUT_SECONDS         = tostring(var.sql_timeout_seconds)
    DICOM_SQL_ALLOWED_DATASETS        = join(",", local.sql_allowed_datasets)
    DICOM_SQL_MAX_BYTES_BILLED        = format("%d", var.sql_max_bytes_billed)
    DICOM_SQL_SERVICE_ACCOUNT         = google_service_account.sql.email
  }

  env_poll = {
    DICOM_POLL_CONCURRENCY   = tostring(var.poll_concurrency)
    DICOM_FAILED_OBJECTS_CAP = tostring(var.failed_objects_cap)
  }
}

/******************************************
  The three functions: one module, three instances
 *****************************************/

locals {
  functions = {
    import = {
      name        = "${var.name_prefix}-import-on-upload"
      entry_point = "import_dicom_on_upload"
      description = "Batches uploaded DICOM files into Healthcare API imports."
      environment = merge(local.env_common, local.env_batching, local.env_event_age)
      # The upload bucket's notifications (pubsub.tf, docs/decisions/0882).
      event_trigger = {
        event_type   = "google.cloud.pubsub.topic.v1.messagePublished"
        retry_policy = "RETRY_POLICY_RETRY"
        pubsub_topic = google_pubsub_topic.topics["uploads"].id
      }
      invoker_members = {}
    }

    # Delivered by the push subscription in pubsub.tf (it carries the dead-letter policy).
    export = {
      name            = "${var.name_prefix}-export-on-message"
      entry_point     = "export_dicom_on_message"
      description     = "Validates export requests and starts filtered Healthcare API exports."
      environment     = merge(local.env_common, local.env_event_age, local.env_completion, local.env_export)
      event_trigger   = null
      invoker_members = { pubsub_push = "serviceAccount:${google_service_account.export_push.email}" }
    }

    # Called over HTTP by the Cloud Scheduler job in scheduler.tf.
    poll = {
      name            = "${var.name_prefix}-poll-operations"
      entry_point     = "poll_dicom_operations"
      description     = "Polls Healthcare API operations, publishes completion events, starts queued jobs."
      environment     = merge(local.env_common, local.env_batching, local.env_completion, local.env_poll)
      event_trigger   = null
      invoker_members = { scheduler = "serviceAccount:${google_service_account.scheduler.email}" }
    }
  }
}

module "function" {
  source   = "./modules/function"
  for_each = local.functions

  project_id                 = var.project_id
  region                     = var.region
  name                       = each.value.name
  description                = each.value.description
  service_account_id         = local.service_account_ids["${each.key}_runtime"]
  trigger_service_account_id = lookup(local.service_account_ids, "${each.key}_trigger", null)
  labels                     = merge(local.labels, { function = each.key })

  entry_point           = each.value.entry_point
  runtime               = var.runtime
  source_bucket         = google_storage_bucket_object.source.bucket
  source_object         = google_storage_bucket_object.source.name
  build_service_account = local.build_service_account
  docker_repository     = google_artifact_registry_repository.functions.id
  environment_variables = merge(each.value.environment, local.framework_environment[each.key])

  available_memory                 = local.function_settings[each.key].available_memory
  available_cpu                    = local.function_settings[each.key].available_cpu
  timeout_seconds                  = local.function_settings[each.key].timeout_seconds
  min_instance_count               = local.function_settings[each.key].min_instance_count
  max_instance_count               = local.function_settings[each.key].max_instance_count
  max_instance_request_concurrency = local.function_settings[each.key].max_instance_request_concurrency
  ingress_settings                 = local.function_settings[each.key].ingress_settings

  event_trigger        = each.value.event_trigger
  invoker_members      = each.value.invoker_members
  pubsub_service_agent = local.pubsub_agent

  depends_on = [
    google_project_service.enabled,
    # The build runs as the build account as soon as the function is created.
    google_artifact_registry_repository_iam_member.build_writer,
    google_project_iam_member.build_log_writer,
    google_storage_bucket_iam_member.build_source_reader,
    google_project_iam_member.build_gcf_sources_reader,
  ]
}
