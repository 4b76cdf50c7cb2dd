//! Who may make the node download what.
//!
//! `bifs apply` runs as the node's operator: it may download from anywhere the node can reach,
//! `file://` paths and loopback test servers included ([`DownloadPolicy::operator`]).
//! `bifs serve` creates images for *remote* callers: a token holder must not be able to read
//! the node's files (`file:///etc/shadow`) or reach what only the node can (cloud metadata at
//! 169.254.169.254, the kubelet on 127.0.0.1:10250, services on the cluster network) through
//! the server, which runs privileged on the node's network. So its downloads
//! ([`DownloadPolicy::remote`]) are `http`/`https` only, and connect only to public addresses:
//! loopback, unspecified, link-local, multicast, private, shared (CGNAT) and reserved
//! addresses are refused unless the operator allows a range (`--allow-download-from CIDR`).
//!
//! The check is made on the resolved addresses, by the resolver ureq connects through
//! (`CheckedResolver`): the connection goes to an address that was checked (no second DNS
//! lookup between the check and the connect), and every redirect is resolved, so checked,
//! again. Proxies from the environment are not used by remote downloads (a proxy would
//! connect on the node's behalf to an address never checked). Size and time are bounded: the
//! body may not exceed the limit (by default the store's free space), and a download that
//! stalls for a minute or lasts longer than the limit fails.
//!
//! Longhorn's webhook (longhorn-manager `webhook/resources/backingimage/validator.go`,
//! `validateDownloadParameters`) refuses non-http(s) URLs and loopback hosts
//! (`IsLoopbackHost`: localhost, 127.0.0.1, 0.0.0.0, ::1, or a name resolving only to
//! loopback) since v1.12.1 and v1.11.4; older releases refuse neither, and none refuses
//! private or link-local addresses. The check is made once, at admission, on a name resolved
//! then; backing-image-manager resolves again when it downloads.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// The default bound on a remote download's duration.
pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(6 * 3600);
/// A download that receives nothing for this long fails (Longhorn's client: 30 s on v1.8+).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An address range, `ADDR/PREFIX` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: not an address range (ADDR/PREFIX, e.g. 10.0.0.0/8)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self {
            net: net.to_canonical(),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Why an address is not one a remote caller may make the node connect to, or `None` for a
/// public unicast address.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(a) => non_public_v4(a),
        IpAddr::V6(a) => non_public_v6(a),
    }
}

fn non_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    Some(if a.is_loopback() {
        "loopback"
    } else if o[0] == 0 {
        "unspecified (0.0.0.0/8)"
    } else if a.is_link_local() {
        "link-local (169.254.0.0/16, cloud metadata)"
    } else if a.is_private() {
        "private"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "shared address space (100.64.0.0/10)"
    } else if a.is_multicast() {
        "multicast"
    } else if o[0] >= 240 {
        "reserved (240.0.0.0/4, broadcast)"
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        "IETF protocol assignments (192.0.0.0/24)"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "benchmarking (198.18.0.0/15)"
    } else {
        return None;
    })
}

fn non_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    let embedded_v4 =
        || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    Some(if a.is_loopback() {
        "loopback"
    } else if a.is_unspecified() {
        "unspecified"
    } else if a.is_multicast() {
        "multicast"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local (fe80::/10)"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "site-local (fec0::/10)"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "unique local (fc00::/7, private)"
    } else if s[..6] == [0; 6] {
        "IPv4-compatible (::/96)"
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: the IPv4 address inside decides.
        return non_public_v4(embedded_v4());
    } else if s[0] == 0x2002 {
        // 6to4 carries an IPv4 address in bits 16..48.
        return non_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    } else {
        return None;
    })
}

/// What a download may do, by who asked for it.
#[derive(Debug, Clone)]
pub struct DownloadPolicy {
    /// The node's operator (`bifs apply`): `file://` URLs and any address.
    pub local: bool,
    /// Ranges a remote caller may reach although they are not public.
    pub allow: Vec<Cidr>,
    /// The most bytes a download may bring; `None`: the store's free space when it starts.
    pub max_bytes: Option<u64>,
    /// The longest a download may take.
    pub max_time: Duration,
}

impl DownloadPolicy {
    /// `bifs apply`'s: anything the node can reach, `file://` included.
    pub fn operator() -> Self {
        Self {
            local: true,
            allow: Vec::new(),
            max_bytes: None,
            max_time: Duration::from_secs(u64::from(u32::MAX)),
        }
    }

    /// `bifs serve`'s, for remote callers: http(s) to public addresses, plus `allow`.
    pub fn remote(allow: Vec<Cidr>, max_bytes: Option<u64>, max_time: Duration) -> Self {
        Self {
            local: false,
            allow,
            max_bytes,
            max_time,
        }
    }

    /// Whether a remote download may connect to `ip`; the refusal says why.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.local || self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match non_public(ip) {
            None => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address: refused for downloads created through the server \
                 (the operator may allow a range with --allow-download-from CIDR)"
            )),
        }
    }

    /// The admission check of a URL (before anything is recorded): the scheme, and the host
    /// when it is an address or `localhost`. Names are checked when they are resolved.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        if self.local {
            return Ok(());
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an absolute URL"))?;
        if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
            return Err(format!(
                "{url:?}: only http:// and https:// URLs may be downloaded through the server \
                 (file:// is for bifs apply on the node)"
            ));
        }
        let host = host_of(rest);
        if host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
        {
            return self.check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_ip(ip);
        }
        Ok(())
    }

    /// The HTTP agent downloads go through: for a remote policy, with the checked resolver,
    /// no proxy, and the time bounds.
    pub fn agent(&self) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            // A stalled server must not hang an apply forever; a slow one may take its time.
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(IDLE_TIMEOUT));
        if !self.local {
            config = config.timeout_global(Some(self.max_time)).proxy(None);
        }
        let config = config.build();
        if self.local {
            return config.into();
        }
        let resolver = CheckedResolver {
            policy: Arc::new(self.clone()),
        };
        ureq::Agent::with_parts(config, DefaultConnector::default(), resolver)
    }
}

/// The host of `rest` (what follows `scheme://`): no user info, port or brackets.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(h, _)| h),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    }
}

/// ureq's resolver, keeping only the addresses the policy allows: the connector connects to
/// what this returns, so no address is reached unchecked.
#[derive(Debug)]
struct CheckedResolver {
    policy: Arc<DownloadPolicy>,
}

impl Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let found = DefaultResolver::default().resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        let mut refused = Vec::new();
        for addr in found.iter() {
            match self.policy.check_ip(addr.ip()) {
                Ok(()) => kept.push(SocketAddr::new(addr.ip().to_canonical(), addr.port())),
                Err(why) => refused.push(why),
            }
        }
        if kept.is_empty() {
            let host = uri.host().unwrap_or("");
            let why = refused.first().cloned().unwrap_or_default();
            return Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{host} resolves to no address the server may download from: {why}"),
            )));
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains(ip("fd12::1")));
        assert!(!c.contains(ip("fe80::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.255.255")) && !c.contains(ip("172.32.0.0")));
    }

    #[test]
    fn only_public_addresses_unless_allowed() {
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.169.254",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(non_public(ip(refused)).is_some(), "{refused}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808"] {
            assert!(non_public(ip(public)).is_none(), "{public}");
        }
        let p = DownloadPolicy::remote(vec!["10.0.0.0/8".parse().unwrap()], None, DEFAULT_MAX_TIME);
        assert!(p.check_ip(ip("10.3.4.5")).is_ok());
        assert!(p.check_ip(ip("192.168.0.1")).is_err());
        assert!(DownloadPolicy::operator().check_ip(ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn urls_are_checked_by_scheme_and_literal_host() {
        let p = DownloadPolicy::remote(Vec::new(), None, DEFAULT_MAX_TIME);
        for bad in [
            "file:///etc/shadow",
            "FILE://localhost/etc/shadow",
            "ftp://example.com/x",
            "http://localhost:8080/x",
            "http://a.localhost/x",
            "http://127.0.0.1/x",
            "http://[::1]:80/x",
            "http://user@169.254.169.254/latest/meta-data",
            "https://10.0.0.1/x",
            "gopher://x",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad}");
        }
        for ok in [
            "http://example.com/x.img",
            "https://8.8.8.8:443/x",
            "http://[2606:4700::1]/x",
        ] {
            assert!(p.check_url(ok).is_ok(), "{ok}");
        }
        assert!(DownloadPolicy::operator().check_url("file:///x").is_ok());
    }
}
