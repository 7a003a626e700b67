//! When to ask the source for the next barrier: the scheduling state of the checkpoint
//! protocol, without I/O.
//!
//! - One checkpoint at a time on the interval. A writer over its memory budget
//!   (`pressure`), a re-snapshot or the source itself (`want`) may ask for one sooner,
//!   and may start the next one while the previous commits — never a third: its writers
//!   wait for that commit at the barrier, which holds the source back.
//! - At most one barrier asked for and not emitted yet: a new request would replace it.
//! - On shutdown, or when a bounded source ends, one final barrier; nothing after it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The scheduling state of one run.
#[derive(Debug)]
pub(crate) struct CheckpointSchedule {
    interval: Duration,
    /// The id the next barrier request gets.
    next_id: u64,
    /// Asked of the source and not emitted yet.
    requested: Option<u64>,
    /// When `requested` was asked for (a checkpoint's duration starts there).
    requested_at: Instant,
    /// Emitted but not committed yet, oldest first.
    uncommitted: VecDeque<u64>,
    /// The barrier that ends the run, once decided.
    final_id: Option<u64>,
    last_barrier: Instant,
    /// A checkpoint was asked for before the interval (re-snapshot, the source).
    wanted: bool,
}

/// What a barrier the source emitted means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BarrierSeen {
    /// When the barrier was asked for.
    pub requested_at: Instant,
    /// It is the final barrier: the run ends once it is handed on.
    pub is_final: bool,
}

impl CheckpointSchedule {
    /// A schedule whose first barrier gets `first_id`.
    pub fn new(interval: Duration, first_id: u64, now: Instant) -> Self {
        CheckpointSchedule {
            interval,
            next_id: first_id,
            requested: None,
            requested_at: now,
            uncommitted: VecDeque::new(),
            final_id: None,
            last_barrier: now,
            wanted: false,
        }
    }

    /// The id the next barrier will get (a re-snapshot is answered by its commit).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Ask for a checkpoint before the interval ends.
    pub fn want(&mut self) {
        self.wanted = true;
    }

    /// The source asks for a checkpoint now (ignored while one is asked for: that one
    /// answers it).
    pub fn source_wants(&mut self) {
        self.wanted = self.requested.is_none();
    }

    /// The barrier to ask the source for now, if any. `pressure` takes a writer's request
    /// (consumed only when it is looked at); `stopping` asks for the final barrier.
    pub fn request(
        &mut self,
        now: Instant,
        stopping: bool,
        mut pressure: impl FnMut() -> bool,
    ) -> Option<u64> {
        let due = self.requested.is_none()
            && self.final_id.is_none()
            && match self.uncommitted.len() {
                0 => {
                    now.duration_since(self.last_barrier) >= self.interval
                        || pressure()
                        || std::mem::take(&mut self.wanted)
                }
                1 => pressure() || std::mem::take(&mut self.wanted),
                _ => false,
            };
        if self.final_id.is_none() && stopping && self.requested.is_none() {
            self.final_id = Some(self.next_id);
        }
        (due || self.final_id == Some(self.next_id)).then(|| self.ask(now))
    }

    /// The bounded source ended: the final barrier to ask for, or `None` if it was asked
    /// for already (the source broke its contract: a requested barrier comes before the
    /// end).
    pub fn source_ended(&mut self, now: Instant) -> Option<u64> {
        if self.final_id.is_some() {
            return None;
        }
        self.final_id = Some(self.next_id);
        Some(self.ask(now))
    }

    fn ask(&mut self, now: Instant) -> u64 {
        // One barrier answers every request made so far.
        self.wanted = false;
        let id = self.next_id;
        self.requested = Some(id);
        self.requested_at = now;
        self.next_id += 1;
        id
    }

    /// The source emitted barrier `id`.
    pub fn barrier(&mut self, id: u64, now: Instant) -> BarrierSeen {
        self.last_barrier = now;
        if self.requested == Some(id) {
            self.requested = None;
        }
        let is_final = self.final_id == Some(id);
        if !is_final {
            self.uncommitted.push_back(id);
        }
        BarrierSeen {
            requested_at: self.requested_at,
            is_final,
        }
    }

    /// Checkpoint `id` (and every earlier one) is committed.
    pub fn committed(&mut self, id: u64) {
        while self.uncommitted.front().is_some_and(|u| *u <= id) {
            self.uncommitted.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn one_barrier_per_interval_and_one_request_at_a_time() {
        let t0 = Instant::now();
        let mut s = CheckpointSchedule::new(SECOND, 5, t0);
        assert_eq!(s.request(t0, false, || false), None);
        assert_eq!(s.request(t0 + SECOND, false, || false), Some(5));
        // Asked and not emitted: no second request, whatever the writers say.
        assert_eq!(s.request(t0 + 3 * SECOND, false, || true), None);
        let seen = s.barrier(5, t0 + 3 * SECOND);
        assert_eq!(seen.requested_at, t0 + SECOND);
        assert!(!seen.is_final);
        // 5 is not committed: the interval alone does not start 6 ...
        assert_eq!(s.request(t0 + 5 * SECOND, false, || false), None);
        s.committed(5);
        // ... once it is, the interval since the barrier does.
        assert_eq!(s.request(t0 + 4 * SECOND, false, || false), Some(6));
    }

    #[test]
    fn pressure_starts_a_second_checkpoint_never_a_third() {
        let t0 = Instant::now();
        let mut s = CheckpointSchedule::new(SECOND, 1, t0);
        assert_eq!(s.request(t0, false, || true), Some(1));
        s.barrier(1, t0);
        assert_eq!(s.request(t0, false, || true), Some(2));
        s.barrier(2, t0);
        let mut looked = false;
        assert_eq!(
            s.request(t0 + 9 * SECOND, false, || {
                looked = true;
                true
            }),
            None
        );
        assert!(!looked, "pressure is kept for when it can be served");
        s.committed(1);
        assert_eq!(s.request(t0, false, || true), Some(3));
    }

    #[test]
    fn a_wanted_checkpoint_is_asked_once() {
        let t0 = Instant::now();
        let mut s = CheckpointSchedule::new(SECOND * 60, 1, t0);
        s.source_wants();
        assert_eq!(s.request(t0, false, || false), Some(1));
        // Wanted while one is asked for: that one answers it.
        s.source_wants();
        s.barrier(1, t0);
        s.committed(1);
        assert_eq!(s.request(t0, false, || false), None);
    }

    #[test]
    fn shutdown_asks_for_one_final_barrier() {
        let t0 = Instant::now();
        let mut s = CheckpointSchedule::new(SECOND, 1, t0);
        assert_eq!(s.request(t0 + SECOND, false, || false), Some(1));
        // Stopping while 1 is asked: 1 is not final; the final one comes after it.
        assert_eq!(s.request(t0 + SECOND, true, || false), None);
        assert!(!s.barrier(1, t0 + SECOND).is_final);
        assert_eq!(s.request(t0 + SECOND, true, || false), Some(2));
        assert!(s.barrier(2, t0 + SECOND).is_final);
        // Nothing after the final barrier.
        assert_eq!(s.request(t0 + 9 * SECOND, true, || true), None);
    }

    #[test]
    fn a_bounded_source_ends_with_one_final_barrier() {
        let t0 = Instant::now();
        let mut s = CheckpointSchedule::new(SECOND, 3, t0);
        assert_eq!(s.source_ended(t0), Some(3));
        assert_eq!(s.source_ended(t0), None, "ending twice breaks the contract");
        assert!(s.barrier(3, t0).is_final);
    }
}
