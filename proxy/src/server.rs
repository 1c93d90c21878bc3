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
use crate::state::{Readiness, Shared, State, STEP_CONFIG, STEP_EBPF, STEP_LISTENER, STEP_PODS};
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
    /// Pod identity could not be set up.
    #[error("identity: {0}")]
    Identity(String),
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
    reloader: Option<crate::reload::Reloader>,
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
        // Pod identity: the pods of this node that opt in are attached and named.
        let kube = if cfg.identity.kubernetes {
            readiness.require(STEP_PODS);
            let node = cfg
                .identity
                .node_name()
                .map_err(|e| StartError::Identity(e.to_string()))?;
            let k = Arc::new(
                crate::identity::kube::KubeIdentity::new(&cfg.identity, node, metrics.kube.clone())
                    .map_err(|e| StartError::Identity(e.to_string()))?,
            );
            if let Some(agent) = &agent {
                let kk = k.clone();
                agent.identity().set_external(Arc::new(move |rel: &str| {
                    kk.app_for_cgroup_path(rel).map(|p| p.app)
                }));
            }
            Some(k)
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
            kube,
        });
        {
            let st = shared.state.load();
            shared.metrics.set_revision(&st.revision.0);
            let names: Vec<&str> = st.router.gateways().iter().map(|g| &*g.name.0).collect();
            shared.metrics.init_series(&names);
        }
        if shared.state.load().limits.is_some() {
            // Load the tokenizer tables now, not on the first request.
            std::thread::spawn(crate::tokens::warm);
        }
        shared.metrics.reload("ok");
        shared.readiness.set(STEP_CONFIG, true);

        // Admin plane first: probes can see "not ready" while the rest starts.
        let admin_listener = admin::bind(cfg.admin.listen).map_err(|source| StartError::Io {
            what: format!("binding admin.listen {}", cfg.admin.listen),
            source,
        })?;
        let (stop_admin, stop_admin_rx) = watch::channel(false);
        // Pod identity: the pods of this node that opt in are attached and named.
        let kube = shared.kube.clone();
        let reloader = start_reloader(path, &shared)?;
        let sighup = reloader.as_ref().map(|r| r.trigger());
        let admin_shared = shared.clone();
        let agent = shared.agent.clone();
        let agent_for_pods = shared.agent.clone();
        let pods_shared = shared.clone();
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
                    if let Some(t) = sighup {
                        tokio::spawn(crate::reload::forward_sighup(t));
                    }
                    if let Some(k) = kube {
                        tokio::spawn(watch_pods(k, agent_for_pods, pods_shared));
                    }
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
            // pingora retries only idempotent requests that failed on a reused
            // connection; POSTs with a body are never replayed. Keep it to one.
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
            reloader,
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

    /// Ask for a reload now (what SIGHUP does). False if reloading is not running.
    pub fn reload(&self) -> bool {
        self.reloader
            .as_ref()
            .is_some_and(|r| r.trigger().trigger(crate::reload::Trigger::Manual))
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
        self.reloader = None;
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

/// Run the pod watch; on every change of the pod set, forget cached answers and
/// re-attach, so a new pod is enforced without waiting for the next rescan.
async fn watch_pods(
    k: Arc<crate::identity::kube::KubeIdentity>,
    agent: Option<Agent>,
    shared: Arc<Shared>,
) {
    let client = loop {
        match crate::identity::kube::default_client().await {
            Ok(c) => break c,
            Err(e) => {
                shared.metrics.kube.record_watch_error();
                tracing::warn!(error = %e, "identity: no Kubernetes client yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let mut changes = k.changes();
    let runner = k.clone();
    tokio::spawn(async move { runner.run(client).await });
    loop {
        if k.synced() {
            shared.readiness.set(STEP_PODS, true);
        }
        if let Some(a) = &agent {
            a.identity().clear();
            let a = a.clone();
            let _ = tokio::task::spawn_blocking(move || a.sync()).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Watch the config file and the policy directory; build each change off to the
/// side and swap it in whole, or keep the last good state and say why.
fn start_reloader(
    path: &Path,
    shared: &Arc<Shared>,
) -> Result<Option<crate::reload::Reloader>, StartError> {
    let st = shared.state.load();
    let cfg = &st.loaded.config;
    let dir = cfg
        .policy
        .as_ref()
        .map(|p| p.dir.clone())
        .or_else(|| {
            cfg.redaction
                .as_ref()
                .and_then(|r| r.rules.parent().map(Path::to_path_buf))
        })
        .unwrap_or_else(|| st.loaded.base_dir.clone());
    let spec = cfg.reload.spec(Some(path.to_path_buf()), dir);
    let listen = (
        cfg.listen.clone(),
        cfg.admin.clone(),
        cfg.enforcement.clone(),
    );
    drop(st);
    let file = path.to_path_buf();
    let build = move || -> Result<State, String> {
        let loaded = config::load(&file).map_err(|e| e.to_string())?;
        State::build(loaded).map_err(|e| e.to_string())
    };
    let sh = shared.clone();
    let report = move |r: crate::reload::ReloadReport<State, String>| match r.result {
        Ok(st) => {
            let c = &st.loaded.config;
            if (c.listen.app_http, c.admin.listen) != (listen.0.app_http, listen.1.listen)
                || c.enforcement != listen.2
            {
                tracing::warn!("listeners and enforcement changes take effect on restart only");
            }
            tracing::info!(revision = %st.revision.0, trigger = ?r.trigger, took = ?r.took, "configuration reloaded");
            sh.install(st);
            sh.metrics.reload("ok");
            if let Ok(mut e) = sh.last_reload_error.lock() {
                *e = None;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, trigger = ?r.trigger, "reload rejected; the last good configuration stays in force");
            sh.metrics.reload("error");
            if let Ok(mut slot) = sh.last_reload_error.lock() {
                *slot = Some(e);
            }
        }
    };
    match crate::reload::Reloader::spawn(spec, build, report) {
        Ok(r) => Ok(Some(r)),
        Err(e) => Err(StartError::Io {
            what: "starting the reloader".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

impl Drop for Airlock {
    fn drop(&mut self) {
        if self.proxy_thread.is_some() || self.admin_thread.is_some() {
            self.stop_now();
        }
    }
}
