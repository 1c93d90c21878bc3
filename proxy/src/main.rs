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
