//! The run loop: the start-up sync, then a select over independent parts: stop signals,
//! SIGHUP, the services-file watch, the Marathon source and the housekeeping tick. A part that
//! is not configured never wakes the loop.

use std::{io::Write as _, time::Duration};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

use super::program::Agent;
use crate::{
    dataplane::{self, Dataplane},
    sources::{marathon, services_file::FileWatch},
};

/// How often closed and idle full-NAT mappings are freed (a closed connection's port is free
/// again at most this long after its linger, `nat_state::CLOSED_LINGER`), and how soon an
/// address added to or removed from the node is served or no longer.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(2);

/// What woke the loop.
enum Wake {
    Hangup,
    FileChanged,
    Marathon(marathon::Work),
    Housekeeping,
}

impl<D: Dataplane> Agent<D> {
    /// Brings the maps to the sources' state once, says `ready`, then follows the sources until
    /// SIGINT/SIGTERM.
    pub async fn serve(&mut self, mut file: Option<FileWatch>, mut marathon: Option<marathon::Source>) -> Result<()> {
        let mut stop = StopSignals::install()?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        if !self.start_up(&mut stop, marathon.as_mut()).await? {
            return Ok(());
        }
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                _ = stop.signalled() => return Ok(()),
                _ = hup.recv() => Wake::Hangup,
                () = when_some(file.as_mut(), FileWatch::changed) => Wake::FileChanged,
                work = when_some(marathon.as_mut(), marathon::Source::next_work) => Wake::Marathon(work),
                _ = housekeeping.tick() => Wake::Housekeeping,
            };
            let work = match wake {
                Wake::Hangup => self.hangup(file.as_mut(), marathon.as_ref()),
                Wake::FileChanged => {
                    self.reload_file(file.as_ref(), marathon.as_ref());
                    None
                }
                Wake::Marathon(work) => Some(work),
                Wake::Housekeeping => {
                    self.housekeep(dataplane::monotonic_ns());
                    None
                }
            };
            // Signals stay answered while Marathon or DNS is slow: a stop drops the work.
            if let (Some(source), Some(work)) = (marathon.as_mut(), work) {
                let Some(outcome) = stop.unless_stopped(source.run(work)).await else { return Ok(()) };
                self.follow_marathon(source, &outcome);
            }
        }
    }

    /// The first sync, then `ready` (stdout and systemd). Until Marathon has answered once,
    /// the services already pinned (a restart) stay exactly as they are: an empty or
    /// unreachable source never flushes them. False: stopped meanwhile.
    async fn start_up(&mut self, stop: &mut StopSignals, marathon: Option<&mut marathon::Source>) -> Result<bool> {
        match marathon {
            Some(source) => {
                let Some(outcome) = stop.unless_stopped(source.start()).await else { return Ok(false) };
                self.follow_marathon(source, &outcome);
            }
            None => self.apply(None)?,
        }
        println!("ready");
        std::io::stdout().flush()?;
        // systemd (Type=notify): started means programmed. Without NOTIFY_SOCKET this does nothing.
        if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            warn!("telling systemd the agent is ready: {err}");
        }
        Ok(true)
    }

    /// SIGHUP: the services file is re-read, and Marathon's apps (not paced: the operator asked).
    fn hangup(&mut self, file: Option<&mut FileWatch>, marathon: Option<&marathon::Source>) -> Option<marathon::Work> {
        if let Some(file) = file {
            info!("SIGHUP: reloading {}", file.path().display());
            file.mark_seen();
            self.reload(file.path(), marathon.and_then(marathon::Source::desired));
        }
        marathon.map(|_| marathon::Work::Relist("SIGHUP".to_owned()))
    }

    fn reload_file(&mut self, file: Option<&FileWatch>, marathon: Option<&marathon::Source>) {
        if let Some(file) = file {
            info!("{} changed: reloading", file.path().display());
            self.reload(file.path(), marathon.and_then(marathon::Source::desired));
        }
    }
}

/// `part`'s next wake-up; never, for a part that is not configured.
async fn when_some<'a, P, F, T>(part: Option<&'a mut P>, next: impl FnOnce(&'a mut P) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    match part {
        Some(part) => next(part).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT: both stop the agent (programs stay attached, maps pinned).
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// Completes when either arrives.
    async fn signalled(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM"),
            _ = self.int.recv() => info!("SIGINT"),
        }
    }

    /// `work`'s result, or None when a stop signal came first (the work is dropped).
    async fn unless_stopped<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            _ = self.signalled() => None,
        }
    }
}
