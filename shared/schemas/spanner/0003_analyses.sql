-- The analysis of a call (on-transcript), one per call, written in the transaction that moves the call to
-- `analysed`. Interleaved: erasing a call erases its analysis. The JSON holds caller details for the CRM (name,
-- email, ZIP), so it lives here with the call's other PII, never in analytics.
CREATE TABLE analyses (
  tenant_id     STRING(63) NOT NULL,
  call_id       STRING(64) NOT NULL,
  analyzer      STRING(64) NOT NULL,
  analysis_json STRING(MAX) NOT NULL,
  created_at    TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, call_id),
  INTERLEAVE IN PARENT calls ON DELETE CASCADE;
