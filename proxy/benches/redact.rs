//! Redaction throughput: OpenAI chat bodies of 16 KiB and 64 KiB, clean and
//! dense with findings, through the whole `Redactor::redact` (hash of the
//! body, JSON walk, normalisation, detectors, re-serialisation).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use airlock::redact::{Redactor, ScanRequest};

/// Deterministic pseudo-random generator (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Ordinary prompt prose, with a sprinkling of the benign look-alikes
/// (versions, dates, order numbers, UUIDs, SHAs, amounts) and non-ASCII.
const WORDS: &[&str] = &[
    "the",
    "quarterly",
    "report",
    "shows",
    "that",
    "revenue",
    "grew",
    "in",
    "every",
    "region",
    "and",
    "we",
    "would",
    "like",
    "you",
    "to",
    "summarise",
    "customer",
    "feedback",
    "for",
    "the",
    "last",
    "quarter",
    "with",
    "a",
    "focus",
    "on",
    "latency",
    "deployment",
    "and",
    "pricing",
    "please",
    "keep",
    "it",
    "short",
    "because",
    "our",
    "team",
    "reads",
    "this",
    "before",
    "the",
    "weekly",
    "meeting",
    "is",
    "of",
    "it",
    "as",
    "when",
    "café",
    "naïve",
    "résumé",
    "—",
    "“quoted”",
    "it’s",
    "Q3",
    "12%",
    "v2.14.3",
    "2024-03-15",
    "order #4821",
    "ticket JIRA-4412",
    "$1,249.00",
    "p99",
    "184ms",
    "550e8400-e29b-41d4-a716-446655440000",
    "9fceb02d0ae598e95dc970b74767f19372d61af8",
    "Kubernetes",
    "service",
    "mesh",
    "timeout",
    "retries",
];

const SECRETS: &[&str] = &[
    "alice.smith@example.com",
    "4111 1111 1111 1111",
    "+44 20 7946 0958",
    "(415) 555-2671",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "123-45-6789",
    "DE89 3704 0044 0532 0130 00",
    "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
    "bob@corp.example.org",
    "5555555555554444",
];

/// Prose of about `size` bytes (as JSON string content), with newlines.
fn prose(size: usize, dense: bool, seed: u64) -> String {
    let mut r = Rng(seed);
    let mut s = String::new();
    let mut since = 0;
    while s.len() < size {
        if dense && since > 60 {
            s.push_str(r.pick(SECRETS));
            s.push(' ');
            since = 0;
        }
        let w = r.pick(WORDS);
        s.push_str(w);
        since += w.len() + 1;
        s.push(if r.next().is_multiple_of(14) {
            '\n'
        } else {
            ' '
        });
    }
    s
}

fn body(size: usize, dense: bool) -> Vec<u8> {
    let content = prose(size - 200, dense, 0x9E37_79B9_7F4A_7C15);
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content}
        ],
        "temperature": 0.2
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let r = Redactor::builtin();
    let mut g = c.benchmark_group("redact");
    for size in [16 * 1024, 64 * 1024] {
        for dense in [false, true] {
            let b = body(size, dense);
            let req = ScanRequest {
                body: &b,
                content_type: Some("application/json"),
                content_encoding: None,
                path: "/v1/chat/completions",
                app: "bench",
                max_bytes: 1 << 22,
                overrides: None,
            };
            let out = r.redact(&req).unwrap();
            assert_eq!(
                out.findings.is_empty(),
                !dense,
                "bench body has unexpected findings"
            );
            g.throughput(Throughput::Bytes(b.len() as u64));
            let name = if dense { "dense" } else { "clean" };
            g.bench_with_input(BenchmarkId::new(name, size / 1024), &req, |bch, req| {
                bch.iter(|| r.redact(req).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
