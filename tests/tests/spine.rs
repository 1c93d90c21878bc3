//! The spine, end to end in one process: Airlock on loopback, a TLS mock
//! gateway with a CA made by the test, real HTTP from a client.

use airlock::server::Airlock;
use airlock_tests::client::{chat_body, post, raw, Conn};
use airlock_tests::gateway::{GatewayOpts, MockGateway};
use airlock_tests::pki::Pki;
use airlock_tests::{wait_log, write_config, ConfigOpts, TempDir};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Env {
    gw: MockGateway,
    airlock: Airlock,
    app: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

struct EnvOpts {
    gateway_mtls: bool,
    proxy_client_cert: bool,
    wrong_ca: bool,
    max_body_bytes: u64,
    read_idle_ms: u64,
    upstream_override: Option<SocketAddr>,
}

impl Default for EnvOpts {
    fn default() -> Self {
        EnvOpts {
            gateway_mtls: false,
            proxy_client_cert: false,
            wrong_ca: false,
            max_body_bytes: 1024 * 1024,
            read_idle_ms: 5_000,
            upstream_override: None,
        }
    }
}

impl Env {
    fn start(name: &str, o: EnvOpts) -> Env {
        let dir = TempDir::new(name);
        let pki = Pki::create(
            &dir.path().join("pki"),
            &["api.openai.com", "api.anthropic.com"],
        )
        .expect("pki");
        let gw = MockGateway::start(
            "127.0.0.1:0".parse().unwrap(),
            &pki.server_cert,
            &pki.server_key,
            GatewayOpts {
                client_ca: o.gateway_mtls.then(|| pki.client_ca_pem.clone()),
                no_record: false,
            },
        )
        .expect("mock gateway");
        let (cfg, app, admin, log) = write_config(
            dir.path(),
            &ConfigOpts {
                upstream: o.upstream_override.unwrap_or(gw.addr),
                ca_file: if o.wrong_ca {
                    pki.other_ca_pem.clone()
                } else {
                    pki.ca_pem.clone()
                },
                sni: "api.openai.com".into(),
                client_cert: o
                    .proxy_client_cert
                    .then(|| (pki.client_cert.clone(), pki.client_key.clone())),
                max_body_bytes: o.max_body_bytes,
                read_idle_ms: o.read_idle_ms,
                extra: String::new(),
            },
        );
        let airlock = Airlock::start(&cfg).expect("airlock starts");
        Env {
            gw,
            airlock,
            app,
            admin,
            log,
            _dir: dir,
        }
    }

    fn records(&self, n: usize) -> Vec<serde_json::Value> {
        wait_log(&self.log, n)
    }

    async fn metrics(&self) -> String {
        let r = Conn::open(self.admin)
            .await
            .unwrap()
            .request("GET", "admin", "/metrics", &[], "")
            .await
            .unwrap();
        String::from_utf8_lossy(&r.body).into_owned()
    }
}

fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_request_reaches_gateway_over_tls_with_sni_and_is_recorded() {
    let env = Env::start("basic", EnvOpts::default());
    let body = chat_body("gpt-4o-mini", 1000, false);
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[("x-airlock-app", "billing-bot")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["object"], "chat.completion");
    let id = r.headers["x-airlock-decision-id"]
        .to_str()
        .unwrap()
        .to_string();

    let got = env.gw.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sni.as_deref(), Some("api.openai.com"));
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(got[0].body, body.as_bytes(), "body forwarded byte for byte");
    assert_eq!(
        got[0].header("x-airlock-app"),
        None,
        "identity header stripped"
    );

    let recs = env.records(1);
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec["decision_id"], id.as_str());
    assert_eq!(rec["app"], "billing-bot");
    assert_eq!(rec["route"], "openai");
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["path"], "/v1/chat/completions");
    assert_eq!(rec["model"], "gpt-4o-mini");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["prev_hash"], airlock::decision_log::GENESIS_HASH);
    assert!(rec["latency_ms"]["total"].as_f64().unwrap() > 0.0);
    assert!(rec["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rec["policy_revision"].as_str().unwrap().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_gives_502_and_an_error_record() {
    let env = Env::start(
        "wrongca",
        EnvOpts {
            wrong_ca: true,
            ..Default::default()
        },
    );
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 100, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_tls_failed");
    assert!(
        env.gw.received().is_empty(),
        "nothing may reach an unverified peer"
    );
    let recs = env.records(1);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["decision"], "error");
    assert_eq!(recs[0]["status"], 502);
    assert_eq!(recs[0]["reasons"][0], "upstream_tls_failed");
    let m = env.metrics().await;
    assert!(
        metric_value(
            &m,
            "airlock_upstream_errors_total{gateway=\"openai\",kind=\"tls\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_mismatch_is_refused() {
    // The certificate does not cover the SNI the proxy is configured with: verification fails.
    let dir = TempDir::new("sni");
    let pki = Pki::create(&dir.path().join("pki"), &["other.example"]).unwrap();
    let gw = MockGateway::start(
        "127.0.0.1:0".parse().unwrap(),
        &pki.server_cert,
        &pki.server_key,
        GatewayOpts::default(),
    )
    .unwrap();
    let (cfg, app, _admin, log) = write_config(
        dir.path(),
        &ConfigOpts {
            upstream: gw.addr,
            ca_file: pki.ca_pem.clone(),
            sni: "api.openai.com".into(),
            client_cert: None,
            max_body_bytes: 1 << 20,
            read_idle_ms: 5000,
            extra: String::new(),
        },
    );
    let _a = Airlock::start(&cfg).unwrap();
    let r = post(
        app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502);
    assert!(gw.received().is_empty());
    assert_eq!(wait_log(&log, 1)[0]["decision"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_certificate_is_presented() {
    let env = Env::start(
        "mtls",
        EnvOpts {
            gateway_mtls: true,
            proxy_client_cert: true,
            ..Default::default()
        },
    );
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(env.gw.received()[0].client_cert);

    // The same gateway refuses a proxy without a client certificate.
    let env2 = Env::start(
        "mtls-none",
        EnvOpts {
            gateway_mtls: true,
            proxy_client_cert: false,
            ..Default::default()
        },
    );
    let r = post(
        env2.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502);
    assert!(env2.gw.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_through_before_upstream_finishes() {
    let env = Env::start("sse", EnvOpts::default());
    let mut c = Conn::open(env.app).await.unwrap();
    let t0 = Instant::now();
    let resp = c
        .send(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            &[("x-mock-chunks", "5"), ("x-mock-chunk-delay-ms", "150")],
            chat_body("m", 100, true),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    while let Some(f) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
    {
        if let Ok(d) = f.unwrap().into_data() {
            arrivals.push(t0.elapsed());
            all.extend_from_slice(&d);
        }
    }
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("data: [DONE]"));
    assert!(arrivals.len() >= 3, "events were coalesced: {arrivals:?}");
    // The first event arrives long before the upstream sends its last (5 × 150 ms).
    let first = arrivals[0];
    let last = *arrivals.last().unwrap();
    assert!(last - first >= Duration::from_millis(450), "{arrivals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let env = Env::start("keepalive", EnvOpts::default());
    let mut c = Conn::open(env.app).await.unwrap();
    for _ in 0..5 {
        let r = c
            .request(
                "POST",
                "api.openai.com",
                "/v1/chat/completions",
                &[],
                chat_body("m", 100, false),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // pingora returns the upstream connection to its pool after the
    // response has gone out, and writes the decision record after that:
    // once the fifth record is there, the connection is back in the pool
    // (without this wait the next request could race it and open another)
    assert_eq!(env.records(5).len(), 5);
    // A second downstream connection still rides the pooled upstream one.
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 100, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(env.gw.received().len(), 6);
    assert_eq!(
        env.gw.connections(),
        1,
        "one TLS connection for six requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_and_nothing_is_forwarded() {
    let env = Env::start(
        "413",
        EnvOpts {
            max_body_bytes: 100 * 1024,
            ..Default::default()
        },
    );
    // Declared length over the bound: refused before the body is read.
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 200 * 1024, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");

    // Chunked (no length) over the bound: refused once the bound is crossed.
    let big = chat_body("m", 300 * 1024, false);
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(big.as_bytes());
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let out = raw(env.app, &req).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // Anthropic clients get their own error shape.
    let r = post(
        env.app,
        "api.anthropic.com",
        "/v1/messages",
        &[],
        chat_body("m", 200 * 1024, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "request_too_large");

    assert!(
        env.gw.received().iter().all(|r| r.body.len() < 100 * 1024),
        "no oversized body reached the gateway"
    );
    let recs = env.records(3);
    assert_eq!(recs.len(), 3);
    assert!(recs
        .iter()
        .all(|r| r["status"] == 413 && r["decision"] == "deny"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_beyond_early_limit_passes_intact() {
    let env = Env::start("large", EnvOpts::default());
    let body = chat_body("m", 300 * 1024, false);
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(env.gw.received()[0].body, body.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_without_panic() {
    let env = Env::start("400", EnvOpts::default());
    let out = raw(env.app, b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = raw(
        env.app,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(out.contains("conflicting_framing"), "{out}");
    assert!(env.gw.received().is_empty());
    // The proxy still serves.
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_is_refused_with_403() {
    let env = Env::start("403", EnvOpts::default());
    let r = post(
        env.app,
        "evil.example.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "unknown_destination");
    assert!(env.gw.received().is_empty());
    let recs = env.records(1);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[0]["route"], serde_json::Value::Null);
    assert_eq!(recs[0]["reasons"][0], "unknown_destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_gives_504_and_connect_failure_502() {
    let env = Env::start(
        "504",
        EnvOpts {
            read_idle_ms: 300,
            ..Default::default()
        },
    );
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[("x-mock-delay-ms", "1500")],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    // A stream that keeps talking is not cut by the idle timeout, however long in total.
    let r = post(
        env.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[("x-mock-chunks", "8"), ("x-mock-chunk-delay-ms", "100")],
        chat_body("m", 10, true),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("[DONE]"));

    let dead = airlock_tests::free_port();
    let env2 = Env::start(
        "502",
        EnvOpts {
            upstream_override: Some(format!("127.0.0.1:{dead}").parse().unwrap()),
            ..Default::default()
        },
    );
    let r = post(
        env2.app,
        "api.openai.com",
        "/v1/chat/completions",
        &[],
        chat_body("m", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_connect_failed");
    let recs = env2.records(1);
    assert_eq!(recs[0]["decision"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_with_an_unbroken_chain_and_metrics_moving() {
    let env = Env::start("chain", EnvOpts::default());
    let before = env.metrics().await;
    let mut c = Conn::open(env.app).await.unwrap();
    for i in 0..6 {
        let host = if i % 3 == 2 {
            "nope.example"
        } else {
            "api.openai.com"
        };
        let _ = c
            .request(
                "POST",
                host,
                "/v1/chat/completions",
                &[],
                chat_body("m", 50, false),
            )
            .await
            .unwrap();
    }
    // Early exits on fresh connections too.
    let _ = post(env.app, "nope.example", "/x", &[], "").await.unwrap();
    let recs = env.records(7);
    assert_eq!(recs.len(), 7);
    let ids: std::collections::HashSet<_> = recs.iter().map(|r| r["decision_id"].clone()).collect();
    assert_eq!(ids.len(), 7, "decision ids are unique");
    assert_eq!(
        airlock::decision_log::verify(&env.log).unwrap(),
        airlock::decision_log::Verification::Intact { lines: 7 }
    );
    let after = env.metrics().await;
    let allow =
        "airlock_requests_total{app=\"unidentified\",decision=\"allow\",gateway=\"openai\"}";
    let deny = "airlock_requests_total{app=\"unidentified\",decision=\"deny\",gateway=\"none\"}";
    assert_eq!(
        metric_value(&after, allow) - metric_value(&before, allow),
        4.0,
        "{after}"
    );
    assert_eq!(
        metric_value(&after, deny) - metric_value(&before, deny),
        3.0,
        "{after}"
    );
    assert!(metric_value(&after, "airlock_overhead_seconds_count") >= 7.0);
    assert!(
        metric_value(&after, "airlock_upstream_seconds_count{gateway=\"openai\"}") >= 4.0,
        "{after}"
    );
    assert!(after.contains("airlock_config_revision_info{revision="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_plane_reports_health_readiness_and_config() {
    let env = Env::start("admin", EnvOpts::default());
    let mut c = Conn::open(env.admin).await.unwrap();
    assert_eq!(
        c.request("GET", "a", "/healthz", &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    let r = c.request("GET", "a", "/readyz", &[], "").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c.request("GET", "a", "/config", &[], "").await.unwrap();
    let v = r.json();
    assert_eq!(v["config"]["gateways"][0]["name"], "openai");
    assert_eq!(v["revision"].as_str().unwrap().len(), 12);
    // The app port does not serve admin paths.
    let r = post(env.app, "api.openai.com", "/metrics", &[], "")
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&r.body).contains("airlock_requests_total"));
    drop(c);
    let mut env = env;
    env.airlock.stop_now();
    assert!(
        !env.airlock.shared.readiness.pending().is_empty(),
        "not ready once stopped"
    );
}
