-- Dead letters are replayed by id (the INT64 part of their key, given out as text): the index finds a dead letter
-- from its id alone, and replayed_at records that it was replayed (it is kept, for the record).
ALTER TABLE dead_letters ADD COLUMN replayed_at TIMESTAMP;

CREATE INDEX dead_letters_by_id ON dead_letters (id);

-- The CRM's record for a delivered call, written in the transaction that moves the call to `delivered`.
-- Interleaved: erasing a call erases its delivery record.
CREATE TABLE deliveries (
  tenant_id    STRING(63) NOT NULL,
  call_id      STRING(64) NOT NULL,
  provider     STRING(32) NOT NULL,
  record_id    STRING(MAX) NOT NULL,
  created      BOOL NOT NULL,
  attempts     INT64 NOT NULL,
  review       BOOL NOT NULL,
  delivered_at TIMESTAMP NOT NULL,
) PRIMARY KEY (tenant_id, call_id),
  INTERLEAVE IN PARENT calls ON DELETE CASCADE;

-- A tenant's circuit breakers (e.g. `crm:hubspot`), read and written in one read-write transaction so every
-- instance shares one circuit. Times in µs.
CREATE TABLE breakers (
  tenant_id            STRING(63) NOT NULL,
  breaker_key          STRING(128) NOT NULL,
  consecutive_failures INT64 NOT NULL,
  open_until           INT64,
  probe_until          INT64,
) PRIMARY KEY (tenant_id, breaker_key);
