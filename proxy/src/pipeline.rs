//! Stages 6–8 on a buffered request body: inspect, charge, decide.
//!
//! Pure functions over bytes and the state snapshot, so they are tested
//! without pingora. The proxy calls [`inspect_body`] once per request, either
//! before the upstream is contacted (bodies up to [`EARLY_BODY_LIMIT`]) or at
//! the end of a streamed body (see ARCHITECTURE.md, "When the body is judged").

use crate::decision_log::Decision;
use crate::respond::Refusal;
use crate::state::State;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Largest body judged before any byte (headers included) goes upstream.
/// pingora replays a body read in `request_filter` from its retry buffer,
/// which holds 64 KiB; past that a body is judged at its end instead.
pub const EARLY_BODY_LIMIT: usize = 64 * 1024;

/// What is known about the request before its body.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// App id.
    pub app: &'a str,
    /// Request path.
    pub path: &'a str,
    /// `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// `Content-Encoding`, if any.
    pub content_encoding: Option<&'a str>,
}

/// The body as it will be forwarded, and what was learnt from it.
#[derive(Debug, Clone)]
pub struct BodyVerdict {
    /// Bytes to send upstream.
    pub forward: Bytes,
    /// `allow` or `redact`.
    pub decision: Decision,
    /// `model` field, if the body is a JSON object with one.
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// SHA-256 of the body as received.
    pub prompt_sha256: String,
    /// Finding counts by type.
    pub findings: BTreeMap<String, u64>,
    /// Reasons to record (e.g. monitor-mode findings).
    pub reasons: Vec<String>,
    /// The body was decompressed: drop `Content-Encoding` upstream.
    pub decompressed: bool,
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Judge one complete request body. Never panics; bounded by the body size.
pub fn inspect_body(
    _state: &State,
    _info: &RequestInfo<'_>,
    body: Bytes,
) -> Result<BodyVerdict, Refusal> {
    let prompt_sha256 = hex::encode(Sha256::digest(&body));
    let head: Option<Head> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    Ok(BodyVerdict {
        model: head.as_ref().and_then(|h| h.model.clone()),
        stream: head.and_then(|h| h.stream).unwrap_or(false),
        forward: body,
        decision: Decision::Allow,
        prompt_sha256,
        findings: BTreeMap::new(),
        reasons: Vec::new(),
        decompressed: false,
    })
}
