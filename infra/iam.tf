/******************************************
  Identities that are not a function's own
 *****************************************/

# The OIDC identity of the poll job: may invoke the poller, nothing else.
resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = local.service_account_ids.poll_invoker
  display_name = "Cloud Scheduler caller of the DICOM poller"

  depends_on = [google_project_service.enabled]
}

# The OIDC identity of the export push subscription: may invoke the export function, nothing else.
resource "google_service_account" "export_push" {
  project      = var.project_id
  account_id   = local.service_account_ids.export_push
  display_name = "Pub/Sub push caller of the DICOM export function"

  depends_on = [google_project_service.enabled]
}

# The identity sql selector queries run as (docs/decisions/0872): jobUser on the project,
# dataViewer on the allowed datasets (infra/bigquery.tf), no Cloud Storage role anywhere. The
# export function impersonates it, and may impersonate no other account.
resource "google_service_account" "sql" {
  project      = var.project_id
  account_id   = local.service_account_ids.sql_query
  display_name = "BigQuery queries of the DICOM export function's sql selector"

  depends_on = [google_project_service.enabled]
}

resource "google_service_account_iam_member" "export_impersonates_sql" {
  service_account_id = google_service_account.sql.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.runtime["export"]
}

locals {
  healthcare_agent = "serviceAccount:${google_project_service_identity.healthcare.email}"
  pubsub_agent     = "serviceAccount:${google_project_service_identity.pubsub.email}"
  runtime          = { for key, fn in module.function : key => fn.service_account_member }
}

/******************************************
  Healthcare API: custom roles (defined in the store's project, granted on the store or dataset)
 *****************************************/

locals {
  # Each role carries exactly one capability, so each function gets exactly the ones it uses.
  healthcare_roles = {
    dicomImporter = {
      title       = "DICOM pipeline: import"
      description = "Start dicomStores.import on the store it is granted on."
      permissions = ["healthcare.dicomStores.import"]
    }
    dicomExporter = {
      title       = "DICOM pipeline: export"
      description = "Start dicomStores.export on the store it is granted on."
      permissions = ["healthcare.dicomStores.export"]
    }
    dicomWebReader = {
      title       = "DICOM pipeline: DICOMweb read"
      description = "QIDO-RS search and WADO-RS metadata on the store it is granted on."
      permissions = ["healthcare.dicomStores.dicomWebRead"]
    }
    dicomStorageClassWriter = {
      title       = "DICOM pipeline: storage class"
      description = "Start dicomStores.setBlobStorageSettings on the store it is granted on (the method checks dicomWebWrite)."
      permissions = ["healthcare.dicomStores.dicomWebWrite"]
    }
    operationReader = {
      title       = "DICOM pipeline: operations.get"
      description = "Read the long-running operations of the dataset it is granted on."
      permissions = ["healthcare.operations.get"]
    }
  }
}

# In the store's project: a custom role can only be granted on resources of the project (or
# organization) that defines it, and the store may live in another project (existing_dicom_store).
resource "google_project_iam_custom_role" "healthcare" {
  for_each = local.healthcare_roles

  project     = local.healthcare_project
  role_id     = "${replace(var.name_prefix, "-", "_")}_${each.key}"
  title       = each.value.title
  description = each.value.description
  permissions = each.value.permissions
  stage       = "GA"

  depends_on = [google_project_service.enabled]
}

locals {
  dicom_store_grants = {
    import-importer = { role = "dicomImporter", member = local.runtime["import"] }
    export-exporter = { role = "dicomExporter", member = local.runtime["export"] }
    export-dicomweb = { role = "dicomWebReader", member = local.runtime["export"] } # query -> study paths; redrive: what landed
    export-importer = { role = "dicomImporter", member = local.runtime["export"] }  # redrive requests start an import
    poll-importer   = { role = "dicomImporter", member = local.runtime["poll"] }    # starts queued imports
    poll-exporter   = { role = "dicomExporter", member = local.runtime["poll"] }    # starts queued exports
    poll-dicomweb   = { role = "dicomWebReader", member = local.runtime["poll"] }   # which objects did not land
    # setStorageClass requests: started by the export function, or by the poller when queued.
    export-storage-class = { role = "dicomStorageClassWriter", member = local.runtime["export"] }
    poll-storage-class   = { role = "dicomStorageClassWriter", member = local.runtime["poll"] }
  }

  # operations.get is checked on the dataset (the operations' parent), not on the store.
  dataset_grants = {
    poll-operations = { role = "operationReader", member = local.runtime["poll"] }
  }
}

resource "google_healthcare_dicom_store_iam_member" "grants" {
  for_each = local.dicom_store_grants

  # The provider's parser takes the full resource name (projects/P/locations/L/datasets/D/dicomStores/S).
  dicom_store_id = local.dicom_store_name
  role           = google_project_iam_custom_role.healthcare[each.value.role].name
  member         = each.value.member
}

resource "google_healthcare_dataset_iam_member" "grants" {
  for_each = local.dataset_grants

  dataset_id = local.dataset_name
  role       = google_project_iam_custom_role.healthcare[each.value.role].name
  member     = each.value.member
}

/******************************************
  Cloud Storage: per bucket
 *****************************************/

locals {
  bucket_grants = {
    # Import: lists and reads uploads, writes its records in the state bucket, stages copies.
    import-upload-read = { bucket = "upload", role = "roles/storage.objectViewer", member = local.runtime["import"] }
    import-state-rw    = { bucket = "state", role = "roles/storage.objectUser", member = local.runtime["import"] }
    import-staging-rw  = { bucket = "staging", role = "roles/storage.objectUser", member = local.runtime["import"] }
    # Export: dedup claims, filter files, jobs and operation records.
    export-state-rw = { bucket = "state", role = "roles/storage.objectUser", member = local.runtime["export"] }
    # Poller: records, slots, receipts; reads uploads to name the objects that did not land.
    poll-state-rw    = { bucket = "state", role = "roles/storage.objectUser", member = local.runtime["poll"] }
    poll-upload-read = { bucket = "upload", role = "roles/storage.objectViewer", member = local.runtime["poll"] }
    # Poller: deletes staged copies of finished imports; stages the windows it takes over.
    poll-staging-rw = { bucket = "staging", role = "roles/storage.objectUser", member = local.runtime["poll"] }
    # Export function, for redrive requests: reads the receipt's objects to stage copies of them.
    export-upload-read = { bucket = "upload", role = "roles/storage.objectViewer", member = local.runtime["export"] }
    export-staging-rw  = { bucket = "staging", role = "roles/storage.objectUser", member = local.runtime["export"] }
    # Healthcare service agent: import sources (uploads, staged batches), filter files, export destinations.
    healthcare-upload-read  = { bucket = "upload", role = "roles/storage.objectViewer", member = local.healthcare_agent }
    healthcare-state-read   = { bucket = "state", role = "roles/storage.objectViewer", member = local.healthcare_agent }
    healthcare-staging-read = { bucket = "staging", role = "roles/storage.objectViewer", member = local.healthcare_agent }
    healthcare-export-write = { bucket = "export", role = "roles/storage.objectAdmin", member = local.healthcare_agent }
  }
}

resource "google_storage_bucket_iam_member" "grants" {
  for_each = local.bucket_grants

  bucket = google_storage_bucket.buckets[each.value.bucket].name
  role   = each.value.role
  member = each.value.member
}

/******************************************
  Pub/Sub: per topic and subscription
 *****************************************/

locals {
  topic_grants = {
    export-completions = { topic = "completions", role = "roles/pubsub.publisher", member = local.runtime["export"] } # REJECTED events
    poll-completions   = { topic = "completions", role = "roles/pubsub.publisher", member = local.runtime["poll"] }
  }
  # Who may send export requests. Publishing there grants running SQL on the allowed datasets,
  # exports to the allowed destinations, storage-class changes and redrives (infra/README.md).
  request_publisher_grants = {
    for member in var.export_request_publishers : "request-publisher-${member}" => {
      topic = "export_requests", role = "roles/pubsub.publisher", member = member
    }
  }
}

resource "google_pubsub_topic_iam_member" "grants" {
  for_each = merge(local.topic_grants, local.request_publisher_grants)

  project = var.project_id
  topic   = google_pubsub_topic.topics[each.value.topic].name
  role    = each.value.role
  member  = each.value.member
}

# Dead-lettering is done by the Pub/Sub service agent: it publishes to the dead-letter topic and
# acknowledges on the source subscription.
resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.topics["export_dead_letter"].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_export_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.export_requests.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# The Pub/Sub service agent signs the push subscription's OIDC tokens as the push account.
# Needed in projects whose Pub/Sub agent predates April 2021; granted on that one account only.
# (The Eventarc trigger's account gets the same grant inside modules/function.)
resource "google_service_account_iam_member" "pubsub_agent_mints_push_tokens" {
  service_account_id = google_service_account.export_push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

/******************************************
  Cloud Storage service agent: the uploads topic only (no project-level Pub/Sub grant)
 *****************************************/

# The Cloud Storage service agent publishes the upload bucket's notifications, to that one topic.
resource "google_pubsub_topic_iam_member" "gcs_agent_uploads_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.topics["uploads"].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

/******************************************
  Function builds: a build service account of our own (docs/decisions/0402)
 *****************************************/

# Since mid-2024 new projects give Cloud Build's default account too few roles to build a
# function (or the organization forbids default accounts); so the build runs as an account
# that holds exactly the roles the Cloud Run functions documentation lists for one.
resource "google_service_account" "build" {
  count = var.build_service_account == null ? 1 : 0

  project      = var.project_id
  account_id   = local.service_account_ids.build
  display_name = "Cloud Build builder of the DICOM pipeline's functions"

  depends_on = [google_project_service.enabled]
}

locals {
  build_service_account = coalesce(var.build_service_account, one(google_service_account.build[*].id))
  # "" when an account is passed in (every grant to it then has count = 0); never a null in a template.
  build_member = join("", [for account in google_service_account.build : "serviceAccount:${account.email}"])
}

# The built images go to a repository of our own, so that the write grant names one repository.
resource "google_artifact_registry_repository" "functions" {
  # checkov:skip=CKV_GCP_84:The images hold the functions' code and pinned libraries, no patient data; Google-managed encryption.
  project       = var.project_id
  location      = var.region
  repository_id = "${var.name_prefix}-functions"
  format        = "DOCKER"
  description   = "Images of the DICOM pipeline's functions (built by Cloud Build)."
  labels        = local.labels

  depends_on = [google_project_service.enabled]
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  count = var.build_service_account == null ? 1 : 0

  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = local.build_member
}

# Build logs. Project-level on purpose: Logs Writer has no narrower resource to be granted on.
resource "google_project_iam_member" "build_log_writer" {
  count = var.build_service_account == null ? 1 : 0

  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = local.build_member
}

# The function source: our archive, and the copy Cloud Run functions keeps in its own
# gcf-v2-sources-PROJECT_NUMBER-REGION bucket, which Google creates on the first deployment (so it
# cannot be granted on by name). A condition limits the project-level grant to those buckets.
resource "google_storage_bucket_iam_member" "build_source_reader" {
  count = var.build_service_account == null ? 1 : 0

  bucket = google_storage_bucket.buckets["source"].name
  role   = "roles/storage.objectViewer"
  member = local.build_member
}

resource "google_project_iam_member" "build_gcf_sources_reader" {
  count = var.build_service_account == null ? 1 : 0

  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = local.build_member

  condition {
    title       = "gcf-v2-sources buckets only"
    description = "The copies of function source that Cloud Run functions keeps; nothing else in the project."
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\")"
  }
}
