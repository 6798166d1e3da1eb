//! Sending notifications from the outbox. A delivery commits its notifications with its own outcome, then this
//! sends them: each is retried on its own with backoff and, after `MAX_ATTEMPTS`, kept as a dead letter — a
//! failing Slack or mail service never holds back or repeats a CRM push. A notification sent twice (a crash
//! between sending and marking it done) is possible; Slack and SendGrid offer no idempotency key to prevent it.

use std::time::Duration;

use crate::domain::work::{Completion, NoticeWork, RetryPolicy, WorkKind, not_before};
use crate::domain::workflow::NoticeAddress;
use crate::ports::{Clock, SecretSource, StateStore, VendorError};
use crate::runtime::lead_delivery::Notifiers;

const LEASE: Duration = Duration::from_secs(60);
pub const MAX_ATTEMPTS: u32 = 8;

/// Send up to `limit` due notifications. Returns how many were sent.
pub async fn flush(
    state: &dyn StateStore,
    notifiers: &Notifiers,
    secrets: &dyn SecretSource,
    clock: &dyn Clock,
    limit: usize,
) -> usize {
    let items = match state.claim_work(&[WorkKind::Notify], limit, LEASE).await {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(error = %e, "claiming notifications failed");
            return 0;
        }
    };
    let policy =
        RetryPolicy { max_attempts: MAX_ATTEMPTS, base: Duration::from_secs(5), max: Duration::from_secs(900) };
    let mut sent = Vec::with_capacity(items.len());
    for item in items {
        let work: NoticeWork = match serde_json::from_value(item.payload.clone()) {
            Ok(w) => w,
            Err(e) => {
                let poison =
                    Completion { dead_letter: Some(format!("unreadable notification: {e}")), ..Completion::default() };
                let _ = state.complete_work(&item, poison).await;
                continue;
            }
        };
        let result = match secrets.secret(work.address.credential()).await {
            Ok(credential) => {
                let notifier = match work.address {
                    NoticeAddress::Slack { .. } => &notifiers.slack,
                    NoticeAddress::Email { .. } => &notifiers.email,
                };
                notifier.send(&work.address, &work.notice, &credential).await
            }
            Err(e) if e.retryable => Err(VendorError::Transport(format!("secret: {e}"))),
            Err(e) => Err(VendorError::Status { status: 400, message: format!("secret: {e}") }),
        };
        let channel = work.address.channel();
        match result {
            Ok(()) => {
                tracing::info!(rule = %work.rule, channel, call_id = %item.call_id, "notification sent");
                sent.push(item);
            }
            Err(e) => {
                let delay = e
                    .is_retryable()
                    .then(|| policy.next_delay(item.attempts, rand::random::<f64>(), e.retry_after()))
                    .flatten();
                match delay {
                    Some(delay) => {
                        tracing::warn!(rule = %work.rule, channel, error = %e, "notification failed; will retry");
                        let _ = state.retry_work(&item, not_before(clock.now(), delay), &e.to_string()).await;
                    }
                    None => {
                        tracing::error!(rule = %work.rule, channel, error = %e, "notification failed for good");
                        let reason = format!("{channel} notification ({}): {e}", work.rule);
                        let _ = state
                            .complete_work(&item, Completion { dead_letter: Some(reason), ..Completion::default() })
                            .await;
                    }
                }
            }
        }
    }
    state.complete_batch(&sent).await.unwrap_or(0)
}
