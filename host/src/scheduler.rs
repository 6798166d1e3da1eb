//! Cloud Scheduler for the emulator topology (`callflow scheduler`): Cloud Scheduler has no emulator, so this
//! process plays its part. It reads the schedules of `eventarc/triggers.toml` (`[[schedule]]`: name, five-field
//! UTC cron, topic role, optional JSON body) and, at each due slot, publishes one message on the schedule's topic
//! on the Pub/Sub emulator — the body, with attributes `schedule` (the name) and `schedule_time` (the slot, RFC
//! 3339), as the local router does in the embedded mode; the topic's push subscription delivers it to the function.
//!
//! Slots, as the local router's `fire_schedules`: nothing fires on first sight (the scheduler starts by
//! remembering the time it started), then each slot fires once when it is due; after a stall (a suspended
//! process, a publish that kept failing) only the latest due slot fires, not one per missed slot. A failed
//! publish leaves the slot due and is tried again at the next tick.
//!
//! Unlike the router, it keeps nothing across restarts: the slots that fell due while it was down are not fired
//! (the next one after the restart is), and a publish whose answer was lost may be sent twice. Both are harmless
//! for cleanup-scheduled, which names a run by its `schedule_time` and whose jobs are idempotent.
//!
//! `callflow scheduler --fire-now NAME` publishes one message for that schedule now (slot: the current second) and
//! exits: operators and tests use it. On Google Cloud, Cloud Scheduler fires the schedules (terraform creates its
//! jobs); the loop refuses to run outside the emulators so that no schedule fires twice there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use callflow::eventarc::{Schedule, Triggers};
use callflow::ports::{EventPublisher, PortResult};
use chrono::{DateTime, SecondsFormat, Utc};

/// The attributes of a schedule's message (the local router sets the same).
pub fn attributes(schedule: &Schedule, slot: DateTime<Utc>) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("schedule".to_owned(), schedule.name.clone()),
        ("schedule_time".to_owned(), slot.to_rfc3339_opts(SecondsFormat::Secs, true)),
    ])
}

/// Publish one message for `schedule`'s `slot`; the message id.
pub async fn fire(publisher: &dyn EventPublisher, schedule: &Schedule, slot: DateTime<Utc>) -> PortResult<String> {
    publisher.publish(&schedule.topic, Bytes::from(schedule.body()), attributes(schedule, slot), None).await
}

/// Each schedule's last fire, in memory (see the module's notes on restarts).
#[derive(Debug, Default)]
pub struct Slots {
    last: HashMap<String, DateTime<Utc>>,
}

impl Slots {
    /// The slot to fire for `schedule` at `now`, if one is due: none on first sight (`now` is remembered as the
    /// last fire) or while the first slot after the last fire is ahead; else the latest slot at or before `now`
    /// (one, however many passed). Nothing is recorded until [`Slots::fired`].
    pub fn due(&mut self, schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Some(last) = self.last.get(&schedule.name).copied() else {
            self.last.insert(schedule.name.clone(), now);
            return None;
        };
        let next = schedule.next_after(last).filter(|next| *next <= now)?;
        Some(schedule.latest_at_or_before(now).filter(|slot| *slot >= next).unwrap_or(next))
    }

    /// `slot` of `schedule` was published.
    pub fn fired(&mut self, schedule: &Schedule, slot: DateTime<Utc>) {
        self.last.insert(schedule.name.clone(), slot);
    }
}

/// The scheduler's loop over its schedules.
pub struct Scheduler {
    schedules: Vec<Schedule>,
    publisher: Arc<dyn EventPublisher>,
    slots: Slots,
}

impl Scheduler {
    pub fn new(schedules: Vec<Schedule>, publisher: Arc<dyn EventPublisher>) -> Self {
        Self { schedules, publisher, slots: Slots::default() }
    }

    /// One pass at `now`: publish every due slot; the (schedule, slot) pairs published.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
        let mut fired = Vec::new();
        for schedule in &self.schedules {
            let Some(slot) = self.slots.due(schedule, now) else { continue };
            match fire(self.publisher.as_ref(), schedule, slot).await {
                Ok(id) => {
                    self.slots.fired(schedule, slot);
                    tracing::info!(schedule = %schedule.name, topic = %schedule.topic, schedule_time = %slot.to_rfc3339_opts(SecondsFormat::Secs, true),
                        message_id = %id, "schedule fired");
                    fired.push((schedule.name.clone(), slot));
                }
                Err(e) => {
                    tracing::warn!(schedule = %schedule.name, topic = %schedule.topic, schedule_time = %slot.to_rfc3339_opts(SecondsFormat::Secs, true),
                        error = %e, "schedule not published; trying again");
                }
            }
        }
        fired
    }

    /// Tick every `interval` until `stop` turns true.
    pub async fn run(mut self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.tick(Utc::now()).await;
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// `callflow scheduler [--fire-now NAME]`.
pub async fn command(triggers: Triggers, fire_now: Option<String>, interval: Duration) -> anyhow::Result<()> {
    let publisher: Arc<dyn EventPublisher> =
        Arc::new(callflow::adapters::pubsub::PubSubPublisher::connect(&triggers.project).await?);
    if let Some(name) = fire_now {
        let known = || triggers.schedules.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        let schedule = triggers
            .schedule(&name)
            .with_context(|| format!("no schedule {name:?} in eventarc/triggers.toml (schedules: {})", known()))?;
        let slot = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now is a valid time");
        let id = fire(publisher.as_ref(), schedule, slot)
            .await
            .with_context(|| format!("publishing schedule {name} on {}", schedule.topic))?;
        println!(
            "{name}: published message {id} on {} (schedule_time {})",
            schedule.topic,
            attributes(schedule, slot)["schedule_time"]
        );
        return Ok(());
    }
    anyhow::ensure!(
        callflow::adapters::emulator_url("PUBSUB_EMULATOR_HOST").is_some(),
        "PUBSUB_EMULATOR_HOST is not set: the scheduler stands in for Cloud Scheduler on the emulators only \
         (on Google Cloud, Cloud Scheduler fires the schedules)"
    );
    for s in &triggers.schedules {
        let next = s.next_after(Utc::now()).map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
        tracing::info!(schedule = %s.name, topic = %s.topic, cron = s.cron.as_str(), next = %next, "scheduling");
    }
    let scheduler = Scheduler::new(triggers.schedules.clone(), publisher);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler.run(interval, stop_rx));
    callflow::runtime::serve::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = running.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use callflow::ports::PortError;

    use super::*;

    type Sent = Vec<(String, Bytes, BTreeMap<String, String>)>;

    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Sent>,
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl EventPublisher for Recorder {
        async fn publish(
            &self,
            topic: &str,
            data: Bytes,
            attributes: BTreeMap<String, String>,
            _ordering_key: Option<&str>,
        ) -> PortResult<String> {
            if *self.fail.lock().unwrap() {
                return Err(PortError::retryable("pubsub down"));
            }
            let mut sent = self.sent.lock().unwrap();
            sent.push((topic.to_owned(), data, attributes));
            Ok(sent.len().to_string())
        }
    }

    fn cleanup() -> Schedule {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../eventarc");
        callflow::eventarc::load(&dir, "emulators").unwrap().schedule("cleanup").expect("the cleanup schedule").clone()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[tokio::test]
    async fn each_due_slot_fires_once_never_on_first_sight_and_once_after_a_stall() {
        let recorder = Arc::new(Recorder::default());
        let mut scheduler = Scheduler::new(vec![cleanup()], recorder.clone());
        // First sight, even exactly on a slot: nothing.
        assert!(scheduler.tick(at("2026-03-01T10:00:00Z")).await.is_empty());
        assert!(scheduler.tick(at("2026-03-01T10:14:59Z")).await.is_empty());
        let fired = scheduler.tick(at("2026-03-01T10:15:00.4Z")).await;
        assert_eq!(fired, [("cleanup".to_owned(), at("2026-03-01T10:15:00Z"))]);
        assert!(scheduler.tick(at("2026-03-01T10:15:01Z")).await.is_empty(), "a slot fires once");
        // Two hours of nothing (eight slots): one message, for the latest slot.
        let fired = scheduler.tick(at("2026-03-01T12:20:00Z")).await;
        assert_eq!(fired, [("cleanup".to_owned(), at("2026-03-01T12:15:00Z"))]);
        assert!(scheduler.tick(at("2026-03-01T12:29:59Z")).await.is_empty());

        let sent = recorder.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        let (topic, data, attrs) = &sent[0];
        assert_eq!(topic, "scheduled");
        let body: serde_json::Value = serde_json::from_slice(data).unwrap();
        assert_eq!(body["jobs"][2], "stuck-calls");
        assert_eq!(attrs["schedule"], "cleanup");
        assert_eq!(attrs["schedule_time"], "2026-03-01T10:15:00Z");
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_slot_due() {
        let recorder = Arc::new(Recorder::default());
        let mut scheduler = Scheduler::new(vec![cleanup()], recorder.clone());
        scheduler.tick(at("2026-03-01T10:01:00Z")).await;
        *recorder.fail.lock().unwrap() = true;
        assert!(scheduler.tick(at("2026-03-01T10:15:00Z")).await.is_empty());
        *recorder.fail.lock().unwrap() = false;
        let fired = scheduler.tick(at("2026-03-01T10:15:02Z")).await;
        assert_eq!(fired, [("cleanup".to_owned(), at("2026-03-01T10:15:00Z"))]);
        assert_eq!(recorder.sent.lock().unwrap().len(), 1);
    }
}
