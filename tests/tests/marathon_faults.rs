//! Marathon misbehaving while the agent runs: slow (a byte a second), garbage on the event
//! stream, a leader flapping every second, a token that expires. In every case the services
//! already programmed keep carrying traffic, the agent says what is wrong, its cost stays
//! bounded (lists per second, memory), and it follows Marathon again once Marathon behaves.

use std::time::{Duration, Instant};

use lb_tests::{
    marathon_cluster::{task, web, MarathonCluster as Cluster, Urls},
    marathon_server::MarathonServer,
    servers::{ConnectionProber, ProbeReport},
};

/// New connections to the VIP every 20 ms from the client.
fn probe(c: &Cluster) -> ConnectionProber {
    ConnectionProber::start(&c.topo.client, "10.0.0.1:80".parse().unwrap(), Duration::from_millis(20)).unwrap()
}

fn assert_all_connected(report: &ProbeReport) {
    assert!(report.ok > 20 && report.failed == 0, "{report:?}");
}

fn error_of(status: &serde_json::Value) -> String {
    status["marathon"]["last_error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_marathon_answering_a_byte_a_second_times_out_and_changes_nothing() {
    let c = Cluster::new(&["--marathon-timeout", "2", "--event-stall", "2"]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    let before = c.services();
    let prober = probe(&c);

    // From now on every list and stream trickles; the stream is cut so the agent reconnects
    // (and re-lists) into the slow server.
    c.marathon.set_trickle(Some(Duration::from_secs(1)));
    c.marathon.cut_streams();
    let slow_since = Instant::now();
    c.wait_status_within(Duration::from_secs(8), |s| error_of(s).contains("/v2/apps"));
    let failed_after = slow_since.elapsed();
    assert!(failed_after < Duration::from_secs(6), "a 2 s timeout took {failed_after:?} to show");
    c.agent.wait_log("stalled (no event or heartbeat for 2 s)", Duration::from_secs(10)).unwrap();
    // A scale-up announced only on trickling streams, and listed only by a trickling server.
    c.marathon.set_apps(vec![web(&[0, 1, 2])]);
    std::thread::sleep(Duration::from_secs(3));
    let answered = Instant::now();
    assert_eq!(c.services(), before, "a slow Marathon changes nothing");
    assert!(answered.elapsed() < Duration::from_secs(1), "lb answers while the agent waits on Marathon");
    assert_all_connected(&prober.finish());

    // Marathon recovers: the change made meanwhile arrives.
    c.marathon.set_trickle(None);
    c.marathon.cut_streams();
    c.wait_status_within(Duration::from_secs(20), |s| s["marathon"]["last_error"].is_null());
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
}

/// Frames no Marathon sends: unparseable JSON in relevant events, events of the wrong shape,
/// binary noise, a frame that never ends.
const GARBAGE: &[&str] = &[
    "event: status_update_event\r\ndata: {not json\r\n\r\n",
    "event: api_post_event\r\ndata: {\"eventType\":\"api_post_event\",\"appDefinition\":7}\r\n\r\n",
    "data: [1,2,3]\r\n\r\n",
    "event: status_update_event\r\ndata: {\"eventType\":\"status_update_event\",\"appId\":null,\"taskStatus\":[]}\r\n\r\n",
    "\u{0}\u{1}\u{ff}\r\r\r\n:comment\r\nid: 7\r\nretry: -1\r\n\r\n",
    "event: \u{7f}\u{7f}\r\ndata: \u{fffd}\u{fffd}\r\n\r\n",
];

#[test]
fn garbage_on_the_event_stream_changes_nothing_and_costs_at_most_a_list_a_second() {
    let c = Cluster::new(&[]);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    let before = c.services();
    let lists_before = c.marathon.list_requests();
    let prober = probe(&c);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(5) {
        c.marathon.send_raw(GARBAGE[sent % GARBAGE.len()]);
        sent += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    // A frame that never ends, past the 8 MiB the agent holds: the stream is dropped.
    c.marathon.send_raw(&"x".repeat(9 << 20));
    c.agent.wait_log("an event frame over 8 MiB", Duration::from_secs(10)).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let lists = c.marathon.list_requests() - lists_before;
    assert!((lists as f64) <= seconds + 3.0, "{lists} full lists in {seconds:.1} s for {sent} garbage frames");
    assert_eq!(c.services(), before);
    assert_all_connected(&prober.finish());
    let (_, peak_kib) = c.agent.rss_kib().unwrap();
    assert!(peak_kib < 64 << 10, "peak RSS {peak_kib} KiB after a 9 MiB frame");

    // The stream is back and events apply again.
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    c.marathon.update("/web", |app| app.tasks.push(task(2, true)));
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
    c.wait_status(|s| s["marathon"]["state"] == "ok");
}

/// Makes `to` the leader: it serves its own stream, and `from` redirects there and drops its
/// streams (as Marathon does on abdication).
fn hand_over(from: &MarathonServer, to: &MarathonServer) {
    to.redirect_events_to(None);
    from.redirect_events_to(Some(to.url()));
    from.cut_streams();
}

#[test]
fn a_leader_flapping_every_second_changes_nothing_and_changes_still_arrive() {
    let c = Cluster::build(&[], |_| {}, Urls::Both);
    let standby = c.standby.as_ref().unwrap();
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    let before = c.services();
    let lists_before = c.marathon.list_requests() + standby.list_requests();
    let prober = probe(&c);
    let started = Instant::now();
    let servers = [&c.marathon, standby];
    for flip in 0..8 {
        hand_over(servers[flip % 2], servers[(flip + 1) % 2]);
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(c.services(), before, "flip {flip}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let lists = c.marathon.list_requests() + standby.list_requests() - lists_before;
    assert!((lists as f64) <= seconds + 3.0, "{lists} full lists in {seconds:.1} s of flapping");
    // Still flapping, a scale-up on both (only the leader's stream announces it).
    let flapping = std::thread::scope(|scope| {
        let flipper = scope.spawn(|| {
            for flip in 0..5 {
                hand_over(servers[flip % 2], servers[(flip + 1) % 2]);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        for server in servers {
            server.update("/web", |app| app.tasks.push(task(2, true)));
        }
        c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
        flipper.join()
    });
    flapping.unwrap();
    assert_all_connected(&prober.finish());
    c.wait_status(|s| s["marathon"]["state"] == "ok");
}

#[test]
fn an_expired_token_keeps_the_services_retries_with_backoff_and_recovers() {
    let c = Cluster::build(&["--marathon-token", "abc.def"], |m| m.require_authorization(Some("token=abc.def".into())), Urls::Leader);
    c.wait_backends(&[(0, "active"), (1, "active")]);
    c.wait_status(|s| s["marathon"]["event_stream"].is_string());
    let before = c.services();
    let prober = probe(&c);

    // The token expires: every request is refused from now on.
    c.marathon.require_authorization(Some("token=renewed".into()));
    c.marathon.cut_streams();
    c.wait_status(|s| error_of(s).contains("401"));
    let requests_before = c.marathon.requests();
    std::thread::sleep(Duration::from_secs(6));
    let requests = c.marathon.requests() - requests_before;
    // Lists back off from 0.5 s and streams from 0.2 s, both doubling: a handful, not a storm.
    assert!(requests <= 16, "{requests} requests in 6 s with an expired token");
    let status = c.status();
    assert_eq!(status["marathon"]["state"], "failing", "{status}");
    assert!(status["marathon"]["failures_in_a_row"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(c.services(), before, "an expired token changes nothing");
    assert_all_connected(&prober.finish());

    // Marathon takes the token again (renewed on its side): the agent recovers by itself.
    c.marathon.require_authorization(Some("token=abc.def".into()));
    c.marathon.update("/web", |app| app.tasks.push(task(2, true)));
    c.wait_status_within(Duration::from_secs(40), |s| s["marathon"]["last_error"].is_null());
    c.wait_backends(&[(0, "active"), (1, "active"), (2, "active")]);
}
