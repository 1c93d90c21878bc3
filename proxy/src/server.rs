//! Start-up and shutdown of both planes.
//!
//! pingora's `Server::run` blocks and builds its own runtimes, so it runs on a
//! dedicated thread with a shutdown watch we control; the admin plane gets a
//! small runtime of its own beside it. Readiness is declared step by step and
//! only reported once each has really happened (the listener is probed, not
//! assumed).

use crate::admin;
use crate::agent::{config::Mode, Agent, AgentError};
use crate::config::{self, ConfigErrors};
use crate::decision_log::{DecisionLog, LogError};
use crate::metrics::{Metrics, MetricsError};
use crate::proxy::AirlockProxy;
use crate::state::{Readiness, Shared, State, STEP_CONFIG, STEP_EBPF, STEP_LISTENER};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why Airlock could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The decision log cannot be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A listener could not be bound or a thread not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// eBPF enforcement could not be set up.
    #[error("enforcement: {}", crate::agent::error_chain(.0))]
    Agent(#[from] AgentError),
    /// The app listener did not come up in time.
    #[error("app listener {0} did not start accepting connections")]
    ListenerTimeout(std::net::SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Fast,
    Graceful,
}

struct WatchShutdown(watch::Receiver<Option<Stop>>);

#[async_trait]
impl ShutdownSignalWatch for WatchShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        loop {
            let seen = *rx.borrow_and_update();
            match seen {
                Some(Stop::Fast) => return ShutdownSignal::FastShutdown,
                Some(Stop::Graceful) => return ShutdownSignal::GracefulTerminate,
                None => {}
            }
            if rx.changed().await.is_err() {
                return ShutdownSignal::FastShutdown;
            }
        }
    }
}

/// A running Airlock: both planes, and the handles to stop them.
pub struct Airlock {
    /// State shared by both planes.
    pub shared: Arc<Shared>,
    stop_proxy: watch::Sender<Option<Stop>>,
    stop_admin: watch::Sender<bool>,
    proxy_thread: Option<JoinHandle<()>>,
    admin_thread: Option<JoinHandle<()>>,
}

impl Airlock {
    /// Load the configuration at `path` and start both planes. Returns once the
    /// app listener accepts connections.
    pub fn start(path: &Path) -> Result<Airlock, StartError> {
        let loaded = config::load(path)?;
        let state = State::build(loaded)?;
        let cfg = state.loaded.config.clone();
        let metrics = Metrics::new()?;
        let log = DecisionLog::open(&state.loaded.resolve_log_path())?;
        let readiness = Readiness::default();
        readiness.require(STEP_CONFIG);
        readiness.require(STEP_LISTENER);
        // Enforcement first: an app cgroup is pinned before the proxy listens,
        // so its connects are refused (fail closed) rather than let through.
        let agent = if cfg.enforcement.mode == Mode::Ebpf {
            readiness.require(STEP_EBPF);
            let a = Agent::start(&cfg.enforcement, &cfg.apps, cfg.listen.app_http.port())?;
            readiness.set(STEP_EBPF, a.is_ready());
            Some(a)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            metrics,
            log,
            readiness,
            last_reload_error: Mutex::new(None),
            agent,
            budgets: crate::budget::Budgets::new(),
        });
        let rev = shared.state.load().revision.0.clone();
        shared.metrics.set_revision(&rev);
        shared.metrics.reload("ok");
        shared.readiness.set(STEP_CONFIG, true);

        // Admin plane first: probes can see "not ready" while the rest starts.
        let admin_listener = admin::bind(cfg.admin.listen).map_err(|source| StartError::Io {
            what: format!("binding admin.listen {}", cfg.admin.listen),
            source,
        })?;
        let (stop_admin, stop_admin_rx) = watch::channel(false);
        let admin_shared = shared.clone();
        let agent = shared.agent.clone();
        let admin_thread = std::thread::Builder::new()
            .name("airlock-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "admin runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    // Cgroup rescans and kernel log events run beside the admin plane.
                    let _background = agent.as_ref().map(Agent::spawn);
                    match tokio::net::TcpListener::from_std(admin_listener) {
                        Ok(l) => {
                            if let Err(e) = admin::serve(l, admin_shared, stop_admin_rx).await {
                                tracing::error!(error = %e, "admin plane stopped");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "admin listener"),
                    }
                });
            })
            .map_err(|source| StartError::Io {
                what: "spawning admin thread".into(),
                source,
            })?;

        // Fail fast on a taken port: pingora would only log it from its thread.
        drop(
            std::net::TcpListener::bind(cfg.listen.app_http).map_err(|source| StartError::Io {
                what: format!("binding listen.app_http {}", cfg.listen.app_http),
                source,
            })?,
        );

        let conf = ServerConf {
            threads: cfg.proxy.threads,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(cfg.proxy.drain_seconds),
            // One attempt: a request body is not safely replayable in general.
            max_retries: 1,
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut svc = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            AirlockProxy::new(shared.clone()),
            "airlock-app-http",
        );
        svc.add_tcp(&cfg.listen.app_http.to_string());
        server.add_service(svc);
        let (stop_proxy, stop_rx) = watch::channel(None);
        let proxy_thread = std::thread::Builder::new()
            .name("airlock-proxy".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(WatchShutdown(stop_rx)),
                });
            })
            .map_err(|source| StartError::Io {
                what: "spawning proxy thread".into(),
                source,
            })?;

        let mut airlock = Airlock {
            shared: shared.clone(),
            stop_proxy,
            stop_admin,
            proxy_thread: Some(proxy_thread),
            admin_thread: Some(admin_thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect_timeout(
                &cfg.listen.app_http,
                Duration::from_millis(200),
            )
            .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                airlock.stop_now();
                return Err(StartError::ListenerTimeout(cfg.listen.app_http));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.readiness.set(STEP_LISTENER, true);
        Ok(airlock)
    }

    /// Stop at once, dropping in-flight requests (tests, failed start-up).
    pub fn stop_now(&mut self) {
        self.stop(Stop::Fast);
    }

    /// Stop accepting, let in-flight requests finish for `proxy.drain_seconds`, then exit.
    pub fn drain(&mut self) {
        self.stop(Stop::Graceful);
    }

    fn stop(&mut self, sig: Stop) {
        self.shared.readiness.set(STEP_LISTENER, false);
        let _ = self.stop_proxy.send(Some(sig));
        let _ = self.stop_admin.send(true);
        if let Some(t) = self.proxy_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.admin_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Airlock {
    fn drop(&mut self) {
        if self.proxy_thread.is_some() || self.admin_thread.is_some() {
            self.stop_now();
        }
    }
}
