use std::net::IpAddr;

use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RecordType},
};

use super::*;
use crate::{
    desired::Proto,
    dns::zone::{AppDns, DnsPort, DnsTask, ZoneNames},
};

fn zone(tasks: usize) -> Zone {
    let names = ZoneNames { domain: "mesos".into(), vip_domain: "l4lb.thisdcos.directory".into(), ttl: 5, ns_addrs: vec![IpAddr::from([127, 0, 0, 1])] };
    let mut zone = Zone::new(names);
    let task = |i: usize| {
        let mut t = DnsTask::new(&format!("web.{i}"), Some("agent-S1"));
        t.addr = Some(IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8 + 1]));
        t.host = t.addr;
        t.ports = vec![DnsPort { port: 31000, protocols: vec![Proto::Tcp], name: String::new() }];
        t
    };
    zone.set_app("/web", Some(AppDns { app_id: "/web".into(), tasks: (0..tasks).map(task).collect(), vips: Vec::new() }));
    zone
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 0x4242;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

fn reply(handled: Handled) -> Message {
    match handled {
        Handled::Reply(r) | Handled::Outside(r) => Message::from_vec(&r.bytes).unwrap(),
        Handled::Dropped => panic!("dropped"),
    }
}

#[test]
fn answers_rotate_and_fit_the_client() {
    let zone = zone(3);
    let first = reply(answer(&zone, &query("web.marathon.mesos.", RecordType::A, None), Transport::Udp, 0));
    let second = reply(answer(&zone, &query("WEB.Marathon.mesos.", RecordType::A, None), Transport::Udp, 1));
    assert_eq!((first.answers.len(), first.metadata.id, first.metadata.authoritative), (3, 0x4242, true));
    assert_ne!(first.answers[0], second.answers[0], "rotated");
    // 100 addresses: 512 bytes without EDNS, the client's size with it, everything over TCP.
    let zone = self::zone(100);
    for (edns, transport, max) in [(None, Transport::Udp, 512), (Some(1232), Transport::Udp, 1232), (Some(4096), Transport::Udp, 1232)] {
        let Handled::Reply(r) = answer(&zone, &query("web.marathon.mesos.", RecordType::A, edns), transport, 0) else { panic!() };
        assert!(r.bytes.len() <= max && r.truncated, "{edns:?}: {} bytes", r.bytes.len());
        assert!(Message::from_vec(&r.bytes).unwrap().metadata.truncation);
    }
    let full = reply(answer(&zone, &query("web.marathon.mesos.", RecordType::A, None), Transport::Tcp, 0));
    assert_eq!((full.answers.len(), full.metadata.truncation), (100, false));
}

#[test]
fn codes_for_unknown_names_other_types_and_outside_names() {
    let zone = zone(1);
    let nx = reply(answer(&zone, &query("nope.marathon.mesos.", RecordType::A, None), Transport::Udp, 0));
    assert_eq!((nx.metadata.response_code, nx.authorities.len()), (ResponseCode::NXDomain, 1));
    let nodata = reply(answer(&zone, &query("web.marathon.mesos.", RecordType::AAAA, Some(1232)), Transport::Udp, 0));
    assert_eq!((nodata.metadata.response_code, nodata.answers.len(), nodata.authorities.len()), (ResponseCode::NoError, 0, 1));
    assert!(nodata.edns.is_some(), "EDNS echoed");
    let refused = reply(answer(&zone, &query("example.com.", RecordType::A, None), Transport::Udp, 0));
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    let zone = zone(1);
    let good = query("web.marathon.mesos.", RecordType::A, None);
    let formerr = |bytes: &[u8]| match answer(&zone, bytes, Transport::Udp, 0) {
        Handled::Reply(r) => r.rcode == ResponseCode::FormErr && r.qtype.is_none(),
        _ => false,
    };
    assert!(formerr(&good[..good.len() - 3]), "truncated question");
    // A name whose compression pointer points at itself.
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert!(formerr(&looped), "compression loop");
    // Counts that promise more than there is.
    let mut counts = good.clone();
    counts[5] = 3;
    assert!(formerr(&counts), "wrong counts");
    // A 64-byte label.
    let mut long = good[..12].to_vec();
    long.push(64);
    long.extend_from_slice(&[b'a'; 64]);
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert!(formerr(&long), "oversized label");
    assert!(matches!(answer(&zone, &[1, 2, 3], Transport::Udp, 0), Handled::Dropped), "no header");
    // A response is never answered (no reflection loops between servers).
    let mut response = good.clone();
    response[2] |= 0x80;
    assert!(matches!(answer(&zone, &response, Transport::Udp, 0), Handled::Dropped));
}

/// Seeded mutations of valid queries: every one is answered or dropped, none panics.
#[test]
fn fuzzed_queries_never_panic() {
    let zone = zone(5);
    let seeds = [query("web.marathon.mesos.", RecordType::A, Some(1232)), query("_web._tcp.marathon.mesos.", RecordType::SRV, None), query("mesos.", RecordType::SOA, None)];
    let mut state: u64 = std::env::var("LB_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_d115);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..50_000 {
        let mut bytes = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = next() as usize % bytes.len();
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes.truncate(at.max(1)),
                _ => bytes.insert(at, next() as u8),
            }
        }
        let _ = answer(&zone, &bytes, if i % 2 == 0 { Transport::Udp } else { Transport::Tcp }, i);
    }
}
