/******************************************
  Buckets: upload, export, state, staging, source
 *****************************************/

locals {
  # Every rule has the same shape so that the per-bucket lists unify into one type.
  noncurrent_versions_rule = {
    age                        = null
    days_since_noncurrent_time = var.noncurrent_version_retention_days
    matches_prefix             = []
    with_state                 = "ARCHIVED"
  }

  # Staged copies a successful import's clean-up did not delete (a failed or abandoned import).
  staging_lifecycle_rule = {
    age                        = var.staging_retention_days
    days_since_noncurrent_time = null
    matches_prefix             = ["${local.state_prefix}staging/"]
    with_state                 = "ANY"
  }

  # docs/state.md: what may expire in the state bucket, and when.
  state_lifecycle_rules = [
    {
      age                        = var.state_retention_days
      days_since_noncurrent_time = null
      # exports/ and redrives/ keep a requestId deduplicated for this long; manifests/ and
      # refusals/ outlive a failed import only as long as its receipt does.
      matches_prefix = [
        "${local.state_prefix}seen/", "${local.state_prefix}done/", "${local.state_prefix}receipts/",
        "${local.state_prefix}exports/", "${local.state_prefix}manifests/", "${local.state_prefix}refusals/",
        "${local.state_prefix}redrives/",
      ]
      with_state = "ANY"
    },
    # Copies staged here before the staging bucket existed.
    local.staging_lifecycle_rule,
    {
      age                        = var.filter_retention_days
      days_since_noncurrent_time = null
      matches_prefix             = ["${local.state_prefix}filters/"]
      with_state                 = "ANY"
    },
  ]

  buckets = {
    upload = {
      storage_class = "STANDARD"
      # Versioned: an overwritten upload keeps the generation the import may still read.
      versioning          = true
      soft_delete_seconds = 604800
      lifecycle_rules = concat(
        [local.noncurrent_versions_rule],
        var.upload_retention_days == null ? [] : [{
          age                        = var.upload_retention_days
          days_since_noncurrent_time = null
          matches_prefix             = []
          with_state                 = "LIVE"
        }],
      )
    }
    export = {
      storage_class       = var.export_bucket_storage_class
      versioning          = true
      soft_delete_seconds = 604800
      lifecycle_rules = concat(
        [local.noncurrent_versions_rule],
        var.export_retention_days == null ? [] : [{
          age                        = var.export_retention_days
          days_since_noncurrent_time = null
          matches_prefix             = []
          with_state                 = "LIVE"
        }],
      )
    }
    state = {
      storage_class = "STANDARD"
      # Not versioned and no soft delete: small, short-lived objects rewritten and deleted all
      # the time (claims, slots, records); old generations would only cost money.
      versioning          = false
      soft_delete_seconds = 0
      lifecycle_rules     = local.state_lifecycle_rules
    }
    # Staged copies (DICOM_STAGING_BUCKET): a bucket of their own, so their copy and delete per
    # file do not share the state bucket's write rate (docs/decisions/0754).
    staging = {
      storage_class       = "STANDARD"
      versioning          = false
      soft_delete_seconds = 0
      lifecycle_rules     = [local.staging_lifecycle_rule]
    }
    source = {
      storage_class       = "STANDARD"
      versioning          = true
      soft_delete_seconds = 604800
      lifecycle_rules     = [local.noncurrent_versions_rule]
    }
  }
}

# A duplicate event is told from a new upload by its window's seen/{W}.json (docs/decisions/0004)
# until it is older than max_event_age_seconds and dropped: the file must not expire before that.
check "seen_files_outlive_late_events" {
  assert {
    condition     = var.state_retention_days * 86400 > var.max_event_age_seconds
    error_message = "state_retention_days must outlast max_event_age_seconds: the seen/ files that tell late duplicate events from new uploads expire after state_retention_days."
  }
}

resource "google_storage_bucket" "buckets" {
  # checkov:skip=CKV_GCP_62:Usage logs are optional (var.access_log_bucket); Cloud Audit Logs record data access without a log bucket of our own.
  # checkov:skip=CKV_GCP_78:Versioning is on for upload, export and source; the state and staging buckets hold short-lived records and copies for which old generations are useless.
  for_each = local.buckets

  project                     = var.project_id
  name                        = local.bucket_names[each.key]
  location                    = var.region
  storage_class               = each.value.storage_class
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = merge(local.labels, { bucket-role = each.key })

  versioning {
    enabled = each.value.versioning
  }

  soft_delete_policy {
    retention_duration_seconds = each.value.soft_delete_seconds
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.lifecycle_rules
    content {
      action {
        type = "Delete"
      }
      condition {
        age                        = lifecycle_rule.value.age
        days_since_noncurrent_time = lifecycle_rule.value.days_since_noncurrent_time
        matches_prefix             = lifecycle_rule.value.matches_prefix
        with_state                 = lifecycle_rule.value.with_state
      }
    }
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == null ? [] : [var.access_log_bucket]
    content {
      log_bucket        = logging.value
      log_object_prefix = local.bucket_names[each.key]
    }
  }

  depends_on = [google_project_service.enabled]
}
