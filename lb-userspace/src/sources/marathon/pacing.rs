//! When full re-reads of Marathon run (pure; its test drives it with made-up instants).

use std::time::{Duration, Instant};

use super::backoff::Backoff;

/// When full re-reads of Marathon run. One asked for within `MIN_GAP` of the end of the last
/// waits for the gap to pass, and asks meanwhile merge into it: a stream sending garbage or a
/// leader flapping every second then costs one list per gap, not one per event or reconnect.
/// A failed re-read is retried after the backoff. (The operator's SIGHUP is not paced.)
#[derive(Debug)]
pub struct RelistPacing {
    last_end: Option<Instant>,
    due: Option<(Instant, String)>,
    backoff: Backoff,
}

impl Default for RelistPacing {
    fn default() -> Self {
        Self { last_end: None, due: None, backoff: Backoff::starting_at(Self::FIRST_RETRY) }
    }
}

impl RelistPacing {
    pub const MIN_GAP: Duration = Duration::from_secs(1);
    /// The first retry after a failed re-read (then doubling, see [`Backoff`]).
    pub const FIRST_RETRY: Duration = Duration::from_millis(500);

    /// Whether a re-read asked for at `now` runs at once; if not, it is scheduled.
    pub fn ask(&mut self, now: Instant, why: &str) -> bool {
        let Some(allowed) = self.last_end.map(|end| end + Self::MIN_GAP).filter(|allowed| now < *allowed) else {
            return true;
        };
        match &mut self.due {
            Some((at, _)) => *at = (*at).min(allowed),
            None => self.due = Some((allowed, why.to_owned())),
        }
        false
    }

    /// A re-read ended at `now`: it answers every scheduled one, or, if it failed, schedules
    /// the retry.
    pub fn ran(&mut self, now: Instant, failed: bool) {
        self.last_end = Some(now);
        self.due = if failed {
            Some((now + self.backoff.failed(), "retrying after a failure".to_owned()))
        } else {
            self.backoff.succeeded();
            None
        };
    }

    /// When the scheduled re-read is due.
    pub fn due(&self) -> Option<Instant> {
        self.due.as_ref().map(|(at, _)| *at)
    }

    /// The scheduled re-read's reason, now that it is due.
    pub fn take_due(&mut self) -> Option<String> {
        self.due.take().map(|(_, why)| why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relists_asked_for_within_the_gap_merge_into_one_at_its_end() {
        let start = Instant::now();
        let mut pacing = RelistPacing::default();
        assert!(pacing.ask(start, "first"), "nothing ran yet");
        pacing.ran(start, false);
        let ms = |n| start + Duration::from_millis(n);
        assert!(!pacing.ask(ms(100), "stream lost"));
        assert!(!pacing.ask(ms(300), "stream reconnected"));
        assert_eq!(pacing.due(), Some(start + RelistPacing::MIN_GAP), "one re-read, at the end of the gap");
        assert_eq!(pacing.take_due().as_deref(), Some("stream lost"));
        assert!(pacing.ask(ms(1000), "after the gap"));
        pacing.ran(ms(1000), true);
        assert_eq!(pacing.due(), Some(ms(1000) + RelistPacing::FIRST_RETRY), "a failure is retried after the backoff");
        assert!(!pacing.ask(ms(1200), "an event"), "within the gap");
        assert_eq!(pacing.due(), Some(ms(1500)), "the retry is not pushed back");
        pacing.ran(ms(1500), false);
        assert_eq!(pacing.due(), None, "a success answers everything scheduled");
    }
}
