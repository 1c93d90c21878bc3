//! The mock inference gateway as a process, for the demo and the benchmark.
//!
//! Creates its PKI in `--pki-dir` if absent (the CA the proxy must trust is
//! `gateway-ca.pem` there), serves HTTPS, and prints every request it receives
//! as one JSON line on stdout.

use airlock_tests::gateway::{GatewayOpts, MockGateway};
use airlock_tests::pki::Pki;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18443")]
    listen: SocketAddr,
    /// Directory holding (or receiving) the test PKI.
    #[arg(long, default_value = "policies/certs")]
    pki_dir: PathBuf,
    /// Names on the server certificate.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "api.openai.com,api.anthropic.com"
    )]
    names: Vec<String>,
    /// Do not print received requests.
    #[arg(long)]
    quiet: bool,
    /// Keep no copy of request bodies (long benchmark runs).
    #[arg(long)]
    no_record: bool,
    /// Require client certificates signed by the generated client CA.
    #[arg(long)]
    mtls: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let names: Vec<&str> = a.names.iter().map(String::as_str).collect();
    let ca = a.pki_dir.join("gateway-ca.pem");
    let pki = if ca.exists() && a.pki_dir.join("gateway.pem").exists() {
        Pki {
            ca_pem: ca,
            server_cert: a.pki_dir.join("gateway.pem"),
            server_key: a.pki_dir.join("gateway-key.pem"),
            client_ca_pem: a.pki_dir.join("client-ca.pem"),
            client_cert: a.pki_dir.join("client.pem"),
            client_key: a.pki_dir.join("client-key.pem"),
            other_ca_pem: a.pki_dir.join("other-ca.pem"),
        }
    } else {
        Pki::create(&a.pki_dir, &names)?
    };
    let opts = GatewayOpts {
        client_ca: a.mtls.then(|| pki.client_ca_pem.clone()),
        no_record: a.no_record,
    };
    let gw = MockGateway::start(a.listen, &pki.server_cert, &pki.server_key, opts)?;
    eprintln!(
        "mock-gateway: https://{} (CA {})",
        gw.addr,
        pki.ca_pem.display()
    );
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if a.quiet {
            continue;
        }
        let r = gw.received();
        for req in &r[seen.min(r.len())..] {
            println!("{}", serde_json::to_string(req)?);
        }
        seen = r.len();
    }
}
