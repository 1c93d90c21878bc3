//! Identity: cgroup id → cgroup path → app id.
//!
//! Fourth step of a request's walk: `intercept` gives the cgroup id of the
//! connecting task; this module names the app from the `apps` rules. A cgroup
//! nested below a matching one (a container inside a pod) belongs to the
//! nearest matching ancestor. Results are cached; a miss walks the cgroup
//! tree once (rate-limited), so call it off the hot path's inner loop.
//!
//! On Kubernetes, [`kube`] names apps from the pods of this node instead.

pub mod kube;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::agent::{
    cgroups::{self, Glob},
    config::AppRule,
};

/// Minimum time between two tree walks caused by cache misses.
const MIN_RESCAN: Duration = Duration::from_millis(50);
/// Cache bound; cleared whole past it (ids of removed cgroups pile up).
const MAX_CACHED: usize = 65_536;

/// An app's id from the `apps` rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppId(pub String);

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a cgroup id resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The app.
    pub app: AppId,
    /// The cgroup's path relative to the cgroup root.
    pub cgroup_path: String,
}

/// Errors building the resolver.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// An `apps[].cgroups` glob did not parse.
    #[error("apps: app {app:?} cgroup glob {glob:?}: {why}")]
    BadGlob {
        /// The app id.
        app: String,
        /// The glob.
        glob: String,
        /// Why.
        why: String,
    },
}

/// The `apps` rules, compiled.
#[derive(Clone, Debug)]
pub struct AppRules {
    rules: Vec<(AppId, Vec<Glob>)>,
}

impl AppRules {
    /// Compiles the rules; the first rule that matches wins.
    pub fn new(apps: &[AppRule]) -> Result<AppRules, IdentityError> {
        let mut rules = Vec::with_capacity(apps.len());
        for a in apps {
            let mut globs = Vec::with_capacity(a.cgroups.len());
            for g in &a.cgroups {
                globs.push(Glob::new(g).map_err(|why| IdentityError::BadGlob {
                    app: a.id.clone(),
                    glob: g.clone(),
                    why,
                })?);
            }
            rules.push((AppId(a.id.clone()), globs));
        }
        Ok(AppRules { rules })
    }

    /// The app whose glob matches `rel` exactly (no ancestor search).
    pub fn matching(&self, rel: &str) -> Option<&AppId> {
        self.rules
            .iter()
            .find(|(_, gs)| gs.iter().any(|g| g.matches(rel)))
            .map(|(a, _)| a)
    }

    /// The app of `rel` or of its nearest matching ancestor.
    pub fn app_for(&self, rel: &str) -> Option<&AppId> {
        let mut cur = rel.trim_matches('/');
        loop {
            if cur.is_empty() {
                return None;
            }
            if let Some(a) = self.matching(cur) {
                return Some(a);
            }
            cur = match cur.rfind('/') {
                Some(i) => &cur[..i],
                None => "",
            };
        }
    }
}

struct Cache {
    by_id: HashMap<u64, Option<Resolved>>,
    last_walk: Option<Instant>,
}

/// Resolves cgroup ids to apps. Cheap to share behind an `Arc`.
pub struct Identity {
    root: PathBuf,
    rules: AppRules,
    cache: RwLock<Cache>,
    external: RwLock<Option<ExternalMatcher>>,
}

/// A second source of cgroup path → app answers, consulted after the `apps`
/// rules: the pods of this node on Kubernetes ([`kube`]).
pub type ExternalMatcher = Arc<dyn Fn(&str) -> Option<AppId> + Send + Sync>;

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("root", &self.root)
            .field("rules", &self.rules)
            .finish()
    }
}

impl Identity {
    /// A resolver over the cgroup tree at `root` (see
    /// [`crate::agent::cgroups::detect_root`]).
    pub fn new(root: &Path, apps: &[AppRule]) -> Result<Identity, IdentityError> {
        Ok(Identity {
            root: root.to_owned(),
            rules: AppRules::new(apps)?,
            cache: RwLock::new(Cache {
                by_id: HashMap::new(),
                last_walk: None,
            }),
            external: RwLock::new(None),
        })
    }

    /// The compiled rules.
    pub fn rules(&self) -> &AppRules {
        &self.rules
    }

    /// Install the external matcher (pod identity) and drop cached answers.
    pub fn set_external(&self, m: ExternalMatcher) {
        if let Ok(mut e) = self.external.write() {
            *e = Some(m);
        }
        self.clear();
    }

    /// Drop every cached answer (the pods changed: labels, opt-in, deletions).
    pub fn clear(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.by_id.clear();
            c.last_walk = None;
        }
    }

    /// The app a cgroup (path relative to the root) belongs to by itself:
    /// an `apps` rule, else the external matcher. For the agent's attach walk.
    pub fn matching(&self, rel: &str) -> Option<AppId> {
        self.rules
            .matching(rel)
            .cloned()
            .or_else(|| self.external(rel))
    }

    fn external(&self, rel: &str) -> Option<AppId> {
        let m = self.external.read().ok()?.clone()?;
        m(rel)
    }

    /// The app of the cgroup with this id, or `None` when the cgroup is not
    /// under any app rule (or no longer exists). A cache hit is a read-locked
    /// hash lookup; a miss may walk the cgroup tree (about a `readdir` per
    /// cgroup), at most once per 50 ms.
    pub fn resolve(&self, cgroup_id: u64) -> Option<Resolved> {
        if let Ok(c) = self.cache.read() {
            if let Some(hit) = c.by_id.get(&cgroup_id) {
                return hit.clone();
            }
            if c.last_walk.is_some_and(|t| t.elapsed() < MIN_RESCAN) {
                return None;
            }
        }
        let found = cgroups::walk(&self.root);
        let mut c = self.cache.write().ok()?;
        if c.by_id.len() > MAX_CACHED {
            c.by_id.clear();
        }
        c.last_walk = Some(Instant::now());
        for f in found {
            let r = self
                .rules
                .app_for(&f.rel)
                .cloned()
                .or_else(|| self.external(&f.rel))
                .map(|app| Resolved {
                    app,
                    cgroup_path: f.rel.clone(),
                });
            c.by_id.insert(f.id, r);
        }
        c.by_id.get(&cgroup_id).cloned().flatten()
    }

    /// Drops cached entries (e.g. after the agent forgot removed cgroups).
    pub fn forget(&self, cgroup_id: u64) {
        if let Ok(mut c) = self.cache.write() {
            c.by_id.remove(&cgroup_id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn nearest_matching_ancestor() {
        let apps = vec![
            AppRule {
                id: "a".into(),
                cgroups: vec!["pods/a-*".into()],
            },
            AppRule {
                id: "b".into(),
                cgroups: vec!["pods/**/b".into()],
            },
        ];
        let r = AppRules::new(&apps).unwrap();
        assert_eq!(r.app_for("pods/a-1/ctr").map(|a| a.0.as_str()), Some("a"));
        assert_eq!(r.app_for("pods/x/y/b").map(|a| a.0.as_str()), Some("b"));
        assert_eq!(r.app_for("pods/other"), None);
    }
}
