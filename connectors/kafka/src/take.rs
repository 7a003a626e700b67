//! A polled chunk taken by the source: its messages decoded into batches per table, the
//! bad ones failed, skipped or written as dead letters (`on_error`), and the offsets and
//! the watermark advanced past it.

use std::collections::BTreeMap;
use std::sync::Arc;

use lakeshore_api::{ChangeBatch, Error, Op, Result, SourceEvent};

use crate::decode::{self, Bad, Images, Message};
use crate::poll::{Chunk, Meta};
use crate::{KafkaSource, OnError};

impl KafkaSource {
    /// Decode a chunk into batches (per table) and advance the position past it.
    pub(crate) fn take(&mut self, chunk: Chunk) -> Result<()> {
        let topics = self.topics.clone();
        let msgs: Vec<Message<'_>> = chunk
            .metas
            .iter()
            .map(|m| Message {
                topic: &topics[m.topic],
                partition: m.partition,
                offset: m.offset,
                timestamp: m.timestamp,
                key: m.key.clone().map(|r| &chunk.data[r]),
                payload: m.payload.clone().map(|r| &chunk.data[r]),
                headers: m
                    .headers
                    .clone()
                    .and_then(|r| std::str::from_utf8(&chunk.data[r]).ok()),
            })
            .collect();
        if let Some(ms) = msgs.iter().filter_map(|m| m.timestamp).max() {
            self.newest_ms = Some(self.newest_ms.map_or(ms, |n| n.max(ms)));
        }
        // Messages of each table, in order.
        let mut per_table: Vec<Vec<usize>> = vec![Vec::new(); self.tables.len()];
        for (i, m) in chunk.metas.iter().enumerate() {
            per_table[self.table_of[m.topic]].push(i);
        }
        let mut all_bad: Vec<Bad> = Vec::new();
        for (t, indices) in per_table.iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let these: Vec<Message<'_>> = indices.iter().map(|&i| msgs[i]).collect();
            let table: Arc<str> = Arc::from(self.tables[t].name.as_str());
            let (rows, ops, bad, row_messages) = match &self.decoders[t] {
                None => (
                    decode::raw_rows(&these)?,
                    Vec::new(),
                    Vec::new(),
                    (0..these.len()).collect::<Vec<_>>(),
                ),
                Some(decoder) => {
                    let mut images = Images::of(self.opts.format, &these, &self.opts.key);
                    let (rows, ops) = decoder.decode(&mut images)?;
                    let row_messages = images.row_messages();
                    (rows, ops, images.bad, row_messages)
                }
            };
            if let Some(column) = self.opts.watermark.as_ref().and_then(|w| w.column.as_ref())
                && let Some(times) = decode::timestamps(&rows, column)
            {
                for (row, msg) in row_messages.iter().enumerate() {
                    if let Some(t) =
                        arrow_array::Array::is_valid(times, row).then(|| times.value(row))
                    {
                        let m = &chunk.metas[indices[*msg]];
                        self.event_time.saw(m.topic, m.partition, t);
                    }
                }
            }
            all_bad.extend(bad.into_iter().map(|b| Bad {
                index: indices[b.index],
                error: b.error,
            }));
            if rows.num_rows() > 0 {
                // The broker's timestamp and partition:offset of each row's message.
                let origin = if self.record_origin {
                    let mut o = lakeshore_api::OriginBuilder::default();
                    for &msg in &row_messages {
                        let m = &chunk.metas[indices[msg]];
                        let position = format!("{}:{}", m.partition, m.offset);
                        o.push(m.timestamp.map(|ms| ms * 1000), &position);
                    }
                    o.finish()
                } else {
                    Default::default()
                };
                let ops: Arc<[Op]> = if ops.iter().all(|o| *o == Op::Insert) {
                    Arc::from(Vec::new())
                } else {
                    Arc::from(ops)
                };
                self.out.push_back(SourceEvent::Batch(ChangeBatch {
                    table,
                    rows,
                    ops,
                    origin,
                }));
            }
        }
        if !all_bad.is_empty() {
            all_bad.sort_by_key(|b| b.index);
            self.bad_messages(&msgs, &all_bad)?;
        }
        self.advance_watermark(&chunk.metas);
        self.advance_offsets(&chunk.metas);
        self.messages += chunk.metas.len() as u64;
        metrics::counter!("lakeshore_kafka_messages_total").increment(chunk.metas.len() as u64);
        Ok(())
    }

    /// Event time: the Kafka timestamps (no watermark column) of `metas`, and a watermark
    /// event when it moved.
    fn advance_watermark(&mut self, metas: &[Meta]) {
        if let Some(w) = &self.opts.watermark {
            if w.column.is_none() {
                for m in metas {
                    if let Some(ms) = m.timestamp {
                        self.event_time
                            .saw(m.topic, m.partition, ms.saturating_mul(1000));
                    }
                }
            }
            if let Some(watermark) = self.event_time.advance(w) {
                self.out.push_back(SourceEvent::Watermark(watermark));
            }
        }
    }

    /// The position after `metas`; a gap right after the lake's offset is worth a word.
    fn advance_offsets(&mut self, metas: &[Meta]) {
        for m in metas {
            // No allocation per message: the topic's entry exists after the first.
            let topic = &self.topics[m.topic];
            if !self.position.offsets.contains_key(topic) {
                self.position.offsets.insert(topic.clone(), BTreeMap::new());
            }
            let Some(parts) = self.position.offsets.get_mut(topic) else {
                continue;
            };
            let next = parts.entry(m.partition).or_insert(m.offset);
            if m.offset > *next {
                // Compaction, retention and transaction markers leave gaps; right after
                // the lake's position it is worth a word (a broker serving from the wrong
                // place shows here too).
                let first = self.resumed.insert((m.topic, m.partition));
                if first {
                    tracing::warn!(topic = %self.topics[m.topic], partition = m.partition, lake_offset = *next, first_offset = m.offset, "the first message after the lake's offset comes later than it (compacted or deleted messages?)");
                } else {
                    tracing::debug!(topic = %self.topics[m.topic], partition = m.partition, expected = *next, got = m.offset, "offset gap");
                }
            }
            self.resumed.insert((m.topic, m.partition));
            *next = m.offset + 1;
        }
    }

    fn bad_messages(&mut self, msgs: &[Message<'_>], bad: &[Bad]) -> Result<()> {
        let first = &bad[0];
        let m = &msgs[first.index];
        match self.opts.on_error {
            OnError::Fail => Err(Error::config(format!(
                "topic {} partition {} offset {}: cannot read the message as {}: {} \
                     (on_error = \"skip\" or \"dead_letter\" lets the pipeline go on)",
                m.topic,
                m.partition,
                m.offset,
                self.opts.format.name(),
                first.error
            ))),
            OnError::Skip => {
                metrics::counter!("lakeshore_kafka_skipped_messages_total")
                    .increment(bad.len() as u64);
                tracing::warn!(
                    topic = m.topic,
                    partition = m.partition,
                    offset = m.offset,
                    error = %first.error,
                    count = bad.len(),
                    "skipped messages that cannot be read"
                );
                Ok(())
            }
            OnError::DeadLetter => {
                let t = self.dead_letter.unwrap_or_default();
                let rows = decode::dead_letter_rows(msgs, bad)?;
                metrics::counter!("lakeshore_kafka_dead_letters_total").increment(bad.len() as u64);
                self.out.push_back(SourceEvent::Batch(ChangeBatch::inserts(
                    Arc::from(self.tables[t].name.as_str()),
                    rows,
                )));
                Ok(())
            }
        }
    }
}
