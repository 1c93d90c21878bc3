//! Kubernetes pod identity against a fake API server on loopback.
//!
//! The fake serves what kube-rs's watcher asks for — `GET /api/v1/pods` as a
//! list, then as a watch from the list's resourceVersion — from an in-memory
//! set of pods with an event history, like a real API server. It can be
//! stopped (connections cut, port closed) and started again on the same port
//! with its history compacted, so the watcher gets `410 Gone` and re-lists.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test here

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock::identity::kube::{
    IdentityConfig, KubeIdentity, KubeMetrics, Lookup, OptIn, PodIdentity, UnknownPod,
};
use airlock::identity::AppId;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

const NODE: &str = "node-a";
const UID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const UID_C: &str = "cccccccc-0000-4000-8000-000000000003";
const UID_D: &str = "dddddddd-0000-4000-8000-000000000004";
const UID_E: &str = "eeeeeeee-0000-4000-8000-000000000005";

// ---------------------------------------------------------------------------
// The fake API server
// ---------------------------------------------------------------------------

#[derive(Default)]
struct ApiState {
    /// Current pods by UID (each with its resourceVersion).
    pods: BTreeMap<String, Value>,
    /// Last resourceVersion handed out.
    rv: u64,
    /// Watch events after `compacted_at`: (rv, line).
    history: Vec<(u64, String)>,
    /// Watches older than this get 410 Gone.
    compacted_at: u64,
    /// Open watch streams.
    watchers: Vec<mpsc::UnboundedSender<String>>,
    /// Every request's path and query, for assertions.
    requests: Vec<String>,
    /// When set, requests must carry `Authorization: Bearer <token>`.
    token: Option<String>,
}

impl ApiState {
    fn event(&mut self, kind: &str, mut pod: Value) {
        self.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kind == "DELETED" {
            self.pods.remove(&uid);
        } else {
            self.pods.insert(uid, pod.clone());
        }
        let line = format!("{}\n", json!({"type": kind, "object": pod}));
        self.history.push((self.rv, line.clone()));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
}

/// A running fake; dropping or stopping it cuts every connection.
struct Running {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn query_param<'a>(q: &'a str, key: &str) -> Option<&'a str> {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn on_node(pod: &Value, selector: Option<&str>) -> bool {
    // The only selector the agent may send: spec.nodeName=<node>.
    let want = selector
        .map(|s| s.replace("%3D", "=").replace("%3d", "="))
        .and_then(|s| s.strip_prefix("spec.nodeName=").map(str::to_string));
    match want {
        Some(n) => pod["spec"]["nodeName"].as_str() == Some(n.as_str()),
        None => true,
    }
}

impl FakeApi {
    fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(ApiState::default())),
        }
    }

    fn add(&self, pod: Value) {
        self.state.lock().unwrap().event("ADDED", pod);
    }
    fn modify(&self, pod: Value) {
        self.state.lock().unwrap().event("MODIFIED", pod);
    }
    fn delete(&self, uid: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(p) = st.pods.get(uid).cloned() {
            st.event("DELETED", p);
        }
    }
    /// Forget the event history, as an API server that was restarted or compacted.
    fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.history.clear();
        st.compacted_at = st.rv;
    }
    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    async fn start(&self, addr: SocketAddr) -> Running {
        self.start_with(addr, None).await
    }

    /// Serve on `addr`, over TLS when `tls` is given (as the in-cluster API server).
    async fn start_with(&self, addr: SocketAddr, tls: Option<TlsAcceptor>) -> Running {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let api = self.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let api = api.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req)) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(sock), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(sock).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Running { addr, tasks }
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let mut st = self.state.lock().unwrap();
        st.requests.push(format!("{path}?{query}"));
        if let Some(token) = &st.token {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth != Some(format!("Bearer {token}").as_str()) {
                return full(
                    401,
                    &json!({"kind": "Status", "code": 401, "message": "Unauthorized"}),
                );
            }
        }
        if path != "/api/v1/pods" {
            return full(
                404,
                &json!({"kind": "Status", "code": 404, "message": "not found"}),
            );
        }
        let selector = query_param(&query, "fieldSelector");
        if query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = query_param(&query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded_channel::<String>();
            if from < st.compacted_at {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {from}")}});
                let _ = tx.send(format!("{gone}\n"));
                drop(tx);
            } else {
                for (rv, line) in &st.history {
                    let obj: Value = serde_json::from_str(line).unwrap();
                    if *rv > from && on_node(&obj["object"], selector) {
                        let _ = tx.send(line.clone());
                    }
                }
                // Live events are filtered by node too.
                let (live_tx, mut live_rx) = mpsc::unbounded_channel::<String>();
                st.watchers.push(live_tx);
                let sel = selector.map(str::to_string);
                tokio::spawn(async move {
                    while let Some(line) = live_rx.recv().await {
                        let obj: Value = serde_json::from_str(&line).unwrap();
                        if on_node(&obj["object"], sel.as_deref()) && tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            }
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let line = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        let items: Vec<Value> = st
            .pods
            .values()
            .filter(|p| on_node(p, selector))
            .cloned()
            .collect();
        full(
            200,
            &json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        )
    }
}

impl Running {
    /// Cut every connection and close the port.
    async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

struct PodSpec<'a> {
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    node: &'a str,
    qos: &'a str,
    labels: Value,
}

fn pod(p: PodSpec<'_>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid, "labels": p.labels},
        "spec": {"nodeName": p.node, "serviceAccountName": format!("{}-sa", p.name),
                 "containers": [{"name": "main", "image": "app"}]},
        "status": {"qosClass": p.qos, "phase": "Running"}
    })
}

fn config() -> IdentityConfig {
    let mut namespace_app_labels = BTreeMap::new();
    namespace_app_labels.insert("agents".to_string(), "team.example.com/app".to_string());
    IdentityConfig {
        kubernetes: true,
        opt_in: OptIn {
            pod_label: Some("airlock.dev/enforce=true".into()),
            namespaces: vec!["agents".into()],
        },
        namespace_app_labels,
        backoff_max_ms: 400,
        ..IdentityConfig::default()
    }
}

async fn start_identity(addr: SocketAddr) -> (Arc<KubeIdentity>, tokio::task::JoinHandle<()>) {
    let registry = prometheus::Registry::new();
    let metrics = KubeMetrics::register(&registry).unwrap();
    let id = Arc::new(KubeIdentity::new(&config(), NODE.to_string(), metrics).unwrap());
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let runner = Arc::clone(&id);
    let task = tokio::spawn(async move { runner.run(client).await });
    (id, task)
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cgroupfs(qos: &str, uid: &str) -> String {
    if qos.is_empty() {
        format!("kubepods/pod{uid}/0123abcd")
    } else {
        format!("kubepods/{qos}/pod{uid}/0123abcd")
    }
}

fn systemd(qos: &str, uid: &str) -> String {
    let u = uid.replace('-', "_");
    if qos.is_empty() {
        format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-0123abcd.scope")
    } else {
        format!(
            "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/cri-containerd-0123abcd.scope"
        )
    }
}

fn app_of(id: &KubeIdentity, path: &str) -> Option<String> {
    id.app_for_cgroup_path(path).map(|p| p.app.0)
}

fn seed(api: &FakeApi) {
    // a: opted in by label, app "chat".
    api.add(pod(PodSpec {
        uid: UID_A,
        name: "chat-7d9f",
        namespace: "team-a",
        node: NODE,
        qos: "Burstable",
        labels: json!({"app.kubernetes.io/name": "chat", "airlock.dev/enforce": "true"}),
    }));
    // b: same node, not opted in.
    api.add(pod(PodSpec {
        uid: UID_B,
        name: "web-1",
        namespace: "team-a",
        node: NODE,
        qos: "BestEffort",
        labels: json!({"app.kubernetes.io/name": "web"}),
    }));
    // c: opted in, but on another node: the field selector keeps it out.
    api.add(pod(PodSpec {
        uid: UID_C,
        name: "chat-x",
        namespace: "team-a",
        node: "node-b",
        qos: "Burstable",
        labels: json!({"app.kubernetes.io/name": "chat", "airlock.dev/enforce": "true"}),
    }));
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pods_appear_change_and_disappear() {
    let api = FakeApi::new();
    seed(&api);
    let server = api.start("127.0.0.1:0".parse().unwrap()).await;
    let (id, task) = start_identity(server.addr).await;
    eventually("first list", || id.synced()).await;

    // The agent asked for its own node's pods only.
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{:?}",
        api.requests()
    );

    // Pod a resolves under both drivers' path forms, with its namespace and service account.
    let want = PodIdentity {
        app: AppId("chat".into()),
        namespace: "team-a".into(),
        pod: "chat-7d9f".into(),
        service_account: "chat-7d9f-sa".into(),
        uid: UID_A.into(),
    };
    assert_eq!(
        id.app_for_cgroup_path(&cgroupfs("burstable", UID_A)),
        Some(want.clone())
    );
    assert_eq!(
        id.app_for_cgroup_path(&systemd("burstable", UID_A)),
        Some(want)
    );
    // The wrong QoS segment is not the kubelet's path for this pod.
    assert!(matches!(
        id.lookup(&cgroupfs("besteffort", UID_A)),
        Lookup::UnknownPod { .. }
    ));
    // b is known but not pinned; c (another node) and strangers are unknown.
    assert!(matches!(
        id.lookup(&systemd("besteffort", UID_B)),
        Lookup::NotPinned { .. }
    ));
    assert_eq!(
        id.lookup(&cgroupfs("burstable", UID_C)),
        Lookup::UnknownPod { uid: UID_C.into() }
    );
    assert_eq!(id.lookup("system.slice/kubelet.service"), Lookup::NotAPod);
    assert_eq!(id.unknown_pod(), UnknownPod::Deny);
    let pinned = id.pinned();
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    assert_eq!(
        pinned[0].cgroup_paths.clone().unwrap(),
        [
            format!("kubepods/burstable/pod{UID_A}"),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                UID_A.replace('-', "_")
            ),
        ]
    );

    let mut changes = id.changes();
    changes.borrow_and_update();

    // A Guaranteed pod appears in an opted-in namespace; its app comes from
    // the namespace's own label key.
    api.add(pod(PodSpec {
        uid: UID_D,
        name: "agent-0",
        namespace: "agents",
        node: NODE,
        qos: "Guaranteed",
        labels: json!({"team.example.com/app": "planner", "app.kubernetes.io/name": "ignored"}),
    }));
    eventually("pod d appears", || {
        app_of(&id, &systemd("", UID_D)).as_deref() == Some("planner")
    })
    .await;
    assert_eq!(
        app_of(&id, &cgroupfs("", UID_D)).as_deref(),
        Some("planner")
    );
    assert!(
        changes.has_changed().unwrap(),
        "agent not told of the new pod"
    );

    // a's app label changes.
    api.modify(pod(PodSpec {
        uid: UID_A,
        name: "chat-7d9f",
        namespace: "team-a",
        node: NODE,
        qos: "Burstable",
        labels: json!({"app.kubernetes.io/name": "chat-v2", "airlock.dev/enforce": "true"}),
    }));
    eventually("a relabelled", || {
        app_of(&id, &cgroupfs("burstable", UID_A)).as_deref() == Some("chat-v2")
    })
    .await;

    // a loses its app label: still pinned, but unnamed.
    api.modify(pod(PodSpec {
        uid: UID_A,
        name: "chat-7d9f",
        namespace: "team-a",
        node: NODE,
        qos: "Burstable",
        labels: json!({"airlock.dev/enforce": "true"}),
    }));
    eventually("a unlabelled", || {
        matches!(
            id.lookup(&cgroupfs("burstable", UID_A)),
            Lookup::Unlabelled { .. }
        )
    })
    .await;
    assert!(id
        .pinned()
        .iter()
        .any(|p| p.uid == UID_A && p.app.is_none()));

    // a opts out.
    api.modify(pod(PodSpec {
        uid: UID_A,
        name: "chat-7d9f",
        namespace: "team-a",
        node: NODE,
        qos: "Burstable",
        labels: json!({"app.kubernetes.io/name": "chat"}),
    }));
    eventually("a opted out", || {
        matches!(
            id.lookup(&cgroupfs("burstable", UID_A)),
            Lookup::NotPinned { .. }
        )
    })
    .await;

    // d disappears.
    api.delete(UID_D);
    eventually("d gone", || {
        matches!(id.lookup(&systemd("", UID_D)), Lookup::UnknownPod { .. })
    })
    .await;
    assert!(id.pinned().is_empty(), "{:?}", id.pinned());
    assert_eq!(id.metrics().watch_errors(), 0);

    task.abort();
    server.stop().await;
}

#[tokio::test]
async fn api_server_going_away_keeps_the_last_map() {
    let api = FakeApi::new();
    seed(&api);
    let server = api.start("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let (id, task) = start_identity(addr).await;
    eventually("first list", || id.synced()).await;
    assert_eq!(
        app_of(&id, &cgroupfs("burstable", UID_A)).as_deref(),
        Some("chat")
    );

    // The API server goes away: connections cut, port closed.
    server.stop().await;
    eventually("errors counted", || id.metrics().watch_errors() >= 2).await;
    // Meanwhile the last known pods still resolve.
    assert_eq!(
        app_of(&id, &systemd("burstable", UID_A)).as_deref(),
        Some("chat")
    );
    assert!(id.synced());

    // While it is away, a is deleted and e appears; it comes back without
    // the history (410 Gone), so the watcher must re-list and swap.
    api.delete(UID_A);
    api.add(pod(PodSpec {
        uid: UID_E,
        name: "summarizer-0",
        namespace: "agents",
        node: NODE,
        qos: "BestEffort",
        labels: json!({"team.example.com/app": "summarizer"}),
    }));
    api.compact();
    // Still the old map until the API server is back.
    assert_eq!(
        app_of(&id, &cgroupfs("burstable", UID_A)).as_deref(),
        Some("chat")
    );

    let server = api.start(addr).await;
    eventually("re-listed after the outage", || {
        app_of(&id, &cgroupfs("besteffort", UID_E)).as_deref() == Some("summarizer")
    })
    .await;
    assert!(matches!(
        id.lookup(&cgroupfs("burstable", UID_A)),
        Lookup::UnknownPod { .. }
    ));
    assert!(matches!(
        id.lookup(&systemd("besteffort", UID_B)),
        Lookup::NotPinned { .. }
    ));
    // It was a full re-list (after 410 Gone), not a resumed watch.
    let lists = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(lists >= 2, "{:?}", api.requests());

    task.abort();
    server.stop().await;
}

/// A CA and a server certificate for 127.0.0.1, like a cluster's API server has.
fn api_server_pki() -> (String, TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), TlsAcceptor::from(Arc::new(server)))
}

#[tokio::test]
async fn watches_over_tls_with_a_service_account_token() {
    // What the agent gets in a pod: the API server's CA bundle and a token,
    // both as files (kube re-reads them, so rotation is picked up).
    let dir = std::env::temp_dir().join(format!("airlock-kube-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_pem, acceptor) = api_server_pki();
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("token"), "s3cret-token").unwrap();

    let api = FakeApi::new();
    api.state.lock().unwrap().token = Some("s3cret-token".into());
    seed(&api);
    let server = api
        .start_with("127.0.0.1:0".parse().unwrap(), Some(acceptor))
        .await;

    let mut cfg = kube::Config::new(format!("https://{}", server.addr).parse().unwrap());
    cfg.root_cert_file = Some(dir.join("ca.crt"));
    cfg.auth_info.token_file = Some(dir.join("token").to_string_lossy().into_owned());
    let client = kube::Client::try_from(cfg).unwrap();
    let registry = prometheus::Registry::new();
    let metrics = KubeMetrics::register(&registry).unwrap();
    let id = Arc::new(KubeIdentity::new(&config(), NODE.to_string(), metrics).unwrap());
    let runner = Arc::clone(&id);
    let task = tokio::spawn(async move { runner.run(client).await });

    eventually("first list over TLS", || id.synced()).await;
    assert_eq!(
        app_of(&id, &systemd("burstable", UID_A)).as_deref(),
        Some("chat")
    );
    assert_eq!(id.metrics().watch_errors(), 0);

    task.abort();
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// The whole chain: pod watch → agent attaches the pod's cgroup → the proxy
// names the pod in the decision record. Privileged (real eBPF).
// ---------------------------------------------------------------------------

/// Nested cgroup directories made by the test, removed deepest first.
struct NestedCgroups(Vec<std::path::PathBuf>);

impl Drop for NestedCgroups {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            // Move any process left behind up to the parent so rmdir succeeds.
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watch_drives_attach_and_names_the_pod_in_the_record() {
    use airlock::agent::testsupport::{require_root, BpffsGuard, CgroupGuard};
    require_root();
    let cg = CgroupGuard::new("kube-chain").expect("test cgroup");
    let fs = BpffsGuard::new("kube-chain").expect("private bpffs");
    let uid = "abcdef01-0000-4000-8000-00000000c0de";
    let mut dirs = Vec::new();
    let mut p = cg.path().to_path_buf();
    for seg in ["kubepods", "burstable", &format!("pod{uid}"), "0123abcd"] {
        p = p.join(seg);
        std::fs::create_dir(&p).unwrap();
        dirs.push(p.clone());
    }
    let nested = NestedCgroups(dirs);
    let container = nested.0.last().unwrap().clone();

    let api = FakeApi::new();
    api.add(pod(PodSpec {
        uid,
        name: "billing-5f7c",
        namespace: "team-b",
        node: NODE,
        qos: "Burstable",
        labels: json!({"app.kubernetes.io/name": "billing", "airlock.dev/enforce": "true"}),
    }));
    let server = api.start("127.0.0.1:0".parse().unwrap()).await;

    let dir = std::env::temp_dir().join(format!("airlock-kube-chain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\ncurrent-context: c\n",
            server.addr
        ),
    )
    .unwrap();
    // Set before the agent's client reads them; no other test in this binary reads these.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    std::env::set_var("AIRLOCK_TEST_NODE", NODE);
    let ca = rcgen::generate_simple_self_signed(vec!["gw.test".to_string()]).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (app_port, admin_port) = (free(), free());
    let log = dir.join("decisions.jsonl");
    let cfg = dir.join("airlock.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen:\n  app_http: 127.0.0.1:{app_port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\ngateways:\n  - name: gw\n    addresses: [\"127.0.0.77:80\"]\n    upstream: 127.0.0.1:1\n    tls:\n      sni: gw.test\n      ca_file: {ca}\ndecision_log:\n  path: {log}\nenforcement:\n  mode: ebpf\n  cgroup_root: {root}\n  bpffs: {bpffs}\n  rescan_interval_ms: 1000\nidentity:\n  kubernetes: true\n  node_name_env: AIRLOCK_TEST_NODE\n  opt_in:\n    pod_label: airlock.dev/enforce=true\n",
            ca = dir.join("ca.pem").display(),
            log = log.display(),
            root = cg.root().display(),
            bpffs = fs.path().display(),
        ),
    )
    .unwrap();
    let airlock = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || airlock::server::Airlock::start(&cfg)
    })
    .await
    .unwrap()
    .expect("airlock with pod identity starts");
    // Ready only once the pods are listed; the pod's cgroup is attached on that event.
    eventually("pods synced and ready", || {
        airlock.shared.readiness.pending().is_empty()
    })
    .await;

    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://127.0.0.88/v1/chat/completions -d '{{}}'",
        container.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut recs = Vec::new();
    eventually("a decision record", || {
        recs = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        !recs.is_empty()
    })
    .await;
    let r = &recs[0];
    assert_eq!(r["app"], "billing", "{r}");
    assert_eq!(r["pod"]["namespace"], "team-b");
    assert_eq!(r["pod"]["name"], "billing-5f7c");
    assert_eq!(r["pod"]["service_account"], "billing-5f7c-sa");
    assert_eq!(r["origin"], "127.0.0.88:80");
    assert_eq!(r["reasons"][0], "unknown_destination");

    drop(airlock);
    let _ = airlock::agent::detach(fs.path());
    server.stop().await;
    drop(nested);
    let _ = std::fs::remove_dir_all(&dir);
}
