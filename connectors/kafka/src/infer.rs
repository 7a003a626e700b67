//! Columns of a `json` topic without declared ones: inferred from the first messages at
//! the pipeline's first start, then kept in the checkpoints.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow_schema::{DataType, Field};
use lakeshore_api::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::poll::is_transient;
use crate::{KafkaOptions, KafkaSource, kafka_error};

/// Messages read to infer the columns of a JSON topic.
const INFER_MESSAGES: usize = 1000;

/// Columns of a `json` topic without declared ones, from up to [`INFER_MESSAGES`]
/// messages at the pipeline's start positions, read by a consumer of their own (the
/// source's consumer starts at the same place).
pub(crate) fn sample_columns(
    opts: &KafkaOptions,
    assignment: &TopicPartitionList,
    highs: &HashMap<(String, i32), i64>,
) -> Result<Vec<String>> {
    let consumer: BaseConsumer = KafkaSource::client_config(opts)
        .create()
        .map_err(|e| kafka_error("creating the consumer that infers columns", e))?;
    consumer
        .assign(assignment)
        .map_err(|e| kafka_error("assigning partitions", e))?;
    // Partitions with something to read, and where their messages end now.
    let mut waiting: HashMap<(String, i32), i64> = assignment
        .elements()
        .iter()
        .filter_map(|e| {
            let key = (e.topic().to_string(), e.partition());
            let high = *highs.get(&key)?;
            match e.offset() {
                Offset::Offset(o) if o >= high => None,
                _ => Some((key, high)),
            }
        })
        .collect();
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while samples.len() < INFER_MESSAGES && !waiting.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = (m.topic().to_string(), m.partition());
                if waiting.get(&key).is_some_and(|h| m.offset() + 1 >= *h) {
                    waiting.remove(&key);
                }
                if let Some(p) = m.payload() {
                    samples.push(p.to_vec());
                }
            }
            Some(Err(e)) if is_transient(&e) => {}
            Some(Err(e)) => return Err(kafka_error("reading messages to infer columns", e)),
            None => {}
        }
    }
    let payloads: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let (columns, skipped) = infer_columns(&payloads)?;
    if columns.is_empty() {
        return Err(Error::transient(format!(
            "cannot infer the columns of topics {}: no JSON object among the first {} messages (an empty topic?); declare columns = [\"name type\", ...] in [source]",
            opts.topics.join(", "),
            samples.len()
        )));
    }
    let names: Vec<String> = columns
        .iter()
        .map(|f| format!("{} {}", f.name(), type_name(f.data_type())))
        .collect();
    tracing::info!(columns = ?names, left_out = ?skipped, messages = samples.len(), "inferred the columns of the JSON messages; they stay fixed for this pipeline (declare columns to change them)");
    Ok(names)
}

/// Keys of a JSON object in the order the message writes them.
struct KeyOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<KeyOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(KeyOrder(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Columns inferred from sample messages that hold JSON objects (others are ignored),
/// in the order the messages write the fields: numbers become `long` or `double`,
/// `true`/`false` `boolean`, everything else `string`; fields that hold objects or
/// arrays are left out. Returns the columns and the names left out.
pub(crate) fn infer_columns(payloads: &[&[u8]]) -> Result<(Vec<Field>, Vec<String>)> {
    let mut samples: Vec<serde_json::Value> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    for p in payloads {
        let Ok(KeyOrder(keys)) = serde_json::from_slice::<KeyOrder>(p) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(p) else {
            continue;
        };
        for k in keys {
            if !order.contains(&k) {
                order.push(k);
            }
        }
        samples.push(v);
    }
    let schema = arrow_json::reader::infer_json_schema_from_iterator(samples.iter().map(Ok))
        .map_err(|e| Error::internal(format!("inferring columns: {e}")))?;
    let mut columns = Vec::new();
    let mut skipped = Vec::new();
    for name in &order {
        let Ok(f) = schema.field_with_name(name) else {
            continue;
        };
        let t = match f.data_type() {
            DataType::Int64 => DataType::Int64,
            DataType::Float64 => DataType::Float64,
            DataType::Boolean => DataType::Boolean,
            DataType::Utf8 | DataType::Null => DataType::Utf8,
            _ => {
                skipped.push(name.clone());
                continue;
            }
        };
        columns.push(Field::new(name.as_str(), t, true));
    }
    Ok((columns, skipped))
}

/// The pipeline-file spelling of a type [`infer_columns`] makes.
pub(crate) fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int64 => "long",
        DataType::Float64 => "double",
        DataType::Boolean => "boolean",
        _ => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_the_messages_order_and_widen() {
        let msgs: Vec<&[u8]> = vec![
            br#"{"id": 1, "user": "a", "n": 1, "nested": {"x": 1}, "none": null}"#,
            b"not json",
            br#"{"id": 2, "n": 2.5, "ok": true, "user": "b"}"#,
        ];
        let (cols, skipped) = infer_columns(&msgs).unwrap();
        let got: Vec<(&str, &DataType)> = cols
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("id", &DataType::Int64),
                ("user", &DataType::Utf8),
                ("n", &DataType::Float64),
                ("none", &DataType::Utf8),
                ("ok", &DataType::Boolean),
            ]
        );
        assert_eq!(skipped, vec!["nested".to_string()]);
        assert_eq!(type_name(&DataType::Float64), "double");
    }
}
