//! Scale-out (`scale_out = true`): the consumer group hands the partitions out; the
//! pipeline's ledger (see [`lakeshore_api::Ledger`]) says where each resumes.
//!
//! A rebalance is handled inside librdkafka's rebalance callback, on the polling thread
//! (the eager protocol: every member gives up all its partitions, then gets its new
//! share, and no member gets a partition before every member gave its own up):
//! - **revoke:** the open chunk is handed to the source, which asks the engine for a
//!   checkpoint; the callback returns only when that checkpoint is committed. So the
//!   lake holds everything this process read from the partitions before another one
//!   can get them.
//! - **assign:** the partitions are taken over in the ledger (which first commits what
//!   an earlier owner decided but did not commit, e.g. one that was killed) and read
//!   from the positions it holds, or from `startup` for partitions never committed.
//!
//! A process that stalls past the session timeout loses its partitions without a
//! revoke, and one whose checkpoint does not finish within the revoke's wait gives them
//! up without it: its next checkpoint finds them owned by another member and is refused
//! by the ledger, and the pipeline restarts from the ledger as a new member.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lakeshore_api::{Error, Ledger, Result};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::poll::Chunk;
use crate::{Polled, Startup, kafka_error};

/// How long a revoke waits for the checkpoint that covers the partitions. Past it the
/// partitions go anyway and the ledger refuses that checkpoint (the pipeline restarts).
/// Tests shorten it with `LAKESHORE_TEST_REVOKE_WAIT_MS` to make a member stall.
fn revoke_wait() -> Duration {
    std::env::var("LAKESHORE_TEST_REVOKE_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_millis)
}

/// The source's consumer.
pub(crate) type SourceConsumer = BaseConsumer<SourceContext>;

/// A partition's name in the ledger.
pub(crate) fn unit(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The open chunk of the polling thread, shared with the rebalance callback.
pub(crate) type OpenChunk = Arc<Mutex<Chunk>>;

/// The value behind `m`, also after a panic while it was held.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// librdkafka callbacks of the source's consumer.
pub(crate) struct SourceContext {
    pub(crate) group: Option<Group>,
    /// Messages between the read position and the end of the assigned partitions, from
    /// librdkafka's statistics (-1 until known).
    pub(crate) behind: AtomicI64,
    /// librdkafka's reason when the brokers refused the login (SASL): a metadata request
    /// then only times out, and the error must say why.
    pub(crate) login_refused: Mutex<Option<String>>,
}

/// How often librdkafka reports statistics (for the lag).
pub(crate) const STATS_INTERVAL_MS: &str = "5000";

/// What a shared source's rebalance callback needs.
pub(crate) struct Group {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) startup: Startup,
    pub(crate) tx: mpsc::Sender<Result<Polled>>,
    pub(crate) chunk: OpenChunk,
    /// Set when the source closes: callbacks then do nothing.
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            *lock(&self.login_refused) = Some(reason.to_string());
        }
        tracing::warn!(%error, reason, "Kafka client");
    }

    /// The lag: per assigned partition, its last stable offset (the end a read_committed
    /// consumer reads to) minus the offset after the last message handed to us.
    fn stats(&self, statistics: Statistics) {
        let mut behind = 0i64;
        let mut known = false;
        for topic in statistics.topics.values() {
            for p in topic.partitions.values() {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let read = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.committed_offset
                };
                if p.partition >= 0 && p.desired && end >= 0 && read >= 0 {
                    behind += (end - read).max(0);
                    known = true;
                }
            }
        }
        self.behind
            .store(if known { behind } else { -1 }, Ordering::Relaxed);
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // Only a subscribed (shared) consumer rebalances.
        let Some(g) = &self.group else { return };
        let closing = g.stop.load(std::sync::atomic::Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_ok();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if !closing => {
                match g.assign(consumer, tpl) {
                    Ok(()) => {
                        if let Err(e) = consumer.assign(tpl) {
                            g.fail(kafka_error("assigning partitions", e));
                        }
                    }
                    Err(e) => {
                        // Read nothing rather than from the wrong place.
                        let _ = consumer.unassign();
                        g.fail(e);
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if !closing {
                    g.revoke(tpl);
                }
                let _ = consumer.unassign();
            }
            other => {
                if !closing {
                    tracing::warn!(error = ?other, "Kafka rebalance failed; giving the partitions up");
                }
                let _ = consumer.unassign();
            }
        }
    }
}

impl Group {
    fn fail(&self, e: Error) {
        let _ = self.tx.blocking_send(Err(e));
    }

    /// Take the partitions of `tpl` over and set where each is read from: the ledger's
    /// offset, or (never committed) `startup`; a new partition of a topic the ledger
    /// knows starts at its beginning.
    fn assign(&self, consumer: &SourceConsumer, tpl: &mut TopicPartitionList) -> Result<()> {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let units: Vec<String> = parts.iter().map(|(t, p)| unit(t, *p)).collect();
        let got = self.runtime.block_on(self.ledger.acquire(&units))?;
        let timeout = Duration::from_secs(15);
        // Every start is resolved to an offset now, so that it is in the position (and
        // decided at the next hand-over) even if nothing is read before then.
        let mut start: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut by_time = TopicPartitionList::new();
        for (topic, p) in &parts {
            let offset = match got.positions.get(&unit(topic, *p)) {
                Some(v) => v.as_i64().ok_or_else(|| {
                    Error::internal(format!(
                        "the ledger's position of {topic}/{p} is not an offset"
                    ))
                })?,
                None => {
                    let (low, high) =
                        consumer.fetch_watermarks(topic, *p, timeout).map_err(|e| {
                            kafka_error(&format!("reading the offsets of {topic}/{p}"), e)
                        })?;
                    // A new partition of a topic read before: everything in it is new.
                    let known = got
                        .known
                        .iter()
                        .any(|k| k.rsplit_once('/').is_some_and(|(t, _)| t == topic));
                    match self.startup {
                        _ if known => low,
                        Startup::Earliest => low,
                        Startup::Latest => high,
                        Startup::Timestamp(ms) => {
                            by_time
                                .add_partition_offset(topic, *p, Offset::Offset(ms))
                                .map_err(|e| kafka_error("offsets by time", e))?;
                            high
                        }
                    }
                }
            };
            start.insert((topic.clone(), *p), offset);
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, timeout)
                .map_err(|e| kafka_error("finding offsets by time", e))?;
            for e in found.elements() {
                // No message at or after the time: start at the end (already set).
                if let Offset::Offset(o) = e.offset() {
                    start.insert((e.topic().to_string(), e.partition()), o);
                }
            }
        }
        for ((topic, p), o) in &start {
            tpl.set_partition_offset(topic, *p, Offset::Offset(*o))
                .map_err(|e| kafka_error("assigning partitions", e))?;
        }
        tracing::info!(partitions = ?units, "Kafka partitions assigned");
        let _ = self.tx.blocking_send(Ok(Polled::Assigned(start)));
        Ok(())
    }

    /// Hand everything read from the partitions of `tpl` to the lake before they go.
    fn revoke(&self, tpl: &TopicPartitionList) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if parts.is_empty() {
            return;
        }
        let chunk = std::mem::take(&mut *lock(&self.chunk));
        if !chunk.metas.is_empty() && self.tx.blocking_send(Ok(Polled::Chunk(chunk))).is_err() {
            return;
        }
        let (done, wait) = std::sync::mpsc::channel();
        let count = parts.len();
        if self
            .tx
            .blocking_send(Ok(Polled::Revoke { parts, done }))
            .is_err()
        {
            return;
        }
        match wait.recv_timeout(revoke_wait()) {
            Ok(()) => {
                tracing::info!(
                    partitions = count,
                    "Kafka partitions given up after a checkpoint"
                )
            }
            // The source stopped: what it did not commit is read again by the next owner.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // What was read from them may not be decided now: start afresh from the
                // ledger as a new member (a checkpoint this process still decides with
                // them is refused once another member took them).
                self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                self.fail(Error::transient(format!(
                    "the checkpoint before giving Kafka partitions up took over {} ms; \
                         they are given up anyway and the pipeline restarts",
                    revoke_wait().as_millis()
                )));
            }
        }
    }
}
