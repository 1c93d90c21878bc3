//! Privileged tests of the eBPF redirect: real programs, real cgroups.
//!
//! Each test makes its own cgroup (`airlock-test-<name>-<pid>` under the
//! detected root; never the root) and its own private bpffs, both removed in
//! `Drop` even when the test fails, and uses its own ports. Without root the
//! tests fail; they do not skip. A tokio listener stands in for the proxy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "tests"
)]

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use airlock::{
    agent::{
        self,
        testsupport::{fork_outside, raw, require_root, BpffsGuard, CgroupGuard},
        Agent, AppRule, DeniedKind, EnforcementConfig,
    },
    intercept::{Origin, Origins},
};
use tokio::{io::AsyncWriteExt as _, net::TcpListener, sync::mpsc, task::JoinHandle};

const APP: &str = "test-app";

/// A test's private world: cgroup, bpffs, stand-in proxy listener.
struct World {
    cg: CgroupGuard,
    fs: BpffsGuard,
    cfg: EnforcementConfig,
    apps: Vec<AppRule>,
}

impl World {
    fn new(name: &str) -> World {
        require_root();
        let cg = CgroupGuard::new(name).expect("create test cgroup");
        let fs = BpffsGuard::new(name).expect("mount private bpffs");
        let cfg = EnforcementConfig {
            bpffs: fs.path().to_owned(),
            cgroup_root: cg.root().display().to_string(),
            ..Default::default()
        };
        let apps = vec![AppRule {
            id: APP.into(),
            cgroups: vec![cg.rel().to_owned()],
        }];
        World { cg, fs, cfg, apps }
    }

    fn start(&self, port: u16) -> Agent {
        Agent::start(&self.cfg, &self.apps, port).expect("agent start")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Detach before the guards go: leaves nothing even if unmount lags.
        let _ = agent::detach(self.fs.path());
    }
}

/// The stand-in proxy: accepts, takes the origin of each peer, answers a
/// tiny HTTP response, reports the origin.
struct StandIn {
    seen: mpsc::UnboundedReceiver<Option<Origin>>,
    task: JoinHandle<()>,
}

async fn bind_local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn serve(listener: TcpListener, origins: Origins) -> StandIn {
    let (tx, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, peer)) = listener.accept().await else {
                return;
            };
            let o = origins.take(peer).expect("origin lookup");
            let _ = tx.send(o);
            tokio::spawn(async move {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nstand-in")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    StandIn { seen, task }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A trap on the original destination: counts connections, answers "trap".
struct Trap {
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

async fn trap(addr: &str) -> Trap {
    let l = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind trap {addr}: {e}"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ntrap")
                .await;
            let _ = s.shutdown().await;
        }
    });
    Trap { hits, task }
}

impl Trap {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs curl (inside `cg` if given); returns (pid, output).
async fn curl(cg: Option<&CgroupGuard>, args: &[&str]) -> (u32, Output) {
    let mut cmd = match cg {
        Some(cg) => cg.command("curl"),
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "-m", "5", "--noproxy", "*"]).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let child = cmd.spawn().expect("spawn curl (is curl installed?)");
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    })
    .await
    .unwrap()
}

fn body(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn next_origin(s: &mut StandIn) -> Origin {
    tokio::time::timeout(Duration::from_secs(5), s.seen.recv())
        .await
        .expect("stand-in got no connection")
        .expect("channel open")
        .expect("redirected connection has an origin record")
}

/// Attach types in the kernel's view (`bpftool cgroup show`), with counts.
fn kernel_attachments(cg: &CgroupGuard) -> BTreeMap<String, usize> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cg.path())
        .output()
        .expect("run bpftool (is it installed?)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::json!([]));
    let mut m = BTreeMap::new();
    for e in v.as_array().cloned().unwrap_or_default() {
        let t = e["attach_type"].as_str().unwrap_or("?").to_owned();
        *m.entry(t).or_default() += 1;
    }
    m
}

fn expect_one_of_each(cg: &CgroupGuard) {
    let m = kernel_attachments(cg);
    for t in [
        "cgroup_inet_sock_create",
        "cgroup_sock_ops",
        "cgroup_inet4_connect",
        "cgroup_inet6_connect",
        "cgroup_udp4_sendmsg",
        "cgroup_udp6_sendmsg",
    ] {
        assert_eq!(m.get(t).copied(), Some(1), "attach type {t}: {m:?}");
    }
    assert_eq!(m.values().sum::<usize>(), 6, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_in_cgroup_is_redirected_and_origin_recovered() {
    let w = World::new("redirect_v4");
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    assert!(agent.is_ready());
    let mut proxy = serve(listener, agent.origins());
    let trap = trap("127.0.0.77:80").await;

    let (pid, out) = curl(Some(&w.cg), &["http://127.0.0.77:80/v1/chat/completions"]).await;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body(&out), "stand-in");
    let o = next_origin(&mut proxy).await;
    assert_eq!(o.orig_dst, "127.0.0.77:80".parse::<SocketAddr>().unwrap());
    assert_eq!(o.cgroup_id, w.cg.id());
    assert_eq!(o.pid, pid);

    // A destination named by host.
    let (_, out) = curl(
        Some(&w.cg),
        &[
            "--resolve",
            "api.openai.com:80:127.0.0.77",
            "http://api.openai.com/v1/models",
        ],
    )
    .await;
    assert_eq!(body(&out), "stand-in");
    assert_eq!(
        next_origin(&mut proxy).await.orig_dst,
        "127.0.0.77:80".parse::<SocketAddr>().unwrap()
    );

    let id = agent.identity().resolve(o.cgroup_id).expect("identity");
    assert_eq!(id.app.0, APP);
    assert_eq!(id.cgroup_path, w.cg.rel());
    assert_eq!(trap.hits(), 0, "the original destination was reached");
    let c = agent.counters();
    assert!(
        c.get(&id.app).map(|c| c.redirected).unwrap_or(0) >= 2,
        "{c:?}"
    );
    assert_eq!(agent.origins().pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_connect_is_redirected() {
    let w = World::new("redirect_v6");
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    let mut proxy = serve(listener, agent.origins());
    let trap = trap("[::1]:18081").await;

    let (pid, out) = curl(Some(&w.cg), &["http://[::1]:18081/v1/chat/completions"]).await;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body(&out), "stand-in");
    let o = next_origin(&mut proxy).await;
    assert_eq!(o.orig_dst, "[::1]:18081".parse::<SocketAddr>().unwrap());
    assert_eq!((o.cgroup_id, o.pid), (w.cg.id(), pid));
    assert_eq!(trap.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_outside_the_cgroup_is_untouched() {
    let w = World::new("outside");
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    let mut proxy = serve(listener, agent.origins());
    let trap = trap("127.0.0.78:18082").await;

    let (_, out) = curl(None, &["http://127.0.0.78:18082/"]).await;
    assert_eq!(body(&out), "trap");
    assert_eq!(trap.hits(), 1);
    assert!(
        proxy.seen.try_recv().is_err(),
        "the stand-in proxy saw an outside process"
    );
    // UDP and raw sockets outside are not refused either.
    assert_eq!(
        fork_outside(|| raw::udp_sendto(raw::localhost(9))).unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_except_dns_and_raw_sockets_are_refused() {
    let mut w = World::new("udp_raw");
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_port = dns.local_addr().unwrap().port();
    w.cfg.dns_resolvers = vec![format!("127.0.0.1:{dns_port}")];
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    let _proxy = serve(listener, agent.origins());

    let eperm = libc::EPERM;
    let not_dns = raw::localhost(dns_port.wrapping_add(1).max(1024));
    assert_eq!(
        w.cg.fork(|| raw::udp_sendto(not_dns)).unwrap(),
        eperm,
        "udp sendto non-DNS"
    );
    assert_eq!(
        w.cg.fork(|| raw::udp_connect(not_dns)).unwrap(),
        eperm,
        "udp connect non-DNS"
    );
    let dns_addr = raw::localhost(dns_port);
    assert_eq!(
        w.cg.fork(|| raw::udp_sendto(dns_addr)).unwrap(),
        0,
        "udp to the DNS resolver"
    );
    dns.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        dns.recv(&mut buf).unwrap(),
        1,
        "the resolver got the datagram"
    );
    assert_eq!(
        w.cg.fork(|| raw::open_close(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP))
            .unwrap(),
        eperm,
        "raw socket"
    );
    assert_eq!(
        w.cg.fork(|| raw::open_close(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6))
            .unwrap(),
        eperm,
        "raw v6 socket"
    );
    // AF_PACKET is out of reach of cgroup/sock_create (the kernel runs it for
    // inet sockets only); packet sockets need CAP_NET_RAW, which app pods
    // must not have. Not asserted here.
    // ICMP ping sockets: refused (by ping_group_range before our hook, or by
    // sock_create).
    assert_ne!(
        w.cg.fork(|| raw::open_close(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP))
            .unwrap(),
        0
    );
    assert_eq!(
        w.cg.fork(|| raw::open_close(libc::AF_INET, libc::SOCK_STREAM, 0))
            .unwrap(),
        0
    );

    let c = agent.counters();
    let app = c
        .iter()
        .find(|(a, _)| a.0 == APP)
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    assert_eq!(app.denied.get(&DeniedKind::Udp).copied(), Some(2), "{c:?}");
    assert_eq!(app.denied.get(&DeniedKind::Raw).copied(), Some(2), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_down_means_connection_refused() {
    let w = World::new("proxy_down");
    // A port nobody listens on: the proxy is down.
    let port = bind_local().await.local_addr().unwrap().port();
    let agent = w.start(port);
    let trap = trap("127.0.0.79:18083").await;

    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.79:18083/"]).await;
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl should fail to connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") || err.contains("Couldn't connect"),
        "{err}"
    );
    assert_eq!(trap.hits(), 0, "fell back to the original destination");

    // Proxy back on the same port: traffic flows again.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut proxy = serve(listener, agent.origins());
    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.79:18083/"]).await;
    assert_eq!(body(&out), "stand-in");
    assert_eq!(next_origin(&mut proxy).await.orig_dst.port(), 18083);
    assert_eq!(trap.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_pins_without_second_attach_and_detach_removes_all() {
    let w = World::new("restart");
    let listener = bind_local().await;
    let port = listener.local_addr().unwrap().port();
    let trap = trap("127.0.0.80:18084").await;
    {
        let agent = w.start(port);
        expect_one_of_each(&w.cg);
        drop(agent);
    }
    // Agent gone, proxy not accepting yet: still enforced (refused or
    // queued, never the original destination).
    expect_one_of_each(&w.cg);

    let agent = w.start(port);
    expect_one_of_each(&w.cg);
    assert!(agent.sync().attached.is_empty(), "a rescan attached again");
    expect_one_of_each(&w.cg);
    let mut proxy = serve(listener, agent.origins());
    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.80:18084/"]).await;
    assert_eq!(body(&out), "stand-in");
    assert_eq!(next_origin(&mut proxy).await.cgroup_id, w.cg.id());
    assert_eq!(trap.hits(), 0);

    agent::detach(w.fs.path()).unwrap();
    assert!(
        kernel_attachments(&w.cg).is_empty(),
        "links left after detach"
    );
    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.80:18084/"]).await;
    assert_eq!(body(&out), "trap", "after detach the app connects directly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_leaves_no_map_entries() {
    const N: usize = 10_000;
    let w = World::new("storm");
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    let mut proxy = serve(listener, agent.origins());
    let target = SocketAddrV4::new([127, 0, 0, 81].into(), 18085);
    let cg = &w.cg;
    let code = tokio::task::block_in_place(|| {
        cg.fork(|| {
            for _ in 0..N {
                if raw::tcp_connect_close(target) != 0 {
                    return 1;
                }
            }
            0
        })
    })
    .unwrap();
    assert_eq!(code, 0, "a connect failed");
    let mut got = 0;
    while got < N {
        match tokio::time::timeout(Duration::from_secs(10), proxy.seen.recv()).await {
            Ok(Some(Some(_))) => got += 1,
            Ok(Some(None)) => panic!("a connection without origin record"),
            _ => panic!("only {got} of {N} connections reached the stand-in"),
        }
    }
    // The close hook runs when the last sockets leave; give it a moment.
    let cookie_map =
        w.fs.path()
            .join("maps")
            .join(airlock_ebpf_common::maps::ORIGIN_BY_COOKIE);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let by_client = agent.origins().pending();
        let by_cookie = count_keys(&cookie_map);
        if by_client == 0 && by_cookie == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {by_client} client, {by_cookie} cookie entries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = agent.counters();
    assert_eq!(
        c.values().map(|c| c.redirected).sum::<u64>(),
        N as u64,
        "{c:?}"
    );
}

fn count_keys(pin: &std::path::Path) -> usize {
    let data = aya::maps::MapData::from_pin(pin).unwrap();
    let map: aya::maps::HashMap<_, u64, airlock_ebpf_common::Origin> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
    map.keys().filter(Result::is_ok).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_app_cgroup_is_attached_within_a_second_and_removed_one_forgotten() {
    let mut w = World::new("watch");
    w.apps = vec![AppRule {
        id: APP.into(),
        cgroups: vec![format!("{}/airlock-test-pod-*", w.cg.rel())],
    }];
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    let _bg = agent.spawn();
    let mut proxy = serve(listener, agent.origins());
    assert!(agent.attached().is_empty());

    let pod = CgroupGuard::new_under(w.cg.path(), "pod-a").unwrap();
    let rel = format!("{}/{}", w.cg.rel(), pod.rel());
    let t0 = Instant::now();
    while !agent.attached().iter().any(|a| a.path == rel) {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "not attached within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, out) = curl(Some(&pod), &["http://127.0.0.82:18086/"]).await;
    assert_eq!(body(&out), "stand-in");
    let o = next_origin(&mut proxy).await;
    assert_eq!(o.cgroup_id, pod.id());
    assert_eq!(agent.identity().resolve(o.cgroup_id).unwrap().app.0, APP);

    let pod_id = pod.id();
    drop(pod);
    let t0 = Instant::now();
    while agent.attached().iter().any(|a| a.cgroup_id == pod_id) {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "not forgotten within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!w.fs.path().join("links").join(pod_id.to_string()).exists());
    // The counts of the removed cgroup are kept.
    assert!(agent.counters().values().map(|c| c.redirected).sum::<u64>() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_in_its_own_netns_is_redirected_to_the_host_side() {
    let mut w = World::new("pod");
    let pod = agent::testsupport::NetnsPod::new("pod", (std::process::id() % 250) as u8).unwrap();
    // Kubernetes shape: the proxy listens on the node side of the veth.
    w.cfg.redirect_address = pod.host_ip.into();
    let listener = TcpListener::bind((pod.host_ip, 0)).await.unwrap();
    let agent = w.start(listener.local_addr().unwrap().port());
    let mut proxy = serve(listener, agent.origins());

    let mut cmd = pod.command(&w.cg, "curl");
    cmd.args([
        "-sS",
        "-m",
        "5",
        "--noproxy",
        "*",
        "http://10.99.0.7:80/v1/chat/completions",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl in pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body(&out), "stand-in");
    let o = next_origin(&mut proxy).await;
    assert_eq!(o.orig_dst, "10.99.0.7:80".parse::<SocketAddr>().unwrap());
    assert_eq!(o.cgroup_id, w.cg.id());
    assert_eq!(agent.identity().resolve(o.cgroup_id).unwrap().app.0, APP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_destinations_and_tcp_dns_pass_direct() {
    let mut w = World::new("exempt");
    w.cfg.exempt = vec!["127.0.0.83/32:18087".into()];
    w.cfg.dns_resolvers = vec!["127.0.0.84:18088".into()];
    let listener = bind_local().await;
    let agent = w.start(listener.local_addr().unwrap().port());
    let mut proxy = serve(listener, agent.origins());
    let exempt = trap("127.0.0.83:18087").await;
    let dns_tcp = trap("127.0.0.84:18088").await;
    let other_port = trap("127.0.0.83:18089").await;

    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.83:18087/"]).await;
    assert_eq!(body(&out), "trap");
    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.84:18088/"]).await;
    assert_eq!(body(&out), "trap");
    // Same address, another port: not exempt.
    let (_, out) = curl(Some(&w.cg), &["http://127.0.0.83:18089/"]).await;
    assert_eq!(body(&out), "stand-in");
    assert_eq!(next_origin(&mut proxy).await.orig_dst.port(), 18089);
    assert_eq!(
        (exempt.hits(), dns_tcp.hits(), other_port.hits()),
        (1, 1, 0)
    );
}
