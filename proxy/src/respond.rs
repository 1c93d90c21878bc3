//! Turning a refusal into the HTTP response the app's SDK understands.
//!
//! A deny is a value, not an error: stages produce a [`Refusal`]; this module
//! is the one place that decides its status, headers and provider-shaped body.

use crate::config::Provider;
use crate::decision_log::Decision;

/// A request Airlock will not forward (or could not complete), as data.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// HTTP status for the app.
    pub status: u16,
    /// Recorded decision (`deny` or `error`).
    pub decision: Decision,
    /// Stable reason code for the decision record (`unknown_destination`, `body_too_large`, …).
    pub reason: String,
    /// Human-readable message for the app.
    pub message: String,
    /// Extra response headers (e.g. `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// A body already in the provider's shape (budget 429s), used instead of [`Refusal::body`]'s.
    pub body: Option<Vec<u8>>,
    /// Further reasons for the decision record (each policy reason).
    pub more_reasons: Vec<String>,
    /// What was learnt of the body before the refusal, for the decision record.
    pub seen: Option<Seen>,
}

/// Body facts known when a refusal happened after the body was read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Seen {
    /// The request's `model`.
    pub model: Option<String>,
    /// SHA-256 of the body as the app sent it.
    pub prompt_sha256: Option<String>,
    /// Findings by type.
    pub findings: std::collections::BTreeMap<String, u64>,
}

impl Refusal {
    /// A policy-style deny.
    pub fn deny(status: u16, reason: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            decision: Decision::Deny,
            reason: reason.to_string(),
            message: message.into(),
            headers: Vec::new(),
            body: None,
            more_reasons: Vec::new(),
            seen: None,
        }
    }

    /// A failure to complete the request.
    pub fn error(status: u16, reason: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            decision: Decision::Error,
            reason: reason.to_string(),
            message: message.into(),
            headers: Vec::new(),
            body: None,
            more_reasons: Vec::new(),
            seen: None,
        }
    }

    /// The JSON body in the provider's own error shape.
    pub fn body(&self, provider: Provider) -> Vec<u8> {
        if let Some(b) = &self.body {
            return b.clone();
        }
        let kind = error_type(provider, self.status);
        let v = match provider {
            Provider::Openai => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": kind,
                    "param": null,
                    "code": self.reason,
                }
            }),
            Provider::Anthropic => serde_json::json!({
                "type": "error",
                "error": { "type": kind, "message": self.message }
            }),
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// The `type` string each provider's SDK maps to an exception class.
fn error_type(provider: Provider, status: u16) -> &'static str {
    match (provider, status) {
        (Provider::Openai, 400 | 413 | 415) => "invalid_request_error",
        (Provider::Openai, 401) => "authentication_error",
        (Provider::Openai, 403) => "permission_denied",
        (Provider::Openai, 404) => "not_found_error",
        (Provider::Openai, 429) => "rate_limit_exceeded",
        (Provider::Openai, 504) => "timeout",
        (Provider::Openai, _) => "api_error",
        (Provider::Anthropic, 400 | 415) => "invalid_request_error",
        (Provider::Anthropic, 401) => "authentication_error",
        (Provider::Anthropic, 403) => "permission_error",
        (Provider::Anthropic, 404) => "not_found_error",
        (Provider::Anthropic, 413) => "request_too_large",
        (Provider::Anthropic, 429) => "rate_limit_error",
        (Provider::Anthropic, 504) => "timeout_error",
        (Provider::Anthropic, _) => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let r = Refusal::deny(403, "unknown_destination", "no");
        let o: serde_json::Value = serde_json::from_slice(&r.body(Provider::Openai)).unwrap();
        assert_eq!(o["error"]["type"], "permission_denied");
        assert_eq!(o["error"]["code"], "unknown_destination");
        let a: serde_json::Value = serde_json::from_slice(&r.body(Provider::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "permission_error");
    }
}
