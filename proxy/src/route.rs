//! Stage 5 of a request: which gateway, and how to reach it over TLS.
//!
//! A request is matched to a gateway by its original destination (the eBPF
//! redirect record) or, in explicit mode, by its `Host` header. Anything else is
//! refused: the proxy never forwards in the clear and never guesses. The TLS
//! material of each gateway (its CA bundle and only it, an optional client
//! certificate) is read and checked once per configuration load, so a request
//! never touches the filesystem.

use crate::config::{normalize_host, Config, GatewayConfig, Provider, Timeouts};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Name of a configured gateway, as used in metrics and decision records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayName(pub Arc<str>);

impl std::fmt::Display for GatewayName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A gateway ready for use on the request path.
pub struct Gateway {
    /// Its name.
    pub name: GatewayName,
    /// Error body shape its clients expect.
    pub provider: Provider,
    /// `host:port` the proxy connects to.
    pub upstream: String,
    /// SNI sent and verified (never empty).
    pub sni: String,
    /// The trusted CAs for this gateway only.
    ca: Arc<[WrappedX509]>,
    /// Client certificate for mTLS.
    client_cert: Option<Arc<CertKey>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .field("sni", &self.sni)
            .field("mtls", &self.client_cert.is_some())
            .finish()
    }
}

impl Gateway {
    /// Build the pingora peer for one upstream attempt. Cheap: clones `Arc`s.
    pub fn peer(&self, t: &Timeouts) -> HttpPeer {
        let mut peer = HttpPeer::new(self.upstream.as_str(), true, self.sni.clone());
        peer.options.ca = Some(self.ca.clone());
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.client_cert_key = self.client_cert.clone();
        peer.options.total_connection_timeout = Some(Duration::from_millis(t.connect_ms));
        peer.options.read_timeout = Some(Duration::from_millis(t.read_idle_ms));
        peer.options.write_timeout = Some(Duration::from_millis(t.write_ms));
        peer.options.idle_timeout = Some(Duration::from_millis(t.pool_idle_ms));
        peer
    }
}

/// Routing table built from one configuration.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Arc<Gateway>>,
    by_addr: HashMap<SocketAddr, Arc<Gateway>>,
    all: Vec<Arc<Gateway>>,
}

/// Why no gateway matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The original destination belongs to no gateway.
    #[error("original destination {0} is not a configured gateway")]
    UnknownAddress(SocketAddr),
    /// The `Host` header names no gateway.
    #[error("host {0:?} is not a configured gateway")]
    UnknownHost(String),
    /// No original destination and no `Host` header.
    #[error("request names no destination (no Host header)")]
    NoDestination,
}

/// Failure building the router (TLS material unreadable).
#[derive(Debug, thiserror::Error)]
#[error("gateway {gateway:?}: {message}")]
pub struct RouterError {
    /// Gateway concerned.
    pub gateway: String,
    /// What failed.
    pub message: String,
}

impl Router {
    /// Build the table, loading each gateway's TLS material (relative paths against `base`).
    pub fn build(c: &Config, base: &Path) -> Result<Router, RouterError> {
        let mut r = Router::default();
        for g in &c.gateways {
            let gw = Arc::new(load_gateway(g, base)?);
            for h in &g.hosts {
                r.by_host.insert(normalize_host(h), gw.clone());
            }
            for a in &g.addresses {
                r.by_addr.insert(*a, gw.clone());
            }
            r.all.push(gw);
        }
        Ok(r)
    }

    /// Match by original destination (redirected traffic) — the Host header is not trusted then.
    pub fn by_origin(&self, dst: SocketAddr) -> Result<Arc<Gateway>, RouteError> {
        self.by_addr
            .get(&dst)
            .cloned()
            .ok_or(RouteError::UnknownAddress(dst))
    }

    /// Match by `Host` header (explicit-proxy mode).
    pub fn by_host(&self, host: Option<&str>) -> Result<Arc<Gateway>, RouteError> {
        let host = host.ok_or(RouteError::NoDestination)?;
        self.by_host
            .get(&normalize_host(host))
            .cloned()
            .ok_or_else(|| RouteError::UnknownHost(host.to_string()))
    }

    /// Every gateway, in configuration order.
    pub fn gateways(&self) -> &[Arc<Gateway>] {
        &self.all
    }
}

fn load_gateway(g: &GatewayConfig, base: &Path) -> Result<Gateway, RouterError> {
    let err = |message: String| RouterError {
        gateway: g.name.clone(),
        message,
    };
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let ca = load_ca(&abs(&g.tls.ca_file)).map_err(err)?;
    let client_cert = match (&g.tls.client_cert_file, &g.tls.client_key_file) {
        (Some(c), Some(k)) => Some(Arc::new(load_client_cert(&abs(c), &abs(k)).map_err(err)?)),
        _ => None,
    };
    if g.tls.sni.is_empty() {
        return Err(err("empty SNI would disable verification".into()));
    }
    Ok(Gateway {
        name: GatewayName(g.name.as_str().into()),
        provider: g.provider,
        upstream: g.upstream.clone(),
        sni: g.tls.sni.clone(),
        ca: ca.into(),
        client_cert,
    })
}

fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut rd = std::io::BufReader::new(data.as_slice());
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut rd).collect();
    let certs = certs.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    let mut out = Vec::with_capacity(certs.len());
    for c in certs {
        // pingora parses certificates with x509-parser and panics on bad DER;
        // check them here, once, with rustls' own parser.
        let mut store = pingora::tls::RootCertStore::empty();
        store
            .add(c.clone())
            .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
        out.push(c.as_ref().to_vec());
    }
    Ok(out)
}

/// Read and check a PEM CA bundle.
pub fn load_ca(path: &Path) -> Result<Vec<WrappedX509>, String> {
    Ok(read_pem_certs(path)?
        .into_iter()
        .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
        .collect())
}

/// Read and check a client certificate chain and its private key.
pub fn load_client_cert(cert: &Path, key: &Path) -> Result<CertKey, String> {
    let chain = read_pem_certs(cert)?;
    let data = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let mut rd = std::io::BufReader::new(data.as_slice());
    let k = rustls_pemfile::private_key(&mut rd)
        .map_err(|e| format!("{}: bad PEM: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let der = k.secret_der().to_vec();
    // pingora converts this back with try_into().unwrap() per connection: make sure it will work.
    pingora::tls::PrivateKeyDer::try_from(der.clone())
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    Ok(CertKey::new(chain, der))
}
