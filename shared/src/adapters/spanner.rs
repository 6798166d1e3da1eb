//! The state store on Cloud Spanner (and its emulator), with the schema in `shared/schemas/spanner/`.
//!
//! Client: yoshidan's `gcloud-spanner` 1.9. The official `google-cloud-spanner` is still a preview and uses
//! multiplexed sessions only, which the Spanner emulator installed here (1.5.28) predates; `gcloud-spanner` keeps
//! a session pool, passed a smoke test against that emulator (read-write transaction, mutations, ALREADY_EXISTS
//! on a duplicate insert), and reads `SPANNER_EMULATOR_HOST` like Google's clients.
//!
//! Every change is a read-write transaction that reads what it decides on, so Spanner's locking makes concurrent
//! deliveries of one event produce one winner (the losers are aborted, retried, and then see the ledger).

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gcloud_gax::conn::Environment;
use gcloud_gax::grpc::{Code, Status};
use gcloud_spanner::client::{Client, ClientConfig, Error as SpannerError};
use gcloud_spanner::key::Key;
use gcloud_spanner::mutation::{delete, insert, insert_or_update, update};
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::Statement;
use gcloud_spanner::transaction_rw::ReadWriteTransaction;
use time::OffsetDateTime;

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

/// The schema files, in the order they are applied. A new file is a new migration; applied ones never change.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../schemas/spanner/0001_state.sql")),
    (2, include_str!("../../schemas/spanner/0002_stage_runs.sql")),
    (3, include_str!("../../schemas/spanner/0003_analyses.sql")),
    (4, include_str!("../../schemas/spanner/0004_deliveries_breakers_replays.sql")),
    (5, include_str!("../../schemas/spanner/0005_contact_keys_erasures_job_cursors.sql")),
    (6, include_str!("../../schemas/spanner/0006_erasure_requests.sql")),
];

/// The migration that added the calls' contact keys: applying it to a database with calls backfills them.
const CONTACT_KEYS_MIGRATION: i64 = 5;

const CALL_COLUMNS: [&str; 9] = [
    "tenant_id",
    "call_id",
    "source",
    "state",
    "state_reason",
    "lead_json",
    "recording_object",
    "created_at",
    "updated_at",
];

fn environment() -> Environment {
    match std::env::var("SPANNER_EMULATOR_HOST") {
        Ok(host) if !host.is_empty() => Environment::Emulator(host),
        _ => ClientConfig::default().environment,
    }
}

/// Split a schema file into statements (Spanner's DDL API takes them one by one, without `;` or comments).
pub fn statements(ddl: &str) -> Vec<String> {
    let without_comments: String =
        ddl.lines().map(|l| l.split_once("--").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Create the database with the whole schema if it does not exist, else apply the migrations it lacks.
/// `database` is `projects/P/instances/I/databases/D`.
pub async fn migrate(database: &str) -> anyhow::Result<()> {
    migrate_to(database, i64::MAX).await
}

/// `migrate`, up to and including migration `last` (tests use it to make a database as an older release left it).
/// Applying migration 5 to a database that has calls fills their contact keys (DDL cannot).
pub async fn migrate_to(database: &str, last: i64) -> anyhow::Result<()> {
    let migrations: Vec<(i64, &str)> = MIGRATIONS.iter().copied().filter(|(v, _)| *v <= last).collect();
    use gcloud_googleapis::spanner::admin::database::v1::{
        CreateDatabaseRequest, GetDatabaseRequest, UpdateDatabaseDdlRequest,
    };
    use gcloud_spanner::admin::AdminClientConfig;
    use gcloud_spanner::admin::client::Client as AdminClient;

    let (parent, id) = database
        .rsplit_once("/databases/")
        .ok_or_else(|| anyhow::anyhow!("{database:?} is not projects/P/instances/I/databases/D"))?;
    let mut config = AdminClientConfig { environment: environment(), ..AdminClientConfig::default() };
    if !matches!(config.environment, Environment::Emulator(_)) {
        config = config.with_auth().await?;
    }
    let admin = AdminClient::new(config).await?;
    let exists = admin.database().get_database(GetDatabaseRequest { name: database.to_owned() }, None).await;
    match exists {
        Err(status) if status.code() == Code::NotFound => {
            let mut extra: Vec<String> = migrations.iter().flat_map(|(_, ddl)| statements(ddl)).collect();
            extra.retain(|s| !s.is_empty());
            let req = CreateDatabaseRequest {
                parent: parent.to_owned(),
                create_statement: format!("CREATE DATABASE `{id}`"),
                extra_statements: extra,
                ..Default::default()
            };
            admin.database().create_database(req, None).await?.wait(None).await?;
            let client = StoreClient::connect(database).await?;
            let versions: Vec<i64> = migrations.iter().map(|(v, _)| *v).collect();
            client.record_migrations(&versions).await?;
            Ok(())
        }
        Err(status) => Err(anyhow::anyhow!("looking up {database}: {status}")),
        Ok(_) => {
            let client = StoreClient::connect(database).await?;
            let applied = client.applied_migrations().await?;
            for (version, ddl) in migrations.iter().filter(|(v, _)| !applied.contains(v)) {
                let req = UpdateDatabaseDdlRequest {
                    database: database.to_owned(),
                    statements: statements(ddl),
                    ..Default::default()
                };
                admin.database().update_database_ddl(req, None).await?.wait(None).await?;
                client.record_migrations(&[*version]).await?;
                if *version == CONTACT_KEYS_MIGRATION {
                    // Recorded first: the DDL cannot run twice. A backfill cut short leaves the rest of the calls
                    // without keys until their next write.
                    let filled = SpannerStateStore { client: client.0.clone() }.backfill_contact_keys().await?;
                    tracing::info!(filled, "contact keys backfilled");
                }
            }
            Ok(())
        }
    }
}

struct StoreClient(Client);

impl StoreClient {
    async fn connect(database: &str) -> anyhow::Result<Self> {
        let mut config = ClientConfig { environment: environment(), ..ClientConfig::default() };
        // The session pool's default warms 16 sessions per channel; a function instance needs a few.
        config.session_config.min_opened = 4;
        if !matches!(config.environment, Environment::Emulator(_)) {
            config = config.with_auth().await?;
        }
        Ok(Self(Client::new(database, config).await?))
    }

    async fn applied_migrations(&self) -> anyhow::Result<Vec<i64>> {
        let mut tx = self.0.single().await?;
        let mut rows = tx.query(Statement::new("SELECT version FROM schema_migrations")).await?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await? {
            out.push(row.column_by_name::<i64>("version")?);
        }
        Ok(out)
    }

    async fn record_migrations(&self, versions: &[i64]) -> anyhow::Result<()> {
        let now = OffsetDateTime::now_utc();
        let m = versions
            .iter()
            .map(|v| insert_or_update("schema_migrations", &["version", "applied_at"], &[v, &now]))
            .collect();
        self.0.apply(m).await?;
        Ok(())
    }
}

fn ts(t: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_micros()) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn from_ts(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((t.unix_timestamp_nanos() / 1000) as i64).unwrap_or_default()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn bad(msg: impl Into<String>) -> SpannerError {
    SpannerError::GRPC(Status::new(Code::FailedPrecondition, msg.into()))
}

fn port_err(e: SpannerError) -> PortError {
    // Spanner's own retries already ran; whatever is left is worth a redelivery, except data we cannot read.
    match &e {
        SpannerError::GRPC(s) if s.code() == Code::FailedPrecondition => PortError::permanent(format!("spanner: {e}")),
        _ => PortError::retryable(format!("spanner: {e}")),
    }
}

fn call_from_row(row: &Row) -> Result<CallRecord, SpannerError> {
    let tenant: String = row.column_by_name("tenant_id")?;
    let call: String = row.column_by_name("call_id")?;
    let source: String = row.column_by_name("source")?;
    let state: String = row.column_by_name("state")?;
    let lead: String = row.column_by_name("lead_json")?;
    Ok(CallRecord {
        tenant_id: TenantId::parse(&tenant).map_err(|e| bad(e.to_string()))?,
        call_id: CallId::parse(&call).map_err(|e| bad(e.to_string()))?,
        source: if source == "form" { CallSource::Form } else { CallSource::Callrail },
        state: CallState::parse(&state).ok_or_else(|| bad(format!("unknown state {state}")))?,
        state_reason: row.column_by_name("state_reason")?,
        lead: serde_json::from_str(&lead).map_err(|e| bad(e.to_string()))?,
        recording_object: row.column_by_name("recording_object")?,
        created_at: from_ts(row.column_by_name("created_at")?),
        updated_at: from_ts(row.column_by_name("updated_at")?),
    })
}

async fn read_call(
    tx: &mut ReadWriteTransaction,
    tenant: &str,
    call: &str,
) -> Result<Option<CallRecord>, SpannerError> {
    let key = Key::composite(&[&tenant, &call]);
    let row = tx.read_row("calls", &CALL_COLUMNS, key).await?;
    row.as_ref().map(call_from_row).transpose()
}

/// Write the call row with the lead's contact keys. A key the lead does not give keeps its stored value (an email
/// the analysis heard; a phone that no longer parses): only an erasure clears keys (`write_call_clearing_keys`).
fn write_call(c: &CallRecord) -> Result<gcloud_googleapis::spanner::v1::Mutation, SpannerError> {
    call_mutation(c, false)
}

fn write_call_clearing_keys(c: &CallRecord) -> Result<gcloud_googleapis::spanner::v1::Mutation, SpannerError> {
    call_mutation(c, true)
}

fn call_mutation(c: &CallRecord, clear_keys: bool) -> Result<gcloud_googleapis::spanner::v1::Mutation, SpannerError> {
    use gcloud_spanner::statement::ToKind;
    let lead = serde_json::to_string(&c.lead).map_err(|e| bad(e.to_string()))?;
    let (tenant, call, source, state) = (c.tenant_id.as_str(), c.call_id.as_str(), c.source.as_str(), c.state.as_str());
    let (created, updated) = (ts(c.created_at), ts(c.updated_at));
    let mut columns: Vec<&str> = CALL_COLUMNS.to_vec();
    let mut values: Vec<&dyn ToKind> =
        vec![&tenant, &call, &source, &state, &c.state_reason, &lead, &c.recording_object, &created, &updated];
    let (phone_key, email_key) = if clear_keys { (None, None) } else { c.lead.contact_keys() };
    // Omitted columns keep their stored value (and are NULL on a new row).
    if clear_keys || phone_key.is_some() {
        columns.push("phone_key");
        values.push(&phone_key);
    }
    if clear_keys || email_key.is_some() {
        columns.push("email_key");
        values.push(&email_key);
    }
    Ok(insert_or_update("calls", &columns, &values))
}

/// `column = @value` (never NULL) may use a null-filtered index; the emulator cannot tell, and asks for this hint
/// (Cloud Spanner ignores it).
const NULL_FILTERED_OK: &str = "spanner_emulator.disable_query_null_filtered_index_check=true";

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

fn new_id() -> i64 {
    // Random, positive: spread over the key space instead of hot-spotting the end of it.
    (rand::random::<u64>() >> 1) as i64
}

fn enqueue(tenant: &str, call: &str, work: &NewWork, now: DateTime<Utc>) -> gcloud_googleapis::spanner::v1::Mutation {
    insert(
        "outbox",
        &["tenant_id", "id", "call_id", "kind", "payload", "attempts", "not_before", "created_at"],
        &[&tenant, &new_id(), &call, &work.kind.as_str(), &work.payload.to_string(), &0i64, &micros(now), &ts(now)],
    )
}

/// Whether `item` still holds its lease (read inside the transaction, so it is locked until commit).
/// What finishing a unit of work writes besides removing its claim: the call's transition, the follow-up work and
/// the dead letter, if any (`what` names the work for that record: kind, payload, attempts).
async fn completion_mutations(
    tx: &mut ReadWriteTransaction,
    tenant: &str,
    call: &str,
    completion: &Completion,
    what: (&str, String, u32),
    now: DateTime<Utc>,
) -> Result<Vec<gcloud_googleapis::spanner::v1::Mutation>, SpannerError> {
    let mut m = Vec::new();
    if let Some(t) = &completion.transition
        && let Some(mut record) = read_call(tx, tenant, call).await?
        && t.apply(&mut record, now)
    {
        m.push(write_call(&record)?);
    }
    m.extend(completion.follow_up.iter().map(|w| enqueue(tenant, call, w, now)));
    if let Some(analysis) = &completion.analysis {
        let json = serde_json::to_string(analysis).map_err(|e| bad(e.to_string()))?;
        m.push(insert_or_update(
            "analyses",
            &["tenant_id", "call_id", "analyzer", "analysis_json", "created_at"],
            &[&tenant, &call, &analysis.analyzer, &json, &ts(now)],
        ));
        if let Some(email) = heard_email(analysis) {
            // A spoken email makes the call findable by it, unless the call has an email key (or its lead gives
            // one, which a write of the call above stores).
            let key = Key::composite(&[&tenant, &call]);
            if let Some(row) = tx.read_row("calls", &["lead_json", "email_key"], key).await? {
                let lead: String = row.column_by_name("lead_json")?;
                let lead: LeadDetails = serde_json::from_str(&lead).map_err(|e| bad(e.to_string()))?;
                if row.column_by_name::<Option<String>>("email_key")?.is_none() && lead.contact_keys().1.is_none() {
                    m.push(update("calls", &["tenant_id", "call_id", "email_key"], &[&tenant, &call, &email]));
                }
            }
        }
    }
    if let Some(d) = &completion.delivery {
        m.push(insert_or_update(
            "deliveries",
            &["tenant_id", "call_id", "provider", "record_id", "created", "attempts", "review", "delivered_at"],
            &[
                &tenant,
                &call,
                &d.provider,
                &d.record_id,
                &d.created,
                &i64::from(d.attempts),
                &d.review,
                &ts(d.delivered_at),
            ],
        ));
    }
    if let Some(reason) = &completion.dead_letter {
        let (kind, payload, attempts) = what;
        m.push(insert(
            "dead_letters",
            &["tenant_id", "id", "call_id", "kind", "payload", "attempts", "reason", "created_at"],
            &[&tenant, &new_id(), &call, &kind, &payload, &i64::from(attempts), reason, &ts(now)],
        ));
    }
    Ok(m)
}

const ERASURE_REQUEST_COLUMNS: [&str; 7] =
    ["tenant_id", "request_id", "phone", "email", "requested_at", "completed_at", "calls_erased"];

const BREAKER_COLUMNS: [&str; 5] = ["tenant_id", "breaker_key", "consecutive_failures", "open_until", "probe_until"];

/// The breaker's state, read inside the transaction (so it is locked until commit); Default when never used.
async fn read_breaker(tx: &mut ReadWriteTransaction, tenant: &str, key: &str) -> Result<Breaker, SpannerError> {
    let k = Key::composite(&[&tenant, &key]);
    let row = tx.read_row("breakers", &BREAKER_COLUMNS, k).await?;
    row.as_ref().map_or(Ok(Breaker::default()), breaker_from_row)
}

fn breaker_from_row(row: &Row) -> Result<Breaker, SpannerError> {
    let at = |v: Option<i64>| v.and_then(DateTime::from_timestamp_micros);
    Ok(Breaker {
        consecutive_failures: u32::try_from(row.column_by_name::<i64>("consecutive_failures")?).unwrap_or(u32::MAX),
        open_until: at(row.column_by_name("open_until")?),
        probe_until: at(row.column_by_name("probe_until")?),
    })
}

fn write_breaker(tenant: &str, key: &str, b: &Breaker) -> gcloud_googleapis::spanner::v1::Mutation {
    insert_or_update(
        "breakers",
        &BREAKER_COLUMNS,
        &[&tenant, &key, &i64::from(b.consecutive_failures), &b.open_until.map(micros), &b.probe_until.map(micros)],
    )
}

async fn holds_lease(tx: &mut ReadWriteTransaction, item: &WorkItem) -> Result<bool, SpannerError> {
    let key = Key::composite(&[&item.tenant_id.as_str(), &item.id]);
    let row = tx.read_row("outbox", &["lease"], key).await?;
    Ok(match row {
        Some(r) => r.column_by_name::<Option<String>>("lease")?.as_deref() == Some(item.lease.as_str()),
        None => false,
    })
}

pub struct SpannerStateStore {
    client: Client,
}

impl SpannerStateStore {
    /// Connect to `projects/P/instances/I/databases/D` (the emulator when `SPANNER_EMULATOR_HOST` is set).
    pub async fn connect(database: &str) -> anyhow::Result<Self> {
        Ok(Self { client: StoreClient::connect(database).await?.0 })
    }

    /// Fill the contact keys of calls written before migration 5: from the lead, else (the email) from the
    /// analysis. Walks the calls without keys once, fixing a page per read-write transaction that re-reads each
    /// row (a call written meanwhile keeps what its write stored). Returns how many calls gained keys.
    async fn backfill_contact_keys(&self) -> anyhow::Result<usize> {
        let mut filled = 0;
        let mut after: Option<(String, String)> = None;
        loop {
            let mut sql =
                String::from("SELECT tenant_id, call_id FROM calls WHERE phone_key IS NULL AND email_key IS NULL");
            if after.is_some() {
                sql.push_str(" AND (tenant_id > @t OR (tenant_id = @t AND call_id > @c))");
            }
            sql.push_str(" ORDER BY tenant_id, call_id LIMIT 200");
            let mut stmt = Statement::new(sql);
            if let Some((t, c)) = &after {
                stmt.add_param("t", t);
                stmt.add_param("c", c);
            }
            let mut page = Vec::new();
            {
                let mut tx = self.client.single().await?;
                let mut rows = tx.query(stmt).await?;
                while let Some(row) = rows.next().await? {
                    page.push((row.column_by_name::<String>("tenant_id")?, row.column_by_name::<String>("call_id")?));
                }
            }
            let Some(last) = page.last().cloned() else { return Ok(filled) };
            filled += self
                .rw(|tx| {
                    let page = page.clone();
                    Box::pin(async move {
                        let mut m = Vec::new();
                        for (tenant, call) in &page {
                            let key = Key::composite(&[&tenant.as_str(), &call.as_str()]);
                            let Some(row) = tx.read_row("calls", &["lead_json", "phone_key", "email_key"], key).await?
                            else {
                                continue;
                            };
                            if row.column_by_name::<Option<String>>("phone_key")?.is_some()
                                || row.column_by_name::<Option<String>>("email_key")?.is_some()
                            {
                                continue;
                            }
                            // A row we cannot read keeps no keys (reading the call reports it); the backfill goes on.
                            let lead: String = row.column_by_name("lead_json")?;
                            let Ok(lead) = serde_json::from_str::<LeadDetails>(&lead) else { continue };
                            let (phone, mut email) = lead.contact_keys();
                            if email.is_none() {
                                let key = Key::composite(&[&tenant.as_str(), &call.as_str()]);
                                if let Some(a) = tx.read_row("analyses", &["analysis_json"], key).await? {
                                    let json: String = a.column_by_name("analysis_json")?;
                                    email = serde_json::from_str::<Analysis>(&json).ok().and_then(|a| heard_email(&a));
                                }
                            }
                            if phone.is_some() || email.is_some() {
                                m.push(update(
                                    "calls",
                                    &["tenant_id", "call_id", "phone_key", "email_key"],
                                    &[tenant, call, &phone, &email],
                                ));
                            }
                        }
                        let n = m.len();
                        tx.buffer_write(m);
                        Ok(n)
                    })
                })
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            after = Some(last);
        }
    }

    /// The calls with these keys, in call-id order, read at one timestamp.
    async fn read_calls(
        tx: &mut gcloud_spanner::transaction_ro::ReadOnlyTransaction,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<CallRecord>, SpannerError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Key> = keys.iter().map(|(t, c)| Key::composite(&[&t.as_str(), &c.as_str()])).collect();
        let mut rows = tx.read("calls", &CALL_COLUMNS, keys).await?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await? {
            out.push(call_from_row(&row)?);
        }
        out.sort_by(|a, b| a.call_id.as_str().cmp(b.call_id.as_str()));
        Ok(out)
    }

    /// Run a read-write transaction. The client retries ABORTED a few times; contention (and the emulator, which
    /// runs one transaction at a time and aborts the rest) can outlast that, so aborted transactions are run again
    /// here with jittered backoff until a deadline. Every closure reads what it decides on, so a rerun is safe.
    /// A racing insert of the same key (ALREADY_EXISTS at commit) is retried the same way: the rerun sees the row.
    async fn rw<T, F>(&self, f: F) -> PortResult<T>
    where
        F: for<'tx> Fn(
            &'tx mut ReadWriteTransaction,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, SpannerError>> + Send + 'tx>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(2);
        loop {
            match self.client.read_write_transaction(&f).await {
                Ok((_, v)) => return Ok(v),
                Err(SpannerError::GRPC(s))
                    if matches!(s.code(), Code::Aborted | Code::AlreadyExists)
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause.mul_f64(0.5 + rand::random::<f64>())).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(port_err(e)),
            }
        }
    }
}

const DEAD_LETTER_SELECT: &str = "SELECT tenant_id, id, call_id, kind, payload, attempts, reason, created_at, \
     replayed_at FROM dead_letters";

impl SpannerStateStore {
    async fn query_dead_letters(&self, stmt: Statement) -> PortResult<Vec<DeadLetter>> {
        let mut tx = self.client.single().await.map_err(port_err)?;
        let mut rows = tx.query(stmt).await.map_err(|e| port_err(e.into()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(|e| port_err(e.into()))? {
            let read = || -> Result<DeadLetter, SpannerError> {
                let payload: String = row.column_by_name("payload")?;
                Ok(DeadLetter {
                    id: row.column_by_name::<i64>("id")?.to_string(),
                    replayed_at: row.column_by_name::<Option<OffsetDateTime>>("replayed_at")?.map(from_ts),
                    tenant_id: row.column_by_name("tenant_id")?,
                    call_id: row.column_by_name("call_id")?,
                    kind: row.column_by_name("kind")?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
                    attempts: row.column_by_name::<i64>("attempts")? as u32,
                    reason: row.column_by_name("reason")?,
                    created_at: from_ts(row.column_by_name("created_at")?),
                })
            };
            out.push(read().map_err(port_err)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for SpannerStateStore {
    async fn scan_calls(&self, tenant: &TenantId, scan: &CallScan) -> PortResult<Vec<CallRecord>> {
        // Walks the key (tenant_id, call_id) from the cursor: only the conditions given are in the statement, so the
        // cursor is a range seek.
        let mut sql = format!("SELECT {} FROM calls WHERE tenant_id = @tenant", CALL_COLUMNS.join(", "));
        let states: Vec<String> = scan.states.iter().map(|s| s.as_str().to_owned()).collect();
        for (given, condition) in [
            (!states.is_empty(), " AND state IN UNNEST(@states)"),
            (scan.created_from.is_some(), " AND created_at >= @created_from"),
            (scan.created_before.is_some(), " AND created_at < @created_before"),
            (scan.updated_before.is_some(), " AND updated_at < @updated_before"),
            (scan.after.is_some(), " AND call_id > @after"),
        ] {
            if given {
                sql.push_str(condition);
            }
        }
        sql.push_str(" ORDER BY call_id LIMIT @limit");
        let mut stmt = Statement::new(sql);
        stmt.add_param("tenant", &tenant.as_str());
        if !states.is_empty() {
            stmt.add_param("states", &states);
        }
        if let Some(from) = scan.created_from {
            stmt.add_param("created_from", &ts(from));
        }
        if let Some(before) = scan.created_before {
            stmt.add_param("created_before", &ts(before));
        }
        if let Some(before) = scan.updated_before {
            stmt.add_param("updated_before", &ts(before));
        }
        if let Some(after) = &scan.after {
            stmt.add_param("after", &after.as_str());
        }
        stmt.add_param("limit", &i64::try_from(scan.limit).unwrap_or(i64::MAX));
        let mut tx = self.client.single().await.map_err(port_err)?;
        let mut rows = tx.query(stmt).await.map_err(|e| port_err(e.into()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(|e| port_err(e.into()))? {
            out.push(call_from_row(&row).map_err(port_err)?);
        }
        Ok(out)
    }

    async fn calls_by_contact(
        &self,
        tenant: &TenantId,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> PortResult<Vec<CallRecord>> {
        let (phone, email) = contact_keys(phone, email);
        let lookups = [("calls_by_phone", "phone_key", phone), ("calls_by_email", "email_key", email)];
        let mut tx = self.client.read_only_transaction().await.map_err(port_err)?;
        let mut keys: Vec<(String, String)> = Vec::new();
        for (index, column, value) in lookups {
            let Some(value) = value else { continue };
            let mut stmt = Statement::new(format!(
                "SELECT call_id FROM calls@{{FORCE_INDEX={index}, {NULL_FILTERED_OK}}}
                 WHERE tenant_id = @tenant AND {column} = @value"
            ));
            stmt.add_param("tenant", &tenant.as_str());
            stmt.add_param("value", &value);
            let mut rows = tx.query(stmt).await.map_err(|e| port_err(e.into()))?;
            while let Some(row) = rows.next().await.map_err(|e| port_err(e.into()))? {
                let call: String = row.column_by_name("call_id").map_err(|e| port_err(e.into()))?;
                keys.push((tenant.as_str().to_owned(), call));
            }
        }
        keys.sort();
        keys.dedup();
        Self::read_calls(&mut tx, keys).await.map_err(port_err)
    }

    async fn erase_call(&self, erasure: CallErasure, record: ErasureRecord) -> PortResult<bool> {
        self.rw(|tx| {
            let (erasure, mut record) = (erasure.clone(), record.clone());
            Box::pin(async move {
                let (tenant, call) = (record.tenant_id.to_string(), record.call_id.to_string());
                let Some(mut stored) = read_call(tx, &tenant, &call).await? else { return Ok(false) };
                let mut m = Vec::new();
                if erasure.recording {
                    stored.recording_object = None;
                }
                match erasure.lead {
                    Some(lead) => {
                        let key = Key::composite(&[&tenant, &call]);
                        let analysis: Option<Analysis> = match tx.read_row("analyses", &["analysis_json"], key).await? {
                            Some(row) => {
                                let json: String = row.column_by_name("analysis_json")?;
                                Some(serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?)
                            }
                            None => None,
                        };
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
                        m.push(write_call_clearing_keys(&stored)?);
                        if let Some(mut analysis) = analysis {
                            for field in forget_in_analysis(&mut analysis, &traces) {
                                record.note(field);
                            }
                            let json = serde_json::to_string(&analysis).map_err(|e| bad(e.to_string()))?;
                            m.push(update(
                                "analyses",
                                &["tenant_id", "call_id", "analysis_json"],
                                &[&tenant, &call, &json],
                            ));
                        }
                        // Pending notifications carry the caller's name and phone: they go with the lead. The call's
                        // other queued work, its dead letters and its stages' last errors keep their ids and lose the
                        // caller. The outbox and dead letters have no index by call: these read the tenant's part
                        // (a queue kept short, and letters an operator replays or clears).
                        // Queued work quotes a caller only in a failure's last error (payloads hold ids).
                        for (table, text, only) in [
                            ("outbox", "last_error", "(kind = @notify OR last_error IS NOT NULL)"),
                            ("dead_letters", "reason", "TRUE"),
                        ] {
                            let mut stmt = Statement::new(format!(
                                "SELECT id, kind, payload, {text} AS text FROM {table} \
                                 WHERE tenant_id = @tenant AND call_id = @call AND {only}"
                            ));
                            if table == "outbox" {
                                stmt.add_param("notify", &WorkKind::Notify.as_str());
                            }
                            stmt.add_param("tenant", &tenant);
                            stmt.add_param("call", &call);
                            let mut rows = tx.query(stmt).await?;
                            while let Some(row) = rows.next().await? {
                                let id: i64 = row.column_by_name("id")?;
                                let kind: String = row.column_by_name("kind")?;
                                if table == "outbox" && kind == WorkKind::Notify.as_str() {
                                    m.push(delete("outbox", Key::composite(&[&tenant, &id])));
                                    continue;
                                }
                                // Analytics rows are free of personal data by construction, and must stay valid.
                                if table == "outbox" && !OUTBOX_KINDS_WITH_TEXT.iter().any(|k| k.as_str() == kind) {
                                    continue;
                                }
                                let payload: String = row.column_by_name("payload")?;
                                let why: Option<String> = row.column_by_name("text")?;
                                let forgotten = traces.forget_json_text(&payload).into_owned();
                                let why_forgotten = why.as_deref().map(|w| traces.forget(w).into_owned());
                                if forgotten == payload && why_forgotten == why {
                                    continue;
                                }
                                record.note(table);
                                m.push(update(
                                    table,
                                    &["tenant_id", "id", "payload", text],
                                    &[&tenant, &id, &forgotten, &why_forgotten],
                                ));
                            }
                        }
                        let mut stmt = Statement::new(
                            "SELECT stage_key, last_error FROM stage_runs WHERE tenant_id = @tenant AND call_id = @call \
                             AND last_error IS NOT NULL",
                        );
                        stmt.add_param("tenant", &tenant);
                        stmt.add_param("call", &call);
                        let mut rows = tx.query(stmt).await?;
                        while let Some(row) = rows.next().await? {
                            let stage_key: String = row.column_by_name("stage_key")?;
                            let why: String = row.column_by_name("last_error")?;
                            if let Cow::Owned(forgotten) = traces.forget(&why) {
                                record.note("stage_runs");
                                m.push(update(
                                    "stage_runs",
                                    &["tenant_id", "call_id", "stage_key", "last_error"],
                                    &[&tenant, &call, &stage_key, &forgotten],
                                ));
                            }
                        }
                    }
                    None if erasure.recording => {
                        stored.updated_at = record.at;
                        // The lead stays, and with it the stored contact keys.
                        m.push(write_call(&stored)?);
                    }
                    // Nothing of the call is erased: only the record is kept.
                    None => {}
                }
                m.push(insert_or_update(
                    "erasures",
                    &["tenant_id", "call_id", "request_id", "erased", "erased_at"],
                    &[&tenant, &call, &record.request_id, &record.erased, &ts(record.at)],
                ));
                tx.buffer_write(m);
                Ok(true)
            })
        })
        .await
    }

    async fn request_erasure(&self, request: &ErasureRequest) -> PortResult<bool> {
        self.rw(|tx| {
            let request = request.clone();
            Box::pin(async move {
                let tenant = request.tenant_id.as_str();
                let key = Key::composite(&[&tenant, &request.id.as_str()]);
                if tx.read_row("erasure_requests", &["request_id"], key).await?.is_some() {
                    return Ok(false);
                }
                tx.buffer_write(vec![insert(
                    "erasure_requests",
                    &ERASURE_REQUEST_COLUMNS,
                    &[
                        &tenant,
                        &request.id,
                        &request.phone,
                        &request.email,
                        &ts(request.requested_at),
                        &request.completed_at.map(ts),
                        &request.calls_erased.map(i64::from),
                    ],
                )]);
                Ok(true)
            })
        })
        .await
    }

    async fn erasure_requests(
        &self,
        tenant: &TenantId,
        pending_only: bool,
        limit: usize,
    ) -> PortResult<Vec<ErasureRequest>> {
        // A tenant's requests are few: its key range, filtered and sorted.
        let mut sql =
            format!("SELECT {} FROM erasure_requests WHERE tenant_id = @tenant", ERASURE_REQUEST_COLUMNS.join(", "));
        if pending_only {
            sql.push_str(" AND completed_at IS NULL");
        }
        sql.push_str(" ORDER BY requested_at, request_id LIMIT @limit");
        let mut stmt = Statement::new(sql);
        stmt.add_param("tenant", &tenant.as_str());
        stmt.add_param("limit", &i64::try_from(limit).unwrap_or(i64::MAX));
        let mut tx = self.client.single().await.map_err(port_err)?;
        let mut rows = tx.query(stmt).await.map_err(|e| port_err(e.into()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(|e| port_err(e.into()))? {
            let read = || -> Result<ErasureRequest, SpannerError> {
                let calls: Option<i64> = row.column_by_name("calls_erased")?;
                Ok(ErasureRequest {
                    tenant_id: tenant.clone(),
                    id: row.column_by_name("request_id")?,
                    phone: row.column_by_name("phone")?,
                    email: row.column_by_name("email")?,
                    requested_at: from_ts(row.column_by_name("requested_at")?),
                    completed_at: row.column_by_name::<Option<OffsetDateTime>>("completed_at")?.map(from_ts),
                    calls_erased: calls.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                })
            };
            out.push(read().map_err(port_err)?);
        }
        Ok(out)
    }

    async fn complete_erasure_request(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
        calls: u32,
    ) -> PortResult<bool> {
        self.rw(|tx| {
            let (tenant, id) = (tenant.clone(), id.to_owned());
            Box::pin(async move {
                let key = Key::composite(&[&tenant.as_str(), &id.as_str()]);
                let Some(row) = tx.read_row("erasure_requests", &["completed_at"], key).await? else {
                    return Ok(false);
                };
                if row.column_by_name::<Option<OffsetDateTime>>("completed_at")?.is_some() {
                    return Ok(false);
                }
                let forgotten: Option<String> = None;
                tx.buffer_write(vec![update(
                    "erasure_requests",
                    &["tenant_id", "request_id", "phone", "email", "completed_at", "calls_erased"],
                    &[&tenant.as_str(), &id, &forgotten, &forgotten, &Some(ts(at)), &Some(i64::from(calls))],
                )]);
                Ok(true)
            })
        })
        .await
    }

    async fn erasures(&self, tenant: &TenantId, limit: usize) -> PortResult<Vec<ErasureRecord>> {
        let mut stmt = Statement::new(
            "SELECT call_id, request_id, erased, erased_at FROM erasures@{FORCE_INDEX=erasures_by_time}
             WHERE tenant_id = @tenant ORDER BY erased_at DESC, call_id DESC, request_id DESC LIMIT @limit",
        );
        stmt.add_param("tenant", &tenant.as_str());
        stmt.add_param("limit", &i64::try_from(limit).unwrap_or(i64::MAX));
        let mut tx = self.client.single().await.map_err(port_err)?;
        let mut rows = tx.query(stmt).await.map_err(|e| port_err(e.into()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(|e| port_err(e.into()))? {
            let read = || -> Result<ErasureRecord, SpannerError> {
                let call: String = row.column_by_name("call_id")?;
                Ok(ErasureRecord {
                    tenant_id: tenant.clone(),
                    call_id: CallId::parse(&call).map_err(|e| bad(e.to_string()))?,
                    request_id: row.column_by_name("request_id")?,
                    erased: row.column_by_name("erased")?,
                    at: from_ts(row.column_by_name("erased_at")?),
                })
            };
            out.push(read().map_err(port_err)?);
        }
        Ok(out)
    }

    async fn job_cursor(&self, tenant: &TenantId, job: &str) -> PortResult<Option<String>> {
        let mut tx = self.client.single().await.map_err(port_err)?;
        let key = Key::composite(&[&tenant.as_str(), &job]);
        let row = tx.read_row("job_cursors", &["cursor"], key).await.map_err(|e| port_err(e.into()))?;
        row.map(|r| r.column_by_name::<String>("cursor")).transpose().map_err(|e| port_err(e.into()))
    }

    async fn set_job_cursor(&self, tenant: &TenantId, job: &str, cursor: Option<&str>) -> PortResult<()> {
        let m = match cursor {
            Some(cursor) => insert_or_update(
                "job_cursors",
                &["tenant_id", "job", "cursor", "updated_at"],
                &[&tenant.as_str(), &job, &cursor, &ts(Utc::now())],
            ),
            None => delete("job_cursors", Key::composite(&[&tenant.as_str(), &job])),
        };
        self.client.apply(vec![m]).await.map_err(port_err)?;
        Ok(())
    }

    async fn delivery(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<CrmDelivery>> {
        let mut tx = self.client.single().await.map_err(port_err)?;
        let key = Key::composite(&[&tenant.as_str(), &call.as_str()]);
        let columns = ["provider", "record_id", "created", "attempts", "review", "delivered_at"];
        let row = tx.read_row("deliveries", &columns, key).await.map_err(|e| port_err(e.into()))?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> Result<CrmDelivery, SpannerError> {
            Ok(CrmDelivery {
                provider: row.column_by_name("provider")?,
                record_id: row.column_by_name("record_id")?,
                created: row.column_by_name("created")?,
                attempts: u32::try_from(row.column_by_name::<i64>("attempts")?).unwrap_or(u32::MAX),
                review: row.column_by_name("review")?,
                delivered_at: from_ts(row.column_by_name("delivered_at")?),
            })
        };
        read().map(Some).map_err(port_err)
    }

    async fn breaker_admit(
        &self,
        tenant: &TenantId,
        key: &str,
        now: DateTime<Utc>,
        policy: &BreakerPolicy,
    ) -> PortResult<Admit> {
        // Read, decide and write in one read-write transaction: of two instances admitting on a half-open circuit,
        // one commits its probe and the other is aborted, rerun, and sees the probe out.
        self.rw(|tx| {
            let (tenant, key, policy) = (tenant.clone(), key.to_owned(), *policy);
            Box::pin(async move {
                let mut breaker = read_breaker(tx, tenant.as_str(), &key).await?;
                let before = breaker;
                let admit = breaker.admit(now, &policy);
                if breaker != before {
                    tx.buffer_write(vec![write_breaker(tenant.as_str(), &key, &breaker)]);
                }
                Ok(admit)
            })
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
        self.rw(|tx| {
            let (tenant, key, policy) = (tenant.clone(), key.to_owned(), *policy);
            Box::pin(async move {
                let mut breaker = read_breaker(tx, tenant.as_str(), &key).await?;
                let before = breaker;
                let transition = breaker.record(success, now, &policy);
                if breaker != before {
                    tx.buffer_write(vec![write_breaker(tenant.as_str(), &key, &breaker)]);
                }
                Ok(transition)
            })
        })
        .await
    }

    async fn breaker(&self, tenant: &TenantId, key: &str) -> PortResult<Breaker> {
        let mut tx = self.client.single().await.map_err(port_err)?;
        let k = Key::composite(&[&tenant.as_str(), &key]);
        let row = tx.read_row("breakers", &BREAKER_COLUMNS, k).await.map_err(|e| port_err(e.into()))?;
        row.as_ref().map_or(Ok(Breaker::default()), breaker_from_row).map_err(port_err)
    }

    async fn replay_dead_letter(
        &self,
        id: &str,
        revive_to: Option<CallState>,
        follow_up: Vec<NewWork>,
    ) -> PortResult<bool> {
        // The id is the INT64 part of the dead letter's key, as text; anything else names no dead letter.
        let Ok(id) = id.parse::<i64>() else { return Ok(false) };
        self.rw(|tx| {
            let follow_up = follow_up.clone();
            Box::pin(async move {
                // The index finds the tenant (the key's first part); the row itself is then read by its key, so
                // the transaction holds it until commit. Ids are random or an event's digest: one row, in practice.
                let mut stmt = Statement::new(
                    "SELECT tenant_id FROM dead_letters@{FORCE_INDEX=dead_letters_by_id} WHERE id = @id ORDER BY tenant_id",
                );
                stmt.add_param("id", &id);
                let mut tenants = Vec::new();
                {
                    let mut rows = tx.query(stmt).await?;
                    while let Some(row) = rows.next().await? {
                        tenants.push(row.column_by_name::<String>("tenant_id")?);
                    }
                }
                let mut found = None;
                for tenant in tenants {
                    let key = Key::composite(&[&tenant.as_str(), &id]);
                    let Some(row) = tx.read_row("dead_letters", &["call_id", "replayed_at"], key).await? else {
                        continue;
                    };
                    if row.column_by_name::<Option<OffsetDateTime>>("replayed_at")?.is_none() {
                        found = Some((tenant, row.column_by_name::<String>("call_id")?));
                        break;
                    }
                }
                let Some((tenant, call)) = found else { return Ok(false) };
                if !follow_up.is_empty() && (TenantId::parse(&tenant).is_err() || CallId::parse(&call).is_err()) {
                    // Work for a call that cannot exist would fail every claim that picked it up.
                    return Err(bad(format!(
                        "dead letter {id}: its tenant and call ids ({tenant:?}, {call:?}) are not valid for follow-up work"
                    )));
                }
                let now = Utc::now();
                let mut m = vec![update(
                    "dead_letters",
                    &["tenant_id", "id", "replayed_at"],
                    &[&tenant, &id, &Some(ts(now))],
                )];
                if let Some(to) = revive_to
                    && let Some(mut record) = read_call(tx, &tenant, &call).await?
                    && record.state == CallState::DeadLettered
                {
                    // The operator's replay: deliberately not a forward-only `Transition`.
                    record.state = to;
                    record.state_reason = None;
                    record.updated_at = now;
                    m.push(write_call(&record)?);
                }
                m.extend(follow_up.iter().map(|w| enqueue(&tenant, &call, w, now)));
                tx.buffer_write(m);
                Ok(true)
            })
        })
        .await
    }

    async fn record_intake(&self, event: IntakeEvent) -> PortResult<IntakeResult> {
        self.rw(|tx| {
            let event = event.clone();
            Box::pin(async move {
                let (tenant, call) = (event.tenant_id.as_str(), event.call_id.as_str());
                let key = Key::composite(&[&tenant, &call, &event.dedupe_key]);
                let seen = tx.read_row("intake_ledger", &["payload_sha256"], key).await?;
                let existing = read_call(tx, tenant, call).await?;
                if seen.is_some() {
                    let call = existing.ok_or_else(|| bad("ledger entry without its call"))?;
                    return Ok(IntakeResult { outcome: IntakeOutcome::Duplicate, call });
                }
                let plan = intake::plan(existing, &event);
                let mut m = vec![
                    write_call(&plan.record)?,
                    insert(
                        "intake_ledger",
                        &["tenant_id", "call_id", "dedupe_key", "payload_sha256", "received_at"],
                        &[&tenant, &call, &event.dedupe_key, &event.payload_sha256, &ts(event.received_at)],
                    ),
                ];
                m.extend(plan.work.iter().map(|w| enqueue(tenant, call, w, event.received_at)));
                tx.buffer_write(m);
                Ok(IntakeResult { outcome: plan.outcome, call: plan.record })
            })
        })
        .await
    }

    async fn call(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<CallRecord>> {
        let mut tx = self.client.single().await.map_err(port_err)?;
        let key = Key::composite(&[&tenant.as_str(), &call.as_str()]);
        let row = tx.read_row("calls", &CALL_COLUMNS, key).await.map_err(|e| port_err(e.into()))?;
        row.as_ref().map(call_from_row).transpose().map_err(port_err)
    }

    async fn claim_work(&self, kinds: &[WorkKind], limit: usize, lease: Duration) -> PortResult<Vec<WorkItem>> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
        self.rw(|tx| {
            let kinds = kinds.clone();
            Box::pin(async move {
                let token = uuid::Uuid::new_v4().to_string();
                let now = micros(Utc::now());
                let until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4);
                let mut stmt = Statement::new(
                    "SELECT tenant_id, id, call_id, kind, payload, attempts FROM outbox
                     WHERE kind IN UNNEST(@kinds) AND not_before <= @now AND (lease_until IS NULL OR lease_until <= @now)
                     ORDER BY not_before LIMIT @limit",
                );
                stmt.add_param("kinds", &kinds);
                stmt.add_param("now", &now);
                stmt.add_param("limit", &(limit as i64));
                let mut items = Vec::new();
                {
                    let mut rows = tx.query(stmt).await?;
                    while let Some(row) = rows.next().await? {
                        let tenant: String = row.column_by_name("tenant_id")?;
                        let call: String = row.column_by_name("call_id")?;
                        let kind: String = row.column_by_name("kind")?;
                        let payload: String = row.column_by_name("payload")?;
                        let attempts: i64 = row.column_by_name("attempts")?;
                        items.push(WorkItem {
                            id: row.column_by_name("id")?,
                            tenant_id: TenantId::parse(&tenant).map_err(|e| bad(e.to_string()))?,
                            call_id: CallId::parse(&call).map_err(|e| bad(e.to_string()))?,
                            kind: WorkKind::parse(&kind).ok_or_else(|| bad(format!("unknown work kind {kind}")))?,
                            payload: serde_json::from_str(&payload).map_err(|e| bad(e.to_string()))?,
                            attempts: (attempts + 1) as u32,
                            lease: token.clone(),
                        });
                    }
                }
                let m = items
                    .iter()
                    .map(|i| {
                        update(
                            "outbox",
                            &["tenant_id", "id", "lease", "lease_until", "attempts"],
                            &[&i.tenant_id.as_str(), &i.id, &i.lease, &until, &i64::from(i.attempts)],
                        )
                    })
                    .collect();
                tx.buffer_write(m);
                Ok(items)
            })
        })
        .await
    }

    async fn complete_work(&self, item: &WorkItem, completion: Completion) -> PortResult<bool> {
        self.rw(|tx| {
            let (item, completion) = (item.clone(), completion.clone());
            Box::pin(async move {
                if !holds_lease(tx, &item).await? {
                    return Ok(false);
                }
                let (tenant, call) = (item.tenant_id.as_str(), item.call_id.as_str());
                let mut m = vec![delete("outbox", Key::composite(&[&tenant, &item.id]))];
                let what = (item.kind.as_str(), item.payload.to_string(), item.attempts);
                m.extend(completion_mutations(tx, tenant, call, &completion, what, Utc::now()).await?);
                tx.buffer_write(m);
                Ok(true)
            })
        })
        .await
    }

    async fn claim_stage(&self, tenant: &TenantId, call: &CallId, key: &str, lease: Duration) -> PortResult<Claim> {
        self.rw(|tx| {
            let (tenant, call, key) = (tenant.clone(), call.clone(), key.to_owned());
            Box::pin(async move {
                let now = Utc::now();
                let k = Key::composite(&[&tenant.as_str(), &call.as_str(), &key.as_str()]);
                let row = tx.read_row("stage_runs", &["lease", "lease_until", "attempts", "done_at"], k).await?;
                let attempts = match row {
                    None => 1,
                    Some(r) => {
                        if r.column_by_name::<Option<OffsetDateTime>>("done_at")?.is_some() {
                            return Ok(Claim::Done);
                        }
                        let until = r.column_by_name::<Option<i64>>("lease_until")?;
                        let held = r.column_by_name::<Option<String>>("lease")?.is_some();
                        if held && let Some(until) = until.filter(|u| *u > micros(now)) {
                            return Ok(Claim::Busy { until: DateTime::from_timestamp_micros(until).unwrap_or(now) });
                        }
                        r.column_by_name::<i64>("attempts")? as u32 + 1
                    }
                };
                let token = uuid::Uuid::new_v4().simple().to_string();
                let until = micros(now) + lease.as_micros() as i64;
                tx.buffer_write(vec![insert_or_update(
                    "stage_runs",
                    &["tenant_id", "call_id", "stage_key", "lease", "lease_until", "attempts"],
                    &[&tenant.as_str(), &call.as_str(), &key, &token, &until, &i64::from(attempts)],
                )]);
                Ok(Claim::Claimed(StageClaim { tenant_id: tenant, call_id: call, key, lease: token, attempts }))
            })
        })
        .await
    }

    async fn finish_stage(&self, claim: &StageClaim, completion: Completion) -> PortResult<bool> {
        self.rw(|tx| {
            let (claim, completion) = (claim.clone(), completion.clone());
            Box::pin(async move {
                let (tenant, call) = (claim.tenant_id.as_str(), claim.call_id.as_str());
                let k = Key::composite(&[&tenant, &call, &claim.key.as_str()]);
                let Some(row) = tx.read_row("stage_runs", &["lease", "done_at"], k).await? else {
                    return Ok(false);
                };
                let holds = row.column_by_name::<Option<String>>("lease")?.as_deref() == Some(claim.lease.as_str());
                if !holds || row.column_by_name::<Option<OffsetDateTime>>("done_at")?.is_some() {
                    return Ok(false);
                }
                let now = Utc::now();
                let no_lease: Option<String> = None;
                let no_until: Option<i64> = None;
                let mut m = vec![update(
                    "stage_runs",
                    &["tenant_id", "call_id", "stage_key", "lease", "lease_until", "done_at"],
                    &[&tenant, &call, &claim.key, &no_lease, &no_until, &Some(ts(now))],
                )];
                let stage = claim.key.split(':').next().unwrap_or(&claim.key);
                let what = (stage, serde_json::json!({"key": claim.key}).to_string(), claim.attempts);
                m.extend(completion_mutations(tx, tenant, call, &completion, what, now).await?);
                tx.buffer_write(m);
                Ok(true)
            })
        })
        .await
    }

    async fn analysis(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<Analysis>> {
        let mut tx = self.client.single().await.map_err(port_err)?;
        let key = Key::composite(&[&tenant.as_str(), &call.as_str()]);
        let row = tx.read_row("analyses", &["analysis_json"], key).await.map_err(|e| port_err(e.into()))?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.column_by_name("analysis_json").map_err(|e| port_err(e.into()))?;
        serde_json::from_str(&json).map(Some).map_err(|e| PortError::permanent(format!("stored analysis: {e}")))
    }

    async fn dead_letter_event(&self, event: RefusedEvent) -> PortResult<bool> {
        use sha2::{Digest, Sha256};
        // The id is the event's: recording the same event twice finds the first row instead of adding one.
        let digest = Sha256::digest(format!("{}\n{}", event.kind(), event.event_key));
        let id = (u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) >> 1) as i64;
        // Key columns are bounded; the ids of a refused event are untrusted strings.
        let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        let (tenant, call) = (clip(&event.tenant_id, 63), clip(&event.call_id, 64));
        let payload = serde_json::json!({"event_key": event.event_key, "event": event.event}).to_string();
        let kind = clip(&event.kind(), 32);
        self.rw(|tx| {
            let (tenant, call, payload, kind, reason) =
                (tenant.clone(), call.clone(), payload.clone(), kind.clone(), event.reason.clone());
            Box::pin(async move {
                let key = Key::composite(&[&tenant.as_str(), &id]);
                if tx.read_row("dead_letters", &["id"], key).await?.is_some() {
                    return Ok(false);
                }
                tx.buffer_write(vec![insert(
                    "dead_letters",
                    &["tenant_id", "id", "call_id", "kind", "payload", "attempts", "reason", "created_at"],
                    &[&tenant, &id, &call, &kind, &payload, &1i64, &reason, &ts(Utc::now())],
                )]);
                Ok(true)
            })
        })
        .await
    }

    async fn dead_letters(&self, tenant: Option<&str>, limit: usize) -> PortResult<Vec<DeadLetter>> {
        let mut stmt = Statement::new(format!(
            "{DEAD_LETTER_SELECT} WHERE @tenant IS NULL OR tenant_id = @tenant ORDER BY created_at, id LIMIT @limit"
        ));
        stmt.add_param("tenant", &tenant.map(str::to_owned));
        stmt.add_param("limit", &(limit as i64));
        self.query_dead_letters(stmt).await
    }

    async fn dead_letter(&self, id: &str) -> PortResult<Option<DeadLetter>> {
        let Ok(id) = id.parse::<i64>() else { return Ok(None) };
        // dead_letters_by_id (migration 0004) serves this without the tenant.
        let mut stmt = Statement::new(format!("{DEAD_LETTER_SELECT} WHERE id = @id"));
        stmt.add_param("id", &id);
        Ok(self.query_dead_letters(stmt).await?.into_iter().next())
    }

    async fn call_dead_letters(&self, tenant: &TenantId, call: &CallId) -> PortResult<Vec<DeadLetter>> {
        // Within the tenant's key range: a tenant has few dead letters.
        let mut stmt = Statement::new(format!(
            "{DEAD_LETTER_SELECT} WHERE tenant_id = @tenant AND call_id = @call ORDER BY created_at, id"
        ));
        stmt.add_param("tenant", &tenant.to_string());
        stmt.add_param("call", &call.to_string());
        self.query_dead_letters(stmt).await
    }

    async fn release_stage(&self, claim: &StageClaim, error: &str) -> PortResult<()> {
        self.rw(|tx| {
            let (claim, error) = (claim.clone(), error.to_owned());
            Box::pin(async move {
                let (tenant, call) = (claim.tenant_id.as_str(), claim.call_id.as_str());
                let k = Key::composite(&[&tenant, &call, &claim.key.as_str()]);
                let Some(row) = tx.read_row("stage_runs", &["lease"], k).await? else { return Ok(()) };
                if row.column_by_name::<Option<String>>("lease")?.as_deref() == Some(claim.lease.as_str()) {
                    let (no_lease, no_until): (Option<String>, Option<i64>) = (None, None);
                    tx.buffer_write(vec![update(
                        "stage_runs",
                        &["tenant_id", "call_id", "stage_key", "lease", "lease_until", "last_error"],
                        &[&tenant, &call, &claim.key, &no_lease, &no_until, &error],
                    )]);
                }
                Ok(())
            })
        })
        .await
    }

    async fn complete_batch(&self, items: &[WorkItem]) -> PortResult<usize> {
        self.rw(|tx| {
            let items = items.to_vec();
            Box::pin(async move {
                let mut done = Vec::new();
                for item in &items {
                    if holds_lease(tx, item).await? {
                        done.push(delete("outbox", Key::composite(&[&item.tenant_id.as_str(), &item.id])));
                    }
                }
                let n = done.len();
                tx.buffer_write(done);
                Ok(n)
            })
        })
        .await
    }

    async fn retry_work(&self, item: &WorkItem, not_before: DateTime<Utc>, error: &str) -> PortResult<()> {
        self.rw(|tx| {
            let (item, error) = (item.clone(), error.to_owned());
            Box::pin(async move {
                if holds_lease(tx, &item).await? {
                    let none: Option<String> = None;
                    let no_time: Option<i64> = None;
                    tx.buffer_write(vec![update(
                        "outbox",
                        &["tenant_id", "id", "lease", "lease_until", "not_before", "last_error"],
                        &[&item.tenant_id.as_str(), &item.id, &none, &no_time, &micros(not_before), &error],
                    )]);
                }
                Ok(())
            })
        })
        .await
    }

    async fn next_due(&self, kinds: &[WorkKind]) -> PortResult<Option<DateTime<Utc>>> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
        let mut stmt = Statement::new(
            "SELECT MIN(CASE WHEN lease_until > not_before THEN lease_until ELSE not_before END) AS due
             FROM outbox WHERE kind IN UNNEST(@kinds)",
        );
        stmt.add_param("kinds", &kinds);
        let mut tx = self.client.single().await.map_err(port_err)?;
        let mut rows = tx.query(stmt).await.map_err(|e| port_err(e.into()))?;
        let due: Option<i64> = match rows.next().await.map_err(|e| port_err(e.into()))? {
            Some(row) => row.column_by_name("due").map_err(|e| port_err(e.into()))?,
            None => None,
        };
        Ok(due.and_then(DateTime::from_timestamp_micros))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schema_splits_into_statements_without_comments() {
        let all: Vec<String> = super::MIGRATIONS.iter().flat_map(|(_, ddl)| super::statements(ddl)).collect();
        assert!(all.iter().all(|s| !s.contains("--") && !s.ends_with(';')));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE calls")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE stage_runs")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE analyses")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE deliveries")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE breakers")));
        assert!(all.iter().any(|s| s.starts_with("ALTER TABLE dead_letters ADD COLUMN replayed_at")));
        assert!(all.iter().any(|s| s.starts_with("ALTER TABLE calls ADD COLUMN phone_key")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE erasures")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE job_cursors")));
        assert!(all.iter().any(|s| s.starts_with("CREATE TABLE erasure_requests")));
        assert_eq!(all.iter().filter(|s| s.starts_with("CREATE TABLE")).count(), 14);
    }
}
