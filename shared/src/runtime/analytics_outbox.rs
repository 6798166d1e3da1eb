//! Delivering analytics rows from the outbox: every stage commits its row with its state change (so a row is
//! never lost nor invented), and whoever has CPU at hand sends due rows to the sink in one batch. The host's
//! worker does it continuously; a function on Cloud Run does it at the end of the request that made the row.

use std::time::Duration;

use crate::domain::analytics::AnalyticsRow;
use crate::domain::work::{Completion, RetryPolicy, WorkKind, not_before};
use crate::ports::{AnalyticsSink, Clock, StateStore};

pub const BATCH: usize = 500;
const LEASE: Duration = Duration::from_secs(60);

/// Send up to `BATCH` due analytics rows to the sink in one insert. Returns how many were delivered. A failed
/// insert puts the rows back with backoff; a row that cannot be read is dead-lettered.
pub async fn flush(state: &dyn StateStore, sink: &dyn AnalyticsSink, clock: &dyn Clock) -> usize {
    let items = match state.claim_work(&[WorkKind::Analytics], BATCH, LEASE).await {
        Ok(items) if !items.is_empty() => items,
        Ok(_) => return 0,
        Err(e) => {
            tracing::error!(error = %e, "claiming analytics rows failed");
            return 0;
        }
    };
    let (mut rows, mut good) = (Vec::with_capacity(items.len()), Vec::with_capacity(items.len()));
    for item in items {
        match serde_json::from_value::<AnalyticsRow>(item.payload.clone()) {
            Ok(row) => {
                rows.push(row);
                good.push(item);
            }
            Err(e) => {
                let poison =
                    Completion { dead_letter: Some(format!("unreadable analytics row: {e}")), ..Completion::default() };
                let _ = state.complete_work(&item, poison).await;
            }
        }
    }
    match sink.insert(&rows).await {
        // If this fails the rows are delivered again when their lease ends; the sink drops them by insert_id.
        Ok(()) => state.complete_batch(&good).await.unwrap_or(0),
        Err(e) => {
            tracing::warn!(error = %e, rows = rows.len(), "analytics insert failed; will retry");
            let policy =
                RetryPolicy { max_attempts: u32::MAX, base: Duration::from_secs(1), max: Duration::from_secs(300) };
            for item in &good {
                let delay = policy.next_delay(item.attempts, rand::random::<f64>(), None).unwrap_or(policy.max);
                let _ = state.retry_work(item, not_before(clock.now(), delay), &e.message).await;
            }
            0
        }
    }
}
