//! One request through the HTTP path: route by host and path, check the route's source ACL,
//! redirect to HTTPS where asked, pick a backend (sticky cookie, round robin or least
//! connections), forward over a keep-alive pool with the forwarding headers, retry an idempotent
//! request without a body once on another backend when the first cannot be connected, and tunnel
//! upgrades (WebSocket). Answers of its own are short plain-text bodies.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::uri::PathAndQuery,
    upgrade::OnUpgrade,
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tracing::debug;

use super::{
    metrics::Metrics,
    routes::{canonical, Backend, BackendState, Route},
    Routes,
};

/// The body type of everything the path sends, either way.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The sticky cookie (marathon-lb's name, so clients of a migrated app keep one cookie).
pub const STICKY_COOKIE: &str = "mesosphere_server_id";
/// HSTS as marathon-lb sends it (six months).
const HSTS: &str = "max-age=15768000";
/// Connecting to a backend.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A backend's response headers, once the request is sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per backend.
const IDLE_PER_BACKEND: usize = 64;

/// Where a request came in.
#[derive(Clone, Copy, Debug)]
pub struct Inbound {
    pub client: SocketAddr,
    /// The listener's port (X-Forwarded-Port).
    pub port: u16,
    pub tls: bool,
}

/// A worker's request path: the shared route table, the worker's own backend connection pool.
pub struct Proxy {
    routes: Arc<Routes>,
    client: Client<HttpConnector, ProxyBody>,
    pub metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(IDLE_PER_BACKEND)
            .build(connector);
        Arc::new(Self { routes, client, metrics })
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>, inbound: Inbound) -> Response<ProxyBody> {
        let routes = self.routes.load_full();
        let Some(host) = request_host(&request) else {
            return self.own(None, StatusCode::BAD_REQUEST, "no Host header\n");
        };
        let Some(route) = routes.find(&host, request.uri().path()) else {
            return self.own(None, StatusCode::SERVICE_UNAVAILABLE, "no service for this host and path\n");
        };
        if !route.allows(inbound.client.ip()) {
            return self.own(Some(route), StatusCode::FORBIDDEN, "not allowed from this address\n");
        }
        if route.redirect_to_https && !inbound.tls {
            return self.redirect(route, &host, request.uri());
        }
        let started = Instant::now();
        let response = self.forward(route, request, &host, inbound).await;
        route.requests.count(response.status());
        self.metrics.upstream(started.elapsed());
        response
    }

    /// Sends the request to a backend of `route` (a second one if the first cannot be reached
    /// and the request can be repeated).
    async fn forward(&self, route: &Arc<Route>, request: Request<Incoming>, host: &str, inbound: Inbound) -> Response<ProxyBody> {
        let cookie = route.sticky.then(|| sticky_cookie(request.headers())).flatten();
        let Some(backend) = route.pick(cookie.as_deref(), None) else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no backend is taking requests\n");
        };
        let (mut parts, body) = request.into_parts();
        let client_upgrade = parts.extensions.remove::<OnUpgrade>();
        let upgrade = client_upgrade.is_some() && wants_upgrade(&parts.headers);
        let headers = upstream_headers(std::mem::take(&mut parts.headers), host, inbound, upgrade);
        if upgrade {
            return tunnel(backend, parts.method, parts.uri, headers, client_upgrade).await;
        }
        // Only a request without a body can be sent again (the body is gone with the first try).
        let again = (is_idempotent(&parts.method) && body.is_end_stream()).then(|| headers.clone());
        let mut result = self.send(backend, &parts.method, &parts.uri, headers, body.boxed()).await;
        let mut chosen = backend;
        if let (Err(Failure::Connect(_)), Some(headers)) = (&result, again) {
            if let Some(other) = route.pick(None, Some(backend.addr)) {
                debug!(route = route.name, failed = %backend.addr, retry = %other.addr, "backend unreachable: retrying");
                chosen = other;
                result = self.send(other, &parts.method, &parts.uri, headers, empty()).await;
            }
        }
        let mut response = match result {
            Ok(response) => response,
            Err(Failure::Timeout) => return plain(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time\n"),
            Err(Failure::Connect(why) | Failure::Other(why)) => {
                debug!(route = route.name, backend = %chosen.addr, "{why}");
                return plain(StatusCode::BAD_GATEWAY, "the backend could not be reached\n");
            }
        };
        strip_hop_by_hop(response.headers_mut());
        if inbound.tls && route.hsts {
            response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
        }
        if route.sticky && cookie.as_deref() != Some(chosen.state.cookie.as_str()) {
            let value = format!("{STICKY_COOKIE}={}; Path=/; HttpOnly", chosen.state.cookie);
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        response
    }

    /// One attempt at one backend; the backend counts as busy until the response body ends.
    async fn send(&self, backend: &Backend, method: &Method, uri: &Uri, headers: HeaderMap, body: ProxyBody) -> Result<Response<ProxyBody>, Failure> {
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = backend_uri(&backend.state, uri).map_err(|e| Failure::Other(e.to_string()))?;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        let busy = InFlight::new(backend.state.clone());
        let response = match tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(err)) if err.is_connect() => return Err(Failure::Connect(format!("{err:#}"))),
            Ok(Err(err)) => return Err(Failure::Other(format!("{err:#}"))),
            Ok(Ok(response)) => response,
        };
        Ok(response.map(|body| Tracked { body, _busy: busy }.boxed()))
    }

    fn redirect(&self, route: &Arc<Route>, host: &str, uri: &Uri) -> Response<ProxyBody> {
        let target = format!("https://{host}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let mut response = self.own(Some(route), StatusCode::MOVED_PERMANENTLY, "moved to https\n");
        if let Ok(location) = HeaderValue::from_str(&target) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }

    /// An answer of the path's own, counted.
    fn own(&self, route: Option<&Arc<Route>>, status: StatusCode, text: &'static str) -> Response<ProxyBody> {
        route.map_or(&self.metrics.unrouted, |r| &r.requests).count(status);
        plain(status, text)
    }
}

/// Why an attempt failed.
enum Failure {
    /// No connection to the backend: nothing was sent, another backend may be tried.
    Connect(String),
    Timeout,
    Other(String),
}

/// Counts a request against its backend until dropped (least connections).
struct InFlight(Arc<BackendState>);

impl InFlight {
    fn new(state: Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's response body that keeps its request counted until it ends.
struct Tracked {
    body: Incoming,
    _busy: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Forwards an upgrade request on a connection of its own and, on 101, joins the two upgraded
/// connections until either side closes.
async fn tunnel(backend: &Backend, method: Method, uri: Uri, headers: HeaderMap, client: Option<OnUpgrade>) -> Response<ProxyBody> {
    let busy = InFlight::new(backend.state.clone());
    let unreachable = |why: String| {
        debug!(backend = %backend.addr, "upgrade: {why}");
        plain(StatusCode::BAD_GATEWAY, "the backend could not be reached\n")
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(backend.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return unreachable(err.to_string()),
        Err(_) => return unreachable("connect timed out".into()),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(err) => return unreachable(err.to_string()),
    };
    tokio::spawn(connection.with_upgrades());
    let mut request = Request::new(empty());
    *request.method_mut() = method;
    *request.uri_mut() = Uri::from(uri.path_and_query().cloned().unwrap_or_else(|| "/".parse().expect("a valid path")));
    *request.headers_mut() = headers;
    let mut response = match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return unreachable(err.to_string()),
        Err(_) => return plain(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time\n"),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        if let Some(client) = client {
            tokio::spawn(async move {
                let _busy = busy;
                if let (Ok(client), Ok(backend)) = (client.await, backend_upgrade.await) {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(backend)).await;
                }
            });
        }
    }
    response.map(BodyExt::boxed)
}

/// The host a request is for: HTTP/2's :authority, else the Host header.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    request.headers().get(header::HOST)?.to_str().ok().map(str::to_owned)
}

/// The sticky cookie's value, if the request carries one.
fn sticky_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(STICKY_COOKIE)?.strip_prefix('=').map(str::to_owned))
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Headers for the backend: the client's without hop-by-hop ones (an upgrade keeps its
/// `Connection: upgrade` and `Upgrade`), Host kept (set from :authority for HTTP/2), and the
/// forwarding headers appended.
fn upstream_headers(mut headers: HeaderMap, host: &str, inbound: Inbound, upgrade: bool) -> HeaderMap {
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    if let (true, Some(to)) = (upgrade, upgrade_to) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, to);
    }
    if !headers.contains_key(header::HOST) {
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, value);
        }
    }
    let client_ip = canonical(inbound.client.ip());
    let proto = if inbound.tls { "https" } else { "http" };
    let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client_ip}"),
        None => client_ip.to_string(),
    };
    let node = match client_ip {
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        v4 => v4.to_string(),
    };
    let forwarded = format!("for={node};host=\"{host}\";proto={proto}");
    for (name, value) in [
        (X_FORWARDED_FOR, forwarded_for),
        (X_FORWARDED_PROTO, proto.to_owned()),
        (X_FORWARDED_PORT, inbound.port.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.append(header::FORWARDED, value);
    }
    headers
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed ones and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// `http://backend/path?query`: the pool keys connections by the backend's address.
fn backend_uri(backend: &BackendState, uri: &Uri) -> Result<Uri, hyper::http::uri::InvalidUriParts> {
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
    parts.authority = Some(backend.authority.clone());
    parts.path_and_query = Some(uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts)
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(client: &str) -> Inbound {
        Inbound { client: client.parse().unwrap(), port: 80, tls: false }
    }

    #[test]
    fn forwarding_headers_are_appended_and_hop_by_hop_ones_removed() {
        let mut client = HeaderMap::new();
        client.insert(header::HOST, HeaderValue::from_static("web.example.com"));
        client.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        client.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        client.insert(HeaderName::from_static("x-private"), HeaderValue::from_static("secret"));
        client.insert(HeaderName::from_static("keep-alive"), HeaderValue::from_static("timeout=5"));
        client.insert(header::TE, HeaderValue::from_static("trailers"));
        let h = upstream_headers(client, "web.example.com", inbound("[::ffff:10.0.0.7]:5000"), false);
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.9, 10.0.0.7");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_PORT], "80");
        assert_eq!(h[header::FORWARDED], "for=10.0.0.7;host=\"web.example.com\";proto=http");
        assert_eq!(h[header::HOST], "web.example.com");
        for gone in ["connection", "keep-alive", "x-private", "te"] {
            assert!(!h.contains_key(gone), "{gone} must not be forwarded");
        }
    }

    #[test]
    fn an_upgrade_keeps_its_connection_and_upgrade_headers() {
        let mut client = HeaderMap::new();
        client.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        client.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&client));
        let h = upstream_headers(client.clone(), "a.example", inbound("10.0.0.7:5000"), true);
        assert_eq!((h[header::CONNECTION].to_str().unwrap(), h[header::UPGRADE].to_str().unwrap()), ("upgrade", "websocket"));
    }

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; mesosphere_server_id=abc; b=2"));
        assert_eq!(sticky_cookie(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("mesosphere_server_idx=1"));
        assert_eq!(sticky_cookie(&h), None);
    }
}
