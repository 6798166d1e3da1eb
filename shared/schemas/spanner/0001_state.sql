-- callflow state on Spanner (GoogleSQL). Every table's key starts with tenant_id, so every read names a tenant
-- and one tenant's rows sit together. Applied in order by `callflow::adapters::spanner::migrate`, which records
-- each file's number in schema_migrations (the one table without a tenant: it describes the database).

CREATE TABLE tenants (
  tenant_id   STRING(63) NOT NULL,
  config_json STRING(MAX) NOT NULL,
  updated_at  TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
) PRIMARY KEY (tenant_id);

CREATE TABLE offices (
  tenant_id   STRING(63) NOT NULL,
  office_id   STRING(64) NOT NULL,
  config_json STRING(MAX) NOT NULL,
) PRIMARY KEY (tenant_id, office_id),
  INTERLEAVE IN PARENT tenants ON DELETE CASCADE;

CREATE TABLE calls (
  tenant_id        STRING(63) NOT NULL,
  call_id          STRING(64) NOT NULL,
  source           STRING(16) NOT NULL,
  state            STRING(32) NOT NULL,
  state_reason     STRING(MAX),
  lead_json        STRING(MAX) NOT NULL,
  recording_object STRING(MAX),
  created_at       TIMESTAMP NOT NULL,
  updated_at       TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, call_id);

CREATE INDEX calls_by_state ON calls (tenant_id, state, updated_at);

-- The dedupe ledger: one row per (call, event kind) ever accepted. Interleaved: erasing a call erases its ledger.
CREATE TABLE intake_ledger (
  tenant_id      STRING(63) NOT NULL,
  call_id        STRING(64) NOT NULL,
  dedupe_key     STRING(128) NOT NULL,
  payload_sha256 STRING(64) NOT NULL,
  received_at    TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, call_id, dedupe_key),
  INTERLEAVE IN PARENT calls ON DELETE CASCADE;

-- Work committed with the change that implies it. Ids are random (not sequential: no hotspot). Times in µs.
CREATE TABLE outbox (
  tenant_id   STRING(63) NOT NULL,
  id          INT64 NOT NULL,
  call_id     STRING(64) NOT NULL,
  kind        STRING(32) NOT NULL,
  payload     STRING(MAX) NOT NULL,
  attempts    INT64 NOT NULL,
  not_before  INT64 NOT NULL,
  lease       STRING(64),
  lease_until INT64,
  last_error  STRING(MAX),
  created_at  TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, id);

CREATE INDEX outbox_due ON outbox (kind, not_before) STORING (lease_until);

CREATE TABLE dead_letters (
  tenant_id  STRING(63) NOT NULL,
  id         INT64 NOT NULL,
  call_id    STRING(64) NOT NULL,
  kind       STRING(32) NOT NULL,
  payload    STRING(MAX) NOT NULL,
  attempts   INT64 NOT NULL,
  reason     STRING(MAX) NOT NULL,
  created_at TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, id);

CREATE TABLE schema_migrations (
  version    INT64 NOT NULL,
  applied_at TIMESTAMP NOT NULL,
) PRIMARY KEY (version);
