//! callflow's shared library: the domain (pure), the ports (traits), the adapters (one module per backend) and
//! the function runtime every Cloud Run function is built on.

pub mod adapters;
pub mod domain;
pub mod eventarc;
pub mod ports;
pub mod runtime;
