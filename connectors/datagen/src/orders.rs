//! The `orders` profile: a keyed table with inserts, updates (some moving the row to
//! another partition or changing its key) and deletes, to exercise upserts.
//!
//! Every event is a pure function of (seed, event number): an update or delete picks its
//! target among earlier *insert* events, which is decidable without history. Targets may
//! already be deleted; then the delete is a no-op and the update re-creates the row, which
//! is exactly what folding the stream per key gives ([`fold`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lakeshore_api::Op;

use crate::rng::Rng;

/// Event time of event 0: 2026-01-01T00:00:00Z; one event per second of event time, so
/// a million events span about eleven days (useful for `day()` partitioning).
const BASE_TIME_US: i64 = 1_767_225_600_000_000;
const EVENT_SPACING_US: i64 = 1_000_000;
const STATUSES: [&str; 5] = ["new", "paid", "shipped", "delivered", "cancelled"];
const CUSTOMERS: u64 = 10_000;

/// What event `n` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    /// Creates order `n + 1`.
    Insert,
    /// Updates the order created by event `target`; with `new_key`, also changes its key
    /// to `n + 1`.
    Update {
        /// The insert event whose order is updated.
        target: u64,
        /// Whether the primary key changes.
        new_key: bool,
    },
    /// Deletes the order created by event `target`.
    Delete {
        /// The insert event whose order is deleted.
        target: u64,
    },
}

/// Options of the profile.
#[derive(Debug, Clone, Copy)]
pub struct OrdersConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// The first `initial_rows` events are inserts (a table's initial load).
    pub initial_rows: u64,
    /// From this event on, rows carry a new column `note` (a schema change).
    pub note_from: Option<u64>,
}

impl OrdersConfig {
    /// Whether rows written by event `n` carry the `note` column.
    pub fn has_note(&self, n: u64) -> bool {
        self.note_from.is_some_and(|from| n >= from)
    }
}

fn is_insert(cfg: &OrdersConfig, n: u64) -> bool {
    n < cfg.initial_rows.max(1) || Rng::for_event(cfg.seed, n).below(100) < 45
}

/// What event `n` does.
pub fn event(cfg: &OrdersConfig, n: u64) -> OrderEvent {
    if is_insert(cfg, n) {
        return OrderEvent::Insert;
    }
    let mut rng = Rng::for_event(cfg.seed, n);
    let roll = rng.below(100);
    let mut pick = Rng::for_event(cfg.seed ^ 0x5eed, n);
    // Half of all events are inserts, so 64 tries fail with probability 2^-64.
    let target = (0..64).map(|_| pick.below(n)).find(|&j| is_insert(cfg, j));
    match target {
        None => OrderEvent::Insert,
        Some(target) if roll < 80 => OrderEvent::Update {
            target,
            new_key: false,
        },
        Some(target) if roll < 85 => OrderEvent::Update {
            target,
            new_key: true,
        },
        Some(target) => OrderEvent::Delete { target },
    }
}

/// Schema of the `orders` table; `order_id` is the primary key. With `note`, the
/// column added by the schema change.
pub fn schema(note: bool) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let mut fields = vec![
        Field::new("order_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("amount_cents", DataType::Int64, true),
        Field::new("created_at", ts.clone(), true),
        Field::new("updated_at", ts, true),
    ];
    if note {
        fields.push(Field::new("note", DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

/// One row's values (after-image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Primary key.
    pub order_id: i64,
    /// Customer; changes on some updates (moves the row between `bucket` partitions).
    pub customer_id: i64,
    /// Status; changes on every update (moves the row between `identity` partitions).
    pub status: &'static str,
    /// Amount in cents.
    pub amount_cents: i64,
    /// Creation time of the original order.
    pub created_at: i64,
    /// Time of the last change.
    pub updated_at: i64,
    /// Set by changes after the schema change.
    pub note: Option<String>,
}

fn time(n: u64) -> i64 {
    BASE_TIME_US + n as i64 * EVENT_SPACING_US
}

/// The after-image written by event `n` (inserts and updates), and its key.
fn after_image(cfg: &OrdersConfig, n: u64, ev: OrderEvent) -> Option<Order> {
    let mut rng = Rng::for_event(cfg.seed ^ 0xa11ce, n);
    let customer_id = rng.below(CUSTOMERS) as i64;
    let amount_cents = 100 + rng.below(100_000) as i64;
    let note = cfg.has_note(n).then(|| format!("note-{n}"));
    match ev {
        OrderEvent::Insert => Some(Order {
            order_id: n as i64 + 1,
            customer_id,
            status: STATUSES[0],
            amount_cents,
            created_at: time(n),
            updated_at: time(n),
            note,
        }),
        OrderEvent::Update { target, new_key } => Some(Order {
            order_id: if new_key {
                n as i64 + 1
            } else {
                target as i64 + 1
            },
            customer_id,
            status: STATUSES[1 + rng.below(STATUSES.len() as u64 - 1) as usize],
            amount_cents,
            created_at: time(target),
            updated_at: time(n),
            note,
        }),
        OrderEvent::Delete { .. } => None,
    }
}

/// The rows and operations of events `[start, end)`; the range must not straddle the
/// schema change (`note_from`).
pub fn generate(cfg: &OrdersConfig, start: u64, end: u64) -> (RecordBatch, Vec<Op>) {
    let mut rows = OrderColumns::new(cfg.has_note(start));
    let mut ops = Vec::with_capacity((end - start) as usize * 3 / 2);
    for n in start..end {
        let ev = event(cfg, n);
        match ev {
            OrderEvent::Insert => {
                rows.push(after_image(cfg, n, ev).as_ref());
                ops.push(Op::Insert);
            }
            OrderEvent::Update { target, .. } => {
                rows.push_key(target as i64 + 1);
                ops.push(Op::UpdateBefore);
                rows.push(after_image(cfg, n, ev).as_ref());
                ops.push(Op::UpdateAfter);
            }
            OrderEvent::Delete { target } => {
                rows.push_key(target as i64 + 1);
                ops.push(Op::Delete);
            }
        }
    }
    (rows.finish(), ops)
}

/// The table's state after events `[0, end)`: every live order, by key.
pub fn fold(cfg: &OrdersConfig, end: u64) -> BTreeMap<i64, Order> {
    let mut state = BTreeMap::new();
    for n in 0..end {
        let ev = event(cfg, n);
        match ev {
            OrderEvent::Insert => {}
            OrderEvent::Update { target, .. } | OrderEvent::Delete { target } => {
                state.remove(&(target as i64 + 1));
            }
        }
        if let Some(order) = after_image(cfg, n, ev) {
            state.insert(order.order_id, order);
        }
    }
    state
}

/// The folded state as one batch in the table's schema, ordered by key.
pub fn fold_batch(cfg: &OrdersConfig, end: u64) -> RecordBatch {
    let mut rows = OrderColumns::new(end > 0 && cfg.has_note(end - 1));
    for order in fold(cfg, end).values() {
        rows.push(Some(order));
    }
    rows.finish()
}

struct OrderColumns {
    order_id: Int64Builder,
    customer_id: Int64Builder,
    status: StringBuilder,
    amount: Int64Builder,
    created_at: TimestampMicrosecondBuilder,
    updated_at: TimestampMicrosecondBuilder,
    note: Option<StringBuilder>,
}

impl OrderColumns {
    fn new(note: bool) -> Self {
        OrderColumns {
            order_id: Int64Builder::new(),
            customer_id: Int64Builder::new(),
            status: StringBuilder::new(),
            amount: Int64Builder::new(),
            created_at: TimestampMicrosecondBuilder::new(),
            updated_at: TimestampMicrosecondBuilder::new(),
            note: note.then(StringBuilder::new),
        }
    }

    fn push(&mut self, order: Option<&Order>) {
        let Some(o) = order else { return };
        self.order_id.append_value(o.order_id);
        self.customer_id.append_value(o.customer_id);
        self.status.append_value(o.status);
        self.amount.append_value(o.amount_cents);
        self.created_at.append_value(o.created_at);
        self.updated_at.append_value(o.updated_at);
        if let Some(note) = &mut self.note {
            note.append_option(o.note.as_deref());
        }
    }

    /// A before-image or delete row: only the key is known to a history-free generator.
    fn push_key(&mut self, order_id: i64) {
        self.order_id.append_value(order_id);
        self.customer_id.append_null();
        self.status.append_null();
        self.amount.append_null();
        self.created_at.append_null();
        self.updated_at.append_null();
        if let Some(note) = &mut self.note {
            note.append_null();
        }
    }

    fn finish(mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.order_id.finish()),
            Arc::new(self.customer_id.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.created_at.finish().with_timezone("+00:00")),
            Arc::new(self.updated_at.finish().with_timezone("+00:00")),
        ];
        let note = self.note.is_some();
        if let Some(mut n) = self.note {
            columns.push(Arc::new(n.finish()));
        }
        RecordBatch::try_new(schema(note), columns).expect("order columns match the orders schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: OrdersConfig = OrdersConfig {
        seed: 11,
        initial_rows: 100,
        note_from: None,
    };

    #[test]
    fn mixes_all_kinds_after_the_initial_rows() {
        assert!((0..100).all(|n| event(&CFG, n) == OrderEvent::Insert));
        let events: Vec<_> = (100..2000).map(|n| event(&CFG, n)).collect();
        let count = |f: fn(&OrderEvent) -> bool| events.iter().filter(|e| f(e)).count();
        assert!(count(|e| matches!(e, OrderEvent::Insert)) > 700);
        assert!(count(|e| matches!(e, OrderEvent::Update { new_key: false, .. })) > 500);
        assert!(count(|e| matches!(e, OrderEvent::Update { new_key: true, .. })) > 40);
        assert!(count(|e| matches!(e, OrderEvent::Delete { .. })) > 150);
        for (i, e) in events.iter().enumerate() {
            if let OrderEvent::Update { target, .. } | OrderEvent::Delete { target } = e {
                assert!(*target < 100 + i as u64);
                assert_eq!(event(&CFG, *target), OrderEvent::Insert);
            }
        }
    }

    #[test]
    fn the_schema_change_adds_a_note_column() {
        let cfg = OrdersConfig {
            note_from: Some(500),
            ..CFG
        };
        assert_eq!(generate(&cfg, 0, 500).0.num_columns(), 6);
        let (after, _) = generate(&cfg, 500, 600);
        assert_eq!(after.num_columns(), 7);
        assert_eq!(fold_batch(&cfg, 400).num_columns(), 6);
        let folded = fold(&cfg, 1000);
        assert!(
            folded.values().any(|o| o.note.is_some()) && folded.values().any(|o| o.note.is_none())
        );
        assert_eq!(fold_batch(&cfg, 1000).num_columns(), 7);
    }

    #[test]
    fn batches_reassemble_and_fold_matches_replay() {
        let (whole, ops) = generate(&CFG, 0, 3000);
        let (a, ops_a) = generate(&CFG, 0, 1700);
        let (b, ops_b) = generate(&CFG, 1700, 3000);
        assert_eq!(whole.slice(0, a.num_rows()), a);
        assert_eq!(whole.slice(a.num_rows(), b.num_rows()), b);
        assert_eq!(ops, [ops_a, ops_b].concat());
        assert_eq!(whole.num_rows(), ops.len());

        // Replaying the rows by key gives the fold.
        use arrow_array::cast::AsArray;
        use arrow_array::types::Int64Type;
        let keys = whole.column(0).as_primitive::<Int64Type>();
        let mut live = std::collections::BTreeSet::new();
        for (i, op) in ops.iter().enumerate() {
            let key = keys.value(i);
            if op.removes() {
                live.remove(&key);
            } else {
                live.insert(key);
            }
        }
        let folded: Vec<i64> = fold(&CFG, 3000).into_keys().collect();
        assert_eq!(folded, live.into_iter().collect::<Vec<_>>());
        assert_eq!(fold_batch(&CFG, 3000).num_rows(), folded.len());
    }
}
