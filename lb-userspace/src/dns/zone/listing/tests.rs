use std::collections::BTreeMap;

use super::*;
use crate::dns::zone::DnsPort;

const AGENT: &str = "20150806-231414-16777343-5050-17025-S1";

fn task(id: &str, addr: &str, host: &str, ports: Vec<DnsPort>, host_ports: Vec<u16>) -> DnsTask {
    let mut t = DnsTask::new(id, Some(AGENT));
    t.addr = Some(addr.parse().unwrap());
    t.host = Some(host.parse().unwrap());
    t.ports = ports;
    t.host_ports = host_ports;
    t
}

fn port(port: u16, protocols: &[Proto], name: &str) -> DnsPort {
    DnsPort { port, protocols: protocols.to_vec(), name: name.into() }
}

/// Bridge tasks sharing a host, a named TCP+UDP port, an IPv6 container task, a named VIP.
fn zone() -> Zone {
    let names = ZoneNames { domain: "mesos".into(), vip_domain: "l4lb.thisdcos.directory".into(), ttl: 5, ns_addrs: vec!["192.0.2.53".parse().unwrap()] };
    let mut zone = Zone::new(names);
    let web = |id: &str, hp: u16| task(id, "192.0.2.1", "192.0.2.1", vec![port(hp, &[Proto::Tcp], "http")], vec![hp]);
    zone.set_app("/shop/web", Some(AppDns { app_id: "/shop/web".into(), tasks: vec![web("shop_web.1", 31001), web("shop_web.2", 31002)], vips: vec![("/shop".into(), Proto::Tcp, 80)] }));
    let dns = task("ns.1", "fd00::7", "192.0.2.2", vec![port(53, &[Proto::Udp, Proto::Tcp], "dns")], vec![]);
    zone.set_app("/ns", Some(AppDns { app_id: "/ns".into(), tasks: vec![dns], vips: Vec::new() }));
    zone.set_vip_addrs([(&"/shop".to_owned(), &"11.0.0.7".parse().unwrap())]);
    zone
}

#[test]
fn every_listed_record_is_what_its_name_answers() {
    let zone = zone();
    let records = zone.snapshot().records(None);
    let mut by_name: BTreeMap<&str, Vec<&Data>> = BTreeMap::new();
    records.iter().for_each(|r| by_name.entry(&r.name).or_default().push(&r.data));
    for (name, mut listed) in by_name {
        let Named::Records(_, answered) = zone.records_of(name) else { panic!("{name} is listed but not answered") };
        let mut answered: Vec<&Data> = answered.iter().map(|r| &r.data).collect();
        listed.sort_by_key(|d| d.to_string());
        answered.sort_by_key(|d| d.to_string());
        assert_eq!(listed, answered, "{name}");
    }
    // Each once: two tasks on one host give the app's name and the agent's one address.
    let app_a = records.iter().filter(|r| r.name == "web-shop.marathon.mesos").count();
    assert_eq!(app_a, 1);
}

#[test]
fn listing_has_mesos_dns_names_and_each_zone_alone() {
    let snapshot = zone().snapshot();
    let listed: Vec<String> = snapshot.records(None).iter().map(|r| format!("{} {} {}", r.name, r.data.rtype(), r.data)).collect();
    let has = |line: &str| assert!(listed.iter().any(|l| l.starts_with(line)), "{line} not in {listed:#?}");
    has("mesos SOA ns1.mesos. root.ns1.mesos. 4 60 600 86400 5");
    has("mesos NS ns1.mesos.");
    has("ns1.mesos A 192.0.2.53");
    has("ns.marathon.mesos AAAA fd00::7");
    has("ns.marathon.slave.mesos A 192.0.2.2");
    has("_dns._ns._udp.marathon.mesos SRV 0 1 53 ns-");
    has("_shop._tcp.marathon.l4lb.thisdcos.directory SRV 0 1 80 shop.marathon.l4lb.thisdcos.directory.");
    has("shop.marathon.l4lb.thisdcos.directory A 11.0.0.7");
    let vips = snapshot.records(Some(ZoneId::Vips));
    assert!(vips.iter().all(|r| r.name.ends_with("l4lb.thisdcos.directory")), "{vips:?}");
    assert_eq!(vips[0].data.rtype(), "SOA", "a zone file starts with its SOA");
    let mesos = snapshot.records(Some(ZoneId::Mesos));
    assert_eq!(mesos.len() + vips.len(), listed.len());
}

#[test]
fn enumeration_has_mesos_dns_shape() {
    let enumeration = serde_json::to_value(zone().snapshot().enumerate()).unwrap();
    let frameworks = enumeration["frameworks"].as_array().unwrap();
    assert_eq!(frameworks.len(), 1);
    assert_eq!(frameworks[0]["name"], "marathon");
    let tasks = frameworks[0]["tasks"].as_array().unwrap();
    let web: Vec<_> = tasks.iter().filter(|t| t["name"] == "web.shop").collect();
    assert_eq!(web.iter().map(|t| t["id"].as_str().unwrap()).collect::<Vec<_>>(), ["shop_web.1", "shop_web.2"]);
    let first = web[0]["records"].as_array().unwrap();
    let record = |i: usize| (first[i]["name"].as_str().unwrap(), first[i]["host"].as_str().unwrap(), first[i]["rtype"].as_str().unwrap());
    assert_eq!(record(0), ("web-shop.marathon.mesos.", "192.0.2.1", "A"));
    let tag = &zone().apps().find(|(_, a)| a.app_id == "/shop/web").unwrap().1.tasks[0].tag.clone();
    let srv = first.iter().find(|r| r["name"] == "_web-shop._tcp.marathon.mesos.").unwrap();
    assert_eq!(srv["host"], format!("web-shop-{tag}.marathon.mesos.:31001"));
    assert_eq!(srv["rtype"], "SRV");
    // The second task on the same host does not repeat the app's A record.
    let second = web[1]["records"].as_array().unwrap();
    assert!(second.iter().all(|r| r["name"] != "web-shop.marathon.mesos."), "{second:?}");
}

#[test]
fn one_name_says_where_it_stands() {
    let zone = zone();
    assert_eq!(zone.records_of("example.com."), Named::Outside);
    assert_eq!(zone.records_of("nope.marathon.mesos"), Named::NoName(ZoneId::Mesos));
    assert_eq!(zone.records_of("marathon.mesos"), Named::Records(ZoneId::Mesos, Vec::new()));
    let Named::Records(ZoneId::Mesos, records) = zone.records_of("WEB-SHOP.marathon.mesos.") else { panic!() };
    assert_eq!(records, [Record { name: "web-shop.marathon.mesos".into(), data: Data::A("192.0.2.1".parse().unwrap()) }]);
}
