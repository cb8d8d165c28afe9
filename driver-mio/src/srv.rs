//! Edge discovery by DNS SRV, as cloudflared does it without `--edge`: one SRV query for the
//! (regional) service to the system's name servers, then the first two targets' addresses;
//! and the TXT record of `auto`'s protocol percentages.
//! It runs once, before the loop starts, so it may block; messages are built and parsed by
//! hickory-proto (no runtime: its `tokio` feature is off), the name servers come from
//! /etc/resolv.conf (resolv-conf), target addresses from `getaddrinfo`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use burrow_core::tunnel::supervisor::region_targets;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// How long one name server has to answer an SRV query.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The SRV targets of `service` (`host`, `port`), in the order the name server gave them.
pub fn lookup(service: &str) -> Result<Vec<(String, u16)>, String> {
    let answer = query(service, RecordType::SRV, None)?;
    targets(&answer).map_err(|e| format!("SRV {service}: {e}"))
}

/// The first TXT record of `name`, its strings joined (the protocol percentages), asked of
/// the name servers in turn within `timeout` all together (core's deadline).
pub fn txt(name: &str, timeout: Duration) -> Result<String, String> {
    let answer = query(name, RecordType::TXT, Some(timeout))?;
    first_txt(&answer)
        .ok_or_else(|| format!("TXT {name}: no record ({})", answer.metadata.response_code))
}

fn first_txt(answer: &Message) -> Option<String> {
    answer.answers.iter().find_map(|r| match &r.data {
        RData::TXT(txt) => {
            let bytes: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            String::from_utf8(bytes).ok()
        }
        _ => None,
    })
}

/// Asks the system's name servers in turn for `name`'s `kind` records: each within
/// [`TIMEOUT`], or all of them within `total`.
fn query(name: &str, kind: RecordType, total: Option<Duration>) -> Result<Message, String> {
    let start = Instant::now();
    let conf = std::fs::read("/etc/resolv.conf").map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    let conf = resolv_conf::Config::parse(&conf).map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    let service = name;
    let name = Name::from_ascii(name).map_err(|e| format!("{kind} {service}: {e}"))?;
    let mut id = [0u8; 2];
    let _ = getrandom::fill(&mut id);
    let id = u16::from_be_bytes(id);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, kind));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let mut last = format!("{kind} {service}: no name server in /etc/resolv.conf");
    for ns in &conf.nameservers {
        let server = SocketAddr::new(IpAddr::from(ns), 53);
        let deadline = match total {
            Some(t) => start + t,
            None => Instant::now() + TIMEOUT,
        };
        if Instant::now() >= deadline {
            return Err(format!("{kind} {service}: no answer within {total:?}"));
        }
        match ask(server, id, &bytes, deadline) {
            Ok(answer) => return Ok(answer),
            Err(e) => last = format!("{kind} {service} from {server}: {e}"),
        }
    }
    Err(last)
}

fn ask(server: SocketAddr, id: u16, query: &[u8], deadline: Instant) -> std::io::Result<Message> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    socket.send(query)?;
    let mut buf = [0u8; 4096];
    loop {
        // The deadline holds across answers skipped below.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        let n = socket.recv(&mut buf)?;
        // Anything but the answer to this query (a late answer to another) is skipped.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id && m.metadata.message_type == MessageType::Response => {
                return Ok(m)
            }
            _ => continue,
        }
    }
}

/// The SRV records of an answer.
fn targets(answer: &Message) -> Result<Vec<(String, u16)>, String> {
    let found: Vec<(String, u16)> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_utf8(), srv.port)),
            _ => None,
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "no SRV records ({})",
            answer.metadata.response_code
        ));
    }
    Ok(found)
}

/// The addresses of the targets that are regions (core's [`region_targets`]).
pub fn regions(targets: &[(String, u16)]) -> Result<Vec<Vec<SocketAddr>>, String> {
    region_targets(targets)
        .iter()
        .map(|(host, port)| {
            (host.trim_end_matches('.'), *port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .map_err(|e| format!("{host}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::rdata::SRV;
    use hickory_proto::rr::Record;

    use super::*;

    #[test]
    fn srv_answers_become_targets_in_order() {
        let mut m = Message::response(0, OpCode::Query);
        let name = Name::from_ascii("_v2-origintunneld._tcp.argotunnel.com.").unwrap();
        for (i, host) in ["region1.v2.argotunnel.com.", "region2.v2.argotunnel.com."]
            .into_iter()
            .enumerate()
        {
            let srv = SRV::new(1, 1, 7844 + i as u16, Name::from_ascii(host).unwrap());
            m.add_answer(Record::from_rdata(name.clone(), 300, RData::SRV(srv)));
        }
        let parsed = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(
            targets(&parsed).unwrap(),
            [
                ("region1.v2.argotunnel.com.".to_owned(), 7844),
                ("region2.v2.argotunnel.com.".to_owned(), 7845)
            ]
        );
        assert!(targets(&Message::query()).is_err());
    }

    #[test]
    fn txt_strings_are_joined() {
        use hickory_proto::rr::rdata::TXT;
        let mut m = Message::response(0, OpCode::Query);
        let name = Name::from_ascii("protocol-v2.argotunnel.com.").unwrap();
        let txt = TXT::new(vec![
            r#"[{"protocol":"quic","#.into(),
            r#""percentage":100}]"#.into(),
        ]);
        m.add_answer(Record::from_rdata(name, 300, RData::TXT(txt)));
        let parsed = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(
            first_txt(&parsed).as_deref(),
            Some(r#"[{"protocol":"quic","percentage":100}]"#)
        );
        assert_eq!(first_txt(&Message::query()), None);
    }
}
