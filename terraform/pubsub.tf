# Topics of eventarc/environments.toml ([gcp]): analysis-complete, crm-retry, scheduled and the dead-letter topic.

resource "google_pubsub_topic" "t" {
  for_each = local.eventarc.topics

  name       = each.value
  depends_on = [google_project_service.apis]
}

locals {
  dead_letter_roles = toset([for t in local.eventarc.triggers : t.retry.dead_letter_topic_role])
  pubsub_agent      = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# A dead-letter topic without a subscription drops what it is given. This one keeps every dead letter for an
# operator (`callflow dead-letters`), acked or not, for dead_letter_retention_days, and never expires.
resource "google_pubsub_subscription" "dead_letters" {
  for_each = local.dead_letter_roles

  name                       = "${local.eventarc.topics[each.key]}-hold"
  topic                      = google_pubsub_topic.t[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "${var.dead_letter_retention_days * 86400}s"
  retain_acked_messages      = true
  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub forwards a message that ran out of attempts to the dead-letter topic as its own service agent.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letter_roles

  topic  = google_pubsub_topic.t[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}
