//! Real TCP and UDP servers for end-to-end tests, each running in a namespace and stopping when
//! its handle is dropped. Every reply starts with the server's name, so a client can tell which
//! backend it reached.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use crate::netns::Netns;

/// A running server; dropped = stopped and joined.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP server on `addr` inside `ns`. Each connection gets `<name>\n` at once, then every
/// byte it sends is echoed back until it closes.
pub fn tcp_echo(ns: &Netns, addr: SocketAddr, name: &str) -> Result<Server> {
    let name = format!("{name}\n");
    tcp_server(ns, addr, move |conn, stop| serve_echo(conn, &name, stop))
}

/// A TCP server on `addr` inside `ns` running `handle` on a thread per connection.
fn tcp_server(ns: &Netns, addr: SocketAddr, handle: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static) -> Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = Arc::new(handle);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = ns.spawn({
        let stop = stop.clone();
        move || {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            listener.set_nonblocking(true).unwrap();
            let _ = ready_tx.send(Ok(()));
            let mut workers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (handle, stop) = (handle.clone(), stop.clone());
                        workers.push(std::thread::spawn(move || handle(conn, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        }
    })?;
    ready_rx.recv()?.map_err(anyhow::Error::msg)?;
    Ok(Server { stop, thread: Some(thread) })
}

/// An HTTP/1.1 server on `addr` inside `ns` (keep-alive, Content-Length bodies). Every request
/// is answered with JSON: `{"backend": name, "method", "path", "headers": {name: value, …}}`
/// (repeated headers joined with ", "). `/slow/<ms>` answers after that many milliseconds. A
/// request with `Upgrade` is answered 101, after which the connection echoes every byte.
pub fn http_backend(ns: &Netns, addr: SocketAddr, name: &str) -> Result<Server> {
    let name = name.to_string();
    tcp_server(ns, addr, move |conn, stop| serve_http(conn, &name, stop))
}

fn serve_http(conn: TcpStream, name: &str, stop: &AtomicBool) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    while let Some((method, path, headers)) = read_head(&mut reader, stop) {
        let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        if headers.contains_key("upgrade") {
            let _ = writer.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
            let buffered = reader.buffer().to_vec();
            let _ = writer.write_all(&buffered);
            serve_echo(writer, "", stop);
            return;
        }
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let reply = serde_json::json!({"backend": name, "method": method, "path": path, "headers": headers}).to_string();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", reply.len());
        if writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}

/// (method, path, headers by lower-case name) of the next request, None at the end.
fn read_head(reader: &mut impl std::io::BufRead, stop: &AtomicBool) -> Option<(String, String, BTreeMap<String, String>)> {
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) if line == "\r\n" && !lines.is_empty() => break,
            Ok(_) if line.ends_with('\n') => lines.push(std::mem::take(&mut line).trim_end().to_string()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let mut request_line = lines[0].split(' ');
    let (method, path) = (request_line.next()?.to_string(), request_line.next()?.to_string());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for header in &lines[1..] {
        let (name, value) = header.split_once(':')?;
        let value = value.trim().to_string();
        headers.entry(name.trim().to_ascii_lowercase()).and_modify(|v| *v = format!("{v}, {value}")).or_insert(value);
    }
    Some((method, path, headers))
}

fn serve_echo(mut conn: TcpStream, name: &str, stop: &AtomicBool) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    if !name.is_empty() && conn.write_all(name.as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
    }
}

/// A UDP server on `addr` inside `ns`: answers every datagram with `<name>:<datagram>`.
pub fn udp_echo(ns: &Netns, addr: SocketAddr, name: &str) -> Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let name = name.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = ns.spawn({
        let stop = stop.clone();
        move || {
            let sock = match UdpSocket::bind(addr) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let _ = ready_tx.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        }
    })?;
    ready_rx.recv()?.map_err(anyhow::Error::msg)?;
    Ok(Server { stop, thread: Some(thread) })
}

/// Connects to `addr` and returns the stream and the name of the backend that greeted it.
pub fn connect_and_greet(addr: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    connect_and_greet_within(addr, GREETING_TIMEOUT)
}

/// As [`connect_and_greet`], giving the connect and the greeting `timeout` each.
pub fn connect_and_greet_within(addr: SocketAddr, timeout: Duration) -> std::io::Result<(TcpStream, String)> {
    greeting(TcpStream::connect_timeout(&addr, timeout)?, timeout)
}

const GREETING_TIMEOUT: Duration = Duration::from_secs(3);

/// The stream and the first line its backend sends (its name), read within `timeout`.
fn greeting(mut stream: TcpStream, timeout: Duration) -> std::io::Result<(TcpStream, String)> {
    stream.set_read_timeout(Some(timeout))?;
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        name.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&name).into_owned()))
}

/// Connects to `addr` from the local address `from` (a chosen source port) and reads the
/// backend's greeting.
pub fn connect_from_and_greet(from: SocketAddr, addr: SocketAddr) -> std::io::Result<(TcpStream, String)> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&from.into())?;
    socket.connect_timeout(&addr.into(), GREETING_TIMEOUT)?;
    greeting(socket.into(), GREETING_TIMEOUT)
}

/// Opens `count` connections to `addr` from `ns`, one after the other, and counts which backend
/// greeted each (connections are closed). Errors name the connection that failed.
pub fn backend_spread(ns: &Netns, addr: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>> {
    ns.run(move || -> Result<BTreeMap<String, usize>> {
        let mut per_backend = BTreeMap::new();
        for i in 0..count {
            let (_stream, name) =
                connect_and_greet(addr).map_err(|e| anyhow::anyhow!("connection {i} of {count} to {addr}: {e}"))?;
            *per_backend.entry(name).or_insert(0) += 1;
        }
        Ok(per_backend)
    })?
}

/// Sends `data` on an echo connection and checks it comes back whole.
pub fn echo_round_trip(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back)?;
    if back != data {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// `GET path` from `addr` over HTTP/1.0 in `ns`: (status code, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    ns.run(move || -> Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP header in {response:?}"))?;
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
        Ok((status, body.to_string()))
    })?
}

/// New connections opened to an address from a namespace at a steady pace until stopped: what
/// a client sees while something else (a fault, churn) happens.
pub struct ConnectionProber {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ProbeReport>>,
}

/// What a [`ConnectionProber`] saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub ok: usize,
    pub failed: usize,
    /// The first failures' errors.
    pub errors: Vec<String>,
    /// Connections per backend name.
    pub per_backend: BTreeMap<String, usize>,
}

impl ConnectionProber {
    /// Connects to `addr` from `ns` every `every` (each connection greeted, then closed).
    pub fn start(ns: &Netns, addr: SocketAddr, every: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = ns.spawn(move || {
            let mut report = ProbeReport::default();
            while !stopping.load(Ordering::SeqCst) {
                match connect_and_greet(addr) {
                    Ok((_, name)) => {
                        report.ok += 1;
                        *report.per_backend.entry(name).or_default() += 1;
                    }
                    Err(err) => {
                        report.failed += 1;
                        if report.errors.len() < 5 {
                            report.errors.push(err.to_string());
                        }
                    }
                }
                std::thread::sleep(every);
            }
            report
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops probing and returns what was seen.
    pub fn finish(mut self) -> ProbeReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("prober thread")
    }
}

impl Drop for ConnectionProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
