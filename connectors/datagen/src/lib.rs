//! Generator source (`type = "datagen"`): deterministic test and benchmark data with no
//! server at all.
//!
//! Profiles:
//! - `nexmark` ([`nexmark`]): persons, auctions and bids, append-only;
//! - `orders` ([`orders`]): a keyed table with inserts, updates and deletes.
//!
//! The position is the number of the next event. Every event is a pure function of the
//! seed and its number, so reopening at a checkpoint's position replays exactly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::{ChangeBatch, Result, Source, SourceEvent, SourcePosition, TableSchema};
use tokio::time::Instant;

pub mod nexmark;
pub mod orders;
mod rng;

/// Which data set to generate (`profile` in the pipeline file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Nexmark persons, auctions and bids.
    Nexmark,
    /// Keyed orders with inserts, updates and deletes.
    Orders,
}

/// The generator's settings, validated.
#[derive(Debug, Clone)]
pub struct DatagenOptions {
    /// Data set.
    pub profile: Profile,
    /// Total number of events; `None` runs forever.
    pub events: Option<u64>,
    /// Events per second; 0 = as fast as possible.
    pub rate: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Events per generated batch.
    pub batch_events: u64,
    /// `orders` only: the first `initial_rows` events are inserts.
    pub initial_rows: u64,
    /// `orders` only: from this event on, rows carry a new column `note`.
    pub add_column_at: Option<u64>,
}

/// The generator source.
pub struct DatagenSource {
    opts: DatagenOptions,
    next: u64,
    /// The schema change is still to be announced (the run started before it).
    schema_change_due: bool,
    ready: VecDeque<SourceEvent>,
    barrier: Option<u64>,
    /// Rate limiting: when event `paced_from` was due.
    started: Instant,
    paced_from: u64,
    /// The end-of-input watermark went out (a bounded run generated its last event).
    ended: bool,
}

impl DatagenSource {
    /// A generator that starts at `position` (a sequence position from one of its
    /// barriers), or at event 0.
    pub fn open(opts: DatagenOptions, position: Option<&SourcePosition>) -> Result<Self> {
        let next = match position {
            None => 0,
            Some(p) => p.as_sequence().ok_or_else(|| {
                lakeshore_api::Error::config(format!("the checkpoint's source position {p} is not a generator position; was the pipeline's source type changed?"),
                )
            })?,
        };
        let schema_change_due = opts.add_column_at.is_some_and(|at| next < at);
        Ok(DatagenSource {
            opts,
            next,
            schema_change_due,
            ready: VecDeque::new(),
            barrier: None,
            started: Instant::now(),
            paced_from: next,
            ended: false,
        })
    }

    /// Table schemas of the generator once every schema change happened.
    pub fn schemas(opts: &DatagenOptions) -> Vec<TableSchema> {
        Self::schemas_at(opts, u64::MAX)
    }

    /// Table schemas at event `n`.
    fn schemas_at(opts: &DatagenOptions, n: u64) -> Vec<TableSchema> {
        match opts.profile {
            Profile::Nexmark => vec![
                table("person", nexmark::person_schema(), &["id"]),
                table("auction", nexmark::auction_schema(), &["id"]),
                table("bid", nexmark::bid_schema(), &[]),
            ],
            Profile::Orders => {
                let note = Self::orders_config_of(opts).has_note(n);
                vec![table("orders", orders::schema(note), &["order_id"])]
            }
        }
    }

    fn orders_config_of(opts: &DatagenOptions) -> orders::OrdersConfig {
        orders::OrdersConfig {
            seed: opts.seed,
            initial_rows: opts.initial_rows,
            note_from: opts.add_column_at,
        }
    }

    fn orders_config(&self) -> orders::OrdersConfig {
        Self::orders_config_of(&self.opts)
    }

    async fn pace(&mut self, end: u64) {
        if self.opts.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64((end - self.paced_from) as f64 / self.opts.rate as f64);
        tokio::time::sleep_until(self.started + due).await;
    }

    fn chunk_end(&self) -> Option<u64> {
        let mut size = self.opts.batch_events.max(1);
        if self.opts.rate > 0 {
            size = size.min((self.opts.rate / 10).max(1));
        }
        let mut end = self.next + size;
        // A chunk never straddles the schema change.
        if let Some(at) = self.opts.add_column_at.filter(|at| self.next < *at) {
            end = end.min(at);
        }
        match self.opts.events {
            Some(total) if self.next >= total => None,
            Some(total) => Some(end.min(total)),
            None => Some(end),
        }
    }
}

fn table(name: &str, schema: arrow_schema::SchemaRef, key: &[&str]) -> TableSchema {
    TableSchema {
        name: name.to_string(),
        schema,
        key: key.iter().map(|k| k.to_string()).collect(),
    }
}

#[async_trait::async_trait]
impl Source for DatagenSource {
    fn tables(&self) -> Vec<TableSchema> {
        Self::schemas_at(&self.opts, self.next)
    }

    async fn next_event(&mut self) -> Result<Option<SourceEvent>> {
        if let Some(id) = self.barrier.take() {
            return Ok(Some(SourceEvent::Barrier {
                id,
                position: SourcePosition::sequence(self.next),
            }));
        }
        if let Some(ev) = self.ready.pop_front() {
            return Ok(Some(ev));
        }
        let Some(end) = self.chunk_end() else {
            // Every event is out and no other will come, of any event time: the
            // watermark passes the end of time (Flink's end of input), so the final
            // checkpoint completes every event-time partition (Hive `_SUCCESS`).
            if !self.ended {
                self.ended = true;
                return Ok(Some(SourceEvent::Watermark(i64::MAX)));
            }
            return Ok(None);
        };
        if self.schema_change_due && self.opts.add_column_at == Some(self.next) {
            self.schema_change_due = false;
            let changed = Self::schemas_at(&self.opts, self.next);
            self.ready
                .extend(changed.into_iter().map(SourceEvent::SchemaChange));
            return Ok(self.ready.pop_front());
        }
        self.pace(end).await;
        let (start, name) = (self.next, |s: &str| -> Arc<str> { Arc::from(s) });
        match self.opts.profile {
            Profile::Nexmark => {
                let b = nexmark::generate(self.opts.seed, start, end);
                for (t, rows) in [("person", b.person), ("auction", b.auction), ("bid", b.bid)] {
                    if rows.num_rows() > 0 {
                        let batch = ChangeBatch::inserts(name(t), rows);
                        self.ready.push_back(SourceEvent::Batch(batch));
                    }
                }
            }
            Profile::Orders => {
                let (rows, ops) = orders::generate(&self.orders_config(), start, end);
                self.ready.push_back(SourceEvent::Batch(ChangeBatch {
                    table: name("orders"),
                    rows,
                    ops: ops.into(),
                    origin: Default::default(),
                }));
            }
        }
        // The position moves once the whole chunk is queued: a barrier requested while
        // the chunk drains is emitted after it (see `request_barrier`).
        self.next = end;
        Ok(self.ready.pop_front())
    }

    fn request_barrier(&mut self, id: u64) {
        if self.ready.is_empty() {
            self.barrier = Some(id);
        } else {
            // Between two batches of one chunk: position `next` covers the whole chunk.
            self.ready.push_back(SourceEvent::Barrier {
                id,
                position: SourcePosition::sequence(self.next),
            });
        }
    }

    async fn ack(&mut self, _position: &SourcePosition) -> Result<()> {
        Ok(())
    }

    fn size_hint(&self) -> Option<u64> {
        self.opts.events
    }

    fn progress(&self) -> Option<u64> {
        Some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(profile: Profile, events: u64) -> DatagenOptions {
        DatagenOptions {
            profile,
            events: Some(events),
            rate: 0,
            seed: 3,
            batch_events: 100,
            initial_rows: 10,
            add_column_at: None,
        }
    }

    async fn drain(src: &mut DatagenSource, barrier_every: usize) -> (usize, Vec<u64>) {
        let (mut rows, mut barriers, mut n) = (0, vec![], 0);
        while let Some(ev) = src.next_event().await.unwrap() {
            n += 1;
            match ev {
                SourceEvent::Batch(b) => rows += b.num_rows(),
                SourceEvent::Barrier { position, .. } => {
                    barriers.push(position.as_sequence().unwrap())
                }
                _ => {}
            }
            if n % barrier_every == 0 {
                src.request_barrier(n as u64);
            }
        }
        (rows, barriers)
    }

    #[tokio::test]
    async fn bounded_nexmark_emits_every_event_once() {
        let mut src = DatagenSource::open(opts(Profile::Nexmark, 1000), None).unwrap();
        let (rows, barriers) = drain(&mut src, 2).await;
        assert_eq!(rows, 1000);
        assert!(barriers.windows(2).all(|w| w[0] <= w[1]));
        assert!(barriers.iter().all(|b| b % 100 == 0));
    }

    #[tokio::test]
    async fn a_bounded_run_ends_with_the_end_of_time_watermark() {
        let mut src = DatagenSource::open(opts(Profile::Nexmark, 300), None).unwrap();
        let mut last = None;
        while let Some(ev) = src.next_event().await.unwrap() {
            last = Some(ev);
        }
        assert!(matches!(last, Some(SourceEvent::Watermark(i64::MAX))));
        assert!(src.next_event().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn resuming_at_a_barrier_replays_the_rest_exactly() {
        let mut full = DatagenSource::open(opts(Profile::Orders, 1000), None).unwrap();
        let (all_rows, _) = drain(&mut full, 1000).await;
        let mut head = DatagenSource::open(opts(Profile::Orders, 1000), None).unwrap();
        let mut head_rows = 0;
        let position = loop {
            match head.next_event().await.unwrap().unwrap() {
                SourceEvent::Batch(b) => {
                    head_rows += b.num_rows();
                    head.request_barrier(1);
                }
                SourceEvent::Barrier { position, .. } if position.as_sequence() == Some(500) => {
                    break position;
                }
                _ => {}
            }
        };
        let mut tail = DatagenSource::open(opts(Profile::Orders, 1000), Some(&position)).unwrap();
        let (tail_rows, _) = drain(&mut tail, 1000).await;
        assert_eq!(head_rows + tail_rows, all_rows);
    }
}
