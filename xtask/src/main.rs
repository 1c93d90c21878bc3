//! `cargo xtask`: the project's two commands and their helpers.
//!
//! - `demo`  — set up, build, run the mock gateway and Airlock on the default
//!   config, send a request as an app would, show what happened.
//! - `test`  — set up, then fmt check, clippy `-D warnings`, every test.
//! - `bench` — the end-to-end latency/CPU/RSS table (release build).
//! - `setup` — only the set-up: Debian packages, toolchain components, bpf-linker.
//!
//! Every step says what it does and is skipped when already done.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (idempotent).
    Setup,
    /// Run the demo on the default configuration.
    Demo,
    /// fmt check, clippy -D warnings, every test.
    Test,
    /// End-to-end benchmark table.
    Bench {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Request rates (requests/s), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
        rates: Vec<u32>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Demo => {
            setup()?;
            demo(&root)
        }
        Cmd::Test => {
            setup()?;
            test()
        }
        Cmd::Bench { seconds, rates } => {
            setup()?;
            bench(&root, seconds, &rates)
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(Path::to_path_buf)
        .context("xtask must live one level below the workspace root")
}

fn step(msg: &str) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("    $ {}", show(cmd));
    let st = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !st.success() {
        bail!("command failed ({st}): {}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Debian packages: cmake (pingora's zlib-ng), LLVM 22 for bpf-linker, bpftool
/// to inspect attachments, iproute2 for network namespaces, curl as the demo app.
const APT_PACKAGES: &[&str] = &["cmake", "llvm-22-dev", "bpftool", "iproute2", "curl"];

fn setup() -> Result<()> {
    step("set-up: Debian packages");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("    all present: {}", APT_PACKAGES.join(" "));
    } else {
        let sudo = if is_root() { vec![] } else { vec!["sudo"] };
        let apt = |args: &[&str]| {
            let mut c = Command::new(if sudo.is_empty() { "apt-get" } else { "sudo" });
            if !sudo.is_empty() {
                c.arg("apt-get");
            }
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        run(&mut apt(&["update", "-qq"]))?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(missing.iter().copied());
        run(&mut apt(&args))?;
    }

    step("set-up: Rust components (rustfmt, clippy; rust-src for the eBPF nightly)");
    let installed = output("rustup", &["component", "list", "--installed"]).unwrap_or_default();
    for c in ["rustfmt", "clippy"] {
        if installed.lines().any(|l| l.starts_with(c)) {
            eprintln!("    {c}: present");
        } else {
            run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    let nightly = output("rustc", &["+nightly", "--version"]).unwrap_or_default();
    if !nightly.contains("2026-05-19") && !nightly.contains("1.97.0") {
        bail!(
            "the eBPF side needs the machine's `nightly` toolchain (the 2026-05-19 build, LLVM 22); \
             found {:?}. A newer nightly uses LLVM 23, which bpf-linker cannot get here.",
            nightly.trim()
        );
    }
    let nightly_components = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", "nightly"],
    )
    .unwrap_or_default();
    if nightly_components
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("    nightly rust-src: present");
    } else {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    step("set-up: kubectl (renders deploy/ with kustomize in the manifest tests)");
    match output("kubectl", &["version", "--client"]) {
        Some(v) => eprintln!("    present: {}", v.lines().next().unwrap_or("").trim()),
        None => eprintln!(
            "    kubectl is missing: the manifest test will fail; install a kubectl with kustomize ≥ 5 \
             (Debian's kubernetes-client is too old)"
        ),
    }

    step("set-up: bpf-linker 0.13.0 (LLVM 22)");
    let v = output("bpf-linker", &["--version"]).unwrap_or_default();
    if v.contains("0.13.0") {
        eprintln!("    present: {}", v.trim());
    } else {
        // /usr/bin/llvm-config is LLVM 14 on Debian 12: point the build at LLVM 22.
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker@0.13.0",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

fn is_root() -> bool {
    output("id", &["-u"])
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn output(bin: &str, args: &[&str]) -> Option<String> {
    Command::new(bin)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn test() -> Result<()> {
    step("fmt check");
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    step("clippy -D warnings");
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("every test");
    run(Command::new("cargo").args(["test", "--workspace", "--", "--test-threads=4"]))?;
    step("the policy's own Rego unit tests (what security ops run: airlock policy test)");
    run(Command::new("cargo").args([
        "run", "--quiet", "-p", "airlock", "--", "policy", "test", "policies",
    ]))?;
    Ok(())
}

/// Child processes killed on drop, so a failing demo leaves nothing behind.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("    stopped {name}");
        }
    }
}

fn wait_http_ok(addr: &str, path: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(o) = output(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{addr}{path}"),
            ],
        ) {
            if o.trim() == "200" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The cgroup v2 mount: `/sys/fs/cgroup/unified` on hybrid hosts, else `/sys/fs/cgroup`.
fn cgroup_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// The demo's app cgroup, removed (with the eBPF pins) when dropped.
struct DemoCgroup {
    parent: PathBuf,
    app: PathBuf,
    airlock: PathBuf,
}

impl Drop for DemoCgroup {
    fn drop(&mut self) {
        let _ = Command::new(&self.airlock)
            .args(["detach", "--config", "policies/airlock.yaml"])
            .status();
        let _ = std::fs::remove_dir(&self.app);
        let _ = std::fs::remove_dir(&self.parent);
        eprintln!(
            "    removed {} and the pinned eBPF programs",
            self.parent.display()
        );
    }
}

/// Run a command as an unmodified app would: inside the app's cgroup.
fn in_app(cg: &Path, cmd: &str) -> Result<String> {
    let script = format!("echo $$ > {}/cgroup.procs && exec {cmd}", cg.display());
    let o = Command::new("sh").args(["-c", &script]).output()?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

fn demo(root: &Path) -> Result<()> {
    if !is_root() {
        bail!("the demo attaches eBPF programs to a cgroup: run it as root");
    }
    step("build (debug)");
    run(Command::new("cargo").args(["build", "-p", "airlock", "-p", "airlock-tests", "--bins"]))?;
    let target = root.join("target/debug");
    let demo_dir = root.join(".demo");
    std::fs::create_dir_all(&demo_dir)?;
    let mut procs = Procs(Vec::new());

    step("start the mock inference gateway on 127.0.0.1:18443 (HTTPS, CA in policies/certs)");
    let gw_log = demo_dir.join("gateway-received.jsonl");
    let gw = Command::new(target.join("mock-gateway"))
        .args(["--listen", "127.0.0.1:18443", "--pki-dir", "policies/certs"])
        .stdout(std::fs::File::create(&gw_log)?)
        .spawn()
        .context("starting mock-gateway")?;
    procs.0.push(("mock-gateway".into(), gw));
    let ca = root.join("policies/certs/gateway-ca.pem");
    let end = Instant::now() + Duration::from_secs(10);
    while !ca.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }

    step(
        "a trap listener on 127.0.0.77:80, the gateway address the app calls: it must stay silent",
    );
    let trap =
        std::net::TcpListener::bind("127.0.0.77:80").context("binding the trap 127.0.0.77:80")?;
    trap.set_nonblocking(true)?;

    let cg_root = cgroup_root();
    let parent = cg_root.join("airlock-demo");
    let app_cg = parent.join("app");
    step(&format!("create the app's cgroup {}", app_cg.display()));
    std::fs::create_dir_all(&app_cg)?;
    let _cg = DemoCgroup {
        parent,
        app: app_cg.clone(),
        airlock: target.join("airlock"),
    };

    step("check and start Airlock with policies/airlock.yaml (eBPF on airlock-demo/*)");
    run(Command::new(target.join("airlock")).args(["check", "--config", "policies/airlock.yaml"]))?;
    let decisions = demo_dir.join("decisions.jsonl");
    let al = Command::new(target.join("airlock"))
        .args(["run", "--config", "policies/airlock.yaml"])
        .stdout(std::fs::File::create(&decisions)?)
        .spawn()
        .context("starting airlock")?;
    procs.0.push(("airlock".into(), al));
    if !wait_http_ok("127.0.0.1:15020", "/readyz", Duration::from_secs(20)) {
        bail!("airlock did not become ready on 127.0.0.1:15020/readyz");
    }

    let curl = |body: &str| {
        format!(
            "curl -sS -i -H 'content-type: application/json' http://127.0.0.77/v1/chat/completions -d '{body}'"
        )
    };
    let plain = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarise our Q3 churn numbers in two lines."}]}"#;
    step("the app (an unmodified curl in the cgroup) calls http://127.0.0.77/v1/chat/completions");
    println!("$ {}\n{}", curl(plain), in_app(&app_cg, &curl(plain))?);

    let pii = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Refund jane.doe@example.com, card 4111 1111 1111 1111, use key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3i"}]}"#;
    step("the app sends a prompt with an email, a card number and an API key");
    println!("{pii}\n{}", in_app(&app_cg, &curl(pii))?);

    step("what the gateway received (over TLS): the redacted prompt only");
    std::thread::sleep(Duration::from_millis(200));
    for l in std::fs::read_to_string(&gw_log)?.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        println!(
            "connection #{} SNI={} {} {}\n  body: {}",
            v["connection"], v["sni"], v["method"], v["path"], v["body"]
        );
    }

    step("the app keeps calling: demo-app's budget is 5 requests/minute (policies/data/budgets.yaml)");
    for i in 3..=6 {
        let out = in_app(&app_cg, &curl(plain))?;
        let status = out.lines().next().unwrap_or("").trim().to_string();
        println!("request {i}: {status}");
        if status.contains("429") {
            for l in out.lines().filter(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("retry-after") || l.starts_with("ratelimit") || l.starts_with('{')
            }) {
                println!("    {l}");
            }
        }
    }

    step("a destination no gateway claims (127.0.0.88): refused, never reached");
    println!(
        "{}",
        in_app(
            &app_cg,
            "curl -sS http://127.0.0.88/v1/chat/completions -d '{}'"
        )?
    );

    let mut hits = 0;
    while trap.accept().is_ok() {
        hits += 1;
    }
    step(&format!(
        "the trap on 127.0.0.77:80 received {hits} connection(s)"
    ));

    step("decision log (one line per request, hash-chained; no prompt values)");
    std::thread::sleep(Duration::from_millis(300));
    for l in std::fs::read_to_string(&decisions)?.lines() {
        println!("{l}");
    }
    step("a few metrics (http://127.0.0.1:15020/metrics)");
    let m = output("curl", &["-s", "http://127.0.0.1:15020/metrics"]).unwrap_or_default();
    for l in m.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("airlock_requests_total")
                || l.starts_with("airlock_redirects_total")
                || l.starts_with("airlock_redactions_total")
                || l.starts_with("airlock_budget_rejections_total")
                || l.starts_with("airlock_tokens_total")
                || l.starts_with("airlock_cost_usd_total")
                || l.starts_with("airlock_overhead_seconds_count")
                || l.starts_with("airlock_config_revision_info"))
    }) {
        println!("{l}");
    }
    drop(procs);
    step("verify the decision log chain");
    run(Command::new(target.join("airlock"))
        .arg("verify-log")
        .arg(&decisions))?;
    if hits > 0 {
        bail!("the trap listener was reached: capture failed");
    }
    Ok(())
}

fn bench(root: &Path, seconds: u64, rates: &[u32]) -> Result<()> {
    step("build (release)");
    run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "airlock",
        "-p",
        "airlock-tests",
        "--bins",
    ]))?;
    let target = root.join("target/release");
    let dir = root.join(".demo/bench");
    std::fs::create_dir_all(&dir)?;
    let rates: Vec<String> = rates.iter().map(|r| r.to_string()).collect();
    run(Command::new(target.join("loadgen"))
        .arg("bench")
        .arg("--airlock")
        .arg(target.join("airlock"))
        .arg("--mock-gateway")
        .arg(target.join("mock-gateway"))
        .arg("--work-dir")
        .arg(&dir)
        .arg("--seconds")
        .arg(seconds.to_string())
        .arg("--rates")
        .arg(rates.join(",")))?;
    // The stages alone, each against its baseline in the same run:
    // redaction against a serde_json parse + re-serialise of the same body,
    // the policy decision on its own.
    step("redaction and policy stages alone (criterion)");
    run(Command::new("cargo").args([
        "bench", "-p", "airlock", "--bench", "redact", "--bench", "policy",
    ]))?;
    let criterion = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("criterion");
    redaction_summary(&criterion);
    Ok(())
}

/// Median throughput (bytes per second) of one criterion benchmark, from
/// the files criterion leaves under `target/criterion/<id>/new/`.
fn throughput(criterion: &Path, id: &str) -> Option<f64> {
    let dir = criterion.join(id).join("new");
    let read = |f: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).ok()?).ok()
    };
    let bytes = read("benchmark.json")?["throughput"]["Bytes"].as_f64()?;
    let ns = read("estimates.json")?["median"]["point_estimate"].as_f64()?;
    (ns > 0.0).then(|| bytes / ns * 1e9)
}

/// The redaction results as one table, each against the `serde_json`
/// round trip of a body of the same size measured in the same run, and
/// against the targets (≥ 1 GB/s with nothing to find, ≥ 0.3 GB/s dense).
fn redaction_summary(criterion: &Path) {
    step("redaction summary (median; × = against a serde_json parse + re-serialise, same run)");
    let base: Vec<Option<f64>> = ["16", "64"]
        .iter()
        .map(|k| throughput(criterion, &format!("json_roundtrip/{k}")))
        .collect();
    eprintln!(
        "    {:<28} {:>22} {:>22}   target",
        "case", "16 KiB", "64 KiB"
    );
    for group in ["redact", "redact_policy"] {
        for (kind, target) in [("plain", 1e9), ("clean", 1e9), ("dense", 0.3e9)] {
            let mut row = format!("    {:<28}", format!("{group}/{kind}"));
            let mut met = true;
            for (k, b) in ["16", "64"].iter().zip(&base) {
                match throughput(criterion, &format!("{group}/{kind}/{k}")) {
                    Some(t) => {
                        met &= t >= target;
                        let ratio = b.map_or_else(|| "-".to_string(), |b| format!("{:.2}×", t / b));
                        row.push_str(&format!(
                            " {:>13} {:>8}",
                            format!("{:.2} GB/s", t / 1e9),
                            ratio
                        ));
                    }
                    None => {
                        met = false;
                        row.push_str(&format!(" {:>22}", "(no result)"));
                    }
                }
            }
            let verdict = if met { "met" } else { "NOT met" };
            eprintln!("{row}   ≥ {:.1} GB/s {verdict}", target / 1e9);
        }
    }
    // the same body over and over: what is left when the branch predictor
    // has learnt the text, and so how much of the time above it costs
    for kind in ["plain", "clean", "dense"] {
        let one = throughput(criterion, &format!("redact_one_body/{kind}/16"));
        let all = throughput(criterion, &format!("redact/{kind}/16"));
        if let (Some(one), Some(all)) = (one, all) {
            eprintln!(
                "    {:<28} {:>13}   {:.0} % less time once the branch predictor knows the text",
                format!("redact/{kind}, one body"),
                format!("{:.2} GB/s", one / 1e9),
                learnt_saving(all, one) * 100.0
            );
        }
    }
    // the density sweep: where the dense target is crossed
    let sweep = criterion.join("redact_density").join("bytes_per_finding");
    let mut spacings: Vec<usize> = std::fs::read_dir(&sweep)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    spacings.sort_unstable();
    for n in spacings {
        if let Some(t) = throughput(criterion, &format!("redact_density/bytes_per_finding/{n}")) {
            eprintln!(
                "    {:<28} {:>13}",
                format!("redact, 1 finding / {n} B"),
                format!("{:.2} GB/s", t / 1e9)
            );
        }
    }
}

/// How much less time the same bodies take once the branch predictor has
/// learnt them: throughput over different bodies `all` against one body
/// repeated `one`, as a fraction (0 when the repeated body is no faster,
/// as noise can make it).
fn learnt_saving(all: f64, one: f64) -> f64 {
    if one > 0.0 {
        (1.0 - all / one).max(0.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod summary_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn learnt_saving_is_the_time_the_repeated_body_saves() {
        // 1 GB/s over different bodies, 2 GB/s repeated: half the time
        assert!((learnt_saving(1e9, 2e9) - 0.5).abs() < 1e-12);
        assert!((learnt_saving(0.72e9, 1.28e9) - 0.4375).abs() < 1e-12);
        // no faster (noise) or no result: nothing saved, never negative
        assert_eq!(learnt_saving(1.2e9, 1.0e9), 0.0);
        assert_eq!(learnt_saving(1e9, 0.0), 0.0);
    }

    #[test]
    fn throughput_reads_criterion_results() {
        let dir = std::env::temp_dir().join(format!("xtask-crit-{}", std::process::id()));
        let new = dir.join("redact/plain/16/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"throughput":{"Bytes":16000}}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"median":{"point_estimate":16000.0}}"#,
        )
        .unwrap();
        let t = throughput(&dir, "redact/plain/16");
        let missing = throughput(&dir, "redact/plain/64");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(t, Some(1e9));
        assert_eq!(missing, None);
    }
}
