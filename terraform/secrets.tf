# Secret Manager: the tenants file and the secrets it references. Terraform creates the secrets and who may read
# them; their values are added with `gcloud secrets versions add` and are never in terraform or its state.

resource "google_secret_manager_secret" "tenants" {
  secret_id = var.tenants_secret
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "tenants" {
  for_each = local.function_defaults

  secret_id = google_secret_manager_secret.tenants.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.fn[each.key].email}"
}

resource "google_secret_manager_secret" "s" {
  for_each = var.secrets

  secret_id = each.key
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

# Each secret is readable by the functions var.secrets lists for it, and no other.
resource "google_secret_manager_secret_iam_member" "s" {
  for_each = merge([
    for s, fns in var.secrets : { for f in fns : "${s}/${f}" => { secret = s, function = f } }
  ]...)

  secret_id = google_secret_manager_secret.s[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.fn[each.value.function].email}"
}
