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
    time::{Duration, Instant},
};

use hickory_proto::{op::ResponseCode, rr::RecordType};
use tracing::warn;

use super::{
    answer::{self, Handled, Reply, Transport},
    zone::Zone,
    Forward,
};

/// How long a TCP client may take to send a query (and between queries).
const TCP_IDLE: Duration = Duration::from_secs(5);
/// TCP connections served at once; more are closed on accept (counted).
const TCP_MAX: usize = 64;
/// How long an upstream may take to answer a forwarded query (then the next is asked).
pub const UPSTREAM_WAIT: Duration = Duration::from_secs(2);
/// UDP queries being forwarded at once; more are answered SERVFAIL (counted).
const FORWARD_MAX: usize = 64;

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
    /// Queries for other names passed to an upstream, and those no upstream answered.
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
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
    pub fn serve(self, zone: Arc<RwLock<Zone>>, counters: Arc<Counters>, forward: Arc<Forward>) -> std::io::Result<()> {
        let shared = Arc::new(Shared { zone, counters, forward, forwarding: AtomicUsize::new(0), tcp_open: AtomicUsize::new(0) });
        for udp in self.udp {
            let udp = Arc::new(udp);
            for worker in 0..2 {
                let (socket, shared) = (udp.clone(), shared.clone());
                std::thread::Builder::new().name(format!("dns-udp-{worker}")).spawn(move || serve_udp(&socket, &shared))?;
            }
        }
        for tcp in self.tcp {
            let shared = shared.clone();
            std::thread::Builder::new().name("dns-tcp".into()).spawn(move || accept_tcp(&tcp, &shared))?;
        }
        Ok(())
    }
}

/// What every socket's threads share.
struct Shared {
    zone: Arc<RwLock<Zone>>,
    counters: Arc<Counters>,
    forward: Arc<Forward>,
    /// UDP queries being forwarded now.
    forwarding: AtomicUsize,
    tcp_open: AtomicUsize,
}

/// What to do with a query.
enum Response {
    Send(Vec<u8>),
    /// A name outside the zones from a client that may be forwarded for.
    Forward,
    Nothing,
}

/// Rotates each answer's records one step per query, across every socket.
static SPREAD: AtomicUsize = AtomicUsize::new(0);

fn respond(shared: &Shared, query: &[u8], transport: Transport, client: std::net::IpAddr) -> Response {
    let spread = SPREAD.fetch_add(1, Ordering::Relaxed);
    let handled = {
        let zone = shared.zone.read().unwrap_or_else(|e| e.into_inner());
        answer::answer(&zone, query, transport, spread)
    };
    let counters = &shared.counters;
    let reply = match handled {
        Handled::Reply(reply) => reply,
        Handled::Outside(_) if shared.forward.admits(client) => return Response::Forward,
        Handled::Outside(refused) => refused,
        Handled::Dropped => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Response::Nothing;
        }
    };
    counters.count(&reply);
    Response::Send(reply.bytes)
}

/// Asks the upstreams in order; the first answer with the query's id, else SERVFAIL (counted).
fn forward(shared: &Shared, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let counters = &shared.counters;
    for upstream in &shared.forward.upstreams {
        let answer = match transport {
            Transport::Udp => ask_udp(*upstream, query),
            Transport::Tcp => ask_tcp(*upstream, query),
        };
        if let Ok(bytes) = answer {
            counters.forwarded.fetch_add(1, Ordering::Relaxed);
            return Some(bytes);
        }
    }
    counters.forward_failures.fetch_add(1, Ordering::Relaxed);
    answer::servfail(query)
}

fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local)?;
    socket.connect(upstream)?;
    socket.set_read_timeout(Some(UPSTREAM_WAIT))?;
    socket.send(query)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf)?;
        // Only the answer to this query (its id), not a stray datagram.
        if len >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&upstream, UPSTREAM_WAIT)?;
    stream.set_read_timeout(Some(UPSTREAM_WAIT))?;
    stream.write_all(&framed(query))?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply)?;
    Ok(reply)
}

/// A message with its TCP length prefix (RFC 1035 §4.2.2).
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn serve_udp(socket: &Arc<UdpSocket>, shared: &Arc<Shared>) {
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
        match respond(shared, &buf[..len], Transport::Udp, peer.ip()) {
            Response::Send(reply) => {
                let _ = socket.send_to(&reply, peer);
            }
            Response::Forward => forward_udp(socket, shared, buf[..len].to_vec(), peer),
            Response::Nothing => {}
        }
    }
}

/// Forwards on a thread of its own (an upstream's wait must not hold up the zone's answers),
/// at most `FORWARD_MAX` at once.
fn forward_udp(socket: &Arc<UdpSocket>, shared: &Arc<Shared>, query: Vec<u8>, peer: SocketAddr) {
    let busy = shared.forwarding.fetch_add(1, Ordering::AcqRel) >= FORWARD_MAX;
    let (socket, worker) = (socket.clone(), shared.clone());
    let spawned = !busy
        && std::thread::Builder::new()
            .name("dns-forward".into())
            .spawn(move || {
                if let Some(reply) = forward(&worker, &query, Transport::Udp) {
                    let _ = socket.send_to(&reply, peer);
                }
                worker.forwarding.fetch_sub(1, Ordering::AcqRel);
            })
            .is_ok();
    if !spawned {
        shared.forwarding.fetch_sub(1, Ordering::AcqRel);
        shared.counters.forward_failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn accept_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if shared.tcp_open.fetch_add(1, Ordering::AcqRel) >= TCP_MAX {
            shared.tcp_open.fetch_sub(1, Ordering::AcqRel);
            shared.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let conn = shared.clone();
        let spawned = std::thread::Builder::new().name("dns-tcp-conn".into()).spawn(move || {
            serve_tcp(stream, &conn);
            conn.tcp_open.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            shared.tcp_open.fetch_sub(1, Ordering::AcqRel);
            shared.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills `buf` from `stream` before `deadline` (TimedOut after it).
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Length-prefixed queries (RFC 1035 §4.2.2) until the client closes or takes longer than
/// `TCP_IDLE` to send a whole query (a deadline per query, not per read: a client trickling a
/// byte a second does not keep one of the 64 connections).
fn serve_tcp(mut stream: TcpStream, shared: &Shared) {
    let Ok(peer) = stream.peer_addr() else { return };
    if stream.set_write_timeout(Some(TCP_IDLE)).is_err() {
        return;
    }
    let timed_out = |err: &std::io::Error| matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    loop {
        let deadline = Instant::now() + TCP_IDLE;
        let mut len = [0u8; 2];
        let mut query = Vec::new();
        let read = read_by(&mut stream, &mut len, deadline).and_then(|()| {
            query.resize(u16::from_be_bytes(len) as usize, 0);
            read_by(&mut stream, &mut query, deadline)
        });
        if let Err(err) = read {
            if timed_out(&err) {
                shared.counters.tcp_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let reply = match respond(shared, &query, Transport::Tcp, peer.ip()) {
            Response::Send(reply) => reply,
            Response::Forward => match forward(shared, &query, Transport::Tcp) {
                Some(reply) => reply,
                None => return,
            },
            Response::Nothing => return,
        };
        if stream.write_all(&framed(&reply)).is_err() {
            return;
        }
    }
}
