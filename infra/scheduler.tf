/******************************************
  Cloud Scheduler -> poller (HTTP, OIDC)
 *****************************************/

check "poll_timeout_fits_a_scheduler_attempt" {
  assert {
    condition     = local.function_settings.poll.timeout_seconds >= 15 && local.function_settings.poll.timeout_seconds <= 1800
    error_message = "The poller's timeout is also the scheduler's attempt deadline, which must be between 15 s and 1800 s."
  }
}

resource "google_cloud_scheduler_job" "poll" {
  project     = var.project_id
  region      = var.region
  name        = "${var.name_prefix}-poll-operations"
  description = "Runs ${module.function["poll"].name}: polls Healthcare API operations and starts queued jobs."
  schedule    = var.poll_schedule
  time_zone   = var.poll_time_zone
  paused      = var.poll_paused

  # As long as the poller may run; Scheduler never starts a run while the previous one is open.
  attempt_deadline = "${local.function_settings.poll.timeout_seconds}s"

  # A failed run is not retried: the next scheduled run does the same work.
  retry_config {
    retry_count = 0
  }

  http_target {
    uri         = module.function["poll"].uri
    http_method = "POST"
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode("{}")

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = module.function["poll"].uri
    }
  }

  # The module grants the scheduler's account run.invoker on the poller.
  depends_on = [module.function]
}
