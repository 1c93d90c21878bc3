//! Unit tests of the redact module.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

pub(crate) fn chat(content: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}]
    }))
    .unwrap()
}

pub(crate) fn req(body: &[u8]) -> ScanRequest<'_> {
    ScanRequest {
        body,
        content_type: Some("application/json"),
        content_encoding: None,
        path: "/v1/chat/completions",
        app: "test-app",
        max_bytes: 1 << 20,
        overrides: None,
    }
}

#[test]
fn email_is_masked() {
    let r = Redactor::builtin();
    let body = chat("mail me at alice@example.com please");
    let out = r.redact(&req(&body)).unwrap();
    let s = String::from_utf8(out.body.unwrap()).unwrap();
    assert!(s.contains("[REDACTED:EMAIL]"), "{s}");
    assert!(!s.contains("alice@"));
}

