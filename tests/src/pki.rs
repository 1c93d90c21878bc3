//! A throwaway PKI made by the test: a gateway CA, the gateway's server
//! certificate, a client CA and a client certificate for mTLS.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files written by [`Pki::create`].
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA that signed the gateway certificate.
    pub ca_pem: PathBuf,
    /// Gateway certificate chain.
    pub server_cert: PathBuf,
    /// Gateway key.
    pub server_key: PathBuf,
    /// CA that signed the client certificate.
    pub client_ca_pem: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// An unrelated CA (for "wrong CA" tests).
    pub other_ca_pem: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok((p.self_signed(&key)?, key))
}

fn leaf(
    names: &[&str],
    client: bool,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    p.distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    Ok((p.signed_by(&key, issuer, issuer_key)?, key))
}

impl Pki {
    /// Generate everything into `dir`. The server certificate covers `names`.
    pub fn create(dir: &Path, names: &[&str]) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let (gw_ca, gw_ca_key) = ca("airlock test gateway CA")?;
        let (srv, srv_key) = leaf(names, false, &gw_ca, &gw_ca_key)?;
        let (cl_ca, cl_ca_key) = ca("airlock test client CA")?;
        let (cl, cl_key) = leaf(&["airlock-agent"], true, &cl_ca, &cl_ca_key)?;
        let (other, _) = ca("unrelated CA")?;
        let w = |name: &str, data: String| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, data)?;
            Ok(p)
        };
        Ok(Pki {
            ca_pem: w("gateway-ca.pem", gw_ca.pem())?,
            server_cert: w("gateway.pem", srv.pem())?,
            server_key: w("gateway-key.pem", srv_key.serialize_pem())?,
            client_ca_pem: w("client-ca.pem", cl_ca.pem())?,
            client_cert: w("client.pem", cl.pem())?,
            client_key: w("client-key.pem", cl_key.serialize_pem())?,
            other_ca_pem: w("other-ca.pem", other.pem())?,
        })
    }
}
