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
    /// Compiled Rego policy (policy stage on).
    pub policy: Option<crate::policy::PolicyBundle>,
    /// Budget limits and prices (budget stage on).
    pub limits: Option<crate::budget::Limits>,
    /// Compiled redaction rules (redaction stage on).
    pub redactor: Option<crate::redact::Redactor>,
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
        let cfg = &loaded.config;
        let fail = |key: &str, message: String| {
            ConfigErrors(vec![crate::config::ConfigError {
                file: loaded.path.clone(),
                key: key.into(),
                message,
            }])
        };
        let (policy, limits, full_rev) = match (&cfg.policy, &cfg.budgets) {
            (Some(p), b) => {
                let bc = b.clone().unwrap_or_default();
                let ps = crate::reload::PolicyState::build(p, &bc, &loaded.raw)
                    .map_err(|e| fail("policy", e.to_string()))?;
                // Without a budgets section the stage is off, even if the files exist.
                let limits = b.as_ref().map(|_| ps.limits);
                (Some(ps.policy), limits, ps.revision.0)
            }
            (None, Some(b)) => {
                let (bf, pf) = match (&b.data_file, &b.prices_file) {
                    (Some(d), Some(p)) => (d.clone(), p.clone()),
                    _ => {
                        return Err(fail(
                            "budgets",
                            "data_file and prices_file are required without a policy section"
                                .into(),
                        ))
                    }
                };
                let limits = crate::budget::Limits::load(&bf, &pf, b)
                    .map_err(|e| fail("budgets", e.to_string()))?;
                let mut h = Sha256::new();
                h.update(&loaded.raw);
                for f in [&bf, &pf] {
                    h.update(std::fs::read(f).unwrap_or_default());
                }
                (None, Some(limits), hex::encode(h.finalize()))
            }
            (None, None) => {
                let mut h = Sha256::new();
                h.update(&loaded.raw);
                (None, None, hex::encode(h.finalize()))
            }
        };
        let redactor = match &cfg.redaction {
            Some(r) => Some(crate::redact::Redactor::load(&r.rules).map_err(|errs| {
                ConfigErrors(
                    errs.iter()
                        .map(|e| crate::config::ConfigError {
                            file: r.rules.clone(),
                            key: String::new(),
                            message: e.to_string(),
                        })
                        .collect(),
                )
            })?),
            None => None,
        };
        // The rules and dictionaries are part of what is in force: hash them into the revision.
        let full_rev = match &cfg.redaction {
            Some(r) => {
                let mut h = Sha256::new();
                h.update(full_rev.as_bytes());
                if let Some(dir) = r.rules.parent() {
                    hash_tree(&mut h, dir, &r.rules);
                }
                hex::encode(h.finalize())
            }
            None => full_rev,
        };
        let revision = PolicyRevision(full_rev.chars().take(12).collect());
        Ok(State {
            loaded,
            router,
            revision,
            policy,
            limits,
            redactor,
        })
    }
}

/// Hash the rules file and the dictionaries directory next to it (sorted, bounded).
fn hash_tree(h: &mut Sha256, dir: &std::path::Path, rules: &std::path::Path) {
    h.update(std::fs::read(rules).unwrap_or_default());
    let dict = dir.join("dictionaries");
    if let Ok(rd) = std::fs::read_dir(&dict) {
        let mut files: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files.into_iter().take(1000) {
            h.update(f.to_string_lossy().as_bytes());
            h.update(std::fs::read(&f).unwrap_or_default());
        }
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
/// Readiness step: the first list of this node's pods is in (pod identity on).
pub const STEP_PODS: &str = "pods_synced";

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
    /// Budget counters: live for the whole process, across reloads.
    pub budgets: crate::budget::Budgets,
    /// Pod identity, when `identity.kubernetes` is on.
    pub kube: Option<std::sync::Arc<crate::identity::kube::KubeIdentity>>,
}

impl Shared {
    /// Swap in a new state and publish its revision.
    pub fn install(&self, st: State) {
        self.metrics.set_revision(&st.revision.0);
        let names: Vec<&str> = st.router.gateways().iter().map(|g| &*g.name.0).collect();
        self.metrics.init_series(&names);
        self.state.store(Arc::new(st));
    }
}
