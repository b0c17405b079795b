variable "project_id" {
  description = "Project of the function and its service accounts."
  type        = string
}

variable "region" {
  description = "Region of the function (and, by default, of its event trigger)."
  type        = string
}

variable "name" {
  description = "Function name; also the name of the underlying Cloud Run service."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.name))
    error_message = "name must be 2-63 characters: lowercase letters, digits and hyphens."
  }
}

variable "description" {
  description = "Human-readable description of the function."
  type        = string
  default     = ""
}

variable "service_account_id" {
  description = "account_id of the function's runtime service account (6-30 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.service_account_id))
    error_message = "service_account_id must be 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "trigger_service_account_id" {
  description = "account_id of the Eventarc trigger's service account (6-30 characters); required with event_trigger, null without."
  type        = string
  default     = null

  validation {
    condition     = var.trigger_service_account_id == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.trigger_service_account_id))
    error_message = "trigger_service_account_id must be 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "pubsub_service_agent" {
  description = "IAM member of the project's Pub/Sub service agent (\"serviceAccount:service-NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com\"). With event_trigger it gets roles/iam.serviceAccountTokenCreator on the trigger's account: Eventarc delivers through a Pub/Sub push subscription with an OIDC token of that account, which projects whose Pub/Sub agent predates April 2021 need. Null grants nothing."
  type        = string
  default     = null
}

variable "entry_point" {
  description = "Name of the function in main.py (the functions-framework target)."
  type        = string
}

variable "runtime" {
  description = "Cloud Functions runtime, e.g. python311."
  type        = string
}

variable "source_bucket" {
  description = "Bucket holding the source archive."
  type        = string
}

variable "source_object" {
  description = "Object name of the source archive (named by its hash, so a code change redeploys)."
  type        = string
}

variable "build_service_account" {
  description = "Service account used by Cloud Build (projects/P/serviceAccounts/EMAIL); null uses the project default."
  type        = string
  default     = null
}

variable "docker_repository" {
  description = "Artifact Registry repository (projects/P/locations/L/repositories/R) for the built image; null lets Cloud Run functions use its gcf-artifacts repository."
  type        = string
  default     = null
}

variable "environment_variables" {
  description = "Environment variables of the function: exactly the ones its code reads."
  type        = map(string)
  default     = {}
}

variable "available_memory" {
  description = "Memory per instance, e.g. 512Mi."
  type        = string
  default     = "512Mi"
}

variable "available_cpu" {
  description = "vCPUs per instance. Must be >= 1 when max_instance_request_concurrency > 1."
  type        = string
  default     = "1"
}

variable "timeout_seconds" {
  description = "Request timeout of the function in seconds."
  type        = number
  default     = 60
}

variable "min_instance_count" {
  description = "Instances kept warm."
  type        = number
  default     = 0
}

variable "max_instance_count" {
  description = "Upper bound of instances."
  type        = number
  default     = 10
}

variable "max_instance_request_concurrency" {
  description = "Requests one instance serves at once."
  type        = number
  default     = 1

  validation {
    condition     = var.max_instance_request_concurrency >= 1 && var.max_instance_request_concurrency <= 1000
    error_message = "max_instance_request_concurrency must be between 1 and 1000."
  }
}

variable "ingress_settings" {
  description = "Network ingress of the function."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB", "ALLOW_ALL"], var.ingress_settings)
    error_message = "ingress_settings must be ALLOW_INTERNAL_ONLY, ALLOW_INTERNAL_AND_GCLB or ALLOW_ALL."
  }
}

variable "event_trigger" {
  description = "Eventarc trigger of an event function; null for a function invoked over HTTP. The module creates the trigger's own service account and lets it invoke this function only."
  type = object({
    event_type     = string
    retry_policy   = optional(string, "RETRY_POLICY_RETRY")
    trigger_region = optional(string)
    pubsub_topic   = optional(string)
    event_filters = optional(list(object({
      attribute = string
      value     = string
      operator  = optional(string)
    })), [])
  })
  default = null

  validation {
    condition     = var.event_trigger == null || contains(["RETRY_POLICY_RETRY", "RETRY_POLICY_DO_NOT_RETRY"], try(var.event_trigger.retry_policy, ""))
    error_message = "event_trigger.retry_policy must be RETRY_POLICY_RETRY or RETRY_POLICY_DO_NOT_RETRY."
  }
}

variable "invoker_members" {
  description = "Principals granted roles/run.invoker on this function's Cloud Run service, besides the trigger's own service account, keyed by a static name (the values may be unknown until apply). Service accounts only."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for m in values(var.invoker_members) : startswith(m, "serviceAccount:")])
    error_message = "invoker_members values must be service accounts (\"serviceAccount:EMAIL\")."
  }
}

variable "labels" {
  description = "Labels of the function."
  type        = map(string)
  default     = {}
}
