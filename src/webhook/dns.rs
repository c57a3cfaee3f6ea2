//! Lookups at the DNS server the operator names (`dns_server`) instead of the system resolver, with
//! hickory-resolver: the A and AAAA records of a webhook target's host, every address of the answers.
//! [`super::ssrf::resolve_checked`] then vets them all, so the server is trusted for availability, never for
//! safety. No cache, no search domains, no `/etc/hosts`: every lookup asks the server, which is what a
//! pinned resolver (and the DNS-rebinding tests) needs.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Resolver, TokioResolver};

/// How long one attempt waits for its answer, and how many attempts are made.
const TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: usize = 2;

/// The IPv4 and IPv6 addresses of `host` according to the DNS server at `server`. A name the server says does
/// not exist (NXDOMAIN) or has no such records gives an empty list; a server that does not answer in time or
/// answers with an error is an error.
pub async fn lookup(server: SocketAddr, host: &str) -> io::Result<Vec<IpAddr>> {
    // The name as given, not under any search domain.
    let name = if host.ends_with('.') { host.to_string() } else { format!("{host}.") };
    match resolver(server).lookup_ip(name).await {
        Ok(found) => Ok(found.iter().collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// A resolver that asks `server` only. One per lookup: nothing is remembered between lookups.
fn resolver(server: SocketAddr) -> TokioResolver {
    let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
    let mut options = ResolverOpts::default();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = TIMEOUT;
    options.attempts = ATTEMPTS;
    Resolver::builder_with_config(ResolverConfig::from_parts(None, vec![], servers), TokioConnectionProvider::default())
        .with_options(options)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_an_error_not_an_empty_answer() {
        // A bound socket that never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let result = lookup(silent.local_addr().unwrap(), "nobody.test").await;
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < TIMEOUT * (ATTEMPTS as u32 + 2), "bounded: {:?}", started.elapsed());
    }
}
