# The state store. The DDL is every statement of shared/schemas/spanner/*.sql in order (local.spanner_ddl,
# generated): a new migration file adds statements at the end, which terraform applies as a schema update.

resource "google_spanner_instance" "main" {
  name             = var.name_prefix
  config           = coalesce(var.spanner_config, "regional-${var.region}")
  display_name     = "callflow"
  processing_units = var.spanner_processing_units
  depends_on       = [google_project_service.apis]
}

resource "google_spanner_database" "main" {
  instance                 = google_spanner_instance.main.name
  name                     = "callflow"
  ddl                      = local.spanner_ddl
  version_retention_period = "7d"
  deletion_protection      = var.deletion_protection
}
