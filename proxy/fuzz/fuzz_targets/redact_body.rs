//! Body → redact → output: never panics; JSON output is always valid JSON
//! and redacting it again finds nothing new.
#![no_main]

use airlock::redact::{Redactor, ScanRequest};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static R: OnceLock<Redactor> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let r = R.get_or_init(Redactor::builtin);
    // first byte picks the content type and encoding, the rest is the body
    let (sel, body) = match data.split_first() {
        Some((s, b)) => (*s, b),
        None => return,
    };
    let ct = match sel % 3 {
        0 => Some("application/json"),
        1 => Some("text/plain"),
        _ => None,
    };
    let enc = match (sel / 3) % 5 {
        1 => Some("gzip"),
        2 => Some("deflate"),
        3 => Some("br"),
        4 => Some("zstd"),
        _ => None,
    };
    let req = ScanRequest {
        body,
        content_type: ct,
        content_encoding: enc,
        path: "/v1/chat/completions",
        app: "fuzz",
        max_bytes: 1 << 20,
        overrides: None,
    };
    if let Ok(out) = r.redact(&req) {
        if let (Some(b), Some("application/json")) = (&out.body, ct) {
            assert!(serde_json::from_slice::<serde_json::Value>(b).is_ok());
            let again = ScanRequest {
                body: b,
                content_encoding: None,
                ..req
            };
            let second = r.redact(&again).map(|o| o.body.is_none());
            assert_eq!(second, Ok(true));
        }
    }
});
