//! Kubernetes pod identity: cgroup path → pod → app.
//!
//! Fourth step of a request's walk, on a Kubernetes node. `intercept` gives
//! the cgroup of the connecting task; the agent turns its id into a path
//! below the cgroup v2 root, and [`KubeIdentity::lookup`] names the pod that
//! path belongs to and the app that pod runs as.
//!
//! The kubelet names every pod's cgroup after the pod's UID, in one of two
//! forms depending on the node's cgroup driver:
//!
//! | driver | QoS `Burstable` / `BestEffort` | QoS `Guaranteed` |
//! | --- | --- | --- |
//! | cgroupfs | `kubepods/burstable/pod<uid>/<container>` | `kubepods/pod<uid>/<container>` |
//! | systemd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/<container>.scope` | `kubepods.slice/kubepods-pod<uid_with_underscores>.slice/…` |
//!
//! Both forms are recognised wherever they sit in the path (a kubelet
//! `--cgroup-root`, or a node that is itself a container, adds a prefix),
//! and the *outermost* pod segment wins: the kubelet created it, whereas a
//! container allowed to create child cgroups could name one after another pod.
//!
//! A background task ([`KubeIdentity::run`]) watches the pods bound to this
//! node (field selector `spec.nodeName=<node>`) with kube-rs. Each full
//! (re)list is built to the side and swapped in whole; single events update
//! a copy that is then swapped in, so readers never lock and never see half a
//! list. When the API server cannot be reached, the last known map stays in
//! force, the watch is retried with capped, jittered exponential backoff, and
//! every failure is counted (`airlock_identity_watch_errors_total`).
//!
//! Only pods that opt in (a pod label, or a namespace listed in the config)
//! are *pinned*: the agent attaches the redirect to their cgroups
//! ([`KubeIdentity::pinned`]). Every other pod is left alone. A connection
//! whose pod cannot be named is handled as `identity.unknown_pod` says
//! (default: deny).
//!
//! Wiring, in the agent (start-up, then per connection):
//!
//! ```text
//! let node    = cfg.identity.node_name()?;                       // NODE_NAME
//! let metrics = KubeMetrics::register(registry)?;
//! let pods    = Arc::new(KubeIdentity::new(&cfg.identity, node, metrics)?);
//! let client  = kube::default_client().await?;                   // service account
//! tokio::spawn({ let p = pods.clone(); async move { p.run(client).await } });
//! readiness: wait for pods.synced()
//! attach:    on pods.changes(), attach to the existing one of p.cgroup_paths
//!            for each p in pods.pinned(); detach from the rest
//! connect:   cgroup id → path below the root → pods.lookup(path):
//!            Pod(id) → app id.app, record id.namespace and id.service_account;
//!            Unlabelled | UnknownPod → pods.unknown_pod() (deny by default)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::utils::{Backoff, WatchStreamExt};
use kube::runtime::watcher::{self, Event};
use kube::Api;
use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::AppId;

/// Default label holding the app id.
pub const DEFAULT_APP_LABEL: &str = "app.kubernetes.io/name";
/// Default environment variable holding this node's name (downward API `spec.nodeName`).
pub const DEFAULT_NODE_NAME_ENV: &str = "NODE_NAME";
/// Annotation a mirror pod carries: the UID the kubelet uses for the static pod's cgroup.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The `identity:` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Name apps after their pods (watch the API server). Off: static `apps:` rules only.
    #[serde(default)]
    pub kubernetes: bool,
    /// Environment variable holding this node's name (the DaemonSet sets it
    /// from the downward API, `spec.nodeName`).
    #[serde(default = "default_node_name_env")]
    pub node_name_env: String,
    /// Pod label whose value is the app id.
    #[serde(default = "default_app_label")]
    pub app_label: String,
    /// Per-namespace override of `app_label`: namespace name → label key.
    #[serde(default)]
    pub namespace_app_labels: BTreeMap<String, String>,
    /// Which pods are pinned to the proxy.
    #[serde(default)]
    pub opt_in: OptIn,
    /// What a connection from a pod that cannot be named gets.
    #[serde(default)]
    pub unknown_pod: UnknownPod,
    /// Longest wait between two attempts to reach the API server, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

/// `identity.opt_in`: a pod is pinned when it matches *either* selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptIn {
    /// `key=value` (the label has this value) or `key` (the label is present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_label: Option<String>,
    /// Namespaces (by name) all of whose pods are pinned. By name, not by
    /// namespace label: reading namespace labels would need a permission on
    /// namespaces, and the agent reads pods only.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// What happens to a connection whose pod the agent cannot name: a pod not
/// (yet) seen by the watcher, or a pinned pod without the app label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPod {
    /// Refuse it (fail closed).
    #[default]
    Deny,
    /// Let it through as the app `unknown`, still inspected and recorded.
    Allow,
}

fn default_node_name_env() -> String {
    DEFAULT_NODE_NAME_ENV.to_string()
}
fn default_app_label() -> String {
    DEFAULT_APP_LABEL.to_string()
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            kubernetes: false,
            node_name_env: default_node_name_env(),
            app_label: default_app_label(),
            namespace_app_labels: BTreeMap::new(),
            opt_in: OptIn::default(),
            unknown_pod: UnknownPod::default(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}

impl IdentityConfig {
    /// Every problem with this section, each naming the key and the bad value.
    /// Pure: the environment is read by [`IdentityConfig::node_name`].
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if !valid_env_name(&self.node_name_env) {
            errs.push(format!(
                "identity.node_name_env: {:?} is not an environment variable name",
                self.node_name_env
            ));
        }
        if let Err(why) = check_label_key(&self.app_label) {
            errs.push(format!(
                "identity.app_label: {:?} is not a label key: {why}",
                self.app_label
            ));
        }
        for (ns, key) in &self.namespace_app_labels {
            if let Err(why) = check_namespace(ns) {
                errs.push(format!(
                    "identity.namespace_app_labels: {ns:?} is not a namespace name: {why}"
                ));
            }
            if let Err(why) = check_label_key(key) {
                errs.push(format!(
                    "identity.namespace_app_labels.{ns}: {key:?} is not a label key: {why}"
                ));
            }
        }
        if let Some(sel) = &self.opt_in.pod_label {
            if let Err(why) = LabelSelector::parse(sel) {
                errs.push(format!(
                    "identity.opt_in.pod_label: {sel:?} is not `key` or `key=value`: {why}"
                ));
            }
        }
        for (i, ns) in self.opt_in.namespaces.iter().enumerate() {
            if let Err(why) = check_namespace(ns) {
                errs.push(format!(
                    "identity.opt_in.namespaces.{i}: {ns:?} is not a namespace name: {why}"
                ));
            }
        }
        if self.kubernetes && self.opt_in.pod_label.is_none() && self.opt_in.namespaces.is_empty() {
            errs.push(
                "identity.opt_in: neither pod_label nor namespaces is set, so no pod would be \
                 pinned (hint: pod_label: \"airlock.dev/enforce=true\")"
                    .to_string(),
            );
        }
        if !(100..=600_000).contains(&self.backoff_max_ms) {
            errs.push(format!(
                "identity.backoff_max_ms: {} is outside 100..=600000",
                self.backoff_max_ms
            ));
        }
        errs
    }

    /// This node's name, from the environment variable `node_name_env`.
    /// Called once at start-up, after [`IdentityConfig::validate`].
    pub fn node_name(&self) -> Result<String, KubeIdentityError> {
        match std::env::var(&self.node_name_env) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(KubeIdentityError::NodeName {
                env: self.node_name_env.clone(),
            }),
        }
    }
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn check_namespace(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("only lowercase letters, digits and '-'");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// A label name (the part after an optional `prefix/`), or a label value when non-empty.
fn check_label_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("name must be 1 to 63 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("only letters, digits, '-', '_' and '.'");
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

fn check_label_key(s: &str) -> Result<(), &'static str> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            let ok_prefix = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|p| check_namespace(p).is_ok());
            if !ok_prefix {
                return Err("prefix must be a DNS subdomain (like example.com)");
            }
            name
        }
        None => s,
    };
    check_label_name(name)
}

/// `key` or `key=value`, as in `identity.opt_in.pod_label`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelSelector {
    key: String,
    value: Option<String>,
}

impl LabelSelector {
    fn parse(s: &str) -> Result<LabelSelector, &'static str> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        check_label_key(key)?;
        if let Some(v) = value {
            if !v.is_empty() {
                check_label_name(v)
                    .map_err(|_| "value: letters, digits, '-', '_', '.', at most 63")?;
            }
        }
        Ok(LabelSelector {
            key: key.to_string(),
            value: value.map(str::to_string),
        })
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
            (None, _) => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

/// Who a connection comes from, as the decision record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    /// The app id (the pod's app label).
    pub app: AppId,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's service account.
    pub service_account: String,
    /// The UID its cgroup is named after.
    pub uid: String,
}

/// A pod's QoS class, which decides where the kubelet puts its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Requests equal limits: directly below `kubepods`.
    Guaranteed,
    /// Below `kubepods/burstable`.
    Burstable,
    /// Below `kubepods/besteffort`.
    BestEffort,
}

impl Qos {
    fn from_status(s: Option<&str>) -> Option<Qos> {
        match s? {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }

    fn segment(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// What the watcher keeps of one pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    namespace: String,
    name: String,
    service_account: String,
    /// UID the cgroup is named after (a mirror pod's static-pod UID).
    cgroup_uid: String,
    /// `None` until the kubelet has reported it.
    qos: Option<Qos>,
    /// The app label's value, when the pod has it.
    app: Option<String>,
    pinned: bool,
}

/// A pinned pod and the cgroup directories (relative to the cgroup v2 root)
/// the agent attaches the redirect to: the one that exists on the node is the
/// one its cgroup driver made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPod {
    /// The pod; the app is `None` when the pod lacks the app label (its
    /// connections are then treated as `identity.unknown_pod` says).
    pub app: Option<AppId>,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub pod: String,
    /// UID in the cgroup name.
    pub uid: String,
    /// `[cgroupfs, systemd]` forms; `None` while the pod status carries no QoS class.
    pub cgroup_paths: Option<[String; 2]>,
}

/// The pod-level cgroup directories for a UID and QoS class: `[cgroupfs, systemd]`.
pub fn pod_cgroup_paths(uid: &str, qos: Qos) -> [String; 2] {
    let uid_ = uid.replace('-', "_");
    match qos.segment() {
        None => [
            format!("kubepods/pod{uid}"),
            format!("kubepods.slice/kubepods-pod{uid_}.slice"),
        ],
        Some(q) => [
            format!("kubepods/{q}/pod{uid}"),
            format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid_}.slice"),
        ],
    }
}

/// What a cgroup path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A pinned pod with its app id.
    Pod(PodIdentity),
    /// A pinned pod without the app label: handle as `identity.unknown_pod` says.
    Unlabelled {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
    },
    /// A pod that has not opted in; its traffic should not reach the proxy
    /// (it did opt out, or the pod was relabelled, a moment ago).
    NotPinned {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
    },
    /// The path names a pod this node's watcher does not know (not yet
    /// listed, or the API server is unreachable), or whose QoS class does not
    /// match the path: handle as `identity.unknown_pod` says.
    UnknownPod {
        /// The UID in the path.
        uid: String,
    },
    /// The path is not below any pod's cgroup.
    NotAPod,
}

/// A pod segment found in a cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodSegment {
    uid: String,
    qos: Qos,
}

/// Find the outermost pod cgroup in `path` (either driver's form) and check
/// that its parents are the ones the kubelet makes.
fn parse_pod_path(path: &str) -> Option<PodSegment> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segs.iter().enumerate() {
        let parent = |n: usize| i.checked_sub(n).and_then(|j| segs.get(j)).copied();
        // cgroupfs: kubepods/[burstable|besteffort/]pod<uid>
        if let Some(uid) = seg.strip_prefix("pod") {
            if !valid_uid(uid) {
                continue;
            }
            let qos = match (parent(1), parent(2)) {
                (Some("kubepods"), _) => Some(Qos::Guaranteed),
                (Some("burstable"), Some("kubepods")) => Some(Qos::Burstable),
                (Some("besteffort"), Some("kubepods")) => Some(Qos::BestEffort),
                _ => None,
            };
            if let Some(qos) = qos {
                return Some(PodSegment {
                    uid: uid.to_string(),
                    qos,
                });
            }
            continue;
        }
        // systemd: [<prefix>-]kubepods[-<qos>]-pod<uid_>.slice, whose parent
        // slice is the name without the last `-pod…` part.
        let Some(stem) = seg.strip_suffix(".slice") else {
            continue;
        };
        let Some((slice_prefix, uid_)) = stem.rsplit_once("-pod") else {
            continue;
        };
        let uid = uid_.replace('_', "-");
        if uid_.contains('-') || !valid_uid(&uid) {
            continue;
        }
        let qos = if slice_prefix.ends_with("kubepods") {
            Qos::Guaranteed
        } else if slice_prefix.ends_with("kubepods-burstable") {
            Qos::Burstable
        } else if slice_prefix.ends_with("kubepods-besteffort") {
            Qos::BestEffort
        } else {
            continue;
        };
        let expected_parent = format!("{slice_prefix}.slice");
        if parent(1) == Some(expected_parent.as_str()) {
            return Some(PodSegment { uid, qos });
        }
    }
    None
}

/// Pod UIDs are UUIDs; static pods use a 32-digit hex hash.
fn valid_uid(s: &str) -> bool {
    (8..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The pods of this node, keyed by the UID their cgroup is named after.
#[derive(Debug, Default, Clone)]
struct PodMap {
    by_uid: HashMap<String, PodEntry>,
}

// ---------------------------------------------------------------------------
// The resolver and its watcher
// ---------------------------------------------------------------------------

/// Errors of the Kubernetes identity source.
#[derive(Debug, thiserror::Error)]
pub enum KubeIdentityError {
    /// The node name is not in the environment.
    #[error(
        "identity: environment variable {env} (identity.node_name_env) is unset or empty \
         (hint: set it from the downward API, fieldRef spec.nodeName)"
    )]
    NodeName {
        /// The variable.
        env: String,
    },
    /// The configuration is invalid.
    #[error("identity: invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// No API server credentials (neither in-cluster nor kubeconfig).
    #[error("identity: cannot configure the Kubernetes client: {0} (hint: in a pod, check the service account token is mounted)")]
    Client(String),
    /// A metric could not be registered (a duplicate name).
    #[error("identity: metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Counters of the watcher, exported with the agent's metrics.
#[derive(Debug, Clone)]
pub struct KubeMetrics {
    watch_errors: IntCounter,
    pods: IntGaugeVec,
}

impl KubeMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<KubeMetrics, KubeIdentityError> {
        let watch_errors = IntCounter::with_opts(Opts::new(
            "airlock_identity_watch_errors_total",
            "Failed list/watch attempts against the Kubernetes API server (the last known pods stay in force)",
        ))?;
        let pods = IntGaugeVec::new(
            Opts::new(
                "airlock_identity_pods",
                "Pods on this node known to the identity watcher, by state (pinned, ignored)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(watch_errors.clone()))?;
        registry.register(Box::new(pods.clone()))?;
        Ok(KubeMetrics { watch_errors, pods })
    }

    /// Count a failed attempt made outside the watcher (no client yet).
    pub fn record_watch_error(&self) {
        self.watch_errors.inc();
    }

    /// Failed list/watch attempts so far.
    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.get()
    }
}

/// Names the pods and apps of this node from the Kubernetes API.
///
/// Built once at start-up; [`KubeIdentity::run`] keeps it current. Share it
/// behind an `Arc`: lookups take no lock.
pub struct KubeIdentity {
    node: String,
    default_app_label: String,
    namespace_app_labels: BTreeMap<String, String>,
    opt_in_label: Option<LabelSelector>,
    opt_in_namespaces: Vec<String>,
    unknown_pod: UnknownPod,
    backoff_max: Duration,
    pods: ArcSwap<PodMap>,
    synced: AtomicBool,
    generation: watch::Sender<u64>,
    metrics: KubeMetrics,
}

impl fmt::Debug for KubeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeIdentity")
            .field("node", &self.node)
            .field("pods", &self.pods.load().by_uid.len())
            .field("synced", &self.synced.load(Ordering::Relaxed))
            .finish()
    }
}

impl KubeIdentity {
    /// A resolver for the pods of `node`, empty until [`KubeIdentity::run`]
    /// has listed them. Rejects an invalid `config` with every problem.
    pub fn new(
        config: &IdentityConfig,
        node: String,
        metrics: KubeMetrics,
    ) -> Result<KubeIdentity, KubeIdentityError> {
        let errs = config.validate();
        if !errs.is_empty() {
            return Err(KubeIdentityError::Config(errs));
        }
        let opt_in_label = match &config.opt_in.pod_label {
            Some(s) => Some(
                LabelSelector::parse(s)
                    .map_err(|why| KubeIdentityError::Config(vec![why.to_string()]))?,
            ),
            None => None,
        };
        let (generation, _) = watch::channel(0);
        Ok(KubeIdentity {
            node,
            default_app_label: config.app_label.clone(),
            namespace_app_labels: config.namespace_app_labels.clone(),
            opt_in_label,
            opt_in_namespaces: config.opt_in.namespaces.clone(),
            unknown_pod: config.unknown_pod,
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            pods: ArcSwap::from_pointee(PodMap::default()),
            synced: AtomicBool::new(false),
            generation,
            metrics,
        })
    }

    /// The node whose pods are watched.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// What to do with a connection whose pod cannot be named.
    pub fn unknown_pod(&self) -> UnknownPod {
        self.unknown_pod
    }

    /// True once the first full list of this node's pods is in; a readiness step
    /// (before it every connection would be from an unknown pod).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The watcher's counters.
    pub fn metrics(&self) -> &KubeMetrics {
        &self.metrics
    }

    /// A receiver that changes whenever the set of pods changes: the agent
    /// re-reads [`KubeIdentity::pinned`] then and attaches/detaches.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The app of the pod a cgroup path (relative to the cgroup v2 root, with
    /// or without a leading `/`) belongs to; `None` for anything but a pinned,
    /// labelled pod. Pure and lock-free: a path parse and a hash lookup.
    pub fn app_for_cgroup_path(&self, path: &str) -> Option<PodIdentity> {
        match self.lookup(path) {
            Lookup::Pod(p) => Some(p),
            _ => None,
        }
    }

    /// Like [`KubeIdentity::app_for_cgroup_path`], saying why there is no app.
    pub fn lookup(&self, path: &str) -> Lookup {
        let Some(seg) = parse_pod_path(path) else {
            return Lookup::NotAPod;
        };
        let map = self.pods.load();
        let Some(e) = map.by_uid.get(&seg.uid) else {
            return Lookup::UnknownPod { uid: seg.uid };
        };
        // The kubelet never moves a pod between QoS classes; a mismatch means
        // the path is not the one the kubelet made for this pod.
        if e.qos.is_some_and(|q| q != seg.qos) {
            return Lookup::UnknownPod { uid: seg.uid };
        }
        if !e.pinned {
            return Lookup::NotPinned {
                namespace: e.namespace.clone(),
                pod: e.name.clone(),
            };
        }
        match &e.app {
            Some(app) => Lookup::Pod(PodIdentity {
                app: AppId(app.clone()),
                namespace: e.namespace.clone(),
                pod: e.name.clone(),
                service_account: e.service_account.clone(),
                uid: e.cgroup_uid.clone(),
            }),
            None => Lookup::Unlabelled {
                namespace: e.namespace.clone(),
                pod: e.name.clone(),
            },
        }
    }

    /// Every pinned pod with its cgroup paths, sorted by namespace and name.
    pub fn pinned(&self) -> Vec<PinnedPod> {
        let map = self.pods.load();
        let mut out: Vec<PinnedPod> = map
            .by_uid
            .values()
            .filter(|e| e.pinned)
            .map(|e| PinnedPod {
                app: e.app.clone().map(AppId),
                namespace: e.namespace.clone(),
                pod: e.name.clone(),
                uid: e.cgroup_uid.clone(),
                cgroup_paths: e.qos.map(|q| pod_cgroup_paths(&e.cgroup_uid, q)),
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        out
    }

    /// How many pods of this node are known (pinned or not).
    pub fn known_pods(&self) -> usize {
        self.pods.load().by_uid.len()
    }

    /// What the watcher keeps of a pod; `None` for a pod without a UID.
    fn entry(&self, pod: &Pod) -> Option<PodEntry> {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let cgroup_uid = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_POD_ANNOTATION))
            .or(meta.uid.as_ref())
            .filter(|u| !u.is_empty())?
            .clone();
        let app_label = self
            .namespace_app_labels
            .get(&namespace)
            .unwrap_or(&self.default_app_label);
        let app = labels.get(app_label).filter(|v| !v.is_empty()).cloned();
        let pinned = self
            .opt_in_label
            .as_ref()
            .is_some_and(|s| s.matches(labels))
            || self.opt_in_namespaces.contains(&namespace);
        Some(PodEntry {
            namespace,
            name: meta.name.clone().unwrap_or_default(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string()),
            cgroup_uid,
            qos: Qos::from_status(pod.status.as_ref().and_then(|s| s.qos_class.as_deref())),
            app,
            pinned,
        })
    }

    /// Swap in a new map and tell the agent.
    fn publish(&self, map: PodMap) {
        let pinned = map.by_uid.values().filter(|e| e.pinned).count();
        let ignored = map.by_uid.len() - pinned;
        self.pods.store(Arc::new(map));
        self.metrics
            .pods
            .with_label_values(&["pinned"])
            .set(i64::try_from(pinned).unwrap_or(i64::MAX));
        self.metrics
            .pods
            .with_label_values(&["ignored"])
            .set(i64::try_from(ignored).unwrap_or(i64::MAX));
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Apply one watch event. `pending` holds a re-list being built to the side.
    fn apply(&self, event: Event<Pod>, pending: &mut Option<PodMap>) {
        match event {
            Event::Init => *pending = Some(PodMap::default()),
            Event::InitApply(pod) => {
                if let (Some(map), Some(e)) = (pending.as_mut(), self.entry(&pod)) {
                    map.by_uid.insert(e.cgroup_uid.clone(), e);
                }
            }
            Event::InitDone => {
                if let Some(map) = pending.take() {
                    tracing::info!(node = %self.node, pods = map.by_uid.len(), "identity: listed the pods of this node");
                    self.publish(map);
                }
                self.synced.store(true, Ordering::Release);
            }
            Event::Apply(pod) => {
                if let Some(e) = self.entry(&pod) {
                    let cur = self.pods.load();
                    if cur.by_uid.get(&e.cgroup_uid) == Some(&e) {
                        return;
                    }
                    let mut map = PodMap::clone(&cur);
                    map.by_uid.insert(e.cgroup_uid.clone(), e);
                    self.publish(map);
                }
            }
            Event::Delete(pod) => {
                if let Some(e) = self.entry(&pod) {
                    let cur = self.pods.load();
                    if !cur.by_uid.contains_key(&e.cgroup_uid) {
                        return;
                    }
                    let mut map = PodMap::clone(&cur);
                    map.by_uid.remove(&e.cgroup_uid);
                    self.publish(map);
                }
            }
        }
    }

    /// Watch this node's pods until the future is dropped. Spawn it on the
    /// agent's runtime at start-up. It never returns on its own: API errors
    /// are logged, counted and retried with backoff, and the last known pods
    /// stay in force meanwhile.
    pub async fn run(&self, client: kube::Client) {
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let mut stream = watcher::watcher(api, config)
            .backoff(JitteredBackoff::new(
                Duration::from_millis(200),
                self.backoff_max,
            ))
            .boxed();
        let mut pending: Option<PodMap> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => self.apply(event, &mut pending),
                Err(e) => {
                    self.metrics.watch_errors.inc();
                    tracing::warn!(
                        node = %self.node,
                        error = %e,
                        pods = self.known_pods(),
                        "identity: cannot list/watch pods; keeping the last known pods and retrying"
                    );
                }
            }
        }
    }
}

/// A Kubernetes client from the pod's service account (or a kubeconfig when
/// run outside a cluster). Called once at start-up.
pub async fn default_client() -> Result<kube::Client, KubeIdentityError> {
    kube::Client::try_default()
        .await
        .map_err(|e| KubeIdentityError::Client(e.to_string()))
}

/// Exponential backoff with full jitter, so a thousand agents do not hit a
/// recovering API server in step. Reset by the watcher after a success.
struct JitteredBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl JitteredBackoff {
    fn new(min: Duration, max: Duration) -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            min,
            max: max.max(min),
            next: min,
            seed,
        }
    }

    /// xorshift64: cheap, and good enough to spread retries.
    fn random(&mut self) -> u64 {
        let mut x = self.seed | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }
}

impl Iterator for JitteredBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let cap = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = cap / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        Some(half + Duration::from_millis(self.random() % spread))
    }
}

impl Backoff for JitteredBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const UID_: &str = "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0";

    #[test]
    fn cgroupfs_and_systemd_paths_parse() {
        let burst = PodSegment {
            uid: UID.into(),
            qos: Qos::Burstable,
        };
        for p in [
            format!("kubepods/burstable/pod{UID}"),
            format!("/kubepods/burstable/pod{UID}/abc123"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-abc.scope"),
            format!("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/x"),
        ] {
            assert_eq!(parse_pod_path(&p), Some(burst.clone()), "{p}");
        }
        let g = parse_pod_path(&format!("kubepods.slice/kubepods-pod{UID_}.slice/c.scope"));
        assert_eq!(g.map(|s| s.qos), Some(Qos::Guaranteed));
        let g = parse_pod_path(&format!("kubepods/pod{UID}/c"));
        assert_eq!(g.map(|s| s.qos), Some(Qos::Guaranteed));
        let be = parse_pod_path(&format!("kubepods/besteffort/pod{UID}"));
        assert_eq!(be.map(|s| s.qos), Some(Qos::BestEffort));
    }

    #[test]
    fn non_pod_paths_do_not_parse() {
        for p in [
            "",
            "/",
            "system.slice/sshd.service",
            "user.slice/user-0.slice",
            "kubepods/burstable",
            "other/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            "kubepods/burstable/podnot-a-uid!",
            "kubepods.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice",
        ] {
            assert_eq!(parse_pod_path(p), None, "{p}");
        }
    }

    #[test]
    fn outermost_pod_segment_wins() {
        let other = "11111111-2222-3333-4444-555555555555";
        let p = format!("kubepods/burstable/pod{UID}/ctr/kubepods/pod{other}");
        assert_eq!(parse_pod_path(&p).map(|s| s.uid), Some(UID.to_string()));
    }

    #[test]
    fn paths_for_a_pod_round_trip() {
        for q in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            for p in pod_cgroup_paths(UID, q) {
                let seg = parse_pod_path(&p);
                assert_eq!(
                    seg,
                    Some(PodSegment {
                        uid: UID.into(),
                        qos: q
                    }),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn validation_reports_every_problem_with_key_and_value() {
        let mut c = IdentityConfig {
            kubernetes: true,
            node_name_env: "1BAD".into(),
            app_label: "-bad".into(),
            backoff_max_ms: 1,
            ..IdentityConfig::default()
        };
        c.namespace_app_labels
            .insert("Team_A".into(), "example.com/".into());
        c.opt_in.namespaces.push("UPPER".into());
        let errs = c.validate();
        let joined = errs.join("\n");
        for needle in [
            "identity.node_name_env: \"1BAD\"",
            "identity.app_label: \"-bad\"",
            "identity.namespace_app_labels: \"Team_A\"",
            "identity.namespace_app_labels.Team_A: \"example.com/\"",
            "identity.opt_in.namespaces.0: \"UPPER\"",
            "identity.backoff_max_ms: 1",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        // No opt-in selector at all is its own error.
        let c = IdentityConfig {
            kubernetes: true,
            ..IdentityConfig::default()
        };
        assert!(c
            .validate()
            .iter()
            .any(|e| e.starts_with("identity.opt_in:")));
        assert!(IdentityConfig::default().validate().is_empty());
    }

    #[test]
    fn selectors() {
        let mut l = BTreeMap::new();
        l.insert("airlock.dev/enforce".to_string(), "true".to_string());
        assert!(LabelSelector::parse("airlock.dev/enforce")
            .unwrap()
            .matches(&l));
        assert!(LabelSelector::parse("airlock.dev/enforce=true")
            .unwrap()
            .matches(&l));
        assert!(!LabelSelector::parse("airlock.dev/enforce=false")
            .unwrap()
            .matches(&l));
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = JitteredBackoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        assert!(d.iter().all(|x| *x <= Duration::from_millis(800)), "{d:?}");
        assert!(d[7] >= Duration::from_millis(400), "{d:?}");
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(100));
    }
}
