//! The local router: Eventarc for the embedded mode.
//!
//! When an object is finalized in the embedded object store, or a message is published on a topic, it records
//! the CloudEvent Eventarc would send (binary mode: `ce-*` headers, StorageObjectData / MessagePublishedData
//! body) once per matching trigger, durably in SQLite. A delivery loop POSTs each event to its function's own
//! HTTP router (in process), at least once: a non-2xx answer or a timeout is retried with exponential backoff and
//! jitter within the trigger's policy, and after the last attempt the event goes to the dead-letter store with
//! its last status and reason. Undelivered events survive a restart. No ordering promise; concurrency is bounded
//! per function. Deduplicating deliveries is the functions' job, as on Google Cloud.
//!
//! It is also Cloud Scheduler: every `[[schedule]]` of `eventarc/triggers.toml` publishes one message on its
//! topic per due cron slot (`fire_schedules`, called by `run`), through the same durable path as `publish`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{Request, StatusCode};
use rusqlite::{OptionalExtension, params};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::sqlite::{Durability, Writer, open_connection};
use crate::domain::work::RetryPolicy;
use crate::eventarc::{EventType, Schedule, Trigger, Triggers};
use crate::ports::{ByteStream, EventPublisher, NewObject, ObjectInfo, ObjectPage, ObjectStore, PortError, PortResult};

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger     TEXT NOT NULL,
    destination TEXT NOT NULL,
    ce_id       TEXT NOT NULL,
    ce_source   TEXT NOT NULL,
    ce_type     TEXT NOT NULL,
    ce_subject  TEXT,
    ce_time     TEXT NOT NULL,
    body        BLOB NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  INTEGER NOT NULL,
    lease       TEXT,
    lease_until INTEGER,
    last_status INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (trigger, ce_source, ce_id)
);
CREATE INDEX IF NOT EXISTS events_due ON events (destination, not_before);
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger         TEXT NOT NULL,
    destination     TEXT NOT NULL,
    ce_id           TEXT NOT NULL,
    ce_source       TEXT NOT NULL,
    ce_type         TEXT NOT NULL,
    ce_subject      TEXT,
    ce_time         TEXT NOT NULL,
    body            BLOB NOT NULL,
    attempts        INTEGER NOT NULL,
    last_status     INTEGER,
    reason          TEXT NOT NULL,
    dead_lettered_at TEXT NOT NULL
);
-- Per schedule, the slot it last fired for (or when this file first saw it); µs since the epoch.
CREATE TABLE IF NOT EXISTS schedules (
    name      TEXT PRIMARY KEY,
    last_fire INTEGER NOT NULL
) WITHOUT ROWID;
";

/// How often `run` looks for due schedules (cron's resolution is a minute).
const SCHEDULE_CHECK: Duration = Duration::from_secs(1);

/// Pub/Sub push acknowledges 102, 200, 201, 204 on both the service and its emulator (202 only in production):
/// acknowledging only these keeps a function that answers 202 from passing here and failing on the emulators.
fn is_ack(status: StatusCode) -> bool {
    matches!(status.as_u16(), 102 | 200 | 201 | 204)
}

/// One event as recorded for one trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedEvent {
    pub id: i64,
    pub trigger: String,
    pub destination: String,
    pub ce_id: String,
    pub ce_source: String,
    pub ce_type: String,
    pub ce_subject: Option<String>,
    pub ce_time: String,
    pub body: Bytes,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetteredEvent {
    pub id: i64,
    pub trigger: String,
    pub destination: String,
    pub ce_id: String,
    pub ce_source: String,
    pub ce_subject: Option<String>,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub reason: String,
    pub dead_lettered_at: String,
}

/// What one delivery attempt ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Acked,
    Retrying { status: Option<u16>, after: Duration },
    DeadLettered { status: Option<u16>, reason: String },
}

struct Hosted {
    app: Router,
    permits: Arc<Semaphore>,
}

pub struct LocalRouter {
    triggers: Arc<Triggers>,
    writer: Writer,
    functions: RwLock<HashMap<String, Arc<Hosted>>>,
    wake: Notify,
    /// Schedule → the earliest time it can be due (a hint that spares `fire_schedules` a write; the file decides).
    schedule_hints: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Multiplies every backoff and lease (tests run the real policies a thousand times faster).
    time_scale: f64,
}

/// The columns `routed_event` reads, in its order.
const EVENT_COLUMNS: &str =
    "id, trigger, destination, ce_id, ce_source, ce_type, ce_subject, ce_time, body, attempts, last_status, last_error";

fn routed_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoutedEvent> {
    Ok(RoutedEvent {
        id: r.get(0)?,
        trigger: r.get(1)?,
        destination: r.get(2)?,
        ce_id: r.get(3)?,
        ce_source: r.get(4)?,
        ce_type: r.get(5)?,
        ce_subject: r.get(6)?,
        ce_time: r.get(7)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(8)?),
        attempts: r.get(9)?,
        last_status: r.get(10)?,
        last_error: r.get(11)?,
    })
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn scaled(d: Duration, scale: f64) -> Duration {
    d.mul_f64(scale)
}

impl LocalRouter {
    pub fn open(path: &Path, triggers: Triggers, durability: Durability) -> anyhow::Result<Self> {
        Self::open_scaled(path, triggers, durability, 1.0)
    }

    pub fn open_scaled(
        path: &Path,
        triggers: Triggers,
        durability: Durability,
        time_scale: f64,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = open_connection(path, durability)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            triggers: Arc::new(triggers),
            writer: Writer::start(conn, "router"),
            functions: RwLock::new(HashMap::new()),
            wake: Notify::new(),
            schedule_hints: Mutex::new(HashMap::new()),
            time_scale,
        })
    }

    /// One host process delivers from this file: at its start, leases left by a crash are stale; hand them back
    /// so those events are delivered now rather than when the leases run out. (Not done on open: an operator's
    /// `dead-letters list` must not disturb a running host.)
    pub async fn release_leases(&self) -> PortResult<usize> {
        self.writer
            .write(|c| c.execute("UPDATE events SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL", []))
            .await
    }

    pub fn triggers(&self) -> &Triggers {
        &self.triggers
    }

    /// Deliver events for `name` to `app`, at most `concurrency` at a time.
    pub fn host(&self, name: &str, app: Router, concurrency: usize) {
        let hosted = Hosted { app, permits: Arc::new(Semaphore::new(concurrency.max(1))) };
        self.functions.write().expect("functions lock").insert(name.to_owned(), Arc::new(hosted));
        self.wake.notify_one();
    }

    /// Stop delivering to `name`: its events wait, as for a function never hosted, until it is hosted again.
    /// Deliveries already under way finish. (Benchmarks run the chain one stage at a time with it.)
    pub fn unhost(&self, name: &str) -> bool {
        self.functions.write().expect("functions lock").remove(name).is_some()
    }

    /// Triggers whose destination this process does not host: their events wait, they are not dropped.
    pub fn unhosted_triggers(&self) -> Vec<&Trigger> {
        let functions = self.functions.read().expect("functions lock");
        self.triggers.triggers.iter().filter(|t| !functions.contains_key(&t.destination)).collect()
    }

    async fn record(&self, matches: Vec<&Trigger>, event: EventRecord) -> PortResult<usize> {
        if matches.is_empty() {
            return Ok(0);
        }
        let rows = trigger_rows(&matches);
        let now = micros(Utc::now());
        let recorded = self.writer.write(move |c| insert_events(c, &rows, &event, now)).await?;
        self.wake.notify_one();
        Ok(recorded)
    }

    /// Cloud Scheduler: publish one message for every schedule that is due at `now`, and return how many fired.
    ///
    /// A schedule is due when the first cron slot after its last fire is at or before `now`; it then fires once,
    /// for the latest slot at or before `now` (a host that was down for hours fires once, not once per missed
    /// slot). The message (body: the schedule's data; attributes `schedule` and `schedule_time`, RFC 3339) is
    /// recorded for the topic's triggers in the same transaction that moves the last fire, so a slot fires once
    /// across restarts. Only schedules whose topic has a trigger with a destination hosted here are considered,
    /// and the first time one is, it starts from `now` without firing.
    pub async fn fire_schedules(&self, now: DateTime<Utc>) -> PortResult<usize> {
        let schedules: Vec<&Schedule> = {
            let functions = self.functions.read().expect("functions lock");
            self.triggers
                .schedules
                .iter()
                .filter(|s| self.triggers.for_topic(&s.topic).any(|t| functions.contains_key(&t.destination)))
                .collect()
        };
        let mut fired = 0;
        for schedule in schedules {
            let hint = self.schedule_hints.lock().expect("hints lock").get(&schedule.name).copied();
            if hint.is_some_and(|due| now < due) {
                continue;
            }
            let (slot, last_fire) = self.fire_schedule(schedule, now).await?;
            let next = schedule.next_after(last_fire).unwrap_or(DateTime::<Utc>::MAX_UTC);
            self.schedule_hints.lock().expect("hints lock").insert(schedule.name.clone(), next);
            if let Some(slot) = slot {
                fired += 1;
                tracing::info!(schedule = %schedule.name, topic = %schedule.topic, schedule_time = %slot, "schedule fired");
            }
        }
        if fired > 0 {
            self.wake.notify_one();
        }
        Ok(fired)
    }

    /// One schedule at `now`: the slot it fired for (if it did) and its last fire afterwards.
    async fn fire_schedule(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> PortResult<(Option<DateTime<Utc>>, DateTime<Utc>)> {
        let schedule = schedule.clone();
        let rows = trigger_rows(&self.triggers.for_topic(&schedule.topic).collect::<Vec<_>>());
        let project = self.triggers.project.clone();
        self.writer
            .write(move |c| {
                let last: Option<i64> = c
                    .query_row("SELECT last_fire FROM schedules WHERE name = ?1", params![schedule.name], |r| r.get(0))
                    .optional()?;
                let save = |at: DateTime<Utc>| {
                    c.execute(
                        "INSERT INTO schedules (name, last_fire) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET last_fire = excluded.last_fire",
                        params![schedule.name, micros(at)],
                    )
                };
                let Some(last) = last.and_then(DateTime::from_timestamp_micros) else {
                    save(now)?;
                    return Ok((None, now));
                };
                let Some(next) = schedule.next_after(last).filter(|next| *next <= now) else {
                    return Ok((None, last));
                };
                let slot = schedule.latest_at_or_before(now).filter(|s| *s >= next).unwrap_or(next);
                save(slot)?;
                let schedule_time = slot.to_rfc3339_opts(SecondsFormat::Secs, true);
                // One message id per schedule and slot: a slot recorded twice would be one event.
                let digest = Sha256::digest(format!("schedule/{}/{schedule_time}", schedule.name).as_bytes());
                let attributes = BTreeMap::from([
                    ("schedule".to_owned(), schedule.name.clone()),
                    ("schedule_time".to_owned(), schedule_time),
                ]);
                let event = EventRecord::pubsub(
                    &project,
                    &schedule.topic,
                    &hex::encode(&digest[..16]),
                    &schedule.body(),
                    &attributes,
                    None,
                );
                insert_events(c, &rows, &event, micros(Utc::now()))?;
                Ok((Some(slot), slot))
            })
            .await
    }

    /// Each schedule's last fire as recorded in the file (tests and the ops view).
    pub async fn schedule_last_fires(&self) -> PortResult<BTreeMap<String, DateTime<Utc>>> {
        self.writer
            .write(|c| {
                let mut stmt = c.prepare("SELECT name, last_fire FROM schedules ORDER BY name")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
                let rows: Vec<(String, i64)> = rows.collect::<rusqlite::Result<_>>()?;
                Ok(rows.into_iter().filter_map(|(n, t)| Some((n, DateTime::from_timestamp_micros(t)?))).collect())
            })
            .await
    }

    /// Record the finalize event of an object generation for every trigger on its bucket.
    pub async fn object_finalized(&self, info: &ObjectInfo) -> PortResult<usize> {
        let matches: Vec<&Trigger> = self.triggers.for_bucket(&info.bucket).collect();
        self.record(matches, EventRecord::storage(info)).await
    }

    /// Events recorded for a trigger, in order (tests and the ops view).
    pub async fn pending(&self) -> PortResult<Vec<RoutedEvent>> {
        self.writer
            .write(|c| {
                let mut stmt = c.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY id"))?;
                let rows = stmt.query_map([], routed_event)?;
                rows.collect()
            })
            .await
    }

    pub async fn dead_letters(&self) -> PortResult<Vec<DeadLetteredEvent>> {
        self.writer
            .write(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, trigger, destination, ce_id, ce_source, ce_subject, attempts, last_status, reason,
                            dead_lettered_at FROM dead_letters ORDER BY id",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(DeadLetteredEvent {
                        id: r.get(0)?,
                        trigger: r.get(1)?,
                        destination: r.get(2)?,
                        ce_id: r.get(3)?,
                        ce_source: r.get(4)?,
                        ce_subject: r.get(5)?,
                        attempts: r.get(6)?,
                        last_status: r.get(7)?,
                        reason: r.get(8)?,
                        dead_lettered_at: r.get(9)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    /// Put dead letters back to be delivered again with a fresh attempt budget: the given ids, or all.
    pub async fn replay(&self, ids: Option<Vec<i64>>) -> PortResult<usize> {
        let ids_json = ids.map(|ids| serde_json::to_string(&ids).expect("ids serialize"));
        let now = micros(Utc::now());
        let n = self
            .writer
            .write(move |c| {
                let filter = "?1 IS NULL OR id IN (SELECT value FROM json_each(?1))";
                let moved = c.execute(
                    &format!(
                        "INSERT OR IGNORE INTO events (trigger, destination, ce_id, ce_source, ce_type, ce_subject,
                                                       ce_time, body, not_before, created_at)
                         SELECT trigger, destination, ce_id, ce_source, ce_type, ce_subject, ce_time, body, ?2, ?2
                         FROM dead_letters WHERE {filter} ORDER BY id"
                    ),
                    params![ids_json, now],
                )?;
                c.execute(&format!("DELETE FROM dead_letters WHERE {filter}"), params![ids_json])?;
                Ok(moved)
            })
            .await?;
        self.wake.notify_one();
        Ok(n)
    }

    /// Claim due events of one function (at most `limit`).
    async fn claim(&self, destination: &str, limit: usize, lease: Duration) -> PortResult<Vec<(RoutedEvent, String)>> {
        let token = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        let until = micros(now) + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 4);
        let destination = destination.to_owned();
        self.writer
            .write(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "UPDATE events SET lease = ?1, lease_until = ?2, attempts = attempts + 1
                     WHERE id IN (SELECT id FROM events WHERE destination = ?3 AND not_before <= ?4
                                    AND (lease_until IS NULL OR lease_until <= ?4)
                                  ORDER BY not_before, id LIMIT ?5)
                     RETURNING {EVENT_COLUMNS}"
                ))?;
                let rows = stmt.query_map(params![token, until, destination, micros(now), limit as i64], |r| {
                    Ok((routed_event(r)?, token.clone()))
                })?;
                rows.collect()
            })
            .await
    }

    /// The CloudEvent as Eventarc sends it: binary mode, data as the body.
    pub fn request(event: &RoutedEvent) -> Request<Body> {
        let mut req = Request::post("/")
            .header("ce-specversion", "1.0")
            .header("ce-id", &event.ce_id)
            .header("ce-source", &event.ce_source)
            .header("ce-type", &event.ce_type)
            .header("ce-time", &event.ce_time)
            .header("content-type", "application/json");
        if let Some(subject) = &event.ce_subject {
            req = req.header("ce-subject", subject);
        }
        req.body(Body::from(event.body.clone())).expect("a valid request")
    }

    /// Deliver one claimed event and record the outcome.
    async fn deliver(&self, hosted: &Hosted, event: RoutedEvent, lease: String) -> Delivery {
        let Some(trigger) = self.triggers.get(&event.trigger) else {
            let reason = format!("trigger {} no longer exists", event.trigger);
            return self.dead_letter(&event, &lease, None, reason).await;
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(trigger.timeout, hosted.app.clone().oneshot(Self::request(&event))).await;
        let (status, error) = match answer {
            Ok(Ok(resp)) if is_ack(resp.status()) => {
                tracing::debug!(trigger = %event.trigger, ce_id = %event.ce_id, ms = started.elapsed().as_millis() as u64, "delivered");
                // The caller records acks in batches (`ack`): losing one to a crash only means a redelivery,
                // which at-least-once allows, so they need not cost a commit each.
                return Delivery::Acked;
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                let hint = if status == StatusCode::ACCEPTED {
                    " (202 is not an acknowledgement on Pub/Sub's emulator: answer 200 or 204)"
                } else {
                    ""
                };
                (Some(status.as_u16()), format!("function answered {status}{hint}"))
            }
            Ok(Err(e)) => (None, format!("function failed: {e}")),
            Err(_) => (None, format!("no answer within {}s", trigger.timeout.as_secs())),
        };
        let policy = RetryPolicy {
            max_attempts: trigger.retry.max_delivery_attempts,
            base: scaled(trigger.retry.min_backoff, self.time_scale),
            max: scaled(trigger.retry.max_backoff, self.time_scale),
        };
        match policy.next_delay(event.attempts, rand::random::<f64>(), None) {
            Some(after) => {
                tracing::warn!(trigger = %event.trigger, ce_id = %event.ce_id, attempt = event.attempts, status, error = %error, retry_in_ms = after.as_millis() as u64, "delivery failed; will retry");
                let not_before = micros(Utc::now()) + after.as_micros() as i64;
                let (id, err) = (event.id, error.clone());
                let saved = self
                    .writer
                    .write(move |c| {
                        c.execute(
                            "UPDATE events SET lease = NULL, lease_until = NULL, not_before = ?1, last_status = ?2,
                                               last_error = ?3 WHERE id = ?4 AND lease = ?5",
                            params![not_before, status, err, id, lease],
                        )
                    })
                    .await;
                if let Err(e) = saved {
                    tracing::error!(error = %e, "recording a retry failed; the lease will run out instead");
                }
                Delivery::Retrying { status, after }
            }
            None => {
                let reason = format!("{error} (after {} attempts)", event.attempts);
                self.dead_letter(&event, &lease, status, reason).await
            }
        }
    }

    /// Record delivered events as done, in one write.
    async fn ack(&self, acked: Vec<(i64, String)>) {
        if acked.is_empty() {
            return;
        }
        let done = self
            .writer
            .write(move |c| {
                let mut stmt = c.prepare_cached("DELETE FROM events WHERE id = ?1 AND lease = ?2")?;
                for (id, lease) in &acked {
                    stmt.execute(params![id, lease])?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = done {
            // The functions have these events; they will get them again when the leases end, and dedupe.
            tracing::error!(error = %e, "recording deliveries failed");
        }
    }

    async fn dead_letter(&self, event: &RoutedEvent, lease: &str, status: Option<u16>, reason: String) -> Delivery {
        tracing::error!(trigger = %event.trigger, ce_id = %event.ce_id, reason = %reason, "event dead-lettered");
        let (id, lease, why) = (event.id, lease.to_owned(), reason.clone());
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let moved = self
            .writer
            .write(move |c| {
                let n = c.execute(
                    "INSERT INTO dead_letters (trigger, destination, ce_id, ce_source, ce_type, ce_subject, ce_time,
                                               body, attempts, last_status, reason, dead_lettered_at)
                     SELECT trigger, destination, ce_id, ce_source, ce_type, ce_subject, ce_time, body, attempts,
                            ?1, ?2, ?3 FROM events WHERE id = ?4 AND lease = ?5",
                    params![status, why, now, id, lease],
                )?;
                c.execute("DELETE FROM events WHERE id = ?1 AND lease = ?2", params![id, lease])?;
                Ok(n)
            })
            .await;
        if let Err(e) = moved {
            tracing::error!(error = %e, "recording a dead letter failed");
        }
        Delivery::DeadLettered { status, reason }
    }

    fn lease_for(&self, trigger_timeout: Duration) -> Duration {
        // Long enough that a slow but live delivery is not handed to another worker.
        trigger_timeout + Duration::from_secs(30)
    }

    fn max_timeout(&self) -> Duration {
        self.triggers.triggers.iter().map(|t| t.timeout).max().unwrap_or(Duration::from_secs(60))
    }

    /// Deliver every due event once, waiting for the answers (tests and `deliver_due` callers).
    pub async fn deliver_due(&self) -> Vec<Delivery> {
        let names: Vec<(String, Arc<Hosted>)> =
            self.functions.read().expect("functions lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut out = Vec::new();
        for (name, hosted) in names {
            let claimed = self.claim(&name, 1000, self.lease_for(self.max_timeout())).await.unwrap_or_default();
            let results = futures::future::join_all(claimed.into_iter().map(|(ev, lease)| {
                let hosted = hosted.clone();
                async move {
                    let _permit = hosted.permits.acquire().await.expect("semaphore is never closed");
                    let id = ev.id;
                    (id, lease.clone(), self.deliver(&hosted, ev, lease).await)
                }
            }))
            .await;
            let acked = results.iter().filter(|r| r.2 == Delivery::Acked).map(|(id, lease, _)| (*id, lease.clone()));
            self.ack(acked.collect()).await;
            out.extend(results.into_iter().map(|r| r.2));
        }
        out
    }

    async fn next_due(&self) -> Option<DateTime<Utc>> {
        let hosted: Vec<String> = self.functions.read().expect("functions lock").keys().cloned().collect();
        let hosted = serde_json::to_string(&hosted).expect("names serialize");
        self.writer
            .write(move |c| {
                c.query_row(
                    "SELECT MIN(CASE WHEN lease_until > not_before THEN lease_until ELSE not_before END) FROM events
                     WHERE destination IN (SELECT value FROM json_each(?1))",
                    params![hosted],
                    |r| r.get::<_, Option<i64>>(0),
                )
            })
            .await
            .ok()
            .flatten()
            .and_then(DateTime::from_timestamp_micros)
    }

    /// The delivery loop. Stops claiming when `stop` turns true, then lets in-flight deliveries finish.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tasks: JoinSet<Option<(i64, String)>> = JoinSet::new();
        let mut acked: Vec<(i64, String)> = Vec::new();
        let mut schedules_checked: Option<Instant> = None;
        while !*stop.borrow() {
            while let Some(done) = tasks.try_join_next() {
                acked.extend(done.ok().flatten());
            }
            self.ack(std::mem::take(&mut acked)).await;
            if !self.triggers.schedules.is_empty() && schedules_checked.is_none_or(|at| at.elapsed() >= SCHEDULE_CHECK)
            {
                schedules_checked = Some(Instant::now());
                if let Err(e) = self.fire_schedules(Utc::now()).await {
                    tracing::error!(error = %e, "firing schedules failed");
                }
            }
            let hosted: Vec<(String, Arc<Hosted>)> =
                self.functions.read().expect("functions lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mut claimed_any = false;
            for (name, h) in hosted {
                let free = h.permits.available_permits();
                if free == 0 {
                    continue;
                }
                let claimed = match self.claim(&name, free, self.lease_for(self.max_timeout())).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming events failed");
                        Vec::new()
                    }
                };
                claimed_any |= !claimed.is_empty();
                for (event, lease) in claimed {
                    let permit = h.permits.clone().acquire_owned().await.expect("semaphore is never closed");
                    let (router, h) = (self.clone(), h.clone());
                    tasks.spawn(async move {
                        let id = event.id;
                        let outcome = router.deliver(&h, event, lease.clone()).await;
                        drop(permit);
                        (outcome == Delivery::Acked).then_some((id, lease))
                    });
                }
            }
            if claimed_any {
                continue;
            }
            let wait = self
                .next_due()
                .await
                .map_or(Duration::from_secs(1), |at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .clamp(Duration::from_millis(1), Duration::from_secs(1));
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => acked.extend(done.ok().flatten()),
            }
        }
        while let Some(done) = tasks.join_next().await {
            acked.extend(done.ok().flatten());
        }
        self.ack(acked).await;
    }
}

#[async_trait]
impl EventPublisher for LocalRouter {
    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: BTreeMap<String, String>,
        ordering_key: Option<&str>,
    ) -> PortResult<String> {
        let message_id = uuid::Uuid::now_v7().simple().to_string();
        let matches: Vec<&Trigger> = self.triggers.for_topic(topic).collect();
        if !self.triggers.topics.values().any(|t| t == topic) {
            return Err(PortError::permanent(format!(
                "no topic {topic:?} in environment {:?}",
                self.triggers.environment
            )));
        }
        let event = EventRecord::pubsub(&self.triggers.project, topic, &message_id, &data, &attributes, ordering_key);
        self.record(matches, event).await?;
        Ok(message_id)
    }
}

fn trigger_rows(matches: &[&Trigger]) -> Vec<(String, String)> {
    matches.iter().map(|t| (t.name.clone(), t.destination.clone())).collect()
}

/// Record `event` once per trigger (`rows`: name, destination); an event already recorded is kept as it is.
fn insert_events(
    c: &rusqlite::Connection,
    rows: &[(String, String)],
    event: &EventRecord,
    now: i64,
) -> rusqlite::Result<usize> {
    let mut stmt = c.prepare_cached(
        "INSERT OR IGNORE INTO events (trigger, destination, ce_id, ce_source, ce_type, ce_subject, ce_time,
                                       body, not_before, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )?;
    let mut n = 0;
    for (trigger, destination) in rows {
        let body = event.body_for(trigger);
        n += stmt.execute(params![
            trigger,
            destination,
            event.id,
            event.source,
            event.ty,
            event.subject,
            event.time,
            &body[..],
            now
        ])?;
    }
    Ok(n)
}

/// A CloudEvent before it is bound to a trigger (Pub/Sub bodies name the trigger's subscription).
struct EventRecord {
    id: String,
    source: String,
    ty: &'static str,
    subject: Option<String>,
    time: String,
    body: BodyTemplate,
}

enum BodyTemplate {
    Fixed(Vec<u8>),
    PubSub { project: String, message: serde_json::Value },
}

impl EventRecord {
    fn storage(info: &ObjectInfo) -> Self {
        let time = info.created.to_rfc3339_opts(SecondsFormat::Micros, true);
        let generation = info.generation.to_string();
        let body = json!({
            "kind": "storage#object",
            "id": format!("{}/{}/{}", info.bucket, info.name, generation),
            "name": info.name,
            "bucket": info.bucket,
            "generation": generation,
            "metageneration": "1",
            "contentType": info.content_type,
            "timeCreated": time,
            "updated": time,
            "storageClass": "STANDARD",
            "size": info.size.to_string(),
            "md5Hash": info.md5_base64,
            "crc32c": info.crc32c_base64,
            "metadata": info.metadata,
        });
        // One id per object generation: a finalize recorded twice for one generation is one event.
        let digest = Sha256::digest(format!("{}/{}#{}", info.bucket, info.name, info.generation).as_bytes());
        Self {
            id: hex::encode(&digest[..16]),
            source: format!("//storage.googleapis.com/projects/_/buckets/{}", info.bucket),
            ty: EventType::StorageFinalized.as_str(),
            subject: Some(format!("objects/{}", info.name)),
            time,
            body: BodyTemplate::Fixed(serde_json::to_vec(&body).expect("json")),
        }
    }

    fn pubsub(
        project: &str,
        topic: &str,
        message_id: &str,
        data: &[u8],
        attributes: &BTreeMap<String, String>,
        ordering_key: Option<&str>,
    ) -> Self {
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut message = json!({
            "data": B64.encode(data),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": time,
        });
        if let Some(key) = ordering_key {
            message["orderingKey"] = json!(key);
        }
        Self {
            id: message_id.to_owned(),
            source: format!("//pubsub.googleapis.com/projects/{project}/topics/{topic}"),
            ty: EventType::PubSubPublished.as_str(),
            subject: None,
            time,
            body: BodyTemplate::PubSub { project: project.to_owned(), message },
        }
    }

    fn body_for(&self, trigger: &str) -> Vec<u8> {
        match &self.body {
            BodyTemplate::Fixed(b) => b.clone(),
            BodyTemplate::PubSub { project, message } => {
                let body = json!({ "message": message, "subscription": format!("projects/{project}/subscriptions/{trigger}") });
                serde_json::to_vec(&body).expect("json")
            }
        }
    }
}

/// The embedded object store with Eventarc attached: every finalized generation is recorded as an event for the
/// triggers on its bucket before `put` returns. If recording fails, `put` fails, and the caller's retry writes
/// a new generation (with its event): no generation is ever announced twice, none that is kept goes unannounced.
pub struct RoutedObjectStore {
    inner: Arc<dyn ObjectStore>,
    router: Arc<LocalRouter>,
}

impl RoutedObjectStore {
    pub fn new(inner: Arc<dyn ObjectStore>, router: Arc<LocalRouter>) -> Self {
        Self { inner, router }
    }
}

#[async_trait]
impl ObjectStore for RoutedObjectStore {
    async fn put(&self, object: NewObject<'_>, body: ByteStream) -> PortResult<ObjectInfo> {
        let info = self.inner.put(object, body).await?;
        self.router.object_finalized(&info).await?;
        Ok(info)
    }
    async fn head(&self, bucket: &str, name: &str) -> PortResult<Option<ObjectInfo>> {
        self.inner.head(bucket, name).await
    }
    async fn get(&self, bucket: &str, name: &str) -> PortResult<Option<(ObjectInfo, Bytes)>> {
        self.inner.get(bucket, name).await
    }
    // Only finalize is routed: no trigger listens for deletions.
    async fn delete(&self, bucket: &str, name: &str) -> PortResult<bool> {
        self.inner.delete(bucket, name).await
    }
    async fn list(&self, bucket: &str, prefix: &str, token: Option<&str>, size: usize) -> PortResult<ObjectPage> {
        self.inner.list(bucket, prefix, token, size).await
    }
}
