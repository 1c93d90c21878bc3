//! Connect-cost micro benchmark: connects per second from a process in an
//! app cgroup, without and then with the programs attached, in one run.
//!
//! For `cargo xtask bench`. Needs root. Uses its own cgroup and private
//! bpffs (removed at the end) and a loopback listener standing in for the
//! proxy, which also takes each origin record as the proxy would.

use std::{
    io,
    net::{SocketAddrV4, TcpListener},
    thread,
    time::{Duration, Instant},
};

use super::{
    testsupport::{raw, BpffsGuard, CgroupGuard},
    Agent, AgentError, AppRule, EnforcementConfig,
};

/// Result of [`connect_cost`].
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Connects per phase (the rates come from its fastest round).
    pub connects: usize,
    /// Connects per second, programs not attached.
    pub baseline_per_sec: f64,
    /// Connects per second, programs attached (redirect + origin record +
    /// sock_ops re-key + the listener's lookup and delete).
    pub attached_per_sec: f64,
    /// Added wall time per `connect()`+`close()`, in nanoseconds (can be
    /// slightly negative when the difference is within noise).
    pub added_ns_per_connect: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connect cost ({} connects): baseline {:.0}/s, attached {:.0}/s, +{:.1} µs per connect",
            self.connects,
            self.baseline_per_sec,
            self.attached_per_sec,
            self.added_ns_per_connect / 1000.0
        )
    }
}

fn bench_err(e: io::Error) -> AgentError {
    AgentError::Io {
        what: "benchmark",
        path: "connect_cost".into(),
        source: e,
    }
}

/// Rounds per phase; the fastest round of each phase is reported, which
/// keeps other load on the machine out of the comparison.
const ROUNDS: usize = 5;

/// Runs `n` loopback connects (each `connect` + abortive `close`) from
/// processes in two fresh cgroups, one with the programs attached and one
/// without, interleaved in rounds in the same run.
pub fn connect_cost(n: usize) -> Result<Report, AgentError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(bench_err(io::Error::other("connect_cost needs root")));
    }
    let per_round = n.div_ceil(ROUNDS).max(1);
    let n = per_round * ROUNDS;
    let plain = CgroupGuard::new("bench-plain").map_err(bench_err)?;
    let app = CgroupGuard::new("bench-app").map_err(bench_err)?;
    let fs = BpffsGuard::new("bench").map_err(bench_err)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(bench_err)?;
    let port = listener.local_addr().map_err(bench_err)?.port();

    let cfg = EnforcementConfig {
        bpffs: fs.path().to_owned(),
        ..Default::default()
    };
    let apps = [AppRule {
        id: "bench".into(),
        cgroups: vec![app.rel().to_owned()],
    }];
    let agent = Agent::start(&cfg, &apps, port)?;
    let origins = agent.origins();
    // The attached side connects to a dead address and is redirected to the
    // listener; the plain side connects to the listener directly.
    let redirected = SocketAddrV4::new([127, 0, 0, 2].into(), 9);

    // Warm-up round, discarded.
    run_phase(&plain, &listener, per_round, raw::localhost(port), None)?;
    let mut base = Duration::MAX;
    let mut attached = Duration::MAX;
    let result = (|| {
        for _ in 0..ROUNDS {
            base = base.min(run_phase(
                &plain,
                &listener,
                per_round,
                raw::localhost(port),
                None,
            )?);
            attached = attached.min(run_phase(
                &app,
                &listener,
                per_round,
                redirected,
                Some(&origins),
            )?);
        }
        Ok::<_, AgentError>(())
    })();
    drop(agent);
    super::detach(fs.path())?;
    result?;

    let per_sec = |d: Duration| per_round as f64 / d.as_secs_f64().max(1e-9);
    Ok(Report {
        connects: n,
        baseline_per_sec: per_sec(base),
        attached_per_sec: per_sec(attached),
        added_ns_per_connect: (attached.as_nanos() as f64 - base.as_nanos() as f64)
            / per_round as f64,
    })
}

fn run_phase(
    cg: &CgroupGuard,
    listener: &TcpListener,
    n: usize,
    target: SocketAddrV4,
    origins: Option<&crate::intercept::Origins>,
) -> Result<Duration, AgentError> {
    let l = listener.try_clone().map_err(bench_err)?;
    let origins = origins.cloned();
    let acceptor = thread::spawn(move || {
        for _ in 0..n {
            let Ok((s, peer)) = l.accept() else { break };
            if let Some(o) = &origins {
                let _ = o.take(peer);
            }
            drop(s);
        }
    });
    let start = Instant::now();
    let code = cg
        .fork(|| {
            for _ in 0..n {
                if raw::tcp_connect_reset(target) != 0 {
                    return 1;
                }
            }
            0
        })
        .map_err(bench_err)?;
    let took = start.elapsed();
    let _ = acceptor.join();
    if code != 0 {
        return Err(bench_err(io::Error::other(format!(
            "benchmark client failed (exit {code})"
        ))));
    }
    Ok(took)
}
