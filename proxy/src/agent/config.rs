//! The `enforcement` and `apps` config keys, and their validation.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// Whether the eBPF redirect is used.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Load, attach and enforce (the default: transparent capture).
    #[default]
    Ebpf,
    /// No eBPF; apps use the proxy explicitly.
    Off,
}

/// `enforcement:` — how app egress is pinned to the proxy.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnforcementConfig {
    /// `ebpf` or `off`.
    #[serde(default)]
    pub mode: Mode,
    /// `auto` (detect `/sys/fs/cgroup` on pure v2, `/sys/fs/cgroup/unified`
    /// on hybrid hosts) or the path of the cgroup v2 mount.
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: String,
    /// Directory on a bpffs where programs, links and maps are pinned. A
    /// bpffs is mounted there if none is.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// Where redirected connects go (with the proxy's app port).
    #[serde(default = "default_redirect_address")]
    pub redirect_address: IpAddr,
    /// IPv6 redirect address. Unset: IPv6 connects go to the v4-mapped
    /// `redirect_address` (which must then be IPv4).
    #[serde(default)]
    pub redirect_address_v6: Option<Ipv6Addr>,
    /// `ip:port` of the DNS resolvers UDP may reach; all other UDP is refused.
    #[serde(default = "default_dns")]
    pub dns_resolvers: Vec<String>,
    /// `CIDR` or `CIDR:port` (IPv6 as `[CIDR]:port`) destinations allowed
    /// direct, without the proxy.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Also exempt every process in the agent's own cgroup (the proxy's
    /// process is always exempt by tgid).
    #[serde(default = "default_true")]
    pub exempt_own_cgroup: bool,
    /// How often the cgroup tree is rescanned for new and removed app
    /// cgroups, in milliseconds.
    #[serde(default = "default_rescan_ms")]
    pub rescan_interval_ms: u64,
}

fn default_cgroup_root() -> String {
    "auto".to_owned()
}
fn default_bpffs() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/airlock")
}
fn default_redirect_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_dns() -> Vec<String> {
    vec!["127.0.0.53:53".to_owned()]
}
fn default_true() -> bool {
    true
}
fn default_rescan_ms() -> u64 {
    500
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        EnforcementConfig {
            mode: Mode::default(),
            cgroup_root: default_cgroup_root(),
            bpffs: default_bpffs(),
            redirect_address: default_redirect_address(),
            redirect_address_v6: None,
            dns_resolvers: default_dns(),
            exempt: Vec::new(),
            exempt_own_cgroup: true,
            rescan_interval_ms: default_rescan_ms(),
        }
    }
}

/// One `apps:` entry: an app id and the cgroup v2 paths (globs, relative to
/// the cgroup root) its processes run in.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct AppRule {
    /// The app's id, as it appears in decisions and metrics.
    pub id: String,
    /// Globs: `*` and `?` within one path segment, `**` for any number of
    /// segments. No leading `/`.
    pub cgroups: Vec<String>,
}

/// A parsed `exempt` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exempt {
    /// Network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
    /// `None` = every port.
    pub port: Option<u16>,
}

impl Exempt {
    /// Parses `10.0.0.0/8`, `10.96.0.10:53`, `10.0.0.0/8:443`, `fd00::/8`,
    /// `[fd00::/8]:443`, `[::1]:53`.
    pub fn parse(s: &str) -> Result<Exempt, String> {
        let s = s.trim();
        let (cidr, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or("missing `]`")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
            };
            (inner, port)
        } else if s.matches(':').count() == 1 {
            let (c, p) = s.split_once(':').ok_or("bad port")?;
            (c, Some(p))
        } else {
            (s, None)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("bad port {p:?}")),
                Ok(p) => Some(p),
            },
        };
        let (ip, len) = match cidr.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (cidr, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("bad address {ip:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(format!("bad prefix length {l:?} (0..={max})")),
            },
        };
        Ok(Exempt {
            addr: mask(addr, prefix_len),
            prefix_len,
            port,
        })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl EnforcementConfig {
    /// Parsed `dns_resolvers`, skipping invalid entries (see [`Self::validate`]).
    pub fn dns(&self) -> Vec<SocketAddr> {
        self.dns_resolvers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Parsed `exempt`, skipping invalid entries (see [`Self::validate`]).
    pub fn exemptions(&self) -> Vec<Exempt> {
        self.exempt
            .iter()
            .filter_map(|s| Exempt::parse(s).ok())
            .collect()
    }

    /// Every problem in `enforcement`, each naming the key and the value.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.cgroup_root != "auto" && !self.cgroup_root.starts_with('/') {
            errs.push(format!(
                "enforcement.cgroup_root: {:?} is neither \"auto\" nor an absolute path",
                self.cgroup_root
            ));
        }
        if !self.bpffs.is_absolute() {
            errs.push(format!(
                "enforcement.bpffs: {:?} is not an absolute path",
                self.bpffs
            ));
        }
        if self.redirect_address.is_unspecified() {
            errs.push(format!(
                "enforcement.redirect_address: {} is unspecified; give the address the proxy listens on",
                self.redirect_address
            ));
        }
        if self.redirect_address.is_ipv6() && self.redirect_address_v6.is_some() {
            errs.push(
                "enforcement.redirect_address_v6: set, but redirect_address is already IPv6 (give an IPv4 redirect_address)"
                    .to_owned(),
            );
        }
        for (i, r) in self.dns_resolvers.iter().enumerate() {
            if r.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "enforcement.dns_resolvers[{i}]: {r:?} is not ip:port (IPv6 as [ip]:port)"
                ));
            }
        }
        if self.dns_resolvers.len() > airlock_ebpf_common::DNS_MAP_ENTRIES as usize {
            errs.push(format!(
                "enforcement.dns_resolvers: {} entries, at most {}",
                self.dns_resolvers.len(),
                airlock_ebpf_common::DNS_MAP_ENTRIES
            ));
        }
        for (i, e) in self.exempt.iter().enumerate() {
            if let Err(why) = Exempt::parse(e) {
                errs.push(format!("enforcement.exempt[{i}]: {e:?}: {why}"));
            }
        }
        // Ports per prefix are bounded by the kernel-side value.
        let ex = self.exemptions();
        for e in &ex {
            let n = ex
                .iter()
                .filter(|o| o.addr == e.addr && o.prefix_len == e.prefix_len && o.port.is_some())
                .count();
            if n > airlock_ebpf_common::EXEMPT_PORTS {
                errs.push(format!(
                    "enforcement.exempt: {}/{} has {n} ports, at most {}",
                    e.addr,
                    e.prefix_len,
                    airlock_ebpf_common::EXEMPT_PORTS
                ));
                break;
            }
        }
        if self.rescan_interval_ms == 0 || self.rescan_interval_ms > 1000 {
            errs.push(format!(
                "enforcement.rescan_interval_ms: {} is outside 1..=1000 (new app cgroups must be attached within a second)",
                self.rescan_interval_ms
            ));
        }
        errs
    }
}

/// Every problem in `apps`, each naming the key and the value.
pub fn validate_apps(apps: &[AppRule]) -> Vec<String> {
    let mut errs = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        if app.id.is_empty()
            || !app
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errs.push(format!(
                "apps[{i}].id: {:?} must be non-empty [A-Za-z0-9._-]",
                app.id
            ));
        }
        if apps[..i].iter().any(|a| a.id == app.id) {
            errs.push(format!("apps[{i}].id: {:?} is used twice", app.id));
        }
        if app.cgroups.is_empty() {
            errs.push(format!(
                "apps[{i}].cgroups: empty; app {:?} would never be enforced",
                app.id
            ));
        }
        for (j, g) in app.cgroups.iter().enumerate() {
            if let Err(why) = super::cgroups::Glob::new(g) {
                errs.push(format!("apps[{i}].cgroups[{j}]: {g:?}: {why}"));
            }
        }
    }
    errs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_yaml() {
        let y = "mode: ebpf\ncgroup_root: auto\nbpffs: /sys/fs/bpf/airlock\nredirect_address: 127.0.0.1\ndns_resolvers: [\"127.0.0.53:53\"]\nexempt: [\"10.96.0.10/32:53\", \"[fd00::/8]:443\"]\n";
        let c: EnforcementConfig = serde_yaml::from_str(y).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.exemptions().len(), 2);
        let apps: Vec<AppRule> =
            serde_yaml::from_str("- id: demo-app\n  cgroups: [\"airlock-demo/*\"]\n").unwrap();
        assert!(validate_apps(&apps).is_empty());
    }

    #[test]
    fn collects_every_error() {
        let c = EnforcementConfig {
            cgroup_root: "rel".into(),
            dns_resolvers: vec!["nope".into()],
            exempt: vec!["10.0.0.0/33".into(), "1.2.3.4:0".into()],
            ..Default::default()
        };
        let e = c.validate();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[1].contains("dns_resolvers[0]") && e[1].contains("nope"));
        let unknown: Result<EnforcementConfig, _> = serde_yaml::from_str("mdoe: off\n");
        assert!(unknown.is_err());
    }

    #[test]
    fn exempt_forms() {
        let e = Exempt::parse("10.1.2.3/8").unwrap();
        assert_eq!(e.addr, "10.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!((e.prefix_len, e.port), (8, None));
        let e = Exempt::parse("10.96.0.10:53").unwrap();
        assert_eq!((e.prefix_len, e.port), (32, Some(53)));
        let e = Exempt::parse("[::1]:53").unwrap();
        assert_eq!((e.prefix_len, e.port), (128, Some(53)));
        assert!(Exempt::parse("fd00::/8").is_ok());
        assert!(Exempt::parse("[fd00::/8").is_err());
    }
}
