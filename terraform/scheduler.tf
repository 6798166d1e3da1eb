# One Cloud Scheduler job per [[schedule]] of eventarc/triggers.toml, publishing on its topic (the cleanup run),
# and the outbox drain of on-webhook.

resource "google_cloud_scheduler_job" "s" {
  for_each = local.eventarc.schedules

  name      = "${var.name_prefix}-${each.key}"
  region    = var.region
  schedule  = each.value.cron
  time_zone = "Etc/UTC"

  # Cloud Scheduler's attributes are fixed, so there is no schedule_time attribute here: cleanup-scheduled names
  # the run by the message's publish time instead.
  pubsub_target {
    topic_name = google_pubsub_topic.t[each.value.topic_role].id
    data       = each.value.data == "" ? null : base64encode(each.value.data)
    attributes = { schedule = each.key }
  }

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "callflow: Cloud Scheduler (drains on-webhook's outbox)"
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invoker" {
  name     = google_cloud_run_v2_service.fn["on-webhook"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Recording fetches are leased work in Spanner. A warm instance's worker drains them; this call drains whatever
# is due inside a request, so nothing waits on an instance staying warm (on-webhook runs it at most once a second).
resource "google_cloud_scheduler_job" "outbox_drain" {
  name             = "${var.name_prefix}-outbox-drain"
  region           = var.region
  schedule         = "* * * * *"
  time_zone        = "Etc/UTC"
  attempt_deadline = "60s"

  http_target {
    uri         = "${google_cloud_run_v2_service.fn["on-webhook"].uri}/internal/outbox/drain"
    http_method = "POST"
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloud_run_v2_service.fn["on-webhook"].uri
    }
  }

  retry_config {
    retry_count = 0
  }
}
