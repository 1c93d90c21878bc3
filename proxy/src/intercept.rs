//! Intercept: the original destination of a redirected connection.
//!
//! Third step of a request's walk. `connect4`/`connect6` sent the app's
//! connect to the proxy and `sock_ops` indexed what it remembered by the
//! client's `(ip, port)` — exactly the peer address of the accepted socket.
//! [`Origins::take`] looks that up and deletes it (each record serves one
//! connection; LRU eviction and the close hook bound what is never taken).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use airlock_ebpf_common::{maps, ClientKey, Origin as RawOrigin};
use aya::maps::{HashMap, Map, MapData, MapError};

/// Where and by whom a redirected connection was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The destination the app asked for.
    pub orig_dst: SocketAddr,
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// tgid (process id) of the connecting task.
    pub pid: u32,
}

/// Errors reading the origin map.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The pinned map could not be opened.
    #[error(
        "origin map {path:?}: {source} (is the agent started with the same enforcement.bpffs?)"
    )]
    Open {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        source: MapError,
    },
    /// A lookup failed for another reason than "no record".
    #[error("origin map lookup: {0}")]
    Map(#[from] MapError),
    /// The record is corrupt (unknown address family).
    #[error("origin record with unknown address family {0}")]
    BadFamily(u16),
}

/// Handle on the client-keyed origin map. Cheap to clone; safe to share.
#[derive(Clone)]
pub struct Origins {
    map: Arc<Mutex<HashMap<MapData, ClientKey, RawOrigin>>>,
}

impl std::fmt::Debug for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Origins")
    }
}

impl Origins {
    /// Opens the map pinned under `bpffs` by the agent.
    pub fn open(bpffs: &Path) -> Result<Origins, InterceptError> {
        let path = bpffs.join("maps").join(maps::ORIGIN_BY_CLIENT);
        let open = || -> Result<_, MapError> {
            let data = MapData::from_pin(&path)?;
            HashMap::try_from(Map::from_map_data(data)?)
        };
        let map = open().map_err(|source| InterceptError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Origins {
            map: Arc::new(Mutex::new(map)),
        })
    }

    /// The origin of the connection whose client (the accepted socket's peer)
    /// is `peer`, removed from the map. `Ok(None)`: no record — the client is
    /// not under an app cgroup, or its record was evicted; refuse it.
    ///
    /// Cost: two `bpf(2)` syscalls under a mutex, a few microseconds. Never
    /// blocks on I/O.
    pub fn take(&self, peer: SocketAddr) -> Result<Option<Origin>, InterceptError> {
        let key = ClientKey::from_socket_addr(peer);
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let raw = match map.get(&key, 0) {
            Ok(r) => r,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match map.remove(&key) {
            // Removed concurrently by the close hook: the record is still valid.
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e.into()),
        }
        drop(map);
        let orig_dst = raw
            .socket_addr()
            .ok_or(InterceptError::BadFamily(raw.family))?;
        Ok(Some(Origin {
            orig_dst,
            cgroup_id: raw.cgroup_id,
            pid: raw.pid,
        }))
    }

    /// Number of records waiting to be taken (walks the map; for tests and
    /// diagnostics).
    pub fn pending(&self) -> usize {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.keys().filter(Result::is_ok).count()
    }
}
