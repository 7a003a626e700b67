//! The polling thread: messages gathered into chunks (their bytes end to end, and where
//! each one lies) and handed to the source over a bounded channel.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lakeshore_api::Result;
use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message as _};
use tokio::sync::mpsc;

use crate::group::{SourceConsumer, lock};
use crate::kafka_error;

/// One message's place in a chunk.
pub(crate) struct Meta {
    pub(crate) topic: usize,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
    pub(crate) key: Option<Range<usize>>,
    pub(crate) payload: Option<Range<usize>>,
    pub(crate) headers: Option<Range<usize>>,
}

/// Messages polled together: their bytes end to end, and where each one lies.
#[derive(Default)]
pub(crate) struct Chunk {
    pub(crate) data: Vec<u8>,
    pub(crate) metas: Vec<Meta>,
}

impl Chunk {
    fn add(&mut self, bytes: Option<&[u8]>) -> Option<Range<usize>> {
        let b = bytes?;
        let start = self.data.len();
        self.data.extend_from_slice(b);
        Some(start..self.data.len())
    }
}

pub(crate) enum Polled {
    Chunk(Chunk),
    /// A bounded run reached the ends it was started with.
    Done,
    /// Shared: partitions given to this process, with the offsets the lake holds them at
    /// (partitions the lake never held are left out).
    Assigned(BTreeMap<(String, i32), i64>),
    /// Shared: the partitions are being taken away; `done` once a checkpoint after
    /// everything read from them is committed.
    Revoke {
        parts: Vec<(String, i32)>,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// Errors librdkafka recovers from itself (connections, timeouts).
pub(crate) fn is_transient(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NetworkException
                | C::Resolve
                | C::BrokerNotAvailable
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
        )
    )
}

/// The polling thread: messages into chunks of at most `batch` messages (sent when full,
/// or when polling comes back empty), until `stop`, an error, or (bounded) the ends. The
/// open chunk is shared with the rebalance callback, which hands it over before the
/// partitions go.
pub(crate) struct Polling<'a> {
    pub(crate) bounded: bool,
    pub(crate) batch: usize,
    pub(crate) stop: &'a AtomicBool,
    pub(crate) tx: &'a mpsc::Sender<Result<Polled>>,
    pub(crate) chunk: &'a Mutex<Chunk>,
}

impl Polling<'_> {
    pub(crate) fn run(
        &self,
        consumer: &SourceConsumer,
        topics: &[String],
        mut ends: HashMap<(String, i32), i64>,
    ) {
        let topic_index: HashMap<&str, usize> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        // A trickle of messages is handed over at least every second.
        let mut chunk_started = std::time::Instant::now();
        let send = |c: Polled| self.tx.blocking_send(Ok(c)).is_ok();
        if self.bounded && ends.is_empty() {
            send(Polled::Done);
            return;
        }
        while !self.stop.load(Ordering::Relaxed) {
            // Rebalance callbacks run inside `poll`: the chunk is not locked here.
            let polled = consumer.poll(Duration::from_millis(100));
            let idle = match polled {
                None => true,
                // librdkafka reconnects by itself: a broker going away is worth a
                // warning, not a stop.
                Some(Err(e)) if is_transient(&e) => {
                    tracing::warn!(error = %e, "Kafka broker connection trouble; librdkafka retries");
                    true
                }
                Some(Err(e)) => {
                    let _ = self
                        .tx
                        .blocking_send(Err(kafka_error("reading messages", e)));
                    return;
                }
                Some(Ok(m)) => {
                    let headers = m.headers().map(|h| {
                        let map: serde_json::Map<String, serde_json::Value> = h
                            .iter()
                            .map(|hd| {
                                let v = hd
                                    .value
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                                    .map_or(serde_json::Value::Null, serde_json::Value::String);
                                (hd.key.to_string(), v)
                            })
                            .collect();
                        serde_json::Value::Object(map).to_string()
                    });
                    let mut chunk = lock(self.chunk);
                    let meta = Meta {
                        topic: topic_index.get(m.topic()).copied().unwrap_or(0),
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: chunk.add(m.key()),
                        payload: chunk.add(m.payload()),
                        headers: chunk.add(headers.as_deref().map(str::as_bytes)),
                    };
                    chunk.metas.push(meta);
                    false
                }
            };
            let (messages, bytes) = {
                let c = lock(self.chunk);
                (c.metas.len(), c.data.len())
            };
            let full = messages >= self.batch || bytes >= 16 << 20;
            let old = chunk_started.elapsed() >= Duration::from_secs(1);
            if messages == 0 {
                chunk_started = std::time::Instant::now();
            } else if idle || full || old {
                let chunk = std::mem::take(&mut *lock(self.chunk));
                if !send(Polled::Chunk(chunk)) {
                    return;
                }
                chunk_started = std::time::Instant::now();
            }
            if self.bounded && (idle || messages == 0) {
                // Done when every partition's position reached the end it had at the
                // start (control records of transactions count: the position is past
                // them).
                if let Ok(at) = consumer.position() {
                    for e in at.elements() {
                        if let Offset::Offset(o) = e.offset()
                            && ends
                                .get(&(e.topic().to_string(), e.partition()))
                                .is_some_and(|end| o >= *end)
                        {
                            ends.remove(&(e.topic().to_string(), e.partition()));
                        }
                    }
                }
                if ends.is_empty() {
                    let _ = send(Polled::Done);
                    return;
                }
            }
        }
    }
}
