//! The domain: calls, tenants, states, webhook payloads and signatures. Pure: no I/O, no clocks, no adapters.

pub mod analysis;
pub mod analytics;
pub mod breaker;
pub mod call;
pub mod callrail;
pub mod cleanup;
pub mod crm;
pub mod delivery;
pub mod form;
pub mod geo;
pub mod ids;
pub mod intake;
pub mod pii;
pub mod redact;
pub mod retention;
pub mod rules;
pub mod signature;
pub mod stage_object;
pub mod tenant;
pub mod transcript;
pub mod work;
pub mod workflow;

pub use call::{CallRecord, CallSource, CallState, LeadDetails};
pub use ids::{CallId, TenantId};
