//! The `airlock` command line.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 invalid input (bad config, a
//! body Airlock would refuse, a broken log chain).

use airlock::decision_log::{verify, Verification};
use airlock::server::Airlock;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Pins AI micro apps' egress to an inspecting proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy and the admin plane.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "policies/airlock.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration and report every problem.
    Check {
        /// Configuration file.
        #[arg(long, default_value = "policies/airlock.yaml")]
        config: PathBuf,
    },
    /// Verify the hash chain of a decision log and report the first broken link.
    VerifyLog {
        /// Decision log file (JSON lines).
        file: PathBuf,
    },
    /// Remove every pinned eBPF program, link and map (enforcement off on this node).
    Detach {
        /// Configuration file (for `enforcement.bpffs`).
        #[arg(long, default_value = "policies/airlock.yaml")]
        config: PathBuf,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Read a request body on stdin and write it as Airlock would forward it.
    Redact {
        /// Configuration file (its `redaction.rules` are used).
        #[arg(long, default_value = "policies/airlock.yaml")]
        config: PathBuf,
        /// Print the findings as a JSON array instead of the body.
        #[arg(long)]
        findings: bool,
        /// Content-Type of the body.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Request path (selects nothing today: every string is scanned).
        #[arg(long, default_value = "/v1/chat/completions")]
        path: String,
        /// App id (keys the `hash` action).
        #[arg(long, default_value = "cli")]
        app: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Run the Rego unit tests (`test_` rules) in a policy directory.
    Test {
        /// Policy directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn try_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Check { config } => match airlock::config::load(&config)
            .map_err(airlock::server::StartError::from)
            .and_then(|l| airlock::state::State::build(l).map_err(Into::into))
        {
            Ok(st) => {
                println!(
                    "{}: ok (revision {}, {} gateway(s))",
                    config.display(),
                    st.revision.0,
                    st.router.gateways().len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Cmd::Run { config } => run(config),
        Cmd::Detach { config } => {
            let loaded = match airlock::config::load(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let bpffs = &loaded.config.enforcement.bpffs;
            airlock::agent::detach(bpffs)
                .map_err(|e| anyhow::anyhow!(airlock::agent::error_chain(&e)))?;
            println!("detached: {} removed", bpffs.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy {
            cmd: PolicyCmd::Test { dir },
        } => Ok(match airlock::policy::test_command(&dir) {
            0 => ExitCode::SUCCESS,
            n => ExitCode::from(u8::try_from(n).unwrap_or(1)),
        }),
        Cmd::Redact {
            config,
            findings,
            content_type,
            path,
            app,
        } => redact(config, findings, &content_type, &path, &app),
        Cmd::VerifyLog { file } => match verify(&file)? {
            Verification::Intact { lines } => {
                println!("{}: chain intact ({lines} lines)", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Verification::Broken { line, reason } => {
                eprintln!("{}: chain broken at line {line}: {reason}", file.display());
                Ok(ExitCode::from(2))
            }
        },
    }
}

fn run(config: PathBuf) -> anyhow::Result<ExitCode> {
    let mut airlock = match Airlock::start(&config) {
        Ok(a) => a,
        Err(airlock::server::StartError::Config(e)) => {
            eprintln!("{e}");
            eprintln!("airlock: refusing to start with an invalid configuration");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let st = airlock.shared.state.load();
    eprintln!(
        "airlock: listening on {} (apps), {} (admin); revision {}",
        st.loaded.config.listen.app_http, st.loaded.config.admin.listen, st.revision.0
    );
    drop(st);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let graceful = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let graceful = tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => false,
        };
        Ok::<_, std::io::Error>(graceful)
    })?;
    if graceful {
        eprintln!("airlock: SIGTERM, draining");
        airlock.drain();
    } else {
        airlock.stop_now();
    }
    Ok(ExitCode::SUCCESS)
}

fn redact(
    config: PathBuf,
    findings: bool,
    content_type: &str,
    path: &str,
    app: &str,
) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let loaded = match airlock::config::load(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(settings) = &loaded.config.redaction else {
        eprintln!("{}: no redaction section", config.display());
        return Ok(ExitCode::from(2));
    };
    let r = match airlock::redact::Redactor::load(&settings.rules) {
        Ok(r) => r,
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let max = loaded.config.limits.max_body_bytes as usize;
    let mut body = Vec::new();
    std::io::stdin()
        .take(max as u64 + 1)
        .read_to_end(&mut body)?;
    if body.len() > max {
        eprintln!("refused: body larger than limits.max_body_bytes ({max})");
        return Ok(ExitCode::from(2));
    }
    let req = airlock::redact::ScanRequest {
        body: &body,
        content_type: Some(content_type),
        content_encoding: None,
        path,
        app,
        max_bytes: max,
        overrides: None,
    };
    match r.redact(&req) {
        Err(e) => {
            eprintln!("refused: {e}");
            Ok(ExitCode::from(2))
        }
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if findings {
                serde_json::to_writer_pretty(&mut stdout, &out.findings)?;
                writeln!(stdout)?;
            } else if let Some(reason) = &out.blocked {
                eprintln!("refused: blocked ({reason})");
                return Ok(ExitCode::from(2));
            } else {
                stdout.write_all(out.body.as_deref().unwrap_or(&body))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
