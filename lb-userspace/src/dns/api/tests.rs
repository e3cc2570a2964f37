use serde_json::Value;

use super::*;
use crate::{
    desired::Proto,
    dns::{
        zone::{AppDns, DnsPort, DnsTask},
        Forward,
    },
};

fn api() -> Api {
    let config = DnsConfig {
        listen: vec!["127.0.0.1:53".parse().unwrap()],
        domain: "mesos".into(),
        vip_domain: "l4lb.thisdcos.directory".into(),
        ttl: 5,
        forward: Forward { upstreams: vec!["192.0.2.53:53".parse().unwrap()], allow: Vec::new() },
    };
    let names = ZoneNames { domain: config.domain.clone(), vip_domain: config.vip_domain.clone(), ttl: 5, ns_addrs: vec!["127.0.0.1".parse().unwrap()] };
    let mut zone = Zone::new(names);
    let task = |id: &str, addr: &str, port: u16| {
        let mut t = DnsTask::new(id, Some("agent-S1"));
        t.addr = Some(addr.parse().unwrap());
        t.host = t.addr;
        t.ports = vec![DnsPort { port, protocols: vec![Proto::Tcp], name: String::new() }];
        t.host_ports = vec![port];
        t
    };
    let tasks = vec![task("nginx.1", "10.0.0.1", 31644), task("nginx.2", "10.0.0.2", 31667)];
    zone.set_app("/nginx", Some(AppDns { app_id: "/nginx".into(), tasks, vips: Vec::new() }));
    let zone = Arc::new(RwLock::new(zone));
    Api::new(zone, Arc::default(), &config, &config.listen, Some("127.0.0.1:9097".parse().unwrap()))
}

fn get(api: &Api, path: &str) -> (StatusCode, Value) {
    let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
    let (status, body) = api.respond(path, query).expect("an API path");
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[test]
fn version_and_config_have_mesos_dns_keys() {
    let api = api();
    let (status, version) = get(&api, "/v1/version");
    assert_eq!(status, StatusCode::OK);
    for key in ["Service", "URL", "Version"] {
        assert!(version[key].is_string(), "{key}: {version}");
    }
    let (_, config) = get(&api, "/v1/config");
    // The keys and types of records.Config (the documented example's Email/Mname are SOA* now).
    for key in ["Zk", "Domain", "Listener", "SOAMname", "SOARname"] {
        assert!(config[key].is_string(), "{key}: {config}");
    }
    for key in ["RefreshSeconds", "TTL", "Port", "Timeout", "HttpPort", "SOASerial"] {
        assert!(config[key].is_u64(), "{key}: {config}");
    }
    for key in ["DnsOn", "HttpOn"] {
        assert_eq!(config[key], true, "{key}");
    }
    assert_eq!(config["Masters"], Value::Null);
    assert_eq!(config["Domain"], "mesos");
    assert_eq!(config["Port"], 53);
    assert_eq!(config["HttpPort"], 9097);
    assert_eq!(config["TTL"], 5);
    assert_eq!(config["Resolvers"], serde_json::json!(["192.0.2.53:53"]));
    assert_eq!(config["SOAMname"], "ns1.mesos.");
    assert_eq!(config["SOASerial"], 2, "the zone's serial now");
}

#[test]
fn hosts_and_services_answer_as_mesos_dns_does() {
    let api = api();
    let (_, hosts) = get(&api, "/v1/hosts/NGINX.marathon.mesos");
    assert_eq!(hosts, serde_json::json!([{"host": "nginx.marathon.mesos.", "ip": "10.0.0.1"}, {"host": "nginx.marathon.mesos.", "ip": "10.0.0.2"}]));
    let (_, none) = get(&api, "/v1/hosts/nope.marathon.mesos");
    assert_eq!(none, serde_json::json!([{"host": "", "ip": ""}]));
    let (_, services) = get(&api, "/v1/services/_nginx._tcp.marathon.mesos.");
    let services = services.as_array().unwrap();
    assert_eq!(services.len(), 2);
    for s in services {
        assert_eq!(s["service"], "_nginx._tcp.marathon.mesos.");
        let host = s["host"].as_str().unwrap();
        assert!(host.starts_with("nginx-") && host.ends_with(".marathon.mesos."), "{host}");
        assert!(s["port"] == "31644" || s["port"] == "31667", "{s}");
        let (_, target) = get(&api, &format!("/v1/hosts/{host}"));
        assert_eq!(target[0]["ip"], s["ip"], "the target resolves to the address given");
    }
    let (_, none) = get(&api, "/v1/services/_nope._tcp.marathon.mesos");
    assert_eq!(none, serde_json::json!([{"service": "", "host": "", "ip": "", "port": ""}]));
    assert_eq!(get(&api, "/v1/hosts/nginx.marathon.mesos/ports").0, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(get(&api, "/v1/nothing").0, StatusCode::NOT_FOUND);
    assert!(api.respond("/metrics", None).is_none(), "not the API's");
}

#[test]
fn enumerate_and_records_list_the_zone() {
    let api = api();
    let (_, enumeration) = get(&api, "/v1/enumerate");
    let tasks = enumeration["frameworks"][0]["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(tasks[0]["records"].as_array().unwrap().iter().any(|r| r["rtype"] == "SRV"));
    let (_, all) = get(&api, "/dns/records");
    let all: RecordsReply = serde_json::from_value(all).unwrap();
    assert_eq!((all.standing.as_str(), all.zone), ("records", None));
    assert!(all.records.iter().any(|r| r.name == "l4lb.thisdcos.directory." && r.rtype == "SOA"));
    let (_, one) = get(&api, "/dns/records?zone=mesos.");
    let one: RecordsReply = serde_json::from_value(one).unwrap();
    assert_eq!(one.zone.as_deref(), Some("mesos"));
    assert!(one.records.iter().all(|r| r.name.ends_with("mesos.")));
    assert_eq!(get(&api, "/dns/records?zone=example.com").0, StatusCode::BAD_REQUEST);
    let (_, name) = get(&api, "/dns/records?name=nginx.marathon.mesos");
    let name: RecordsReply = serde_json::from_value(name).unwrap();
    let data: Vec<&str> = name.records.iter().map(|r| r.data.as_str()).collect();
    assert_eq!(data, ["10.0.0.1", "10.0.0.2"]);
    let (_, missing) = get(&api, "/dns/records?name=nope.marathon.mesos");
    assert_eq!(missing["standing"], "nxdomain");
    let (_, outside) = get(&api, "/dns/records?name=example.com");
    assert_eq!(outside["standing"], "outside");
}
