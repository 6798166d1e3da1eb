# Providers and their versions. State is local by default; for a team, add a "gcs" backend here (see README,
# "Deploying to Google Cloud").
terraform {
  required_version = ">= 1.6"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

# The project's number names the Google-managed service agents (Pub/Sub's, for dead letters).
data "google_project" "this" {}
