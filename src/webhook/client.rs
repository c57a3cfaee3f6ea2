//! The one outbound HTTP client: keep-alive pooled, no redirects, a timeout, and a DNS resolver that
//! refuses names resolving to forbidden addresses (checked after resolution, so DNS rebinding cannot
//! slip through). Literal IP targets are checked before the request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::ssrf::{Guard, resolve_checked};

/// How much of a target's response body is kept in the attempt log.
pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

struct GuardedResolver(Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = resolve_checked(&guard, name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What came back from one POST.
#[derive(Debug, Clone)]
pub struct Response {
    pub status_code: Option<u16>,
    pub duration: Duration,
    /// A class of failure: `timeout`, `dns`, `connect`, `tls`, `ssrf`, `http_status`, `read`, `request`.
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub body_excerpt: Option<String>,
    pub retry_after: Option<String>,
}

/// Header names a subscription's `headers` may not set: what hsda says of the body and the request itself
/// (a `content-encoding: gzip` on a plain JSON body breaks receivers that decode before they verify), the
/// connection's own (hop-by-hop, RFC 9110 7.6.1), and the signature's.
const RESERVED_HEADERS: [&str; 17] = [
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

/// Whether a subscription's extra header `name` (lower case) is one it may not set ([`RESERVED_HEADERS`], or
/// any `webhook-*`): refused when a subscription is made or changed, and left out at delivery (one stored
/// before a name was refused is not sent).
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name) || name.starts_with("webhook-")
}

#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    guard: Arc<Guard>,
}

impl WebhookClient {
    pub fn new(guard: Guard, timeout: Duration) -> anyhow::Result<WebhookClient> {
        let guard = Arc::new(guard);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Never through a proxy from HTTP_PROXY and the like: the proxy would resolve and connect to the
            // target itself, past the SSRF guard's resolver.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("hsda/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            .build()?;
        Ok(WebhookClient { http, guard })
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// POSTs `body` with `headers` to `url`; never fails, the outcome says what happened.
    pub async fn post(&self, url: &str, headers: &[(String, String)], body: String) -> Response {
        let started = Instant::now();
        let fail = |class: &'static str, error: String| Response {
            status_code: None,
            duration: started.elapsed(),
            error_class: Some(class),
            error: Some(error.replace('\0', "\u{FFFD}")),
            body_excerpt: None,
            retry_after: None,
        };
        // Trimmed, and without a #fragment (never sent anyway): a URL stored before either was refused still
        // goes.
        let url = url.trim();
        let url = url.split_once('#').map_or(url, |(before, _)| before);
        let parsed = match self.guard.parse_target_url(url) {
            Ok(u) => u,
            Err(e) => return fail("ssrf", e.to_string()),
        };
        if let Some(ip) = parsed.host_str().and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
            && let Err(e) = self.guard.check_ip(ip)
        {
            return fail("ssrf", e.to_string());
        }
        let mut request = self.http.post(parsed).header("content-type", "application/json").body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return fail(classify(&e), describe(&e)),
        };
        let status = response.status();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut excerpt = BytesMut::new();
        let mut stream = response.bytes_stream();
        let mut read_error = None;
        // A 2xx is a success whatever its body: only the excerpt is wanted, so a body that trickles in does
        // not hold the attempt (and its lane's slot) until the timeout. A failure's body may say why: it gets
        // the whole timeout.
        let body_deadline = status.is_success().then(|| tokio::time::Instant::now() + SUCCESS_BODY_WAIT);
        loop {
            let next = match body_deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => stream.next().await,
            };
            let Some(chunk) = next else { break };
            match chunk {
                Ok(chunk) => {
                    let room = RESPONSE_EXCERPT_BYTES.saturating_sub(excerpt.len());
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if excerpt.len() >= RESPONSE_EXCERPT_BYTES {
                        break; // The rest is not needed; dropping the stream closes the response.
                    }
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        let success = status.is_success();
        Response {
            status_code: Some(status.as_u16()),
            duration: started.elapsed(),
            error_class: if success {
                None
            } else if read_error.is_some() {
                Some("read")
            } else {
                Some("http_status")
            },
            error: match (success, &read_error) {
                (true, _) => None,
                (false, None) => Some(format!("the target answered {status}")),
                (false, Some(e)) => {
                    Some(format!("the target answered {status}, then its body broke off: {}", chain(e)))
                }
            },
            // A NUL would make PostgreSQL refuse the attempt's record (and the batch it shares with others).
            body_excerpt: Some(
                String::from_utf8_lossy(without_cut_character(&excerpt, RESPONSE_EXCERPT_BYTES))
                    .replace('\0', "\u{FFFD}"),
            ),
            retry_after,
        }
    }
}

/// How long the body of a 2xx answer is read for its excerpt, after its head came.
const SUCCESS_BODY_WAIT: Duration = Duration::from_secs(1);

/// An excerpt cut at `limit` bytes without the character the cut fell in (which would show as U+FFFD).
fn without_cut_character(bytes: &[u8], limit: usize) -> &[u8] {
    match bytes.utf8_chunks().last() {
        Some(last)
            if bytes.len() >= limit && std::str::from_utf8(last.invalid()).is_err_and(|e| e.error_len().is_none()) =>
        {
            &bytes[..bytes.len() - last.invalid().len()]
        }
        _ => bytes,
    }
}

/// An error with its causes (`error sending request: connection refused`).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn describe(e: &reqwest::Error) -> String {
    chain(e)
}

/// A connection the target reset or closed under the request (after the TCP connect succeeded): classed
/// `read`, not `connect`, so a subscriber tells a target that dropped the request from one nobody could reach.
fn connection_lost(text: &str) -> bool {
    ["connection reset", "connection closed", "connection aborted", "broken pipe"].iter().any(|m| text.contains(m))
}

fn classify(e: &reqwest::Error) -> &'static str {
    let text = chain(e).to_lowercase();
    if e.is_timeout() {
        "timeout"
    } else if text.contains("is private, loopback") {
        "ssrf"
    } else if text.contains("dns") || text.contains("resolve") || text.contains("lookup") {
        "dns"
    } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
        "tls"
    } else if e.is_connect() {
        "connect"
    } else if connection_lost(&text) {
        "read"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use super::without_cut_character;

    #[test]
    fn an_excerpt_drops_only_a_character_its_limit_cut() {
        let text = "aé€".as_bytes(); // 1 + 2 + 3 bytes
        assert_eq!(without_cut_character(&text[..5], 5), "aé".as_bytes(), "the euro sign was cut");
        assert_eq!(without_cut_character(&text[..2], 2), b"a", "the é was cut");
        assert_eq!(without_cut_character(text, 6), text, "nothing cut");
        // Invalid bytes the target sent are kept (shown as U+FFFD), and a body shorter than the limit is as sent.
        assert_eq!(without_cut_character(b"ab\xff", 3), b"ab\xff");
        assert_eq!(without_cut_character(&text[..5], 4096), &text[..5]);
    }
}
