//! airlock
