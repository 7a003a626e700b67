//! The bare consumer the benchmarks measure the source against (feature `bench`).

use std::collections::HashMap;
use std::time::Duration;

use lakeshore_api::Result;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaOptions, KafkaSource, kafka_error};

/// The physical limit for benchmarks: a bare consumer with the source's client settings
/// reads every partition of the topics from its start to the end it had when called; no
/// decoding, no writing. Returns (messages, payload bytes, seconds).
pub fn bare_consume(opts: &KafkaOptions) -> Result<(u64, u64, f64)> {
    let consumer: BaseConsumer = KafkaSource::client_config(opts)
        .create()
        .map_err(|e| kafka_error("creating a consumer", e))?;
    let timeout = Duration::from_secs(15);
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in &opts.topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| kafka_error("reading metadata", e))?;
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), timeout)
                    .map_err(|e| kafka_error("reading offsets", e))?;
                if high > low {
                    ends.insert((topic.clone(), p.id()), high);
                }
                assignment
                    .add_partition_offset(topic, p.id(), Offset::Offset(low))
                    .map_err(|e| kafka_error("assigning", e))?;
            }
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| kafka_error("assigning", e))?;
    let started = std::time::Instant::now();
    let (mut messages, mut bytes) = (0u64, 0u64);
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
                let k = (m.topic().to_string(), m.partition());
                if ends.get(&k).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&k);
                }
            }
            Some(Err(e)) => return Err(kafka_error("reading messages", e)),
            None => {}
        }
    }
    Ok((messages, bytes, started.elapsed().as_secs_f64()))
}
