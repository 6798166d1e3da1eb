//! Pub/Sub's dead letters: the messages a trigger subscription's dead-letter policy forwarded to a dead-letter
//! topic, waiting in that topic's pull "hold" subscription (`callflow provision` creates it on the emulators,
//! terraform/pubsub.tf on Google Cloud). `callflow dead-letters` lists and replays them through this adapter.
//!
//! It speaks the Pub/Sub REST API (`v1`) with reqwest: looking without consuming needs one unary pull whose leases
//! are handed straight back (`modifyAckDeadline` 0), which a streaming subscriber that manages leases itself does
//! not offer. Authentication is google-cloud-auth's Application Default Credentials, as for the other adapters;
//! with `PUBSUB_EMULATOR_HOST` set, requests go to the emulator without credentials.
//!
//! Pub/Sub adds `CloudPubSubDeadLetterSourceSubscription`, `…SourceSubscriptionProject`,
//! `…SourceDeliveryCount` and `…SourceTopicPublishTime` to a message it dead-letters (the emulator too, the short
//! subscription name in the first). The dead letter is a new message with its own id and publish time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const GOOGLE_V1: &str = "https://pubsub.googleapis.com/v1";
/// Every attribute Pub/Sub adds when it dead-letters a message starts with this; a replay drops them.
pub const DEAD_LETTER_ATTRIBUTE_PREFIX: &str = "CloudPubSubDeadLetter";
pub const SOURCE_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
pub const SOURCE_SUBSCRIPTION_PROJECT: &str = "CloudPubSubDeadLetterSourceSubscriptionProject";
pub const SOURCE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
pub const SOURCE_TOPIC_PUBLISH_TIME: &str = "CloudPubSubDeadLetterSourceTopicPublishTime";
/// Pub/Sub returns at most 1,000 messages per pull.
const PULL_MAX: usize = 1000;
/// A pull may answer with nothing while messages wait (Pub/Sub hands out what it has at hand): only this many
/// empty answers in a row, a short pause apart, are taken to mean the subscription has nothing more.
const EMPTY_PULLS: u32 = 3;
const EMPTY_PAUSE: Duration = Duration::from_millis(250);
/// Ack ids per acknowledge/modifyAckDeadline request: well inside the API's 512 KB request limit.
const ACK_IDS_PER_REQUEST: usize = 500;
/// The lease a replay takes on the messages it is working on (Pub/Sub's maximum), renewed at half-time, so a
/// long replay does not see its messages handed out again (and replayed twice) under it.
const REPLAY_LEASE_SECS: u64 = 600;
/// Messages replayed at a time.
const REPLAY_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The hold subscription is not there: nothing was ever kept, or it was never created.
    #[error("Pub/Sub subscription {0} does not exist")]
    NoSubscription(String),
    #[error("no dead letter {} waiting in Pub/Sub subscription {subscription}", ids.join(", "))]
    NotWaiting { subscription: String, ids: Vec<String> },
    #[error("Pub/Sub: {what}: {status} {message}")]
    Api { what: String, status: u16, message: String },
    #[error("Pub/Sub: {what}: {message}")]
    Transport { what: String, message: String },
    #[error("Pub/Sub: credentials: {0}")]
    Credentials(String),
}

type Result<T, E = DeadLetterError> = std::result::Result<T, E>;

/// One dead letter as it waits in the hold subscription.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldMessage {
    /// Its message id on the dead-letter topic (what `list` shows and `replay --id` takes).
    pub id: String,
    /// When Pub/Sub forwarded it to the dead-letter topic (its publish time there).
    pub dead_lettered_at: String,
    /// When it was first published on its own topic, as Pub/Sub reports it.
    pub published_at: Option<String>,
    /// `projects/P/subscriptions/S`: the subscription whose dead-letter policy gave up on it. None for a message
    /// published straight onto the dead-letter topic.
    pub source_subscription: Option<String>,
    /// Delivery attempts the source subscription made.
    pub delivery_count: Option<u32>,
    /// Every attribute as received, Pub/Sub's dead-letter ones included.
    pub attributes: BTreeMap<String, String>,
    /// The payload: JSON where it parses as JSON (a CloudEvent, a message body of ids), else text where it is
    /// UTF-8, else `{"base64": …}`.
    pub data: Value,
    pub ordering_key: Option<String>,
    /// The payload exactly as Pub/Sub sent it, so a replay republishes the same bytes.
    #[serde(skip)]
    data_base64: String,
}

impl HeldMessage {
    /// The attributes the message had before Pub/Sub dead-lettered it: what a replay publishes.
    pub fn original_attributes(&self) -> BTreeMap<String, String> {
        self.attributes.iter().filter(|(k, _)| !k.starts_with(DEAD_LETTER_ATTRIBUTE_PREFIX)).map(clone_pair).collect()
    }
}

fn clone_pair((k, v): (&String, &String)) -> (String, String) {
    (k.clone(), v.clone())
}

/// Which held messages a replay takes.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    Ids(&'a [String]),
    All,
}

/// How one message's replay ended: republished on `topic` and acknowledged, or left waiting with the reason.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub message: HeldMessage,
    pub result: std::result::Result<String, String>,
    /// How many messages this replay takes (known once they are pulled), for a progress bar.
    pub of: usize,
}

#[derive(Debug, Default)]
pub struct Replayed {
    /// Republished and acknowledged: (message, the topic it went back to).
    pub replayed: Vec<(HeldMessage, String)>,
    /// Left waiting in the hold subscription: (message, why).
    pub failed: Vec<(HeldMessage, String)>,
    /// The scan stopped at its limit: more messages may be waiting than were looked at.
    pub truncated: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullAnswer {
    #[serde(default)]
    received_messages: Vec<Received>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    ack_id: String,
    message: WireMessage,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    publish_time: String,
    #[serde(default)]
    ordering_key: String,
}

struct Leased {
    ack_id: String,
    message: HeldMessage,
}

/// The dead letters of one hold subscription.
pub struct PubSubDeadLetters {
    http: reqwest::Client,
    /// The API root, `…/v1`.
    base: String,
    /// None on the emulator, which takes requests without a token.
    credentials: Option<Credentials>,
    /// `projects/P/subscriptions/S`.
    subscription: String,
}

impl PubSubDeadLetters {
    /// The hold subscription `subscription` of `project`; on the emulator when `PUBSUB_EMULATOR_HOST` is set.
    pub fn connect(project: &str, subscription: &str) -> anyhow::Result<Self> {
        match super::emulator_url("PUBSUB_EMULATOR_HOST") {
            Some(host) => Ok(Self::with(&format!("{host}/v1"), None, project, subscription)),
            None => {
                let credentials = google_cloud_auth::credentials::Builder::default().build()?;
                Ok(Self::with(GOOGLE_V1, Some(credentials), project, subscription))
            }
        }
    }

    /// `v1_base` is the API root (`…/v1`); without credentials no token is sent (emulators).
    pub fn with(v1_base: &str, credentials: Option<Credentials>, project: &str, subscription: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("callflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds (TLS roots load)");
        Self {
            http,
            base: v1_base.trim_end_matches('/').to_owned(),
            credentials,
            subscription: format!("projects/{project}/subscriptions/{subscription}"),
        }
    }

    /// `projects/P/subscriptions/S` of the hold subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// Up to `limit` waiting dead letters, oldest first, left waiting: each is pulled and handed straight back. A
    /// pull hands out what Pub/Sub has at hand, so a message another reader holds at that moment is not listed.
    pub async fn list(&self, limit: usize) -> Result<Vec<HeldMessage>> {
        let leased = self.pull_leased(limit).await?;
        let ack_ids: Vec<&str> = leased.iter().map(|l| l.ack_id.as_str()).collect();
        // The listing is complete already; a failed hand-back only hides the messages until their lease ends.
        if let Err(e) = self.modify_deadline(&ack_ids, 0).await {
            tracing::warn!(error = %e, "pubsub dead letters: handing listed messages back failed; they reappear \
                                        when their lease ends");
        }
        let mut messages: Vec<HeldMessage> = leased.into_iter().map(|l| l.message).collect();
        sort(&mut messages);
        Ok(messages)
    }

    /// Republish the chosen dead letters (at most `limit` are looked at) on the topic of the subscription that gave
    /// up on them, with their data, ordering key and original attributes, then acknowledge each on the hold
    /// subscription. Publish first, acknowledge second: a crash in between delivers a message twice (the functions
    /// dedupe), never loses one. Messages named by id that are not waiting fail the whole replay before anything
    /// is published; a message that cannot be republished stays waiting and is reported. `progress` sees each
    /// message as it ends.
    pub async fn replay(
        &self,
        selection: Selection<'_>,
        limit: usize,
        progress: &mut (dyn FnMut(&Outcome) + Send),
    ) -> Result<Replayed> {
        let leased = self.pull_leased(limit).await?;
        let truncated = leased.len() >= limit;
        let (chosen, others): (Vec<Leased>, Vec<Leased>) = match selection {
            Selection::All => (leased, Vec::new()),
            Selection::Ids(ids) => leased.into_iter().partition(|l| ids.contains(&l.message.id)),
        };
        // What is not replayed goes back at once, for other readers.
        self.release(&others).await;
        if let Selection::Ids(ids) = selection {
            let missing: Vec<String> =
                ids.iter().filter(|id| !chosen.iter().any(|l| &l.message.id == *id)).cloned().collect();
            if !missing.is_empty() {
                self.release(&chosen).await;
                return Err(DeadLetterError::NotWaiting { subscription: self.subscription.clone(), ids: missing });
            }
        }
        let ids: Vec<&str> = chosen.iter().map(|l| l.ack_id.as_str()).collect();
        if let Err(e) = self.modify_deadline(&ids, REPLAY_LEASE_SECS).await {
            self.release(&chosen).await;
            return Err(e);
        }
        let mut leased_at = Instant::now();

        // Each source subscription's topic, looked up once.
        let mut topics: HashMap<String, std::result::Result<String, String>> = HashMap::new();
        for l in &chosen {
            if let Some(source) = &l.message.source_subscription
                && !topics.contains_key(source)
            {
                let topic = self.topic_of(source).await;
                topics.insert(source.clone(), topic);
            }
        }

        let mut done = Replayed { truncated, ..Replayed::default() };
        let of = chosen.len();
        let mut remaining = chosen;
        while !remaining.is_empty() {
            if leased_at.elapsed() > Duration::from_secs(REPLAY_LEASE_SECS / 2) {
                let ids: Vec<&str> = remaining.iter().map(|l| l.ack_id.as_str()).collect();
                // Best effort: a lease that lapses only lets a message be handed out again.
                if let Err(e) = self.modify_deadline(&ids, REPLAY_LEASE_SECS).await {
                    tracing::warn!(error = %e, "pubsub dead letters: renewing the replay's leases failed");
                }
                leased_at = Instant::now();
            }
            let rest = remaining.split_off(remaining.len().min(REPLAY_CONCURRENCY * 16));
            let batch = std::mem::replace(&mut remaining, rest);
            let topics = &topics;
            let mut outcomes = futures::stream::iter(batch)
                .map(|l| async move {
                    let result = match l.message.source_subscription.as_deref().map(|s| &topics[s]) {
                        None => Err(format!(
                            "no {SOURCE_SUBSCRIPTION} attribute: not forwarded by a dead-letter policy, so the topic \
                             to replay to is unknown"
                        )),
                        Some(Err(e)) => Err(e.clone()),
                        Some(Ok(topic)) => self.republish(&l, topic).await.map(|()| topic.clone()),
                    };
                    (l, result)
                })
                .buffer_unordered(REPLAY_CONCURRENCY);
            let mut failed = Vec::new();
            while let Some((l, result)) = outcomes.next().await {
                let outcome = Outcome { message: l.message, result, of };
                progress(&outcome);
                match outcome.result {
                    Ok(topic) => done.replayed.push((outcome.message, topic)),
                    Err(why) => {
                        failed.push(Leased { ack_id: l.ack_id, message: outcome.message.clone() });
                        done.failed.push((outcome.message, why));
                    }
                }
            }
            // What failed waits again now rather than at the end of the long lease.
            self.release(&failed).await;
        }
        Ok(done)
    }

    /// Publish one message on `topic` (`projects/P/topics/T`), then acknowledge it on the hold subscription.
    async fn republish(&self, l: &Leased, topic: &str) -> std::result::Result<(), String> {
        let mut message = json!({ "data": l.message.data_base64, "attributes": l.message.original_attributes() });
        if let Some(key) = &l.message.ordering_key {
            message["orderingKey"] = json!(key);
        }
        self.call(reqwest::Method::POST, &format!("{topic}:publish"), Some(json!({ "messages": [message] })), || {
            format!("publishing on {topic}")
        })
        .await
        .map_err(|e| e.to_string())?;
        self.call(
            reqwest::Method::POST,
            &format!("{}:acknowledge", self.subscription),
            Some(json!({ "ackIds": [l.ack_id] })),
            || format!("acknowledging on {}", self.subscription),
        )
        .await
        .map_err(|e| {
            format!("republished on {topic}, but the dead letter was not acknowledged and waits still: {e}")
        })?;
        Ok(())
    }

    /// The topic (`projects/P/topics/T`) a subscription reads.
    async fn topic_of(&self, subscription: &str) -> std::result::Result<String, String> {
        let answer = self
            .call(reqwest::Method::GET, subscription, None, || format!("reading subscription {subscription}"))
            .await
            .map_err(|e| match e {
                DeadLetterError::Api { status: 404, .. } => {
                    format!(
                        "the source subscription {subscription} no longer exists, so the topic to replay to is unknown"
                    )
                }
                e => e.to_string(),
            })?;
        match answer["topic"].as_str() {
            // Pub/Sub's name for the topic of a subscription whose topic was deleted.
            Some("_deleted-topic_") => Err(format!("the topic of {subscription} was deleted")),
            Some(topic) => Ok(topic.to_owned()),
            None => Err(format!("subscription {subscription} names no topic")),
        }
    }

    /// Pull until `limit` messages are held or Pub/Sub has nothing more to hand out. Every message stays leased
    /// (the subscription's ack deadline) so the next pull brings new ones; on an error, what was held goes back.
    async fn pull_leased(&self, limit: usize) -> Result<Vec<Leased>> {
        let mut held: Vec<Leased> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut empty = 0;
        while held.len() < limit && empty < EMPTY_PULLS {
            let want = (limit - held.len()).min(PULL_MAX);
            let answer = match self.pull(want).await {
                Ok(a) => a,
                Err(e) => {
                    self.release(&held).await;
                    return Err(e);
                }
            };
            let mut new = 0;
            for r in answer.received_messages {
                let message = held_message(r.message);
                match index.get(&message.id) {
                    // Handed out again (an earlier lease of this scan lapsed): the newest ack id is the valid one.
                    Some(&i) => held[i].ack_id = r.ack_id,
                    None => {
                        index.insert(message.id.clone(), held.len());
                        held.push(Leased { ack_id: r.ack_id, message });
                        new += 1;
                    }
                }
            }
            if new == 0 {
                empty += 1;
                tokio::time::sleep(EMPTY_PAUSE).await;
            } else {
                empty = 0;
            }
        }
        Ok(held)
    }

    async fn pull(&self, max: usize) -> Result<PullAnswer> {
        // returnImmediately: a pull that waits for messages would hold the command up on an empty subscription.
        let body = json!({ "maxMessages": max, "returnImmediately": true });
        let url = format!("{}:pull", self.subscription);
        let answer = self
            .call(reqwest::Method::POST, &url, Some(body), || format!("pulling from {}", self.subscription))
            .await
            .map_err(|e| match e {
                DeadLetterError::Api { status: 404, .. } => DeadLetterError::NoSubscription(self.subscription.clone()),
                e => e,
            })?;
        serde_json::from_value(answer).map_err(|e| DeadLetterError::Api {
            what: format!("pulling from {}", self.subscription),
            status: 200,
            message: format!("an answer that is not a pull response: {e}"),
        })
    }

    /// Hand leased messages back now (best effort: otherwise they come back when their lease ends).
    async fn release(&self, leased: &[Leased]) {
        let ids: Vec<&str> = leased.iter().map(|l| l.ack_id.as_str()).collect();
        if let Err(e) = self.modify_deadline(&ids, 0).await {
            tracing::warn!(error = %e, "pubsub dead letters: handing messages back failed; they reappear when their \
                                        lease ends");
        }
    }

    async fn modify_deadline(&self, ack_ids: &[&str], seconds: u64) -> Result<()> {
        for chunk in ack_ids.chunks(ACK_IDS_PER_REQUEST) {
            let body = json!({ "ackIds": chunk, "ackDeadlineSeconds": seconds });
            let url = format!("{}:modifyAckDeadline", self.subscription);
            self.call(reqwest::Method::POST, &url, Some(body), || {
                format!("modifyAckDeadline on {}", self.subscription)
            })
            .await?;
        }
        Ok(())
    }

    /// One API call on `path` (a resource name, with its `:verb`); the answer's JSON, or the error Pub/Sub gave.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        what: impl Fn() -> String,
    ) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(credentials) = &self.credentials {
            let headers = match credentials.headers(http::Extensions::new()).await {
                Ok(CacheableResource::New { data, .. }) => data,
                Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
                Err(e) => return Err(DeadLetterError::Credentials(e.to_string())),
            };
            request = request.headers(headers);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeadLetterError::Transport { what: what(), message: super::http::describe(e) })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| DeadLetterError::Transport { what: what(), message: super::http::describe(e) })?;
        if !status.is_success() {
            // Google's error shape: {"error": {"code", "message", "status"}}; anything else is quoted as is.
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    let e = &v["error"];
                    let message = e["message"].as_str()?;
                    Some(match e["status"].as_str() {
                        Some(s) => format!("{s}: {message}"),
                        None => message.to_owned(),
                    })
                })
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(DeadLetterError::Api { what: what(), status: status.as_u16(), message });
        }
        if text.trim().is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_str(&text).map_err(|e| DeadLetterError::Api {
            what: what(),
            status: status.as_u16(),
            message: format!("an answer that is not JSON: {e}"),
        })
    }
}

fn sort(messages: &mut [HeldMessage]) {
    // RFC 3339 UTC times of one format sort as text; the id breaks ties.
    messages.sort_by(|a, b| a.dead_lettered_at.cmp(&b.dead_lettered_at).then_with(|| a.id.cmp(&b.id)));
}

fn held_message(m: WireMessage) -> HeldMessage {
    let source_subscription = m.attributes.get(SOURCE_SUBSCRIPTION).map(|s| {
        if s.starts_with("projects/") {
            s.clone()
        } else {
            let project = m.attributes.get(SOURCE_SUBSCRIPTION_PROJECT).map_or("-", String::as_str);
            format!("projects/{project}/subscriptions/{s}")
        }
    });
    HeldMessage {
        id: m.message_id,
        dead_lettered_at: m.publish_time,
        published_at: m.attributes.get(SOURCE_TOPIC_PUBLISH_TIME).cloned(),
        source_subscription,
        delivery_count: m.attributes.get(SOURCE_DELIVERY_COUNT).and_then(|c| c.parse().ok()),
        data: decode_data(&m.data),
        attributes: m.attributes,
        ordering_key: Some(m.ordering_key).filter(|k| !k.is_empty()),
        data_base64: m.data,
    }
}

/// The payload for reading: JSON where it is JSON, text where it is UTF-8, the base64 as sent otherwise.
fn decode_data(base64: &str) -> Value {
    let Ok(bytes) = B64.decode(base64) else { return json!({ "base64": base64 }) };
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
        return value;
    }
    match String::from_utf8(bytes) {
        Ok(text) => Value::String(text),
        Err(_) => json!({ "base64": base64 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_reads_as_pubsub_sent_it_and_replays_without_pubsubs_attributes() {
        let wire = WireMessage {
            data: B64.encode(br#"{"call_id":"CAL1"}"#),
            attributes: BTreeMap::from([
                ("tenant".to_owned(), "acme".to_owned()),
                (SOURCE_SUBSCRIPTION.to_owned(), "eventarc-analysis-complete".to_owned()),
                (SOURCE_SUBSCRIPTION_PROJECT.to_owned(), "p".to_owned()),
                (SOURCE_DELIVERY_COUNT.to_owned(), "5".to_owned()),
                (SOURCE_TOPIC_PUBLISH_TIME.to_owned(), "2026-01-01T00:00:00Z".to_owned()),
            ]),
            message_id: "7".to_owned(),
            publish_time: "2026-01-01T00:00:05Z".to_owned(),
            ordering_key: String::new(),
        };
        let m = held_message(wire);
        assert_eq!(m.source_subscription.as_deref(), Some("projects/p/subscriptions/eventarc-analysis-complete"));
        assert_eq!(m.delivery_count, Some(5));
        assert_eq!(m.published_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(m.data, json!({"call_id": "CAL1"}));
        assert_eq!(m.ordering_key, None);
        assert_eq!(m.original_attributes(), BTreeMap::from([("tenant".to_owned(), "acme".to_owned())]));
    }

    #[test]
    fn data_that_is_not_json_reads_as_text_or_stays_base64() {
        assert_eq!(decode_data(&B64.encode("plain words")), json!("plain words"));
        let binary = B64.encode([0xff, 0xfe, 0x00]);
        assert_eq!(decode_data(&binary), json!({ "base64": binary }));
        assert_eq!(decode_data("not base64!"), json!({ "base64": "not base64!" }));
    }
}
