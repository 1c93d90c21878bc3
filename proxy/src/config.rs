//! The typed configuration: loaded from YAML, checked whole, then frozen.
//!
//! Loading never stops at the first problem: unknown keys (collected with
//! `serde_ignored`, so a misspelling anywhere is reported, not dropped) and
//! every semantic check are gathered into one [`ConfigErrors`] so a single
//! edit-check cycle shows them all. Paths inside the file are relative to the
//! file's own directory.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default bound on a buffered request body (8 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;

/// The whole configuration file (`policies/airlock.yaml` by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Data-plane listeners.
    pub listen: Listen,
    /// Admin-plane listener.
    pub admin: Admin,
    /// The inference gateways apps may reach.
    #[serde(default)]
    pub gateways: Vec<GatewayConfig>,
    /// Where decision records go.
    #[serde(default)]
    pub decision_log: DecisionLogConfig,
    /// Bounds on what the proxy buffers.
    #[serde(default)]
    pub limits: Limits,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Proxy runtime settings.
    #[serde(default)]
    pub proxy: ProxySettings,
    /// How apps are identified when no eBPF record exists (explicit-proxy mode).
    #[serde(default)]
    pub explicit: ExplicitMode,
    /// eBPF enforcement; absent means `mode: off` (explicit-proxy use).
    #[serde(default = "enforcement_off")]
    pub enforcement: crate::agent::config::EnforcementConfig,
    /// App ids and the cgroups their processes run in.
    #[serde(default)]
    pub apps: Vec<crate::agent::config::AppRule>,
    /// Rego policy; absent means no policy stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyConfig>,
    /// Per-app budgets; absent means no budget stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<crate::budget::BudgetConfig>,
    /// Hot reload of this file and the policy directory.
    #[serde(default)]
    pub reload: crate::reload::ReloadConfig,
    /// Pod identity on Kubernetes.
    #[serde(default)]
    pub identity: crate::identity::kube::IdentityConfig,
    /// Inline redaction of prompts; absent means no redaction stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction: Option<RedactionSettings>,
}

/// `redaction:` — where the rules live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionSettings {
    /// Rules file (`redaction.yaml`); dictionaries it names are relative to it.
    pub rules: PathBuf,
}

fn enforcement_off() -> crate::agent::config::EnforcementConfig {
    crate::agent::config::EnforcementConfig {
        mode: crate::agent::config::Mode::Off,
        ..Default::default()
    }
}

/// Data-plane listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listen {
    /// Plain HTTP from apps: explicit proxy use, or connections the eBPF redirect lands here.
    pub app_http: SocketAddr,
}

/// Admin-plane listener: `/metrics`, `/healthz`, `/readyz`, `/config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admin {
    /// Address of the admin HTTP server.
    pub listen: SocketAddr,
}

/// Which error body shape a gateway's clients expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI-compatible (`{"error":{"message","type","code"}}`).
    #[default]
    Openai,
    /// Anthropic (`{"type":"error","error":{"type","message"}}`).
    Anthropic,
}

/// One inference gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// Name used in metrics and decision records.
    pub name: String,
    /// API shape of the gateway (error bodies).
    #[serde(default)]
    pub provider: Provider,
    /// `Host` header values that route here (explicit mode); compared without port, case-insensitively.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Original destinations (`ip:port`) that route here (eBPF redirect mode).
    #[serde(default)]
    pub addresses: Vec<SocketAddr>,
    /// Where the proxy connects (`host:port`).
    pub upstream: String,
    /// TLS toward the upstream; always verified.
    pub tls: GatewayTls,
}

/// TLS originated by the proxy toward one gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayTls {
    /// Server name sent and verified. Never empty: pingora turns verification off for an empty SNI.
    pub sni: String,
    /// PEM bundle of the CAs trusted for this gateway, and only them.
    pub ca_file: PathBuf,
    /// Client certificate chain (PEM) for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

/// Decision log destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionLogConfig {
    /// `-` for stdout, otherwise a file opened for append.
    pub path: String,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self { path: "-".into() }
    }
}

/// Buffering bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Largest request body buffered for inspection; larger → 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Upstream timeouts, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake; exceeded → 504.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Longest silence between two reads from the upstream (per chunk, not total,
    /// so a long SSE stream is fine while it keeps talking); exceeded → 504.
    #[serde(default = "default_read_idle_ms")]
    pub read_idle_ms: u64,
    /// Longest a single write to the upstream may block.
    #[serde(default = "default_write_ms")]
    pub write_ms: u64,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "default_pool_idle_ms")]
    pub pool_idle_ms: u64,
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_read_idle_ms() -> u64 {
    60_000
}
fn default_write_ms() -> u64 {
    10_000
}
fn default_pool_idle_ms() -> u64 {
    60_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            read_idle_ms: default_read_idle_ms(),
            write_ms: default_write_ms(),
            pool_idle_ms: default_pool_idle_ms(),
        }
    }
}

/// Proxy runtime settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxySettings {
    /// Worker threads of the data plane.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds in-flight requests get to finish on shutdown (keep below the pod's grace period).
    #[serde(default = "default_drain")]
    pub drain_seconds: u64,
}

fn default_threads() -> usize {
    2
}
fn default_drain() -> u64 {
    10
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            threads: default_threads(),
            drain_seconds: default_drain(),
        }
    }
}

/// Explicit-proxy identification (enforcement off, development and tests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExplicitMode {
    /// If set, a request header naming the app (stripped before forwarding).
    /// The client chooses it, so it is for development only; eBPF identity replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_header: Option<String>,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem is in.
    pub file: PathBuf,
    /// Dotted key path (`gateways.0.tls.sni`), or empty when the file itself is bad.
    pub key: String,
    /// What is wrong, naming the bad value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found while loading a configuration; loading fails if any.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A loaded, validated configuration plus where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed configuration, paths still as written.
    pub config: Config,
    /// The file it was read from.
    pub path: PathBuf,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// The raw bytes, for the revision hash.
    pub raw: Vec<u8>,
}

impl LoadedConfig {
    /// Resolve a path from the config against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve(&self.base_dir, p)
    }

    /// The decision log destination: `-` or a path resolved against the config directory.
    pub fn resolve_log_path(&self) -> String {
        let p = &self.config.decision_log.path;
        if p == "-" {
            p.clone()
        } else {
            self.resolve(Path::new(p)).to_string_lossy().into_owned()
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Read, parse and validate a configuration file, reporting every problem.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let err = |key: &str, message: String| ConfigError {
        file: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let raw = std::fs::read(path)
        .map_err(|e| ConfigErrors(vec![err("", format!("cannot read file: {e}"))]))?;
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let mut config = parse(&raw, path)?;
    resolve_paths(&mut config, &base_dir);
    apply_env(&mut config);
    let errors = validate(&config, path, &base_dir);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(LoadedConfig {
        config,
        path: path.to_path_buf(),
        base_dir,
        raw,
    })
}

/// Make the policy and budget paths absolute (relative to the config file's directory).
fn resolve_paths(c: &mut Config, base: &Path) {
    if let Some(p) = c.policy.as_mut() {
        p.dir = resolve(base, &p.dir);
    }
    if let Some(r) = c.redaction.as_mut() {
        r.rules = resolve(base, &r.rules);
    }
    if let Some(b) = c.budgets.as_mut() {
        b.data_file = b.data_file.as_ref().map(|f| resolve(base, f));
        b.prices_file = b.prices_file.as_ref().map(|f| resolve(base, f));
    }
}

/// Environment overrides, applied after parsing and before validation.
/// `AIRLOCK_REDIRECT_ADDRESS`: the node IP from the downward API in Kubernetes.
fn apply_env(c: &mut Config) {
    if let Ok(v) = std::env::var("AIRLOCK_REDIRECT_ADDRESS") {
        match v.trim().parse() {
            Ok(ip) => c.enforcement.redirect_address = ip,
            Err(_) => {
                tracing::error!(value = %v, "AIRLOCK_REDIRECT_ADDRESS is not an IP address; ignored")
            }
        }
    }
}

/// Parse YAML into [`Config`], rejecting unknown keys (all of them, not just the first).
pub fn parse(raw: &[u8], file: &Path) -> Result<Config, ConfigErrors> {
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_slice(raw);
    let result: Result<Config, _> = serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
    let mut errors: Vec<ConfigError> = unknown
        .into_iter()
        .map(|k| ConfigError {
            file: file.to_path_buf(),
            message: "unknown key (misspelt? see the configuration reference in README.md)"
                .to_string(),
            key: k,
        })
        .collect();
    match result {
        Ok(c) if errors.is_empty() => Ok(c),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("line {} column {}: ", l.line(), l.column()))
                .unwrap_or_default();
            errors.push(ConfigError {
                file: file.to_path_buf(),
                key: String::new(),
                message: format!("{at}{e}"),
            });
            Err(ConfigErrors(errors))
        }
    }
}

/// Semantic checks beyond the types; returns every problem.
pub fn validate(c: &Config, file: &Path, base: &Path) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let mut e = |key: String, message: String| {
        errs.push(ConfigError {
            file: file.to_path_buf(),
            key,
            message,
        })
    };
    if c.listen.app_http == c.admin.listen {
        e(
            "admin.listen".into(),
            format!(
                "{} is also listen.app_http; the admin plane needs its own listener",
                c.admin.listen
            ),
        );
    }
    if c.gateways.is_empty() {
        e(
            "gateways".into(),
            "no gateway configured; every request would be refused".into(),
        );
    }
    let mut names = HashSet::new();
    let mut hosts = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, g) in c.gateways.iter().enumerate() {
        let k = |s: &str| format!("gateways.{i}.{s}");
        if g.name.trim().is_empty() {
            e(k("name"), "empty gateway name".into());
        } else if !names.insert(g.name.clone()) {
            e(k("name"), format!("duplicate gateway name {:?}", g.name));
        }
        if g.hosts.is_empty() && g.addresses.is_empty() {
            e(
                k("hosts"),
                format!(
                    "gateway {:?} has neither hosts nor addresses; nothing can route to it",
                    g.name
                ),
            );
        }
        for (j, h) in g.hosts.iter().enumerate() {
            let norm = normalize_host(h);
            if norm.is_empty() || norm.contains(['/', ' ']) {
                e(
                    format!("gateways.{i}.hosts.{j}"),
                    format!("invalid host {h:?}"),
                );
            } else if !hosts.insert(norm) {
                e(
                    format!("gateways.{i}.hosts.{j}"),
                    format!("host {h:?} is claimed by two gateways"),
                );
            }
        }
        for (j, a) in g.addresses.iter().enumerate() {
            if !addrs.insert(*a) {
                e(
                    format!("gateways.{i}.addresses.{j}"),
                    format!("address {a} is claimed by two gateways"),
                );
            }
        }
        if !valid_host_port(&g.upstream) {
            e(
                k("upstream"),
                format!("{:?} is not host:port with a port in 1..=65535", g.upstream),
            );
        }
        if g.tls.sni.trim().is_empty() {
            e(
                k("tls.sni"),
                "empty SNI; it is required (an empty SNI would disable certificate verification)"
                    .into(),
            );
        }
        let ca = resolve(base, &g.tls.ca_file);
        if let Err(msg) = crate::route::load_ca(&ca) {
            e(k("tls.ca_file"), format!("{}: {msg}", ca.display()));
        }
        match (&g.tls.client_cert_file, &g.tls.client_key_file) {
            (Some(cert), Some(key)) => {
                if let Err(msg) =
                    crate::route::load_client_cert(&resolve(base, cert), &resolve(base, key))
                {
                    e(k("tls.client_cert_file"), msg);
                }
            }
            (Some(_), None) => e(
                k("tls.client_key_file"),
                "client_cert_file is set but client_key_file is missing".into(),
            ),
            (None, Some(_)) => e(
                k("tls.client_cert_file"),
                "client_key_file is set but client_cert_file is missing".into(),
            ),
            (None, None) => {}
        }
    }
    if c.limits.max_body_bytes == 0 {
        e(
            "limits.max_body_bytes".into(),
            "0 would refuse every request with a body".into(),
        );
    }
    for (key, v) in [
        ("timeouts.connect_ms", c.timeouts.connect_ms),
        ("timeouts.read_idle_ms", c.timeouts.read_idle_ms),
        ("timeouts.write_ms", c.timeouts.write_ms),
    ] {
        if v == 0 {
            e(key.into(), "0 ms; a timeout must be positive".into());
        }
    }
    if c.proxy.threads == 0 || c.proxy.threads > 256 {
        e(
            "proxy.threads".into(),
            format!("{} is outside 1..=256", c.proxy.threads),
        );
    }
    if let Some(h) = &c.explicit.app_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            e(
                "explicit.app_header".into(),
                format!("{h:?} is not a valid header name"),
            );
        }
    }
    if c.enforcement.mode == crate::agent::config::Mode::Ebpf {
        for msg in c.enforcement.validate() {
            e(String::new(), msg);
        }
        if c.enforcement.redirect_address.is_loopback()
            && !c.listen.app_http.ip().is_loopback()
            && !c.listen.app_http.ip().is_unspecified()
        {
            e(
                "enforcement.redirect_address".into(),
                format!(
                    "{} is loopback but listen.app_http ({}) is not reachable there",
                    c.enforcement.redirect_address, c.listen.app_http
                ),
            );
        }
    }
    for msg in crate::agent::config::validate_apps(&c.apps) {
        e(String::new(), msg);
    }
    if let Some(p) = &c.policy {
        for msg in p.validate() {
            e(String::new(), msg);
        }
    }
    if let Some(b) = &c.budgets {
        for msg in b.validate() {
            e(String::new(), msg);
        }
        if c.policy.is_none() && (b.data_file.is_none() || b.prices_file.is_none()) {
            e(
                "budgets".into(),
                "data_file and prices_file are required when there is no policy section (they default to policy.dir/data/)".into(),
            );
        }
    }
    for msg in c.reload.validate() {
        e(String::new(), msg);
    }
    for msg in c.identity.validate() {
        e(String::new(), msg);
    }
    if c.decision_log.path.trim().is_empty() {
        e(
            "decision_log.path".into(),
            "empty; use \"-\" for stdout".into(),
        );
    }
    errs
}

/// Lower-case a `Host` value and drop any port, for matching.
pub fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let without_port = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else if h.matches(':').count() == 1 {
        h.split(':').next().unwrap_or(h)
    } else {
        h
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains([' ', '/'])
                && port.parse::<u16>().map(|p| p > 0).unwrap_or(false)
        }
        None => false,
    }
}

/// The configuration as shown on the admin port: secrets and key material elided.
pub fn redacted_view(c: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(c).unwrap_or(serde_json::Value::Null);
    if let Some(gws) = v.get_mut("gateways").and_then(|g| g.as_array_mut()) {
        for g in gws {
            if let Some(tls) = g.get_mut("tls").and_then(|t| t.as_object_mut()) {
                if tls.contains_key("client_key_file") {
                    tls.insert("client_key_file".into(), "<elided>".into());
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_hosts() {
        assert_eq!(normalize_host("API.OpenAI.com:443"), "api.openai.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
    }

    #[test]
    fn host_port_syntax() {
        assert!(valid_host_port("127.0.0.1:443"));
        assert!(valid_host_port("[::1]:443"));
        assert!(valid_host_port("gw.internal:8443"));
        assert!(!valid_host_port("gw.internal"));
        assert!(!valid_host_port("gw:0"));
        assert!(!valid_host_port(":80"));
    }

    #[test]
    fn every_unknown_key_is_reported() {
        let yaml = b"listen:\n  app_http: 127.0.0.1:1\n  ap_http: x\nadmin:\n  listen: 127.0.0.1:2\n  lisen: 3\nfoo: 1\n";
        let errs = parse(yaml, Path::new("t.yaml")).unwrap_err().0;
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"listen.ap_http"), "{keys:?}");
        assert!(keys.contains(&"admin.lisen"), "{keys:?}");
        assert!(keys.contains(&"foo"), "{keys:?}");
    }

    #[test]
    fn type_errors_name_the_line() {
        let yaml = b"listen:\n  app_http: not-an-address\nadmin:\n  listen: 127.0.0.1:2\n";
        let errs = parse(yaml, Path::new("t.yaml")).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("line 2"), "{}", errs[0].message);
    }
}
