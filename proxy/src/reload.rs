//! The reload plane: notice a change, build the new state off to the side,
//! report the result. The swap itself (arc-swap) belongs to the caller.
//!
//! - [`Reloader::spawn`] watches the config file and the policy directory
//!   with `notify` (inotify on Linux) and runs a *build* closure on its own
//!   thread after the changes settle (debounced), then hands the result to a
//!   *report* closure: `Ok(state)` to swap in, `Err(e)` to log and count while
//!   the last good state keeps serving.
//! - Kubernetes updates a mounted ConfigMap by writing a new timestamped
//!   directory and renaming the `..data` symlink onto it; the files the app
//!   sees are symlinks through `..data`, and none of them is written in
//!   place. So the watcher watches *directories* (the config file's parent
//!   and the policy directory, recursively), and treats an event on the
//!   config file's name or on any `..`-prefixed entry as a change.
//! - SIGHUP and manual triggers (an admin endpoint, tests) go through a
//!   [`ReloadTrigger`]; [`forward_sighup`] wires the signal in a tokio runtime.
//! - [`PolicyState::build`] is the state-building step for the policy,
//!   budget limits and prices, with the combined revision hash.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};

use crate::budget::{BudgetConfig, BudgetError, Limits};
use crate::policy::{PolicyBundle, PolicyConfig, PolicyError, PolicyRevision};

/// Errors of the reload plane itself (not of a build).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file watcher could not be created or could not watch a path.
    #[error("reload: cannot watch {path}: {message} (hint: check the path exists and inotify limits, fs.inotify.max_user_watches)")]
    Watch {
        /// The path.
        path: PathBuf,
        /// notify's message.
        message: String,
    },
    /// The reload thread could not be started.
    #[error("reload: cannot start the reload thread: {0}")]
    Thread(std::io::Error),
    /// Building the policy state failed; the old state stays.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// Loading budgets or prices failed; the old state stays.
    #[error("{0}")]
    Budget(#[from] BudgetError),
}

/// Why a reload ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Files changed (the paths notify reported, deduplicated, first 16).
    Files(Vec<PathBuf>),
    /// SIGHUP.
    Signal,
    /// An explicit request (admin endpoint, test).
    Manual,
}

enum Msg {
    Trigger(Trigger),
    Stop,
}

/// Starts a reload from anywhere (signal handler task, admin endpoint).
#[derive(Debug, Clone)]
pub struct ReloadTrigger(mpsc::Sender<Msg>);

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Trigger(t) => write!(f, "Trigger({t:?})"),
            Msg::Stop => f.write_str("Stop"),
        }
    }
}

impl ReloadTrigger {
    /// Ask for a reload; false when the reloader has stopped.
    pub fn trigger(&self, why: Trigger) -> bool {
        self.0.send(Msg::Trigger(why)).is_ok()
    }
}

/// One finished reload attempt, handed to the report closure.
#[derive(Debug)]
pub struct ReloadReport<T, E> {
    /// Counts attempts from 1.
    pub attempt: u64,
    /// What started it (merged over the debounce window; the first trigger wins).
    pub trigger: Trigger,
    /// The new state, or why it was rejected.
    pub result: Result<T, E>,
    /// Build time.
    pub took: Duration,
}

/// The `reload:` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch the config file and policy directory (SIGHUP works either way).
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Quiet time after the last file event before rebuilding, in ms.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

fn default_watch() -> bool {
    true
}

fn default_debounce_ms() -> u64 {
    250
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: default_watch(),
            debounce_ms: default_debounce_ms(),
        }
    }
}

impl ReloadConfig {
    /// Every problem with this section, each naming the key and the bad value.
    pub fn validate(&self) -> Vec<String> {
        if (10..=60_000).contains(&self.debounce_ms) {
            Vec::new()
        } else {
            vec![format!(
                "reload.debounce_ms: {} is out of range (10..=60000)",
                self.debounce_ms
            )]
        }
    }

    /// What to watch for a config file and a policy directory; nothing
    /// when `watch` is off (the reloader then only answers triggers).
    pub fn spec(&self, config_file: Option<PathBuf>, policy_dir: PathBuf) -> WatchSpec {
        let debounce = Duration::from_millis(self.debounce_ms);
        if self.watch {
            WatchSpec {
                config_file,
                dirs: vec![policy_dir],
                debounce,
            }
        } else {
            WatchSpec {
                config_file: None,
                dirs: Vec::new(),
                debounce,
            }
        }
    }
}

/// What to watch and how long to let changes settle.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Config file; its parent directory is watched (non-recursively).
    pub config_file: Option<PathBuf>,
    /// Directories watched recursively (the policy directory).
    pub dirs: Vec<PathBuf>,
    /// Quiet time after the last event before building (kubelet writes in bursts).
    pub debounce: Duration,
}

/// The running reloader. Dropping it stops the watcher and the thread.
pub struct Reloader {
    trigger: ReloadTrigger,
    thread: Option<JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// Does an event on `path` concern us? (config file name, `..data` flips,
/// or anything under a watched directory).
fn relevant(path: &Path, config: Option<(&Path, &OsStr)>, dirs: &[PathBuf]) -> bool {
    if dirs.iter().any(|d| path.starts_with(d)) {
        return true;
    }
    let Some((parent, name)) = config else {
        return false;
    };
    if path.parent() != Some(parent) {
        return false;
    }
    let file = path.file_name().unwrap_or_default();
    file == name || file.to_string_lossy().starts_with("..")
}

impl Reloader {
    /// Start watching. `build` runs on the reloader's thread for every
    /// settled change or trigger; `report` gets its result. Neither runs on
    /// a request path. The initial state is the caller's to build before.
    pub fn spawn<T, E, B, R>(
        spec: WatchSpec,
        mut build: B,
        mut report: R,
    ) -> Result<Self, ReloadError>
    where
        T: Send + 'static,
        E: Send + 'static,
        B: FnMut() -> Result<T, E> + Send + 'static,
        R: FnMut(ReloadReport<T, E>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Msg>();
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let dirs: Vec<PathBuf> = spec.dirs.iter().map(|d| canon(d)).collect();
        let config: Option<(PathBuf, std::ffi::OsString)> =
            spec.config_file.as_ref().and_then(|f| {
                let parent = f
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Some((canon(parent), f.file_name()?.to_os_string()))
            });

        let events_tx = tx.clone();
        let (f_dirs, f_config) = (dirs.clone(), config.clone());
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else {
                // A watcher error (queue overflow…): reload to be safe.
                let _ = events_tx.send(Msg::Trigger(Trigger::Files(Vec::new())));
                return;
            };
            // Our own reads show up as Access events; they must not loop.
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let cfg = f_config.as_ref().map(|(p, n)| (p.as_path(), n.as_os_str()));
            let paths: Vec<PathBuf> = ev
                .paths
                .into_iter()
                .filter(|p| relevant(p, cfg, &f_dirs))
                .collect();
            if !paths.is_empty() {
                let _ = events_tx.send(Msg::Trigger(Trigger::Files(paths)));
            }
        })
        .map_err(|e| ReloadError::Watch {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let mut watch = |path: &Path, mode| {
            watcher.watch(path, mode).map_err(|e| ReloadError::Watch {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        };
        if let Some((parent, _)) = &config {
            watch(parent, RecursiveMode::NonRecursive)?;
        }
        for d in &dirs {
            watch(d, RecursiveMode::Recursive)?;
        }

        let debounce = spec.debounce;
        let thread = std::thread::Builder::new()
            .name("airlock-reload".into())
            .spawn(move || {
                let mut attempt = 0u64;
                while let Ok(Msg::Trigger(first)) = rx.recv() {
                    let mut trigger = first;
                    // Let the burst settle: wait until `debounce` passes with no event.
                    loop {
                        match rx.recv_timeout(debounce) {
                            Ok(Msg::Trigger(more)) => merge(&mut trigger, more),
                            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                    attempt += 1;
                    let started = Instant::now();
                    let result = build();
                    report(ReloadReport {
                        attempt,
                        trigger,
                        result,
                        took: started.elapsed(),
                    });
                }
            })
            .map_err(ReloadError::Thread)?;
        Ok(Self {
            trigger: ReloadTrigger(tx),
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// A handle to trigger reloads (SIGHUP task, admin endpoint).
    pub fn trigger(&self) -> ReloadTrigger {
        self.trigger.clone()
    }
}

fn merge(into: &mut Trigger, more: Trigger) {
    if let (Trigger::Files(a), Trigger::Files(b)) = (&mut *into, more) {
        for p in b {
            if a.len() < 16 && !a.contains(&p) {
                a.push(p);
            }
        }
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.trigger.0.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forward SIGHUP to a reload, forever. Spawn it on the admin runtime:
/// `tokio::spawn(forward_sighup(reloader.trigger()))`.
pub async fn forward_sighup(trigger: ReloadTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading config and policy");
        if !trigger.trigger(Trigger::Signal) {
            break;
        }
    }
    Ok(())
}

/// The policy part of the swappable state: compiled policy, budget limits,
/// prices, and the revision they add up to.
#[derive(Debug)]
pub struct PolicyState {
    /// The compiled policy and its data.
    pub policy: PolicyBundle,
    /// Budget limits and prices.
    pub limits: Limits,
    /// SHA-256 over the config bytes, policy modules and data files in force.
    pub revision: PolicyRevision,
}

impl PolicyState {
    /// Build everything off to the side: parse and validate both data
    /// files, compile the Rego, run its unit tests if configured. Budgets
    /// and prices come from `<policy.dir>/data/` unless the budgets config
    /// names other files. `config_bytes` (the raw config file) goes into the
    /// revision so a config-only change shows a new revision.
    pub fn build(
        policy_cfg: &PolicyConfig,
        budget_cfg: &BudgetConfig,
        config_bytes: &[u8],
    ) -> Result<Self, ReloadError> {
        let policy = PolicyBundle::load(policy_cfg)?;
        let mut hasher = Sha256::new();
        hasher.update(config_bytes);
        hasher.update(policy.revision().0.as_bytes());
        let (bf, pf) = budget_cfg.files(&policy_cfg.dir);
        let from_bundle = |stem: &str, path: &Path| {
            policy
                .data_file(stem)
                .filter(|(p, _)| *p == path)
                .map(|(_, v)| v.clone())
        };
        let limits = match (from_bundle("budgets", &bf), from_bundle("prices", &pf)) {
            // Both in the policy directory: already read and hashed.
            (Some(b), Some(p)) => Limits::from_values(&b, &bf, &p, &pf, budget_cfg)?,
            _ => {
                for f in [&bf, &pf] {
                    hasher.update(std::fs::read(f).map_err(|source| BudgetError::Io {
                        path: f.clone(),
                        source,
                    })?);
                }
                Limits::load(&bf, &pf, budget_cfg)?
            }
        };
        Ok(Self {
            policy,
            limits,
            revision: PolicyRevision(hex::encode(hasher.finalize())),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A tiny state: the number in `n.txt`, rejected when not a number.
    fn build_from(dir: PathBuf) -> impl FnMut() -> Result<u32, String> + Send + 'static {
        move || {
            let s = std::fs::read_to_string(dir.join("n.txt")).map_err(|e| e.to_string())?;
            s.trim().parse::<u32>().map_err(|e| format!("n.txt: {e}"))
        }
    }

    /// The caller's side: keep the last good state, remember errors.
    #[derive(Default)]
    struct Swapped {
        current: u32,
        errors: Vec<String>,
        reports: Vec<Trigger>,
    }

    fn reporter(s: Arc<Mutex<Swapped>>) -> impl FnMut(ReloadReport<u32, String>) + Send + 'static {
        move |r| {
            let mut s = s.lock().unwrap();
            s.reports.push(r.trigger);
            match r.result {
                Ok(v) => s.current = v,
                Err(e) => s.errors.push(e),
            }
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn file_change_applies_and_bad_build_keeps_old_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::write(dir.join("n.txt"), "1").unwrap();
        let state = Arc::new(Mutex::new(Swapped {
            current: 1,
            ..Default::default()
        }));
        let spec = WatchSpec {
            config_file: None,
            dirs: vec![dir.clone()],
            debounce: Duration::from_millis(100),
        };
        let r = Reloader::spawn(spec, build_from(dir.clone()), reporter(state.clone())).unwrap();

        std::fs::write(dir.join("n.txt"), "2").unwrap();
        wait_until("new state", || state.lock().unwrap().current == 2);

        std::fs::write(dir.join("n.txt"), "two").unwrap();
        wait_until("error report", || !state.lock().unwrap().errors.is_empty());
        assert_eq!(state.lock().unwrap().current, 2, "old state must stay");
        assert!(state.lock().unwrap().errors[0].starts_with("n.txt:"));

        // Manual trigger (what SIGHUP sends) also rebuilds.
        std::fs::write(dir.join("n.txt"), "3").unwrap();
        wait_until("file reload", || state.lock().unwrap().current == 3);
        let before = state.lock().unwrap().reports.len();
        assert!(r.trigger().trigger(Trigger::Signal));
        wait_until("signal reload", || {
            state.lock().unwrap().reports.len() > before
        });
        assert_eq!(state.lock().unwrap().reports.last(), Some(&Trigger::Signal));
        drop(r);
    }

    /// Lay out a directory the way kubelet mounts a ConfigMap.
    fn kube_flip(root: &Path, version: &str, value: &str) {
        let ts = root.join(format!("..{version}"));
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("n.txt"), value).unwrap();
        let tmp_link = root.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp_link).unwrap();
        std::fs::rename(&tmp_link, root.join("..data")).unwrap();
        let user = root.join("n.txt");
        if std::fs::symlink_metadata(&user).is_err() {
            std::os::unix::fs::symlink("..data/n.txt", &user).unwrap();
        }
    }

    #[test]
    fn configmap_symlink_flip_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        kube_flip(&root, "2026_01_01_v1", "10");
        let state = Arc::new(Mutex::new(Swapped {
            current: 10,
            ..Default::default()
        }));
        // Watch as a config file (parent dir, non-recursive): the flip only renames `..data`.
        let spec = WatchSpec {
            config_file: Some(root.join("n.txt")),
            dirs: vec![],
            debounce: Duration::from_millis(100),
        };
        let _r = Reloader::spawn(spec, build_from(root.clone()), reporter(state.clone())).unwrap();
        kube_flip(&root, "2026_01_01_v2", "11");
        wait_until("flip seen", || state.lock().unwrap().current == 11);
        // No reload loop from our own reads.
        std::thread::sleep(Duration::from_millis(400));
        let n = state.lock().unwrap().reports.len();
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(state.lock().unwrap().reports.len(), n);
    }

    #[test]
    fn configmap_flip_in_a_watched_policy_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        kube_flip(&root, "2026_01_01_v1", "20");
        let state = Arc::new(Mutex::new(Swapped {
            current: 20,
            ..Default::default()
        }));
        let spec = ReloadConfig {
            watch: true,
            debounce_ms: 100,
        }
        .spec(None, root.clone());
        let _r = Reloader::spawn(spec, build_from(root.clone()), reporter(state.clone())).unwrap();
        kube_flip(&root, "2026_01_01_v2", "21");
        wait_until("flip seen", || state.lock().unwrap().current == 21);
        kube_flip(&root, "2026_01_01_v3", "x");
        wait_until("bad flip reported", || {
            !state.lock().unwrap().errors.is_empty()
        });
        assert_eq!(state.lock().unwrap().current, 21);
    }

    fn copy_policies(to: &Path) {
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
        std::fs::create_dir_all(to.join("data")).unwrap();
        for f in ["airlock.rego", "airlock_test.rego"] {
            std::fs::copy(src.join(f), to.join(f)).unwrap();
        }
        for f in ["apps.yaml", "budgets.yaml", "prices.yaml"] {
            std::fs::copy(src.join("data").join(f), to.join("data").join(f)).unwrap();
        }
    }

    #[test]
    fn state_is_shareable_across_workers() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PolicyState>();
        send_sync::<crate::budget::Budgets>();
        send_sync::<crate::budget::Ticket>();
    }

    #[test]
    fn policy_state_build_and_reject() {
        let tmp = tempfile::tempdir().unwrap();
        copy_policies(tmp.path());
        let pc = PolicyConfig {
            dir: tmp.path().to_path_buf(),
            run_tests_on_reload: true,
            ..PolicyConfig::default()
        };
        let bc = BudgetConfig::default();
        let a = PolicyState::build(&pc, &bc, b"config v1").unwrap();
        assert!(a.limits.for_app("support-bot").is_some());
        let b = PolicyState::build(&pc, &bc, b"config v2").unwrap();
        assert_ne!(
            a.revision, b.revision,
            "config bytes are part of the revision"
        );

        // A new budget is picked up.
        let budgets = tmp.path().join("data/budgets.yaml");
        std::fs::write(
            &budgets,
            "apps: { support-bot: { requests_per_minute: { hard: 1 } } }\n",
        )
        .unwrap();
        let c = PolicyState::build(&pc, &bc, b"config v2").unwrap();
        assert_ne!(b.revision, c.revision);

        // Bad YAML, unknown key, broken Rego: each rejected with a message naming the file.
        std::fs::write(&budgets, "apps: [\n").unwrap();
        let e = PolicyState::build(&pc, &bc, b"").unwrap_err().to_string();
        assert!(e.contains("budgets.yaml"), "{e}");
        std::fs::write(&budgets, "apps: { a: { tokens_per_hour: { hard: 1 } } }\n").unwrap();
        let e = PolicyState::build(&pc, &bc, b"").unwrap_err().to_string();
        assert!(e.contains("tokens_per_hour"), "{e}");
        std::fs::write(&budgets, "apps: {}\n").unwrap();
        std::fs::write(
            tmp.path().join("airlock.rego"),
            "package airlock\n\ndecision := {\n",
        )
        .unwrap();
        let e = PolicyState::build(&pc, &bc, b"").unwrap_err().to_string();
        assert!(e.contains("airlock.rego"), "{e}");
    }
}
