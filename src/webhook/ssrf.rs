//! Defence against server-side request forgery: which target addresses hsda refuses to call.
//!
//! A subscriber chooses the URL hsda posts to, so without a guard a subscription could make the server
//! reach its own loopback services, the private network it runs in or a cloud metadata endpoint. Targets
//! are checked twice: [`Guard::parse_target_url`] when a subscription is created (scheme, userinfo and
//! literal IP hosts), and [`resolve_checked`] before every delivery, after DNS resolution, so a name that
//! later resolves to a private address (DNS rebinding) is refused too. The delivery must then connect to
//! one of the addresses returned, never resolve the name again. An operator [`AllowList`] of CIDR ranges
//! exempts addresses from the check (for tests and on-premises receivers).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

/// IPv4 ranges that are never valid webhook targets (RFC 6890 special-purpose registry, among others).
const FORBIDDEN_V4: &[Ipv4Net] = &[
    // "this network", including 0.0.0.0
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    // private (RFC 1918)
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    // shared address space, carrier-grade NAT (RFC 6598)
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    // loopback
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    // link-local, including the 169.254.169.254 cloud metadata service
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    // private (RFC 1918)
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    // IETF protocol assignments (RFC 6890)
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    // documentation TEST-NET-1 (RFC 5737)
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24),
    // deprecated 6to4 relay anycast (RFC 7526)
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24),
    // private (RFC 1918)
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    // benchmarking (RFC 2544)
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
    // documentation TEST-NET-2
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24),
    // documentation TEST-NET-3
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24),
    // multicast
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    // reserved, including the limited broadcast 255.255.255.255
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges that are never valid webhook targets. Ranges that embed an IPv4 address (mapped,
/// compatible, NAT64, 6to4) are not listed: their embedded address is checked instead.
const FORBIDDEN_V6: &[Ipv6Net] = &[
    // discard-only (RFC 6666)
    Ipv6Net::new_assert(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    // local-use NAT64 (RFC 8215): translates into networks of the operator's choice
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    // Teredo (RFC 4380): tunnels to an obfuscated IPv4 address
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    // documentation (RFC 3849)
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    // documentation (RFC 9637)
    Ipv6Net::new_assert(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    // unique local (RFC 4193)
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    // link-local
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // deprecated site-local (RFC 3879)
    Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    // multicast
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Whether `ip` lies in a range hsda never delivers to on its own accord: loopback, unspecified,
/// private, carrier-grade NAT, link-local (cloud metadata), multicast, broadcast, reserved, benchmarking
/// and documentation ranges. An IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`)
/// is judged by the embedded address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    FORBIDDEN_V4.iter().any(|net| net.contains(&ip))
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    if let Some(v4) = embedded_v4(ip) {
        return is_forbidden_v4(v4);
    }
    FORBIDDEN_V6.iter().any(|net| net.contains(&ip))
}

/// The IPv4 address embedded in an IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 (well-known prefix)
/// or 6to4 address. `::` and `::1` are not treated as IPv4-compatible.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let low = Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
    match seg {
        // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, deprecated) and ::ffff:0:a.b.c.d (IPv4-translated,
        // RFC 2765: a SIIT translator turns it into a.b.c.d)
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        // 64:ff9b::a.b.c.d (NAT64 well-known prefix, RFC 6052)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 2002:aabb:ccdd::/48 (6to4, RFC 3056)
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// Why an operator's allow-list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{entry}` is not an IP network in CIDR form (like `10.0.0.0/8` or `::1/128`) nor an IP address")]
pub struct AllowListError {
    /// The refused entry, trimmed.
    pub entry: String,
}

/// Networks an operator exempts from [`is_forbidden`], written as a comma-separated CIDR list
/// (`127.0.0.0/8,::1/128`). A bare address counts as a single-host network. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    /// Parses a comma-separated list of CIDR networks or addresses; blanks around entries and empty entries
    /// are ignored, so `""` gives the empty list.
    pub fn parse(text: &str) -> Result<Self, AllowListError> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| AllowListError { entry: entry.to_owned() })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `ip` lies in one of the listed networks. An IPv6 address embedding an IPv4 one also matches
    /// when its embedded address does, so `127.0.0.0/8` admits `::ffff:127.0.0.1`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.0.iter().any(|net| net.contains(&ip) || embedded.is_some_and(|inner| net.contains(&inner)))
    }

    /// Whether the list holds no network.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The listed networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

impl FromStr for AllowList {
    type Err = AllowListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// Why a target address was refused or could not be found.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The target is (or resolves to) an address in a forbidden range that the allow-list does not exempt.
    #[error(
        "the target address {ip} is private, loopback, link-local or otherwise reserved; deliveries to it are refused"
    )]
    Forbidden {
        /// The refused address.
        ip: IpAddr,
    },
    /// Name resolution failed.
    #[error("could not resolve the target host `{host}`")]
    Resolve {
        /// The host that was looked up.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Name resolution gave no address.
    #[error("the target host `{host}` has no address")]
    NoAddress {
        /// The host that was looked up.
        host: String,
    },
}

/// The address policy for outgoing deliveries: forbidden ranges, minus the operator's allow-list, and where
/// target names are looked up.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Networks exempted from the forbidden ranges.
    pub allow: AllowList,
    /// The DNS server target names are resolved at (`dns_server`); `None` means the system resolver.
    pub dns_server: Option<SocketAddr>,
}

impl Guard {
    /// A guard exempting the networks of `allow`, resolving names with the system resolver.
    pub fn new(allow: AllowList) -> Self {
        Self { allow, dns_server: None }
    }

    /// The same guard, resolving target names at `server` instead of the system resolver (when `Some`).
    pub fn with_dns_server(self, server: Option<SocketAddr>) -> Self {
        Self { dns_server: server, ..self }
    }

    /// Accepts `ip` unless it is forbidden and not allow-listed.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        if is_forbidden(ip) && !self.allow.contains(ip) { Err(SsrfError::Forbidden { ip }) } else { Ok(()) }
    }

    /// Parses and vets a subscription's target URL: `http` or `https` only, a host required, no
    /// `user:password@`, and a literal IP host must pass [`Guard::check_ip`]. IPv4 hosts in the odd forms that
    /// URL parsers accept (`2130706433`, `0177.0.0.1`, `0x7f.1`) are normalized before the check. Names are
    /// not resolved here: that is [`resolve_checked`]'s job at delivery time.
    pub fn parse_target_url(&self, text: &str) -> Result<Url, TargetError> {
        if text.len() > MAX_TARGET_URL_BYTES {
            return Err(TargetError::TooLong);
        }
        if text.trim() != text {
            return Err(TargetError::Whitespace);
        }
        let url = Url::parse(text).map_err(TargetError::Invalid)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Scheme { scheme: url.scheme().to_owned() });
        }
        if url.port() == Some(0) {
            return Err(TargetError::PortZero);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::UserInfo);
        }
        if url.fragment().is_some() {
            return Err(TargetError::Fragment);
        }
        let ip = match url.host() {
            None => return Err(TargetError::MissingHost),
            Some(Host::Domain("")) => {
                return Err(TargetError::MissingHost);
            }
            Some(Host::Domain(_)) => None,
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        };
        if let Some(ip) = ip {
            self.check_ip(ip).map_err(|_| TargetError::Forbidden { ip })?;
        }
        Ok(url)
    }
}

/// The longest target URL taken (as browsers and most HTTP servers take; a longer one is a mistake).
pub const MAX_TARGET_URL_BYTES: usize = 4096;

/// Why a subscription's target URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Longer than [`MAX_TARGET_URL_BYTES`].
    #[error("`url` is longer than 4096 bytes")]
    TooLong,
    /// Spaces or line breaks around it (pasted with them, most likely).
    #[error("`url` must not begin or end with whitespace")]
    Whitespace,
    /// Port 0, which nothing listens on.
    #[error("`url` names port 0")]
    PortZero,
    /// Not a URL at all.
    #[error("`url` is not a valid absolute URL: {0}")]
    Invalid(#[source] url::ParseError),
    /// A scheme other than `http` or `https`.
    #[error("`url` must use http or https, not `{scheme}`")]
    Scheme {
        /// The refused scheme.
        scheme: String,
    },
    /// No host to deliver to.
    #[error("`url` must name a host")]
    MissingHost,
    /// Credentials in the URL.
    #[error("`url` must not carry a user name or password; use `headers` for credentials")]
    UserInfo,
    /// A `#fragment`, which HTTP never sends: the target would not get what the URL says.
    #[error("`url` must not have a #fragment (it is never sent to the target)")]
    Fragment,
    /// A literal IP host in a forbidden range.
    #[error(
        "`url` points at {ip}, a private, loopback, link-local or otherwise reserved address; deliveries to it are refused"
    )]
    Forbidden {
        /// The refused address.
        ip: IpAddr,
    },
}

/// Resolves `host` (a name, an IP literal, or a bracketed IPv6 literal as in [`Url::host_str`]) and
/// returns those of its socket addresses on `port` that are permitted, refusing the name only if none is.
/// Callers connect to one of the returned addresses rather than resolving the name again, so a forbidden
/// address a name also has (`localhost` is often 127.0.0.1 and ::1; rebinding mixes public and private
/// answers) is never connected to. Names are looked up at the guard's `dns_server` when it has one, else
/// with the system resolver.
pub async fn resolve_checked(guard: &Guard, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let resolve_error = |source| SsrfError::Resolve { host: host.to_owned(), source };
    let addrs: Vec<SocketAddr> = match (bare.parse::<IpAddr>(), guard.dns_server) {
        (Ok(ip), _) => vec![SocketAddr::new(ip, port)],
        (Err(_), Some(server)) => super::dns::lookup(server, bare)
            .await
            .map_err(resolve_error)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        (Err(_), None) => tokio::net::lookup_host((bare, port)).await.map_err(resolve_error)?.collect(),
    };
    if addrs.is_empty() {
        return Err(SsrfError::NoAddress { host: host.to_owned() });
    }
    let mut refused = None;
    let permitted: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|addr| match guard.check_ip(addr.ip()) {
            Ok(()) => true,
            Err(e) => {
                refused.get_or_insert(e);
                false
            }
        })
        .collect();
    match refused {
        Some(e) if permitted.is_empty() => Err(e),
        _ => Ok(permitted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused input and a check of the error it must give.
    type Case = (&'static str, fn(&TargetError) -> bool);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("bad test address {s}"))
    }

    const FORBIDDEN: &[&str] = &[
        // IPv4
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "192.168.255.255",
        "169.254.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "198.18.0.1",
        "198.19.255.255",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "192.0.0.8",
        "192.88.99.1",
        // IPv6
        "::1",
        "::",
        "fc00::1",
        "fd12:3456:789a::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "2001:db8:ffff::1",
        "3fff::1",
        "100::1",
        "2001::1",
        "64:ff9b:1::1",
        // IPv6 embedding a forbidden IPv4
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::10.0.0.1",
        "::ffff:0:127.0.0.1",
        "::ffff:0:a00:1",
        "::ffff:0:a9fe:a9fe",
        "64:ff9b::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::1",
        "2002:c0a8:0101::1",
    ];

    const ALLOWED: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
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
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "2001:4860:4860::8888",
        "2001:db9::1",
        "fbff::1",
        "fe00::1",
        "::ffff:8.8.8.8",
        "::8.8.8.8",
        "::ffff:0:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:0808:0808::1",
    ];

    #[test]
    fn forbidden_ranges() {
        for s in FORBIDDEN {
            assert!(is_forbidden(ip(s)), "{s} should be forbidden");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for s in ALLOWED {
            assert!(!is_forbidden(ip(s)), "{s} should be allowed");
        }
    }

    #[test]
    fn guard_refuses_without_allow_list() {
        let guard = Guard::default();
        for s in FORBIDDEN {
            assert!(matches!(guard.check_ip(ip(s)), Err(SsrfError::Forbidden { .. })), "{s}");
        }
        for s in ALLOWED {
            assert!(guard.check_ip(ip(s)).is_ok(), "{s}");
        }
    }

    #[test]
    fn allow_list_exempts_only_its_networks() {
        let guard = Guard::new(AllowList::parse("127.0.0.0/8, ::1/128,10.1.2.3").expect("parses"));
        for s in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "10.1.2.3"] {
            assert!(guard.check_ip(ip(s)).is_ok(), "{s} is allow-listed");
        }
        for s in ["10.1.2.4", "192.168.1.1", "169.254.169.254", "fe80::1", "::"] {
            assert!(guard.check_ip(ip(s)).is_err(), "{s} is not allow-listed");
        }
    }

    #[test]
    fn allow_list_parsing() {
        assert!(AllowList::parse("").expect("empty").is_empty());
        assert!(AllowList::parse(" , ").expect("blank").is_empty());
        let list: AllowList = "127.0.0.0/8,::1/128".parse().expect("parses");
        assert_eq!(list.networks().len(), 2);
        assert_eq!(list.to_string(), "127.0.0.0/8,::1/128");
        for bad in ["localhost", "10.0.0.0/33", "10.0.0.0/8,nope", "1.2.3"] {
            let err = AllowList::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("CIDR"), "{err}");
        }
        assert_eq!(AllowList::parse("10.0.0.0/8, bogus").expect_err("bogus").entry, "bogus");
    }

    #[test]
    fn target_url_accepts_public_http_and_https() {
        let guard = Guard::default();
        for s in [
            "https://example.com/hooks",
            "http://example.com:8080/x?y=1",
            "https://93.184.216.34/",
            "https://[2606:4700:4700::1111]/in",
            // names are resolved at delivery time, not here
            "http://localhost:9000/",
        ] {
            guard.parse_target_url(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn target_url_refusals() {
        let guard = Guard::default();
        let cases: &[Case] = &[
            ("not a url", |e| matches!(e, TargetError::Invalid(_))),
            ("/relative/path", |e| matches!(e, TargetError::Invalid(_))),
            ("ftp://example.com/", |e| matches!(e, TargetError::Scheme { .. })),
            ("file:///etc/passwd", |e| matches!(e, TargetError::Scheme { .. })),
            ("gopher://example.com/", |e| matches!(e, TargetError::Scheme { .. })),
            ("unix:/var/run/x.sock", |e| matches!(e, TargetError::Scheme { .. })),
            ("https://user:pw@example.com/", |e| matches!(e, TargetError::UserInfo)),
            ("https://user@example.com/", |e| matches!(e, TargetError::UserInfo)),
            ("https://:pw@example.com/", |e| matches!(e, TargetError::UserInfo)),
            ("https://example.com/hooks?t=1#part", |e| matches!(e, TargetError::Fragment)),
            ("https://example.com/#", |e| matches!(e, TargetError::Fragment)),
            ("http://", |e| matches!(e, TargetError::Invalid(_))),
            ("http://127.0.0.1/", |e| matches!(e, TargetError::Forbidden { .. })),
            ("http://169.254.169.254/latest/meta-data/", |e| matches!(e, TargetError::Forbidden { .. })),
            ("http://[::1]:8080/", |e| matches!(e, TargetError::Forbidden { .. })),
            ("http://[::ffff:127.0.0.1]/", |e| matches!(e, TargetError::Forbidden { .. })),
            ("http://[fd00::1]/", |e| matches!(e, TargetError::Forbidden { .. })),
            ("http://0.0.0.0/", |e| matches!(e, TargetError::Forbidden { .. })),
        ];
        for (s, expected) in cases {
            let err = guard.parse_target_url(s).expect_err(s);
            assert!(expected(&err), "{s} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn odd_ipv4_forms_are_normalized_then_refused() {
        let guard = Guard::default();
        for s in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://017700000001/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://10.0x00.0.1/",
        ] {
            let err = guard.parse_target_url(s).expect_err(s);
            assert!(matches!(err, TargetError::Forbidden { .. }), "{s} gave {err:?}");
        }
        // the url crate really does normalize these to a dotted quad
        let url = Url::parse("http://0x7f.1/").expect("parses");
        assert_eq!(url.host(), Some(Host::Ipv4(Ipv4Addr::new(127, 0, 0, 1))));
        let url = Url::parse("http://2130706433/").expect("parses");
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        let url = Url::parse("http://0177.0.0.1/").expect("parses");
        assert_eq!(url.host_str(), Some("127.0.0.1"));
    }

    #[test]
    fn urls_nothing_could_deliver_to_are_refused_before_any_lookup() {
        let guard = Guard::default();
        let long = format!("https://example.org/{}", "a".repeat(MAX_TARGET_URL_BYTES));
        assert_eq!(guard.parse_target_url(&long), Err(TargetError::TooLong));
        assert!(guard.parse_target_url(&long[..MAX_TARGET_URL_BYTES]).is_ok(), "the longest taken");
        for pasted in [" https://example.org/", "https://example.org/\n", "\thttps://example.org/"] {
            assert_eq!(guard.parse_target_url(pasted), Err(TargetError::Whitespace), "{pasted:?}");
        }
        assert_eq!(guard.parse_target_url("https://example.org:0/"), Err(TargetError::PortZero));
        assert!(guard.parse_target_url("https://example.org:8443/").is_ok());
    }

    #[test]
    fn allow_list_applies_to_literal_targets() {
        let guard = Guard::new(AllowList::parse("127.0.0.0/8").expect("parses"));
        let url = guard.parse_target_url("http://127.0.0.1:3000/hook").expect("allow-listed");
        assert_eq!(url.port(), Some(3000));
        assert!(guard.parse_target_url("http://10.0.0.1/").is_err());
    }

    #[tokio::test]
    async fn resolve_refuses_forbidden_literals_and_names() {
        let guard = Guard::default();
        assert!(matches!(resolve_checked(&guard, "127.0.0.1", 80).await, Err(SsrfError::Forbidden { .. })));
        assert!(matches!(resolve_checked(&guard, "[::1]", 80).await, Err(SsrfError::Forbidden { .. })));
        // `localhost` resolves from /etc/hosts without the network
        assert!(matches!(resolve_checked(&guard, "localhost", 80).await, Err(SsrfError::Forbidden { .. })));
        let public = resolve_checked(&guard, "93.184.216.34", 443).await.expect("public literal");
        assert_eq!(public, vec![SocketAddr::new(ip("93.184.216.34"), 443)]);
    }

    #[tokio::test]
    async fn resolve_honours_allow_list() {
        let guard = Guard::new(AllowList::parse("127.0.0.0/8,::1/128").expect("parses"));
        let addrs = resolve_checked(&guard, "localhost", 8080).await.expect("localhost allowed");
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.port() == 8080 && a.ip().is_loopback()));
        let v6 = resolve_checked(&guard, "[::1]", 1).await.expect("::1 allowed");
        assert_eq!(v6, vec![SocketAddr::new(ip("::1"), 1)]);
    }

    #[tokio::test]
    async fn resolve_reports_unknown_hosts() {
        // Tests stay on loopback: the name is asked of a DNS "server" on a closed local port, never of the
        // machine's resolver.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let guard = Guard::default().with_dns_server(Some(closed));
        // (Not under `.invalid`: the DNS client answers that special-use domain itself, with no such name.)
        let err = resolve_checked(&guard, "no-such-host.test", 80).await.expect_err("nothing answers");
        assert!(matches!(err, SsrfError::Resolve { .. }), "{err:?}");
    }
}

/// Properties: every spelling of an IPv4 address that URL parsers accept (decimal, octal, hex, short forms,
/// IPv4-mapped and NAT64 IPv6) is judged exactly as the canonical address; parsing never panics.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// One number spelled in decimal, octal (leading `0`) or hex (`0x`, either case).
    fn spell(value: u32, style: u8) -> String {
        match style % 4 {
            0 => value.to_string(),
            1 => format!("0{value:o}"),
            2 => format!("0x{value:x}"),
            _ => format!("0X{value:X}"),
        }
    }

    /// The host forms of one IPv4 address: one, two, three or four dotted parts, the last part holding the
    /// remaining bits, each part in its own base.
    fn ipv4_host(ip: Ipv4Addr, parts: u8, styles: [u8; 4]) -> String {
        let [a, b, c, d] = ip.octets().map(u32::from);
        let numbers: Vec<u32> = match parts % 4 {
            0 => vec![u32::from(ip)],
            1 => vec![a, (b << 16) | (c << 8) | d],
            2 => vec![a, b, (c << 8) | d],
            _ => vec![a, b, c, d],
        };
        numbers.iter().zip(styles).map(|(n, style)| spell(*n, style)).collect::<Vec<_>>().join(".")
    }

    /// An address near the interesting ranges as often as anywhere.
    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (proptest::sample::select(FORBIDDEN_V4.to_vec()), any::<u32>()).prop_map(|(net, bits)| {
                let host_mask = !u32::from(net.netmask());
                Ipv4Addr::from(u32::from(net.network()) | (bits & host_mask))
            }),
        ]
    }

    fn allow_list() -> impl Strategy<Value = AllowList> {
        prop_oneof![
            Just(AllowList::default()),
            (ipv4(), 0u8..=32).prop_map(|(ip, len)| {
                AllowList::parse(&Ipv4Net::new(ip, len).map(|n| n.trunc().to_string()).unwrap_or_default())
                    .expect("a network")
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_ipv4_spelling_is_judged_as_the_address(
            ip in ipv4(),
            parts in any::<u8>(),
            styles in any::<[u8; 4]>(),
            allow in allow_list(),
        ) {
            let guard = Guard::new(allow);
            let canonical = guard.check_ip(IpAddr::V4(ip)).is_ok();
            let host = ipv4_host(ip, parts, styles);
            let url = format!("http://{host}:8080/hook");
            match guard.parse_target_url(&url) {
                Ok(parsed) => {
                    prop_assert!(canonical, "{url} accepted but {ip} is refused");
                    prop_assert_eq!(parsed.host(), Some(Host::Ipv4(ip)));
                }
                Err(TargetError::Forbidden { ip: refused }) => {
                    prop_assert!(!canonical, "{url} refused but {ip} is accepted");
                    prop_assert_eq!(refused, IpAddr::V4(ip));
                }
                Err(other) => prop_assert!(false, "{url}: {other}"),
            }
        }

        #[test]
        fn ipv6_forms_embedding_an_ipv4_address_are_judged_by_it(ip in ipv4(), allow in allow_list()) {
            let guard = Guard::new(allow);
            let canonical = guard.check_ip(IpAddr::V4(ip)).is_ok();
            let [a, b, c, d] = ip.octets();
            let embedded = [
                format!("::ffff:{ip}"),
                format!("::ffff:{:x}:{:x}", u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
                format!("64:ff9b::{ip}"),
            ];
            for text in embedded {
                let v6: Ipv6Addr = text.parse().expect("an IPv6 address");
                prop_assert_eq!(is_forbidden(IpAddr::V6(v6)), is_forbidden(IpAddr::V4(ip)), "{}", text);
                prop_assert_eq!(guard.check_ip(IpAddr::V6(v6)).is_ok(), canonical, "{}", text);
                let url = format!("https://[{text}]/");
                prop_assert_eq!(guard.parse_target_url(&url).is_ok(), canonical, "{}", url);
            }
            // 6to4 carries the address in its second and third groups.
            let six_to_four = Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1);
            prop_assert_eq!(is_forbidden(IpAddr::V6(six_to_four)), is_forbidden(IpAddr::V4(ip)));
        }

        #[test]
        fn parsing_any_text_never_panics(
            text in prop_oneof![
                any::<String>(),
                "(https?|ftp|file)://[a-zA-Z0-9.:@\\[\\]%-]{0,30}(/[a-z]{0,5})?",
            ],
            allow_text in prop_oneof![any::<String>(), "([0-9a-f.:]{1,20}(/[0-9]{1,3})?,?){0,3}"],
        ) {
            let _ = Guard::default().parse_target_url(&text);
            if let Ok(list) = AllowList::parse(&allow_text) {
                prop_assert_eq!(AllowList::parse(&list.to_string()), Ok(list));
            }
        }
    }
}
