//! cgroup v2 plumbing: finding the root, matching app globs, walking the tree.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Deepest nesting walked below the root (systemd + kubepods stay far below).
const MAX_DEPTH: usize = 12;

/// Errors finding or reading cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither candidate is a cgroup2 mount.
    #[error("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified; set enforcement.cgroup_root")]
    NoV2Root,
    /// A configured root that is not cgroup2 (BPF attaches only to v2).
    #[error(
        "enforcement.cgroup_root {0:?} is not a cgroup v2 mount (BPF programs attach only to v2)"
    )]
    NotV2(PathBuf),
    /// I/O on a cgroup path.
    #[error("cgroup {path:?}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Is `path` the top of a cgroup2 mount (or inside one)?
pub fn is_cgroup2(path: &Path) -> bool {
    statfs_magic(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// `statfs(2)` `f_type` of `path`.
pub(crate) fn statfs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe_zeroed_statfs();
    // SAFETY: valid NUL-terminated path and an out-pointer to a statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is not i64 on every architecture"
    )]
    let magic = st.f_type as i64;
    (rc == 0).then_some(magic)
}

fn unsafe_zeroed_statfs() -> libc::statfs {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Resolves `enforcement.cgroup_root`: `auto` prefers a pure v2
/// `/sys/fs/cgroup`, then the hybrid `/sys/fs/cgroup/unified`.
pub fn detect_root(setting: &str) -> Result<PathBuf, CgroupError> {
    if setting != "auto" {
        let p = PathBuf::from(setting);
        return if is_cgroup2(&p) {
            Ok(p)
        } else {
            Err(CgroupError::NotV2(p))
        };
    }
    for cand in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let p = PathBuf::from(cand);
        if is_cgroup2(&p) {
            return Ok(p);
        }
    }
    Err(CgroupError::NoV2Root)
}

/// The cgroup v2 id of a cgroup directory (its inode number), as
/// `bpf_get_current_cgroup_id` reports it.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            path: path.to_owned(),
            source,
        })
}

/// The cgroup the calling process runs in, as a path under `root`.
pub fn own_cgroup(root: &Path) -> Option<PathBuf> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // The v2 line is "0::/path".
    let rel = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root.join(rel.trim_start_matches('/')))
}

/// A cgroup path glob: `*` and `?` match within one segment, `**` any number
/// of whole segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    segs: Vec<String>,
}

impl Glob {
    /// Parses a glob relative to the cgroup root.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty pattern".to_owned());
        }
        if pattern.starts_with('/') {
            return Err("must be relative to the cgroup root (no leading '/')".to_owned());
        }
        let segs: Vec<String> = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segs.iter().any(|s| s == "." || s == "..") {
            return Err("'.' and '..' are not allowed".to_owned());
        }
        if segs.iter().any(|s| s.contains("**") && s != "**") {
            return Err("'**' must be a whole path segment".to_owned());
        }
        if segs.iter().all(|s| s == "**") {
            // Would match the root itself: every process on the node.
            return Err("matches the cgroup root (every process on the node)".to_owned());
        }
        Ok(Glob { segs })
    }

    /// Does the relative cgroup path `rel` (segments split by '/') match?
    pub fn matches(&self, rel: &str) -> bool {
        let path: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        !path.is_empty() && match_segs(&self.segs, &path)
    }
}

fn match_segs(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|k| match_segs(rest, &path[k..])),
        Some((p, rest)) => match path.split_first() {
            Some((s, prest)) => match_seg(p.as_bytes(), s.as_bytes()) && match_segs(rest, prest),
            None => false,
        },
    }
}

fn match_seg(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => match_seg(&p[1..], s) || (!s.is_empty() && match_seg(p, &s[1..])),
        (Some(b'?'), Some(_)) => match_seg(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => match_seg(&p[1..], &s[1..]),
        _ => false,
    }
}

/// One cgroup found by [`walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Path relative to the root, '/'-separated, no leading '/'.
    pub rel: String,
    /// cgroup v2 id.
    pub id: u64,
}

/// Every cgroup below `root` (not the root itself), depth-first. Cost: one
/// `readdir` per cgroup; cgroups vanishing mid-walk are skipped.
pub fn walk(root: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    walk_into(root, "", 0, &mut out);
    out
}

fn walk_into(dir: &Path, rel: &str, depth: usize, out: &mut Vec<Found>) {
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let Ok(ft) = ent.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let child_rel = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let Ok(md) = ent.metadata() else { continue };
        out.push(Found {
            rel: child_rel.clone(),
            id: md.ino(),
        });
        walk_into(&ent.path(), &child_rel, depth + 1, out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = Glob::new("airlock-demo/*").unwrap();
        assert!(g.matches("airlock-demo/a"));
        assert!(!g.matches("airlock-demo"));
        assert!(!g.matches("airlock-demo/a/b"));
        let g = Glob::new("kubepods.slice/**/cri-containerd-*.scope").unwrap();
        assert!(g.matches("kubepods.slice/x/y/cri-containerd-1.scope"));
        assert!(g.matches("kubepods.slice/cri-containerd-1.scope"));
        assert!(!g.matches("kubepods.slice/x/other.scope"));
        let g = Glob::new("app?").unwrap();
        assert!(g.matches("app1") && !g.matches("app12"));
        assert!(Glob::new("/abs").is_err());
        assert!(Glob::new("**").is_err());
        assert!(Glob::new("a/**b").is_err());
    }
}
