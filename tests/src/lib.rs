//! End-to-end harness: a test CA, a TLS mock inference gateway that records
//! exactly what left the node, a way to start Airlock on free loopback ports,
//! and a small HTTP/1.1 client.

pub mod client;
pub mod gateway;
pub mod kubelet;
pub mod pki;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// A free TCP port on 127.0.0.1 (bound then released; pingora cannot report a `:0` port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A fresh temporary directory named after the test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create `$TMPDIR/airlock-<name>-<pid>-<n>`.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("airlock-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Options for a test configuration.
#[derive(Clone)]
pub struct ConfigOpts {
    /// Gateway upstream address.
    pub upstream: SocketAddr,
    /// CA file the proxy trusts for the gateway.
    pub ca_file: PathBuf,
    /// SNI.
    pub sni: String,
    /// mTLS client cert/key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `limits.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `timeouts.read_idle_ms`.
    pub read_idle_ms: u64,
    /// Extra YAML appended verbatim.
    pub extra: String,
}

/// Write an Airlock config into `dir`; returns (config path, app addr, admin addr, log path).
pub fn write_config(dir: &Path, o: &ConfigOpts) -> (PathBuf, SocketAddr, SocketAddr, PathBuf) {
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log = dir.join("decisions.jsonl");
    let client = match &o.client_cert {
        Some((c, k)) => format!(
            "      client_cert_file: {}\n      client_key_file: {}\n",
            c.display(),
            k.display()
        ),
        None => String::new(),
    };
    let yaml = format!(
        "listen:\n  app_http: {app}\nadmin:\n  listen: {admin}\ngateways:\n  - name: openai\n    hosts: [api.openai.com]\n    addresses: [\"127.0.0.77:80\"]\n    upstream: {up}\n    tls:\n      sni: {sni}\n      ca_file: {ca}\n{client}  - name: anthropic\n    provider: anthropic\n    hosts: [api.anthropic.com]\n    upstream: {up}\n    tls:\n      sni: api.anthropic.com\n      ca_file: {ca}\n{client}decision_log:\n  path: {log}\nlimits:\n  max_body_bytes: {max}\ntimeouts:\n  connect_ms: 2000\n  read_idle_ms: {idle}\nexplicit:\n  app_header: x-airlock-app\n{extra}",
        up = o.upstream,
        sni = o.sni,
        ca = o.ca_file.display(),
        log = log.display(),
        max = o.max_body_bytes,
        idle = o.read_idle_ms,
        extra = o.extra,
    );
    let path = dir.join("airlock.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (path, app, admin, log)
}

/// Wait (up to 5 s) until the log holds at least `n` records, then return them all.
/// Records are written after the response is sent, so a test must not race them.
pub fn wait_log(path: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_until(std::time::Duration::from_secs(5), || {
        read_log(path).len() >= n
    });
    read_log(path)
}

/// Read decision records from a log file.
pub fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("decision line is JSON"))
        .collect()
}

/// Wait (bounded) until `f` holds.
pub fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    f()
}
