variable "project" {
  description = "The Google Cloud project id. Buckets are named after it (eventarc/environments.toml, [gcp])."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services, triggers, buckets, Spanner instance, scheduler jobs and images."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of the services, service accounts, triggers, scheduler jobs and the Spanner instance."
  type        = string
  default     = "callflow"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,11}$", var.name_prefix))
    error_message = "Use 1-12 characters of a-z, 0-9 and '-', starting with a letter (service account ids are at most 30)."
  }
}

variable "images" {
  description = "Image per function (scripts/deploy writes images.auto.tfvars.json with pinned digests). A function left out runs REGION-docker.pkg.dev/PROJECT/REPOSITORY/FUNCTION:latest."
  type        = map(string)
  default     = {}
}

variable "image_repository" {
  description = "The Artifact Registry repository of the images."
  type        = string
  default     = "callflow"
}

variable "functions" {
  description = "Per-function overrides of the starting values in main.tf (local.function_defaults): instances, concurrency, CPU, memory, extra environment."
  type = map(object({
    min_instances = optional(number)
    max_instances = optional(number)
    concurrency   = optional(number)
    cpu           = optional(string)
    memory        = optional(string)
    env           = optional(map(string))
  }))
  default = {}
  validation {
    condition = alltrue([for f in keys(var.functions) : contains(
      ["on-webhook", "on-audio-uploaded", "on-transcript", "on-analysis", "on-crm-retry", "cleanup-scheduled"], f
    )])
    error_message = "Keys of functions must be function names (on-webhook, on-audio-uploaded, on-transcript, on-analysis, on-crm-retry, cleanup-scheduled)."
  }
}

variable "tenants_secret" {
  description = "The Secret Manager secret whose latest version is the tenants file (TOML, see README). Mounted into every function; its value is never in terraform."
  type        = string
  default     = "callflow-tenants"
}

variable "secrets" {
  description = "Secrets the tenants file references (gcp-sm:NAME), each with the functions that read it: signing keys for on-webhook, CallRail API keys for on-webhook and cleanup-scheduled, CRM credentials for on-analysis and on-crm-retry. Terraform creates the secrets and grants access; values are added with gcloud."
  type        = map(list(string))
  default     = {}
  validation {
    condition = alltrue(flatten([for s, fns in var.secrets : [for f in fns : contains(
      ["on-webhook", "on-audio-uploaded", "on-transcript", "on-analysis", "on-crm-retry", "cleanup-scheduled"], f
    )]]))
    error_message = "Each secret lists function names (on-webhook, on-audio-uploaded, on-transcript, on-analysis, on-crm-retry, cleanup-scheduled)."
  }
}

variable "spanner_config" {
  description = "Spanner instance configuration; default regional-REGION."
  type        = string
  default     = null
}

variable "spanner_processing_units" {
  description = "Spanner compute: 100 processing units is the smallest instance."
  type        = number
  default     = 100
}

variable "bigquery_dataset" {
  description = "The analytics dataset (CALLFLOW_BIGQUERY_DATASET)."
  type        = string
  default     = "callflow"
}

variable "bigquery_location" {
  description = "Where the analytics dataset lives."
  type        = string
  default     = "US"
}

variable "analytics_partition_expiration_days" {
  description = "Drop analytics partitions older than this (null keeps them: the rows hold no PII)."
  type        = number
  default     = null
}

variable "coldline_after_days" {
  description = "Recordings and transcripts move to COLDLINE at this age."
  type        = number
  default     = 90
}

variable "archive_after_days" {
  description = "…and to ARCHIVE at this age."
  type        = number
  default     = 365
}

variable "delete_after_days" {
  description = "Objects are deleted at this age whatever the tenant's retention says: the longest retention any tenant may have. cleanup-scheduled deletes earlier per tenant (retention_days)."
  type        = number
  default     = 730
  validation {
    condition     = var.delete_after_days > var.archive_after_days && var.archive_after_days > var.coldline_after_days
    error_message = "Need coldline_after_days < archive_after_days < delete_after_days."
  }
}

variable "dead_letter_retention_days" {
  description = "How long dead-lettered events wait in the dead-letter subscription for an operator (Pub/Sub keeps at most 31 days)."
  type        = number
  default     = 31
  validation {
    condition     = var.dead_letter_retention_days >= 1 && var.dead_letter_retention_days <= 31
    error_message = "Pub/Sub retains messages 1 to 31 days."
  }
}

variable "alert_emails" {
  description = "Who the alert policies notify."
  type        = list(string)
  default     = []
}

variable "alert_error_rate" {
  description = "Alert when a function answers more than this share of requests with 5xx over 10 minutes."
  type        = number
  default     = 0.05
}

variable "alert_webhook_p99_ms" {
  description = "Alert when on-webhook's 99th-percentile latency exceeds this over 10 minutes (CallRail gives up on slow answers)."
  type        = number
  default     = 1000
}

variable "alert_stage_p95_ms" {
  description = "Alert when a triggered function's 95th-percentile latency exceeds this over 15 minutes."
  type        = number
  default     = 60000
}

variable "alert_crm_success_rate" {
  description = "Alert when fewer than this share of CRM pushes succeed over 30 minutes."
  type        = number
  default     = 0.9
}

variable "deletion_protection" {
  description = "Protect the Spanner database, the BigQuery tables and the services from terraform destroy."
  type        = bool
  default     = true
}
