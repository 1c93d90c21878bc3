//! airlock
pub mod redact;
