//! SQLite adapters for the embedded mode: the state store and the analytics sink.

mod analytics;
mod state;
mod writer;

pub use analytics::{SqliteAnalytics, SqliteAnalyticsReader};
pub use state::SqliteStateStore;
pub use writer::{Durability, Writer, open as open_connection};
