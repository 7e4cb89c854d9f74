//! `crossmesh iptables`: the traffic interception a sidecar's init container sets
//! up in the pod's network namespace before any other container starts, as
//! Istio's `istio-iptables` (`tools/istio-iptables/pkg/capture/run.go`) does in
//! `REDIRECT` mode. Inbound TCP goes to Envoy's virtual inbound listener (15006),
//! outbound TCP to its virtual outbound listener (15001); Envoy's own traffic
//! (its UID/GID, 1337) is left alone so it does not loop.
//!
//! Pure up to [`apply`]: a [`CaptureConfig`] becomes the input of
//! `iptables-restore --noflush` (one per address family), which `apply` feeds to
//! the real command and `--dry-run` prints. The flag parsers here also validate
//! the pod annotations that set the same values (`agent::inject`).
//!
//! Rules in the `nat` table, in Istio's order:
//! - `ISTIO_REDIRECT` and `ISTIO_IN_REDIRECT`: `REDIRECT --to-ports` 15001 / 15006.
//! - `PREROUTING -p tcp -j ISTIO_INBOUND` when any inbound port is captured; in
//!   `ISTIO_INBOUND`, either each excluded port `RETURN`s and everything else
//!   jumps to `ISTIO_IN_REDIRECT` (`*`), or only the listed ports jump.
//! - `OUTPUT -p tcp -j ISTIO_OUTPUT`, then in `ISTIO_OUTPUT`: excluded outbound
//!   ports return; the inbound passthrough's source 127.0.0.6 on `lo` returns;
//!   for the proxy's UID and then its GID: Envoy calling the pod's own (non-
//!   loopback) address over `lo` is sent to inbound (app -> Envoy -> Envoy ->
//!   app through a Service VIP), other `lo` traffic not from Envoy returns
//!   (unless an included range is a loopback range), and Envoy's remaining
//!   traffic returns; `-d 127.0.0.1/32` returns; excluded CIDRs return; included
//!   outbound ports redirect; then included CIDRs redirect (`*`: everything)
//!   followed by a final `RETURN` when the list is explicit.
//!
//! Not reproduced: Istio's HBONE tunnel port (15008) rule, DNS capture (crossmesh
//! has no DNS proxy), TPROXY, kubevirt and excluded interfaces, owner-group
//! filters; `traffic.sidecar.istio.io/*` annotations that ask for them are
//! refused by the injector.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Envoy's virtual outbound listener (`translate::sidecar::VIRTUAL_OUTBOUND_PORT`).
pub const DEFAULT_PROXY_PORT: u16 = 15001;
/// Envoy's virtual inbound listener (`translate::sidecar::VIRTUAL_INBOUND_PORT`).
pub const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
/// The UID and GID Envoy runs as in an injected pod (Istio's `istio-proxy` user).
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// Inbound ports Istio's injection template always excludes: Envoy's Prometheus
/// port 15090, the status port 15021 and the agent port 15020.
pub const DEFAULT_EXCLUDE_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IptablesError {
    #[error("{what}: {value:?} is not a port 1-65535")]
    BadPort { what: String, value: String },
    #[error("{what}: {value:?} is not a CIDR (ADDRESS/PREFIX)")]
    BadCidr { what: String, value: String },
    #[error("{what}: '*' cannot be excluded (nothing would be captured; leave the include list empty instead)")]
    WildcardExclude { what: String },
    #[error("running {command}: {reason}")]
    Run { command: String, reason: String },
}

/// A port list: every port (`*`) or the listed ones (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    List(Vec<u16>),
}

/// An outbound address list: every address (`*`) or the listed ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    All,
    List(Vec<Cidr>),
}

/// An address range, held as its network address (host bits cleared, as Go's
/// `net.ParseCIDR` returns it and `iptables-save` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn parse_cidr(what: &str, s: &str) -> Result<Cidr, IptablesError> {
    let bad = || IptablesError::BadCidr {
        what: what.to_string(),
        value: s.to_string(),
    };
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if prefix > max || p.starts_with('+') {
        return Err(bad());
    }
    let addr = match addr {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(Cidr { addr, prefix })
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// A comma-separated port list (`""` is none). `what` names the flag or
/// annotation in the error.
pub fn parse_port_list(what: &str, s: &str) -> Result<Vec<u16>, IptablesError> {
    let mut out = Vec::new();
    for p in items(s) {
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && !p.starts_with('+'))
            .ok_or_else(|| IptablesError::BadPort {
                what: what.to_string(),
                value: p.to_string(),
            })?;
        if !out.contains(&port) {
            out.push(port);
        }
    }
    Ok(out)
}

/// `*` or a comma-separated port list.
pub fn parse_ports(what: &str, s: &str) -> Result<Ports, IptablesError> {
    if s.trim() == "*" {
        Ok(Ports::All)
    } else {
        parse_port_list(what, s).map(Ports::List)
    }
}

/// A comma-separated CIDR list (`""` is none); `*` is refused (an exclusion).
pub fn parse_cidr_list(what: &str, s: &str) -> Result<Vec<Cidr>, IptablesError> {
    let mut out = Vec::new();
    for p in items(s) {
        if p == "*" {
            return Err(IptablesError::WildcardExclude {
                what: what.to_string(),
            });
        }
        let c = parse_cidr(what, p)?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// `*` or a comma-separated CIDR list.
pub fn parse_ranges(what: &str, s: &str) -> Result<Ranges, IptablesError> {
    if s.trim() == "*" {
        Ok(Ranges::All)
    } else {
        parse_cidr_list(what, s).map(Ranges::List)
    }
}

/// What to capture, with Istio's defaults (`Default`): all inbound ports but
/// 15090/15021/15020, all outbound addresses, IPv4 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Where outbound TCP is redirected (istio-iptables `-p`).
    pub proxy_port: u16,
    /// Where inbound TCP is redirected (`-z`).
    pub inbound_capture_port: u16,
    /// Envoy's UID and GID: their traffic is not captured (`-u`, `-g`).
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Inbound ports captured (`-b`, annotation `includeInboundPorts`).
    pub inbound_ports: Ports,
    /// Inbound ports left alone when `inbound_ports` is `*` (`-d`,
    /// `excludeInboundPorts`).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports always captured, whatever the address (`-q`,
    /// `includeOutboundPorts`).
    pub include_outbound_ports: Vec<u16>,
    /// Outbound ports never captured (`-o`, `excludeOutboundPorts`).
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations captured (`-i`, `includeOutboundIPRanges`).
    pub include_outbound_ranges: Ranges,
    /// Outbound destinations never captured (`-x`, `excludeOutboundIPRanges`).
    pub exclude_outbound_ranges: Vec<Cidr>,
    /// Also write the IPv6 rules (`ip6tables-restore`).
    pub ipv6: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_port: DEFAULT_PROXY_PORT,
            inbound_capture_port: DEFAULT_INBOUND_CAPTURE_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: DEFAULT_PROXY_UID,
            inbound_ports: Ports::All,
            exclude_inbound_ports: DEFAULT_EXCLUDE_INBOUND_PORTS.to_vec(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_outbound_ranges: Ranges::All,
            exclude_outbound_ranges: Vec::new(),
            ipv6: false,
        }
    }
}

/// An address family's `iptables-restore` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The command that loads this family's rules.
    pub fn restore_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source Envoy's inbound passthrough binds (Istio's `InboundPassthroughBindIpv4/6`).
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    fn holds(self, c: &Cidr) -> bool {
        c.is_v4() == (self == Family::V4)
    }
}

/// The `iptables-restore --noflush` input for one family. The chains are
/// declared with `:CHAIN - [0:0]`, which creates them, or empties them when they
/// exist; the built-in chains are only appended to.
pub fn restore_input(c: &CaptureConfig, family: Family) -> String {
    const INBOUND: &str = "ISTIO_INBOUND";
    const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
    const OUTPUT: &str = "ISTIO_OUTPUT";
    const REDIRECT: &str = "ISTIO_REDIRECT";
    let mut r: Vec<String> = Vec::new();
    let mut rule = |s: String| r.push(s);

    rule(format!(
        "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        c.proxy_port
    ));
    rule(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        c.inbound_capture_port
    ));

    // Inbound.
    let capture_inbound = match &c.inbound_ports {
        Ports::All => true,
        Ports::List(l) => !l.is_empty(),
    };
    if capture_inbound {
        rule(format!("-A PREROUTING -p tcp -j {INBOUND}"));
        match &c.inbound_ports {
            Ports::All => {
                for p in &c.exclude_inbound_ports {
                    rule(format!("-A {INBOUND} -p tcp --dport {p} -j RETURN"));
                }
                rule(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
            }
            Ports::List(l) => {
                for p in l {
                    rule(format!("-A {INBOUND} -p tcp --dport {p} -j {IN_REDIRECT}"));
                }
            }
        }
    }

    // Outbound.
    rule(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
    for p in &c.exclude_outbound_ports {
        rule(format!("-A {OUTPUT} -p tcp --dport {p} -j RETURN"));
    }
    rule(format!(
        "-A {OUTPUT} -o lo -s {} -j RETURN",
        family.passthrough_source()
    ));
    let include_has_loopback = match &c.include_outbound_ranges {
        Ranges::All => false,
        // Istio checks both families: a loopback range in either keeps app ->
        // app traffic over `lo` captured.
        Ranges::List(l) => l.iter().any(Cidr::is_loopback),
    };
    let localhost = family.localhost();
    for (kind, id) in [("uid", c.proxy_uid), ("gid", c.proxy_gid)] {
        rule(format!(
            "-A {OUTPUT} -o lo ! -d {localhost} -m owner --{kind}-owner {id} -j {IN_REDIRECT}"
        ));
        if !include_has_loopback {
            rule(format!(
                "-A {OUTPUT} -o lo -m owner ! --{kind}-owner {id} -j RETURN"
            ));
        }
        rule(format!(
            "-A {OUTPUT} -m owner --{kind}-owner {id} -j RETURN"
        ));
    }
    rule(format!("-A {OUTPUT} -d {localhost} -j RETURN"));
    for cidr in c.exclude_outbound_ranges.iter().filter(|x| family.holds(x)) {
        rule(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
    }
    for p in &c.include_outbound_ports {
        rule(format!("-A {OUTPUT} -p tcp --dport {p} -j {REDIRECT}"));
    }
    match &c.include_outbound_ranges {
        Ranges::All => rule(format!("-A {OUTPUT} -j {REDIRECT}")),
        Ranges::List(l) => {
            // As istio-iptables: an explicit list ends with RETURN, even when it
            // holds nothing of this family.
            if !l.is_empty() {
                for cidr in l.iter().filter(|x| family.holds(x)) {
                    rule(format!("-A {OUTPUT} -d {cidr} -j {REDIRECT}"));
                }
                rule(format!("-A {OUTPUT} -j RETURN"));
            }
        }
    }

    let mut out = String::from("*nat\n");
    for chain in [INBOUND, REDIRECT, IN_REDIRECT, OUTPUT] {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for l in r {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// The families to program: IPv4, and IPv6 when asked.
pub fn families(c: &CaptureConfig) -> Vec<Family> {
    if c.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// What `--dry-run` prints: each family's input under a `# <command> --noflush` line.
pub fn dry_run_text(c: &CaptureConfig) -> String {
    let mut out = String::new();
    for f in families(c) {
        out.push_str(&format!("# {} --noflush\n", f.restore_command()));
        out.push_str(&restore_input(c, f));
    }
    out
}

/// Load the rules: `iptables-restore --noflush` (and `ip6tables-restore`) with
/// the input on stdin. Needs `NET_ADMIN` and `NET_RAW` in the pod's network
/// namespace (the init container runs as root with those capabilities).
pub fn apply(c: &CaptureConfig) -> Result<(), IptablesError> {
    for f in families(c) {
        let input = restore_input(c, f);
        let cmd = f.restore_command();
        let run_err = |reason: String| IptablesError::Run {
            command: format!("{cmd} --noflush"),
            reason,
        };
        let mut child = Command::new(cmd)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| run_err(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| run_err(format!("writing its input: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| run_err(e.to_string()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(run_err(format!("{}: {}", out.status, first.trim())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_reject_with_the_name_and_value() {
        let e = parse_port_list("excludeInboundPorts", "80,abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "excludeInboundPorts: \"abc\" is not a port 1-65535"
        );
        assert!(parse_port_list("p", "0").is_err());
        assert!(parse_port_list("p", "65536").is_err());
        assert_eq!(parse_port_list("p", " 80, 443,80,").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports("p", "*").unwrap(), Ports::All);
        assert_eq!(parse_ports("p", "").unwrap(), Ports::List(vec![]));
        assert!(parse_cidr_list("x", "10.0.0.0/33").is_err());
        assert!(parse_cidr_list("x", "10.0.0.1").is_err());
        assert!(matches!(
            parse_cidr_list("x", "*"),
            Err(IptablesError::WildcardExclude { .. })
        ));
        let l = parse_cidr_list("x", "10.1.2.3/8,fd00::1/64").unwrap();
        assert_eq!(l[0].to_string(), "10.0.0.0/8");
        assert_eq!(l[1].to_string(), "fd00::/64");
        assert_eq!(parse_ranges("x", "*").unwrap(), Ranges::All);
    }

    #[test]
    fn default_rules_capture_everything_but_envoy_and_its_ports() {
        let t = restore_input(&CaptureConfig::default(), Family::V4);
        let lines: Vec<&str> = t.lines().collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l} in\n{t}"))
        };
        // Excluded inbound ports return before the catch-all redirect.
        assert!(
            at("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN")
                < at("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        );
        // Envoy's own traffic returns before the catch-all outbound redirect.
        assert!(
            at("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
                < at("-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn loopback_include_keeps_app_loopback_traffic_captured() {
        let c = CaptureConfig {
            include_outbound_ranges: parse_ranges("i", "127.1.2.3/32").unwrap(),
            ..Default::default()
        };
        let t = restore_input(&c, Family::V4);
        assert!(!t.contains("! --uid-owner"), "{t}");
        assert!(t.contains(
            "-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT\n-A ISTIO_OUTPUT -j RETURN\n"
        ));
        let v6 = restore_input(&c, Family::V6);
        assert!(!v6.contains("127.1.2.3"), "{v6}");
        assert!(v6.contains("-A ISTIO_OUTPUT -j RETURN"), "{v6}");
    }

    #[test]
    fn no_inbound_ports_means_no_prerouting_jump() {
        let mut c = CaptureConfig {
            inbound_ports: Ports::List(vec![]),
            ..Default::default()
        };
        assert!(!restore_input(&c, Family::V4).contains("PREROUTING"));
        c.inbound_ports = Ports::List(vec![8080]);
        let t = restore_input(&c, Family::V4);
        assert!(t.contains("-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT"));
        assert!(!t.contains("--dport 15021"), "{t}");
    }
}
