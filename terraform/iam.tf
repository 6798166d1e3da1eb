# One service account per function, with the least it needs. local.access is the whole grant table: what each
# function touches and the narrowest role for it, each role on the one resource (bucket, topic, database,
# dataset). host/tests/terraform.rs keeps the same table and fails if they differ. Secrets are in secrets.tf.
#
# Why each role:
# - storage.objectUser where a function writes: writes are not preconditioned (a retried write replaces the
#   object), and replacing needs delete as well as create. objectViewer where it only reads.
# - spanner.databaseUser: reads and read-write transactions, no schema changes (terraform applies the DDL).
# - bigquery.dataEditor on the dataset: streaming inserts (tables.updateData) of analytics rows.
# - pubsub.publisher on the topic a function publishes to: on-transcript → analysis-complete; on-analysis,
#   on-crm-retry and cleanup's re-drives → crm-retry.
# - speech.client (on-audio-uploaded: recognize) and aiplatform.user (on-transcript: generateContent) are only
#   grantable on the project.

locals {
  access = {
    "on-webhook" = {
      buckets = { recordings = "roles/storage.objectUser", transcripts = "roles/storage.objectUser" }
      topics  = {}
      project = []
    }
    "on-audio-uploaded" = {
      buckets = { recordings = "roles/storage.objectViewer", transcripts = "roles/storage.objectUser" }
      topics  = {}
      project = ["roles/speech.client"]
    }
    "on-transcript" = {
      buckets = { transcripts = "roles/storage.objectViewer" }
      topics  = { "analysis-complete" = "roles/pubsub.publisher" }
      project = ["roles/aiplatform.user"]
    }
    "on-analysis" = {
      buckets = {}
      topics  = { "crm-retry" = "roles/pubsub.publisher" }
      project = []
    }
    "on-crm-retry" = {
      buckets = {}
      topics  = { "crm-retry" = "roles/pubsub.publisher" }
      project = []
    }
    "cleanup-scheduled" = {
      buckets = { recordings = "roles/storage.objectUser", transcripts = "roles/storage.objectUser" }
      topics  = { "crm-retry" = "roles/pubsub.publisher" }
      project = []
    }
  }

  # Every function reads and writes state and streams analytics rows.
  all_functions_database_role = "roles/spanner.databaseUser"
  all_functions_dataset_role  = "roles/bigquery.dataEditor"

  bucket_grants  = merge([for f, a in local.access : { for b, r in a.buckets : "${f}/${b}" => { function = f, bucket = b, role = r } }]...)
  topic_grants   = merge([for f, a in local.access : { for t, r in a.topics : "${f}/${t}" => { function = f, topic = t, role = r } }]...)
  project_grants = merge([for f, a in local.access : { for r in a.project : "${f}/${r}" => { function = f, role = r } }]...)
}

resource "google_service_account" "fn" {
  for_each = local.access

  # "callflow-on-audio-uploaded" would be 26 characters; ids are at most 30, so long prefixes shorten the name.
  account_id   = substr("${var.name_prefix}-${each.key}", 0, 30)
  display_name = "callflow: ${each.key}"
}

resource "google_storage_bucket_iam_member" "fn" {
  for_each = local.bucket_grants

  bucket = google_storage_bucket.b[each.value.bucket].name
  role   = each.value.role
  member = "serviceAccount:${google_service_account.fn[each.value.function].email}"
}

resource "google_pubsub_topic_iam_member" "fn" {
  for_each = local.topic_grants

  topic  = google_pubsub_topic.t[each.value.topic].name
  role   = each.value.role
  member = "serviceAccount:${google_service_account.fn[each.value.function].email}"
}

resource "google_project_iam_member" "fn" {
  for_each = local.project_grants

  project = var.project
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.fn[each.value.function].email}"
}

resource "google_spanner_database_iam_member" "fn" {
  for_each = local.access

  instance = google_spanner_instance.main.name
  database = google_spanner_database.main.name
  role     = local.all_functions_database_role
  member   = "serviceAccount:${google_service_account.fn[each.key].email}"
}

resource "google_bigquery_dataset_iam_member" "fn" {
  for_each = local.access

  dataset_id = google_bigquery_dataset.analytics.dataset_id
  role       = local.all_functions_dataset_role
  member     = "serviceAccount:${google_service_account.fn[each.key].email}"
}
