//! Per-request costs of the policy stage and its neighbours: one policy
//! decision (bytecode VM, warmed per-thread VM), one budget admit +
//! reconcile, and prompt token counting.
//!
//! Run: `cargo bench -p airlock --bench policy`. Target: a decision ≤ 10 µs median.
//! On a shared, loaded 2-core machine results swing ±50 %; the stable figure
//! is the VM work: ~81k instructions per decision (callgrind), ~8 µs.

#![allow(missing_docs, reason = "criterion macros generate undocumented items")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench set-up fails loudly"
)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock::budget::{BudgetConfig, Budgets, Limits, Price, Reservation};
use airlock::policy::{
    InputApp, InputBudget, InputDestination, InputFinding, InputRequest, InputTokens, PolicyBundle,
    PolicyConfig, PolicyInput,
};
use airlock::usage::Usage;
use criterion::{criterion_group, criterion_main, Criterion};

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn input(app: &str) -> PolicyInput {
    PolicyInput {
        app: InputApp {
            id: app.into(),
            cgroup_id: 12345,
            pid: Some(4242),
        },
        destination: InputDestination {
            origin: "10.96.0.20:443".into(),
            gateway: "openai".into(),
            provider: "openai".into(),
        },
        request: InputRequest {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: "gpt-4o-mini".into(),
            stream: true,
        },
        tokens: InputTokens {
            prompt: 812,
            source: "tokenizer".into(),
            max_output: 1024,
        },
        findings: vec![
            InputFinding {
                kind: "email".into(),
                action: "mask".into(),
                count: 2,
            },
            InputFinding {
                kind: "phone".into(),
                action: "hash".into(),
                count: 1,
            },
        ],
        budget: InputBudget {
            remaining: [("tokens_per_minute".to_string(), 41000.0)].into(),
            soft_exceeded: vec![],
        },
    }
}

/// The shipped policy with 200 extra apps in its data.
fn policy_with_200_apps() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = policies();
    std::fs::copy(src.join("airlock.rego"), tmp.path().join("airlock.rego")).unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    let mut apps = String::from("defaults: { blocked_findings: [private_key] }\napps:\n");
    for i in 0..200 {
        apps.push_str(&format!(
            "  app-{i}: {{ mode: enforce, models: [gpt-4o-mini, gpt-4o], blocked_findings: [credit_card] }}\n"
        ));
    }
    std::fs::write(tmp.path().join("data/apps.yaml"), apps).unwrap();
    tmp
}

fn bench(c: &mut Criterion) {
    let cfg = PolicyConfig {
        dir: policies(),
        ..PolicyConfig::default()
    };
    let bundle = PolicyBundle::load(&cfg).unwrap();
    let allow = input("support-bot");
    let deny = input("stranger");
    assert!(bundle.decide(&allow).unwrap().allow);
    assert!(!bundle.decide(&deny).unwrap().allow);
    c.bench_function("policy/decide_allow", |b| {
        b.iter(|| bundle.decide(black_box(&allow)).unwrap())
    });
    c.bench_function("policy/decide_deny", |b| {
        b.iter(|| bundle.decide(black_box(&deny)).unwrap())
    });

    // Alternating apps, models and findings: no string reuse between requests.
    let mut other = input("summarizer");
    other.request.model = "claude-sonnet-4-5".into();
    other.findings.truncate(1);
    let inputs = [allow.clone(), other, deny.clone()];
    let mut n = 0usize;
    c.bench_function("policy/decide_varying", |b| {
        b.iter(|| {
            n = (n + 1) % inputs.len();
            bundle.decide(black_box(&inputs[n])).unwrap()
        })
    });

    let big = policy_with_200_apps();
    let big_bundle = PolicyBundle::load(&PolicyConfig {
        dir: big.path().to_path_buf(),
        ..PolicyConfig::default()
    })
    .unwrap();
    let app = input("app-137");
    assert!(big_bundle.decide(&app).unwrap().allow);
    c.bench_function("policy/decide_200_apps", |b| {
        b.iter(|| big_bundle.decide(black_box(&app)).unwrap())
    });

    c.bench_function("policy/load_compile_warm", |b| {
        b.iter(|| PolicyBundle::load(black_box(&cfg)).unwrap())
    });

    // Limits are loaded to check the shipped files; the bench uses none, so it never rejects.
    let bc = BudgetConfig::default();
    let (bf, pf) = bc.files(&policies());
    Limits::load(&bf, &pf, &bc).unwrap();
    let limits = Limits::unlimited(Price {
        input: 1.0,
        output: 2.0,
    });
    let budgets = Budgets::new();
    let res = Reservation {
        prompt_tokens: 10,
        max_output_tokens: Some(10),
        model: "gpt-4o-mini".into(),
    };
    c.bench_function("budget/admit_reconcile", |b| {
        b.iter(|| {
            let now = Instant::now();
            let t = budgets.admit(&limits, "bench-app", &res, now);
            if let Ok(t) = t {
                t.reconcile(
                    Usage {
                        prompt_tokens: 10,
                        completion_tokens: 5,
                    },
                    now,
                );
            }
        })
    });

    airlock::tokens::warm();
    let prompt = "Summarise the following support ticket and suggest a reply. ".repeat(70);
    c.bench_function("tokens/count_4k_o200k", |b| {
        b.iter(|| airlock::tokens::count_text("gpt-4o-mini", black_box(&prompt)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
