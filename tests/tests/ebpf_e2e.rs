//! Transparent capture end to end, as root: real eBPF on a child cgroup made by
//! the test, the real proxy, the TLS mock gateway, and an unmodified `curl`.
//!
//! The cgroup (`airlock-test-<name>-<pid>`) and the private bpffs are removed in
//! `Drop` even when an assertion fails; nothing is ever attached to the root.
//! Without root these tests fail: they do not skip.

use airlock::agent::testsupport::{require_root, BpffsGuard, CgroupGuard};
use airlock::server::Airlock;
use airlock_tests::gateway::{GatewayOpts, MockGateway};
use airlock_tests::pki::Pki;
use airlock_tests::{free_port, wait_log, TempDir};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const APP: &str = "e2e-app";

/// A listener on an original destination: it must never see a connection.
struct Trap {
    hits: Arc<AtomicUsize>,
    addr: SocketAddr,
}

impl Trap {
    fn bind(addr: &str) -> Trap {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind trap {addr}: {e}"));
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        // Polls until the process ends (the listener lives as long as the test binary).
        std::thread::spawn(move || loop {
            match l.accept() {
                Ok(_) => {
                    h.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        });
        Trap { hits, addr }
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

struct World {
    _dir: TempDir,
    cg: CgroupGuard,
    fs: BpffsGuard,
    cfg: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    gw: MockGateway,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = airlock::agent::detach(self.fs.path());
    }
}

impl World {
    fn new(name: &str, v6_port: u16) -> World {
        require_root();
        let dir = TempDir::new(name);
        let cg = CgroupGuard::new(name).expect("test cgroup");
        let fs = BpffsGuard::new(name).expect("private bpffs");
        let pki = Pki::create(&dir.path().join("pki"), &["api.openai.com"]).unwrap();
        let gw = MockGateway::start(
            "127.0.0.1:0".parse().unwrap(),
            &pki.server_cert,
            &pki.server_key,
            GatewayOpts::default(),
        )
        .unwrap();
        let app_port = free_port();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("decisions.jsonl");
        let yaml = format!(
            "listen:\n  app_http: 127.0.0.1:{app_port}\nadmin:\n  listen: {admin}\ngateways:\n  - name: openai\n    hosts: [api.openai.com]\n    addresses: [\"127.0.0.77:80\", \"[::1]:{v6_port}\"]\n    upstream: {gw}\n    tls:\n      sni: api.openai.com\n      ca_file: {ca}\ndecision_log:\n  path: {log}\nenforcement:\n  mode: ebpf\n  cgroup_root: {root}\n  bpffs: {bpffs}\n  redirect_address: 127.0.0.1\n  dns_resolvers: [\"127.0.0.53:53\"]\napps:\n  - id: {APP}\n    cgroups: [\"{rel}\"]\n",
            gw = gw.addr,
            ca = pki.ca_pem.display(),
            log = log.display(),
            root = cg.root().display(),
            bpffs = fs.path().display(),
            rel = cg.rel(),
        );
        let cfg = dir.path().join("airlock.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        World {
            _dir: dir,
            cg,
            fs,
            cfg,
            log,
            admin,
            gw,
        }
    }

    /// An unmodified curl inside the app cgroup.
    fn curl_in_app(&self, args: &[&str]) -> Output {
        self.cg
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-H",
                "content-type: application/json",
            ])
            .args(args)
            .output()
            .expect("run curl")
    }
}

fn body() -> &'static str {
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello from a cgroup"}]}"#
}

fn attached_kinds(cg: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cg)
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

#[test]
fn unmodified_curl_is_captured_routed_over_tls_and_identified() {
    let v6_trap = Trap::bind("[::1]:0");
    let w = World::new("e2e-capture", v6_trap.addr.port());
    let trap = Trap::bind("127.0.0.77:80");
    let other = Trap::bind("127.0.0.88:80");
    let airlock = Airlock::start(&w.cfg).expect("airlock with enforcement starts");
    assert!(
        airlock.shared.readiness.pending().is_empty(),
        "ready once attached"
    );

    // 1. By address, exactly as the app would call its gateway.
    let out = w.curl_in_app(&["http://127.0.0.77/v1/chat/completions", "-d", body()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    let got = w.gw.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].sni.as_deref(),
        Some("api.openai.com"),
        "TLS with the gateway's SNI"
    );
    assert_eq!(got[0].body, body().as_bytes());
    let recs = wait_log(&w.log, 1);
    assert_eq!(recs[0]["app"], APP);
    assert_eq!(recs[0]["cgroup_id"], w.cg.id());
    assert!(recs[0]["pid"].as_u64().unwrap() > 1);
    assert_eq!(recs[0]["origin"], "127.0.0.77:80");
    assert_eq!(recs[0]["route"], "openai");

    // 2. By host name (DNS answer pinned with --resolve).
    let out = w.curl_in_app(&[
        "--resolve",
        "api.openai.com:80:127.0.0.77",
        "http://api.openai.com/v1/chat/completions",
        "-d",
        body(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.gw.received().len(), 2);

    // 3. IPv6.
    let url = format!("http://[::1]:{}/v1/chat/completions", v6_trap.addr.port());
    let out = w.curl_in_app(&["-g", &url, "-d", body()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.gw.received().len(), 3);
    let recs = wait_log(&w.log, 3);
    assert_eq!(recs[2]["origin"], format!("[::1]:{}", v6_trap.addr.port()));

    // 4. A destination no gateway claims: refused with 403, recorded, never reached.
    let out = w.curl_in_app(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "http://127.0.0.88/v1/chat/completions",
        "-d",
        body(),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let recs = wait_log(&w.log, 4);
    assert_eq!(recs[3]["decision"], "deny");
    assert_eq!(recs[3]["reasons"][0], "unknown_destination");
    assert_eq!(recs[3]["origin"], "127.0.0.88:80");

    // 5. A process outside the cgroup is untouched.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
            "http://127.0.0.88/",
        ])
        .output()
        .unwrap();
    let _ = out;
    assert!(
        airlock_tests::wait_until(Duration::from_secs(2), || other.hits() == 1),
        "outside the cgroup the connection goes where it was aimed"
    );

    assert_eq!(trap.hits(), 0, "the original destination saw nothing");
    assert_eq!(v6_trap.hits(), 0);

    // Kernel counters on /metrics.
    let m = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", w.admin)])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&m.stdout);
    let line = m
        .lines()
        .find(|l| l.starts_with(&format!("airlock_redirects_total{{app=\"{APP}\"}}")))
        .unwrap_or_else(|| panic!("{m}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 4.0, "{line}");
    drop(airlock);
}

#[test]
fn proxy_down_fails_closed_and_a_restart_takes_over_the_pins() {
    let w = World::new("e2e-restart", 1);
    let trap = Trap::bind("127.0.0.79:80");
    let mut first = Airlock::start(&w.cfg).unwrap();
    first.stop_now();
    drop(first);

    // No proxy: the app's connect is refused; nothing goes around.
    let out = w.curl_in_app(&["http://127.0.0.79/v1/chat/completions", "-d", body()]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: connection refused; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(trap.hits(), 0);

    // The next agent reuses the pinned programs: no second attach.
    let second = Airlock::start(&w.cfg).unwrap();
    let mut kinds = attached_kinds(w.cg.path());
    kinds.sort();
    let mut unique = kinds.clone();
    unique.dedup();
    assert_eq!(kinds, unique, "exactly one program of each kind: {kinds:?}");
    assert!(kinds.len() >= 5, "{kinds:?}");
    // 127.0.0.79:80 is no gateway: refused by the proxy, still never reaching the trap.
    let out = w.curl_in_app(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "http://127.0.0.79/x",
        "-d",
        body(),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let out = w.curl_in_app(&["http://127.0.0.77/v1/chat/completions", "-d", body()]);
    assert!(out.status.success(), "traffic flows again");
    assert_eq!(trap.hits(), 0);
    drop(second);
}
