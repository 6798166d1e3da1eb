# The two buckets of eventarc/environments.toml ([gcp]): recordings and transcripts, one per stage, because
# Eventarc's storage triggers filter by bucket only.

resource "google_storage_bucket" "b" {
  for_each = local.eventarc.buckets

  name                        = each.value
  location                    = upper(var.region)
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Old calls are rarely read again: cheaper classes as they age, and gone at the longest retention any tenant
  # may set. Each tenant's own retention_days is applied earlier by cleanup-scheduled.
  lifecycle_rule {
    condition {
      age                   = var.coldline_after_days
      matches_storage_class = ["STANDARD"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "COLDLINE"
    }
  }
  lifecycle_rule {
    condition {
      age                   = var.archive_after_days
      matches_storage_class = ["COLDLINE"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "ARCHIVE"
    }
  }
  lifecycle_rule {
    condition {
      age = var.delete_after_days
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Eventarc's storage triggers publish through Pub/Sub as Cloud Storage's service agent (Eventarc creates the
# bucket notifications itself).
data "google_storage_project_service_account" "gcs" {
  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "gcs_agent_publisher" {
  project = var.project
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}
