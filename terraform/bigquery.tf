# Analytics: one table per schema file in shared/schemas/analytics/ (the file itself is the table's schema, as
# for the BigQuery sink and the embedded SQLite sink), partitioned by day on event_time and clustered by tenant.

resource "google_bigquery_dataset" "analytics" {
  dataset_id    = var.bigquery_dataset
  location      = var.bigquery_location
  friendly_name = "callflow analytics"
  description   = "Stage events and cleanup runs streamed by callflow's functions. No PII."
  depends_on    = [google_project_service.apis]
}

resource "google_bigquery_table" "t" {
  for_each = toset(local.analytics_tables)

  dataset_id          = google_bigquery_dataset.analytics.dataset_id
  table_id            = each.key
  schema              = file("${path.module}/../shared/schemas/analytics/${each.key}.json")
  clustering          = ["tenant_id"]
  deletion_protection = var.deletion_protection

  time_partitioning {
    type          = "DAY"
    field         = "event_time"
    expiration_ms = var.analytics_partition_expiration_days == null ? null : var.analytics_partition_expiration_days * 86400000
  }
}

# Analyst views, named after their files: shared/schemas/analytics/views/base/*.sql first (the others read them),
# then views/*.sql. The SQL is written once for BigQuery and the embedded SQLite sink; `{dataset}` in it is the
# dataset's full name here (shared/src/domain/analytics.rs, `view_sql`, does the same for `callflow provision`).
locals {
  views_dir = "${path.module}/../shared/schemas/analytics"
}

resource "google_bigquery_table" "base_views" {
  for_each = fileset(local.views_dir, "views/base/*.sql")

  dataset_id          = google_bigquery_dataset.analytics.dataset_id
  table_id            = trimsuffix(basename(each.key), ".sql")
  deletion_protection = false

  view {
    query          = replace(file("${local.views_dir}/${each.key}"), "{dataset}", "${var.project}.${google_bigquery_dataset.analytics.dataset_id}")
    use_legacy_sql = false
  }

  depends_on = [google_bigquery_table.t]
}

resource "google_bigquery_table" "views" {
  for_each = fileset(local.views_dir, "views/*.sql")

  dataset_id          = google_bigquery_dataset.analytics.dataset_id
  table_id            = trimsuffix(basename(each.key), ".sql")
  deletion_protection = false

  view {
    query          = replace(file("${local.views_dir}/${each.key}"), "{dataset}", "${var.project}.${google_bigquery_dataset.analytics.dataset_id}")
    use_legacy_sql = false
  }

  depends_on = [google_bigquery_table.base_views]
}
