//! The Kubernetes manifests in `deploy/`, checked as typed objects.
//!
//! Every YAML document under `deploy/` is read into its k8s-openapi type (or a
//! small typed struct for the Prometheus Operator kinds) and written back: a
//! field that does not survive the round trip is a field Kubernetes would not
//! know either (a misspelling). Then the invariants that keep the agent
//! working are checked across files: mounts, probes, ports and environment
//! against `deploy/config/airlock.yaml`, ConfigMap keys against both
//! kustomizations, RBAC, Service and ServiceMonitor wiring, and that
//! `kubectl kustomize deploy/` renders.
//!
//! The repository root is `AIRLOCK_REPO_ROOT` when set, else this crate's parent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test here

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Capabilities the DaemonSet adds; README.md's "Permissions" table must list exactly these.
const EXPECTED_CAPS: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"];
/// Files in policies/ that are not policy (the demo's own configuration and tooling).
const NOT_POLICY: &[&str] = &["airlock.yaml", "kustomization.yaml"];

fn root() -> PathBuf {
    match std::env::var_os("AIRLOCK_REPO_ROOT") {
        Some(r) => PathBuf::from(r),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf(),
    }
}

// ---------------------------------------------------------------------------
// Typed views of what is not in k8s-openapi
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    generator_options: Option<GeneratorOptions>,
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    images: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GeneratorOptions {
    #[serde(default)]
    disable_name_suffix_hash: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Generator {
    name: String,
    #[serde(default)]
    behavior: Option<String>,
    #[serde(default)]
    files: Vec<String>,
}

impl Generator {
    /// key → source path (relative to the kustomization's directory).
    fn keys(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .map(|f| match f.split_once('=') {
                Some((k, p)) => (k.to_string(), p.to_string()),
                None => (
                    Path::new(f)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    f.clone(),
                ),
            })
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Meta {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LabelSelector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
    scrape_timeout: String,
    #[serde(default)]
    relabelings: Vec<Relabeling>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Relabeling {
    source_labels: Vec<String>,
    target_label: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: RuleSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Everything `deploy/` declares, by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    service_monitors: Vec<ServiceMonitor>,
    prometheus_rules: Vec<PrometheusRule>,
}

/// Drop nulls and empty maps/lists, which serialisers may add or omit freely.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| {
                    !(v.is_null()
                        || v.as_object().is_some_and(|o| o.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty()))
                })
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Deserialize into `T` and require that nothing was dropped on the way.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&t).unwrap();
    let (want, got) = (normalize(doc), normalize(&back));
    if want != got {
        panic!(
            "{origin}: fields lost reading it as {} (misspelt or misplaced?)\n--- file:\n{}\n--- as Kubernetes reads it:\n{}",
            std::any::type_name::<T>(),
            serde_yaml::to_string(&want).unwrap(),
            serde_yaml::to_string(&got).unwrap()
        );
    }
    t
}

fn yaml_docs(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            let v: serde_yaml::Value = serde_yaml::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{origin}: bad YAML: {e}"));
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

impl Manifests {
    fn add(&mut self, doc: &Value, origin: &str) {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        match (api, kind) {
            ("v1", "Namespace") => self.namespaces.push(typed(doc, origin)),
            ("v1", "ServiceAccount") => self.service_accounts.push(typed(doc, origin)),
            ("v1", "Service") => self.services.push(typed(doc, origin)),
            ("v1", "ConfigMap") => self.config_maps.push(typed(doc, origin)),
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(typed(doc, origin)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(typed(doc, origin))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(typed(doc, origin))
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                self.service_monitors.push(typed(doc, origin))
            }
            ("monitoring.coreos.com/v1", "PrometheusRule") => {
                self.prometheus_rules.push(typed(doc, origin))
            }
            _ => panic!("{origin}: unexpected kind {api}/{kind}; teach this test about it"),
        }
    }

    fn daemon_set(&self) -> &DaemonSet {
        assert_eq!(self.daemon_sets.len(), 1, "exactly one DaemonSet");
        &self.daemon_sets[0]
    }
}

fn read_kustomization(dir: &Path) -> Kustomization {
    let p = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let k: Kustomization =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    k
}

/// Every manifest under `deploy/` (not the kustomization, not the agent's config).
fn load_deploy() -> (Manifests, BTreeSet<String>) {
    let deploy = root().join("deploy");
    let mut m = Manifests::default();
    let mut files = BTreeSet::new();
    let mut stack = vec![deploy.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&deploy)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let is_yaml = rel.ends_with(".yaml") || rel.ends_with(".yml");
            if !is_yaml || rel == "kustomization.yaml" || rel.starts_with("config/") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for doc in yaml_docs(&text, &rel) {
                m.add(&doc, &rel);
            }
            files.insert(rel);
        }
    }
    (m, files)
}

/// `deploy/config/airlock.yaml`, the agent's configuration in the cluster.
fn agent_config() -> Value {
    let p = root().join("deploy/config/airlock.yaml");
    let docs = yaml_docs(
        &std::fs::read_to_string(&p).unwrap(),
        "deploy/config/airlock.yaml",
    );
    assert_eq!(docs.len(), 1);
    docs[0].clone()
}

fn port_of(addr: &str) -> i32 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1, "one container");
    &spec.containers[0]
}

fn volume<'a>(ds: &'a DaemonSet, mount_path: &str) -> &'a Volume {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let mounts = container(ds).volume_mounts.as_ref().unwrap();
    let m = mounts
        .iter()
        .find(|m| m.mount_path == mount_path)
        .unwrap_or_else(|| panic!("no volume mounted at {mount_path}"));
    spec.volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("mount {} names no volume", m.name))
}

fn named_port(c: &Container, name: &str) -> i32 {
    c.ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"))
        .container_port
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn every_manifest_is_a_typed_object_listed_in_the_kustomization() {
    let (m, files) = load_deploy();
    let k = read_kustomization(&root().join("deploy"));
    let listed: BTreeSet<String> = k
        .resources
        .iter()
        .filter(|r| !r.starts_with(".."))
        .cloned()
        .collect();
    assert_eq!(
        listed, files,
        "deploy/kustomization.yaml resources vs YAML files in deploy/"
    );
    assert_eq!(k.namespace.as_deref(), Some("airlock-system"));
    // `images:` retargets the DaemonSet's image by name.
    let image = container(m.daemon_set()).image.clone().unwrap();
    let image_name = image.split(':').next().unwrap();
    assert!(
        k.images.iter().any(|i| i["name"] == image_name),
        "deploy/kustomization.yaml images: has no entry for {image_name}"
    );
    assert!(k.resources.iter().any(|r| r == "../policies"));
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.service_monitors.len(), 1);
    assert_eq!(m.prometheus_rules.len(), 1);
    m.daemon_set();
}

#[test]
fn daemonset_has_what_ebpf_and_the_proxy_need() {
    let (m, _) = load_deploy();
    let cfg = agent_config();
    let ds = m.daemon_set();
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let c = container(ds);

    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint: apps on any node need their agent"
    );
    let sa = pod.service_account_name.as_deref().unwrap();
    assert_eq!(sa, m.service_accounts[0].metadata.name.as_deref().unwrap());

    // cgroup v2 root and bpffs from the host, where the config expects them.
    let cg = volume(ds, "/host/sys/fs/cgroup");
    assert_eq!(cg.host_path.as_ref().unwrap().path, "/sys/fs/cgroup");
    let cgroup_root = cfg["enforcement"]["cgroup_root"].as_str().unwrap();
    assert!(
        cgroup_root.starts_with("/host/sys/fs/cgroup"),
        "enforcement.cgroup_root {cgroup_root} is not on the cgroup mount"
    );
    let bpf = volume(ds, "/sys/fs/bpf");
    assert_eq!(bpf.host_path.as_ref().unwrap().path, "/sys/fs/bpf");
    let bpffs = cfg["enforcement"]["bpffs"].as_str().unwrap();
    assert!(
        bpffs.starts_with("/sys/fs/bpf/"),
        "enforcement.bpffs {bpffs} is not on the host's bpffs"
    );
    for mnt in c.volume_mounts.as_ref().unwrap() {
        assert!(
            mnt.sub_path.is_none() && mnt.sub_path_expr.is_none(),
            "{}: subPath mounts never see ConfigMap updates",
            mnt.mount_path
        );
        if mnt.mount_path == "/sys/fs/bpf" || mnt.mount_path == "/host/sys/fs/cgroup" {
            assert_eq!(
                mnt.mount_propagation.as_deref(),
                Some("HostToContainer"),
                "{}",
                mnt.mount_path
            );
        }
    }

    // Capabilities: not privileged, exactly the documented set.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps
        .add
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(added, EXPECTED_CAPS.iter().copied().collect());
    let readme = std::fs::read_to_string(root().join("deploy/README.md")).unwrap();
    let documented: BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `CAP_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(
        documented, added,
        "deploy/README.md's Permissions table must list exactly the added capabilities"
    );

    // Environment from the downward API.
    let env = c.env.as_ref().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.clone())
            .unwrap_or_else(|| panic!("env {name} is not from the downward API"))
    };
    let node_env = cfg["identity"]["node_name_env"].as_str().unwrap();
    assert_eq!(field(node_env), "spec.nodeName");
    assert_eq!(field("AIRLOCK_REDIRECT_ADDRESS"), "status.hostIP");

    // Ports and probes against the config.
    let admin = port_of(cfg["admin"]["listen"].as_str().unwrap());
    assert_eq!(admin, 15020);
    assert_eq!(named_port(c, "admin"), admin);
    assert_eq!(
        named_port(c, "app-http"),
        port_of(cfg["listen"]["app_http"].as_str().unwrap())
    );
    let probe_target = |p: &Option<k8s_openapi::api::core::v1::Probe>, what: &str| {
        let g = p
            .as_ref()
            .unwrap_or_else(|| panic!("no {what}"))
            .http_get
            .as_ref()
            .unwrap_or_else(|| panic!("{what} is not httpGet"));
        let port = match &g.port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => named_port(c, name),
        };
        (g.path.clone().unwrap_or_default(), port)
    };
    assert_eq!(
        probe_target(&c.readiness_probe, "readinessProbe"),
        ("/readyz".into(), admin)
    );
    assert_eq!(
        probe_target(&c.liveness_probe, "livenessProbe"),
        ("/healthz".into(), admin)
    );
    assert_eq!(
        probe_target(&c.startup_probe, "startupProbe"),
        ("/healthz".into(), admin)
    );

    // In a cluster, identity comes from eBPF and the pod watcher only: never
    // from a header the client chooses.
    assert!(
        cfg.get("explicit")
            .and_then(|e| e.get("app_header"))
            .is_none(),
        "deploy/config/airlock.yaml must not set explicit.app_header"
    );
    assert_eq!(cfg["enforcement"]["mode"].as_str(), Some("ebpf"));
    assert_eq!(cfg["identity"]["kubernetes"].as_bool(), Some(true));

    // The grace period covers the proxy's drain.
    let drain = cfg["proxy"]["drain_seconds"].as_i64().unwrap();
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!(grace > drain + 5, "grace {grace}s vs drain {drain}s");

    // Rollout: one node at a time, no surge (host ports, pinned programs).
    let us = spec.update_strategy.as_ref().unwrap();
    assert_eq!(us.type_.as_deref(), Some("RollingUpdate"));
    let ru = us.rolling_update.as_ref().unwrap();
    assert_eq!(ru.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));

    // Requests and a memory limit; no CPU limit (throttling = tail latency).
    let res = c.resources.as_ref().unwrap();
    let req = res.requests.as_ref().unwrap();
    assert!(req.contains_key("cpu") && req.contains_key("memory"));
    let lim = res.limits.as_ref().unwrap();
    assert!(lim.contains_key("memory") && !lim.contains_key("cpu"));

    // The selector matches the template.
    let sel = spec.selector.match_labels.as_ref().unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in sel {
        assert_eq!(labels.get(k), Some(v), "selector {k}");
    }
}

#[test]
fn configmap_keys_match_the_generators_and_the_mount() {
    let (m, _) = load_deploy();
    let cfg = agent_config();
    let ds = m.daemon_set();
    let c = container(ds);
    let base_dir = root().join("policies");
    let base = read_kustomization(&base_dir);
    let overlay = read_kustomization(&root().join("deploy"));

    // Both generate the one ConfigMap, unhashed (hot reload, not a rollout).
    for (k, what) in [(&base, "policies"), (&overlay, "deploy")] {
        assert!(
            k.generator_options
                .as_ref()
                .is_some_and(|o| o.disable_name_suffix_hash),
            "{what}/kustomization.yaml: disableNameSuffixHash must be true"
        );
    }
    assert_eq!(base.config_map_generator.len(), 1);
    assert_eq!(overlay.config_map_generator.len(), 1);
    let (bg, og) = (
        &base.config_map_generator[0],
        &overlay.config_map_generator[0],
    );
    assert_eq!(bg.name, og.name);
    assert_eq!(og.behavior.as_deref(), Some("merge"));

    let mut keys = bg.keys();
    for (key, src) in &keys {
        assert!(
            base_dir.join(src).is_file(),
            "policies/kustomization.yaml: {key}={src}: no such file"
        );
    }
    for (key, src) in og.keys() {
        assert!(
            root().join("deploy").join(&src).is_file(),
            "deploy/kustomization.yaml: {key}={src}: no such file"
        );
        keys.insert(key, src);
    }

    // Every policy file is in the ConfigMap.
    let mut missing = Vec::new();
    let mut stack = vec![base_dir.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p
                .strip_prefix(&base_dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || rel == "certs" || rel.starts_with("certs/") {
                continue; // generated by the demo, git-ignored
            }
            if p.is_dir() {
                stack.push(p);
            } else if !NOT_POLICY.contains(&rel.as_str()) && !bg.keys().values().any(|s| *s == rel)
            {
                missing.push(rel);
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "policy files missing from the ConfigMap; add to policies/kustomization.yaml `files:`\n{}\nand to deploy/daemonset.yaml volume `items:`\n{}",
        missing
            .iter()
            .map(|r| format!("      - {}={r}", r.replace('/', "_")))
            .collect::<Vec<_>>()
            .join("\n"),
        missing
            .iter()
            .map(|r| format!(
                "              - key: {}\n                path: {r}",
                r.replace('/', "_")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The DaemonSet mounts exactly those keys, at the paths the sources have.
    let mount_path = "/etc/airlock";
    let vol = volume(ds, mount_path);
    let cm = vol.config_map.as_ref().expect("a configMap volume");
    assert_eq!(cm.name, bg.name);
    let items: BTreeMap<String, String> = cm
        .items
        .as_ref()
        .unwrap()
        .iter()
        .map(|i| (i.key.clone(), i.path.clone()))
        .collect();
    assert_eq!(
        items.keys().collect::<BTreeSet<_>>(),
        keys.keys().collect::<BTreeSet<_>>(),
        "DaemonSet items vs generated keys"
    );
    for (key, path) in &items {
        if key != "airlock.yaml" {
            assert_eq!(
                path, &keys[key],
                "key {key} must land at its policies/ path"
            );
        }
    }
    assert_eq!(
        items.get("airlock.yaml").map(String::as_str),
        Some("airlock.yaml")
    );

    // The agent reads its config and policy from that mount.
    let args = c.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == "--config").unwrap();
    assert_eq!(args[at + 1], format!("{mount_path}/airlock.yaml"));
    assert_eq!(cfg["policy"]["dir"].as_str(), Some(mount_path));
}

#[test]
fn rbac_allows_exactly_reading_pods() {
    let (m, _) = load_deploy();
    assert_eq!(m.cluster_roles.len(), 1);
    let role = &m.cluster_roles[0];
    let rules = role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1, "one rule");
    let r = &rules[0];
    assert_eq!(r.api_groups.as_deref(), Some(&["".to_string()][..]));
    assert_eq!(r.resources.as_deref(), Some(&["pods".to_string()][..]));
    let verbs: BTreeSet<&str> = r.verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, ["get", "list", "watch"].into_iter().collect());
    assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
    assert!(role.aggregation_rule.is_none());

    assert_eq!(m.cluster_role_bindings.len(), 1);
    let b = &m.cluster_role_bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), role.metadata.name.as_ref());
    let subjects = b.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    let sa = &m.service_accounts[0];
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
}

#[test]
fn service_and_monitor_reach_the_admin_port() {
    let (m, _) = load_deploy();
    let ds = m.daemon_set();
    let svc = &m.services[0];
    let spec = svc.spec.as_ref().unwrap();
    let pod_labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "service selector {k}");
    }
    let port = spec
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("admin"))
        .expect("service port admin");
    assert_eq!(port.port, 15020);
    assert_eq!(port.target_port, Some(IntOrString::String("admin".into())));
    assert_eq!(named_port(container(ds), "admin"), 15020);

    let sm = &m.service_monitors[0];
    let svc_labels = svc.metadata.labels.clone().unwrap();
    for (k, v) in &sm.spec.selector.match_labels {
        assert_eq!(svc_labels.get(k), Some(v), "ServiceMonitor selector {k}");
    }
    assert_eq!(
        sm.spec.namespace_selector.match_names,
        vec![svc.metadata.namespace.clone().unwrap()]
    );
    let ep = &sm.spec.endpoints[0];
    assert_eq!(ep.port, "admin");
    assert_eq!(ep.path, "/metrics");

    // Alerts: named, with a severity and a summary.
    let rules: Vec<&Rule> = m.prometheus_rules[0]
        .spec
        .groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .collect();
    assert!(rules.len() >= 4);
    for r in rules {
        assert!(r.alert.starts_with("Airlock"), "{}", r.alert);
        assert!(!r.expr.trim().is_empty(), "{}", r.alert);
        assert!(r.labels.contains_key("severity"), "{}", r.alert);
        assert!(r.annotations.contains_key("summary"), "{}", r.alert);
    }
}

#[test]
fn grafana_dashboard_is_valid_json_with_queries() {
    let p = root().join("deploy/grafana/airlock.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("airlock_")),
                "{}",
                p["title"]
            );
        }
    }
}

#[test]
fn kubectl_kustomize_renders() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = Command::new(&kubectl)
        .args(["kustomize"])
        .arg(root().join("deploy"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {kubectl} (install the `kubectl` package, or set KUBECTL): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut m = Manifests::default();
    for doc in yaml_docs(&text, "kubectl kustomize deploy/") {
        m.add(&doc, "kubectl kustomize deploy/");
    }
    // The generated ConfigMap carries every key the DaemonSet mounts, under
    // the unhashed name it refers to, in the agent's namespace.
    assert_eq!(m.config_maps.len(), 1);
    let cm = &m.config_maps[0];
    let data = cm.data.clone().unwrap_or_default();
    let ds = m.daemon_set();
    let vol = volume(ds, "/etc/airlock").config_map.as_ref().unwrap();
    assert_eq!(Some(&vol.name), cm.metadata.name.as_ref());
    for item in vol.items.as_ref().unwrap() {
        assert!(
            data.contains_key(&item.key),
            "rendered ConfigMap lacks {}",
            item.key
        );
    }
    assert!(
        data["airlock.yaml"].contains("kubernetes: true"),
        "the cluster config won the merge"
    );
    for ns in [
        &cm.metadata.namespace,
        &ds.metadata.namespace,
        &m.services[0].metadata.namespace,
        &m.service_accounts[0].metadata.namespace,
    ] {
        assert_eq!(ns.as_deref(), Some("airlock-system"));
    }
}
