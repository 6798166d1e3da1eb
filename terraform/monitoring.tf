# Alerts: error rate, latency, dead letters waiting, CRM success rate. They notify var.alert_emails.

resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_emails)

  display_name = "callflow alerts: ${each.key}"
  type         = "email"
  labels       = { email_address = each.key }
  depends_on   = [google_project_service.apis]
}

locals {
  channels = [for c in google_monitoring_notification_channel.email : c.id]
  services = join("|", [for s in google_cloud_run_v2_service.fn : s.name])
  # Pub/Sub gives dead letters to these subscriptions; the functions' own dead letters (poison events, exhausted
  # vendor retries) are ERROR log lines whose message ends in "dead-lettered".
  dead_letter_subscriptions = join("|", [for s in google_pubsub_subscription.dead_letters : s.name])
}

# CRM pushes by outcome, from on-analysis's and on-crm-retry's log lines ("lead delivered", "push failed; retry
# scheduled", "circuit open; push deferred", "lead dead-lettered").
resource "google_logging_metric" "crm_pushes" {
  name   = "${var.name_prefix}_crm_pushes"
  filter = <<-EOT
    resource.type="cloud_run_revision"
    resource.labels.service_name=("${google_cloud_run_v2_service.fn["on-analysis"].name}" OR "${google_cloud_run_v2_service.fn["on-crm-retry"].name}")
    jsonPayload.message=("lead delivered" OR "push failed; retry scheduled" OR "circuit open; push deferred" OR "lead dead-lettered")
  EOT
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "delivered, failed, deferred or dead_lettered"
    }
  }
  label_extractors = {
    outcome = "REGEXP_EXTRACT(jsonPayload.message, \"^(lead delivered|push failed|circuit open|lead dead-lettered)\")"
  }
}

resource "google_monitoring_alert_policy" "error_rate" {
  display_name          = "callflow: 5xx rate above ${var.alert_error_rate * 100}%"
  combiner              = "OR"
  notification_channels = local.channels
  documentation {
    content = "A function answers more than ${var.alert_error_rate * 100}% of its requests with 5xx. Triggered stages are retried by Pub/Sub, so look for a vendor outage (Speech-to-Text, Gemini, a CRM) or Spanner errors in the function's logs; on-webhook 5xx loses CallRail webhooks until reconciliation finds them."
  }
  conditions {
    display_name = "5xx share over 10 min"
    condition_prometheus_query_language {
      query               = <<-EOT
        sum by (service_name) (rate(run_googleapis_com:request_count{monitored_resource="cloud_run_revision", service_name=~"${local.services}", response_code_class="5xx"}[10m]))
        / sum by (service_name) (rate(run_googleapis_com:request_count{monitored_resource="cloud_run_revision", service_name=~"${local.services}"}[10m]))
        > ${var.alert_error_rate}
      EOT
      duration            = "300s"
      evaluation_interval = "60s"
    }
  }
}

resource "google_monitoring_alert_policy" "latency" {
  display_name          = "callflow: slow answers"
  combiner              = "OR"
  notification_channels = local.channels
  documentation {
    content = "on-webhook's p99 is above ${var.alert_webhook_p99_ms} ms (CallRail never retries a webhook it gave up on), or a triggered stage's p95 is above ${var.alert_stage_p95_ms} ms (a vendor is slow; deliveries may time out and be retried)."
  }
  conditions {
    display_name = "on-webhook p99"
    condition_prometheus_query_language {
      query               = <<-EOT
        histogram_quantile(0.99, sum by (le) (rate(run_googleapis_com:request_latencies_bucket{monitored_resource="cloud_run_revision", service_name="${google_cloud_run_v2_service.fn["on-webhook"].name}"}[10m])))
        > ${var.alert_webhook_p99_ms}
      EOT
      duration            = "300s"
      evaluation_interval = "60s"
    }
  }
  conditions {
    display_name = "triggered stages p95"
    condition_prometheus_query_language {
      query               = <<-EOT
        histogram_quantile(0.95, sum by (service_name, le) (rate(run_googleapis_com:request_latencies_bucket{monitored_resource="cloud_run_revision", service_name=~"${local.services}", service_name!="${google_cloud_run_v2_service.fn["on-webhook"].name}"}[15m])))
        > ${var.alert_stage_p95_ms}
      EOT
      duration            = "600s"
      evaluation_interval = "60s"
    }
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "callflow: dead letters waiting"
  combiner              = "OR"
  notification_channels = local.channels
  documentation {
    content = "Events ran out of delivery attempts and wait in the dead-letter subscription (kept ${var.dead_letter_retention_days} days). List and replay them with `callflow dead-letters` (README)."
  }
  conditions {
    display_name = "undelivered messages in the dead-letter subscription"
    condition_prometheus_query_language {
      query               = <<-EOT
        max(pubsub_googleapis_com:subscription_num_undelivered_messages{monitored_resource="pubsub_subscription", subscription_id=~"${local.dead_letter_subscriptions}"}) > 0
      EOT
      duration            = "300s"
      evaluation_interval = "60s"
    }
  }
}

# A log-match condition must be alone in its policy.
resource "google_monitoring_alert_policy" "dead_lettered_calls" {
  display_name          = "callflow: a function dead-lettered a call"
  combiner              = "OR"
  notification_channels = local.channels
  documentation {
    content = "A function gave a call up (poison event, vendor retries exhausted, CRM refused the lead). The log line says why; `callflow dead-letters` lists and replays them."
  }
  conditions {
    display_name = "dead-lettered log lines"
    condition_matched_log {
      filter = <<-EOT
        resource.type="cloud_run_revision"
        resource.labels.service_name=~"^(${local.services})$"
        severity>=ERROR
        jsonPayload.message=~"dead-lettered$"
      EOT
    }
  }
  alert_strategy {
    notification_rate_limit {
      period = "3600s"
    }
    auto_close = "86400s"
  }
}

resource "google_monitoring_alert_policy" "crm_success" {
  display_name          = "callflow: CRM pushes failing"
  combiner              = "OR"
  notification_channels = local.channels
  documentation {
    content = "Fewer than ${var.alert_crm_success_rate * 100}% of CRM pushes succeeded over 30 minutes. Look for a tenant's CRM outage or revoked credentials in on-analysis's and on-crm-retry's logs; leads are retried with backoff and kept as dead letters after the last attempt."
  }
  conditions {
    display_name = "delivered share of CRM pushes over 30 min"
    condition_prometheus_query_language {
      query               = <<-EOT
        sum(rate(logging_googleapis_com:user_${google_logging_metric.crm_pushes.name}{outcome="lead delivered"}[30m]))
        / sum(rate(logging_googleapis_com:user_${google_logging_metric.crm_pushes.name}[30m]))
        < ${var.alert_crm_success_rate}
      EOT
      duration            = "600s"
      evaluation_interval = "60s"
    }
  }
}
