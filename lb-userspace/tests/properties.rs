//! Property tests of the agent's parsers: SSE framing does not depend on how the stream is cut,
//! VIP labels and Marathon app lists of any shape never panic the agent, and one malformed app
//! never changes another app's services.

use lb::{
    sources::marathon::{app, client::SseParser, resolve, translate, vip},
    sources::services_file,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn sse_stream() -> impl Strategy<Value = String> {
    let event = ("[a-z_]{1,20}", prop::collection::vec("[ -~]{0,40}", 1..4), any::<bool>(), any::<bool>());
    prop::collection::vec(event, 1..8).prop_map(|events| {
        let mut text = String::new();
        for (name, data, crlf, heartbeat) in events {
            let end = if crlf { "\r\n" } else { "\n" };
            if heartbeat {
                text.push_str(end);
            }
            text.push_str(&format!("event: {name}{end}"));
            for line in data {
                text.push_str(&format!("data: {line}{end}"));
            }
            text.push_str(end);
        }
        text
    })
}

/// Any JSON value (small).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("id".to_string()), Just("tasks".to_string()), Just("portDefinitions".to_string()), Just("labels".to_string()), Just("ports".to_string()), "[a-zA-Z]{1,8}"],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values a services file's fields plausibly hold, right and wrong.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec!["10.0.0.1", "fd00::1", "10.0.0.300", "", "web", "tcp", "udp", "udp,tcp", "icmp"]).prop_map(|s| json!(s)),
        prop::sample::select(vec![0i64, 1, 80, 65535, 65536, -1, 1000, 1001]).prop_map(|n| json!(n)),
        json_value(),
    ]
}

/// A JSON object with (mostly) a services file's keys.
fn object_of(keys: Vec<&'static str>, value: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    let key = prop_oneof![prop::sample::select(keys).prop_map(str::to_owned), "[a-z]{1,6}"];
    prop::collection::btree_map(key, value, 0..6).prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn service_value() -> impl Strategy<Value = Value> {
    let backend = object_of(vec!["address", "port", "weight"], field_value().boxed());
    let backends = prop::collection::vec(backend, 0..4).prop_map(Value::Array);
    let value = prop_oneof![field_value(), backends].boxed();
    object_of(vec!["name", "address", "port", "protocol", "backends"], value)
}

/// A well-formed app with one service port and one task.
fn good_app(i: usize) -> Value {
    json!({
        "id": format!("/good{i}"), "portDefinitions": [{"port": 10000 + i, "protocol": "tcp"}],
        "tasks": [{"id": format!("good{i}.1"), "host": "10.1.0.1", "ports": [31000 + i], "state": "TASK_RUNNING"}]
    })
}

struct NoDns;

impl resolve::Resolver for NoDns {
    fn resolve(&mut self, host: &str) -> Option<std::net::IpAddr> {
        host.parse().ok()
    }
}

fn services_of(body: &Value) -> Vec<(String, String)> {
    let parsed = app::parse_apps(body.to_string().as_bytes()).expect("an apps response");
    let mut translator = translate::Translator::default();
    let mut health = translate::HealthMemory::default();
    let range: vip::VipRange = "10.250.0.0/16".parse().unwrap();
    translator.rebuild(parsed.0.iter(), &mut NoDns, &mut health, &range);
    translator.desired().values().map(|s| (s.id.to_string(), format!("{:?}", s.backends))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Cutting a stream into any chunks yields the events (and frame ends) feeding it whole does.
    #[test]
    fn sse_events_do_not_depend_on_chunking(stream in sse_stream(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let bytes = stream.as_bytes();
        let mut one_piece = SseParser::default();
        let whole = one_piece.feed(bytes).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort();
        let mut parser = SseParser::default();
        let mut chunked = Vec::new();
        let mut from = 0;
        for at in points.into_iter().chain([bytes.len()]) {
            chunked.extend(parser.feed(&bytes[from..at]).unwrap());
            from = at;
        }
        prop_assert_eq!(chunked, whole);
        prop_assert_eq!(parser.frames_ended(), one_piece.frames_ended());
    }

    /// A services file of any JSON shape (services of any fields) is read or refused with an
    /// error naming the file, never a panic; what is read has unique, sorted backends.
    #[test]
    fn services_files_of_any_shape_never_panic(services in prop::collection::vec(service_value(), 0..4)) {
        let text = json!({"services": services}).to_string();
        match services_file::parse(&text, "prop.json") {
            Ok(desired) => {
                for service in desired.values() {
                    let mut sorted = service.backends.clone();
                    sorted.sort();
                    sorted.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);
                    prop_assert_eq!(&sorted, &service.backends);
                }
            }
            Err(err) => prop_assert!(err.to_string().contains("prop.json"), "{}", err),
        }
    }

    /// VIP labels of any text are parsed or refused, never a panic.
    #[test]
    fn vip_labels_never_panic(key in "(VIP|vip)?[ -~]{0,20}", value in "[ -~]{0,40}") {
        let _ = vip::parse_label(&key, &value);
    }

    /// An app list with an app of any shape among good ones: no panic, and the good apps'
    /// services are exactly what they are without it.
    #[test]
    fn a_malformed_app_never_changes_another(bad in json_value(), at in 0usize..3) {
        let good: Vec<Value> = (0..3).map(good_app).collect();
        let mut with_bad = good.clone();
        with_bad.insert(at, bad);
        let alone = services_of(&json!({"apps": good}));
        let mixed: Vec<(String, String)> = services_of(&json!({"apps": with_bad}));
        let good_ports: Vec<String> = (0..3).map(|i| format!(":{}/tcp", 10000 + i)).collect();
        let mixed_good: Vec<(String, String)> = mixed.into_iter().filter(|(id, _)| good_ports.iter().any(|p| id.ends_with(p))).collect();
        prop_assert_eq!(mixed_good, alone);
    }
}
