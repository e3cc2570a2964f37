//! The optional HTTP path (`--http-listen`, `--https-listen` with `--ssl-certs`): marathon-lb's
//! L7 labels served by the agent itself, on tokio and hyper. Off unless a listener is given.
//!
//! [`labels`] reads an app port's labels, [`routes`] builds the immutable route table from them
//! and the desired services, [`proxy`] answers requests against the current table, [`tls`] keeps
//! the certificates. The agent rebuilds the table after every change it programs and swaps it
//! in whole: listeners are never rebound and requests in flight keep the route they started with.

pub mod labels;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod tls;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use hyper::{body::Incoming, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use self::{
    labels::HttpPort,
    metrics::Metrics,
    proxy::{Inbound, Proxy},
    routes::{Groups, RouteTable},
    tls::{CertSet, Certs},
};
use crate::desired::Desired;

/// A client has this long to send a request's headers (and to finish a TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How often the certificate directory is checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

/// The HTTP path's settings, validated.
#[derive(Debug)]
pub struct HttpConfig {
    pub http: Option<SocketAddr>,
    /// Listener, certificate directory and the certificates read from it at validation.
    pub https: Option<(SocketAddr, PathBuf, CertSet)>,
    pub groups: Groups,
}

/// The listeners, bound before the kernel is touched (a taken port fails the start cleanly):
/// one socket per worker thread on each address (SO_REUSEPORT), so the kernel spreads
/// connections over the workers and a connection's requests, its backend connections and their
/// wakeups stay on one thread, as in HAProxy's threads.
pub struct Bound {
    http: Vec<std::net::TcpListener>,
    https: Option<(Vec<std::net::TcpListener>, PathBuf, CertSet)>,
    groups: Groups,
}

impl HttpConfig {
    /// The listeners as `lb status` shows them.
    pub fn listen(&self) -> Vec<String> {
        let http = self.http.iter().map(|a| format!("http://{a}"));
        http.chain(self.https.iter().map(|(a, _, _)| format!("https://{a}"))).collect()
    }

    pub fn bind(self) -> Result<Bound, (SocketAddr, std::io::Error)> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let listen = |addr: SocketAddr| (0..workers).map(|_| reuse_port_listener(addr).map_err(|e| (addr, e))).collect::<Result<Vec<_>, _>>();
        let http = self.http.map(listen).transpose()?.unwrap_or_default();
        let https = match self.https {
            Some((addr, dir, certs)) => Some((listen(addr)?, dir, certs)),
            None => None,
        };
        Ok(Bound { http, https, groups: self.groups })
    }
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The running HTTP path: the agent hands it every new desired state.
pub struct HttpPath {
    routes: Arc<Routes>,
    groups: Groups,
    metrics: Arc<Metrics>,
}

impl HttpPath {
    /// Starts one worker thread per listener socket (each with its own runtime and backend
    /// connection pool) and, on the calling runtime, the certificate watcher.
    pub fn start(bound: Bound, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let routes = Arc::new(Routes::default());
        let (https, tls) = match bound.https {
            Some((listeners, dir, set)) => {
                let certs = Certs::new(set);
                info!(address = %listeners[0].local_addr()?, certificates = %dir.display(), "HTTPS path listening");
                let acceptor = TlsAcceptor::from(Arc::new(certs.server_config()));
                tokio::spawn(watch_certificates(certs, dir));
                (listeners, Some(acceptor))
            }
            None => (Vec::new(), None),
        };
        if let Some(listener) = bound.http.first() {
            info!(address = %listener.local_addr()?, "HTTP path listening");
        }
        let workers = bound.http.len().max(https.len());
        let mut http = bound.http.into_iter();
        let mut https = https.into_iter();
        for worker in 0..workers {
            let (plain, secure) = (http.next(), https.next().map(|l| (l, tls.clone().expect("an acceptor with HTTPS listeners"))));
            let proxy = Proxy::new(routes.clone(), metrics.clone());
            std::thread::Builder::new().name(format!("lb-http-{worker}")).spawn(move || run_worker(plain, secure, proxy))?;
        }
        Ok(Self { routes, groups: bound.groups, metrics })
    }

    /// Rebuilds the route table from the app ports and the desired services, and swaps it in;
    /// returns how many routes it has.
    pub fn update<'a>(&self, ports: impl Iterator<Item = (&'a str, &'a HttpPort)>, desired: &Desired) -> usize {
        let previous = self.routes.load();
        let table = RouteTable::build(ports, desired, &self.groups, &previous, &self.metrics);
        let routes = table.routes().count();
        self.routes.store(Arc::new(table));
        routes
    }
}

/// The current route table, shared by every worker.
pub type Routes = arc_swap::ArcSwap<RouteTable>;

/// A worker: its listeners' connections, on a runtime of its own, until the process ends.
fn run_worker(plain: Option<std::net::TcpListener>, secure: Option<(std::net::TcpListener, TlsAcceptor)>, proxy: Arc<Proxy>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return warn!("HTTP worker not started: {err}"),
    };
    runtime.block_on(async move {
        if let Some(listener) = plain.map(TcpListener::from_std).transpose().unwrap_or_else(|e| { warn!("HTTP listener: {e}"); None }) {
            tokio::spawn(accept(listener, proxy.clone(), None));
        }
        if let Some((listener, acceptor)) = secure {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(accept(listener, proxy.clone(), Some(acceptor)));
                }
                Err(err) => warn!("HTTPS listener: {err}"),
            }
        }
        std::future::pending::<()>().await
    });
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>, tls: Option<TlsAcceptor>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: pause rather than spin.
                warn!("HTTP listener: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let inbound = Inbound { client, port, tls: tls.is_some() };
        tokio::spawn(connection(stream, inbound, proxy.clone(), tls.clone()));
    }
}

/// Serves one client connection (HTTP/1.1, or HTTP/2 by ALPN or prior knowledge).
async fn connection(stream: TcpStream, inbound: Inbound, proxy: Arc<Proxy>, tls: Option<TlsAcceptor>) {
    let metrics = proxy.metrics.clone();
    metrics.connections.inc();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, inbound).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(MAX_HEADER_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    match tls {
        None => {
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        }
        Some(acceptor) => {
            if let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
            }
        }
    }
    metrics.connections.dec();
}

/// Re-reads the certificates on SIGHUP and when the directory's files change; a directory that
/// does not read whole keeps the certificates in use (and is tried again at its next change).
async fn watch_certificates(certs: Arc<Certs>, dir: PathBuf) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            warn!("certificates will not be re-read on SIGHUP: {err}");
            None
        }
    };
    let mut seen = certs.current().files().clone();
    let mut poll = tokio::time::interval(CERT_POLL);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signalled => {}
            _ = poll.tick() => {
                let now = tls::listing(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        let dir = dir.clone();
        match tokio::task::spawn_blocking(move || CertSet::load(&dir)).await {
            Ok(Ok(set)) => {
                info!(certificates = ?set, "certificates re-read");
                certs.replace(set);
            }
            Ok(Err(err)) => warn!("keeping the certificates in use: {err}"),
            Err(err) => warn!("keeping the certificates in use: {err}"),
        }
    }
}
