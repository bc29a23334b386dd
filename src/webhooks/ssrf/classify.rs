//! Which addresses a webhook delivery may reach: the block list of everything outside the
//! public internet ([`is_blocked`]) and the operator's exemptions from it ([`AllowList`]).
//!
//! Pure functions of an address: this room never resolves a name or opens a connection; the
//! guard in the parent module applies it to what was actually resolved.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is outside the public internet: a delivery must never connect to it unless
/// `allow_networks` exempts it. IPv6 forms that embed an IPv4 address (mapped, compatible,
/// NAT64, 6to4) are judged by the embedded address.
pub fn is_blocked(ip: IpAddr) -> bool {
    blocked_network(ip).is_some()
}

/// The kind of network that blocks `ip`, in general terms ("loopback", "private",
/// "link-local" ...), or `None` for a public address. Refusals name this, never the address
/// itself: a delivery's error is shown to the endpoint's owner, who must not learn what a name
/// resolves to inside Herald's network.
pub fn blocked_network(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        // 0.0.0.0/8, unspecified
        (0, _, _) => "this network",
        // 10.0.0.0/8
        (10, _, _) => "private",
        // 100.64.0.0/10
        (100, b, _) if (b & 0xc0) == 64 => "shared (CGNAT)",
        // 127.0.0.0/8
        (127, _, _) => "loopback",
        // 169.254.0.0/16, cloud metadata
        (169, 254, _) => "link-local",
        // 172.16.0.0/12
        (172, b, _) if (b & 0xf0) == 16 => "private",
        // 192.0.0.0/24 IETF protocol assignments
        (192, 0, 0) => "reserved",
        // 192.0.2.0/24 TEST-NET-1
        (192, 0, 2) => "documentation",
        // 192.88.99.0/24 deprecated 6to4 relay anycast
        (192, 88, 99) => "reserved",
        // 192.168.0.0/16
        (192, 168, _) => "private",
        // 198.18.0.0/15
        (198, b, _) if (b & 0xfe) == 18 => "benchmarking",
        // 198.51.100.0/24 TEST-NET-2
        (198, 51, 100) => "documentation",
        // 203.0.113.0/24 TEST-NET-3
        (203, 0, 113) => "documentation",
        // 224.0.0.0/4
        (224..=239, _, _) => "multicast",
        // 240.0.0.0/4 reserved, 255.255.255.255 broadcast
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

/// The IPv4 address in the low 32 bits.
fn low_v4(segments: [u16; 8]) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7]))
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // ::/96 holds the unspecified address, loopback and the deprecated IPv4-compatible form;
    // judging the low 32 bits as IPv4 blocks `::` (0.0.0.0) and `::1` (0.0.0.1) too.
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        if ip.is_unspecified() {
            return Some("this network");
        }
        if ip.is_loopback() {
            return Some("loopback");
        }
        return blocked_v4(low_v4(s));
    }
    // ::ffff:0:0/96 IPv4-mapped: the kernel dials the IPv4 address itself.
    if s[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return blocked_v4(low_v4(s));
    }
    // 64:ff9b::/96 well-known NAT64 prefix: the translator dials the embedded IPv4 address.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return blocked_v4(low_v4(s));
    }
    // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): the operator's own translator, where the
    // embedded address sits wherever its chosen prefix length puts it. Not globally reachable;
    // blocked whole, since the embedded address cannot be read reliably.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("local-use NAT64");
    }
    // Everything outside 2000::/3 global unicast is special or unassigned: unique local
    // fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, discard
    // 100::/64, the rest of ::/8 and the unallocated space. Fail closed.
    if (s[0] & 0xe000) != 0x2000 {
        return Some(match s[0] {
            0xfc00..=0xfdff => "private",
            0xfe80..=0xfebf => "link-local",
            0xff00..=0xffff => "multicast",
            _ => "reserved",
        });
    }
    // 2002::/16 6to4: the IPv4 address of the relay in bits 16..48.
    if s[0] == 0x2002 {
        return blocked_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    match s[0] {
        // 2001::/23 IETF protocol assignments (Teredo 2001::/32, benchmarking 2001:2::/48,
        // ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28 among them) and documentation
        // 2001:db8::/32.
        0x2001 if s[1] < 0x0200 => Some("reserved"),
        0x2001 if s[1] == 0x0db8 => Some("documentation"),
        // 3fff::/20 documentation (RFC 9637).
        0x3fff if s[1] < 0x1000 => Some("documentation"),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
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
    fn blocked_network_names_the_kind_of_network_not_the_address() {
        for (address, kind) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("fd00::1", "private"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("0.0.0.0", "this network"),
            ("::", "this network"),
            ("240.0.0.1", "reserved"),
        ] {
            assert_eq!(blocked_network(ip(address)), Some(kind), "{address}");
        }
        assert_eq!(blocked_network(ip("93.184.215.14")), None);
        assert_eq!(blocked_network(ip("2606:4700::1")), None);
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
}
