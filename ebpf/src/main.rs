//! Airlock's kernel side: cgroup socket programs that pin an app's egress to
//! the local proxy.
//!
//! First step of a request's walk. `connect4`/`connect6` rewrite every TCP
//! connect of an attached cgroup to the proxy's redirect address and remember
//! the original destination under the socket cookie; `sock_ops` moves that
//! record to a key the proxy can compute from `accept()` (the client's
//! address) and cleans up on close; `sendmsg4`/`sendmsg6` and UDP connects
//! only reach the configured DNS resolvers; `sock_create` refuses raw and
//! packet sockets. Every entry point is a thin wrapper around a `try_*`
//! function and fails closed.
#![no_std]
#![no_main]

use airlock_ebpf_common::{
    ClientKey, Config, Counters, ExemptPorts, Origin, AF_INET, AF_INET6, CONFIG_HAS_V6,
    CONFIG_READY, COUNTER_MAP_ENTRIES, DNS_MAP_ENTRIES, EXEMPT_MAP_ENTRIES, ORIGIN_MAP_ENTRIES,
};
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap},
    programs::{SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use core::ptr::{read_volatile, write_volatile};

/// Return value that lets the socket operation proceed.
const ALLOW: i32 = 1;
/// Return value that fails the operation with `EPERM`.
const DENY: i32 = 0;
/// What a program returns when it cannot do its job: no config written yet,
/// a map insert failed (map full) or a helper failed. Airlock fails closed:
/// letting the connect through would send the app straight to its original
/// destination, around the proxy.
const ON_INTERNAL_FAILURE: i32 = DENY;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_IP: u32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const AF_PACKET: u32 = 17;
/// `::ffff:0:0/96` third word, as the kernel stores it (network order).
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[map]
static AL_ORIG_COOKIE: LruHashMap<u64, Origin> =
    LruHashMap::with_max_entries(ORIGIN_MAP_ENTRIES, 0);

#[map]
static AL_ORIG_CLIENT: LruHashMap<ClientKey, Origin> =
    LruHashMap::with_max_entries(ORIGIN_MAP_ENTRIES, 0);

#[map]
static AL_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static AL_EXEMPT4: LpmTrie<[u8; 4], ExemptPorts> = LpmTrie::with_max_entries(EXEMPT_MAP_ENTRIES, 0);

#[map]
static AL_EXEMPT6: LpmTrie<[u8; 16], ExemptPorts> =
    LpmTrie::with_max_entries(EXEMPT_MAP_ENTRIES, 0);

#[map]
static AL_DNS: HashMap<ClientKey, u8> = HashMap::with_max_entries(DNS_MAP_ENTRIES, 0);

#[map]
static AL_COUNTERS: PerCpuHashMap<u64, Counters> =
    PerCpuHashMap::with_max_entries(COUNTER_MAP_ENTRIES, 0);

/// Which counter an event bumps.
#[derive(Clone, Copy)]
enum Kind {
    Redirected,
    Udp,
    Raw,
    Packet,
    Proto,
    Internal,
}

#[inline(always)]
fn bump(c: &mut Counters, kind: Kind) {
    let f = match kind {
        Kind::Redirected => &mut c.redirected,
        Kind::Udp => &mut c.denied_udp,
        Kind::Raw => &mut c.denied_raw,
        Kind::Packet => &mut c.denied_packet,
        Kind::Proto => &mut c.denied_proto,
        Kind::Internal => &mut c.denied_internal,
    };
    *f += 1;
}

/// Counts an event for the current task's cgroup. Best effort: a full
/// counter map loses the count, it never changes a verdict.
#[inline(always)]
fn count(cgroup_id: u64, kind: Kind) {
    if let Some(p) = AL_COUNTERS.get_ptr_mut(cgroup_id) {
        // SAFETY: a per-CPU value is only touched by this CPU while we run.
        bump(unsafe { &mut *p }, kind);
        return;
    }
    let mut c = Counters::default();
    bump(&mut c, kind);
    if AL_COUNTERS
        .insert(cgroup_id, c, BPF_NOEXIST as u64)
        .is_err()
    {
        // Another CPU created the entry first: use it.
        if let Some(p) = AL_COUNTERS.get_ptr_mut(cgroup_id) {
            // SAFETY: as above.
            bump(unsafe { &mut *p }, kind);
        }
    }
}

#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: helper without arguments, valid in these program types.
    unsafe { bpf_get_current_cgroup_id() }
}

/// An address in the shared `[u32; 4]` convention, with v4-mapped IPv6
/// folded to IPv4 so both families key the same way.
#[inline(always)]
fn fold(family: u16, addr: [u32; 4]) -> (u16, [u32; 4]) {
    if family == AF_INET6 && addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD {
        (AF_INET, [addr[3], 0, 0, 0])
    } else {
        (family, addr)
    }
}

#[inline(always)]
fn ports_allow(p: &ExemptPorts, port: u16) -> bool {
    let mut any = true;
    let mut i = 0;
    while i < p.ports.len() {
        let slot = p.ports[i];
        if slot != 0 {
            any = false;
            if slot == port {
                return true;
            }
        }
        i += 1;
    }
    any
}

#[inline(always)]
fn is_exempt(family: u16, addr: &[u32; 4], port: u16) -> bool {
    let hit = if family == AF_INET {
        AL_EXEMPT4.get(Key::new(32, addr[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = addr[i].to_ne_bytes();
            b[4 * i] = w[0];
            b[4 * i + 1] = w[1];
            b[4 * i + 2] = w[2];
            b[4 * i + 3] = w[3];
            i += 1;
        }
        AL_EXEMPT6.get(Key::new(128, b))
    };
    match hit {
        Some(p) => ports_allow(p, port),
        None => false,
    }
}

/// Is this (address, port) a configured DNS resolver?
#[inline(always)]
fn is_dns(family: u16, addr: [u32; 4], port: u16) -> bool {
    let key = ClientKey { family, port, addr };
    // SAFETY: the value is a plain u8 flag, read once.
    unsafe { AL_DNS.get(&key) }.is_some()
}

/// TCP connect (IPv4): redirect to the proxy; UDP connect: DNS only.
#[cgroup_sock_addr(connect4)]
pub fn al_connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_connect(&ctx, false))
}

/// TCP connect (IPv6): redirect to the proxy; UDP connect: DNS only.
#[cgroup_sock_addr(connect6)]
pub fn al_connect6(ctx: SockAddrContext) -> i32 {
    verdict(try_connect(&ctx, true))
}

/// Unconnected UDP send (IPv4): DNS resolvers only.
#[cgroup_sock_addr(sendmsg4)]
pub fn al_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(try_sendmsg(&ctx, false))
}

/// Unconnected UDP send (IPv6): DNS resolvers only.
#[cgroup_sock_addr(sendmsg6)]
pub fn al_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(try_sendmsg(&ctx, true))
}

/// Internal failure marker; the caller counts and logs it.
struct Internal;

#[inline(always)]
fn verdict(r: Result<i32, Internal>) -> i32 {
    let v = match r {
        Ok(v) => v,
        Err(Internal) => {
            count(current_cgroup(), Kind::Internal);
            ON_INTERNAL_FAILURE
        }
    };
    // The verifier needs R0 provably in [0, 1]; a value passed through the
    // stack loses its range, so narrow it explicitly (ALLOW = 1, DENY = 0).
    v & 1
}

#[inline(always)]
fn config() -> Result<&'static Config, Internal> {
    match AL_CONFIG.get(0) {
        Some(c) if c.flags & CONFIG_READY != 0 => Ok(c),
        _ => Err(Internal),
    }
}

/// The destination of a sock_addr call, folded.
#[inline(always)]
fn destination(ctx: &SockAddrContext, v6: bool) -> (u16, [u32; 4], u16) {
    // SAFETY: the kernel hands us a valid bpf_sock_addr for the program's
    // lifetime; these fields are readable in connect/sendmsg hooks.
    // Volatile u32 loads for the same reason as the stores in try_connect.
    let (port, family, addr) = unsafe {
        let sa = ctx.sock_addr;
        let port = u16::from_be(read_volatile(&raw const (*sa).user_port) as u16);
        let (family, addr) = if v6 {
            let ip = [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ];
            fold(AF_INET6, ip)
        } else {
            (AF_INET, [read_volatile(&raw const (*sa).user_ip4), 0, 0, 0])
        };
        (port, family, addr)
    };
    (family, addr, port)
}

fn try_connect(ctx: &SockAddrContext, v6: bool) -> Result<i32, Internal> {
    let cfg = config()?;
    let cgroup_id = current_cgroup();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The proxy's own upstream connects must reach the gateway, not itself.
    if (cfg.proxy_tgid != 0 && tgid == cfg.proxy_tgid)
        || (cfg.proxy_cgroup_id != 0 && cgroup_id == cfg.proxy_cgroup_id)
    {
        return Ok(ALLOW);
    }
    // SAFETY: see `destination`.
    let (sock_type, protocol) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
    let (family, addr, port) = destination(ctx, v6);

    if sock_type == SOCK_DGRAM {
        // Connected UDP: same rule as sendmsg.
        if protocol == IPPROTO_UDP && is_dns(family, addr, port) {
            return Ok(ALLOW);
        }
        count(cgroup_id, Kind::Udp);
        warn!(
            ctx,
            "airlock: udp connect denied, cgroup {} port {}", cgroup_id, port
        );
        return Ok(DENY);
    }
    if sock_type != SOCK_STREAM {
        count(cgroup_id, Kind::Proto);
        return Ok(DENY);
    }
    // DNS over TCP (truncated answers) goes to the same resolvers as UDP.
    if is_exempt(family, &addr, port) || is_dns(family, addr, port) {
        return Ok(ALLOW);
    }

    // SAFETY: bpf_get_socket_cookie is valid on a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Programs on a nested cgroup already redirected this connect: keep the
    // record they wrote (it has the real destination). Only the exact
    // redirect target qualifies, so a retried connect to anywhere else is
    // still rewritten.
    if port == cfg.redirect_port && is_redirect_target(cfg, family, &addr, v6) {
        // SAFETY: presence check only.
        if unsafe { AL_ORIG_COOKIE.get(&cookie) }.is_some() {
            return Ok(ALLOW);
        }
    }
    let origin = Origin {
        family,
        port,
        addr,
        pid: tgid,
        cgroup_id,
        cookie,
    };
    if AL_ORIG_COOKIE.insert(cookie, origin, 0).is_err() {
        warn!(
            ctx,
            "airlock: origin map insert failed, cgroup {}", cgroup_id
        );
        return Err(Internal);
    }

    // SAFETY: user_ip4/user_ip6/user_port are writable in connect hooks; the
    // port is a 4-byte store of the network-order value.
    // No IPv4 redirect address (an IPv6-only proxy): an IPv4 destination has
    // nowhere to go but around the proxy, so refuse it.
    if cfg.redirect_addr4 == 0 && (!v6 || cfg.flags & CONFIG_HAS_V6 == 0) {
        return Err(Internal);
    }
    let port_be = u32::from(cfg.redirect_port.to_be());
    if v6 {
        let ip = if cfg.flags & CONFIG_HAS_V6 != 0 {
            cfg.redirect_addr6
        } else {
            // An IPv6 socket reaches an IPv4 proxy through a v4-mapped
            // address (fails closed with ENETUNREACH on IPV6_V6ONLY).
            [0, 0, V4_MAPPED_WORD, cfg.redirect_addr4]
        };
        rewrite6(ctx, ip, port_be);
    } else {
        rewrite4(ctx, cfg.redirect_addr4, port_be);
    }
    count(cgroup_id, Kind::Redirected);
    Ok(ALLOW)
}

#[inline(always)]
fn is_redirect_target(cfg: &Config, family: u16, addr: &[u32; 4], v6: bool) -> bool {
    if family == AF_INET {
        addr[0] == cfg.redirect_addr4
    } else {
        v6 && cfg.flags & CONFIG_HAS_V6 != 0
            && addr[0] == cfg.redirect_addr6[0]
            && addr[1] == cfg.redirect_addr6[1]
            && addr[2] == cfg.redirect_addr6[2]
            && addr[3] == cfg.redirect_addr6[3]
    }
}

// The context only accepts whole-field u32 stores at constant offsets: the
// writes are volatile (no byte-wise array copy) and each family has its own
// non-inlined function (LLVM would otherwise merge the two paths into one
// store at a computed offset, which the verifier rejects).

#[inline(never)]
fn rewrite4(ctx: &SockAddrContext, ip: u32, port_be: u32) {
    // SAFETY: user_ip4/user_port are writable in connect4.
    unsafe {
        let sa = ctx.sock_addr;
        write_volatile(&raw mut (*sa).user_ip4, ip);
        write_volatile(&raw mut (*sa).user_port, port_be);
    }
}

#[inline(never)]
fn rewrite6(ctx: &SockAddrContext, ip: [u32; 4], port_be: u32) {
    // SAFETY: user_ip6/user_port are writable in connect6.
    unsafe {
        let sa = ctx.sock_addr;
        write_volatile(&raw mut (*sa).user_ip6[0], ip[0]);
        write_volatile(&raw mut (*sa).user_ip6[1], ip[1]);
        write_volatile(&raw mut (*sa).user_ip6[2], ip[2]);
        write_volatile(&raw mut (*sa).user_ip6[3], ip[3]);
        write_volatile(&raw mut (*sa).user_port, port_be);
    }
}

fn try_sendmsg(ctx: &SockAddrContext, v6: bool) -> Result<i32, Internal> {
    let cfg = config()?;
    let cgroup_id = current_cgroup();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if (cfg.proxy_tgid != 0 && tgid == cfg.proxy_tgid)
        || (cfg.proxy_cgroup_id != 0 && cgroup_id == cfg.proxy_cgroup_id)
    {
        return Ok(ALLOW);
    }
    let (family, addr, port) = destination(ctx, v6);
    if is_dns(family, addr, port) {
        return Ok(ALLOW);
    }
    count(cgroup_id, Kind::Udp);
    warn!(
        ctx,
        "airlock: udp send denied, cgroup {} port {}", cgroup_id, port
    );
    Ok(DENY)
}

/// Socket creation: no raw, packet or other non-TCP/UDP inet sockets.
#[cgroup_sock(sock_create)]
pub fn al_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: family/type/protocol are readable in sock_create.
    let (family, sock_type, protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    let kind = if family == AF_PACKET {
        Kind::Packet
    } else if family == u32::from(AF_INET) || family == u32::from(AF_INET6) {
        match (sock_type, protocol) {
            (SOCK_STREAM, IPPROTO_IP | IPPROTO_TCP) => return ALLOW,
            (SOCK_DGRAM, IPPROTO_IP | IPPROTO_UDP) => return ALLOW,
            (SOCK_RAW, _) => Kind::Raw,
            // ICMP ping sockets, MPTCP, SCTP, UDP-Lite: none of them is
            // redirected, so none may be opened.
            _ => Kind::Proto,
        }
    } else {
        // Unix, netlink...: local only.
        return ALLOW;
    };
    let cgroup_id = current_cgroup();
    count(cgroup_id, kind);
    warn!(
        &ctx,
        "airlock: socket denied, cgroup {} family {} type {} protocol {}",
        cgroup_id,
        family,
        sock_type,
        protocol
    );
    DENY
}

/// TCP events: re-key the origin by client address once established;
/// drop the cookie record of connects that never establish.
#[sock_ops]
pub fn al_sockops(ctx: SockOpsContext) -> u32 {
    try_sock_ops(&ctx);
    // sock_ops verdicts only matter for a few ops we do not use.
    1
}

/// The client's (local) address of an active socket, folded.
#[inline(always)]
fn client_key(ctx: &SockOpsContext) -> Option<ClientKey> {
    let family = ctx.family();
    let port = ctx.local_port() as u16;
    let (family, addr) = if family == u32::from(AF_INET) {
        (AF_INET, [ctx.local_ip4(), 0, 0, 0])
    } else if family == u32::from(AF_INET6) {
        fold(AF_INET6, ctx.local_ip6())
    } else {
        return None;
    };
    Some(ClientKey { family, port, addr })
}

fn try_sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // Only redirected sockets need the close callback (cleanup).
        // SAFETY: valid sock_ops context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: presence check only.
        if unsafe { AL_ORIG_COOKIE.get(&cookie) }.is_some() {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
    } else if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: valid sock_ops context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: copied out at once.
        let origin = match unsafe { AL_ORIG_COOKIE.get(&cookie) } {
            Some(o) => *o,
            None => return,
        };
        let Some(key) = client_key(ctx) else { return };
        if AL_ORIG_CLIENT.insert(key, origin, 0).is_err() {
            // The proxy will find no record and refuse: still closed.
            count(origin.cgroup_id, Kind::Internal);
            warn!(
                ctx,
                "airlock: client map insert failed, cgroup {}", origin.cgroup_id
            );
        }
        let _ = AL_ORIG_COOKIE.remove(cookie);
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE {
        // A connect that never established (refused: proxy down) leaves its
        // cookie record; drop it here. The client-keyed record is left to
        // the proxy (take) and to LRU eviction: a client that close()s right
        // after sending reaches TCP_CLOSE (early TIME_WAIT of an orphan)
        // before the proxy accepts, and must still be identified.
        // SAFETY: valid sock_ops context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let _ = AL_ORIG_COOKIE.remove(cookie);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Licence string the kernel checks before it offers GPL-only helpers; no
/// such helper is used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
