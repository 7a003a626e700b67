//! Where the source starts: the topics and partitions it reads (and a refused login
//! told apart from an unreachable broker), offsets found by time, and the columns of a
//! `json` source inferred from the messages.

use std::collections::HashMap;
use std::time::Duration;

use arrow_schema::Field;
use lakeshore_api::{Error, Result};
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::group::{self, SourceConsumer};
use crate::{Ends, Format, KafkaOptions, Position, decode, infer, kafka_error};

/// Where partitions asked for by time start (their end when no message is that new);
/// ends already passed are dropped.
pub(crate) fn starts_by_time(
    consumer: &SourceConsumer,
    by_time: TopicPartitionList,
    position: &mut Position,
    ends: &mut Ends,
) -> Result<()> {
    let timeout = Duration::from_secs(15);
    let found = consumer
        .offsets_for_times(by_time, timeout)
        .map_err(|e| kafka_error("finding offsets by time", e))?;
    for e in found.elements() {
        let o = match e.offset() {
            Offset::Offset(o) => o,
            // No message at or after the time: start at the end.
            _ => {
                consumer
                    .fetch_watermarks(e.topic(), e.partition(), timeout)
                    .map_err(|err| kafka_error("reading offsets", err))?
                    .1
            }
        };
        position
            .offsets
            .entry(e.topic().to_string())
            .or_default()
            .insert(e.partition(), o);
        let key = (e.topic().to_string(), e.partition());
        if ends.get(&key).is_some_and(|end| o >= *end) {
            ends.remove(&key);
        }
    }
    Ok(())
}

/// `opts` with the columns of a `json` source without declared ones: those the
/// position recorded, else inferred from a sample of the messages to read.
pub(crate) fn infer_columns(
    mut opts: KafkaOptions,
    position: &mut Position,
    assignment: &TopicPartitionList,
    highs: &HashMap<(String, i32), i64>,
) -> Result<KafkaOptions> {
    if opts.format == Format::Json && opts.columns.is_empty() {
        let names: Vec<String> = match &position.columns {
            Some(c) => c.clone(),
            None => infer::sample_columns(&opts, assignment, highs)?,
        };
        opts.columns = names
            .iter()
            .filter_map(|c| {
                let (n, t) = c.split_once(' ')?;
                Some(Field::new(n, decode::parse_type(t)?, true))
            })
            .collect();
        for k in &opts.key {
            if !names.iter().any(|c| c.split(' ').next() == Some(k)) {
                return Err(Error::config(format!(
                    "key column {k} is not among the inferred columns ({}); declare columns",
                    names.join(", ")
                )));
            }
        }
        position.columns = Some(names);
    }
    Ok(opts)
}

/// The topics the source reads, with their partitions: the names given, and every topic
/// a pattern matches; a refused login or an unreachable broker says what to check.
pub(crate) fn topics_of(
    consumer: &SourceConsumer,
    opts: &KafkaOptions,
) -> Result<Vec<(String, Vec<i32>)>> {
    let timeout = Duration::from_secs(15);
    let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| {
        if let Some(reason) = login_refused(consumer) {
            return Error::config(format!(
                "the Kafka brokers at {} refused the login: {reason}; check [source] \
                     properties security.protocol, sasl.mechanism, sasl.username and \
                     sasl.password",
                opts.brokers
            ));
        }
        Error::transient(format!(
            "cannot reach the Kafka brokers at {}: {e}; check [source] brokers and that \
                 the brokers are running",
            opts.brokers
        ))
    })?;
    // Topics: the names given, and every topic a pattern matches.
    let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
    for want in &opts.topics {
        let matches: Vec<_> = if let Some(pattern) = want.strip_prefix('^') {
            let re = regex::Regex::new(&format!("^{pattern}")).map_err(|e| {
                Error::config(format!(
                    "[source] topics: {want:?} is not a regular expression: {e}"
                ))
            })?;
            metadata
                .topics()
                .iter()
                .filter(|t| re.is_match(t.name()) && !t.name().starts_with("__"))
                .collect()
        } else {
            metadata
                .topics()
                .iter()
                .filter(|t| t.name() == want)
                .collect()
        };
        let matches: Vec<_> = matches
            .into_iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .collect();
        if matches.is_empty() {
            return Err(Error::config(format!(
                "no topic {} {want:?} on {}; create it or fix [source] topics",
                if want.starts_with('^') {
                    "matches"
                } else {
                    "named"
                },
                opts.brokers
            )));
        }
        for t in matches {
            if topics.iter().all(|(n, _)| n != t.name()) {
                let mut parts: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                parts.sort_unstable();
                topics.push((t.name().to_string(), parts));
            }
        }
    }
    Ok(topics)
}

/// Why the brokers refused the login, if they did: librdkafka reports it as a client
/// error, queued for the consumer shortly after the request that failed (its reason
/// reaches the context only when the client serves its own queue).
fn login_refused(consumer: &SourceConsumer) -> Option<String> {
    let mut refused = group::lock(&consumer.context().login_refused).clone();
    for _ in 0..64 {
        match consumer.poll(Duration::from_millis(300)) {
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) => {
                refused.get_or_insert_with(|| e.to_string());
            }
            None => break,
            _ => {}
        }
    }
    refused
}
