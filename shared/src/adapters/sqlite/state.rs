//! The embedded state store: calls, the intake dedupe ledger, the outbox and dead letters in one SQLite file.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::writer::{self, Durability, Writer};
use crate::domain::analysis::Analysis;
use crate::domain::breaker::{Admit, Breaker, BreakerPolicy};
use crate::domain::crm::CrmDelivery;
use crate::domain::intake::{self, IntakeEvent, IntakeOutcome};
use crate::domain::retention::{CallerTraces, forget_in_analysis};
use crate::domain::work::{Completion, NewWork, OUTBOX_KINDS_WITH_TEXT, WorkItem, WorkKind};
use crate::domain::{CallId, CallRecord, CallSource, CallState, LeadDetails, TenantId};
use crate::ports::{
    CallErasure, CallScan, Claim, DeadLetter, ErasureRecord, ErasureRequest, IntakeResult, PortError, PortResult,
    RefusedEvent, StageClaim, StateStore,
};

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS calls (
    tenant_id        TEXT NOT NULL,
    call_id          TEXT NOT NULL,
    source           TEXT NOT NULL,
    state            TEXT NOT NULL,
    state_reason     TEXT,
    lead_json        TEXT NOT NULL,
    recording_object TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    -- The caller's contact keys (`LeadDetails::contact_keys`; the email may be one the analysis heard), for
    -- erasure requests. Files from before them get them on open, backfilled.
    phone_key        TEXT,
    email_key        TEXT,
    PRIMARY KEY (tenant_id, call_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intake_ledger (
    tenant_id      TEXT NOT NULL,
    call_id        TEXT NOT NULL,
    dedupe_key     TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, call_id, dedupe_key)
) WITHOUT ROWID;
-- The outbox is a queue: its rowid is its order. (Spanner keys it by tenant_id first; SQLite has one node.)
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  INTEGER NOT NULL,
    lease       TEXT,
    lease_until INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (kind, not_before);
-- Work that failed at least once, by call: an erasure forgets the caller in its last error. Partial, so the queue's
-- hot path (rows that never fail) does not pay for it.
CREATE INDEX IF NOT EXISTS outbox_failed ON outbox (tenant_id, call_id) WHERE last_error IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    call_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- Set when an operator replayed it (it is kept, for the record). Files from before it get it on open.
    replayed_at TEXT
);
CREATE INDEX IF NOT EXISTS dead_letters_tenant ON dead_letters (tenant_id, created_at);
CREATE INDEX IF NOT EXISTS dead_letters_call ON dead_letters (tenant_id, call_id);
-- One row per unit of an event-driven stage's work (e.g. transcribe:{generation}); times in µs.
CREATE TABLE IF NOT EXISTS stage_runs (
    tenant_id   TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    stage_key   TEXT NOT NULL,
    lease       TEXT,
    lease_until INTEGER,
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    done_at     TEXT,
    PRIMARY KEY (tenant_id, call_id, stage_key)
) WITHOUT ROWID;
-- The analysis of a call (on-transcript); caller details for the CRM live in it, so it stays with the call.
CREATE TABLE IF NOT EXISTS analyses (
    tenant_id     TEXT NOT NULL,
    call_id       TEXT NOT NULL,
    analyzer      TEXT NOT NULL,
    analysis_json TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, call_id)
) WITHOUT ROWID;
-- The CRM's record for a delivered call, written in the transaction that moves the call to `delivered`.
CREATE TABLE IF NOT EXISTS deliveries (
    tenant_id    TEXT NOT NULL,
    call_id      TEXT NOT NULL,
    provider     TEXT NOT NULL,
    record_id    TEXT NOT NULL,
    created      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    review       INTEGER NOT NULL,
    delivered_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, call_id)
) WITHOUT ROWID;
-- Circuit breakers shared by every instance on this file (e.g. `crm:hubspot`); times in µs.
CREATE TABLE IF NOT EXISTS breakers (
    tenant_id            TEXT NOT NULL,
    breaker_key          TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    open_until           INTEGER,
    probe_until          INTEGER,
    PRIMARY KEY (tenant_id, breaker_key)
) WITHOUT ROWID;
-- What erasures (a caller's request, retention) removed from a call, without the personal data. Kept when the
-- call itself goes.
CREATE TABLE IF NOT EXISTS erasures (
    tenant_id   TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    erased_json TEXT NOT NULL,
    erased_at   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, call_id, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS erasures_by_time ON erasures (tenant_id, erased_at);
-- Erasure requests, kept until the erasure job carried them out (then without the phone and email they named).
-- Files from before them get the table on open.
CREATE TABLE IF NOT EXISTS erasure_requests (
    tenant_id    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    phone        TEXT,
    email        TEXT,
    requested_at TEXT NOT NULL,
    completed_at TEXT,
    calls_erased INTEGER,
    PRIMARY KEY (tenant_id, request_id)
) WITHOUT ROWID;
-- Where a bounded job (e.g. retention) stopped, per tenant.
CREATE TABLE IF NOT EXISTS job_cursors (
    tenant_id  TEXT NOT NULL,
    job        TEXT NOT NULL,
    cursor     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, job)
) WITHOUT ROWID;
";

/// Indexes on columns that older files gain on open (so they run after `add_new_columns`).
const LATE_INDEXES: &str = r"
CREATE INDEX IF NOT EXISTS calls_by_state ON calls (tenant_id, state, updated_at);
CREATE INDEX IF NOT EXISTS calls_by_phone ON calls (tenant_id, phone_key) WHERE phone_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_by_email ON calls (tenant_id, email_key) WHERE email_key IS NOT NULL;
";

/// Columns added to tables after their first release: a file made by an older version gets them on open.
const ADDED_COLUMNS: &[(&str, &str, &str)] =
    &[("dead_letters", "replayed_at", "TEXT"), ("calls", "phone_key", "TEXT"), ("calls", "email_key", "TEXT")];

fn add_new_columns(conn: &mut Connection) -> rusqlite::Result<()> {
    // Immediate: two processes opening one old file do not both add a column.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut contact_keys_added = false;
    for (table, column, kind) in ADDED_COLUMNS {
        let exists = tx
            .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?
            .exists(params![column])?;
        if !exists {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
            contact_keys_added |= *table == "calls";
        }
    }
    if contact_keys_added {
        backfill_contact_keys(&tx)?;
    }
    tx.execute_batch(LATE_INDEXES)?;
    tx.commit()
}

/// Fill the contact keys of calls stored before they existed: from the lead, else (the email) from the analysis.
/// Runs once, in the transaction that adds the columns.
fn backfill_contact_keys(c: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<(String, String, String, Option<String>)> = {
        let mut stmt = c.prepare(
            "SELECT c.tenant_id, c.call_id, c.lead_json, a.analysis_json FROM calls c
             LEFT JOIN analyses a ON a.tenant_id = c.tenant_id AND a.call_id = c.call_id
             WHERE c.phone_key IS NULL AND c.email_key IS NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut update =
        c.prepare("UPDATE calls SET phone_key = ?1, email_key = ?2 WHERE tenant_id = ?3 AND call_id = ?4")?;
    for (tenant, call, lead, analysis) in rows {
        // A row we cannot read keeps no keys (reading the call reports it); the backfill goes on.
        let Ok(lead) = serde_json::from_str::<LeadDetails>(&lead) else { continue };
        let (phone, mut email) = lead.contact_keys();
        if email.is_none() {
            email = analysis.and_then(|a| serde_json::from_str::<Analysis>(&a).ok()).and_then(|a| heard_email(&a));
        }
        if phone.is_some() || email.is_some() {
            update.execute(params![phone, email, tenant, call])?;
        }
    }
    Ok(())
}

/// The contact keys of a phone and an email as given (an erasure request's), normalised like a lead's.
fn contact_keys(phone: Option<&str>, email: Option<&str>) -> (Option<String>, Option<String>) {
    let lead = LeadDetails {
        customer_phone: phone.map(str::to_owned),
        customer_email: email.map(str::to_owned),
        ..LeadDetails::default()
    };
    let (key, email) = lead.contact_keys();
    // A phone that is no number we know stays as given (trimmed): it can still match nothing, but not everything.
    (key.or_else(|| phone.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty())), email)
}

/// The email the caller spoke, as a contact key (what an analysis's caller details hold).
fn heard_email(analysis: &Analysis) -> Option<String> {
    contact_keys(None, analysis.findings.caller.email.as_deref()).1
}

#[derive(Clone)]
pub struct SqliteStateStore {
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<Path>,
    durability: Durability,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn bad_data(msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, msg.into())
}

/// The columns `call_from_row` reads, in its order.
const CALL_SELECT: &str = "SELECT source, state, state_reason, lead_json, recording_object, created_at, updated_at,
                                  tenant_id, call_id FROM calls";

fn call_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CallRecord> {
    let source: String = r.get(0)?;
    let state: String = r.get(1)?;
    let lead: String = r.get(3)?;
    Ok(CallRecord {
        tenant_id: TenantId::parse(&r.get::<_, String>(7)?).map_err(|e| bad_data(e.to_string()))?,
        call_id: CallId::parse(&r.get::<_, String>(8)?).map_err(|e| bad_data(e.to_string()))?,
        source: if source == "form" { CallSource::Form } else { CallSource::Callrail },
        state: CallState::parse(&state).ok_or_else(|| bad_data(format!("unknown state {state}")))?,
        state_reason: r.get(2)?,
        lead: serde_json::from_str(&lead).map_err(|e| bad_data(e.to_string()))?,
        recording_object: r.get(4)?,
        created_at: parse_time(&r.get::<_, String>(5)?)?,
        updated_at: parse_time(&r.get::<_, String>(6)?)?,
    })
}

fn read_call(conn: &Connection, tenant: &str, call: &str) -> rusqlite::Result<Option<CallRecord>> {
    conn.prepare_cached(&format!("{CALL_SELECT} WHERE tenant_id = ?1 AND call_id = ?2"))?
        .query_row(params![tenant, call], call_from_row)
        .optional()
}

/// Write the call row with the lead's contact keys. A key the lead does not give keeps its stored value (an email
/// the analysis heard; a phone that no longer parses): only an erasure clears keys.
fn write_call(conn: &Connection, c: &CallRecord) -> rusqlite::Result<()> {
    let lead = serde_json::to_string(&c.lead).map_err(|e| bad_data(e.to_string()))?;
    let (phone_key, email_key) = c.lead.contact_keys();
    conn.prepare_cached(
        "INSERT INTO calls (tenant_id, call_id, source, state, state_reason, lead_json, recording_object,
                            created_at, updated_at, phone_key, email_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (tenant_id, call_id) DO UPDATE SET
            state = excluded.state, state_reason = excluded.state_reason, lead_json = excluded.lead_json,
            recording_object = excluded.recording_object, updated_at = excluded.updated_at,
            phone_key = COALESCE(excluded.phone_key, calls.phone_key),
            email_key = COALESCE(excluded.email_key, calls.email_key)",
    )?
    .execute(params![
        c.tenant_id.as_str(),
        c.call_id.as_str(),
        c.source.as_str(),
        c.state.as_str(),
        c.state_reason,
        lead,
        c.recording_object,
        rfc3339(c.created_at),
        rfc3339(c.updated_at),
        phone_key,
        email_key,
    ])?;
    Ok(())
}

/// What finishing a unit of work does besides removing its claim: the call's transition, the follow-up work and
/// the dead letter, if any (`what` names the work for that record: kind, payload, attempts).
fn apply_completion(
    c: &Connection,
    tenant: &str,
    call: &str,
    completion: &Completion,
    what: (&str, String, u32),
    now: DateTime<Utc>,
) -> rusqlite::Result<()> {
    if let Some(t) = &completion.transition
        && let Some(mut record) = read_call(c, tenant, call)?
        && t.apply(&mut record, now)
    {
        write_call(c, &record)?;
    }
    for work in &completion.follow_up {
        enqueue(c, tenant, call, work, now)?;
    }
    if let Some(analysis) = &completion.analysis {
        let json = serde_json::to_string(analysis).map_err(|e| bad_data(e.to_string()))?;
        c.prepare_cached(
            "INSERT INTO analyses (tenant_id, call_id, analyzer, analysis_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id, call_id) DO UPDATE SET analyzer = excluded.analyzer,
                 analysis_json = excluded.analysis_json, created_at = excluded.created_at",
        )?
        .execute(params![tenant, call, analysis.analyzer, json, rfc3339(now)])?;
        if let Some(email) = heard_email(analysis) {
            // A spoken email makes the call findable by it, unless the lead already gave one.
            c.prepare_cached(
                "UPDATE calls SET email_key = ?1 WHERE tenant_id = ?2 AND call_id = ?3 AND email_key IS NULL",
            )?
            .execute(params![email, tenant, call])?;
        }
    }
    if let Some(d) = &completion.delivery {
        c.prepare_cached(
            "INSERT INTO deliveries (tenant_id, call_id, provider, record_id, created, attempts, review, delivered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (tenant_id, call_id) DO UPDATE SET provider = excluded.provider,
                 record_id = excluded.record_id, created = excluded.created, attempts = excluded.attempts,
                 review = excluded.review, delivered_at = excluded.delivered_at",
        )?
        .execute(params![
            tenant,
            call,
            d.provider,
            d.record_id,
            d.created,
            d.attempts,
            d.review,
            rfc3339(d.delivered_at)
        ])?;
    }
    if let Some(reason) = &completion.dead_letter {
        let (kind, payload, attempts) = what;
        c.prepare_cached(
            "INSERT INTO dead_letters (tenant_id, call_id, kind, payload, attempts, reason, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![tenant, call, kind, payload, attempts, reason, rfc3339(now)])?;
    }
    Ok(())
}

/// Append `record` to the erasure log (by field name, never the values).
fn log_erasure(c: &Connection, record: &ErasureRecord) -> rusqlite::Result<bool> {
    let erased = Value::from(record.erased.clone()).to_string();
    c.prepare_cached(
        "INSERT INTO erasures (tenant_id, call_id, request_id, erased_json, erased_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tenant_id, call_id, request_id) DO UPDATE SET erased_json = excluded.erased_json,
             erased_at = excluded.erased_at",
    )?
    .execute(params![
        record.tenant_id.as_str(),
        record.call_id.as_str(),
        record.request_id,
        erased,
        rfc3339(record.at)
    ])?;
    Ok(true)
}

fn read_breaker(c: &Connection, tenant: &str, key: &str) -> rusqlite::Result<Breaker> {
    let at = |v: Option<i64>| v.and_then(DateTime::from_timestamp_micros);
    let row = c
        .prepare_cached(
            "SELECT consecutive_failures, open_until, probe_until FROM breakers WHERE tenant_id = ?1 AND breaker_key = ?2",
        )?
        .query_row(params![tenant, key], |r| {
            Ok(Breaker {
                consecutive_failures: r.get(0)?,
                open_until: at(r.get(1)?),
                probe_until: at(r.get(2)?),
            })
        })
        .optional()?;
    Ok(row.unwrap_or_default())
}

fn write_breaker(c: &Connection, tenant: &str, key: &str, b: &Breaker) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO breakers (tenant_id, breaker_key, consecutive_failures, open_until, probe_until)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (tenant_id, breaker_key) DO UPDATE SET consecutive_failures = excluded.consecutive_failures,
             open_until = excluded.open_until, probe_until = excluded.probe_until",
    )?
    .execute(params![tenant, key, b.consecutive_failures, b.open_until.map(micros), b.probe_until.map(micros)])?;
    Ok(())
}

fn enqueue(conn: &Connection, tenant: &str, call: &str, work: &NewWork, now: DateTime<Utc>) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO outbox (tenant_id, call_id, kind, payload, not_before, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![tenant, call, work.kind.as_str(), work.payload.to_string(), micros(now)])?;
    Ok(())
}

fn kinds_json(kinds: &[WorkKind]) -> String {
    Value::from(kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>()).to_string()
}

impl SqliteStateStore {
    pub fn open(path: &Path, durability: Durability) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = writer::open(path, durability)?;
        conn.execute_batch(SCHEMA)?;
        add_new_columns(&mut conn)?;
        Ok(Self {
            writer: Writer::start(conn, "state"),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.into(),
            durability,
        })
    }

    async fn read<R, F>(&self, f: F) -> PortResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (pool, path, durability) = (self.readers.clone(), self.path.clone(), self.durability);
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().expect("reader pool lock").pop();
            let conn = match pooled {
                Some(c) => c,
                None => writer::open(&path, durability)?,
            };
            let result = f(&conn);
            let mut pool = pool.lock().expect("reader pool lock");
            if pool.len() < 4 {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| PortError::retryable(format!("sqlite reader: {e}")))?
        .map_err(|e| PortError::retryable(format!("sqlite: {e}")))
    }

    /// A state file belongs to one host process. After a crash its leases are stale: hand them back at start-up
    /// so the interrupted work runs now rather than when the leases run out — the outbox's, and the stages' claims
    /// on calls (a stage killed mid-work would otherwise keep its call's claim for the trigger's timeout and a
    /// minute, answering every redelivery `busy` until the router gave the event up).
    pub async fn release_all_leases(&self) -> PortResult<usize> {
        self.writer
            .write(|c| {
                let work = c.execute("UPDATE outbox SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL", [])?;
                let claims = c.execute(
                    "UPDATE stage_runs SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL AND done_at IS NULL",
                    [],
                )?;
                Ok(work + claims)
            })
            .await
    }

    /// Work items still queued (any kind), for tests and the ops view.
    pub async fn pending_work(&self) -> PortResult<Vec<(String, String, String, u32)>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT tenant_id, call_id, kind, attempts FROM outbox ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect()
        })
        .await
    }
}

const DEAD_LETTER_SELECT: &str =
    "SELECT tenant_id, call_id, kind, payload, attempts, reason, created_at, id, replayed_at FROM dead_letters";

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    let payload: String = r.get(3)?;
    Ok(DeadLetter {
        id: r.get::<_, i64>(7)?.to_string(),
        replayed_at: r.get::<_, Option<String>>(8)?.as_deref().map(parse_time).transpose()?,
        tenant_id: r.get(0)?,
        call_id: r.get(1)?,
        kind: r.get(2)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
        attempts: r.get(4)?,
        reason: r.get(5)?,
        created_at: parse_time(&r.get::<_, String>(6)?)?,
    })
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn scan_calls(&self, tenant: &TenantId, scan: &CallScan) -> PortResult<Vec<CallRecord>> {
        let (tenant, scan) = (tenant.clone(), scan.clone());
        let states = Value::from(scan.states.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string();
        self.read(move |c| {
            // Times are stored as fixed-width RFC 3339 (µs, `Z`), so text order is time order.
            let mut stmt = c.prepare_cached(&format!(
                "{CALL_SELECT} WHERE tenant_id = ?1
                   AND (?2 = '[]' OR state IN (SELECT value FROM json_each(?2)))
                   AND (?3 IS NULL OR created_at < ?3) AND (?4 IS NULL OR updated_at < ?4)
                   AND (?5 IS NULL OR call_id > ?5) AND (?7 IS NULL OR created_at >= ?7)
                 ORDER BY call_id LIMIT ?6"
            ))?;
            let rows = stmt.query_map(
                params![
                    tenant.as_str(),
                    states,
                    scan.created_before.map(rfc3339),
                    scan.updated_before.map(rfc3339),
                    scan.after.as_ref().map(CallId::as_str),
                    i64::try_from(scan.limit).unwrap_or(i64::MAX),
                    scan.created_from.map(rfc3339),
                ],
                call_from_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn calls_by_contact(
        &self,
        tenant: &TenantId,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> PortResult<Vec<CallRecord>> {
        let (phone, email) = contact_keys(phone, email);
        if phone.is_none() && email.is_none() {
            return Ok(Vec::new());
        }
        let tenant = tenant.clone();
        self.read(move |c| {
            // Two index lookups (phone, email), one list: a call found by both appears once.
            let mut stmt = c.prepare_cached(&format!(
                "{CALL_SELECT} WHERE tenant_id = ?1 AND call_id IN (
                     SELECT call_id FROM calls WHERE tenant_id = ?1 AND phone_key = ?2
                     UNION SELECT call_id FROM calls WHERE tenant_id = ?1 AND email_key = ?3)
                 ORDER BY call_id"
            ))?;
            let rows = stmt.query_map(params![tenant.as_str(), phone, email], call_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn erase_call(&self, erasure: CallErasure, mut record: ErasureRecord) -> PortResult<bool> {
        self.writer
            .write(move |c| {
                let (tenant, call) = (record.tenant_id.to_string(), record.call_id.to_string());
                let (tenant, call) = (tenant.as_str(), call.as_str());
                let Some(mut stored) = read_call(c, tenant, call)? else { return Ok(false) };
                if erasure.recording {
                    stored.recording_object = None;
                }
                let Some(lead) = erasure.lead else {
                    if erasure.recording {
                        stored.updated_at = record.at;
                        write_call(c, &stored)?;
                    }
                    return log_erasure(c, &record);
                };
                let analysis: Option<Analysis> = c
                    .prepare_cached("SELECT analysis_json FROM analyses WHERE tenant_id = ?1 AND call_id = ?2")?
                    .query_row(params![tenant, call], |r| r.get::<_, String>(0))
                    .optional()?
                    .map(|json| serde_json::from_str(&json).map_err(|e| bad_data(e.to_string())))
                    .transpose()?;
                // Gathered before anything is blanked: what the caller's free text elsewhere would hold.
                let heard = analysis.as_ref().map(|a| a.findings.caller.clone()).unwrap_or_default();
                let traces = CallerTraces::of(&stored.lead, &heard);
                stored.lead = lead;
                if let Some(reason) = &stored.state_reason
                    && let Cow::Owned(forgotten) = traces.forget(reason)
                {
                    stored.state_reason = Some(forgotten);
                    record.note("call.state_reason");
                }
                stored.updated_at = record.at;
                write_call(c, &stored)?;
                c.prepare_cached(
                    "UPDATE calls SET phone_key = NULL, email_key = NULL WHERE tenant_id = ?1 AND call_id = ?2",
                )?
                .execute(params![tenant, call])?;
                if let Some(mut analysis) = analysis {
                    for field in forget_in_analysis(&mut analysis, &traces) {
                        record.note(field);
                    }
                    let json = serde_json::to_string(&analysis).map_err(|e| bad_data(e.to_string()))?;
                    c.prepare_cached("UPDATE analyses SET analysis_json = ?1 WHERE tenant_id = ?2 AND call_id = ?3")?
                        .execute(params![json, tenant, call])?;
                }
                // Pending notifications carry the caller's name and phone: they go with the lead. The call's other
                // queued work, its dead letters and its stages' last errors keep their ids and lose the caller.
                c.prepare_cached("DELETE FROM outbox WHERE tenant_id = ?1 AND call_id = ?2 AND kind = ?3")?
                    .execute(params![tenant, call, WorkKind::Notify.as_str()])?;
                // Queued work quotes a caller only in a failure's last error: payloads hold ids (and analytics rows,
                // free of personal data by construction, must stay valid rows). So only failed work of the kinds
                // that can quote is read, through a partial index, not the whole queue for each erased call.
                let queued = format!(
                    "last_error IS NOT NULL AND kind IN ({})",
                    OUTBOX_KINDS_WITH_TEXT.map(|k| format!("'{}'", k.as_str())).join(", ")
                );
                for (table, key, json, text, only) in [
                    ("outbox", "id", "payload", "last_error", queued.as_str()),
                    ("dead_letters", "id", "payload", "reason", "1"),
                    ("stage_runs", "stage_key", "NULL", "last_error", "last_error IS NOT NULL"),
                ] {
                    type Texts = (rusqlite::types::Value, Option<String>, Option<String>);
                    let rows: Vec<Texts> = c
                        .prepare_cached(&format!(
                            "SELECT {key}, {json}, {text} FROM {table} WHERE {only} AND tenant_id = ?1 AND call_id = ?2"
                        ))?
                        .query_map(params![tenant, call], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    for (id, payload, why) in rows {
                        let payload = payload.as_deref().map(|p| traces.forget_json_text(p));
                        let why = why.as_deref().map(|w| traces.forget(w));
                        if !matches!(payload, Some(Cow::Owned(_))) && !matches!(why, Some(Cow::Owned(_))) {
                            continue;
                        }
                        record.note(table);
                        let set_json = if json == "NULL" { String::new() } else { format!("{json} = ?3, ") };
                        c.prepare_cached(&format!(
                            "UPDATE {table} SET {set_json}{text} = ?4 WHERE tenant_id = ?1 AND call_id = ?2 AND {key} = ?5"
                        ))?
                        .execute(params![tenant, call, payload.as_deref(), why.as_deref(), id])?;
                    }
                }
                log_erasure(c, &record)
            })
            .await
    }

    async fn request_erasure(&self, request: &ErasureRequest) -> PortResult<bool> {
        let request = request.clone();
        self.writer
            .write(move |c| {
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO erasure_requests
                             (tenant_id, request_id, phone, email, requested_at, completed_at, calls_erased)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (tenant_id, request_id) DO NOTHING",
                    )?
                    .execute(params![
                        request.tenant_id.as_str(),
                        request.id,
                        request.phone,
                        request.email,
                        rfc3339(request.requested_at),
                        request.completed_at.map(rfc3339),
                        request.calls_erased,
                    ])?;
                Ok(inserted == 1)
            })
            .await
    }

    async fn erasure_requests(
        &self,
        tenant: &TenantId,
        pending_only: bool,
        limit: usize,
    ) -> PortResult<Vec<ErasureRequest>> {
        let tenant = tenant.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT request_id, phone, email, requested_at, completed_at, calls_erased FROM erasure_requests
                 WHERE tenant_id = ?1 AND (?2 = 0 OR completed_at IS NULL)
                 ORDER BY requested_at, request_id LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![tenant.as_str(), pending_only, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(ErasureRequest {
                        tenant_id: tenant.clone(),
                        id: r.get(0)?,
                        phone: r.get(1)?,
                        email: r.get(2)?,
                        requested_at: parse_time(&r.get::<_, String>(3)?)?,
                        completed_at: r.get::<_, Option<String>>(4)?.as_deref().map(parse_time).transpose()?,
                        calls_erased: r.get(5)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    async fn complete_erasure_request(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
        calls: u32,
    ) -> PortResult<bool> {
        let (tenant, id) = (tenant.clone(), id.to_owned());
        self.writer
            .write(move |c| {
                let done = c
                    .prepare_cached(
                        "UPDATE erasure_requests SET completed_at = ?1, calls_erased = ?2, phone = NULL, email = NULL
                         WHERE tenant_id = ?3 AND request_id = ?4 AND completed_at IS NULL",
                    )?
                    .execute(params![rfc3339(at), calls, tenant.as_str(), id])?;
                Ok(done == 1)
            })
            .await
    }

    async fn erasures(&self, tenant: &TenantId, limit: usize) -> PortResult<Vec<ErasureRecord>> {
        let tenant = tenant.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT call_id, request_id, erased_json, erased_at FROM erasures WHERE tenant_id = ?1
                 ORDER BY erased_at DESC, call_id DESC, request_id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![tenant.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                let erased: String = r.get(2)?;
                Ok(ErasureRecord {
                    tenant_id: tenant.clone(),
                    call_id: CallId::parse(&r.get::<_, String>(0)?).map_err(|e| bad_data(e.to_string()))?,
                    request_id: r.get(1)?,
                    erased: serde_json::from_str(&erased).map_err(|e| bad_data(e.to_string()))?,
                    at: parse_time(&r.get::<_, String>(3)?)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn job_cursor(&self, tenant: &TenantId, job: &str) -> PortResult<Option<String>> {
        let (tenant, job) = (tenant.clone(), job.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT cursor FROM job_cursors WHERE tenant_id = ?1 AND job = ?2")?
                .query_row(params![tenant.as_str(), job], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn set_job_cursor(&self, tenant: &TenantId, job: &str, cursor: Option<&str>) -> PortResult<()> {
        let (tenant, job, cursor) = (tenant.clone(), job.to_owned(), cursor.map(str::to_owned));
        self.writer
            .write(move |c| {
                match cursor {
                    Some(cursor) => c
                        .prepare_cached(
                            "INSERT INTO job_cursors (tenant_id, job, cursor, updated_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (tenant_id, job) DO UPDATE SET cursor = excluded.cursor,
                                 updated_at = excluded.updated_at",
                        )?
                        .execute(params![tenant.as_str(), job, cursor, rfc3339(Utc::now())])?,
                    None => c
                        .prepare_cached("DELETE FROM job_cursors WHERE tenant_id = ?1 AND job = ?2")?
                        .execute(params![tenant.as_str(), job])?,
                };
                Ok(())
            })
            .await
    }

    async fn delivery(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<CrmDelivery>> {
        let (tenant, call) = (tenant.clone(), call.clone());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT provider, record_id, created, attempts, review, delivered_at FROM deliveries
                 WHERE tenant_id = ?1 AND call_id = ?2",
            )?
            .query_row(params![tenant.as_str(), call.as_str()], |r| {
                Ok(CrmDelivery {
                    provider: r.get(0)?,
                    record_id: r.get(1)?,
                    created: r.get(2)?,
                    attempts: r.get(3)?,
                    review: r.get(4)?,
                    delivered_at: parse_time(&r.get::<_, String>(5)?)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn breaker_admit(
        &self,
        tenant: &TenantId,
        key: &str,
        now: DateTime<Utc>,
        policy: &BreakerPolicy,
    ) -> PortResult<Admit> {
        let (tenant, key, policy) = (tenant.clone(), key.to_owned(), *policy);
        // Read, decide and write in one transaction of the writer (BEGIN IMMEDIATE: other processes on the file
        // wait), so one circuit lets one probe through.
        self.writer
            .write(move |c| {
                let mut breaker = read_breaker(c, tenant.as_str(), &key)?;
                let before = breaker;
                let admit = breaker.admit(now, &policy);
                if breaker != before {
                    write_breaker(c, tenant.as_str(), &key, &breaker)?;
                }
                Ok(admit)
            })
            .await
    }

    async fn breaker_record(
        &self,
        tenant: &TenantId,
        key: &str,
        success: bool,
        now: DateTime<Utc>,
        policy: &BreakerPolicy,
    ) -> PortResult<Option<&'static str>> {
        let (tenant, key, policy) = (tenant.clone(), key.to_owned(), *policy);
        self.writer
            .write(move |c| {
                let mut breaker = read_breaker(c, tenant.as_str(), &key)?;
                let before = breaker;
                let transition = breaker.record(success, now, &policy);
                if breaker != before {
                    write_breaker(c, tenant.as_str(), &key, &breaker)?;
                }
                Ok(transition)
            })
            .await
    }

    async fn breaker(&self, tenant: &TenantId, key: &str) -> PortResult<Breaker> {
        let (tenant, key) = (tenant.clone(), key.to_owned());
        self.read(move |c| read_breaker(c, tenant.as_str(), &key)).await
    }

    async fn replay_dead_letter(
        &self,
        id: &str,
        revive_to: Option<CallState>,
        follow_up: Vec<NewWork>,
    ) -> PortResult<bool> {
        // The id is the row's integer id as text; anything else names no dead letter.
        let Ok(id) = id.parse::<i64>() else { return Ok(false) };
        self.writer
            .write(move |c| {
                let row = c
                    .prepare_cached("SELECT tenant_id, call_id, replayed_at FROM dead_letters WHERE id = ?1")?
                    .query_row(params![id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
                    })
                    .optional()?;
                let Some((tenant, call, None)) = row else { return Ok(Ok(false)) };
                if !follow_up.is_empty() && (TenantId::parse(&tenant).is_err() || CallId::parse(&call).is_err()) {
                    // Work for a call that cannot exist would fail every claim that picked it up.
                    return Ok(Err(PortError::permanent(format!(
                        "dead letter {id}: its tenant and call ids ({tenant:?}, {call:?}) are not valid for follow-up work"
                    ))));
                }
                let now = Utc::now();
                c.prepare_cached("UPDATE dead_letters SET replayed_at = ?1 WHERE id = ?2")?
                    .execute(params![rfc3339(now), id])?;
                if let Some(to) = revive_to
                    && let Some(mut record) = read_call(c, &tenant, &call)?
                    && record.state == CallState::DeadLettered
                {
                    // The operator's replay: deliberately not a forward-only `Transition`.
                    record.state = to;
                    record.state_reason = None;
                    record.updated_at = now;
                    write_call(c, &record)?;
                }
                for work in &follow_up {
                    enqueue(c, &tenant, &call, work, now)?;
                }
                Ok(Ok(true))
            })
            .await?
    }

    async fn record_intake(&self, event: IntakeEvent) -> PortResult<IntakeResult> {
        self.writer
            .write(move |conn| {
                let (tenant, call) = (event.tenant_id.as_str(), event.call_id.as_str());
                let fresh = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO intake_ledger (tenant_id, call_id, dedupe_key, payload_sha256, received_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![tenant, call, event.dedupe_key, event.payload_sha256, rfc3339(event.received_at)])?
                    == 1;
                let existing = read_call(conn, tenant, call)?;
                if !fresh {
                    let call = existing.ok_or_else(|| bad_data("ledger entry without its call".into()))?;
                    return Ok(IntakeResult { outcome: IntakeOutcome::Duplicate, call });
                }
                let plan = intake::plan(existing, &event);
                write_call(conn, &plan.record)?;
                for work in &plan.work {
                    enqueue(conn, tenant, call, work, event.received_at)?;
                }
                Ok(IntakeResult { outcome: plan.outcome, call: plan.record })
            })
            .await
    }

    async fn call(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<CallRecord>> {
        let (tenant, call) = (tenant.to_string(), call.to_string());
        self.read(move |c| read_call(c, &tenant, &call)).await
    }

    async fn claim_work(&self, kinds: &[WorkKind], limit: usize, lease: Duration) -> PortResult<Vec<WorkItem>> {
        let kinds = kinds_json(kinds);
        let token = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        let until = micros(now) + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        self.writer
            .write(move |c| {
                let mut stmt = c.prepare_cached(
                    "UPDATE outbox SET lease = ?1, lease_until = ?2, attempts = attempts + 1
                     WHERE id IN (SELECT id FROM outbox
                                  WHERE kind IN (SELECT value FROM json_each(?3)) AND not_before <= ?4
                                    AND (lease_until IS NULL OR lease_until <= ?4)
                                  ORDER BY not_before, id LIMIT ?5)
                     RETURNING id, tenant_id, call_id, kind, payload, attempts",
                )?;
                let rows = stmt.query_map(params![token, until, kinds, micros(now), limit as i64], |r| {
                    let kind: String = r.get(3)?;
                    let payload: String = r.get(4)?;
                    Ok(WorkItem {
                        id: r.get(0)?,
                        tenant_id: TenantId::parse(&r.get::<_, String>(1)?).map_err(|e| bad_data(e.to_string()))?,
                        call_id: CallId::parse(&r.get::<_, String>(2)?).map_err(|e| bad_data(e.to_string()))?,
                        kind: WorkKind::parse(&kind).ok_or_else(|| bad_data(format!("unknown work kind {kind}")))?,
                        payload: serde_json::from_str(&payload).map_err(|e| bad_data(e.to_string()))?,
                        attempts: r.get(5)?,
                        lease: token.clone(),
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn complete_work(&self, item: &WorkItem, completion: Completion) -> PortResult<bool> {
        let item = item.clone();
        self.writer
            .write(move |c| {
                let deleted = c
                    .prepare_cached("DELETE FROM outbox WHERE id = ?1 AND lease = ?2")?
                    .execute(params![item.id, item.lease])?;
                if deleted == 0 {
                    return Ok(false);
                }
                let (tenant, call) = (item.tenant_id.as_str(), item.call_id.as_str());
                let what = (item.kind.as_str(), item.payload.to_string(), item.attempts);
                apply_completion(c, tenant, call, &completion, what, Utc::now())?;
                Ok(true)
            })
            .await
    }

    async fn claim_stage(&self, tenant: &TenantId, call: &CallId, key: &str, lease: Duration) -> PortResult<Claim> {
        let (tenant, call, key) = (tenant.clone(), call.clone(), key.to_owned());
        self.writer
            .write(move |c| {
                let now = Utc::now();
                let row = c
                    .prepare_cached(
                        "SELECT lease, lease_until, attempts, done_at FROM stage_runs
                         WHERE tenant_id = ?1 AND call_id = ?2 AND stage_key = ?3",
                    )?
                    .query_row(params![tenant.as_str(), call.as_str(), key], |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, u32>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    })
                    .optional()?;
                let attempts = match row {
                    Some((_, _, _, Some(_))) => return Ok(Claim::Done),
                    Some((Some(_), Some(until), _, None)) if until > now.timestamp_micros() => {
                        return Ok(Claim::Busy { until: DateTime::from_timestamp_micros(until).unwrap_or(now) });
                    }
                    Some((_, _, attempts, None)) => attempts + 1,
                    None => 1,
                };
                let token = uuid::Uuid::new_v4().simple().to_string();
                let until = now.timestamp_micros() + lease.as_micros() as i64;
                c.prepare_cached(
                    "INSERT INTO stage_runs (tenant_id, call_id, stage_key, lease, lease_until, attempts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tenant_id, call_id, stage_key)
                     DO UPDATE SET lease = excluded.lease, lease_until = excluded.lease_until,
                                   attempts = excluded.attempts",
                )?
                .execute(params![tenant.as_str(), call.as_str(), key, token, until, attempts])?;
                Ok(Claim::Claimed(StageClaim { tenant_id: tenant, call_id: call, key, lease: token, attempts }))
            })
            .await
    }

    async fn finish_stage(&self, claim: &StageClaim, completion: Completion) -> PortResult<bool> {
        let claim = claim.clone();
        self.writer
            .write(move |c| {
                let now = Utc::now();
                let (tenant, call) = (claim.tenant_id.as_str(), claim.call_id.as_str());
                let marked = c
                    .prepare_cached(
                        "UPDATE stage_runs SET lease = NULL, lease_until = NULL, done_at = ?1
                         WHERE tenant_id = ?2 AND call_id = ?3 AND stage_key = ?4 AND lease = ?5 AND done_at IS NULL",
                    )?
                    .execute(params![rfc3339(now), tenant, call, claim.key, claim.lease])?;
                if marked == 0 {
                    return Ok(false);
                }
                let stage = claim.key.split(':').next().unwrap_or(&claim.key);
                let what = (stage, serde_json::json!({"key": claim.key}).to_string(), claim.attempts);
                apply_completion(c, tenant, call, &completion, what, now)?;
                Ok(true)
            })
            .await
    }

    async fn release_stage(&self, claim: &StageClaim, error: &str) -> PortResult<()> {
        let (claim, error) = (claim.clone(), error.to_owned());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE stage_runs SET lease = NULL, lease_until = NULL, last_error = ?1
                     WHERE tenant_id = ?2 AND call_id = ?3 AND stage_key = ?4 AND lease = ?5",
                )?
                .execute(params![
                    error,
                    claim.tenant_id.as_str(),
                    claim.call_id.as_str(),
                    claim.key,
                    claim.lease
                ])?;
                Ok(())
            })
            .await
    }

    async fn analysis(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<Analysis>> {
        let (tenant, call) = (tenant.clone(), call.clone());
        self.read(move |c| {
            let json: Option<String> = c
                .prepare_cached("SELECT analysis_json FROM analyses WHERE tenant_id = ?1 AND call_id = ?2")?
                .query_row(params![tenant.as_str(), call.as_str()], |r| r.get(0))
                .optional()?;
            json.map(|j| serde_json::from_str(&j).map_err(|e| bad_data(e.to_string()))).transpose()
        })
        .await
    }

    async fn dead_letter_event(&self, event: RefusedEvent) -> PortResult<bool> {
        let payload = serde_json::json!({"event_key": event.event_key, "event": event.event}).to_string();
        self.writer
            .write(move |c| {
                let kind = event.kind();
                let seen = c
                    .prepare_cached(
                        "SELECT 1 FROM dead_letters WHERE tenant_id = ?1 AND call_id = ?2 AND kind = ?3 AND payload = ?4",
                    )?
                    .exists(params![event.tenant_id, event.call_id, kind, payload])?;
                if seen {
                    return Ok(false);
                }
                c.prepare_cached(
                    "INSERT INTO dead_letters (tenant_id, call_id, kind, payload, attempts, reason, created_at)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)",
                )?
                .execute(params![event.tenant_id, event.call_id, kind, payload, event.reason, rfc3339(Utc::now())])?;
                Ok(true)
            })
            .await
    }

    async fn dead_letters(&self, tenant: Option<&str>, limit: usize) -> PortResult<Vec<DeadLetter>> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |c| {
            let sql = format!("{DEAD_LETTER_SELECT} WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY id LIMIT ?2");
            c.prepare_cached(&sql)?.query_map(params![tenant, limit as i64], dead_letter_row)?.collect()
        })
        .await
    }

    async fn dead_letter(&self, id: &str) -> PortResult<Option<DeadLetter>> {
        // Ids this store gives are integers; anything else names none of its letters.
        let Ok(id) = id.parse::<i64>() else { return Ok(None) };
        self.read(move |c| {
            let sql = format!("{DEAD_LETTER_SELECT} WHERE id = ?1");
            c.prepare_cached(&sql)?.query_row(params![id], dead_letter_row).optional()
        })
        .await
    }

    async fn call_dead_letters(&self, tenant: &TenantId, call: &CallId) -> PortResult<Vec<DeadLetter>> {
        let (tenant, call) = (tenant.to_string(), call.to_string());
        self.read(move |c| {
            let sql = format!("{DEAD_LETTER_SELECT} WHERE tenant_id = ?1 AND call_id = ?2 ORDER BY id");
            c.prepare_cached(&sql)?.query_map(params![tenant, call], dead_letter_row)?.collect()
        })
        .await
    }

    async fn complete_batch(&self, items: &[WorkItem]) -> PortResult<usize> {
        let pairs: Vec<(i64, String)> = items.iter().map(|i| (i.id, i.lease.clone())).collect();
        self.writer
            .write(move |c| {
                let mut stmt = c.prepare_cached("DELETE FROM outbox WHERE id = ?1 AND lease = ?2")?;
                let mut done = 0;
                for (id, lease) in &pairs {
                    done += stmt.execute(params![id, lease])?;
                }
                Ok(done)
            })
            .await
    }

    async fn retry_work(&self, item: &WorkItem, not_before: DateTime<Utc>, error: &str) -> PortResult<()> {
        let (id, lease, error) = (item.id, item.lease.clone(), error.to_owned());
        self.writer
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE outbox SET lease = NULL, lease_until = NULL, not_before = ?1, last_error = ?2
                     WHERE id = ?3 AND lease = ?4",
                )?
                .execute(params![micros(not_before), error, id, lease])
                .map(drop)
            })
            .await
    }

    async fn next_due(&self, kinds: &[WorkKind]) -> PortResult<Option<DateTime<Utc>>> {
        let kinds = kinds_json(kinds);
        let at: Option<i64> = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT MIN(CASE WHEN lease_until > not_before THEN lease_until ELSE not_before END)
                     FROM outbox WHERE kind IN (SELECT value FROM json_each(?1))",
                )?
                .query_row(params![kinds], |r| r.get(0))
            })
            .await?;
        Ok(at.and_then(DateTime::from_timestamp_micros))
    }
}
