//! Open-loop load generator behind `cargo xtask bench`.
//!
//! Requests are scheduled at a fixed rate and latency is measured from each
//! request's scheduled start, so a slow server cannot slow the load down and
//! hide its own queueing (no coordinated omission). Three targets are measured
//! in one invocation: (1) the mock gateway directly over TLS, (2) Airlock with
//! every optional stage off, (3) Airlock as configured by default. The Airlock
//! process's CPU time and peak RSS come from `/proc`.

use airlock_tests::gateway::REQUEST_PATH;
use airlock_tests::pki::Pki;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole comparison and print the table.
    Bench {
        /// The airlock binary.
        #[arg(long)]
        airlock: PathBuf,
        /// The mock-gateway binary.
        #[arg(long)]
        mock_gateway: PathBuf,
        /// Scratch directory (configs, PKI, logs).
        #[arg(long)]
        work_dir: PathBuf,
        /// Seconds per measured run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Request rates.
        #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
        rates: Vec<u32>,
        /// Prompt size in bytes.
        #[arg(long, default_value_t = 16 * 1024)]
        prompt_bytes: usize,
    },
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() -> Result<()> {
    let Cmd::Bench {
        airlock,
        mock_gateway,
        work_dir,
        seconds,
        rates,
        prompt_bytes,
    } = Cli::parse().cmd;
    std::fs::create_dir_all(&work_dir)?;
    // Config files name the CA by path: make it absolute.
    let work_dir = work_dir.canonicalize()?;
    let pki_dir = work_dir.join("pki");
    let _ = std::fs::remove_dir_all(&pki_dir);
    let pki = Pki::create(&pki_dir, &["api.openai.com"])?;
    let gw_port = airlock_tests::free_port();
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw_port}").parse()?;
    let mut kids = Kill(Vec::new());
    kids.0.push(
        Command::new(&mock_gateway)
            .args([
                "--listen",
                &gw_addr.to_string(),
                "--quiet",
                "--no-record",
                "--pki-dir",
            ])
            .arg(&pki_dir)
            .stdout(Stdio::null())
            .spawn()
            .context("starting mock-gateway")?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let tls = Arc::new(tls_client(&pki.ca_pem)?);
    rt.block_on(wait_tcp(gw_addr))?;

    let body = Bytes::from(airlock_tests::client::chat_body(
        "gpt-4o-mini",
        prompt_bytes,
        false,
    ));
    let mut rows = Vec::new();
    println!(
        "machine: {} cores, {}; prompt {} bytes; {} s per run; open loop",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        prompt_bytes,
        seconds
    );
    let default_yaml = default_stages_yaml(&work_dir)?;
    let targets = [
        ("direct", None),
        ("airlock-off", Some(stages_off_yaml())),
        ("airlock-default", Some(default_yaml)),
    ];
    for &rate in &rates {
        let mut base_p50 = 0.0;
        let mut base_p99 = 0.0;
        let mut off_p50 = 0.0;
        let mut off_p99 = 0.0;
        for (name, extra) in &targets {
            let (stats, cpu_per_1k, rss) = match extra {
                None => {
                    let s = rt.block_on(run_load(
                        Target::Direct(gw_addr, tls.clone()),
                        rate,
                        seconds,
                        body.clone(),
                    ))?;
                    (s, None, None)
                }
                Some(extra) => {
                    let dir = work_dir.join(name);
                    std::fs::create_dir_all(&dir)?;
                    let app = airlock_tests::free_port();
                    let admin = airlock_tests::free_port();
                    let cfg = dir.join("airlock.yaml");
                    std::fs::write(
                        &cfg,
                        format!(
                            "listen:\n  app_http: 127.0.0.1:{app}\nadmin:\n  listen: 127.0.0.1:{admin}\ngateways:\n  - name: openai\n    hosts: [api.openai.com]\n    upstream: {gw_addr}\n    tls:\n      sni: api.openai.com\n      ca_file: {}\ndecision_log:\n  path: {}\n{extra}",
                            pki.ca_pem.display(),
                            dir.join("decisions.jsonl").display()
                        ),
                    )?;
                    let _ = std::fs::remove_file(dir.join("decisions.jsonl"));
                    let mut child = Command::new(&airlock)
                        .args(["run", "--config"])
                        .arg(&cfg)
                        .stdout(Stdio::null())
                        .spawn()
                        .context("starting airlock")?;
                    let pid = child.id();
                    let app_addr: SocketAddr = format!("127.0.0.1:{app}").parse()?;
                    if let Err(e) = rt.block_on(wait_tcp(app_addr)) {
                        let _ = child.kill();
                        return Err(e);
                    }
                    // Warm the pool and the code paths before measuring.
                    let _ = rt.block_on(run_load(
                        Target::Proxy(app_addr),
                        rate.min(500),
                        1,
                        body.clone(),
                    ));
                    let cpu0 = proc_cpu_secs(pid)?;
                    let s = rt.block_on(run_load(
                        Target::Proxy(app_addr),
                        rate,
                        seconds,
                        body.clone(),
                    ));
                    let cpu1 = proc_cpu_secs(pid)?;
                    let rss = proc_peak_rss_mb(pid)?;
                    let _ = child.kill();
                    let _ = child.wait();
                    let s = s?;
                    let per_1k = (cpu1 - cpu0) / (s.ok.max(1) as f64) * 1000.0;
                    (s, Some(per_1k), Some(rss))
                }
            };
            let (p50, p99, p999) = (stats.pct(50.0), stats.pct(99.0), stats.pct(99.9));
            let (added50, added99, ratio) = match *name {
                "direct" => {
                    base_p50 = p50;
                    base_p99 = p99;
                    (String::from("-"), String::from("-"), String::from("-"))
                }
                _ => {
                    let r = if *name == "airlock-off" {
                        off_p50 = p50;
                        off_p99 = p99;
                        "1.00".to_string()
                    } else {
                        format!(
                            "{:.2}/{:.2}",
                            p50 / off_p50.max(1e-9),
                            p99 / off_p99.max(1e-9)
                        )
                    };
                    (
                        format!("{:+.3}", p50 - base_p50),
                        format!("{:+.3}", p99 - base_p99),
                        r,
                    )
                }
            };
            rows.push(format!(
                "| {rate:>5} | {name:<15} | {:>6} | {:>6} | {p50:>7.3} | {p99:>7.3} | {p999:>7.3} | {added50:>8} | {added99:>8} | {ratio:>9} | {:>8} | {:>6} |",
                stats.ok,
                stats.errors,
                cpu_per_1k.map(|c| format!("{c:.3}")).unwrap_or("-".into()),
                rss.map(|r| format!("{r:.1}")).unwrap_or("-".into()),
            ));
        }
    }
    println!("\nlatency in ms; added = vs direct; ratio = p50/p99 vs airlock-off; CPU = airlock CPU-seconds per 1,000 requests; RSS = airlock peak MB\n");
    println!("| rate  | target          |   ok   | errors |   p50   |   p99   |  p99.9  | +p50     | +p99     | ratio     | CPU/1k   | RSS MB |");
    println!("|------:|-----------------|-------:|-------:|--------:|--------:|--------:|---------:|---------:|----------:|---------:|-------:|");
    for r in rows {
        println!("{r}");
    }
    drop(kids);
    println!("\nconnect() cost with the eBPF programs attached vs not (same run):");
    match airlock::agent::bench::connect_cost(20_000) {
        Ok(r) => println!("{r}"),
        Err(e) => println!("skipped: {}", airlock::agent::error_chain(&e)),
    }
    Ok(())
}

/// Airlock with every optional stage off: no redaction, policy or budget sections.
fn stages_off_yaml() -> String {
    String::new()
}

/// Airlock as shipped: redaction, Rego policy and budgets from a copy of
/// `policies/`, with an app whose budgets are large enough not to reject.
fn default_stages_yaml(work_dir: &Path) -> Result<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let dst = work_dir.join("policies");
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&src, &dst)?;
    let apps = dst.join("data/apps.yaml");
    let t = std::fs::read_to_string(&apps)?;
    std::fs::write(
        &apps,
        t.replacen(
            "apps:\n",
            "apps:\n  bench-app:\n    mode: enforce\n    models: [gpt-4o-mini]\n",
            1,
        ),
    )?;
    let budgets = dst.join("data/budgets.yaml");
    let t = std::fs::read_to_string(&budgets)?;
    std::fs::write(
        &budgets,
        t.replacen(
            "apps:\n",
            "apps:\n  bench-app:\n    requests_per_minute: { hard: 10000000 }\n    tokens_per_minute: { hard: 100000000000 }\n    cost_per_day_usd: { hard: 100000000.0 }\n",
            1,
        ),
    )?;
    Ok(format!(
        "explicit:\n  app_header: x-airlock-app\nredaction:\n  rules: {p}/redaction.yaml\npolicy:\n  dir: {p}\nbudgets:\n  default_max_tokens: 256\n",
        p = dst.display()
    ))
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        if name == "certs" || name == "airlock.yaml" {
            continue;
        }
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst.join(&name))?;
        } else {
            std::fs::copy(e.path(), dst.join(&name))?;
        }
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Ok((ut + st) / 100.0)
}

fn proc_peak_rss_mb(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

async fn wait_tcp(addr: SocketAddr) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} did not accept connections")
}

fn tls_client(ca: &Path) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(ca)?)) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

#[derive(Clone)]
enum Target {
    Direct(SocketAddr, Arc<tokio_rustls::TlsConnector>),
    Proxy(SocketAddr),
}

async fn connect(t: &Target) -> Result<SendRequest<Full<Bytes>>> {
    match t {
        Target::Direct(addr, tls) => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("api.openai.com")?;
            let s = tls.connect(name, tcp).await?;
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
            tokio::spawn(conn);
            Ok(tx)
        }
        Target::Proxy(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            Ok(tx)
        }
    }
}

struct Stats {
    lat_ms: Vec<f64>,
    ok: u64,
    errors: u64,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.lat_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.lat_ms.len() as f64 - 1.0)).round() as usize;
        self.lat_ms[i.min(self.lat_ms.len() - 1)]
    }
}

async fn one(tx: &mut SendRequest<Full<Bytes>>, body: Bytes) -> Result<bool> {
    let req = http::Request::builder()
        .method("POST")
        .uri(REQUEST_PATH)
        .header("host", "api.openai.com")
        .header("content-type", "application/json")
        .header("x-airlock-app", "bench-app")
        .body(Full::new(body))?;
    tx.ready().await?;
    let resp = tx.send_request(req).await?;
    let ok = resp.status() == 200;
    resp.into_body().collect().await?;
    Ok(ok)
}

async fn run_load(t: Target, rate: u32, seconds: u64, body: Bytes) -> Result<Stats> {
    let pool: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>> = Arc::new(Mutex::new(Vec::new()));
    let total = (rate as u64) * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<(f64, bool)>();
    for i in 0..total {
        let at = start + interval * (i as u32);
        tokio::time::sleep_until(at).await;
        let t = t.clone();
        let pool = pool.clone();
        let body = body.clone();
        let res_tx = res_tx.clone();
        let scheduled = Instant::now() - (tokio::time::Instant::now() - at);
        tokio::spawn(async move {
            let conn = pool.lock().ok().and_then(|mut p| p.pop());
            let mut conn = match conn {
                Some(c) => c,
                None => match connect(&t).await {
                    Ok(c) => c,
                    Err(_) => {
                        let _ = res_tx.send((0.0, false));
                        return;
                    }
                },
            };
            let r = tokio::time::timeout(Duration::from_secs(10), one(&mut conn, body)).await;
            let ok = matches!(r, Ok(Ok(true)));
            let _ = res_tx.send((scheduled.elapsed().as_secs_f64() * 1e3, ok));
            if ok {
                if let Ok(mut p) = pool.lock() {
                    p.push(conn);
                }
            }
        });
    }
    drop(res_tx);
    let mut s = Stats {
        lat_ms: Vec::with_capacity(total as usize),
        ok: 0,
        errors: 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while let Ok(Some((ms, ok))) = tokio::time::timeout_at(deadline, res_rx.recv()).await {
        if ok {
            s.ok += 1;
            s.lat_ms.push(ms);
        } else {
            s.errors += 1;
        }
    }
    s.lat_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(s)
}
