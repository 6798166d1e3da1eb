# One Eventarc trigger per [[trigger]] of eventarc/triggers.toml (local.eventarc, generated), and its retry and
# dead-letter policy.

resource "google_service_account" "eventarc" {
  account_id   = "${var.name_prefix}-eventarc"
  display_name = "callflow: Eventarc triggers (invokes the triggered functions)"
}

resource "google_project_iam_member" "eventarc_receiver" {
  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = "serviceAccount:${google_service_account.eventarc.email}"
}

# Pub/Sub signs its pushes with the trigger identity's OIDC token (needed in projects made before April 2021).
resource "google_service_account_iam_member" "pubsub_mints_trigger_tokens" {
  service_account_id = google_service_account.eventarc.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

resource "google_eventarc_trigger" "t" {
  for_each = local.eventarc.triggers

  name            = "${var.name_prefix}-${each.key}"
  location        = var.region
  service_account = google_service_account.eventarc.email

  matching_criteria {
    attribute = "type"
    value     = each.value.event_type
  }
  dynamic "matching_criteria" {
    for_each = each.value.bucket_role == null ? [] : [each.value.bucket_role]
    content {
      attribute = "bucket"
      value     = google_storage_bucket.b[matching_criteria.value].name
    }
  }
  dynamic "transport" {
    for_each = each.value.topic_role == null ? [] : [each.value.topic_role]
    content {
      pubsub {
        topic = google_pubsub_topic.t[transport.value].id
      }
    }
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.fn[each.value.destination].name
      region  = var.region
    }
  }

  depends_on = [
    google_project_iam_member.eventarc_receiver,
    google_project_iam_member.gcs_agent_publisher,
    google_cloud_run_v2_service_iam_member.trigger_invoker,
  ]
}

# Eventarc delivers through a Pub/Sub subscription it creates and names itself (exported as
# transport[0].pubsub[0].subscription), and its API takes no retry or dead-letter settings. So the policy of
# eventarc/triggers.toml is applied to that subscription here, and again whenever the trigger (so its
# subscription) or the policy changes. It runs gcloud where terraform runs (scripts/deploy has it).
locals {
  trigger_subscriptions = { for k, t in google_eventarc_trigger.t : k => t.transport[0].pubsub[0].subscription }
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.eventarc.triggers

  subscription = local.trigger_subscriptions[each.key]
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "terraform_data" "delivery_policy" {
  for_each = local.eventarc.triggers

  triggers_replace = {
    subscription = local.trigger_subscriptions[each.key]
    retry        = each.value.retry
    ack_deadline = each.value.ack_deadline_secs
  }

  provisioner "local-exec" {
    command = join(" ", [
      "gcloud pubsub subscriptions update", local.trigger_subscriptions[each.key],
      "--project=${var.project}",
      "--ack-deadline=${each.value.ack_deadline_secs}",
      "--min-retry-delay=${each.value.retry.min_backoff_secs}s",
      "--max-retry-delay=${each.value.retry.max_backoff_secs}s",
      "--dead-letter-topic=${google_pubsub_topic.t[each.value.retry.dead_letter_topic_role].id}",
      "--max-delivery-attempts=${each.value.retry.max_delivery_attempts}",
    ])
  }

  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_pubsub_subscription_iam_member.dead_letter_subscriber,
    google_pubsub_subscription.dead_letters,
  ]
}
