-- One row per unit of an event-driven stage's work on a call (e.g. transcribe:{generation}): a claim with a lease
-- while it runs, done_at once finished, so a redelivered event is neither processed nor paid for twice.
-- Interleaved: erasing a call erases its stage history. Lease times in µs.
CREATE TABLE stage_runs (
  tenant_id   STRING(63) NOT NULL,
  call_id     STRING(64) NOT NULL,
  stage_key   STRING(256) NOT NULL,
  lease       STRING(64),
  lease_until INT64,
  attempts    INT64 NOT NULL,
  last_error  STRING(MAX),
  done_at     TIMESTAMP,
) PRIMARY KEY (tenant_id, call_id, stage_key),
  INTERLEAVE IN PARENT calls ON DELETE CASCADE;
