# The six functions as Cloud Run services. What each listens to comes from eventarc/ (generated.tf.json, made
# by `callflow terraform generate`); what each may touch is in iam.tf.

locals {
  # Starting values per function. on-webhook keeps one warm instance with CPU always allocated: its outbox worker
  # fetches recordings after the answer (README, "What happens on Cloud Run"). Triggered stages take as many
  # requests at once as the embedded host's router gives them (8) — they spend most of their time waiting on
  # Speech-to-Text, Gemini or a CRM. cleanup-scheduled runs one run at a time on one instance: its jobs resume
  # from cursors and must not race each other.
  function_defaults = {
    "on-webhook"        = { min_instances = 1, max_instances = 20, concurrency = 80, cpu = "1", memory = "256Mi", cpu_idle = false }
    "on-audio-uploaded" = { min_instances = 0, max_instances = 20, concurrency = 8, cpu = "1", memory = "1Gi", cpu_idle = true }
    "on-transcript"     = { min_instances = 0, max_instances = 20, concurrency = 8, cpu = "1", memory = "512Mi", cpu_idle = true }
    "on-analysis"       = { min_instances = 0, max_instances = 10, concurrency = 16, cpu = "1", memory = "256Mi", cpu_idle = true }
    "on-crm-retry"      = { min_instances = 0, max_instances = 5, concurrency = 16, cpu = "1", memory = "256Mi", cpu_idle = true }
    "cleanup-scheduled" = { min_instances = 0, max_instances = 1, concurrency = 1, cpu = "1", memory = "512Mi", cpu_idle = true }
  }

  settings = {
    for f, d in local.function_defaults : f => merge(d, {
      for k, v in try(var.functions[f], {}) : k => v if v != null && k != "env"
    })
  }

  # The request timeout is the longest timeout of the function's triggers (eventarc/triggers.toml); on-webhook
  # answers CallRail in milliseconds and gets a minute.
  timeouts = merge({ "on-webhook" = 60 }, local.eventarc.function_timeouts)

  images = {
    for f in keys(local.function_defaults) : f => lookup(
      var.images, f, "${var.region}-docker.pkg.dev/${var.project}/${var.image_repository}/${f}:latest"
    )
  }

  spanner_database = "projects/${var.project}/instances/${google_spanner_instance.main.name}/databases/${google_spanner_database.main.name}"

  # Cleanup runs four jobs one after another, each bounded in time; all four must end before Pub/Sub's ack
  # deadline (at most 600 s) or the run is redelivered while it still works.
  cleanup_job_secs = floor((local.eventarc.triggers["cleanup-scheduled"].ack_deadline_secs - 40) / 4)

  common_env = {
    CALLFLOW_ENVIRONMENT      = "gcp"
    GOOGLE_CLOUD_PROJECT      = var.project
    CALLFLOW_SPANNER_DATABASE = local.spanner_database
    CALLFLOW_BIGQUERY_DATASET = google_bigquery_dataset.analytics.dataset_id
    CALLFLOW_TENANTS          = "/etc/callflow/tenants/tenants.toml"
    CALLFLOW_EVENTARC         = "/etc/callflow/eventarc"
    RUST_LOG                  = "info"
  }

  function_env = {
    # Cloud Run's front end puts the caller's address in X-Forwarded-For: the failed-signature limiter keys on it.
    "on-webhook"        = { CALLFLOW_TRUST_FORWARDED_FOR = "true" }
    "on-audio-uploaded" = { CALLFLOW_SPEECH_LOCATION = var.region }
    "on-transcript"     = { CALLFLOW_GEMINI_LOCATION = var.region }
    "on-analysis"       = {}
    "on-crm-retry"      = {}
    "cleanup-scheduled" = { CALLFLOW_CLEANUP_JOB_SECS = tostring(local.cleanup_job_secs) }
  }

  env = {
    for f in keys(local.function_defaults) : f => merge(
      local.common_env, local.function_env[f], try(coalesce(var.functions[f].env, {}), {})
    )
  }
}

resource "google_cloud_run_v2_service" "fn" {
  for_each = local.settings

  name     = "${var.name_prefix}-${each.key}"
  location = var.region
  # Only on-webhook takes traffic from the internet (CallRail, web forms). The others take requests from inside
  # the project (Eventarc, Pub/Sub, Cloud Scheduler) and, by IAM below, only from the trigger identity.
  ingress             = each.key == "on-webhook" ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.fn[each.key].email
    timeout                          = "${local.timeouts[each.key]}s"
    max_instance_request_concurrency = each.value.concurrency

    scaling {
      min_instance_count = each.value.min_instances
      max_instance_count = each.value.max_instances
    }

    containers {
      image = local.images[each.key]
      ports {
        container_port = 8080
      }
      resources {
        limits = {
          cpu    = each.value.cpu
          memory = each.value.memory
        }
        cpu_idle          = each.value.cpu_idle
        startup_cpu_boost = true
      }
      dynamic "env" {
        for_each = local.env[each.key]
        content {
          name  = env.key
          value = env.value
        }
      }
      volume_mounts {
        name       = "tenants"
        mount_path = "/etc/callflow/tenants"
      }
    }

    # The tenants file, from Secret Manager (its latest version when an instance starts).
    volumes {
      name = "tenants"
      secret {
        secret = google_secret_manager_secret.tenants.secret_id
        items {
          version = "latest"
          path    = "tenants.toml"
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.tenants,
  ]
}

# CallRail and web forms reach on-webhook without Google credentials: it checks their signatures itself.
resource "google_cloud_run_v2_service_iam_member" "webhook_public" {
  name     = google_cloud_run_v2_service.fn["on-webhook"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# Every other function is invoked only by the trigger identity (Eventarc delivers with its OIDC token).
resource "google_cloud_run_v2_service_iam_member" "trigger_invoker" {
  for_each = toset(distinct([for t in local.eventarc.triggers : t.destination]))

  name     = google_cloud_run_v2_service.fn[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.eventarc.email}"
}
