//! A small DNS stub client, used instead of the system resolver when the operator names a DNS server
//! (`dns_server`): it asks that server for the A and AAAA records of a webhook target's host over UDP and
//! returns every address of the answer section. [`super::ssrf::resolve_checked`] then vets them all, so the
//! server is trusted for availability, never for safety. No cache, no search domains, no `/etc/hosts`: every
//! lookup asks the server, which is what a pinned resolver (and the DNS-rebinding tests) needs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;
const FLAG_RESPONSE: u16 = 0x8000;
const FLAG_TRUNCATED: u16 = 0x0200;
const FLAG_RECURSION_DESIRED: u16 = 0x0100;
const RCODE_NXDOMAIN: u16 = 3;

/// How long one round of questions waits for its answers, and how many rounds are tried.
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);
const ROUNDS: usize = 2;

/// The IPv4 and IPv6 addresses of `host` according to the DNS server at `server`. A name the server says does
/// not exist (NXDOMAIN) or has no such records gives an empty list; a server that does not answer in time, answers
/// with an error code or with a truncated message is an error.
pub async fn lookup(server: SocketAddr, host: &str) -> io::Result<Vec<IpAddr>> {
    let name = encode_name(host)?;
    let local: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await?;
    // A connected socket only receives datagrams from the server itself.
    socket.connect(server).await?;
    for _ in 0..ROUNDS {
        let ids: [u16; 2] = loop {
            let ids = rand::random::<[u16; 2]>();
            if ids[0] != ids[1] {
                break ids;
            }
        };
        let questions = [(ids[0], TYPE_A), (ids[1], TYPE_AAAA)];
        for (id, qtype) in questions {
            socket.send(&query(id, &name, qtype)).await?;
        }
        let mut answers: [Option<io::Result<Vec<IpAddr>>>; 2] = [None, None];
        let round = tokio::time::timeout(ROUND_TIMEOUT, async {
            let mut buf = vec![0u8; 4096];
            while answers.iter().any(Option::is_none) {
                let len = socket.recv(&mut buf).await?;
                for (slot, (id, qtype)) in answers.iter_mut().zip(questions) {
                    if slot.is_none()
                        && let Some(answer) = parse_response(&buf[..len], id, &name, qtype)
                    {
                        *slot = Some(answer);
                    }
                }
            }
            Ok::<(), io::Error>(())
        })
        .await;
        match round {
            Ok(Ok(())) => {
                let mut addrs = Vec::new();
                for answer in answers.into_iter().flatten() {
                    addrs.extend(answer?);
                }
                return Ok(addrs);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => continue, // no complete answer in time: ask again
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("the DNS server {server} did not answer")))
}

/// `host` in DNS wire form: length-prefixed labels and a zero byte. One trailing dot is allowed.
fn encode_name(host: &str) -> io::Result<Vec<u8>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, format!("`{host}` is not a valid DNS name"));
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(invalid());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() > 255 {
        return Err(invalid());
    }
    Ok(out)
}

/// A recursive query for `qtype` records of the wire-form `name`.
fn query(id: u16, name: &[u8], qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 4);
    for word in [id, FLAG_RECURSION_DESIRED, 1, 0, 0, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The addresses in a response to query `id` (`None` when `msg` is not that response: another id, not a
/// response, or another question). An A question yields IPv4 addresses, AAAA IPv6 ones.
fn parse_response(msg: &[u8], id: u16, name: &[u8], qtype: u16) -> Option<io::Result<Vec<IpAddr>>> {
    let word = |at: usize| msg.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    if word(0)? != id {
        return None;
    }
    let flags = word(2)?;
    if flags & FLAG_RESPONSE == 0 || word(4)? != 1 {
        return None;
    }
    // The question must be ours (names compare case-insensitively).
    let question_end = HEADER_LEN + name.len() + 4;
    let question = msg.get(HEADER_LEN..question_end)?;
    if !question[..name.len()].eq_ignore_ascii_case(name) || word(HEADER_LEN + name.len())? != qtype {
        return None;
    }
    let malformed = || Some(Err(io::Error::new(io::ErrorKind::InvalidData, "malformed DNS answer")));
    if flags & FLAG_TRUNCATED != 0 {
        return Some(Err(io::Error::other("the DNS answer was truncated (DNS over TCP is not supported)")));
    }
    match flags & 0x000f {
        0 => {}
        RCODE_NXDOMAIN => return Some(Ok(Vec::new())),
        rcode => return Some(Err(io::Error::other(format!("the DNS server answered with error code {rcode}")))),
    }
    let mut at = question_end;
    let mut addrs = Vec::new();
    for _ in 0..word(6)? {
        let Some(after_name) = skip_name(msg, at) else { return malformed() };
        let (Some(rtype), Some(rclass), Some(rdlen)) = (word(after_name), word(after_name + 2), word(after_name + 8))
        else {
            return malformed();
        };
        let data_at = after_name + 10;
        let Some(data) = msg.get(data_at..data_at + rdlen as usize) else { return malformed() };
        match (rtype, rclass, data.len()) {
            (TYPE_A, CLASS_IN, 4) if qtype == TYPE_A => {
                addrs.push(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])));
            }
            (TYPE_AAAA, CLASS_IN, 16) if qtype == TYPE_AAAA => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                addrs.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            _ => {} // CNAME records of the chain and anything else
        }
        at = data_at + rdlen as usize;
    }
    Some(Ok(addrs))
}

/// The offset just past the (possibly compressed) name starting at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    // At most 128 labels fit in a 255-byte name; the bound also stops malformed input early.
    for _ in 0..128 {
        let len = *msg.get(at)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len,
            // A compression pointer ends the name here.
            0xc0 => return msg.get(at + 1).map(|_| at + 2),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `q` (a query as built by [`query`]) with the given answers, the owner names compressed
    /// as pointers to the question.
    fn respond(q: &[u8], rcode: u16, answers: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = q.to_vec();
        out[2..4].copy_from_slice(&(FLAG_RESPONSE | FLAG_RECURSION_DESIRED | 0x0080 | rcode).to_be_bytes());
        out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (rtype, data) in answers {
            out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn names_are_encoded_as_labels() {
        assert_eq!(encode_name("a.bc").unwrap(), b"\x01a\x02bc\x00");
        assert_eq!(encode_name("a.bc.").unwrap(), b"\x01a\x02bc\x00");
        for bad in ["", ".", "a..b", "é.example", "x".repeat(64).as_str(), "abc.".repeat(70).as_str()] {
            assert!(encode_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_read_and_others_ignored() {
        let name = encode_name("hook.example").unwrap();
        let q = query(7, &name, TYPE_A);
        // A CNAME record first (its data a pointer), then two A records.
        let msg = respond(&q, 0, &[(5, &[0xc0, 12]), (TYPE_A, &[127, 0, 0, 1]), (TYPE_A, &[10, 0, 0, 1])]);
        let addrs = parse_response(&msg, 7, &name, TYPE_A).unwrap().unwrap();
        assert_eq!(addrs, vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([10, 0, 0, 1])]);
        assert!(parse_response(&msg, 8, &name, TYPE_A).is_none(), "another id");
        assert!(parse_response(&msg, 7, &encode_name("other.example").unwrap(), TYPE_A).is_none());
        assert!(parse_response(&q, 7, &name, TYPE_A).is_none(), "a query is not an answer");

        let q6 = query(9, &name, TYPE_AAAA);
        let v6: [u8; 16] = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        let msg = respond(&q6, 0, &[(TYPE_AAAA, &v6)]);
        assert_eq!(parse_response(&msg, 9, &name, TYPE_AAAA).unwrap().unwrap(), vec![IpAddr::V6(v6.into())]);
        // The question is matched case-insensitively.
        let upper = encode_name("HOOK.Example").unwrap();
        assert!(parse_response(&msg, 9, &upper, TYPE_AAAA).is_some());
    }

    #[test]
    fn errors_truncation_and_malformed_answers() {
        let name = encode_name("x.test").unwrap();
        let q = query(1, &name, TYPE_A);
        assert!(parse_response(&respond(&q, RCODE_NXDOMAIN, &[]), 1, &name, TYPE_A).unwrap().unwrap().is_empty());
        assert!(parse_response(&respond(&q, 2, &[]), 1, &name, TYPE_A).unwrap().is_err(), "SERVFAIL");
        let mut truncated = respond(&q, 0, &[]);
        truncated[2] |= (FLAG_TRUNCATED >> 8) as u8;
        assert!(parse_response(&truncated, 1, &name, TYPE_A).unwrap().is_err());
        let mut short = respond(&q, 0, &[(TYPE_A, &[127, 0, 0, 1])]);
        short.truncate(short.len() - 2);
        assert!(parse_response(&short, 1, &name, TYPE_A).unwrap().is_err());
        assert_eq!(skip_name(&[0xc0], 0), None);
        assert_eq!(skip_name(&[0x80, 0], 0), None);
    }

    #[tokio::test]
    async fn looks_up_at_the_given_server() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let answering = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for _ in 0..2 {
                let (len, from) = server.recv_from(&mut buf).await.unwrap();
                let q = &buf[..len];
                let qtype = u16::from_be_bytes([q[len - 4], q[len - 3]]);
                let msg = if qtype == TYPE_A {
                    respond(q, 0, &[(TYPE_A, &[127, 0, 0, 9])])
                } else {
                    respond(q, 0, &[(TYPE_AAAA, &Ipv6Addr::LOCALHOST.octets())])
                };
                server.send_to(&msg, from).await.unwrap();
            }
        });
        let mut addrs = lookup(addr, "rebind.test").await.unwrap();
        addrs.sort();
        assert_eq!(addrs, vec![IpAddr::from([127, 0, 0, 9]), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        answering.await.unwrap();
    }
}
