//! The SSRF defence for webhook deliveries: endpoint URLs are chosen by API callers, so every
//! delivery could be an attempt to reach Herald's own network (cloud metadata at
//! 169.254.169.254, Redis on loopback, private services).
//!
//! The check happens at connect time, on the addresses actually dialled, so there is no
//! window for DNS rebinding between a check and the connection:
//!
//! - [`GuardedResolver`] is the HTTP client's DNS resolver. It drops every blocked address from
//!   the answer before the connector sees it, and fails when none remain, so no connection to a
//!   blocked address is ever opened.
//! - reqwest does not call the resolver when the URL host is an IP literal, so [`check_url`]
//!   refuses blocked literals (and non-http(s) schemes and credentials) before each request.
//!   The `url` crate has already normalised odd IPv4 spellings (`2130706433`, `0x7f.1`,
//!   `017700000001`, `127.1`) to dotted quads by then.
//! - [`client`] builds the one HTTP client deliveries use: guarded resolver, no redirects, no
//!   proxy from the environment.
//!
//! `[webhooks] allow_networks` ([`AllowList`]) exempts CIDRs, for sinks on a private network
//! and for tests. This module must never open a connection itself.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Whether `ip` is outside the public internet: a delivery must never connect to it unless
/// `allow_networks` exempts it. IPv6 forms that embed an IPv4 address (mapped, compatible,
/// NAT64, 6to4) are judged by the embedded address.
pub fn is_blocked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_blocked_v4(v4),
        IpAddr::V6(v6) => is_blocked_v6(v6),
    }
}

fn is_blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                      // 0.0.0.0/8 "this network", unspecified
        || a == 10                              // 10.0.0.0/8 private
        || (a == 100 && (b & 0xc0) == 64)       // 100.64.0.0/10 CGNAT shared space
        || a == 127                             // 127.0.0.0/8 loopback
        || (a == 169 && b == 254)               // 169.254.0.0/16 link-local, cloud metadata
        || (a == 172 && (b & 0xf0) == 16)       // 172.16.0.0/12 private
        || (a == 192 && b == 0 && c == 0)       // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // 192.0.2.0/24 TEST-NET-1
        || (a == 192 && b == 88 && c == 99)     // 192.88.99.0/24 deprecated 6to4 relay anycast
        || (a == 192 && b == 168)               // 192.168.0.0/16 private
        || (a == 198 && (b & 0xfe) == 18)       // 198.18.0.0/15 benchmarking
        || (a == 198 && b == 51 && c == 100)    // 198.51.100.0/24 TEST-NET-2
        || (a == 203 && b == 0 && c == 113)     // 203.0.113.0/24 TEST-NET-3
        || a >= 224 // 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, 255.255.255.255 broadcast
}

/// The IPv4 address in the low 32 bits.
fn low_v4(segments: [u16; 8]) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7]))
}

fn is_blocked_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // ::/96 holds the unspecified address, loopback and the deprecated IPv4-compatible form;
    // judging the low 32 bits as IPv4 blocks `::` (0.0.0.0) and `::1` (0.0.0.1) too.
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return ip.is_unspecified() || ip.is_loopback() || is_blocked_v4(low_v4(s));
    }
    // ::ffff:0:0/96 IPv4-mapped: the kernel dials the IPv4 address itself.
    if s[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return is_blocked_v4(low_v4(s));
    }
    // 64:ff9b::/96 well-known NAT64 prefix: the translator dials the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_blocked_v4(low_v4(s));
    }
    // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): the operator's own translator, where the
    // embedded address sits wherever its chosen prefix length puts it. Not globally reachable;
    // blocked whole, since the embedded address cannot be read reliably.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return true;
    }
    // Everything outside 2000::/3 global unicast is special or unassigned: unique local
    // fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, discard
    // 100::/64, the rest of ::/8 and the unallocated space. Fail closed.
    if (s[0] & 0xe000) != 0x2000 {
        return true;
    }
    // 2002::/16 6to4: the IPv4 address of the relay in bits 16..48.
    if s[0] == 0x2002 {
        return is_blocked_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    match s[0] {
        // 2001::/23 IETF protocol assignments (Teredo 2001::/32, benchmarking 2001:2::/48,
        // ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28 among them) and documentation
        // 2001:db8::/32.
        0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
        // 3fff::/20 documentation (RFC 9637).
        0x3fff => s[1] < 0x1000,
        _ => false,
    }
}

/// `[webhooks] allow_networks`: CIDRs that are exempt from the block list, for sinks on a
/// private network (and tests on loopback). Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<IpNet>,
}

impl AllowList {
    /// Parses CIDRs (`10.1.0.0/16`, `fd00::/8`); a bare address means just that address. Any
    /// entry that does not parse is a configuration error naming it.
    pub fn parse<I, S>(cidrs: I) -> Result<AllowList, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let networks = cidrs
            .into_iter()
            .map(|cidr| {
                let cidr = cidr.as_ref().trim();
                cidr.parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("webhooks.allow_networks: {cidr:?} is not a CIDR (like 10.0.0.0/8)")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { networks })
    }

    /// Whether an allowed network holds `ip`. An IPv4-mapped IPv6 address is the same socket
    /// as its IPv4 address, so it matches IPv4 networks too.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.networks
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }

    /// Whether a delivery may connect to `ip`: not blocked, or exempted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_blocked(ip) || self.contains(ip)
    }
}

/// Refuses, before a request is made, what the resolver cannot see: blocked IP-literal hosts,
/// schemes other than http and https, and URLs carrying credentials. Hosts that are names pass
/// here; [`GuardedResolver`] judges their addresses at connect time.
pub fn check_url(url: &reqwest::Url, allow: &AllowList) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("webhook URL scheme {other:?} is not http or https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("webhook URL must not carry credentials".to_owned());
    }
    let ip = match url.host() {
        None => return Err("webhook URL has no host".to_owned()),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if allow.permits(ip) {
        Ok(())
    } else {
        Err(format!("{BLOCKED_MESSAGE}: {ip}"))
    }
}

const BLOCKED_MESSAGE: &str = "destination address is blocked (SSRF)";

/// The resolver's refusal: every address the name resolved to is blocked. Reaches the caller
/// as the source of the `reqwest::Error`; [`is_blocked_error`] finds it.
#[derive(Debug)]
pub struct BlockedDestination {
    host: String,
    blocked: Vec<IpAddr>,
}

impl fmt::Display for BlockedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{BLOCKED_MESSAGE}: {} resolves only to", self.host)?;
        for ip in &self.blocked {
            write!(f, " {ip}")?;
        }
        Ok(())
    }
}

impl StdError for BlockedDestination {}

/// Whether a request failed because the SSRF defence refused its destination (a permanent
/// failure, not worth fast retries).
pub fn is_blocked_error(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<BlockedDestination>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The HTTP client's DNS resolver: the system resolver (`getaddrinfo` on tokio's blocking pool
/// via `lookup_host`, so the runtime's workers never block) with blocked addresses removed from
/// the answer. Connections are only ever made to what it returns.
#[derive(Debug, Clone, Default)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    pub fn new(allow: AllowList) -> GuardedResolver {
        GuardedResolver {
            allow: Arc::new(allow),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest replaces it with the URL's port.
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("resolving {host}: {e}")))?
                .collect();
            let (permitted, blocked): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|addr| allow.permits(addr.ip()));
            if permitted.is_empty() {
                let blocked = blocked.iter().map(SocketAddr::ip).collect();
                let error: Box<dyn StdError + Send + Sync> =
                    Box::new(BlockedDestination { host, blocked });
                return Err(error);
            }
            if !blocked.is_empty() {
                tracing::warn!(
                    host,
                    blocked = ?blocked.iter().map(SocketAddr::ip).collect::<Vec<_>>(),
                    "webhook destination resolved partly to blocked addresses; dropped them"
                );
            }
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

/// The HTTP client for deliveries: the [`GuardedResolver`] over `allow`, redirects never
/// followed (a redirect is a failed delivery, and following one would bypass [`check_url`]),
/// no proxy from the environment (a proxy would resolve the destination out of our sight),
/// pooled keep-alive connections, rustls. Callers must still run [`check_url`] before each
/// request.
pub fn client(
    allow: AllowList,
    connect_timeout: Duration,
    total_timeout: Duration,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .dns_resolver(GuardedResolver::new(allow))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("building the webhook HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("test URL parses")
    }

    fn loopback_allowed() -> AllowList {
        AllowList::parse(["127.0.0.0/8"]).expect("valid CIDR")
    }

    #[track_caller]
    fn assert_blocked(addresses: &[&str]) {
        for a in addresses {
            assert!(is_blocked(ip(a)), "{a} should be blocked");
        }
    }

    #[track_caller]
    fn assert_public(addresses: &[&str]) {
        for a in addresses {
            assert!(!is_blocked(ip(a)), "{a} should be allowed");
        }
    }

    #[test]
    fn ipv4_special_ranges_are_blocked_edge_to_edge() {
        assert_blocked(&[
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.0.0",
            "169.254.169.254",
            "169.254.255.255",
            "172.16.0.0",
            "172.31.255.255",
            "192.0.0.0",
            "192.0.0.255",
            "192.0.2.0",
            "192.0.2.255",
            "192.88.99.1",
            "192.168.0.0",
            "192.168.255.255",
            "198.18.0.0",
            "198.19.255.255",
            "198.51.100.0",
            "198.51.100.255",
            "203.0.113.0",
            "203.0.113.255",
            "224.0.0.0",
            "239.255.255.255",
            "240.0.0.0",
            "255.255.255.254",
            "255.255.255.255",
        ]);
    }

    #[test]
    fn ipv4_neighbours_of_special_ranges_are_public() {
        assert_public(&[
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "198.51.101.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            "93.184.215.14",
            "8.8.8.8",
        ]);
    }

    #[test]
    fn ipv6_special_ranges_are_blocked() {
        assert_blocked(&[
            "::",
            "::1",
            // unique local fc00::/7
            "fc00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            // link-local fe80::/10, site-local fec0::/10
            "fe80::",
            "febf:ffff::1",
            "fec0::",
            "feff:ffff::1",
            // multicast ff00::/8
            "ff00::",
            "ff02::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            // discard 100::/64
            "100::",
            "100::ffff:ffff:ffff:ffff",
            // Teredo 2001::/32
            "2001::",
            "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
            // ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28
            "2001:10::",
            "2001:1f:ffff::1",
            "2001:20::",
            "2001:2f:ffff::1",
            // documentation 2001:db8::/32, 3fff::/20
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            "3fff::",
            "3fff:fff:ffff::1",
            // local-use NAT64 64:ff9b:1::/48, whatever it embeds
            "64:ff9b:1::5db8:d70e",
            "64:ff9b:1:ffff::1",
        ]);
    }

    #[test]
    fn ipv6_neighbours_of_special_ranges_are_public() {
        assert_public(&[
            "2606:4700::1",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2001:db7:ffff::1",
            "2001:db9::",
            "3fff:1000::",
            "2a00:1450:4001::1",
        ]);
    }

    #[test]
    fn ipv6_with_embedded_ipv4_is_judged_by_the_ipv4_address() {
        assert_blocked(&[
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.168.1.1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101:1::1",
        ]);
        assert_public(&[
            "::ffff:93.184.215.14",
            "::93.184.215.14",
            "64:ff9b::93.184.215.14",
            "2002:5db8:d70e::1",
        ]);
    }

    #[test]
    fn allow_list_parses_cidrs_and_bare_addresses() {
        let allow = AllowList::parse(["10.1.0.0/16", " fd00::/8 ", "192.0.2.7"]).expect("valid");
        assert!(allow.contains(ip("10.1.255.255")));
        assert!(!allow.contains(ip("10.2.0.0")));
        assert!(allow.contains(ip("fd12::1")));
        assert!(allow.contains(ip("192.0.2.7")));
        assert!(!allow.contains(ip("192.0.2.8")));
    }

    #[test]
    fn allow_list_rejects_anything_that_is_not_a_cidr_naming_it() {
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0/8", "fd00::/129"] {
            let error = AllowList::parse([bad]).expect_err(bad);
            assert!(error.contains("allow_networks"), "{error}");
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn allow_list_exempts_blocked_addresses_and_only_those_listed() {
        let allow = loopback_allowed();
        assert!(allow.permits(ip("127.0.0.1")));
        assert!(
            allow.permits(ip("::ffff:127.0.0.1")),
            "mapped form is the same socket"
        );
        assert!(
            !allow.permits(ip("::1")),
            "IPv6 loopback is not in 127.0.0.0/8"
        );
        assert!(!allow.permits(ip("169.254.169.254")));
        assert!(AllowList::default().permits(ip("93.184.215.14")));
        assert!(!AllowList::default().permits(ip("127.0.0.1")));
    }

    #[test]
    fn check_url_catches_odd_ipv4_literal_spellings_of_loopback() {
        for odd in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.1/",
            "http://127.0.0.1./",
            "https://127.0.0.1:8443/hook",
        ] {
            let parsed = url(odd);
            assert_eq!(
                parsed.host(),
                Some(url::Host::Ipv4(Ipv4Addr::LOCALHOST)),
                "{odd} normalises to 127.0.0.1"
            );
            let error = check_url(&parsed, &AllowList::default()).expect_err(odd);
            assert!(error.contains(BLOCKED_MESSAGE), "{error}");
        }
    }

    #[test]
    fn check_url_catches_ipv6_literals_and_embedded_ipv4() {
        for blocked in [
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::169.254.169.254]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://[fe80::1]/",
            "http://0/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            assert!(
                check_url(&url(blocked), &AllowList::default()).is_err(),
                "{blocked}"
            );
        }
    }

    #[test]
    fn check_url_passes_public_literals_and_names_to_the_resolver() {
        for fine in [
            "https://93.184.215.14/hook",
            "http://[2606:4700::1]:8080/",
            "https://hooks.example.com/x?y=1",
            "http://localhost:8080/",
        ] {
            assert_eq!(
                check_url(&url(fine), &AllowList::default()),
                Ok(()),
                "{fine}"
            );
        }
    }

    #[test]
    fn check_url_honours_the_allow_list() {
        let allow = loopback_allowed();
        assert_eq!(check_url(&url("http://2130706433:9/"), &allow), Ok(()));
        assert_eq!(
            check_url(&url("http://[::ffff:127.0.0.1]:9/"), &allow),
            Ok(())
        );
        assert!(check_url(&url("http://[::1]:9/"), &allow).is_err());
    }

    #[test]
    fn check_url_refuses_other_schemes_and_credentials() {
        for refused in [
            "ftp://93.184.215.14/",
            "file:///etc/passwd",
            "gopher://hooks.example.com/",
            "ws://hooks.example.com/",
            "https://user@hooks.example.com/",
            "https://user:pass@hooks.example.com/",
            "https://:pass@hooks.example.com/",
        ] {
            assert!(
                check_url(&url(refused), &loopback_allowed()).is_err(),
                "{refused}"
            );
        }
    }

    #[tokio::test]
    async fn resolver_refuses_a_name_that_resolves_only_to_blocked_addresses() {
        let resolver = GuardedResolver::new(AllowList::default());
        let name = Name::from_str("localhost").expect("valid name");
        let Err(error) = resolver.resolve(name).await else {
            panic!("localhost must not resolve through the guard");
        };
        assert!(error.is::<BlockedDestination>(), "{error}");
        assert!(error.to_string().contains(BLOCKED_MESSAGE), "{error}");
    }

    #[tokio::test]
    async fn resolver_keeps_only_allowed_addresses() {
        let resolver = GuardedResolver::new(loopback_allowed());
        let name = Name::from_str("localhost").expect("valid name");
        let addrs: Vec<SocketAddr> = match resolver.resolve(name).await {
            Ok(addrs) => addrs.collect(),
            Err(error) => panic!("allowed loopback refused: {error}"),
        };
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_ipv4() && a.ip().is_loopback()),
            "::1 dropped, 127.0.0.1 kept: {addrs:?}"
        );
    }

    /// What the sender does for each delivery: `check_url`, then the guarded client.
    async fn deliver(
        client: &reqwest::Client,
        allow: &AllowList,
        target: &str,
    ) -> Result<reqwest::StatusCode, String> {
        let target = url(target);
        check_url(&target, allow)?;
        match client.post(target).body("{}").send().await {
            Ok(response) => Ok(response.status()),
            Err(error) if is_blocked_error(&error) => Err(format!("{BLOCKED_MESSAGE}: {error}")),
            Err(error) => Err(format!("request failed: {error:?}")),
        }
    }

    fn guarded_client(allow: AllowList) -> reqwest::Client {
        client(allow, Duration::from_secs(2), Duration::from_secs(5)).expect("client builds")
    }

    /// The loopback spellings of one listener on 127.0.0.1.
    fn loopback_urls(port: u16) -> [String; 5] {
        [
            format!("http://localhost:{port}/"),
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://2130706433:{port}/"),
            format!("http://0x7f.1:{port}/"),
        ]
    }

    /// Asserts nothing connected to `listener` (a refused request never dials).
    async fn assert_never_connected(listener: &TcpListener) {
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the listener saw a connection");
    }

    /// Answers every connection with `response`, counting them.
    fn serve(listener: TcpListener, response: String) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    // Read until the end of the headers; the bodies here are tiny.
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        })
    }

    #[tokio::test]
    async fn loopback_destinations_are_refused_before_any_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let allow = AllowList::default();
        let client = guarded_client(allow.clone());
        for target in loopback_urls(port) {
            let error = deliver(&client, &allow, &target).await.expect_err(&target);
            assert!(error.contains(BLOCKED_MESSAGE), "{target}: {error}");
        }
        assert_never_connected(&listener).await;
    }

    #[tokio::test]
    async fn allow_networks_lets_the_same_loopback_destinations_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let server = serve(
            listener,
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_owned(),
        );
        let allow = loopback_allowed();
        let client = guarded_client(allow.clone());
        for target in loopback_urls(port) {
            assert_eq!(
                deliver(&client, &allow, &target).await,
                Ok(reqwest::StatusCode::NO_CONTENT),
                "{target}"
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn reqwest_skips_the_resolver_for_ip_literals_so_check_url_is_required() {
        // Documents why `check_url` exists: the guarded client alone dials an IP literal.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let server = serve(
            listener,
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_owned(),
        );
        let response = guarded_client(AllowList::default())
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await;
        assert!(
            response.is_ok(),
            "reqwest now resolves IP literals through the resolver; check_url may be redundant"
        );
        server.abort();
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let elsewhere_port = elsewhere.local_addr().expect("local addr").port();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let redirect = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{elsewhere_port}/\r\nContent-Length: 0\r\n\r\n"
        );
        let server = serve(listener, redirect);
        let allow = loopback_allowed();
        let status = deliver(
            &guarded_client(allow.clone()),
            &allow,
            &format!("http://127.0.0.1:{port}/"),
        )
        .await;
        assert_eq!(status, Ok(reqwest::StatusCode::TEMPORARY_REDIRECT));
        assert_never_connected(&elsewhere).await;
        server.abort();
    }
}
