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
use crate::model::Desired;

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

/// The listeners, bound before the kernel is touched (a taken port fails the start cleanly).
pub struct Bound {
    http: Option<std::net::TcpListener>,
    https: Option<(std::net::TcpListener, PathBuf, CertSet)>,
    groups: Groups,
}

impl HttpConfig {
    pub fn bind(self) -> Result<Bound, (SocketAddr, std::io::Error)> {
        let listen = |addr: SocketAddr| -> Result<std::net::TcpListener, (SocketAddr, std::io::Error)> {
            let listener = std::net::TcpListener::bind(addr).map_err(|e| (addr, e))?;
            listener.set_nonblocking(true).map_err(|e| (addr, e))?;
            Ok(listener)
        };
        let http = self.http.map(listen).transpose()?;
        let https = match self.https {
            Some((addr, dir, certs)) => Some((listen(addr)?, dir, certs)),
            None => None,
        };
        Ok(Bound { http, https, groups: self.groups })
    }
}

/// The running HTTP path: the agent hands it every new desired state.
pub struct HttpPath {
    proxy: Arc<Proxy>,
    groups: Groups,
}

impl HttpPath {
    /// Starts serving on the current tokio runtime.
    pub fn start(bound: Bound, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let proxy = Proxy::new(metrics);
        if let Some(listener) = bound.http {
            let listener = TcpListener::from_std(listener)?;
            info!(address = %listener.local_addr()?, "HTTP path listening");
            tokio::spawn(accept(listener, proxy.clone(), None));
        }
        if let Some((listener, dir, set)) = bound.https {
            let listener = TcpListener::from_std(listener)?;
            let certs = Certs::new(set);
            info!(address = %listener.local_addr()?, certificates = %dir.display(), "HTTPS path listening");
            let acceptor = TlsAcceptor::from(Arc::new(certs.server_config()));
            tokio::spawn(accept(listener, proxy.clone(), Some(acceptor)));
            tokio::spawn(watch_certificates(certs, dir));
        }
        Ok(Self { proxy, groups: bound.groups })
    }

    /// Rebuilds the route table from the app ports and the desired services, and swaps it in.
    pub fn update<'a>(&self, ports: impl Iterator<Item = (&'a str, &'a HttpPort)>, desired: &Desired) {
        let previous = self.proxy.routes.load();
        let table = RouteTable::build(ports, desired, &self.groups, &previous);
        self.proxy.routes.store(Arc::new(table));
    }
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
