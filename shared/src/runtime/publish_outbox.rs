//! Publishing messages from the outbox: a stage commits the message with the state change it announces (so a
//! message is never lost, and never sent for a change that did not commit), then publishes it before answering.
//! A failed publish stays in the outbox with backoff for the next flush, here or in another function; a
//! message published twice (a crash between publishing and marking it done) is a redelivery, which every
//! consumer handles anyway.

use std::time::Duration;

use bytes::Bytes;

use crate::domain::work::{Completion, PublishMessage, RetryPolicy, WorkKind, not_before};
use crate::ports::{Clock, EventPublisher, StateStore};

const LEASE: Duration = Duration::from_secs(60);

/// Publish up to `limit` due messages. Returns how many were published.
pub async fn flush(state: &dyn StateStore, publisher: &dyn EventPublisher, clock: &dyn Clock, limit: usize) -> usize {
    let items = match state.claim_work(&[WorkKind::Publish], limit, LEASE).await {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(error = %e, "claiming messages to publish failed");
            return 0;
        }
    };
    let policy = RetryPolicy { max_attempts: u32::MAX, base: Duration::from_secs(1), max: Duration::from_secs(300) };
    let mut published = Vec::with_capacity(items.len());
    for item in items {
        let message = match serde_json::from_value::<PublishMessage>(item.payload.clone()) {
            Ok(m) => m,
            Err(e) => {
                let poison =
                    Completion { dead_letter: Some(format!("unreadable message: {e}")), ..Completion::default() };
                let _ = state.complete_work(&item, poison).await;
                continue;
            }
        };
        let data = Bytes::from(message.data.to_string());
        match publisher.publish(&message.topic, data, message.attributes.clone(), None).await {
            Ok(_) => published.push(item),
            Err(e) => {
                tracing::warn!(error = %e, topic = %message.topic, "publish failed; will retry");
                let delay = policy.next_delay(item.attempts, rand::random::<f64>(), None).unwrap_or(policy.max);
                let _ = state.retry_work(&item, not_before(clock.now(), delay), &e.message).await;
            }
        }
    }
    state.complete_batch(&published).await.unwrap_or(0)
}
