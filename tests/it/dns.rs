//! A tiny DNS responder on 127.0.0.1 for the SSRF tests (hsda's `dns_server` setting points at it): it answers
//! A and AAAA questions from a table the test sets, counts the lookups of each name, and can change its answer
//! after the first lookup (DNS rebinding). Unknown names get NXDOMAIN. Written apart from hsda's own client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

#[derive(Default)]
struct Table {
    /// Per name (lower case, no trailing dot): the answer of the first lookup, the second, ... the last one
    /// repeating.
    answers: HashMap<String, Vec<Vec<IpAddr>>>,
    /// Per name and record type: how many questions came.
    asked: HashMap<(String, u16), usize>,
}

#[derive(Clone)]
pub struct DnsServer {
    pub addr: SocketAddr,
    table: Arc<Mutex<Table>>,
}

const A: u16 = 1;
const AAAA: u16 = 28;

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind the DNS responder");
        let addr = socket.local_addr().expect("address");
        let table = Arc::new(Mutex::new(Table::default()));
        let shared = table.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if let Some(answer) = answer(&shared, &buf[..len]) {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        DnsServer { addr, table }
    }

    /// `name` resolves to `sequence[0]` at its first lookup, `sequence[1]` at the second, ..., then to the last
    /// entry for good.
    pub fn set(&self, name: &str, sequence: &[&[IpAddr]]) {
        let answers = sequence.iter().map(|ips| ips.to_vec()).collect();
        self.table.lock().unwrap().answers.insert(name.to_ascii_lowercase(), answers);
    }

    /// How many A questions about `name` came (hsda asks A and AAAA once per lookup).
    pub fn lookups(&self, name: &str) -> usize {
        self.table.lock().unwrap().asked.get(&(name.to_ascii_lowercase(), A)).copied().unwrap_or(0)
    }
}

/// The response to one query datagram, or `None` for something that is not a single-question query.
fn answer(table: &Mutex<Table>, query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // The question: labels up to the zero byte (queries carry no compression), then type and class.
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let addresses = {
        let mut table = table.lock().unwrap();
        let count = table.asked.entry((name.clone(), qtype)).or_default();
        let nth = *count;
        *count += 1;
        table.answers.get(&name).map(|seq| seq[nth.min(seq.len() - 1)].clone())
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, RD copied, RA; rcode 0 (NOERROR) or 3 (NXDOMAIN).
    out.push(0x80 | (query[2] & 0x01));
    out.push(if addresses.is_some() { 0x80 } else { 0x83 });
    let records: Vec<Vec<u8>> = addresses
        .unwrap_or_default()
        .into_iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), A) => Some(v4.octets().to_vec()),
            (IpAddr::V6(v6), AAAA) => Some(v6.octets().to_vec()),
            _ => None,
        })
        .collect();
    for count in [1u16, records.len() as u16, 0, 0] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(query.get(12..question_end)?);
    for data in records {
        out.extend_from_slice(&[0xc0, 12]); // the owner name: a pointer to the question's
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: nothing may cache it
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// hsda's DNS client (`webhook::dns`, used with `dns_server`) against this responder: every address of
/// both record types, nothing for an unknown name, and every lookup asked again (no cache).
#[tokio::test]
async fn the_dns_client_returns_every_address_and_nothing_for_unknown_names() {
    let server = DnsServer::start().await;
    let v4: IpAddr = [127, 0, 0, 9].into();
    let v6: IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
    server.set("both.test", &[&[v4, v6]]);
    let mut found = hsda::webhook::dns::lookup(server.addr, "both.test").await.expect("lookup");
    found.sort();
    assert_eq!(found, vec![v4, v6]);
    let again = hsda::webhook::dns::lookup(server.addr, "both.test").await.expect("second lookup");
    assert_eq!(again.len(), 2);
    assert_eq!(server.lookups("both.test"), 2, "the second lookup asked the server again");
    let unknown = hsda::webhook::dns::lookup(server.addr, "nobody.test").await.expect("NXDOMAIN is an answer");
    assert!(unknown.is_empty(), "{unknown:?}");
}
