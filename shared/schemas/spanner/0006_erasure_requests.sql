-- Erasure requests (GDPR/CCPA-style), made through the ops interface and kept until the cleanup job has carried
-- them out. The phone (E.164) and email (lower case) they name are kept only until then: completing a request sets
-- completed_at and calls_erased and clears both. The job lists a tenant's pending requests by scanning its key
-- range (a tenant has few), oldest first.
CREATE TABLE erasure_requests (
  tenant_id    STRING(63) NOT NULL,
  request_id   STRING(64) NOT NULL,
  phone        STRING(32),
  email        STRING(320),
  requested_at TIMESTAMP NOT NULL,
  completed_at TIMESTAMP,
  calls_erased INT64,
) PRIMARY KEY (tenant_id, request_id);
