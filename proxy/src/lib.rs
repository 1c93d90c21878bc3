//! Airlock: a node agent that stands between AI micro apps and their inference gateway.
//!
//! The modules follow one request's walk (see `ARCHITECTURE.md`):
//! [`route`] picks the gateway and its TLS, [`pipeline`] judges the body,
//! [`respond`] turns refusals into provider-shaped answers, [`proxy`] is the
//! thin pingora dispatcher, [`decision_log`] and [`metrics`] record the
//! outcome. Around them: [`config`], [`state`], [`admin`] and [`server`].

#![allow(
    clippy::result_large_err,
    reason = "a Refusal is built once per refused request, off the hot path; boxing it buys nothing"
)]

pub mod admin;
pub mod agent;
pub mod budget;
pub mod config;
pub mod decision_log;
pub mod identity;
pub mod intercept;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod state;
pub mod tokens;
pub mod usage;
