-- Cleanup (retention, GDPR/CCPA erasure, stuck calls). A call's contact keys (`LeadDetails::contact_keys`: the
-- E.164 phone and the lower-cased email, or an email only the analysis heard) find the calls an erasure request
-- names. DDL cannot fill them for rows written before this file: `migrate` backfills those in Rust right after
-- applying it (and any row it missed gets its keys on the call's next write).
ALTER TABLE calls ADD COLUMN phone_key STRING(32);

ALTER TABLE calls ADD COLUMN email_key STRING(320);

-- Null-filtered: calls without a key take no index space.
CREATE NULL_FILTERED INDEX calls_by_phone ON calls (tenant_id, phone_key);

CREATE NULL_FILTERED INDEX calls_by_email ON calls (tenant_id, email_key);

-- What an erasure removed from a call, without the personal data. Not interleaved: the log outlives the call.
CREATE TABLE erasures (
  tenant_id  STRING(63) NOT NULL,
  call_id    STRING(64) NOT NULL,
  request_id STRING(256) NOT NULL,
  erased     ARRAY<STRING(MAX)> NOT NULL,
  erased_at  TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, call_id, request_id);

CREATE INDEX erasures_by_time ON erasures (tenant_id, erased_at DESC) STORING (erased);

-- Where a bounded job (e.g. retention) stopped, per tenant.
CREATE TABLE job_cursors (
  tenant_id  STRING(63) NOT NULL,
  job        STRING(64) NOT NULL,
  cursor     STRING(MAX) NOT NULL,
  updated_at TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, job);
