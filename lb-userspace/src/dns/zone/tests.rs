use super::*;

fn zone() -> Zone {
    let names = ZoneNames { domain: "mesos".into(), vip_domain: "l4lb.thisdcos.directory".into(), ttl: 5, ns_addrs: vec!["127.0.0.1".parse().unwrap()] };
    let mut zone = Zone::new(names);
    let task = |id: &str, addr: &str, host: &str, port: u16| {
        let mut t = DnsTask::new(id, Some("20150806-231414-16777343-5050-17025-S3"));
        t.addr = Some(addr.parse().unwrap());
        t.host = Some(host.parse().unwrap());
        t.ports = vec![DnsPort { port, protocols: vec![Proto::Tcp], name: "http".into() }];
        t.host_ports = vec![31000 + port % 1000];
        t
    };
    let app = AppDns {
        app_id: "/shop/web".into(),
        tasks: vec![task("web.1", "10.0.0.1", "192.0.2.1", 80), task("web.2", "10.0.0.2", "192.0.2.1", 80)],
        vips: vec![("/shop".into(), Proto::Tcp, 5555)],
    };
    zone.set_app("/shop/web", Some(app));
    zone.set_vip_addrs([(&"/shop".to_owned(), &"11.0.0.7".parse().unwrap())]);
    zone
}

fn addrs(lookup: Lookup) -> Vec<String> {
    match lookup {
        Lookup::Name(_, found) => found.addrs.iter().map(|a| a.to_string()).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn app_names_resolve_to_tasks_and_hosts() {
    let zone = zone();
    assert_eq!(addrs(zone.lookup("web-shop.marathon.mesos")), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(addrs(zone.lookup("web-shop.marathon.slave.mesos")), ["192.0.2.1"]);
    let tag = &zone.apps().next().unwrap().1.tasks[0].tag;
    assert!(tag.ends_with("-s3"), "{tag}");
    assert_eq!(addrs(zone.lookup(&format!("web-shop-{tag}.marathon.mesos"))), ["10.0.0.1"]);
    assert_eq!(zone.lookup("web.marathon.mesos"), Lookup::NoName(ZoneId::Mesos));
    assert_eq!(zone.lookup("example.com"), Lookup::Outside);
    assert_eq!(zone.lookup("mesosx"), Lookup::Outside);
    assert!(matches!(zone.lookup("marathon.mesos"), Lookup::Name(ZoneId::Mesos, f) if f == Found::default()));
}

#[test]
fn srv_names_follow_mesos_dns_discovery_rules() {
    let zone = zone();
    let srv = |name: &str| match zone.lookup(name) {
        Lookup::Name(_, found) => found.srv,
        other => panic!("{name}: {other:?}"),
    };
    let tags: Vec<String> = zone.apps().next().unwrap().1.tasks.iter().map(|t| t.tag.clone()).collect();
    let expected: Vec<(u16, String)> = tags.iter().map(|t| (80, format!("web-shop-{t}.marathon.mesos"))).collect();
    assert_eq!(srv("_web-shop._tcp.marathon.mesos"), expected);
    assert_eq!(srv("_http._web-shop._tcp.marathon.mesos"), expected);
    assert_eq!(zone.lookup("_https._web-shop._tcp.marathon.mesos"), Lookup::NoName(ZoneId::Mesos));
    assert_eq!(zone.lookup("_web-shop._udp.marathon.mesos"), Lookup::NoName(ZoneId::Mesos));
    let slave: Vec<(u16, String)> = tags.iter().map(|t| (31080, format!("web-shop-{t}.marathon.slave.mesos"))).collect();
    assert_eq!(srv("_web-shop._udp.marathon.slave.mesos"), slave);
}

#[test]
fn named_vips_have_addresses_and_srv() {
    let mut zone = zone();
    assert_eq!(addrs(zone.lookup("shop.marathon.l4lb.thisdcos.directory")), ["11.0.0.7"]);
    match zone.lookup("_shop._tcp.marathon.l4lb.thisdcos.directory") {
        Lookup::Name(ZoneId::Vips, found) => assert_eq!(found.srv, [(5555, "shop.marathon.l4lb.thisdcos.directory".to_owned())]),
        other => panic!("{other:?}"),
    }
    assert_eq!(zone.lookup("nope.marathon.l4lb.thisdcos.directory"), Lookup::NoName(ZoneId::Vips));
    // An app that is gone takes its names, its VIP ports and its records along.
    zone.set_app("/shop/web", None);
    assert_eq!(zone.lookup("web-shop.marathon.mesos"), Lookup::NoName(ZoneId::Mesos));
    assert_eq!(zone.lookup("_shop._tcp.marathon.l4lb.thisdcos.directory"), Lookup::NoName(ZoneId::Vips));
    assert_eq!(zone.record_count(), 1, "the VIP's address alone");
}
