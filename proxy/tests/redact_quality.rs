//! Quality of the `redact` stage through its public API: the labelled corpus
//! (recall/precision per type, printed and enforced), property tests,
//! evasions, refusals, configuration errors and the fuzz seed corpus.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use airlock::redact::{findings_by_type, Action, Finding, Outcome, Redactor, Refusal, ScanRequest};
use proptest::prelude::*;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chat(content: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}]
    }))
    .unwrap()
}

fn req<'a>(body: &'a [u8], ct: Option<&'a str>) -> ScanRequest<'a> {
    ScanRequest {
        body,
        content_type: ct,
        content_encoding: None,
        path: "/v1/chat/completions",
        app: "quality",
        max_bytes: 1 << 20,
        overrides: None,
    }
}

fn run(r: &Redactor, body: &[u8]) -> Outcome {
    r.redact(&req(body, Some("application/json"))).unwrap()
}

fn out_str(o: &Outcome, input: &[u8]) -> String {
    String::from_utf8(o.body.clone().unwrap_or_else(|| input.to_vec())).unwrap()
}

/// The types of an outcome's findings, in body order.
fn kinds(o: &Outcome) -> Vec<&str> {
    o.findings.iter().map(|f| &*f.kind).collect()
}

/// The rules of an outcome's findings, in body order.
fn rules(o: &Outcome) -> Vec<&str> {
    o.findings.iter().map(|f| &*f.rule).collect()
}

/// An outcome's findings of one type.
fn of_kind<'a>(o: &'a Outcome, kind: &str) -> Vec<&'a Finding> {
    o.findings.iter().filter(|f| f.kind == kind).collect()
}

/// Decode the raw JSON-string bytes of a finding's span.
fn span_text(body: &[u8], start: usize, end: usize) -> String {
    let raw = std::str::from_utf8(&body[start..end]).unwrap();
    serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap_or_else(|_| raw.to_string())
}

// ---------------------------------------------------------------- corpus

#[derive(serde::Deserialize)]
struct Line {
    text: String,
    expect: Vec<Expect>,
    class: String,
}

#[derive(serde::Deserialize)]
struct Expect {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

const STRUCTURED: &[&str] = &["EMAIL", "PHONE", "CARD", "SSN", "IBAN", "DOB"];

#[test]
fn corpus_recall_and_precision() {
    let path = manifest().join("tests/data/redact/corpus.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let r = Redactor::builtin();
    // type -> (expected, found, findings, true findings)
    let mut stats: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    let mut benign_fp: Vec<String> = Vec::new();
    let mut misses: Vec<String> = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let line: Line = serde_json::from_str(l).unwrap();
        let body = chat(&line.text);
        let out = run(&r, &body);
        let got: Vec<(String, String)> = out
            .findings
            .iter()
            .map(|f| (f.kind.to_string(), span_text(&body, f.start, f.end)))
            .collect();
        let matches = |e: &Expect, g: &(String, String)| {
            g.0 == e.kind
                && (g.1 == e.value
                    || (g.1.len() >= 4 && (g.1.contains(&e.value) || e.value.contains(&g.1))))
        };
        for e in &line.expect {
            let s = stats.entry(e.kind.clone()).or_default();
            s[0] += 1;
            if got.iter().any(|g| matches(e, g)) {
                s[1] += 1;
            } else {
                misses.push(format!(
                    "line {}: {} not found in {:?} (got {:?})",
                    n + 1,
                    e.kind,
                    line.text,
                    got
                ));
            }
        }
        for g in &got {
            let s = stats.entry(g.0.clone()).or_default();
            s[2] += 1;
            if line.expect.iter().any(|e| matches(e, g)) {
                s[3] += 1;
            } else if line.class.starts_with("benign") {
                benign_fp.push(format!(
                    "line {} ({}): {} on {:?}",
                    n + 1,
                    line.class,
                    g.0,
                    line.text
                ));
            }
        }
    }
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>9}",
        "type", "expected", "found", "recall", "precision"
    );
    for (k, s) in &stats {
        let recall = if s[0] == 0 {
            1.0
        } else {
            s[1] as f64 / s[0] as f64
        };
        let precision = if s[2] == 0 {
            1.0
        } else {
            s[3] as f64 / s[2] as f64
        };
        println!(
            "{k:<16} {:>8} {:>8} {:>8.1}% {:>8.1}%",
            s[0],
            s[1],
            recall * 100.0,
            precision * 100.0
        );
    }
    for m in misses.iter().take(20) {
        println!("MISS {m}");
    }
    for f in benign_fp.iter().take(20) {
        println!("FALSE POSITIVE {f}");
    }
    for (k, s) in &stats {
        if s[0] > 0 {
            let recall = s[1] as f64 / s[0] as f64;
            let floor = if STRUCTURED.contains(&k.as_str()) {
                0.99
            } else {
                0.98
            };
            assert!(recall >= floor, "{k}: recall {recall:.3} below {floor}");
        }
        if s[2] > 0 {
            let precision = s[3] as f64 / s[2] as f64;
            assert!(
                precision >= 0.98,
                "{k}: precision {precision:.3} below 0.98"
            );
        }
    }
    assert!(
        benign_fp.is_empty(),
        "{} benign look-alikes redacted",
        benign_fp.len()
    );
}

// ---------------------------------------------------------------- properties

const SENSITIVE: &[&str] = &[
    "alice.smith@example.com",
    "4111 1111 1111 1111",
    "5555-5555-5555-4444",
    "AKIAIOSFODNN7EXAMPL3",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "sk-proj-Zx9vQ2mN4bL7kP1sD8fG3hJ6kL0aQwErTyUiOp",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "+44 20 7946 0958",
];

const BENIGN: &[&str] = &[
    "hello",
    "world",
    "the quick brown fox",
    "v1.2.3",
    "2024-03-15T10:22:31Z",
    "order #48213",
    "550e8400-e29b-41d4-a716-446655440000",
    "café",
    "日本語",
    "naïve",
    "\n",
    "\t",
    "\"quoted\"",
    "back\\slash",
    "12%",
    "$1,249.00",
    "a1b2c3d",
    "😀",
    "x = y",
    "<b>",
    "—",
];

fn pieces(with_secrets: bool) -> impl Strategy<Value = Vec<String>> {
    let benign = proptest::sample::select(BENIGN).prop_map(str::to_string);
    let any_text = "[ -~]{0,12}".prop_map(|s| s);
    if with_secrets {
        let secret = proptest::sample::select(SENSITIVE).prop_map(str::to_string);
        prop::collection::vec(prop_oneof![3 => benign, 2 => secret, 1 => any_text], 1..12).boxed()
    } else {
        prop::collection::vec(benign, 1..12).boxed()
    }
}

fn body_of(parts: &[String], shape: u8) -> Vec<u8> {
    let content = parts.join(" ");
    let v = match shape % 4 {
        0 => serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]}),
        1 => {
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": content}]}]})
        }
        2 => {
            serde_json::json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": serde_json::json!({"q": content}).to_string()}}]}]})
        }
        _ => {
            serde_json::json!({"model": "m", "system": [{"type": "text", "text": content}], "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": content}]}]})
        }
    };
    serde_json::to_vec(&v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn output_is_valid_json_and_no_value_survives(parts in pieces(true), shape in 0u8..4) {
        let r = Redactor::builtin();
        let body = body_of(&parts, shape);
        let out = run(&r, &body);
        let s = out_str(&out, &body);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        // look in the decoded document, including the JSON inside tool-call arguments
        let mut flat = v.to_string();
        flat.push_str(&serde_json::from_str::<serde_json::Value>(&s).map(|v| {
            v.pointer("/messages/0/tool_calls/0/function/arguments").and_then(|a| a.as_str()).unwrap_or("").to_string()
        }).unwrap_or_default());
        for p in &parts {
            if SENSITIVE.contains(&p.as_str()) {
                prop_assert!(!flat.contains(p.as_str()), "{p} survived in {s}");
            }
        }
        // idempotent: a second pass finds nothing more
        let again = run(&r, s.as_bytes());
        prop_assert!(again.body.is_none(), "second pass changed {s}");
        prop_assert!(again.findings.is_empty(), "second pass found {:?}", again.findings);
    }

    #[test]
    fn clean_bodies_pass_through_byte_identical(parts in pieces(false), shape in 0u8..4) {
        let r = Redactor::builtin();
        let body = body_of(&parts, shape);
        let out = run(&r, &body);
        prop_assert!(out.findings.is_empty(), "{:?} in {}", out.findings, String::from_utf8_lossy(&body));
        prop_assert!(out.body.is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_output_is_stable(
        bytes in prop::collection::vec(prop_oneof![
            4 => proptest::sample::select(&b"{}[]\":,\\u0040 @.-+0123456789abcdefAKIA\n"[..]),
            1 => any::<u8>(),
        ], 0..200),
        ct in 0u8..3,
    ) {
        let r = Redactor::builtin();
        let ct = [Some("application/json"), Some("text/plain"), None][ct as usize];
        if let Ok(out) = r.redact(&req(&bytes, ct)) {
            if let Some(b) = &out.body {
                if ct == Some("application/json") {
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(b).is_ok());
                }
                let again = r.redact(&req(b, ct)).unwrap();
                prop_assert!(again.body.is_none(), "not idempotent: {:?}", String::from_utf8_lossy(b));
            }
        }
    }

    #[test]
    fn accepts_exactly_what_serde_json_accepts(s in "[\\[\\]{}\",:0-9a-z .\\-+eE\\\\u]{0,40}") {
        let r = Redactor::builtin();
        let ours = r.redact(&req(s.as_bytes(), Some("application/json")));
        let theirs = serde_json::from_str::<serde_json::Value>(&s);
        match ours {
            Ok(_) | Err(Refusal::DuplicateKey(_)) => prop_assert!(theirs.is_ok(), "we accepted {s:?}"),
            Err(Refusal::BadJson(_)) => prop_assert!(theirs.is_err(), "we refused {s:?}"),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }
}

// ---------------------------------------------------------------- evasions

fn raw_chat(raw_content: &str) -> Vec<u8> {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{raw_content}"}}]}}"#)
        .into_bytes()
}

#[test]
fn evasion_json_unicode_escape() {
    let r = Redactor::builtin();
    let body = raw_chat(r"write to alice\u0040example.com now");
    let out = run(&r, &body);
    let s = out_str(&out, &body);
    assert!(s.contains("write to [REDACTED:EMAIL] now"), "{s}");
}

#[test]
fn evasion_zero_width_joiner_in_email() {
    let r = Redactor::builtin();
    let body = chat("write to ali\u{200d}ce@exa\u{200b}mple.com now");
    let out = run(&r, &body);
    let s = out_str(&out, &body);
    assert!(s.contains("write to [REDACTED:EMAIL] now"), "{s}");
}

#[test]
fn evasion_full_width_digits_in_card() {
    let r = Redactor::builtin();
    let body = chat("card ４１１１ １１１１ １１１１ １１１１ ok");
    let out = run(&r, &body);
    let s = out_str(&out, &body);
    assert!(s.contains("card [REDACTED:CARD] ok"), "{s}");
}

#[test]
fn evasion_escaped_full_width_and_nested_tool_arguments() {
    let r = Redactor::builtin();
    // arguments is JSON in a string; inside it the @ is escaped again
    let body = br#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"send","arguments":"{\"to\":\"bob\\u0040example.com\",\"key\":\"AKIAIOSFODNN7EXAMPL3\"}"}}]}]}"#;
    let out = run(&r, body);
    let s = out_str(&out, body);
    assert!(!s.contains("example.com"), "{s}");
    assert!(!s.contains("AKIAIOSFODNN7EXAMPL3"), "{s}");
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    let args = v
        .pointer("/messages/0/tool_calls/0/function/arguments")
        .unwrap()
        .as_str()
        .unwrap();
    let inner: serde_json::Value = serde_json::from_str(args).unwrap();
    assert_eq!(inner["to"], "[REDACTED:EMAIL]");
    assert_eq!(inner["key"], "[REDACTED:AWS_KEY]");
}

/// A user message whose content is these text parts.
fn parts_body(parts: &[&str]) -> Vec<u8> {
    let parts: Vec<serde_json::Value> = parts
        .iter()
        .map(|t| serde_json::json!({"type": "text", "text": t}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [
        {"role": "user", "content": parts}]}))
    .unwrap()
}

/// The text parts of the first message of a forwarded body, joined as the
/// model reads them.
fn joined_parts(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["text"].as_str())
        .collect()
}

#[test]
fn evasion_secret_split_across_parts() {
    // The model reads a message's text parts as one text: a key split
    // between them is one key. Each part alone holds no key.
    let r = Redactor::builtin();
    for parts in [
        vec!["key: AKIAIOSFOD", "NN7EXAMPL3 thanks"],
        // three parts, the middle one shorter than the key
        vec!["key: AKIA", "IOSFOD", "NN7EXAMPL3"],
        // the split hidden behind escapes and a zero-width space
        vec!["key: AKIAIOS\\u0046OD", "N\\u200bN7EXAMPL3"],
    ] {
        let body = if parts[0].contains('\\') {
            // raw JSON, escapes as written
            let ps: Vec<String> = parts
                .iter()
                .map(|t| format!(r#"{{"type":"text","text":"{t}"}}"#))
                .collect();
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":[{}]}}]}}"#,
                ps.join(",")
            )
            .into_bytes()
        } else {
            parts_body(&parts)
        };
        let out = run(&r, &body);
        let keys = of_kind(&out, "AWS_KEY");
        assert_eq!(keys.len(), 1, "{parts:?}: {:?}", out.findings);
        // its span runs from the first piece to the last, in the input
        let f = keys[0];
        let raw = std::str::from_utf8(&body[f.start..f.end]).unwrap();
        assert!(raw.starts_with("AKIA") && raw.ends_with("EXAMPL3"), "{raw}");
        assert!(f.path.starts_with("$.messages[0].content[0]"), "{}", f.path);
        let s = out_str(&out, &body);
        let joined = joined_parts(&s);
        assert!(
            !joined.contains("IOSFOD") && !joined.contains("EXAMPL3"),
            "{joined}"
        );
        assert!(joined.contains("[REDACTED:AWS_KEY]"), "{joined}");
        // what is forwarded is stable: a second pass changes nothing
        let again = run(&r, s.as_bytes());
        assert!(again.body.is_none(), "{:?}", again.findings);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// A secret cut anywhere into two to four text parts, with prose
    /// around it, is found once and no piece of it is forwarded; the output
    /// is valid JSON and a second pass changes nothing.
    #[test]
    fn a_secret_cut_anywhere_between_parts_is_found(
        which in 0usize..5,
        cuts in proptest::collection::vec(1usize..40, 1..4),
        before in "[a-z ]{0,30}",
        after in "[a-z ]{0,30}",
    ) {
        let (kind, secret) = [
            ("AWS_KEY", "AKIAIOSFODNN7EXAMPL3"),
            ("EMAIL", "alice.smith@example.com"),
            ("GITHUB_TOKEN", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"),
            ("CARD", "4111 1111 1111 1111"),
            ("OPENAI_KEY", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"),
        ][which];
        let text = format!("{before} {secret} {after}");
        let lo = before.len() + 1;
        // cut points inside the secret, rising, distinct
        let mut at: Vec<usize> = cuts.iter().map(|c| lo + c % (secret.len() - 1) + 1).collect();
        at.sort_unstable();
        at.dedup();
        let mut parts = Vec::new();
        let mut prev = 0;
        for &c in &at {
            parts.push(&text[prev..c]);
            prev = c;
        }
        parts.push(&text[prev..]);
        let r = Redactor::builtin();
        let body = parts_body(&parts);
        let out = run(&r, &body);
        let n = of_kind(&out, kind).len();
        prop_assert!(n >= 1, "{parts:?}: {:?}", out.findings);
        let s = out_str(&out, &body);
        let joined = joined_parts(&s);
        // no stretch of 6 bytes of the secret is forwarded
        for w in secret.as_bytes().windows(6) {
            let w = std::str::from_utf8(w).unwrap();
            prop_assert!(!joined.contains(w), "{w:?} in {joined:?} from {parts:?}");
        }
        prop_assert!(run(&r, s.as_bytes()).body.is_none());
    }
}

#[test]
fn a_split_key_under_the_hash_action_gets_one_token() {
    // every piece of the key is replaced by the token of the whole key,
    // the same token as the key unsplit gets
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "detectors:\n  aws_key: {action: hash}\n",
    )
    .unwrap();
    let r = Redactor::load(&dir.path().join("r.yaml")).unwrap();
    let split = parts_body(&["AKIAIOSFODNN", "7EXAMPL3"]);
    let whole = parts_body(&["AKIAIOSFODNN7EXAMPL3"]);
    let (a, b) = (run(&r, &split), run(&r, &whole));
    let (sa, sb) = (
        joined_parts(&out_str(&a, &split)),
        joined_parts(&out_str(&b, &whole)),
    );
    assert!(sb.starts_with("[AWS_KEY:") && sb.ends_with(']'), "{sb}");
    assert_eq!(sa, format!("{sb}{sb}"));
}

#[test]
fn a_split_key_under_block_is_refused() {
    let r = Redactor::builtin();
    let body = parts_body(&["sk-ant-api03-abcdefghijklmnop", "qrstuvwxyz0123456789ABCD"]);
    let ov: HashMap<String, Action> = [("ANTHROPIC_KEY".to_string(), Action::Block)].into();
    let mut q = req(&body, Some("application/json"));
    q.overrides = Some(&ov);
    let out = r.redact(&q).unwrap();
    let reason = out.blocked.expect("blocked");
    assert!(reason.contains("ANTHROPIC_KEY"), "{reason}");
}

#[test]
fn split_private_key_is_masked_in_every_part() {
    // a key block begun far from the seam: the first part's match runs to
    // its end, and the block goes on in the second part
    let r = Redactor::builtin();
    let filler = "x".repeat(2000);
    let first = format!("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA{filler}");
    let body = parts_body(&[
        &first,
        "SECRETTAILBYTES\n-----END RSA PRIVATE KEY-----\nthanks",
    ]);
    let out = run(&r, &body);
    let s = out_str(&out, &body);
    let joined = joined_parts(&s);
    assert!(
        !joined.contains("SECRETTAIL") && !joined.contains("MIIE"),
        "{joined}"
    );
    assert!(joined.ends_with("thanks"), "{joined}");
    // one key block, one finding (the first part's own match is its start)
    let keys = of_kind(&out, "PRIVATE_KEY");
    assert_eq!(keys.len(), 1, "{:?}", out.findings);
}

#[test]
fn a_key_block_cut_early_is_masked_to_its_end_in_a_long_part() {
    // the seam is scanned over the head of the next part first; a match
    // found there is looked for again over the whole part
    let r = Redactor::builtin();
    let body_b64 = "QUJD".repeat(1500);
    let second = format!("{body_b64}SECRETTAILBYTES\n-----END RSA PRIVATE KEY-----\nthanks");
    let body = parts_body(&["-----BEGIN RSA PRIVATE KEY-----\nMIIE", &second]);
    let out = run(&r, &body);
    let joined = joined_parts(&out_str(&out, &body));
    assert!(
        !joined.contains("SECRETTAIL") && !joined.contains("QUJD"),
        "{joined}"
    );
    assert!(joined.ends_with("thanks"), "{joined}");
}

#[test]
fn parts_not_read_together_are_not_joined() {
    let r = Redactor::builtin();
    // an image between the pieces, and pieces in two messages
    let body = serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "AKIAIOSFOD"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "text", "text": "NN7EXAMPL3"}]},
        {"role": "user", "content": [{"type": "text", "text": "AKIAIOSFOD"}]},
        {"role": "user", "content": [{"type": "text", "text": "NN7EXAMPL3"}]}]}))
    .unwrap();
    let out = run(&r, &body);
    assert!(out.findings.is_empty(), "{:?}", out.findings);
    assert!(out.body.is_none());
    // a finding in one part does not make its neighbours change
    let body = parts_body(&["mail bob@example.com", " and ", "carol@example.org now"]);
    let out = run(&r, &body);
    assert_eq!(out.findings.len(), 2, "{:?}", out.findings);
    let joined = joined_parts(&out_str(&out, &body));
    assert_eq!(joined, "mail [REDACTED:EMAIL] and [REDACTED:EMAIL] now");
}

#[test]
fn a_key_named_text_in_escapes_is_still_a_text_part() {
    let r = Redactor::builtin();
    let body = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"AKIAIOSFOD"},{"type":"text","text":"NN7EXAMPL3"}]}]}"#;
    let out = run(&r, body);
    assert!(
        out.findings.iter().any(|f| &*f.kind == "AWS_KEY"),
        "{:?}",
        out.findings
    );
}

#[test]
fn keys_of_unknown_json_are_scanned_and_paths_hide_them() {
    let r = Redactor::builtin();
    let body = br#"{"contacts":{"carol@example.com":{"note":"vip"}}}"#;
    let out = run(&r, body);
    assert_eq!(out.findings.len(), 1);
    assert!(out.findings[0].in_key);
    assert!(
        !out.findings[0].path.contains("carol"),
        "{}",
        out.findings[0].path
    );
    let s = out_str(&out, body);
    assert_eq!(s, r#"{"contacts":{"[REDACTED:EMAIL]":{"note":"vip"}}}"#);
}

#[test]
fn secret_in_json_value_by_key_name() {
    let r = Redactor::builtin();
    let body = br#"{"input":"hi","db_password":"Zq8#kLm2!vR9xT"}"#;
    let out = run(&r, body);
    assert_eq!(findings_by_type(&out.findings).get("SECRET"), Some(&1));
}

// ---------------------------------------------------------------- actions

#[test]
fn hash_is_stable_per_app_and_differs_across_apps() {
    let tmp = tempdir("hash");
    let dir = tmp.path();
    std::fs::write(
        dir.join("r.yaml"),
        "hash_key: \"0123456789abcdef0123\"\ndetectors:\n  email: { action: hash }\n",
    )
    .unwrap();
    let r = Redactor::load(&dir.join("r.yaml")).unwrap();
    let body = chat("a@example.com and b@example.com and a@example.com");
    let mut q = req(&body, Some("application/json"));
    let one = out_str(&r.redact(&q).unwrap(), &body);
    q.app = "other";
    let two = out_str(&r.redact(&q).unwrap(), &body);
    let toks = |s: &str| {
        s.match_indices("[EMAIL:")
            .map(|(i, _)| s[i..i + 16].to_string())
            .collect::<Vec<_>>()
    };
    let (t1, t2) = (toks(&one), toks(&two));
    assert_eq!(t1.len(), 3);
    assert_eq!(t1[0], t1[2]);
    assert_ne!(t1[0], t1[1]);
    assert_ne!(t1[0], t2[0]);
}

#[test]
fn hashed_output_is_stable_under_a_second_pass() {
    let tmp = tempdir("hash2");
    let dir = tmp.path();
    std::fs::write(
        dir.join("r.yaml"),
        "hash_key: \"0123456789abcdef0123\"\ndefault_action: hash\n",
    )
    .unwrap();
    let r = Redactor::load(&dir.join("r.yaml")).unwrap();
    let body = chat("password=Zq8#kLm2!vR9xT mail a@example.com card 4111 1111 1111 1111 key AKIAIOSFODNN7EXAMPL3");
    let once = out_str(&run(&r, &body), &body);
    assert!(
        once.contains("[SECRET:") && once.contains("[CARD:"),
        "{once}"
    );
    let twice = run(&r, once.as_bytes());
    assert!(twice.findings.is_empty(), "{:?} in {once}", twice.findings);
}

#[test]
fn block_and_monitor_and_overrides() {
    let r = Redactor::builtin();
    let body = chat("key AKIAIOSFODNN7EXAMPL3 mail x@example.com");
    let mut ov = HashMap::new();
    ov.insert("AWS_KEY".to_string(), Action::Block);
    let mut q = req(&body, Some("application/json"));
    q.overrides = Some(&ov);
    let out = r.redact(&q).unwrap();
    assert!(out.blocked.as_deref().unwrap().contains("AWS_KEY"));
    assert!(out.body.is_none());
    ov.insert("AWS_KEY".to_string(), Action::Monitor);
    ov.insert("EMAIL".to_string(), Action::Monitor);
    let mut q = req(&body, Some("application/json"));
    q.overrides = Some(&ov);
    let out = r.redact(&q).unwrap();
    assert!(out.blocked.is_none());
    assert!(out.body.is_none());
    assert_eq!(out.findings.len(), 2);
}

#[test]
fn a_bearer_glued_to_a_long_word_and_the_shortest_slack_token_are_found() {
    let r = Redactor::builtin();
    // a header pasted as JSON: the word before the token is 25 bytes long
    let body = chat(r#"curl with {"Authorization":"Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0"} now"#);
    let out = run(&r, &body);
    assert_eq!(rules(&out), ["bearer.token"]);
    assert!(!out_str(&out, &body).contains("9f8e7d6c5b4a3928"));
    // `xox?-` and ten more: 15 bytes, the shortest the pattern takes
    let body = chat("slack xoxb-1a2b3c4d5e here");
    let out = run(&r, &body);
    assert_eq!(rules(&out), ["slack.token"]);
}

#[test]
fn an_ibans_digits_are_the_ibans_alone() {
    // this IBAN's account number holds a Luhn-valid Visa number
    // (4111 1111 1111 1111): with cards blocked, it is still an IBAN, masked
    let r = Redactor::builtin();
    let mut ov = HashMap::new();
    ov.insert("CARD".to_string(), Action::Block);
    let body = chat("pay to DE89 4111 1111 1111 1111 11 today");
    let mut q = req(&body, Some("application/json"));
    q.overrides = Some(&ov);
    let out = r.redact(&q).unwrap();
    assert!(out.blocked.is_none(), "{:?}", out.blocked);
    assert_eq!(kinds(&out), ["IBAN"]);
    // a card right after an IBAN (one window) is still found, and blocks
    let body = chat("IBAN DE89 3704 0044 0532 0130 00 card 4111 1111 1111 1111");
    let mut q = req(&body, Some("application/json"));
    q.overrides = Some(&ov);
    let out = r.redact(&q).unwrap();
    assert_eq!(kinds(&out), ["IBAN", "CARD"]);
    assert!(out.blocked.as_deref().unwrap().contains("CARD"));
    // and one before it
    let body = chat("card 4111 1111 1111 1111 IBAN DE89 3704 0044 0532 0130 00");
    let out = run(&r, &body);
    assert_eq!(kinds(&out), ["CARD", "IBAN"]);
}

// ---------------------------------------------------------------- refusals and encodings

#[test]
fn refusals() {
    let r = Redactor::builtin();
    assert!(matches!(
        r.redact(&req(b"{\"a\":", Some("application/json"))),
        Err(Refusal::BadJson(_))
    ));
    assert!(matches!(
        r.redact(&req(b"{\"a\":1,\"a\":2}", Some("application/json"))),
        Err(Refusal::DuplicateKey(_))
    ));
    assert!(matches!(
        r.redact(&req(b"{\"a\":1,\"\\u0061\":2}", None)),
        Err(Refusal::DuplicateKey(_))
    ));
    let mut q = req(b"{}", Some("application/json"));
    q.content_encoding = Some("compress");
    assert!(matches!(r.redact(&q), Err(Refusal::UnsupportedEncoding(_))));
    let mut q = req(b"not gzip", Some("application/json"));
    q.content_encoding = Some("gzip");
    assert!(matches!(r.redact(&q), Err(Refusal::UnsupportedEncoding(_))));
    let big = vec![b' '; 100];
    let mut q = req(&big, Some("text/plain"));
    q.max_bytes = 10;
    assert_eq!(r.redact(&q), Err(Refusal::TooLarge));
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(
        r.redact(&req(deep.as_bytes(), None)),
        Err(Refusal::BadJson(_))
    ));
}

#[test]
fn compressed_bodies_are_decoded_scanned_and_bounded() {
    let r = Redactor::builtin();
    let body = chat("mail x@example.com");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let mut q = req(&gz, Some("application/json"));
    q.content_encoding = Some("gzip");
    let out = r.redact(&q).unwrap();
    assert!(out.decompressed);
    assert!(String::from_utf8(out.body.unwrap())
        .unwrap()
        .contains("[REDACTED:EMAIL]"));
    let z = zstd::encode_all(&body[..], 3).unwrap();
    let mut q = req(&z, Some("application/json"));
    q.content_encoding = Some("zstd");
    assert_eq!(r.redact(&q).unwrap().findings.len(), 1);
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        w.write_all(&body).unwrap();
    }
    let mut q = req(&br, Some("application/json"));
    q.content_encoding = Some("br");
    assert_eq!(r.redact(&q).unwrap().findings.len(), 1);
    // a bomb: 4 MiB of zeros in a few KiB, over a 1 MiB bound
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    let mut q = req(&bomb, Some("application/json"));
    q.content_encoding = Some("gzip");
    assert_eq!(r.redact(&q), Err(Refusal::TooLarge));
    // clean compressed body: forward the original bytes
    let clean = chat("nothing here");
    let z = zstd::encode_all(&clean[..], 3).unwrap();
    let mut q = req(&z, Some("application/json"));
    q.content_encoding = Some("zstd");
    let out = r.redact(&q).unwrap();
    assert!(out.body.is_none() && !out.decompressed);
}

#[test]
fn text_plain_whole_body_and_sha() {
    let r = Redactor::builtin();
    let body = b"ssn 123-45-6789\n";
    let out = r
        .redact(&req(body, Some("text/plain; charset=utf-8")))
        .unwrap();
    assert_eq!(out.body.as_deref(), Some(&b"ssn [REDACTED:SSN]\n"[..]));
    assert_eq!(
        airlock::redact::prompt_sha256(body),
        "e6920fc431a51655f9b80db90d9b84736058f43bc98fa75d131a6bc143eb4059"
    );
    assert!(matches!(
        r.redact(&req(&[0xff, 0xfe], Some("text/plain"))),
        Err(Refusal::UnsupportedEncoding(_))
    ));
}

// ---------------------------------------------------------------- configuration

/// A directory for one test's files, removed when the test ends, also
/// when it fails.
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("airlock-redact-{name}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn shipped_policy_loads() {
    let p = manifest().join("../policies/redaction.yaml");
    let r = Redactor::load(&p).unwrap_or_else(|e| panic!("{e:#?}"));
    let rules = r.rules();
    assert!(rules.iter().any(|(n, _, _)| n == "customers"));
    let body = chat("Project Bluebird is ready for Initech Corp; ticket EMP-123456");
    let out = run(&r, &body);
    let by = findings_by_type(&out.findings);
    assert_eq!(by.get("CODENAME"), Some(&1), "{by:?}");
    assert_eq!(by.get("CUSTOMER"), Some(&1), "{by:?}");
    assert_eq!(by.get("EMPLOYEE_ID"), Some(&1), "{by:?}");
}

#[test]
fn every_config_error_is_reported_with_file_and_line() {
    let tmp = tempdir("cfg");
    let d = tmp.path();
    let yaml = "\
version: 1
detectors:
  emial: { action: mask }
  phone: { action: shred }
dictionaries:
  - name: people
    type: PERSON
    file: missing.txt
rules:
  - name: bad
    type: BAD
    pattern: '([a-z'
    action: mask
    colour: red
";
    let p = d.join("redaction.yaml");
    std::fs::write(&p, yaml).unwrap();
    let errs = Redactor::load(&p).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    assert_eq!(errs.len(), 5, "{all}");
    assert!(
        all.contains(":3: detectors.emial: unknown detector \"emial\""),
        "{all}"
    );
    assert!(
        all.contains(":4: detectors.phone.action: unknown action \"shred\""),
        "{all}"
    );
    assert!(
        all.contains(":8: dictionaries[0].file: dictionary file \"missing.txt\""),
        "{all}"
    );
    assert!(
        all.contains(":12: rules[0].pattern: invalid regex"),
        "{all}"
    );
    assert!(
        all.contains(":14: rules[0].colour: unknown key \"colour\""),
        "{all}"
    );
    assert!(errs.iter().all(|e| e.location().file == p));
}

// ---------------------------------------------------------------- fuzz seeds

#[test]
fn fuzz_seed_corpus_runs_clean() {
    let dir = manifest().join("fuzz/corpus/redact_body");
    let r = Redactor::builtin();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for ct in [Some("application/json"), Some("text/plain"), None] {
            if let Ok(out) = r.redact(&req(&bytes, ct)) {
                if let (Some(b), Some("application/json")) = (&out.body, ct) {
                    serde_json::from_slice::<serde_json::Value>(b).unwrap();
                }
            }
        }
        n += 1;
    }
    assert!(n >= 5, "seed corpus at {} is too small", dir.display());
    let _ = Path::new("");
}
