/******************************************
  Project and naming
 *****************************************/

variable "project_id" {
  description = "ID of the Google Cloud project that hosts the pipeline."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a valid project ID (6-30 characters: lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of the functions, the buckets, the Eventarc trigger and the scheduler job (e.g. europe-west4). The upload bucket lives here, so the Cloud Storage trigger does too."
  type        = string
  default     = "europe-west4"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a single Google Cloud region such as europe-west4 or us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (service accounts, custom roles, topics, functions, repository, default bucket names), 2-16 characters. Every name derived from it fits its own limit at 16 characters (tests/infra checks each one with the longest prefix)."
  type        = string
  default     = "dicom"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,14}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-16 characters: lowercase letters, digits and hyphens, starting with a letter."
  }

  # Topic names may not start with "goog"; bucket names may not contain "google".
  validation {
    condition     = !can(regex("^goog|google", var.name_prefix))
    error_message = "name_prefix may not start with \"goog\" or contain \"google\" (Pub/Sub and Cloud Storage refuse such names)."
  }
}

variable "labels" {
  description = "Labels added to every resource that supports them (merged over the module's own `app` and `managed-by` labels)."
  type        = map(string)
  default     = {}
}

variable "enable_apis" {
  description = "Enable the Google APIs the pipeline needs. Set to false when the project is managed elsewhere and the APIs are already on."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete buckets that still hold objects. Keep false outside test projects: the buckets hold patient data."
  type        = bool
  default     = false
}

/******************************************
  Cloud Healthcare API
 *****************************************/

variable "healthcare_location" {
  description = "Location of the Healthcare dataset created by this configuration. Defaults to `region`. Ignored when an existing dataset or store is used."
  type        = string
  default     = null

  validation {
    condition     = var.healthcare_location == null || can(regex("^[a-z][a-z0-9-]*[a-z0-9]$", var.healthcare_location))
    error_message = "healthcare_location must be a location such as europe-west4 or us."
  }
}

variable "dataset_id" {
  description = "ID of the Healthcare dataset to create. Ignored when `existing_dataset` or `existing_dicom_store` is set."
  type        = string
  default     = "dicom-pipeline"

  # The provider's Healthcare IAM id parsers accept only [a-zA-Z0-9_-] (the API would also take '.').
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,256}$", var.dataset_id))
    error_message = "dataset_id may contain letters, digits, '_' and '-' (1-256 characters); the Terraform provider cannot grant IAM on a dataset whose ID holds a '.'."
  }
}

variable "dicom_store_id" {
  description = "ID of the DICOM store to create. Ignored when `existing_dicom_store` is set."
  type        = string
  default     = "dicom-store"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,256}$", var.dicom_store_id))
    error_message = "dicom_store_id may contain letters, digits, '_' and '-' (1-256 characters); the Terraform provider cannot grant IAM on a store whose ID holds a '.'."
  }
}

variable "existing_dataset" {
  description = "Full resource name of an existing dataset (projects/P/locations/L/datasets/D) in which to create the DICOM store. Null creates a dataset. P may be another project: the custom roles are then defined there (see README)."
  type        = string
  default     = null

  validation {
    condition     = var.existing_dataset == null || can(regex("^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z][a-z0-9-]*[a-z0-9]/datasets/[A-Za-z0-9_-]{1,256}$", var.existing_dataset))
    error_message = "existing_dataset must look like projects/PROJECT_ID/locations/L/datasets/D: a project ID (not a number), a dataset ID of letters, digits, '_' and '-'."
  }
}

variable "existing_dicom_store" {
  description = "Full resource name of an existing DICOM store (projects/P/locations/L/datasets/D/dicomStores/S). When set, no dataset or store is created and the IAM grants are made on this store and its dataset. P may be another project: the custom roles are then defined there (see README)."
  type        = string
  default     = null

  validation {
    condition     = var.existing_dicom_store == null || can(regex("^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z][a-z0-9-]*[a-z0-9]/datasets/[A-Za-z0-9_-]{1,256}/dicomStores/[A-Za-z0-9_-]{1,256}$", var.existing_dicom_store))
    error_message = "existing_dicom_store must look like projects/PROJECT_ID/locations/L/datasets/D/dicomStores/S: a project ID (not a number), dataset and store IDs of letters, digits, '_' and '-'."
  }
}

/******************************************
  Cloud Storage
 *****************************************/

variable "bucket_names" {
  description = "Bucket names; a null entry becomes \"<project_id>-<name_prefix>-<key>\". `upload`: where .dcm files land; `export`: export destinations; `state`: pipeline state; `staging`: staged copies of uploads (DICOM_STAGING_BUCKET); `source`: function source archives."
  type = object({
    upload  = optional(string)
    export  = optional(string)
    state   = optional(string)
    staging = optional(string)
    source  = optional(string)
  })
  default = {}
}

variable "export_bucket_storage_class" {
  description = "Storage class of the export bucket."
  type        = string
  default     = "STANDARD"

  validation {
    condition     = contains(["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"], var.export_bucket_storage_class)
    error_message = "export_bucket_storage_class must be STANDARD, NEARLINE, COLDLINE or ARCHIVE."
  }
}

variable "access_log_bucket" {
  description = "Name of an existing bucket that receives Cloud Storage usage logs of every bucket created here. Null disables usage logs (Cloud Audit Logs still record access)."
  type        = string
  default     = null
}

variable "state_retention_days" {
  description = "Days after which the state objects under seen/, done/ and receipts/ are deleted by a lifecycle rule."
  type        = number
  default     = 30

  validation {
    condition     = var.state_retention_days >= 1
    error_message = "state_retention_days must be at least 1."
  }
}

variable "staging_retention_days" {
  description = "Days after which staged batch copies under staging/ are deleted (a backstop: after a successful import the poller deletes them, up to 60,000 a run)."
  type        = number
  default     = 2

  validation {
    condition     = var.staging_retention_days >= 1 && var.staging_retention_days <= 7
    error_message = "staging_retention_days must be between 1 and 7."
  }
}

variable "filter_retention_days" {
  description = "Days after which the export filter files under filters/ are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.filter_retention_days >= 1
    error_message = "filter_retention_days must be at least 1."
  }
}

variable "upload_retention_days" {
  description = "Days after which uploaded objects are deleted from the upload bucket. Null keeps them."
  type        = number
  default     = null

  validation {
    condition     = var.upload_retention_days == null || try(var.upload_retention_days >= 1, false)
    error_message = "upload_retention_days must be null or at least 1."
  }
}

variable "export_retention_days" {
  description = "Days after which exported objects are deleted from the export bucket. Null keeps them."
  type        = number
  default     = null

  validation {
    condition     = var.export_retention_days == null || try(var.export_retention_days >= 1, false)
    error_message = "export_retention_days must be null or at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days after which noncurrent object versions are deleted in the versioned buckets (upload, export, source)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

/******************************************
  Pub/Sub
 *****************************************/

variable "pubsub_kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that encrypts the topics. Null uses Google-managed encryption. The Pub/Sub service agent needs roles/cloudkms.cryptoKeyEncrypterDecrypter on the key."
  type        = string
  default     = null

  validation {
    condition     = var.pubsub_kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.pubsub_kms_key_name))
    error_message = "pubsub_kms_key_name must look like projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "export_max_delivery_attempts" {
  description = "Deliveries of an export request before it goes to the dead-letter topic."
  type        = number
  default     = 10

  validation {
    condition     = var.export_max_delivery_attempts >= 5 && var.export_max_delivery_attempts <= 100
    error_message = "export_max_delivery_attempts must be between 5 and 100 (Pub/Sub limits)."
  }
}

variable "dead_letter_retention_days" {
  description = "Days the dead-letter subscription keeps undelivered export requests."
  type        = number
  default     = 7

  validation {
    condition     = var.dead_letter_retention_days >= 1 && var.dead_letter_retention_days <= 31
    error_message = "dead_letter_retention_days must be between 1 and 31."
  }
}

/******************************************
  Functions: deployment
 *****************************************/

variable "runtime" {
  description = "Python runtime of the functions."
  type        = string
  default     = "python311"

  validation {
    condition     = can(regex("^python3[0-9]{2}$", var.runtime))
    error_message = "runtime must be a Python runtime such as python311."
  }
}

variable "build_service_account" {
  description = "Service account Cloud Build uses to build the functions (projects/P/serviceAccounts/EMAIL). Null creates one (<prefix>-build) with the roles the Cloud Run functions documentation lists for a build account; an account given here must already hold them."
  type        = string
  default     = null

  validation {
    condition     = var.build_service_account == null || can(regex("^projects/[^/]+/serviceAccounts/[^/@]+@[^/]+$", var.build_service_account))
    error_message = "build_service_account must look like projects/PROJECT_ID/serviceAccounts/EMAIL."
  }
}

variable "function_settings" {
  description = "Per-function overrides of the defaults (keys: import, export, poll). Request concurrency above 1 needs available_cpu >= 1. ingress_settings defaults: import and poll ALLOW_INTERNAL_ONLY (Eventarc and Cloud Scheduler in the same project are internal), export ALLOW_ALL (Pub/Sub push; see docs/decisions/0404)."
  type = map(object({
    ingress_settings                 = optional(string)
    available_memory                 = optional(string)
    available_cpu                    = optional(string)
    timeout_seconds                  = optional(number)
    min_instance_count               = optional(number)
    max_instance_count               = optional(number)
    max_instance_request_concurrency = optional(number)
  }))
  default = {}

  validation {
    condition     = alltrue([for key in keys(var.function_settings) : contains(["import", "export", "poll"], key)])
    error_message = "function_settings keys must be import, export or poll."
  }

  validation {
    condition = alltrue([
      for s in values(var.function_settings) :
      s.max_instance_request_concurrency == null || try(s.max_instance_request_concurrency >= 1 && s.max_instance_request_concurrency <= 1000, false)
    ])
    error_message = "max_instance_request_concurrency must be between 1 and 1000."
  }

  validation {
    condition = alltrue([
      for s in values(var.function_settings) :
      s.ingress_settings == null || contains(["ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB", "ALLOW_ALL"], coalesce(s.ingress_settings, "ALLOW_ALL"))
    ])
    error_message = "ingress_settings must be ALLOW_INTERNAL_ONLY, ALLOW_INTERNAL_AND_GCLB or ALLOW_ALL."
  }
}

/******************************************
  Functions: configuration (environment variables, see functions/settings.py)
 *****************************************/

variable "log_level" {
  description = "LOG_LEVEL of the functions."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "state_prefix" {
  description = "DICOM_STATE_PREFIX: prefix of every state object inside the state bucket (\"\" or e.g. \"pipeline/\"). The lifecycle rules follow it."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([A-Za-z0-9._-]+/)*$", var.state_prefix))
    error_message = "state_prefix must be empty or a path that ends with '/', e.g. pipeline/."
  }
}

variable "healthcare_api_url" {
  description = "HEALTHCARE_API_URL: base URL of the Healthcare API (a local emulator in development)."
  type        = string
  default     = "https://healthcare.googleapis.com"

  validation {
    condition     = can(regex("^https?://[^/\\s]+", var.healthcare_api_url))
    error_message = "healthcare_api_url must be an http(s) URL."
  }
}

variable "stream_dataset_id" {
  description = "BigQuery dataset the DICOM store streams its metadata to (streamConfigs); sql selectors query it."
  type        = string
  default     = "dicom_stream"

  validation {
    condition     = can(regex("^[A-Za-z0-9_]{1,1024}$", var.stream_dataset_id))
    error_message = "stream_dataset_id may contain letters, digits and '_'."
  }
}

variable "stream_table_id" {
  description = "Table in stream_dataset_id the store streams to (the Healthcare API creates it)."
  type        = string
  default     = "instances"

  validation {
    condition     = can(regex("^[A-Za-z0-9_]{1,1024}$", var.stream_table_id))
    error_message = "stream_table_id may contain letters, digits and '_'."
  }
}

variable "bigquery_kms_key_name" {
  description = "Cloud KMS key for the stream dataset (CMEK); null: Google-managed encryption."
  type        = string
  default     = null
}

variable "bigquery_api_url" {
  description = "BIGQUERY_API_URL: base URL of BigQuery for the export function's sql selector (a local BigQuery in development)."
  type        = string
  default     = "https://bigquery.googleapis.com"

  validation {
    condition     = can(regex("^https?://[^/\\s]+", var.bigquery_api_url))
    error_message = "bigquery_api_url must be an http(s) URL."
  }
}

variable "sql_max_rows" {
  description = "DICOM_SQL_MAX_ROWS: a sql selector that returns more rows is REJECTED."
  type        = number
  default     = 1000000

  validation {
    condition     = var.sql_max_rows >= 1 && floor(var.sql_max_rows) == var.sql_max_rows
    error_message = "sql_max_rows must be an integer >= 1."
  }
}

variable "sql_timeout_seconds" {
  description = "DICOM_SQL_TIMEOUT_SECONDS: a sql selector query that runs longer is cancelled and REJECTED; with 30 s to spare it must fit in the export function's timeout and ack deadline (a check)."
  type        = number
  default     = 60

  validation {
    condition     = var.sql_timeout_seconds > 0
    error_message = "sql_timeout_seconds must be > 0."
  }
}

variable "sql_allowed_datasets" {
  description = "DICOM_SQL_ALLOWED_DATASETS: BigQuery datasets (dataset, or project.dataset) a sql selector may read; BigQuery's dry run must list only their tables. null: the stream dataset. The query account gets dataViewer on each dataset of this project; grant datasets of other projects yourself."
  type        = list(string)
  default     = null

  validation {
    condition     = var.sql_allowed_datasets == null || alltrue([for d in coalesce(var.sql_allowed_datasets, []) : can(regex("^([a-z0-9.:-]+\\.)?[A-Za-z0-9_]+$", d)) && upper(element(split(".", d), length(split(".", d)) - 1)) != "INFORMATION_SCHEMA"])
    error_message = "sql_allowed_datasets entries are dataset ids or project.dataset, never INFORMATION_SCHEMA."
  }
}

variable "sql_max_bytes_billed" {
  description = "DICOM_SQL_MAX_BYTES_BILLED: maximumBytesBilled of each sql selector query; a dry run that reports more bytes is REJECTED before anything runs."
  type        = number
  default     = 10737418240

  validation {
    condition     = var.sql_max_bytes_billed >= 1 && floor(var.sql_max_bytes_billed) == var.sql_max_bytes_billed
    error_message = "sql_max_bytes_billed must be an integer >= 1."
  }
}

variable "export_request_publishers" {
  description = "Members (user:, group:, serviceAccount:) granted roles/pubsub.publisher on the export-requests topic. Publishing there grants running SQL on the allowed datasets, exports to the allowed destinations, storage-class changes of the whole store and redrives of failed imports."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.export_request_publishers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):", m)) && !contains(["allusers", "allauthenticatedusers"], lower(m))])
    error_message = "export_request_publishers entries are IAM members such as group:ops@example.com; never allUsers or allAuthenticatedUsers."
  }
}

variable "max_concurrent_operations" {
  description = "DICOM_MAX_CONCURRENT_OPERATIONS: import/export LROs running at once on the store (Google suggests about 5)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_concurrent_operations >= 1 && floor(var.max_concurrent_operations) == var.max_concurrent_operations
    error_message = "max_concurrent_operations must be an integer >= 1."
  }
}

variable "claim_lease_seconds" {
  description = "DICOM_CLAIM_LEASE_SECONDS: after this, work whose starter died is taken over by the poller."
  type        = number
  default     = 30

  validation {
    condition     = var.claim_lease_seconds > 0
    error_message = "claim_lease_seconds must be > 0."
  }
}

variable "http_timeout_seconds" {
  description = "DICOM_HTTP_TIMEOUT_SECONDS: timeout of each HTTP call the functions make."
  type        = number
  default     = 60

  validation {
    condition     = var.http_timeout_seconds > 0
    error_message = "http_timeout_seconds must be > 0."
  }
}

variable "retry_deadline_seconds" {
  description = "DICOM_RETRY_DEADLINE_SECONDS: in-process retry budget of one call."
  type        = number
  default     = 30

  validation {
    condition     = var.retry_deadline_seconds > 0
    error_message = "retry_deadline_seconds must be > 0."
  }
}

variable "import_prefixes" {
  description = "DICOM_IMPORT_PREFIXES: object prefixes in the upload bucket that are imported; empty = the whole bucket."
  type        = list(string)
  default     = []
}

variable "import_name_pattern" {
  description = "DICOM_IMPORT_NAME_PATTERN: regular expression (searched) that an object name must match to be imported."
  type        = string
  default     = "(?i)\\.dcm$"
}

variable "debounce_seconds" {
  description = "DICOM_DEBOUNCE_SECONDS: length of the window whose uploads are batched into one import."
  type        = number
  default     = 5

  validation {
    condition     = var.debounce_seconds > 0
    error_message = "debounce_seconds must be > 0."
  }
}

variable "settle_seconds" {
  description = "DICOM_SETTLE_SECONDS: wait after a window closes for late events."
  type        = number
  default     = 2

  validation {
    condition     = var.settle_seconds >= 0
    error_message = "settle_seconds must be >= 0."
  }
}

variable "import_coalesce_seconds" {
  description = "DICOM_IMPORT_COALESCE_SECONDS: while another import runs, a queued import waits up to this long, taking later uploads; 0 starts it whenever a slot is free."
  type        = number
  default     = 300

  validation {
    condition     = var.import_coalesce_seconds >= 0
    error_message = "import_coalesce_seconds must be >= 0."
  }
}

variable "storage_class_by_prefix" {
  description = "DICOM_STORAGE_CLASS_BY_PREFIX: Healthcare blob storage class per upload prefix, e.g. { \"archive/\" = \"ARCHIVE\" }."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for c in values(var.storage_class_by_prefix) : contains(["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"], upper(c))])
    error_message = "storage_class_by_prefix values must be STANDARD, NEARLINE, COLDLINE or ARCHIVE."
  }
}

variable "max_event_age_seconds" {
  description = "DICOM_MAX_EVENT_AGE_SECONDS: events older than this are dropped instead of retried forever."
  type        = number
  default     = 3600

  validation {
    condition     = var.max_event_age_seconds > 0
    error_message = "max_event_age_seconds must be > 0."
  }
}

variable "export_allowed_destinations" {
  description = "DICOM_EXPORT_ALLOWED_DESTINATIONS: gs:// prefixes an export may write to. Null allows the export bucket only. The Healthcare service agent is granted objectAdmin on the export bucket only: grant it on any other bucket listed here."
  type        = list(string)
  default     = null

  # The export function's start-up check (functions/settings.py), as regular expressions so that
  # tests/infra can hold the two against each other: what plans here also starts there.
  validation {
    condition     = var.export_allowed_destinations == null || alltrue([for d in coalesce(var.export_allowed_destinations, []) : can(regex("^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/[^/*?#,\\[\\]\\x00-\\x1f\\x7f]+)*/*$", d))])
    error_message = "export_allowed_destinations must be gs://bucket[/prefix] values: no empty path segment (//), no wildcard (* ? [ ]), no '#' or ','."
  }

  validation {
    condition     = var.export_allowed_destinations == null || alltrue([for d in coalesce(var.export_allowed_destinations, []) : !can(regex("/\\.\\.?(/|$)", d))])
    error_message = "export_allowed_destinations must not hold a '.' or '..' path segment."
  }

  validation {
    condition     = var.export_allowed_destinations == null || alltrue([for d in coalesce(var.export_allowed_destinations, []) : !can(regex("^gs://[^/]*(\\.\\.|[^/.]{64})", d))])
    error_message = "export_allowed_destinations: a bucket name is at most 63 characters, or dot-separated parts of at most 63."
  }

  validation {
    condition     = var.export_allowed_destinations == null || alltrue([for d in coalesce(var.export_allowed_destinations, []) : !can(regex("^gs://(goog|[^/]*google|[0-9]{1,3}(\\.[0-9]{1,3}){3}(/|$))", d))])
    error_message = "export_allowed_destinations: Cloud Storage does not allow a bucket name that starts with goog, contains google or is an IP address."
  }
}

variable "poll_concurrency" {
  description = "DICOM_POLL_CONCURRENCY: parallel operations.get calls of one poller run."
  type        = number
  default     = 16

  validation {
    condition     = var.poll_concurrency >= 1
    error_message = "poll_concurrency must be >= 1."
  }
}

variable "failed_objects_cap" {
  description = "DICOM_FAILED_OBJECTS_CAP: object names listed in one completion event."
  type        = number
  default     = 100

  validation {
    condition     = var.failed_objects_cap >= 1
    error_message = "failed_objects_cap must be >= 1."
  }
}

/******************************************
  Cloud Scheduler (the poller)
 *****************************************/

variable "poll_schedule" {
  description = "Cron schedule of the poller."
  type        = string
  default     = "* * * * *"
}

variable "poll_time_zone" {
  description = "Time zone of the poll schedule (tz database name)."
  type        = string
  default     = "Etc/UTC"
}

variable "poll_paused" {
  description = "Create the scheduler job paused."
  type        = bool
  default     = false
}

/******************************************
  Monitoring (monitoring.tf)
 *****************************************/

variable "enable_monitoring" {
  description = "Create the log-based metrics, alert policies and dashboard of monitoring.tf."
  type        = bool
  default     = true
}

variable "alert_notification_channels" {
  description = "Notification channels the alert policies notify, as `projects/P/notificationChannels/ID` (create them in the console or with google_monitoring_notification_channel). Empty: the policies open incidents without notifying anyone."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for channel in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", channel))])
    error_message = "alert_notification_channels entries must look like projects/P/notificationChannels/ID."
  }
}

variable "alert_operation_running_minutes" {
  description = "Alert when an import/export operation has been running for longer than this (Healthcare LROs carry minutes of overhead; large imports can take hours)."
  type        = number
  default     = 180

  validation {
    condition     = var.alert_operation_running_minutes >= 10
    error_message = "alert_operation_running_minutes must be at least 10."
  }
}

variable "alert_poller_silent_minutes" {
  description = "Alert when the poller has not finished a run for this long (it runs every minute)."
  type        = number
  default     = 15

  validation {
    condition     = var.alert_poller_silent_minutes >= 5 && var.alert_poller_silent_minutes <= 1440
    error_message = "alert_poller_silent_minutes must be between 5 and 1440."
  }
}
