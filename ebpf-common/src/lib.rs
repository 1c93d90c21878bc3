//! Types shared by the kernel side (`ebpf/`) and the user-space agent.
//!
//! `#![no_std]` so the eBPF programs can use it; the `user` feature adds what
//! only the agent needs (`aya::Pod` impls and address conversions).
//!
//! Every struct that travels through a map is `#[repr(C)]` with its padding
//! spelled out as zeroed fields: the verifier rejects map keys whose padding
//! bytes are uninitialised, and user space must hash the same bytes as the
//! kernel does.
//!
//! Address convention: `addr` fields hold the address bytes exactly as they
//! sit in memory in network order (`user_ip4`, `user_ip6`, `local_ip4`...),
//! read as native `u32`s. `u32::to_ne_bytes` gives the address octets back.
//! IPv4 uses `addr[0]` and leaves `addr[1..]` zero. Ports are host order.
#![no_std]

/// Address family numbers as the kernel uses them (`AF_INET`, `AF_INET6`).
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Program names (the eBPF function names), shared so the agent finds them.
///
/// Kept under 16 bytes: the kernel truncates object names to 15 characters,
/// and `bpftool` shows the truncated name.
pub mod programs {
    /// `cgroup/connect4`: redirects TCP, gates connected UDP.
    pub const CONNECT4: &str = "al_connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "al_connect6";
    /// `cgroup/sendmsg4`: unconnected UDP, DNS to the resolvers only.
    pub const SENDMSG4: &str = "al_sendmsg4";
    /// `cgroup/sendmsg6`.
    pub const SENDMSG6: &str = "al_sendmsg6";
    /// `sockops`: re-keys origins by client address once established.
    pub const SOCK_OPS: &str = "al_sockops";
    /// `cgroup/sock_create`: refuses raw and packet sockets.
    pub const SOCK_CREATE: &str = "al_sock_create";
    /// All of them, in attach order (the socket gate first).
    pub const ALL: [&str; 6] = [
        SOCK_CREATE,
        SOCK_OPS,
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
    ];
}

/// Map names (the eBPF statics' names); also the file names of their pins.
pub mod maps {
    /// `LruHashMap<u64 socket cookie, Origin>`: written by connect4/6.
    pub const ORIGIN_BY_COOKIE: &str = "AL_ORIG_COOKIE";
    /// `LruHashMap<ClientKey, Origin>`: written by sock_ops, read and
    /// deleted by the proxy on accept (LRU bounds what is never taken).
    pub const ORIGIN_BY_CLIENT: &str = "AL_ORIG_CLIENT";
    /// `Array<Config>` with one entry, written by the agent.
    pub const CONFIG: &str = "AL_CONFIG";
    /// `LpmTrie<[u8; 4], ExemptPorts>` (network-order address bytes): IPv4 destinations allowed direct.
    pub const EXEMPT4: &str = "AL_EXEMPT4";
    /// `LpmTrie<[u8; 16], ExemptPorts>`: IPv6 destinations allowed direct.
    pub const EXEMPT6: &str = "AL_EXEMPT6";
    /// `HashMap<ClientKey, u8>`: DNS resolvers (address, port) UDP may reach.
    pub const DNS: &str = "AL_DNS";
    /// `PerCpuHashMap<u64 cgroup id, Counters>`.
    pub const COUNTERS: &str = "AL_COUNTERS";
    /// aya-log's ring buffer (its name is fixed by aya-log).
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// Maps the agent pins (all but aya-log's, which it finds through a
    /// program).
    pub const PINNED: [&str; 7] = [
        ORIGIN_BY_COOKIE,
        ORIGIN_BY_CLIENT,
        CONFIG,
        EXEMPT4,
        EXEMPT6,
        DNS,
        COUNTERS,
    ];
}

/// Capacity of the origin maps. LRU, so a flood of connects that never
/// establish evicts old entries instead of failing new connects.
pub const ORIGIN_MAP_ENTRIES: u32 = 65_536;
/// Capacity of the per-cgroup counter map.
pub const COUNTER_MAP_ENTRIES: u32 = 8_192;
/// Capacity of each exempt LPM trie.
pub const EXEMPT_MAP_ENTRIES: u32 = 1_024;
/// Capacity of the DNS resolver set.
pub const DNS_MAP_ENTRIES: u32 = 64;
/// Ports per exempt prefix (0 in a slot means unused; all unused = any port).
pub const EXEMPT_PORTS: usize = 8;

/// `Config::flags` bit: the agent has written a complete config. Until it is
/// set every program denies (a zeroed array entry must never mean "allow").
pub const CONFIG_READY: u32 = 1;
/// `Config::flags` bit: `redirect_addr6` is set; otherwise IPv6 connects are
/// sent to the IPv4 redirect address as a v4-mapped address.
pub const CONFIG_HAS_V6: u32 = 2;

/// Agent-to-kernel configuration, entry 0 of [`maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`CONFIG_READY`] | [`CONFIG_HAS_V6`].
    pub flags: u32,
    /// IPv4 redirect address, network-order bytes as a native u32.
    pub redirect_addr4: u32,
    /// IPv6 redirect address (valid with [`CONFIG_HAS_V6`]).
    pub redirect_addr6: [u32; 4],
    /// The proxy port connects are sent to, host order.
    pub redirect_port: u16,
    /// Explicit padding, always zero.
    pub _pad0: u16,
    /// The proxy's process (tgid): its own connects are never redirected.
    /// 0 = none.
    pub proxy_tgid: u32,
    /// The proxy's cgroup v2 id: connects from it are never redirected.
    /// 0 = none.
    pub proxy_cgroup_id: u64,
}

/// A socket address as a map key: the client side of an accepted connection,
/// or a DNS resolver.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Host order.
    pub port: u16,
    /// See the crate doc for the byte convention.
    pub addr: [u32; 4],
}

/// What connect4/6 remember about a redirected connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Family of the original destination.
    pub family: u16,
    /// Original destination port, host order.
    pub port: u16,
    /// Original destination address.
    pub addr: [u32; 4],
    /// tgid of the connecting process.
    pub pid: u32,
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Socket cookie of the client socket (diagnostics).
    pub cookie: u64,
}

/// Ports allowed direct for one exempt prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExemptPorts {
    /// Host-order ports; all zero = every port.
    pub ports: [u16; EXEMPT_PORTS],
}

/// Per-cgroup, per-CPU event counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connects sent to the proxy.
    pub redirected: u64,
    /// UDP sends/connects to anything but a configured DNS resolver.
    pub denied_udp: u64,
    /// `SOCK_RAW` inet sockets.
    pub denied_raw: u64,
    /// `AF_PACKET` sockets.
    pub denied_packet: u64,
    /// Other inet protocols (ICMP ping sockets, SCTP, MPTCP...).
    pub denied_proto: u64,
    /// Fail-closed denials: no config yet, a map insert or helper failed.
    pub denied_internal: u64,
}

impl Counters {
    /// Adds `other` into `self` (summing per-CPU values).
    pub fn add(&mut self, other: &Counters) {
        self.redirected = self.redirected.wrapping_add(other.redirected);
        self.denied_udp = self.denied_udp.wrapping_add(other.denied_udp);
        self.denied_raw = self.denied_raw.wrapping_add(other.denied_raw);
        self.denied_packet = self.denied_packet.wrapping_add(other.denied_packet);
        self.denied_proto = self.denied_proto.wrapping_add(other.denied_proto);
        self.denied_internal = self.denied_internal.wrapping_add(other.denied_internal);
    }
}

#[cfg(feature = "user")]
mod user {
    extern crate std;
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    // SAFETY: all are repr(C), Copy, and have no implicit padding (padding is
    // explicit, zero-initialised fields), so any byte pattern is valid.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ClientKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Origin {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ExemptPorts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}

    /// Packs an IP address in the crate's `[u32; 4]` convention.
    pub fn pack_ip(ip: IpAddr) -> (u16, [u32; 4]) {
        match ip {
            IpAddr::V4(v4) => (AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut out = [0u32; 4];
                for (i, w) in out.iter_mut().enumerate() {
                    *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
                (AF_INET6, out)
            }
        }
    }

    /// Unpacks an address stored in the crate's convention; `None` for an
    /// unknown family.
    pub fn unpack_ip(family: u16, addr: [u32; 4]) -> Option<IpAddr> {
        match family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))),
            AF_INET6 => {
                let mut o = [0u8; 16];
                for (i, w) in addr.iter().enumerate() {
                    o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        }
    }

    impl ClientKey {
        /// The key the kernel writes for this client address. v4-mapped
        /// IPv6 addresses are folded to IPv4, as the kernel side does.
        pub fn from_socket_addr(sa: SocketAddr) -> Self {
            let (family, addr) = pack_ip(sa.ip().to_canonical());
            ClientKey {
                family,
                port: sa.port(),
                addr,
            }
        }
    }

    impl Origin {
        /// The original destination, if the family is known.
        pub fn socket_addr(&self) -> Option<SocketAddr> {
            unpack_ip(self.family, self.addr).map(|ip| SocketAddr::new(ip, self.port))
        }
    }
}

#[cfg(feature = "user")]
pub use user::{pack_ip, unpack_ip};
