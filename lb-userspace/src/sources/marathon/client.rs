//! Marathon's REST API and event stream over HTTP(S): several URLs with failover, redirects
//! followed with the credentials kept (a standby answers /v2/events with 302), basic auth or a
//! DC/OS token, a timeout on every request.

use std::time::Duration;

use reqwest::{header, StatusCode};
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{}", without_query(url))]
    Transport { url: String, source: reqwest::Error },
    #[error("{}: HTTP {status}", without_query(url))]
    Status { url: String, status: StatusCode },
    #[error("{}: more than {MAX_REDIRECTS} redirects", without_query(url))]
    Redirects { url: String },
    #[error("{}: reading the body", without_query(url))]
    Body { url: String, source: reqwest::Error },
    #[error("no Marathon URL answered: {0}")]
    AllFailed(String),
}

const MAX_REDIRECTS: usize = 3;

/// A request URL as errors show it: the query (the event stream's lists a dozen event types)
/// makes a warning unreadable and says nothing about what failed.
fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// How the agent authenticates to Marathon.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    /// HTTP basic (`--marathon-credentials USER:PASSWORD`).
    Basic { user: String, password: String },
    /// DC/OS: `Authorization: token=<JWT>`.
    Token(String),
}

pub struct MarathonClient {
    urls: Vec<String>,
    http: reqwest::Client,
    auth: Auth,
    /// The URL that answered last: REST requests start there.
    preferred: usize,
    /// Where the next event-stream attempt starts (round robin over the URLs).
    next_stream: usize,
    timeout: Duration,
}

impl MarathonClient {
    pub fn new(urls: Vec<String>, auth: Auth, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .build()?;
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        Ok(Self { urls, http, auth, preferred: 0, next_stream: 0, timeout })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// How long a request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL that answered last.
    pub fn current(&self) -> &str {
        &self.urls[self.preferred]
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Token(token) => request.header(header::AUTHORIZATION, format!("token={token}")),
        }
    }

    /// GET with redirects followed by hand (Accept and Authorization kept on every hop).
    async fn get(&self, url: String, accept: &str, timeout: Option<Duration>) -> Result<reqwest::Response, ClientError> {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.authorize(self.http.get(&url).header(header::ACCEPT, accept));
            if let Some(t) = timeout {
                request = request.timeout(t);
            }
            let response = request.send().await.map_err(|source| ClientError::Transport { url: url.clone(), source: source.without_url() })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| ClientError::Status { url: url.clone(), status })?;
                url = reqwest::Url::parse(&url)
                    .and_then(|base| base.join(location))
                    .map(String::from)
                    .map_err(|_| ClientError::Status { url: url.clone(), status })?;
                continue;
            }
            if !status.is_success() {
                return Err(ClientError::Status { url, status });
            }
            return Ok(response);
        }
        Err(ClientError::Redirects { url })
    }

    /// `GET /v2/apps?embed=apps.tasks&embed=apps.deployments` (the body), trying the URL that
    /// answered last first, then the others.
    pub async fn apps(&mut self) -> Result<bytes::Bytes, ClientError> {
        let mut errors = Vec::new();
        for attempt in 0..self.urls.len() {
            let i = (self.preferred + attempt) % self.urls.len();
            let url = format!("{}/v2/apps?embed=apps.tasks&embed=apps.deployments", self.urls[i]);
            match self.body(url).await {
                Ok(Some(apps)) => {
                    self.preferred = i;
                    return Ok(apps);
                }
                Ok(None) => errors.push(format!("{}/v2/apps: HTTP 404", self.urls[i])),
                Err(err) => errors.push(crate::error_chain(&err)),
            }
        }
        Err(ClientError::AllFailed(errors.join("; ")))
    }

    /// `GET /v2/pods` and `GET /v2/pods/::status` (definitions, then every pod's instances)
    /// from the URL that answered last. None when Marathon has no pods API (before 1.4: 404).
    pub async fn pods(&mut self) -> Result<Option<(bytes::Bytes, bytes::Bytes)>, ClientError> {
        let base = &self.urls[self.preferred];
        let (pods, status) = (format!("{base}/v2/pods"), format!("{base}/v2/pods/::status"));
        let Some(definitions) = self.body(pods).await? else { return Ok(None) };
        let statuses = self.body(status.clone()).await?.ok_or(ClientError::Status { url: status, status: StatusCode::NOT_FOUND })?;
        Ok(Some((definitions, statuses)))
    }

    /// `GET /v2/pods/{id}::status`: one pod with its instances (its `spec` the definition). None
    /// when Marathon does not know the pod (404).
    pub async fn pod(&mut self, id: &str) -> Result<Option<bytes::Bytes>, ClientError> {
        let id = id.trim_start_matches('/');
        self.body(format!("{}/v2/pods/{id}::status", self.urls[self.preferred])).await
    }

    /// The body of a JSON GET; None on 404.
    async fn body(&self, url: String) -> Result<Option<bytes::Bytes>, ClientError> {
        match self.get(url.clone(), "application/json", Some(self.timeout)).await {
            Ok(response) => Ok(Some(response.bytes().await.map_err(|source| ClientError::Body { url, source: source.without_url() })?)),
            Err(ClientError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `GET /v2/apps/{id}?embed=app.tasks&embed=app.deployments`: one app, for an event that
    /// does not carry what the model needs. None when Marathon does not know the app (404).
    pub async fn app(&mut self, id: &str) -> Result<Option<bytes::Bytes>, ClientError> {
        let id = id.trim_start_matches('/');
        self.body(format!("{}/v2/apps/{id}?embed=app.tasks&embed=app.deployments", self.urls[self.preferred])).await
    }

    /// Opens `/v2/events` on the next URL in turn. The response body is the stream; it has no
    /// overall timeout (the caller detects stalls).
    pub async fn events(&mut self) -> Result<(String, reqwest::Response), ClientError> {
        let i = self.next_stream % self.urls.len();
        self.next_stream = (i + 1) % self.urls.len();
        let filter: String = super::events::subscribed().map(|e| format!("event_type={e}&")).collect();
        let url = format!("{}/v2/events?{filter}plan-format=light", self.urls[i]);
        let response = self.get(url, "text/event-stream", None).await?;
        Ok((self.urls[i].clone(), response))
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or the JSON's `eventType` for streams without one (Marathon < 0.11).
    pub event: String,
    pub data: String,
}

/// The largest event frame the parser holds (bytes since the last blank line). Marathon's
/// biggest events carry one app definition (`api_post_event`), kilobytes to a few hundred; a
/// stream that sends more without a frame end is broken, and holding it would grow the agent
/// without bound.
pub const MAX_FRAME: usize = 8 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("an event frame over {} MiB without an end", MAX_FRAME >> 20)]
pub struct FrameTooLarge;

/// Incremental parser of a `text/event-stream` body (CRLF or LF line ends; a blank line
/// without data — Marathon's heartbeat — dispatches nothing).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// Bytes of the frame being read (its lines so far and the current line).
    frame_bytes: usize,
    /// Frames ended (blank lines: events and heartbeats), the stream's sign of life.
    frames_ended: u64,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete, or an error once a frame outgrows
    /// [`MAX_FRAME`] (the parser is then spent: the stream must be dropped).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, FrameTooLarge> {
        let mut out = Vec::new();
        for &b in bytes {
            self.frame_bytes += 1;
            if self.frame_bytes > MAX_FRAME {
                return Err(FrameTooLarge);
            }
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            if line.is_empty() {
                if !self.data.is_empty() {
                    let data = std::mem::take(&mut self.data).join("\n");
                    let event = self.event.take().unwrap_or_else(|| event_type_of(&data));
                    out.push(SseEvent { event, data });
                }
                self.event = None;
                self.frame_bytes = 0;
                self.frames_ended += 1;
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            }
            // Comments (":…"), ids and retry fields are ignored.
        }
        Ok(out)
    }

    /// Frames (events and heartbeats) ended so far.
    pub fn frames_ended(&self) -> u64 {
        self.frames_ended
    }
}

fn event_type_of(data: &str) -> String {
    serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v.get("eventType").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/marathon");
        std::fs::read_to_string(root.join(path)).unwrap()
    }

    #[test]
    fn parses_the_wire_sample_with_crlf_and_heartbeats() {
        let mut p = SseParser::default();
        let wire = "\r\n\r\nevent: status_update_event\r\ndata: {\"eventType\":\"status_update_event\"}\r\n\r\n\r\n";
        // Fed in awkward pieces, as TCP delivers them.
        let mut events = Vec::new();
        for chunk in wire.as_bytes().chunks(3) {
            events.extend(p.feed(chunk).unwrap());
        }
        assert_eq!(events, [SseEvent { event: "status_update_event".into(), data: "{\"eventType\":\"status_update_event\"}".into() }]);
    }

    #[test]
    fn the_fixture_streams_parse() {
        let mut p = SseParser::default();
        let events = p.feed(fixture("marathon/raml-examples/events-stream.marathon-raml.txt").as_bytes()).unwrap();
        assert!(events.iter().any(|e| e.event == "status_update_event"), "{events:?}");
        let mut p = SseParser::default();
        let events = p.feed((fixture("marathon/legacy-docs/events-stream.data-only.marathon-legacy-docs.txt") + "\n\n").as_bytes()).unwrap();
        assert!(!events.is_empty() && events.iter().all(|e| !e.event.is_empty()), "data-only events get their type from the JSON: {events:?}");
    }

    #[test]
    fn heartbeats_count_as_frames_and_an_endless_frame_is_refused() {
        let mut p = SseParser::default();
        assert_eq!(p.feed(b"\r\n\r\nevent: x\r\n").unwrap(), []);
        assert_eq!(p.frames_ended(), 2, "two heartbeats; the open frame is not counted");
        let mut p = SseParser::default();
        let line = vec![b'x'; 1 << 20];
        let fed: Vec<_> = (0..MAX_FRAME >> 20).map(|_| p.feed(&line)).collect();
        assert!(fed.iter().all(Result::is_ok), "exactly MAX_FRAME bytes are held");
        assert_eq!(p.feed(b"x"), Err(FrameTooLarge));
    }
}
