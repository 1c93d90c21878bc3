//! The frozen per-revision state and the long-lived parts shared by both planes.
//!
//! A [`State`] is built whole from a configuration, off to the side, then
//! swapped in atomically; each request takes one snapshot at its start and
//! finishes on it even if a reload lands meanwhile.

use crate::config::{ConfigErrors, LoadedConfig};
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::route::Router;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Content hash of what is in force (config, and later policy and data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRevision(pub String);

/// Everything a request needs from one configuration revision.
#[derive(Debug)]
pub struct State {
    /// The configuration as loaded.
    pub loaded: LoadedConfig,
    /// Gateway routing and TLS material.
    pub router: Router,
    /// Revision hash.
    pub revision: PolicyRevision,
}

impl State {
    /// Build the state for a loaded configuration (reads TLS material).
    pub fn build(loaded: LoadedConfig) -> Result<State, ConfigErrors> {
        let router = Router::build(&loaded.config, &loaded.base_dir).map_err(|e| {
            ConfigErrors(vec![crate::config::ConfigError {
                file: loaded.path.clone(),
                key: "gateways".into(),
                message: e.to_string(),
            }])
        })?;
        let mut h = Sha256::new();
        h.update(&loaded.raw);
        let revision = PolicyRevision(hex::encode(&h.finalize()[..6]));
        Ok(State {
            loaded,
            router,
            revision,
        })
    }
}

/// Named start-up steps; ready when all are done.
#[derive(Debug, Default)]
pub struct Readiness {
    steps: Mutex<BTreeMap<&'static str, bool>>,
}

impl Readiness {
    /// Declare a step that must complete before the agent is ready.
    pub fn require(&self, step: &'static str) {
        if let Ok(mut s) = self.steps.lock() {
            s.entry(step).or_insert(false);
        }
    }

    /// Mark a step done (or undone).
    pub fn set(&self, step: &'static str, done: bool) {
        if let Ok(mut s) = self.steps.lock() {
            s.insert(step, done);
        }
    }

    /// Steps not yet done; empty means ready.
    pub fn pending(&self) -> Vec<&'static str> {
        match self.steps.lock() {
            Ok(s) => s.iter().filter(|(_, d)| !**d).map(|(k, _)| *k).collect(),
            Err(_) => vec!["readiness-lock"],
        }
    }
}

/// Readiness step: configuration loaded and TLS material read.
pub const STEP_CONFIG: &str = "config_loaded";
/// Readiness step: the app listener accepts connections.
pub const STEP_LISTENER: &str = "app_listener_bound";
/// Readiness step: eBPF programs loaded and attached to the app cgroups.
pub const STEP_EBPF: &str = "ebpf_attached";

/// What lives for the whole process and is shared by the data and admin planes.
pub struct Shared {
    /// The revision in force.
    pub state: ArcSwap<State>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Decision log writer.
    pub log: DecisionLog,
    /// Start-up steps.
    pub readiness: Readiness,
    /// The last reload error, shown on `/config`.
    pub last_reload_error: Mutex<Option<String>>,
    /// The eBPF agent, when `enforcement.mode` is `ebpf`.
    pub agent: Option<crate::agent::Agent>,
}

impl Shared {
    /// Swap in a new state and publish its revision.
    pub fn install(&self, st: State) {
        self.metrics.set_revision(&st.revision.0);
        self.state.store(Arc::new(st));
    }
}
