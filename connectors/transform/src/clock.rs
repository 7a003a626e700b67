//! `_ingested_at` and `_seq`: the time a batch is shaped and the sequence numbers.

/// The time a batch is shaped, and the numbers `_seq` hands out: strictly increasing,
/// from the wall clock in nanoseconds so that they keep growing across restarts (unless
/// the clock is set back by more than the restart takes).
#[derive(Debug, Default)]
pub struct Clock {
    now_ns: i64,
    last_seq: i64,
}

impl Clock {
    /// A clock reading `now_ns` (nanoseconds since the epoch).
    pub fn at(now_ns: i64) -> Self {
        Clock {
            now_ns,
            last_seq: 0,
        }
    }

    /// Read the wall clock.
    pub fn tick(&mut self) {
        self.now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    }

    /// The time read last, in µs since the epoch.
    pub fn now_micros(&self) -> i64 {
        self.now_ns / 1000
    }

    /// The first of `n` new sequence numbers.
    pub(crate) fn take(&mut self, n: usize) -> i64 {
        let first = (self.last_seq + 1).max(self.now_ns);
        self.last_seq = first + n as i64 - 1;
        first
    }
}
