//! Delays between retries: doubling from a first delay up to [`Backoff::MAX`], back to the first
//! after a success. Marathon's re-reads and its event stream each keep one.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(30);

    pub const fn starting_at(first: Duration) -> Self {
        Self { first, next: first }
    }

    /// The delay before the next retry; the one after is twice as long (at most `MAX`).
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn succeeded(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut backoff = Backoff::starting_at(Duration::from_millis(500));
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed().as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(500));
    }
}
