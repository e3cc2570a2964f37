//! The event stream as a source of "re-read the apps" signals: connects (round robin over the
//! URLs), asks for a full re-list after every (re)connect since events have no replay, turns
//! relevant events into a change signal (a burst becomes one), detects a stalled stream (no
//! complete event or heartbeat for `stall`: a stream trickling bytes is as dead as a silent one)
//! and reconnects with backoff, reset only once a stream has proved alive.

use std::{pin::Pin, time::Duration};

use futures_util::{FutureExt as _, Stream, StreamExt as _};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    backoff::Backoff,
    client::{FrameTooLarge, MarathonClient, SseEvent, SseParser},
    events,
};

type ByteStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>>>>;

/// What the caller should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Signal {
    /// A (re)connected stream: everything may have changed meanwhile.
    Relist,
    /// Relevant events arrived (a burst: everything that had arrived).
    Events(Vec<SseEvent>),
    /// The stream is gone or cannot be opened (a reconnect is scheduled): the caller re-reads
    /// the apps too, so an unreachable Marathon shows in the status at once.
    Lost,
}

pub struct EventWatch {
    stream: Option<ByteStream>,
    parser: SseParser,
    connected_to: Option<String>,
    retry_at: Instant,
    backoff: Backoff,
    stall: Duration,
    /// When the stream is declared stalled unless a frame ends first.
    alive_until: Instant,
}

/// The first delay before reopening the stream (then doubling, see [`Backoff`]).
const FIRST_REOPEN: Duration = Duration::from_millis(200);

impl EventWatch {
    pub fn new(stall: Duration) -> Self {
        let now = Instant::now();
        Self { stream: None, parser: SseParser::default(), connected_to: None, retry_at: now, backoff: Backoff::starting_at(FIRST_REOPEN), stall, alive_until: now }
    }

    /// The URL the stream is connected to, if it is.
    pub fn connected_to(&self) -> Option<&str> {
        self.connected_to.as_deref()
    }

    fn disconnect(&mut self, why: &str) {
        if let Some(url) = self.connected_to.take() {
            warn!(url, "event stream {why}; reconnecting");
        }
        self.stream = None;
        self.parser = SseParser::default();
        self.retry_at = Instant::now() + self.backoff.failed();
    }

    /// Waits for the next reason to re-read the apps.
    pub async fn next(&mut self, client: &mut MarathonClient) -> Signal {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return self.connect(client).await;
            };
            match tokio::time::timeout_at(self.alive_until, stream.next()).await {
                Ok(Some(Ok(bytes))) => {
                    let frames_before = self.parser.frames_ended();
                    let events = match burst(stream, &mut self.parser, &bytes) {
                        Ok(events) => events,
                        Err(too_large) => {
                            self.disconnect(&format!("sent {too_large}"));
                            return Signal::Lost;
                        }
                    };
                    if self.parser.frames_ended() != frames_before {
                        self.alive_until = Instant::now() + self.stall;
                        self.backoff.succeeded();
                    }
                    if !events.is_empty() {
                        return Signal::Events(events);
                    }
                }
                Ok(Some(Err(err))) => {
                    self.disconnect(&format!("failed: {}", crate::error_chain(&err)));
                    return Signal::Lost;
                }
                Ok(None) => {
                    self.disconnect("closed");
                    return Signal::Lost;
                }
                Err(_) => {
                    self.disconnect(&format!("stalled (no event or heartbeat for {} s)", self.stall.as_secs()));
                    return Signal::Lost;
                }
            }
        }
    }

    /// Opens the stream once the backoff allows. The backoff is not reset here: a stream that
    /// opens but never delivers a frame must not be reopened at full speed.
    async fn connect(&mut self, client: &mut MarathonClient) -> Signal {
        tokio::time::sleep_until(self.retry_at).await;
        match client.events().await {
            Ok((url, response)) => {
                info!(url, "event stream connected");
                self.stream = Some(Box::pin(response.bytes_stream()));
                self.connected_to = Some(url);
                self.alive_until = Instant::now() + self.stall;
                Signal::Relist
            }
            Err(err) => {
                warn!("event stream: {}", crate::error_chain(&err));
                self.retry_at = Instant::now() + self.backoff.failed();
                Signal::Lost
            }
        }
    }
}

/// The relevant events `first` and whatever else has already arrived complete (a burst is
/// handled at once).
fn burst(stream: &mut ByteStream, parser: &mut SseParser, first: &[u8]) -> Result<Vec<SseEvent>, FrameTooLarge> {
    let mut events = relevant_in(parser, first)?;
    while let Some(Some(Ok(more))) = stream.next().now_or_never() {
        events.extend(relevant_in(parser, &more)?);
    }
    Ok(events)
}

/// The events `bytes` complete that can change the services.
fn relevant_in(parser: &mut SseParser, bytes: &[u8]) -> Result<Vec<SseEvent>, FrameTooLarge> {
    Ok(parser.feed(bytes)?.into_iter().filter(|e| events::is_subscribed(&e.event)).collect())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
    };

    use super::*;
    use crate::sources::marathon::client::Auth;

    /// An event stream that sends `head` at once, then `tail` byte by byte every 50 ms, then
    /// nothing. Returns its URL and a connection counter.
    fn stream_server(head: &'static [u8], tail: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
                    let _ = stream.write_all(head);
                    for byte in tail {
                        std::thread::sleep(Duration::from_millis(50));
                        if stream.write_all(&[*byte]).is_err() {
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_secs(3600));
                });
            }
        });
        (url, connections)
    }

    /// A half-dead connection: the first event, then silence (no heartbeats).
    fn silent_stream_server() -> (String, Arc<AtomicUsize>) {
        stream_server(b"event: event_stream_attached\r\ndata: {\"eventType\":\"event_stream_attached\"}\r\n\r\n", b"")
    }

    #[tokio::test]
    async fn a_trickling_stream_is_as_stalled_as_a_silent_one() {
        // A byte every 50 ms, but never a frame end within the 300 ms the stream is given.
        let (url, connections) = stream_server(b"", b"event: event_stream_attached\r\ndata: {}\r\n\r\n");
        let mut client = MarathonClient::new(vec![url], Auth::None, Duration::from_secs(2)).unwrap();
        let mut watch = EventWatch::new(Duration::from_millis(300));
        let mut lost_at = Vec::new();
        let mut reopened_after = Vec::new();
        for _ in 0..3 {
            assert_eq!(watch.next(&mut client).await, Signal::Relist);
            let opened = Instant::now();
            if let Some(lost) = lost_at.last() {
                reopened_after.push(opened - *lost);
            }
            assert_eq!(watch.next(&mut client).await, Signal::Lost, "bytes without a frame end are no sign of life");
            let waited = opened.elapsed();
            assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(1), "{waited:?}");
            lost_at.push(Instant::now());
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        // Streams that never delivered a frame are reopened ever more slowly (200 ms, then 400 ms).
        assert!(reopened_after[0] >= Duration::from_millis(200) && reopened_after[1] >= Duration::from_millis(400), "{reopened_after:?}");
    }

    #[tokio::test]
    async fn a_silent_stream_is_detected_and_reconnected() {
        let (url, connections) = silent_stream_server();
        let mut client = MarathonClient::new(vec![url], Auth::None, Duration::from_secs(2)).unwrap();
        let mut watch = EventWatch::new(Duration::from_millis(300));
        assert_eq!(watch.next(&mut client).await, Signal::Relist);
        let started = Instant::now();
        assert_eq!(watch.next(&mut client).await, Signal::Lost, "no byte for the stall time");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(watch.next(&mut client).await, Signal::Relist, "reconnected, and a re-list asked for");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }
}
