//! Redaction throughput: OpenAI chat bodies of 16 KiB and 64 KiB — plain
//! prose, prose full of benign look-alikes, and prose dense with findings —
//! through the whole `Redactor::redact` (UTF-8 check, JSON walk,
//! normalisation, detectors, re-serialisation), with the built-in rules and
//! with the shipped policy. The body's SHA-256 for the decision record is
//! taken by the proxy, outside this call (`prompt_sha256` below measures it).
//! `redact_density` shows how throughput falls as findings get denser;
//! `redact_one_body` what the same work costs when the CPU has learnt it.
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

/// Which prompt to build.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Prose with accents and typographic quotes, no digits: most prompts.
    Plain,
    /// Prose dense with benign look-alikes (versions, dates, order numbers,
    /// UUIDs, SHAs, amounts): nothing to redact, but many digit clusters and
    /// token runs to rule out.
    Clean,
    /// A finding every ~95 bytes (after ~60 bytes of look-alike prose).
    Dense,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Clean => "clean",
            Kind::Dense => "dense",
        }
    }
}

/// Prose of about `size` bytes (as JSON string content), with newlines;
/// when dense, a finding after every `gap` bytes of prose.
fn prose_every(size: usize, kind: Kind, seed: u64, gap: usize) -> String {
    let mut r = Rng(seed);
    // the look-alikes start at "Q3"
    let words = if kind == Kind::Plain {
        &WORDS[..WORDS.iter().position(|w| *w == "Q3").unwrap_or(WORDS.len())]
    } else {
        WORDS
    };
    let mut s = String::new();
    let mut since = 0;
    while s.len() < size {
        if kind == Kind::Dense && since > gap {
            s.push_str(r.pick(SECRETS));
            s.push(' ');
            since = 0;
        }
        let w = r.pick(words);
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

/// How many different bodies each benchmark cycles through: enough for
/// 1 MiB of different text, and at least 8. This CPU's branch predictor
/// learns the branch trace of the bodies it sees over and over: cycling
/// through 8 bodies of 16 KiB, prose full of look-alikes ran at 1.09 GB/s,
/// through 32 or more at 0.70 (as at 64 KiB, where 8 bodies are already
/// 512 KiB). A proxy never sees the same body twice; this is what it gets.
/// (128 copies of 8 bodies ran as fast as the 8: the cache is not it.)
fn variants(size: usize) -> u64 {
    ((1usize << 20) / size).max(8) as u64
}

/// The `k`-th body of a kind and size (same generator, another seed).
fn body(size: usize, kind: Kind, k: u64) -> Vec<u8> {
    body_every(size, kind, k, 60)
}

/// [`body`] with a finding after every `gap` bytes of prose (dense only).
fn body_every(size: usize, kind: Kind, k: u64, gap: usize) -> Vec<u8> {
    let content = prose_every(size - 200, kind, 0x9E37_79B9_7F4A_7C15 + k * 7919, gap);
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
    // the built-in detectors, and the policy shipped in `policies/`
    // (dictionaries and a custom rule on top)
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/redaction.yaml");
    let rules = [
        ("redact", Redactor::builtin()),
        (
            "redact_policy",
            Redactor::load(&shipped).expect("policies/redaction.yaml loads"),
        ),
    ];
    for (group, r) in &rules {
        let mut g = c.benchmark_group(*group);
        for size in [16 * 1024, 64 * 1024] {
            for kind in [Kind::Plain, Kind::Clean, Kind::Dense] {
                let bodies: Vec<Vec<u8>> =
                    (0..variants(size)).map(|k| body(size, kind, k)).collect();
                let reqs: Vec<ScanRequest<'_>> = bodies.iter().map(|b| request(b)).collect();
                for req in &reqs {
                    let out = r.redact(req).unwrap();
                    assert_eq!(
                        out.findings.is_empty(),
                        kind != Kind::Dense,
                        "bench body has unexpected findings"
                    );
                }
                g.throughput(Throughput::Bytes(mean_len(&bodies)));
                cycle(&mut g, BenchmarkId::new(kind.name(), size / 1024), r, &reqs);
            }
        }
        g.finish();
    }
    // how throughput falls with the density of findings (16 KiB, built-in
    // rules): a finding after every 60 bytes of prose is the `dense` case
    // above (one per ~95 bytes of body); the others show where the dense
    // target is crossed
    let r = Redactor::builtin();
    let mut g = c.benchmark_group("redact_density");
    for gap in [60, 150, 300, 600] {
        let size = 16 * 1024;
        let bodies: Vec<Vec<u8>> = (0..variants(size))
            .map(|k| body_every(size, Kind::Dense, k, gap))
            .collect();
        let reqs: Vec<ScanRequest<'_>> = bodies.iter().map(|b| request(b)).collect();
        let found: usize = reqs
            .iter()
            .map(|q| r.redact(q).unwrap().findings.len())
            .sum();
        // the label is the mean spacing of findings in the body, in bytes
        let spacing = mean_len(&bodies) as usize * reqs.len() / found.max(1);
        g.throughput(Throughput::Bytes(mean_len(&bodies)));
        cycle(
            &mut g,
            BenchmarkId::new("bytes_per_finding", spacing),
            &r,
            &reqs,
        );
    }
    g.finish();
    // one body over and over (16 KiB, built-in rules): the CPU's branch
    // predictor learns the branches of a body it sees again and again (64
    // copies of one body run as fast as the one), so the gap between this
    // and the rows above, where no body repeats before all have gone by,
    // is the time lost to branches that depend on the text
    let mut g = c.benchmark_group("redact_one_body");
    for kind in [Kind::Plain, Kind::Clean, Kind::Dense] {
        let bodies = [body(16 * 1024, kind, 0)];
        let reqs: Vec<ScanRequest<'_>> = bodies.iter().map(|b| request(b)).collect();
        g.throughput(Throughput::Bytes(mean_len(&bodies)));
        cycle(&mut g, BenchmarkId::new(kind.name(), 16), &r, &reqs);
    }
    g.finish();
    // the baseline: what parsing the same bodies into a document and
    // writing them back costs (what any JSON-aware stage pays at least)
    per_body(c, "json_roundtrip", |b| {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        serde_json::to_vec(&v).unwrap().len()
    });
    // what the decision record's prompt hash costs on the same bodies
    per_body(c, "prompt_sha256", |b| {
        airlock::redact::prompt_sha256(b).len()
    });
}

/// Time `f` on the 16 and 64 KiB look-alike bodies, as group `name`.
fn per_body(c: &mut Criterion, name: &str, f: impl Fn(&[u8]) -> usize) {
    let mut g = c.benchmark_group(name);
    for size in [16 * 1024, 64 * 1024] {
        let bodies: Vec<Vec<u8>> = (0..variants(size))
            .map(|k| body(size, Kind::Clean, k))
            .collect();
        g.throughput(Throughput::Bytes(mean_len(&bodies)));
        g.bench_with_input(
            BenchmarkId::from_parameter(size / 1024),
            &bodies,
            |bch, bodies| {
                let mut k = 0;
                bch.iter(|| {
                    k = (k + 1) % bodies.len();
                    f(&bodies[k])
                })
            },
        );
    }
    g.finish();
}

/// Time `r` on `reqs`, one after the other, so no body repeats before
/// all have gone by.
fn cycle(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    r: &Redactor,
    reqs: &[ScanRequest<'_>],
) {
    g.bench_with_input(id, reqs, |bch, reqs| {
        let mut k = 0;
        bch.iter(|| {
            k = (k + 1) % reqs.len();
            r.redact(&reqs[k]).unwrap()
        })
    });
}

/// The request for one bench body: a chat completion, no overrides.
fn request(body: &[u8]) -> ScanRequest<'_> {
    ScanRequest {
        body,
        content_type: Some("application/json"),
        content_encoding: None,
        path: "/v1/chat/completions",
        app: "bench",
        max_bytes: 1 << 22,
        overrides: None,
    }
}

/// Mean length of the bodies a benchmark cycles through (they differ by a
/// few bytes), for its throughput.
fn mean_len(bodies: &[Vec<u8>]) -> u64 {
    (bodies.iter().map(Vec::len).sum::<usize>() / bodies.len().max(1)) as u64
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
