//! The DNS server's counters as Prometheus metrics, read at scrape time.

use std::sync::{atomic::Ordering, Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};

use super::Counters;

#[derive(Debug)]
pub struct DnsMetrics(pub Arc<Counters>);

impl Collector for DnsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let mut family = encoder.encode_descriptor("lb_dns_queries", "DNS queries answered, by query type and response code", None, MetricType::Counter)?;
        for (qtype, rcode, n) in c.answers().filter(|(_, _, n)| *n > 0) {
            let labels = [("type", qtype), ("rcode", rcode)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        let single = [
            ("lb_dns_truncated", "UDP answers cut to the client's size (TC set: the client asks again over TCP)", &c.truncated),
            ("lb_dns_malformed", "Queries that did not decode (answered FORMERR when they had a header, else dropped)", &c.malformed),
            ("lb_dns_dropped", "Messages not answered: responses, and queries too short to have a header", &c.dropped),
            ("lb_dns_tcp_refused", "TCP connections closed on accept: too many open at once", &c.tcp_refused),
            ("lb_dns_forwarded", "Queries for names outside the zones answered by an upstream (--dns-upstream)", &c.forwarded),
            ("lb_dns_forward_failures", "Forwarded queries no upstream answered in time, or over the in-flight bound (SERVFAIL)", &c.forward_failures),
            ("lb_dns_tcp_timeouts", "TCP connections cut for sending no complete query in time", &c.tcp_timeouts),
        ];
        for (name, help, value) in single {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(metric)?;
        }
        Ok(())
    }
}
