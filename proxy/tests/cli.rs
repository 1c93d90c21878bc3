//! The `airlock` command line: `check`, `run` refusing bad configs, `verify-log`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test here

use std::process::Command;

fn airlock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("airlock-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TYPO: &str = "listen:\n  app_http: 127.0.0.1:15999\nadmin:\n  listen: 127.0.0.1:15998\ngateways:\n  - name: openai\n    hosts: [api.openai.com]\n    upstream: 127.0.0.1:18443\n    tls:\n      sni: api.openai.com\n      ca_fle: certs/ca.pem\n";

#[test]
fn check_names_a_typo_and_run_refuses_to_start() {
    let d = temp("typo");
    let cfg = d.join("airlock.yaml");
    std::fs::write(&cfg, TYPO).unwrap();
    let out = airlock()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateways.0.tls.ca_fle"), "{err}");
    assert!(err.contains("unknown key"), "{err}");
    assert!(err.contains(cfg.to_str().unwrap()), "names the file: {err}");

    let out = airlock()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to start"));
    // Nothing was started: the port is free.
    assert!(std::net::TcpListener::bind("127.0.0.1:15999").is_ok());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn check_reports_every_semantic_error_at_once() {
    let d = temp("many");
    let cfg = d.join("airlock.yaml");
    std::fs::write(
        &cfg,
        "listen:\n  app_http: 127.0.0.1:1\nadmin:\n  listen: 127.0.0.1:1\ngateways:\n  - name: a\n    hosts: [x.example]\n    upstream: nowhere\n    tls:\n      sni: \"\"\n      ca_file: missing.pem\nlimits:\n  max_body_bytes: 0\n",
    )
    .unwrap();
    let out = airlock()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "admin.listen",
        "gateways.0.upstream",
        "gateways.0.tls.sni",
        "gateways.0.tls.ca_file",
        "limits.max_body_bytes",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    assert!(err.contains("\"nowhere\""), "names the bad value: {err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn verify_log_finds_the_first_broken_link() {
    use airlock::decision_log::{Decision, DecisionLog, DecisionRecord, Latency};
    let d = temp("verify");
    let log = d.join("d.jsonl");
    let l = DecisionLog::open(log.to_str().unwrap()).unwrap();
    for i in 0..5 {
        l.append(DecisionRecord {
            decision_id: format!("{i}"),
            timestamp: "2026-11-22T00:00:00Z".into(),
            app: "a".into(),
            cgroup_id: None,
            pid: None,
            origin: None,
            pod: None,
            route: None,
            method: "POST".into(),
            path: "/".into(),
            model: None,
            decision: Decision::Allow,
            reasons: vec![],
            findings: Default::default(),
            prompt_sha256: None,
            tokens: None,
            cost: None,
            budget: None,
            policy_revision: "r".into(),
            status: 200,
            latency_ms: Latency::default(),
            prev_hash: String::new(),
        })
        .unwrap();
    }
    let out = airlock().arg("verify-log").arg(&log).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact (5 lines)"));
    let text = std::fs::read_to_string(&log).unwrap();
    // Edit the second line: the third line's link no longer matches.
    let lines: Vec<&str> = text.lines().collect();
    let edited = lines[1].replace("\"status\":200", "\"status\":201");
    let mut out_text = String::new();
    for (i, l) in lines.iter().enumerate() {
        out_text.push_str(if i == 1 { &edited } else { l });
        out_text.push('\n');
    }
    std::fs::write(&log, out_text).unwrap();
    let out = airlock().arg("verify-log").arg(&log).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken at line 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&d).unwrap();
}
