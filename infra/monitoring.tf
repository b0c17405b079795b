/******************************************
  Signals: log-based metrics from the functions' structured logs, alerts, a dashboard
 *****************************************/

# Every function writes one JSON object per log line (functions/log.py); Cloud Run puts it in
# jsonPayload. The metrics below count or measure the lines the code writes at the points that
# matter. tests/infra/test_monitoring.py holds each filter against the code: a renamed message or
# field fails the tests instead of silently flat-lining a metric.

locals {
  monitoring_enabled = var.enable_monitoring

  # The Cloud Run services behind the three functions (2nd gen: service name = function name).
  function_log_filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=(${join(" OR ", [for key in sort(keys(local.functions)) : "\"${local.functions[key].name}\""])})",
  ])

  metric_label_descriptions = {
    kind  = "import, export or storageClass"
    state = "SUCCEEDED, SUCCEEDED_WITH_ERRORS, FAILED or CANCELLED"
  }

  # name suffix => what the metric counts (value_field "") or measures (a distribution of the field).
  log_metrics = {
    operations_started = {
      description = "Import/export LROs started, by kind."
      message     = "operation started"
      labels      = ["kind"]
      value_field = ""
    }
    operations_finished = {
      description = "Import/export LROs whose completion event was published, by kind and state."
      message     = "operation finished"
      labels      = ["kind", "state"]
      value_field = ""
    }
    instances_succeeded = {
      description = "Instances an operation processed successfully (metadata.counter.success), by kind."
      message     = "operation finished"
      labels      = ["kind"]
      value_field = "success"
    }
    instances_failed = {
      description = "Instances an operation failed on (metadata.counter.failure), by kind."
      message     = "operation finished"
      labels      = ["kind"]
      value_field = "failure"
    }
    export_requests_rejected = {
      description = "Export requests refused with a REJECTED completion event."
      message     = "export request rejected"
      labels      = []
      value_field = ""
    }
    poll_runs = {
      description = "Finished runs of the poller (one per Cloud Scheduler tick)."
      message     = "poll finished"
      labels      = []
      value_field = ""
    }
    queued_jobs = {
      description = "LRO starts waiting for a free slot, as the poller saw them."
      message     = "poll finished"
      labels      = []
      value_field = "jobs_queued"
    }
    oldest_running_operation_seconds = {
      description = "Age of the oldest operation still running, as the poller saw it."
      message     = "poll finished"
      labels      = []
      value_field = "oldest_running_seconds"
    }
  }

  # The alert policies and the dashboard read the metric types through the wait below.
  metric_types = try(time_sleep.log_metrics_visible[0].triggers, {})
}

resource "google_logging_metric" "pipeline" {
  for_each = { for key, metric in local.log_metrics : key => metric if local.monitoring_enabled }

  project     = var.project_id
  name        = "${var.name_prefix}/${each.key}"
  description = each.value.description
  filter      = "${local.function_log_filter} AND jsonPayload.message=\"${each.value.message}\""

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = each.value.value_field == "" ? "INT64" : "DISTRIBUTION"
    unit         = each.key == "oldest_running_operation_seconds" ? "s" : "1"
    display_name = "DICOM pipeline: ${replace(each.key, "_", " ")}"

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.value
        value_type  = "STRING"
        description = local.metric_label_descriptions[labels.value]
      }
    }
  }

  label_extractors = { for label in each.value.labels : label => "EXTRACT(jsonPayload.${label})" }
  value_extractor  = each.value.value_field == "" ? null : "EXTRACT(jsonPayload.${each.value.value_field})"

  dynamic "bucket_options" {
    for_each = each.value.value_field == "" ? [] : [each.key]
    content {
      # Counts and ages span orders of magnitude; a 1.5x step keeps a percentile within ~50 % of
      # the true value from 1 to about 10^6.
      exponential_buckets {
        num_finite_buckets = 35
        growth_factor      = 1.5
        scale              = 1
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

# Monitoring answers 404 to an alert policy on a user log-based metric until the new metric is
# visible to it, which its error message says can take up to 10 minutes, and the provider retries
# only 409. So the metric types reach the policies through this wait: it sleeps when the set of
# metrics is created or changes, not on later applies (docs/decisions/0413).
resource "time_sleep" "log_metrics_visible" {
  count = local.monitoring_enabled ? 1 : 0

  create_duration = "600s"
  triggers = {
    for key, metric in google_logging_metric.pipeline : key => "logging.googleapis.com/user/${metric.name}"
  }
}

/******************************************
  Alert policies
 *****************************************/

resource "google_monitoring_alert_policy" "import_failures" {
  count = local.monitoring_enabled ? 1 : 0

  project               = var.project_id
  display_name          = "${var.name_prefix}: an import failed or finished with errors"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "import completion event FAILED or SUCCEEDED_WITH_ERRORS"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_types.operations_finished}\" AND resource.type=\"cloud_run_revision\" AND metric.label.kind=\"import\" AND metric.label.state=one_of(\"FAILED\", \"SUCCEEDED_WITH_ERRORS\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.state"]
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An import's completion event says FAILED or SUCCEEDED_WITH_ERRORS. The event (completions topic) and the receipt `receipts/{operation id}.json` in the state bucket name the objects that did not land; fix them, then redrive the receipt (README, \"Redrive\")."
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "export_dead_letters" {
  count = local.monitoring_enabled ? 1 : 0

  project               = var.project_id
  display_name          = "${var.name_prefix}: export requests dead-lettered"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "dead-letter subscription holds messages"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"${google_pubsub_subscription.export_dead_letter.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Export requests the export function could not take after ${var.export_max_delivery_attempts} deliveries wait in subscription `${google_pubsub_subscription.export_dead_letter.name}`. Pull them, read the function's error log lines for their message ids, fix the cause and publish them again."
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "long_running_operation" {
  count = local.monitoring_enabled ? 1 : 0

  project               = var.project_id
  display_name          = "${var.name_prefix}: an operation runs longer than ${var.alert_operation_running_minutes} min"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "oldest running operation older than ${var.alert_operation_running_minutes} min"
    condition_threshold {
      filter          = "metric.type=\"${local.metric_types.oldest_running_operation_seconds}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_operation_running_minutes * 60
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The poller has been watching an operation for longer than ${var.alert_operation_running_minutes} minutes. `gcloud healthcare operations list --dataset=...` shows it; a stuck LRO holds one of the store's ${var.max_concurrent_operations} slots, so queued imports wait behind it."
  }

  depends_on = [google_project_service.enabled]
}

resource "google_monitoring_alert_policy" "poller_not_running" {
  count = local.monitoring_enabled ? 1 : 0

  project               = var.project_id
  display_name          = "${var.name_prefix}: the poller has not run"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "no finished poll run for ${var.alert_poller_silent_minutes} min"
    condition_absent {
      filter   = "metric.type=\"${local.metric_types.poll_runs}\" AND resource.type=\"cloud_run_revision\""
      duration = "${var.alert_poller_silent_minutes * 60}s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "No completion events are published and no queued jobs start while the poller is down. Check the scheduler job (paused? `poll_paused`), the poll function's logs and its service account's `run.invoker` grant."
  }

  depends_on = [google_project_service.enabled]
}

/******************************************
  Dashboard (JSON in dashboards/, metric names filled in here)
 *****************************************/

resource "google_monitoring_dashboard" "pipeline" {
  count = local.monitoring_enabled ? 1 : 0

  project = var.project_id
  dashboard_json = templatefile("${path.module}/dashboards/pipeline.json.tftpl", {
    title                    = "DICOM pipeline (${var.name_prefix})"
    operations_started       = local.metric_types.operations_started
    operations_finished      = local.metric_types.operations_finished
    instances_succeeded      = local.metric_types.instances_succeeded
    instances_failed         = local.metric_types.instances_failed
    export_requests_rejected = local.metric_types.export_requests_rejected
    poll_runs                = local.metric_types.poll_runs
    queued_jobs              = local.metric_types.queued_jobs
    oldest_running           = local.metric_types.oldest_running_operation_seconds
    dead_letter_subscription = google_pubsub_subscription.export_dead_letter.name
  })

  depends_on = [google_project_service.enabled]
}
