//! The DNS sockets: UDP answered by worker threads blocking on one socket each address
//! (a query costs a recv, a lookup under a read lock, a send), TCP by a thread per connection
//! up to a bound, each cut after `TCP_IDLE` without a complete query (slow clients time out).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use hickory_proto::{op::ResponseCode, rr::RecordType};
use tracing::warn;

use super::{
    answer::{self, Handled, Reply, Transport},
    zone::Zone,
};

/// How long a TCP client may take to send a query (and between queries).
const TCP_IDLE: Duration = Duration::from_secs(5);
/// TCP connections served at once; more are closed on accept (counted).
const TCP_MAX: usize = 64;

/// Query types and response codes counted one by one; the rest as "other".
pub const QTYPES: [&str; 7] = ["A", "AAAA", "SRV", "SOA", "NS", "ANY", "other"];
pub const RCODES: [&str; 6] = ["NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "other"];

/// What the server did, for /metrics and `lb status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// [query type][response code].
    answers: [[AtomicU64; RCODES.len()]; QTYPES.len()],
    pub truncated: AtomicU64,
    /// Queries that did not decode (answered FORMERR when they had an id, else dropped).
    pub malformed: AtomicU64,
    pub dropped: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub tcp_timeouts: AtomicU64,
}

impl Counters {
    fn count(&self, reply: &Reply) {
        let qtype = match reply.qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SRV) => 2,
            Some(RecordType::SOA) => 3,
            Some(RecordType::NS) => 4,
            Some(RecordType::ANY) => 5,
            _ => 6,
        };
        let rcode = match reply.rcode {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::Refused => 2,
            ResponseCode::FormErr => 3,
            ResponseCode::NotImp => 4,
            _ => 5,
        };
        self.answers[qtype][rcode].fetch_add(1, Ordering::Relaxed);
        if reply.truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        if reply.qtype.is_none() {
            self.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (query type, response code, count) of every non-zero pair.
    pub fn answers(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        QTYPES.iter().enumerate().flat_map(move |(q, qtype)| {
            RCODES.iter().enumerate().map(move |(r, rcode)| (*qtype, *rcode, self.answers[q][r].load(Ordering::Relaxed)))
        })
    }

    pub fn total(&self) -> u64 {
        self.answers().map(|(_, _, n)| n).sum()
    }
}

pub struct Sockets {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Sockets {
    pub fn bind(addrs: &[SocketAddr]) -> Result<Self, (SocketAddr, std::io::Error)> {
        let mut sockets = Self { udp: Vec::new(), tcp: Vec::new() };
        for &addr in addrs {
            let udp = UdpSocket::bind(addr).map_err(|e| (addr, e))?;
            // Port 0 picks one port for both: TCP takes the port UDP got.
            let tcp_addr = udp.local_addr().map_err(|e| (addr, e))?;
            let tcp = TcpListener::bind(tcp_addr).map_err(|e| (addr, e))?;
            sockets.udp.push(udp);
            sockets.tcp.push(tcp);
        }
        Ok(sockets)
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Two UDP workers per address (this project's nodes answer a cluster's lookups, and two
    /// let one answer while the other is in a syscall); a TCP acceptor per address.
    pub fn serve(self, zone: Arc<RwLock<Zone>>, counters: Arc<Counters>) -> std::io::Result<()> {
        for udp in self.udp {
            for worker in 0..2 {
                let socket = udp.try_clone()?;
                let (zone, counters) = (zone.clone(), counters.clone());
                std::thread::Builder::new().name(format!("dns-udp-{worker}")).spawn(move || serve_udp(&socket, &zone, &counters))?;
            }
        }
        let open = Arc::new(AtomicUsize::new(0));
        for tcp in self.tcp {
            let (zone, counters, open) = (zone.clone(), counters.clone(), open.clone());
            std::thread::Builder::new().name("dns-tcp".into()).spawn(move || accept_tcp(&tcp, &zone, &counters, &open))?;
        }
        Ok(())
    }
}

/// Rotates each answer's records one step per query, across every socket.
static SPREAD: AtomicUsize = AtomicUsize::new(0);

fn respond(zone: &RwLock<Zone>, query: &[u8], transport: Transport, counters: &Counters) -> Option<Vec<u8>> {
    let spread = SPREAD.fetch_add(1, Ordering::Relaxed);
    let handled = {
        let zone = zone.read().unwrap_or_else(|e| e.into_inner());
        answer::answer(&zone, query, transport, spread)
    };
    let reply = match handled {
        Handled::Reply(reply) => reply,
        // Forwarding is not offered: outside the zones, every query is refused.
        Handled::Outside(refused) => refused,
        Handled::Dropped => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    counters.count(&reply);
    Some(reply.bytes)
}

fn serve_udp(socket: &UdpSocket, zone: &RwLock<Zone>, counters: &Counters) {
    let mut buf = [0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(err) => {
                warn!("DNS: receiving on UDP: {err}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Some(reply) = respond(zone, &buf[..len], Transport::Udp, counters) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn accept_tcp(listener: &TcpListener, zone: &Arc<RwLock<Zone>>, counters: &Arc<Counters>, open: &Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if open.fetch_add(1, Ordering::AcqRel) >= TCP_MAX {
            open.fetch_sub(1, Ordering::AcqRel);
            counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (zone, conn_counters, conn_open) = (zone.clone(), counters.clone(), open.clone());
        let spawned = std::thread::Builder::new().name("dns-tcp-conn".into()).spawn(move || {
            serve_tcp(stream, &zone, &conn_counters);
            conn_open.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::AcqRel);
            counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Length-prefixed queries (RFC 1035 §4.2.2) until the client closes or idles.
fn serve_tcp(mut stream: TcpStream, zone: &RwLock<Zone>, counters: &Counters) {
    if stream.set_read_timeout(Some(TCP_IDLE)).and(stream.set_write_timeout(Some(TCP_IDLE))).is_err() {
        return;
    }
    loop {
        let mut len = [0u8; 2];
        if let Err(err) = stream.read_exact(&mut len) {
            if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                counters.tcp_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if let Err(err) = stream.read_exact(&mut query) {
            if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                counters.tcp_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let Some(reply) = respond(zone, &query, Transport::Tcp, counters) else { return };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}
