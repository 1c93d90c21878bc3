//! Agent: loads, pins and attaches the eBPF programs (the enforcement plane).
//!
//! Runs before the proxy serves (readiness waits for [`Agent::is_ready`]).
//! Everything lives pinned under `enforcement.bpffs`:
//!
//! ```text
//! <bpffs>/progs/<program>            the six programs
//! <bpffs>/maps/<map>                 the maps (origins, config, counters…)
//! <bpffs>/links/<cgroup id>/<prog>   one bpf_link per program per app cgroup
//! ```
//!
//! A start with a complete set of pins reuses them: the links already pinned
//! keep enforcing across the restart and are not attached a second time; the
//! new agent rewrites the config map (its own pid) and takes over the maps.
//! [`detach`] removes all of it. The cgroups attached are the ones matched by
//! the `apps` globs; a rescan ([`Agent::sync`], run by [`Agent::spawn`])
//! attaches new ones and forgets removed ones.

pub mod bench;
pub mod cgroups;
pub mod config;
#[doc(hidden)]
pub mod testsupport;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    ffi::CString,
    fs,
    net::IpAddr,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use airlock_ebpf_common::{
    maps, pack_ip, programs as progs, ClientKey, Config, Counters, ExemptPorts, CONFIG_HAS_V6,
    CONFIG_READY, EXEMPT_PORTS,
};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap},
    programs::{
        links::{CgroupAttachMode, FdLink},
        CgroupSock, CgroupSockAddr, ProgramError, SockOps,
    },
    Ebpf, EbpfError,
};
use aya_obj::programs::{CgroupSockAddrAttachType, CgroupSockAttachType};

pub use self::config::{AppRule, EnforcementConfig, Mode};
use crate::{
    identity::{AppId, Identity},
    intercept::{InterceptError, Origins},
};

/// The kernel side, built by `build.rs` (empty when built with
/// `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/airlock-bpf"));

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `enforcement.mode` is `off`.
    #[error("enforcement.mode is off; the agent does not run")]
    Disabled,
    /// Config validation failed; every problem is listed.
    #[error("invalid enforcement config:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// The binary was built with `AYA_BUILD_SKIP=1`.
    #[error("this binary has no eBPF object (built with AYA_BUILD_SKIP=1); rebuild with bpf-linker installed")]
    NoObject,
    /// cgroup root detection or access.
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    /// Resolving identities.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Opening the origin map.
    #[error(transparent)]
    Intercept(#[from] InterceptError),
    /// Filesystem work under bpffs.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Loading the object.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// A program could not be loaded, pinned, opened or attached.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        source: ProgramError,
    },
    /// A map could not be opened or written.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        source: MapError,
    },
    /// A program or map is missing from the object.
    #[error("{0} missing from the eBPF object")]
    Missing(&'static str),
    /// A link could not be turned into a pinnable fd link.
    #[error("link of program {name}: {source}")]
    Link {
        /// Program name.
        name: &'static str,
        /// Cause.
        source: aya::programs::links::LinkError,
    },
    /// Pinning.
    #[error("pinning {path:?}: {source}")]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        source: aya::pin::PinError,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |source| AgentError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A denied socket kind, as in `airlock_denied_sockets_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeniedKind {
    /// UDP to anything but a DNS resolver.
    Udp,
    /// Raw inet socket.
    Raw,
    /// Packet socket.
    Packet,
    /// Other inet protocol (ICMP ping, SCTP, MPTCP…).
    Protocol,
    /// Fail-closed denial: no config, a map insert or helper failed.
    Internal,
}

impl DeniedKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeniedKind::Udp => "udp",
            DeniedKind::Raw => "raw",
            DeniedKind::Packet => "packet",
            DeniedKind::Protocol => "protocol",
            DeniedKind::Internal => "internal",
        }
    }
}

/// Counters of one app, summed over its cgroups and CPUs. Monotonic over the
/// agent's life (removed cgroups' counts are kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppCounters {
    /// `airlock_redirects_total{app}`.
    pub redirected: u64,
    /// `airlock_denied_sockets_total{app,kind}`.
    pub denied: BTreeMap<DeniedKind, u64>,
}

impl AppCounters {
    fn add(&mut self, c: &Counters) {
        self.redirected += c.redirected;
        for (k, v) in [
            (DeniedKind::Udp, c.denied_udp),
            (DeniedKind::Raw, c.denied_raw),
            (DeniedKind::Packet, c.denied_packet),
            (DeniedKind::Protocol, c.denied_proto),
            (DeniedKind::Internal, c.denied_internal),
        ] {
            *self.denied.entry(k).or_default() += v;
        }
    }
}

/// An app cgroup the programs are attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Path relative to the cgroup root.
    pub path: String,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// The app.
    pub app: AppId,
}

/// What one rescan did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Newly attached cgroups (relative paths).
    pub attached: Vec<String>,
    /// Cgroups forgotten (removed, or no longer matched), by id.
    pub forgotten: Vec<u64>,
    /// Attach failures, as messages.
    pub errors: Vec<String>,
}

struct Programs {
    connect4: CgroupSockAddr,
    connect6: CgroupSockAddr,
    sendmsg4: CgroupSockAddr,
    sendmsg6: CgroupSockAddr,
    sock_ops: SockOps,
    sock_create: CgroupSock,
}

struct State {
    attached: BTreeMap<u64, Attached>,
    /// Counts of forgotten cgroups, so app totals never go down.
    retired: StdHashMap<AppId, AppCounters>,
}

struct Inner {
    cfg: EnforcementConfig,
    root: PathBuf,
    redirect_port: u16,
    identity: Arc<Identity>,
    programs: Mutex<Programs>,
    state: Mutex<State>,
    counters: Mutex<PerCpuHashMap<MapData, u64, Counters>>,
    origins: Origins,
    connect4_id: u32,
    ready: AtomicBool,
    /// One rescan at a time: two could both see a link pin missing.
    sync_lock: Mutex<()>,
}

/// The running agent. Cheap to clone. Dropping it leaves everything pinned
/// and enforcing (fail closed); [`detach`] removes it.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("bpffs", &self.inner.cfg.bpffs)
            .field("root", &self.inner.root)
            .field("redirect_port", &self.inner.redirect_port)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind: go on.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn prog_pin(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join("progs").join(name)
}
fn map_pin(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join("maps").join(name)
}
fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

impl Agent {
    /// Starts enforcement: validates, mounts bpffs if needed, loads and pins
    /// (or reuses the pins of a previous run), writes the kernel config with
    /// this process as the exempt proxy, and attaches every app cgroup that
    /// exists now. `redirect_port` is the proxy's app port. Blocking (tens of
    /// ms; the first load runs the verifier). Needs root (CAP_BPF,
    /// CAP_NET_ADMIN, CAP_SYS_ADMIN for the mount).
    pub fn start(
        cfg: &EnforcementConfig,
        apps: &[AppRule],
        redirect_port: u16,
    ) -> Result<Agent, AgentError> {
        if cfg.mode == Mode::Off {
            return Err(AgentError::Disabled);
        }
        let mut errs = cfg.validate();
        errs.extend(config::validate_apps(apps));
        if redirect_port == 0 {
            errs.push("redirect port: 0 (give the proxy's app_http port)".to_owned());
        }
        if !errs.is_empty() {
            return Err(AgentError::Invalid(errs));
        }
        let root = cgroups::detect_root(&cfg.cgroup_root)?;
        let bpffs = cfg.bpffs.clone();
        ensure_bpffs(&bpffs)?;
        if !pins_complete(&bpffs) {
            load_and_pin(&bpffs)?;
            tracing::info!(bpffs = %bpffs.display(), "eBPF programs loaded and pinned");
        } else {
            tracing::info!(bpffs = %bpffs.display(), "reusing pinned eBPF programs, maps and links");
        }
        let programs = open_programs(&bpffs)?;
        let connect4_id = programs
            .connect4
            .info()
            .map_err(|source| AgentError::Program {
                name: progs::CONNECT4,
                source,
            })?
            .id();
        let counters = open_map(&bpffs, maps::COUNTERS, PerCpuHashMap::try_from)?;
        let origins = Origins::open(&bpffs)?;
        let identity = Arc::new(Identity::new(&root, apps)?);

        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            root,
            redirect_port,
            identity,
            programs: Mutex::new(programs),
            state: Mutex::new(State {
                attached: BTreeMap::new(),
                retired: StdHashMap::new(),
            }),
            counters: Mutex::new(counters),
            origins,
            connect4_id,
            ready: AtomicBool::new(false),
            sync_lock: Mutex::new(()),
        });
        let agent = Agent { inner };
        agent.write_kernel_config()?;
        let report = agent.sync();
        for e in &report.errors {
            tracing::error!(error = %e, "attaching an app cgroup failed");
        }
        agent.inner.ready.store(true, Ordering::Release);
        Ok(agent)
    }

    /// True once the programs are loaded and the app cgroups present at start
    /// are attached (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The origin lookup for the proxy's accept path.
    pub fn origins(&self) -> Origins {
        self.inner.origins.clone()
    }

    /// The cgroup → app resolver built from the same rules.
    pub fn identity(&self) -> Arc<Identity> {
        self.inner.identity.clone()
    }

    /// The detected cgroup root.
    pub fn cgroup_root(&self) -> &Path {
        &self.inner.root
    }

    /// The cgroups attached now.
    pub fn attached(&self) -> Vec<Attached> {
        lock(&self.inner.state).attached.values().cloned().collect()
    }

    /// Writes the config, DNS and exempt maps. New entries go in before stale
    /// ones go out, so a restart never opens a window of wrong denials.
    fn write_kernel_config(&self) -> Result<(), AgentError> {
        let bpffs = &self.inner.cfg.bpffs;
        let cfg = &self.inner.cfg;
        let mut k = Config {
            flags: CONFIG_READY,
            redirect_port: self.inner.redirect_port,
            proxy_tgid: std::process::id(),
            ..Config::default()
        };
        match cfg.redirect_address {
            IpAddr::V4(_) => k.redirect_addr4 = pack_ip(cfg.redirect_address).1[0],
            IpAddr::V6(_) => {
                k.redirect_addr6 = pack_ip(cfg.redirect_address).1;
                k.flags |= CONFIG_HAS_V6;
            }
        }
        if let Some(v6) = cfg.redirect_address_v6 {
            k.redirect_addr6 = pack_ip(IpAddr::V6(v6)).1;
            k.flags |= CONFIG_HAS_V6;
        }
        if cfg.exempt_own_cgroup {
            if let Some(own) = cgroups::own_cgroup(&self.inner.root) {
                if own != self.inner.root {
                    k.proxy_cgroup_id = cgroups::cgroup_id(&own).unwrap_or(0);
                }
            }
        }

        // DNS resolvers.
        let mut dns: HashMap<MapData, ClientKey, u8> =
            open_map(bpffs, maps::DNS, HashMap::try_from)?;
        let want: Vec<ClientKey> = cfg
            .dns()
            .into_iter()
            .map(ClientKey::from_socket_addr)
            .collect();
        for key in &want {
            dns.insert(key, 1, 0).map_err(|source| AgentError::Map {
                name: maps::DNS,
                source,
            })?;
        }
        let stale: Vec<ClientKey> = dns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for key in stale {
            let _ = dns.remove(&key);
        }

        // Exemptions, grouped by prefix.
        let mut by_prefix: BTreeMap<(IpAddr, u8), Vec<u16>> = BTreeMap::new();
        let mut any_port: Vec<(IpAddr, u8)> = Vec::new();
        for e in cfg.exemptions() {
            match e.port {
                Some(p) => by_prefix.entry((e.addr, e.prefix_len)).or_default().push(p),
                None => {
                    any_port.push((e.addr, e.prefix_len));
                    by_prefix.entry((e.addr, e.prefix_len)).or_default();
                }
            }
        }
        let mut ex4: LpmTrie<MapData, [u8; 4], ExemptPorts> =
            open_map(bpffs, maps::EXEMPT4, LpmTrie::try_from)?;
        let mut ex6: LpmTrie<MapData, [u8; 16], ExemptPorts> =
            open_map(bpffs, maps::EXEMPT6, LpmTrie::try_from)?;
        let mut want4 = Vec::new();
        let mut want6 = Vec::new();
        for ((addr, len), ports) in &by_prefix {
            let mut v = ExemptPorts::default();
            if !any_port.contains(&(*addr, *len)) {
                for (slot, p) in v.ports.iter_mut().zip(ports.iter().take(EXEMPT_PORTS)) {
                    *slot = *p;
                }
            }
            match addr {
                IpAddr::V4(a) => {
                    let key = Key::new(u32::from(*len), a.octets());
                    ex4.insert(&key, v, 0).map_err(|source| AgentError::Map {
                        name: maps::EXEMPT4,
                        source,
                    })?;
                    want4.push((u32::from(*len), a.octets()));
                }
                IpAddr::V6(a) => {
                    let key = Key::new(u32::from(*len), a.octets());
                    ex6.insert(&key, v, 0).map_err(|source| AgentError::Map {
                        name: maps::EXEMPT6,
                        source,
                    })?;
                    want6.push((u32::from(*len), a.octets()));
                }
            }
        }
        let stale4: Vec<Key<[u8; 4]>> = ex4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want4.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale4 {
            let _ = ex4.remove(&key);
        }
        let stale6: Vec<Key<[u8; 16]>> = ex6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want6.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale6 {
            let _ = ex6.remove(&key);
        }

        // Config last: it flips the programs from "deny all" to enforcing.
        let mut config: Array<MapData, Config> = open_map(bpffs, maps::CONFIG, Array::try_from)?;
        config.set(0, k, 0).map_err(|source| AgentError::Map {
            name: maps::CONFIG,
            source,
        })?;
        Ok(())
    }

    /// One rescan of the cgroup tree: attaches the programs to app cgroups
    /// not attached yet (skipping ones below an attached ancestor, which the
    /// kernel already covers) and forgets cgroups that are gone or no longer
    /// match. Blocking; cost is a walk of the tree plus, per new cgroup, six
    /// `bpf(2)` attach and pin calls.
    pub fn sync(&self) -> SyncReport {
        let inner = &self.inner;
        let _one_at_a_time = lock(&inner.sync_lock);
        let bpffs = &inner.cfg.bpffs;
        let mut report = SyncReport::default();

        // Wanted: matching cgroups without a matching ancestor.
        let found = cgroups::walk(&inner.root);
        let mut want: BTreeMap<u64, Attached> = BTreeMap::new();
        let mut matched_paths: Vec<String> = Vec::new();
        for f in &found {
            let Some(app) = inner.identity.matching(&f.rel) else {
                continue;
            };
            let covered = matched_paths
                .iter()
                .any(|p| f.rel.starts_with(&format!("{p}/")));
            if covered {
                continue;
            }
            matched_paths.push(f.rel.clone());
            want.insert(
                f.id,
                Attached {
                    path: f.rel.clone(),
                    cgroup_id: f.id,
                    app,
                },
            );
        }

        // Attach.
        let mut attached_now = BTreeMap::new();
        for (id, a) in want {
            match self.ensure_attached(&a) {
                Ok(true) => report.attached.push(a.path.clone()),
                Ok(false) => {}
                Err(e) => {
                    report
                        .errors
                        .push(format!("cgroup {}: {}", a.path, error_chain(&e)));
                    continue;
                }
            }
            attached_now.insert(id, a);
        }

        // Forget: link pins of cgroups not wanted any more.
        let links = links_dir(bpffs);
        if let Ok(rd) = fs::read_dir(&links) {
            for ent in rd.flatten() {
                let Some(id) = ent.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                if attached_now.contains_key(&id) {
                    continue;
                }
                remove_dir_pins(&ent.path());
                report.forgotten.push(id);
            }
        }

        let mut state = lock(&inner.state);
        for id in &report.forgotten {
            let old = state.attached.remove(id);
            self.retire_counters(&mut state, *id, old.map(|a| a.app));
            inner.identity.forget(*id);
        }
        state.attached = attached_now;
        drop(state);
        for p in &report.attached {
            tracing::info!(cgroup = %p, "app cgroup attached");
        }
        report
    }

    /// Attaches all six programs to one cgroup, skipping the ones whose link
    /// is already pinned. `Ok(true)` if anything was attached.
    fn ensure_attached(&self, a: &Attached) -> Result<bool, AgentError> {
        let dir = links_dir(&self.inner.cfg.bpffs).join(a.cgroup_id.to_string());
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let cg_path = self.inner.root.join(&a.path);
        let mut did = false;
        let mut cg_fd: Option<fs::File> = None;
        let mut programs = lock(&self.inner.programs);
        for name in progs::ALL {
            let pin = dir.join(name);
            if pin.exists() {
                continue;
            }
            let fd = match &cg_fd {
                Some(f) => f,
                None => {
                    cg_fd.insert(fs::File::open(&cg_path).map_err(io_err("opening", &cg_path))?)
                }
            };
            let link = attach_one(&mut programs, name, fd)?;
            link.pin(&pin).map_err(|source| AgentError::Pin {
                path: pin.clone(),
                source,
            })?;
            did = true;
        }
        Ok(did)
    }

    fn retire_counters(&self, state: &mut State, id: u64, app: Option<AppId>) {
        let mut map = lock(&self.inner.counters);
        if let Ok(values) = map.get(&id, 0) {
            if let Some(app) = app {
                let acc = state.retired.entry(app).or_default();
                for v in values.iter() {
                    acc.add(v);
                }
            }
        }
        let _ = map.remove(&id);
    }

    /// Counters per app: redirected connects and denied sockets by kind,
    /// summed over CPUs and over the app's cgroups (nested ones included).
    /// Cgroups that resolve to no app are reported under `unknown`.
    pub fn counters(&self) -> BTreeMap<AppId, AppCounters> {
        let mut out: BTreeMap<AppId, AppCounters> = BTreeMap::new();
        let state = lock(&self.inner.state);
        for (app, c) in &state.retired {
            let acc = out.entry(app.clone()).or_default();
            acc.redirected += c.redirected;
            for (k, v) in &c.denied {
                *acc.denied.entry(*k).or_default() += v;
            }
        }
        let by_id: StdHashMap<u64, AppId> = state
            .attached
            .values()
            .map(|a| (a.cgroup_id, a.app.clone()))
            .collect();
        drop(state);
        let rows: Vec<(u64, Vec<Counters>)> = {
            let map = lock(&self.inner.counters);
            map.iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (k, v.iter().copied().collect()))
                .collect()
        };
        for (id, per_cpu) in rows {
            let app = by_id
                .get(&id)
                .cloned()
                .or_else(|| self.inner.identity.resolve(id).map(|r| r.app))
                .unwrap_or_else(|| AppId("unknown".to_owned()));
            let acc = out.entry(app).or_default();
            for c in &per_cpu {
                acc.add(c);
            }
        }
        out
    }

    /// Runs the background work on the current tokio runtime: a rescan every
    /// `enforcement.rescan_interval_ms` (new app cgroups are attached within
    /// that time) and forwarding of the kernel's rare log events (aya-log) to
    /// `log`/`tracing`. The task runs until aborted; aborting it does not
    /// detach anything.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        tokio::spawn(async move { agent.background().await })
    }

    async fn background(self) {
        let period = Duration::from_millis(self.inner.cfg.rescan_interval_ms.max(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logger = match aya_log::EbpfLogger::init_from_id(self.inner.connect4_id)
            .map_err(|e| e.to_string())
            .and_then(|l| {
                // SAFETY: the logger owns its ring buffer fd, keeps it open
                // and returns the same fd for as long as the AsyncFd lives.
                unsafe { tokio::io::unix::AsyncFd::register(l) }.map_err(|e| e.to_string())
            }) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "kernel log events will not be forwarded");
                None
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let agent = self.clone();
                    match tokio::task::spawn_blocking(move || agent.sync()).await {
                        Ok(r) => for e in r.errors {
                            tracing::error!(error = %e, "attaching an app cgroup failed");
                        },
                        Err(e) => tracing::error!(error = %e, "cgroup rescan task failed"),
                    }
                }
                ready = async {
                    match logger.as_mut() {
                        Some(l) => l.readable_mut().await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(mut guard) = ready {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                }
            }
        }
    }
}

/// `e` and its sources, `: `-separated (aya's messages omit the errno).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn attach_one(
    programs: &mut Programs,
    name: &'static str,
    cgroup: &fs::File,
) -> Result<FdLink, AgentError> {
    let perr = |source| AgentError::Program { name, source };
    // bpf_link_create takes no attach flags (EINVAL with BPF_F_ALLOW_MULTI):
    // cgroup links always have multi-attach semantics. `Single` maps to 0.
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match name {
        progs::SOCK_OPS => {
            let id = programs.sock_ops.attach(cgroup, mode).map_err(perr)?;
            programs
                .sock_ops
                .take_link(id)
                .map_err(perr)?
                .try_into()
                .map_err(|source| AgentError::Link { name, source })?
        }
        progs::SOCK_CREATE => {
            let id = programs.sock_create.attach(cgroup, mode).map_err(perr)?;
            programs
                .sock_create
                .take_link(id)
                .map_err(perr)?
                .try_into()
                .map_err(|source| AgentError::Link { name, source })?
        }
        _ => {
            let p = match name {
                progs::CONNECT4 => &mut programs.connect4,
                progs::CONNECT6 => &mut programs.connect6,
                progs::SENDMSG4 => &mut programs.sendmsg4,
                progs::SENDMSG6 => &mut programs.sendmsg6,
                _ => return Err(AgentError::Missing(name)),
            };
            let id = p.attach(cgroup, mode).map_err(perr)?;
            p.take_link(id)
                .map_err(perr)?
                .try_into()
                .map_err(|source| AgentError::Link { name, source })?
        }
    };
    Ok(link)
}

fn open_map<T>(
    bpffs: &Path,
    name: &'static str,
    conv: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<T, AgentError> {
    let path = map_pin(bpffs, name);
    let data = MapData::from_pin(&path).map_err(|source| AgentError::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| AgentError::Map { name, source })?;
    conv(map).map_err(|source| AgentError::Map { name, source })
}

fn pins_complete(bpffs: &Path) -> bool {
    progs::ALL.iter().all(|p| prog_pin(bpffs, p).exists())
        && maps::PINNED.iter().all(|m| map_pin(bpffs, m).exists())
}

/// Fresh load: verifier, then pin every program and map. Partial pins of an
/// interrupted load are replaced; links are never touched here.
fn load_and_pin(bpffs: &Path) -> Result<(), AgentError> {
    if EBPF_OBJECT.is_empty() {
        return Err(AgentError::NoObject);
    }
    for sub in ["progs", "maps"] {
        let d = bpffs.join(sub);
        remove_dir_pins(&d);
        fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
    }
    let links = links_dir(bpffs);
    fs::create_dir_all(&links).map_err(io_err("creating", &links))?;
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    for name in maps::PINNED {
        let path = map_pin(bpffs, name);
        ebpf.map(name)
            .ok_or(AgentError::Missing(name))?
            .pin(&path)
            .map_err(|source| AgentError::Pin { path, source })?;
    }
    for name in progs::ALL {
        let path = prog_pin(bpffs, name);
        let prog = ebpf.program_mut(name).ok_or(AgentError::Missing(name))?;
        let perr = |source| AgentError::Program { name, source };
        match name {
            progs::SOCK_OPS => {
                let p: &mut SockOps = prog.try_into().map_err(perr)?;
                p.load().map_err(perr)?;
                p.pin(&path).map_err(|source| AgentError::Pin {
                    path: path.clone(),
                    source,
                })?;
            }
            progs::SOCK_CREATE => {
                let p: &mut CgroupSock = prog.try_into().map_err(perr)?;
                p.load().map_err(perr)?;
                p.pin(&path).map_err(|source| AgentError::Pin {
                    path: path.clone(),
                    source,
                })?;
            }
            _ => {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(perr)?;
                p.load().map_err(perr)?;
                p.pin(&path).map_err(|source| AgentError::Pin {
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

fn open_programs(bpffs: &Path) -> Result<Programs, AgentError> {
    let sa = |name: &'static str, t| {
        CgroupSockAddr::from_pin(prog_pin(bpffs, name), t)
            .map_err(|source| AgentError::Program { name, source })
    };
    Ok(Programs {
        connect4: sa(progs::CONNECT4, CgroupSockAddrAttachType::Connect4)?,
        connect6: sa(progs::CONNECT6, CgroupSockAddrAttachType::Connect6)?,
        sendmsg4: sa(progs::SENDMSG4, CgroupSockAddrAttachType::UDPSendMsg4)?,
        sendmsg6: sa(progs::SENDMSG6, CgroupSockAddrAttachType::UDPSendMsg6)?,
        sock_ops: SockOps::from_pin(prog_pin(bpffs, progs::SOCK_OPS)).map_err(|source| {
            AgentError::Program {
                name: progs::SOCK_OPS,
                source,
            }
        })?,
        sock_create: CgroupSock::from_pin(
            prog_pin(bpffs, progs::SOCK_CREATE),
            CgroupSockAttachType::SockCreate,
        )
        .map_err(|source| AgentError::Program {
            name: progs::SOCK_CREATE,
            source,
        })?,
    })
}

/// Removes every pin in `dir` (recursively) and the directories. Removing a
/// link's last pin detaches it.
fn remove_dir_pins(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let p = ent.path();
        if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_dir_pins(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
    let _ = fs::remove_dir(dir);
}

fn is_bpffs(path: &Path) -> bool {
    cgroups::statfs_magic(path) == Some(BPF_FS_MAGIC)
}

fn is_mount_point(path: &Path) -> bool {
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Makes `dir` a directory on a bpffs, mounting one at `dir` if it is not.
fn ensure_bpffs(dir: &Path) -> Result<(), AgentError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    if is_bpffs(dir) {
        return Ok(());
    }
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(|_| AgentError::Io {
        what: "mounting bpffs at",
        path: dir.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(AgentError::Io {
            what: "mounting bpffs at",
            path: dir.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(path = %dir.display(), "mounted bpffs");
    Ok(())
}

/// Removes all enforcement under `bpffs`: detaches every link (apps then
/// connect directly again), unpins programs and maps, and unmounts the bpffs
/// if it is mounted at `bpffs` itself. For `airlock detach`; idempotent.
pub fn detach(bpffs: &Path) -> Result<(), AgentError> {
    if !bpffs.exists() {
        return Ok(());
    }
    if !is_bpffs(bpffs) {
        return Err(AgentError::Io {
            what: "not a bpffs",
            path: bpffs.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    // Links first, so no program is left attached without its maps' pins.
    remove_dir_pins(&links_dir(bpffs));
    remove_dir_pins(&bpffs.join("progs"));
    remove_dir_pins(&bpffs.join("maps"));
    if is_mount_point(bpffs) {
        let c = CString::new(bpffs.as_os_str().as_bytes()).map_err(|_| AgentError::Io {
            what: "unmounting",
            path: bpffs.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            return Err(AgentError::Io {
                what: "unmounting",
                path: bpffs.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let _ = fs::remove_dir(bpffs);
    Ok(())
}
