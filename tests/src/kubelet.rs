//! A ConfigMap volume laid out the way the kubelet writes it, for reload tests.
//!
//! The kubelet never edits a mounted ConfigMap's files in place. Each update
//! is written to a new hidden directory (`..<timestamp>`), a symlink
//! `..data_tmp` pointing at it is renamed over `..data` (one atomic step), and
//! the names the container sees are symlinks through `..data`
//! (`airlock.yaml -> ..data/airlock.yaml`, `data -> ..data/data` for items
//! with a directory). The old directory is then removed. A watcher that reacts
//! to writes of the files themselves sees nothing; one that watches the
//! directory sees the `..data` rename. `ConfigMapVolume::update` reproduces
//! that sequence, so the agent's hot reload can be tested against it.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A directory that looks like a mounted ConfigMap volume.
#[derive(Debug)]
pub struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapVolume {
    /// Lay out `files` (item path → content, as the DaemonSet's `items` map
    /// keys to paths) in `dir`, which must not exist yet or be empty.
    pub fn create(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<ConfigMapVolume> {
        std::fs::create_dir_all(dir)?;
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        v.update(files)?;
        Ok(v)
    }

    /// The mount point (what `--config` and `policy.dir` point into).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replace the whole payload the way the kubelet does.
    pub fn update(&mut self, files: &[(&str, &[u8])]) -> io::Result<()> {
        self.generation += 1;
        let ts_name = format!("..2026_01_01_00_00_00.{:09}", self.generation);
        let ts_dir = self.dir.join(&ts_name);
        std::fs::create_dir(&ts_dir)?;
        for (path, content) in files {
            let p = ts_dir.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, content)?;
        }
        let data = self.dir.join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&ts_name, &tmp)?;
        std::fs::rename(&tmp, &data)?;

        // User-visible names: one symlink per first path segment.
        let mut top: Vec<&str> = files
            .iter()
            .map(|(p, _)| p.split('/').next().unwrap_or(p))
            .collect();
        top.sort_unstable();
        top.dedup();
        for name in &top {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link)?;
            }
        }
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !top.contains(&name.as_str()) {
                std::fs::remove_file(entry.path())?;
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_swap_the_data_link_and_keep_the_visible_names() {
        let dir = std::env::temp_dir().join(format!("airlock-cm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut v = ConfigMapVolume::create(
            &dir,
            &[("airlock.yaml", b"one"), ("data/apps.yaml", b"apps: 1")],
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.join("airlock.yaml")).unwrap(), b"one");
        assert_eq!(
            std::fs::read(dir.join("data/apps.yaml")).unwrap(),
            b"apps: 1"
        );
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert!(std::fs::symlink_metadata(dir.join("airlock.yaml"))
            .unwrap()
            .file_type()
            .is_symlink());

        v.update(&[("airlock.yaml", b"two"), ("data/apps.yaml", b"apps: 2")])
            .unwrap();
        assert_eq!(std::fs::read(dir.join("airlock.yaml")).unwrap(), b"two");
        assert_eq!(
            std::fs::read(dir.join("data/apps.yaml")).unwrap(),
            b"apps: 2"
        );
        assert_ne!(std::fs::read_link(dir.join("..data")).unwrap(), first);
        assert!(!dir.join(&first).exists(), "old payload removed");

        // A key that goes away disappears from the visible names.
        v.update(&[("airlock.yaml", b"three")]).unwrap();
        assert!(!dir.join("data").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
