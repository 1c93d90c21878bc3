//! Redaction, budgets, policy and hot reload through the real proxy, with the
//! default policy files from `policies/` (copied per test so a test may edit them).

use airlock::server::Airlock;
use airlock_tests::client::{chat_body, post, Conn};
use airlock_tests::gateway::{GatewayOpts, MockGateway};
use airlock_tests::kubelet::ConfigMapVolume;
use airlock_tests::pki::Pki;
use airlock_tests::{free_port, wait_log, wait_until, TempDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Copy the policy files (not the demo's certs or config) into `dst`.
fn copy_policies(dst: &Path) {
    fn walk(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n == "certs" || n == "airlock.yaml" || n.starts_with('.') {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &dst.join(&name));
            } else {
                std::fs::copy(e.path(), dst.join(&name)).unwrap();
            }
        }
    }
    walk(&repo_policies(), dst);
}

struct Env {
    gw: MockGateway,
    airlock: Airlock,
    app: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    policy_dir: PathBuf,
    _dir: TempDir,
}

fn config_yaml(
    gw: SocketAddr,
    ca: &Path,
    policy_dir: &Path,
    log: &Path,
) -> (String, SocketAddr, SocketAddr) {
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let y = format!(
        "listen:\n  app_http: {app}\nadmin:\n  listen: {admin}\ngateways:\n  - name: openai\n    hosts: [api.openai.com]\n    upstream: {gw}\n    tls:\n      sni: api.openai.com\n      ca_file: {ca}\n  - name: anthropic\n    provider: anthropic\n    hosts: [api.anthropic.com]\n    upstream: {gw}\n    tls:\n      sni: api.anthropic.com\n      ca_file: {ca}\ndecision_log:\n  path: {log}\nexplicit:\n  app_header: x-airlock-app\nredaction:\n  rules: {pd}/redaction.yaml\npolicy:\n  dir: {pd}\nbudgets:\n  default_max_tokens: 256\nreload:\n  debounce_ms: 50\n",
        ca = ca.display(),
        log = log.display(),
        pd = policy_dir.display(),
    );
    (y, app, admin)
}

impl Env {
    fn start(name: &str) -> Env {
        let dir = TempDir::new(name);
        let pki = Pki::create(
            &dir.path().join("pki"),
            &["api.openai.com", "api.anthropic.com"],
        )
        .unwrap();
        let gw = MockGateway::start(
            "127.0.0.1:0".parse().unwrap(),
            &pki.server_cert,
            &pki.server_key,
            GatewayOpts::default(),
        )
        .unwrap();
        let policy_dir = dir.path().join("policies");
        copy_policies(&policy_dir);
        let log = dir.path().join("log").join("decisions.jsonl");
        let (yaml, app, admin) = config_yaml(gw.addr, &pki.ca_pem, &policy_dir, &log);
        let cfg = dir.path().join("airlock.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let airlock = Airlock::start(&cfg).expect("airlock starts");
        Env {
            gw,
            airlock,
            app,
            admin,
            log,
            policy_dir,
            _dir: dir,
        }
    }

    async fn chat(
        &self,
        app: &str,
        body: String,
        extra: &[(&str, &str)],
    ) -> airlock_tests::client::Resp {
        let mut h = vec![("x-airlock-app", app)];
        h.extend_from_slice(extra);
        post(self.app, "api.openai.com", "/v1/chat/completions", &h, body)
            .await
            .unwrap()
    }

    async fn admin_get(&self, path: &str) -> String {
        let r = Conn::open(self.admin)
            .await
            .unwrap()
            .request("GET", "admin", path, &[], "")
            .await
            .unwrap();
        String::from_utf8_lossy(&r.body).into_owned()
    }

    async fn revision(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.admin_get("/config").await).unwrap();
        v["revision"].as_str().unwrap().to_string()
    }
}

fn chat_with(model: &str, content: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_masks_what_leaves_and_block_sends_nothing() {
    let env = Env::start("redact");
    let secret_mail = "jane.doe@example.com";
    let key = "AKIAIOSFODNN7EXAMPLE";
    let r = env
        .chat(
            "demo-app",
            chat_with(
                "gpt-4o-mini",
                &format!("Write to {secret_mail}, our key is {key}, card 4111 1111 1111 1111."),
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let got = env.gw.received();
    assert_eq!(got.len(), 1);
    let sent = String::from_utf8_lossy(&got[0].body);
    assert!(
        !sent.contains(secret_mail) && !sent.contains(key) && !sent.contains("4111"),
        "{sent}"
    );
    assert!(sent.contains("[REDACTED:EMAIL]"), "{sent}");
    let _: serde_json::Value = serde_json::from_str(&sent).expect("still valid JSON");
    let recs = wait_log(&env.log, 1);
    assert_eq!(recs[0]["decision"], "redact");
    assert_eq!(recs[0]["findings"]["EMAIL"], 1);
    assert!(recs[0]["prompt_sha256"].as_str().unwrap().len() == 64);
    assert!(
        !std::fs::read_to_string(&env.log)
            .unwrap()
            .contains(secret_mail),
        "values never logged"
    );

    // An escaped '@' is still an email.
    let r = env
        .chat("demo-app", r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x jane.doe\u0040example.com"}]}"#.to_string(), &[])
        .await;
    assert_eq!(r.status, 200);
    assert!(!String::from_utf8_lossy(&env.gw.received()[1].body).contains("example.com"));

    // A private key is a `block` rule: 403 in OpenAI's shape, nothing reaches the gateway.
    let pem = "-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEA7V1Zb3w9k2Q4c8nq0X5Yf2aQ1c3ZpK0f9Jq\\n-----END RSA PRIVATE KEY-----";
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"deploy with {pem}"}}]}}"#
    );
    let r = env.chat("demo-app", body, &[]).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["error"]["type"], "permission_denied");
    assert_eq!(env.gw.received().len(), 2, "the blocked request never left");
    let recs = wait_log(&env.log, 3);
    assert_eq!(recs[2]["decision"], "deny");
    assert_eq!(recs[2]["reasons"][0], "redaction_block");
    assert_eq!(recs[2]["findings"]["PRIVATE_KEY"], 1, "{}", recs[2]);

    // Invalid JSON is refused, never forwarded unscanned.
    let r = env
        .chat("demo-app", "{\"model\": \"gpt-4o-mini\", ".to_string(), &[])
        .await;
    assert_eq!(r.status, 400);
    let r = env
        .chat("demo-app", r#"{"model":"gpt-4o-mini","messages":[],"messages":[{"role":"user","content":"x@y.com"}]}"#.to_string(), &[])
        .await;
    assert_eq!(r.status, 400, "duplicate keys");
    assert_eq!(env.gw.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_exhausted_gives_429_with_retry_after() {
    let env = Env::start("rpm");
    // demo-app: 5 requests per minute (policies/data/budgets.yaml).
    for i in 0..5 {
        let r = env
            .chat("demo-app", chat_body("gpt-4o-mini", 100, false), &[])
            .await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let r = env
        .chat("demo-app", chat_body("gpt-4o-mini", 100, false), &[])
        .await;
    assert_eq!(r.status, 429);
    // What the official SDKs read: status, error type, retry-after in seconds.
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=60).contains(&retry),
        "computed, within the minute window: {retry}"
    );
    assert_eq!(r.json()["error"]["type"], "rate_limit_exceeded");
    assert!(r.headers.contains_key("ratelimit-policy"));
    assert!(r.headers.contains_key("ratelimit"));
    assert_eq!(
        env.gw.received().len(),
        5,
        "the 429 never reached the gateway"
    );
    let recs = wait_log(&env.log, 6);
    assert_eq!(recs[5]["status"], 429);
    assert_eq!(recs[5]["reasons"][0], "budget_exceeded:requests_per_minute");
    assert_eq!(
        recs[5]["model"], "gpt-4o-mini",
        "a refused request still records what it asked for"
    );
    assert_eq!(recs[5]["prompt_sha256"].as_str().map(str::len), Some(64));

    // Anthropic clients get Anthropic's shape.
    let body = serde_json::json!({"model":"claude-3-5-haiku-latest","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}).to_string();
    let mut any_429 = None;
    for _ in 0..40 {
        let r = post(
            env.app,
            "api.anthropic.com",
            "/v1/messages",
            &[("x-airlock-app", "summarizer")],
            body.clone(),
        )
        .await
        .unwrap();
        if r.status == 429 {
            any_429 = Some(r);
            break;
        }
    }
    let r = any_429.expect("summarizer's 30 requests/minute run out");
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reserved_then_reconciled_to_real_usage() {
    let env = Env::start("usage");
    let r = env
        .chat("support-bot", chat_body("gpt-4o-mini", 2000, false), &[])
        .await;
    assert_eq!(r.status, 200);
    let usage = r.json()["usage"].clone();
    let recs = wait_log(&env.log, 1);
    assert_eq!(recs[0]["tokens"]["source"], "usage");
    assert_eq!(recs[0]["tokens"]["prompt"], usage["prompt_tokens"]);
    assert_eq!(recs[0]["tokens"]["completion"], usage["completion_tokens"]);
    assert!(recs[0]["cost"].as_f64().unwrap() > 0.0);
    // Remaining = limit − real usage (support-bot: 60,000 tokens/minute).
    let used = usage["total_tokens"].as_u64().unwrap() as f64;
    let m = env.admin_get("/metrics").await;
    assert!(
        m.contains("airlock_budget_remaining{app=\"support-bot\",budget=\"tokens_per_minute\"}"),
        "{m}"
    );

    // A stream without include_usage: Airlock asks for usage, reads it, and hides it from the app.
    let r = env
        .chat("support-bot", chat_body("gpt-4o-mini", 500, true), &[])
        .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.contains("[DONE]"));
    assert!(
        !text.contains("\"usage\""),
        "the app did not ask for the usage chunk: {text}"
    );
    let sent: serde_json::Value = serde_json::from_slice(&env.gw.received()[1].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let recs = wait_log(&env.log, 2);
    assert_eq!(recs[1]["tokens"]["source"], "usage");
    assert_eq!(recs[1]["tokens"]["completion"], 6);

    // The app asked for it: it is forwarded.
    let body = serde_json::json!({"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},
        "messages":[{"role":"user","content":"hello"}]}).to_string();
    let r = env.chat("support-bot", body, &[]).await;
    assert!(String::from_utf8_lossy(&r.body).contains("\"usage\""));

    // Remaining budget after the next request reflects real usage, not the reservation.
    let r = env
        .chat("support-bot", chat_body("gpt-4o-mini", 100, false), &[])
        .await;
    assert_eq!(r.status, 200);
    let recs = wait_log(&env.log, 4);
    let left = recs[3]["budget"]["tokens_per_minute"].as_f64().unwrap();
    assert!(left < 60_000.0 - used, "earlier usage is charged: {left}");
    // The current request's reservation is at most its prompt plus the 256-token default allowance.
    assert!(
        left > 60_000.0 - used - 3_000.0,
        "reservations were released to real usage: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_unknown_apps_and_models_and_monitor_mode_allows() {
    let env = Env::start("policy");
    let r = env
        .chat("stranger", chat_body("gpt-4o-mini", 10, false), &[])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "policy_denied");
    let r = env
        .chat("support-bot", chat_body("gpt-3.5-turbo", 10, false), &[])
        .await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("model_not_allowed:gpt-3.5-turbo"));
    // playground is in monitor mode: the would-be deny is recorded, the request goes through.
    let r = env
        .chat("playground", chat_body("gpt-4o", 10, false), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(env.gw.received().len(), 1);
    let recs = wait_log(&env.log, 3);
    assert_eq!(
        recs[0]["reasons"],
        serde_json::json!(["policy_denied", "unknown_app"])
    );
    assert!(recs[1]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "model_not_allowed:gpt-3.5-turbo"));
    assert_eq!(recs[2]["decision"], "allow");
    assert!(
        recs[2]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "monitor:model_not_allowed:gpt-4o"),
        "{}",
        recs[2]
    );
    assert!(recs
        .iter()
        .all(|r| r["policy_revision"] == recs[0]["policy_revision"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_good_changes_and_rejects_bad_ones_whole() {
    let env = Env::start("reload");
    let rev0 = env.revision().await;
    assert_eq!(
        env.chat("demo-app", chat_body("gpt-4o-mini", 10, false), &[])
            .await
            .status,
        200
    );

    // A good change: demo-app now gets 1 request per minute. It applies without a restart.
    let budgets = env.policy_dir.join("data/budgets.yaml");
    let text = std::fs::read_to_string(&budgets).unwrap();
    std::fs::write(
        &budgets,
        text.replace(
            "requests_per_minute: { hard: 5 }",
            "requests_per_minute: { hard: 1 }",
        ),
    )
    .unwrap();
    let mut rev1 = rev0.clone();
    for _ in 0..100 {
        rev1 = env.revision().await;
        if rev1 != rev0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(rev1, rev0, "the change was picked up within 2 s");
    // Counters survived: the request made before the reload counts against the new limit.
    let r = env
        .chat("demo-app", chat_body("gpt-4o-mini", 10, false), &[])
        .await;
    assert_eq!(r.status, 429);

    // A bad change (broken Rego) is rejected whole; the old revision keeps serving.
    let before = env.admin_get("/metrics").await;
    std::fs::write(
        env.policy_dir.join("airlock.rego"),
        "package airlock\n\ndecision := {",
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || {
            let p = env.admin;
            let body = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let r = Conn::open(p)
                        .await
                        .unwrap()
                        .request("GET", "a", "/config", &[], "")
                        .await
                        .unwrap();
                    String::from_utf8_lossy(&r.body).into_owned()
                })
            })
            .join()
            .unwrap();
            body.contains("\"last_reload_error\": \"")
        }),
        "the rejected reload is visible on /config"
    );
    assert_eq!(env.revision().await, rev1, "revision unchanged");
    let after = env.admin_get("/metrics").await;
    let errs = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("airlock_config_reloads_total{result=\"error\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(errs(&after) > errs(&before), "{after}");
    // Still serving on the old policy: support-bot is allowed, a stranger still denied.
    assert_eq!(
        env.chat("support-bot", chat_body("gpt-4o-mini", 10, false), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        env.chat("stranger", chat_body("gpt-4o-mini", 10, false), &[])
            .await
            .status,
        403
    );
    assert!(
        env.airlock.shared.readiness.pending().is_empty(),
        "still ready"
    );
    // Bad YAML and an unknown key in the config file: rejected whole as well.
    let cfg_path = env.airlock.shared.state.load().loaded.path.clone();
    let good_cfg = std::fs::read_to_string(&cfg_path).unwrap();
    for bad in [
        format!("{good_cfg}\nlimits: [this is: not yaml"),
        good_cfg.replace("explicit:", "explcit:"),
    ] {
        let errors_before = errs(&env.admin_get("/metrics").await);
        std::fs::write(&cfg_path, &bad).unwrap();
        let mut seen = false;
        for _ in 0..150 {
            if errs(&env.admin_get("/metrics").await) > errors_before {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen, "rejected: {bad}");
        assert_eq!(env.revision().await, rev1);
        assert_eq!(
            env.chat("support-bot", chat_body("gpt-4o-mini", 10, false), &[])
                .await
                .status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_state_they_started_with() {
    let env = Env::start("inflight");
    let rev0 = env.revision().await;
    // A slow stream is in flight while security ops tighten support-bot's budget.
    let mut c = Conn::open(env.app).await.unwrap();
    let resp = c
        .send(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            &[
                ("x-airlock-app", "support-bot"),
                ("x-mock-chunks", "10"),
                ("x-mock-chunk-delay-ms", "100"),
            ],
            chat_body("gpt-4o-mini", 100, true),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let budgets = env.policy_dir.join("data/budgets.yaml");
    let text = std::fs::read_to_string(&budgets).unwrap();
    std::fs::write(
        &budgets,
        text.replace(
            "requests_per_minute: { hard: 120, soft: 100 }",
            "requests_per_minute: { hard: 1 }",
        ),
    )
    .unwrap();
    use http_body_util::BodyExt;
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("[DONE]"),
        "the stream completed"
    );
    assert!(wait_until(Duration::from_secs(3), || env
        .airlock
        .shared
        .state
        .load()
        .revision
        .0
        != rev0));
    let recs = wait_log(&env.log, 1);
    assert_eq!(
        recs[0]["policy_revision"],
        rev0.as_str(),
        "recorded against the revision it ran on"
    );
    assert_eq!(recs[0]["status"], 200);
    // The next request sees the new limit (the in-flight one already used the only slot).
    let r = env
        .chat("support-bot", chat_body("gpt-4o-mini", 10, false), &[])
        .await;
    assert_eq!(r.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_flip_drives_a_reload() {
    let dir = TempDir::new("cm");
    let pki = Pki::create(
        &dir.path().join("pki"),
        &["api.openai.com", "api.anthropic.com"],
    )
    .unwrap();
    let gw = MockGateway::start(
        "127.0.0.1:0".parse().unwrap(),
        &pki.server_cert,
        &pki.server_key,
        GatewayOpts::default(),
    )
    .unwrap();
    let mount = dir.path().join("etc-airlock");
    let log = dir.path().join("decisions.jsonl");
    let (yaml, app, _admin) = config_yaml(gw.addr, &pki.ca_pem, &mount, &log);
    let read = |p: &str| std::fs::read(repo_policies().join(p)).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("airlock.yaml".into(), yaml.into_bytes()),
        ("airlock.rego".into(), read("airlock.rego")),
        ("redaction.yaml".into(), read("redaction.yaml")),
        (
            "dictionaries/customers.txt".into(),
            read("dictionaries/customers.txt"),
        ),
        (
            "dictionaries/codenames.txt".into(),
            read("dictionaries/codenames.txt"),
        ),
        ("data/apps.yaml".into(), read("data/apps.yaml")),
        ("data/budgets.yaml".into(), read("data/budgets.yaml")),
        ("data/prices.yaml".into(), read("data/prices.yaml")),
    ];
    let as_refs = |f: &Vec<(String, Vec<u8>)>| {
        f.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let owned = as_refs(&files);
    let refs: Vec<(&str, &[u8])> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let mut vol = ConfigMapVolume::create(&mount, &refs).unwrap();
    let airlock = Airlock::start(&mount.join("airlock.yaml")).expect("starts from the ConfigMap");
    let rev0 = airlock.shared.state.load().revision.0.clone();
    let r = post(
        app,
        "api.openai.com",
        "/v1/chat/completions",
        &[("x-airlock-app", "newcomer")],
        chat_body("gpt-4o-mini", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "unknown app before the update");

    // Security ops add the app to data/apps.yaml; the kubelet flips ..data.
    let apps = String::from_utf8(read("data/apps.yaml")).unwrap().replacen(
        "apps:\n",
        "apps:\n  newcomer:\n    mode: enforce\n    models: [gpt-4o-mini]\n",
        1,
    );
    for f in files.iter_mut() {
        if f.0 == "data/apps.yaml" {
            f.1 = apps.clone().into_bytes();
        }
    }
    let owned = as_refs(&files);
    let refs: Vec<(&str, &[u8])> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    vol.update(&refs).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || airlock
            .shared
            .state
            .load()
            .revision
            .0
            != rev0),
        "the ..data flip was seen"
    );
    let r = post(
        app,
        "api.openai.com",
        "/v1/chat/completions",
        &[("x-airlock-app", "newcomer")],
        chat_body("gpt-4o-mini", 10, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_dashboard_and_alerts_is_exported() {
    let env = Env::start("dashboard");
    // Traffic that touches every stage: allowed, redacted, over budget, denied.
    for _ in 0..6 {
        let _ = env
            .chat(
                "demo-app",
                chat_with("gpt-4o-mini", "mail a.b@example.com"),
                &[],
            )
            .await;
    }
    let _ = env
        .chat("stranger", chat_body("gpt-4o-mini", 10, false), &[])
        .await;
    let scrape = env.admin_get("/metrics").await;
    let exported: std::collections::BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut exprs = String::new();
    let dash: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("deploy/grafana/airlock.json")).unwrap())
            .unwrap();
    fn collect(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if (k == "expr" || k == "query") && v.is_string() {
                        out.push_str(v.as_str().unwrap());
                        out.push('\n');
                    } else {
                        collect(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dash, &mut exprs);
    for e in std::fs::read_dir(root.join("deploy")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if text.contains("kind: PrometheusRule") {
            for l in text.lines() {
                if let Some(x) = l.trim().strip_prefix("expr:") {
                    exprs.push_str(x);
                    exprs.push('\n');
                }
            }
        }
    }
    let mut used = std::collections::BTreeSet::new();
    let bytes = exprs.as_bytes();
    let mut i = 0;
    while let Some(pos) = exprs[i..].find("airlock_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        used.insert(exprs[start..end].to_string());
        i = end;
    }
    assert!(used.len() >= 10, "the dashboard uses the metrics: {used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|m| {
            let base = m
                .strip_suffix("_bucket")
                .or_else(|| m.strip_suffix("_sum"))
                .or_else(|| m.strip_suffix("_count"))
                .unwrap_or(m);
            !exported.contains(base)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
}
