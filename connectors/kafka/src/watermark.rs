//! Event time: the watermark a Kafka source reports to sinks that commit partitions by
//! it (the Hive sink's `_SUCCESS`).

use std::collections::HashMap;
use std::time::Duration;

/// How the source tracks event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkOptions {
    /// A timestamp column of the rows; `None` = the messages' Kafka timestamps.
    pub column: Option<String>,
    /// How far the watermark stays behind event time, in microseconds.
    pub lateness_micros: i64,
    /// A partition with no message for this long no longer holds the watermark back.
    pub idle: Duration,
}

/// Event time per partition; the watermark is the slowest active partition's newest
/// event time minus the lateness, so a partition read behind the others (a backfill
/// reads partitions at different paces) does not make its rows late.
///
/// "Idle" is measured in time the source spent waiting for messages (starved), not in
/// wall time: while the sink holds the source back (a slow or unreachable store), no
/// partition turns idle just because none was read.
#[derive(Default)]
pub(crate) struct EventTime {
    /// (topic index, partition) → (newest event time in µs, `starved` when last seen).
    partitions: HashMap<(usize, i32), (i64, Duration)>,
    /// Total time the source waited for messages.
    starved: Duration,
    emitted: i64,
}

impl EventTime {
    /// Nothing seen, nothing emitted.
    pub(crate) fn new() -> Self {
        EventTime {
            emitted: i64::MIN,
            ..Default::default()
        }
    }

    /// The source waited `d` for messages.
    pub(crate) fn waited(&mut self, d: Duration) {
        self.starved += d;
    }

    pub(crate) fn saw(&mut self, topic: usize, partition: i32, micros: i64) {
        let now = self.starved;
        let e = self
            .partitions
            .entry((topic, partition))
            .or_insert((micros, now));
        e.0 = e.0.max(micros);
        e.1 = now;
    }

    /// A new watermark, if it moved forward.
    pub(crate) fn advance(&mut self, w: &WatermarkOptions) -> Option<i64> {
        let now = self.starved;
        let active = self
            .partitions
            .values()
            .filter(|(_, seen)| now.saturating_sub(*seen) < w.idle);
        // Every partition idle: the newest event time of all.
        let slowest = active
            .map(|(t, _)| *t)
            .min()
            .or_else(|| self.partitions.values().map(|(t, _)| *t).max())?;
        let watermark = slowest.saturating_sub(w.lateness_micros);
        (watermark > self.emitted).then(|| {
            self.emitted = watermark;
            watermark
        })
    }
}
