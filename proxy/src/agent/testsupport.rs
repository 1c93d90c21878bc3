//! Guards for privileged tests: a child cgroup and a private bpffs, both
//! named after the test and removed in `Drop`, even when the test panics.
//!
//! Not part of the API; shared with the end-to-end tests.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::cgroups;

/// Fails (panics) unless running as root: privileged tests must not skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged eBPF test: run as root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    );
}

/// A child cgroup `airlock-test-<name>-<pid>` under the detected v2 root.
#[derive(Debug)]
pub struct CgroupGuard {
    root: PathBuf,
    rel: String,
    path: PathBuf,
    id: u64,
    procs: CString,
}

impl CgroupGuard {
    /// Creates the cgroup. Never the root: tests must not touch every
    /// process of the machine.
    pub fn new(name: &str) -> io::Result<CgroupGuard> {
        let root = cgroups::detect_root("auto").map_err(io::Error::other)?;
        Self::new_under(&root, name)
    }

    /// Creates the cgroup under `root`.
    pub fn new_under(root: &Path, name: &str) -> io::Result<CgroupGuard> {
        let rel = format!("airlock-test-{name}-{}", std::process::id());
        let path = root.join(&rel);
        if path.exists() {
            // Left over by a killed run of this same pid: start clean.
            kill_and_remove(&path);
        }
        std::fs::create_dir(&path)?;
        let id = cgroups::cgroup_id(&path).map_err(io::Error::other)?;
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        Ok(CgroupGuard {
            root: root.to_owned(),
            rel,
            path,
            id,
            procs,
        })
    }

    /// Absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Path relative to the cgroup root (what an `apps` glob matches).
    pub fn rel(&self) -> &str {
        &self.rel
    }
    /// The cgroup root it lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// cgroup v2 id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A command whose process joins this cgroup before `exec`.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.procs.clone();
        // SAFETY: the hook only calls async-signal-safe functions
        // (open/write/close) on memory prepared before fork.
        unsafe {
            cmd.pre_exec(move || join_cgroup(&procs));
        }
        cmd
    }

    /// Forks a child that joins this cgroup and runs `f`, whose return value
    /// is the exit status. `f` runs after `fork` in a multi-threaded process:
    /// it must only make async-signal-safe calls (raw `libc` socket calls, no
    /// allocation, no locks).
    pub fn fork(&self, f: impl FnOnce() -> i32) -> io::Result<i32> {
        fork_run(Some(&self.procs), f)
    }
}

/// Forks a child in the caller's cgroup (see [`CgroupGuard::fork`]).
pub fn fork_outside(f: impl FnOnce() -> i32) -> io::Result<i32> {
    fork_run(None, f)
}

fn fork_run(procs: Option<&CString>, f: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: the child only runs async-signal-safe code (documented
    // contract of `f`) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = match procs.map(join_cgroup) {
            Some(Err(_)) => 125,
            _ => f(),
        };
        // SAFETY: terminate the child without running the parent's atexit
        // handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Ok(128 + libc::WTERMSIG(status))
    }
}

fn join_cgroup(procs: &CString) -> io::Result<()> {
    // SAFETY: valid NUL-terminated path; "0" = the calling process.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Kills whatever still runs in the cgroup and removes it (children first).
fn kill_and_remove(path: &Path) {
    if let Ok(rd) = std::fs::read_dir(path) {
        for ent in rd.flatten() {
            if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_and_remove(&ent.path());
            }
        }
    }
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "airlock testsupport: could not remove cgroup {}",
                path.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        kill_and_remove(&self.path);
    }
}

/// A private bpffs mounted at `<tmp>/airlock-bpffs-<name>-<pid>`; unmounting
/// it drops every pin, which detaches every link pinned there.
#[derive(Debug)]
pub struct BpffsGuard {
    path: PathBuf,
}

impl BpffsGuard {
    /// Mounts it.
    pub fn new(name: &str) -> io::Result<BpffsGuard> {
        let path =
            std::env::temp_dir().join(format!("airlock-bpffs-{name}-{}", std::process::id()));
        if path.exists() {
            unmount(&path);
            let _ = std::fs::remove_dir(&path);
        }
        std::fs::create_dir_all(&path)?;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_dir(&path);
            return Err(e);
        }
        Ok(BpffsGuard { path })
    }

    /// The mount point (use as `enforcement.bpffs`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid NUL-terminated path; failure (not mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        unmount(&self.path);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Raw-libc helpers for forked children (async-signal-safe, no allocation).
pub mod raw {
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// `socket(2)`; returns the fd or `-errno`.
    pub fn socket(domain: i32, ty: i32, proto: i32) -> i32 {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::socket(domain, ty, proto) };
        if fd < 0 {
            -errno()
        } else {
            fd
        }
    }

    /// The calling thread's errno.
    pub fn errno() -> i32 {
        // SAFETY: errno location is always valid for the calling thread.
        unsafe { *libc::__errno_location() }
    }

    /// A `sockaddr_in` for `a`.
    pub fn sockaddr4(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }

    /// TCP connect to `a`, then close. 0 or `errno`.
    pub fn tcp_connect_close(a: SocketAddrV4) -> i32 {
        let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return -fd;
        }
        let sa = sockaddr4(a);
        // SAFETY: valid sockaddr_in of the right length.
        let rc = unsafe {
            libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let e = if rc < 0 { errno() } else { 0 };
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        e
    }

    /// TCP connect to `a`, then an abortive close (RST, `SO_LINGER` 0): no
    /// TIME_WAIT, so long loops do not exhaust ephemeral ports. 0 or `errno`.
    pub fn tcp_connect_reset(a: SocketAddrV4) -> i32 {
        let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return -fd;
        }
        let sa = sockaddr4(a);
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd, option struct and sockaddr of the right lengths.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let e = if rc < 0 { errno() } else { 0 };
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        e
    }

    /// Unconnected UDP `sendto` of one byte. 0 or `errno`.
    pub fn udp_sendto(a: SocketAddrV4) -> i32 {
        let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return -fd;
        }
        let sa = sockaddr4(a);
        // SAFETY: valid buffer and sockaddr.
        let rc = unsafe {
            libc::sendto(
                fd,
                b"x".as_ptr().cast(),
                1,
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let e = if rc < 0 { errno() } else { 0 };
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        e
    }

    /// Connected UDP: `connect` to `a`. 0 or `errno`.
    pub fn udp_connect(a: SocketAddrV4) -> i32 {
        let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return -fd;
        }
        let sa = sockaddr4(a);
        // SAFETY: valid sockaddr.
        let rc = unsafe {
            libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let e = if rc < 0 { errno() } else { 0 };
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        e
    }

    /// Opens and closes a socket. 0 or `errno`.
    pub fn open_close(domain: i32, ty: i32, proto: i32) -> i32 {
        let fd = socket(domain, ty, proto);
        if fd < 0 {
            return -fd;
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        0
    }

    /// `127.0.0.1:port`.
    pub fn localhost(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }
}

/// A "pod": a network namespace joined to the host by a veth pair, with
/// `host_ip` on the host side (where the proxy listens in Kubernetes) and
/// `pod_ip` inside, default route via the host. Deleted in `Drop` (which
/// also removes the veth pair). Uses `ip` from iproute2.
#[derive(Debug)]
pub struct NetnsPod {
    name: String,
    /// Host side of the veth pair.
    pub host_ip: std::net::Ipv4Addr,
    /// Pod side.
    pub pod_ip: std::net::Ipv4Addr,
}

fn ip_cmd(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl NetnsPod {
    /// Creates namespace `alt-<name>-<pid>` and the veth pair; `subnet` (0..=255)
    /// picks `10.213.<subnet>.0/30` so parallel tests do not collide.
    pub fn new(name: &str, subnet: u8) -> io::Result<NetnsPod> {
        let pid = std::process::id();
        let ns = format!("alt-{name}-{pid}");
        // Interface names are limited to 15 bytes.
        let host_if = format!("alh{:x}{subnet:02x}", pid & 0xffff);
        let pod_if = format!("alp{:x}{subnet:02x}", pid & 0xffff);
        let host_ip = std::net::Ipv4Addr::new(10, 213, subnet, 1);
        let pod_ip = std::net::Ipv4Addr::new(10, 213, subnet, 2);
        let _ = ip_cmd(&["netns", "del", &ns]);
        let _ = ip_cmd(&["link", "del", &host_if]);
        ip_cmd(&["netns", "add", &ns])?;
        let pod = NetnsPod {
            name: ns.clone(),
            host_ip,
            pod_ip,
        };
        let h = format!("{host_ip}/30");
        let p = format!("{pod_ip}/30");
        let hs = host_ip.to_string();
        ip_cmd(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &ns,
        ])?;
        ip_cmd(&["addr", "add", &h, "dev", &host_if])?;
        ip_cmd(&["link", "set", &host_if, "up"])?;
        ip_cmd(&["-n", &ns, "addr", "add", &p, "dev", &pod_if])?;
        ip_cmd(&["-n", &ns, "link", "set", &pod_if, "up"])?;
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip_cmd(&["-n", &ns, "route", "add", "default", "via", &hs])?;
        Ok(pod)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <program>`, joining `cg` before exec.
    pub fn command(&self, cg: &CgroupGuard, program: &str) -> Command {
        let mut cmd = cg.command("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetnsPod {
    fn drop(&mut self) {
        let _ = ip_cmd(&["netns", "del", &self.name]);
    }
}
