output "webhook_url" {
  description = "on-webhook's base URL. CallRail's webhooks go to WEBHOOK_URL/webhooks/callrail/TENANT, web forms to WEBHOOK_URL/webhooks/forms/TENANT."
  value       = google_cloud_run_v2_service.fn["on-webhook"].uri
}

output "callrail_webhook_urls" {
  description = "Per tenant id: the URL to paste into CallRail's Webhooks settings (post-call and call-modified)."
  value       = "${google_cloud_run_v2_service.fn["on-webhook"].uri}/webhooks/callrail/{tenant_id}"
}

output "services" {
  description = "Each function's Cloud Run service and URL."
  value       = { for f, s in google_cloud_run_v2_service.fn : f => { name = s.name, uri = s.uri } }
}

output "service_accounts" {
  description = "Each function's service account."
  value       = { for f, a in google_service_account.fn : f => a.email }
}

output "buckets" {
  value = { for role, b in google_storage_bucket.b : role => b.name }
}

output "topics" {
  value = { for role, t in google_pubsub_topic.t : role => t.name }
}

output "dead_letter_subscriptions" {
  description = "Where dead-lettered events wait for an operator."
  value       = [for s in google_pubsub_subscription.dead_letters : s.id]
}

output "spanner_database" {
  description = "CALLFLOW_SPANNER_DATABASE for the ops CLI."
  value       = local.spanner_database
}

output "bigquery_dataset" {
  value = "${var.project}.${google_bigquery_dataset.analytics.dataset_id}"
}

output "image_repository" {
  description = "Where scripts/deploy pushes the images."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}
