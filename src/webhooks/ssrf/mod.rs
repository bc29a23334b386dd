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

mod classify;

pub use classify::{AllowList, blocked_network, is_blocked};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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
    match blocked_network(ip) {
        Some(kind) if !allow.contains(ip) => Err(format!(
            "{BLOCKED_MESSAGE}: the host is in a blocked network ({kind})"
        )),
        _ => Ok(()),
    }
}

const BLOCKED_MESSAGE: &str = "destination address is blocked (SSRF)";

/// The resolver's refusal: every address the name resolved to is blocked. Reaches the caller
/// as the source of the `reqwest::Error`; [`is_blocked_error`] finds it. It says which kinds
/// of network the name resolved to, never the addresses: its text lands in the delivery log,
/// which the endpoint's owner reads, and the addresses would map Herald's internal network.
#[derive(Debug)]
pub struct BlockedDestination {
    host: String,
    /// The kinds of network ([`blocked_network`]), sorted, without repeats.
    networks: Vec<&'static str>,
}

impl BlockedDestination {
    fn new(host: String, blocked: impl IntoIterator<Item = IpAddr>) -> BlockedDestination {
        let mut networks: Vec<&'static str> = blocked
            .into_iter()
            .map(|ip| blocked_network(ip).unwrap_or("other"))
            .collect();
        networks.sort_unstable();
        networks.dedup();
        BlockedDestination { host, networks }
    }
}

impl fmt::Display for BlockedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{BLOCKED_MESSAGE}: {} resolves only to blocked networks ({})",
            self.host,
            self.networks.join(", ")
        )
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
                let error: Box<dyn StdError + Send + Sync> = Box::new(BlockedDestination::new(
                    host,
                    blocked.iter().map(SocketAddr::ip),
                ));
                return Err(error);
            }
            if !blocked.is_empty() {
                let dropped = BlockedDestination::new(host, blocked.iter().map(SocketAddr::ip));
                tracing::warn!(
                    host = dropped.host,
                    networks = ?dropped.networks,
                    "webhook destination resolved partly to blocked networks; dropped those addresses"
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
    use std::net::Ipv4Addr;
    use std::str::FromStr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("test URL parses")
    }

    fn loopback_allowed() -> AllowList {
        AllowList::parse(["127.0.0.0/8"]).expect("valid CIDR")
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
    async fn refusals_name_the_kind_of_network_never_the_resolved_addresses() {
        let resolver = GuardedResolver::new(AllowList::default());
        let name = Name::from_str("localhost").expect("valid name");
        let Err(error) = resolver.resolve(name).await else {
            panic!("localhost must not resolve through the guard");
        };
        let text = error.to_string();
        assert!(text.contains("(loopback)"), "{text}");
        for address in ["127.0.0.1", "::1", "127."] {
            assert!(!text.contains(address), "{address} leaked: {text}");
        }
        for literal in ["http://2130706433/", "http://[::ffff:10.0.0.7]/"] {
            let text = check_url(&url(literal), &AllowList::default()).expect_err(literal);
            assert!(text.contains("blocked network"), "{text}");
            assert!(
                !text.contains("127.0.0.1") && !text.contains("10.0.0.7"),
                "{text}"
            );
        }
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
