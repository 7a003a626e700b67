//! The Nexmark event generator: persons, auctions and bids of an online auction.
//!
//! Follows the Nexmark generator of Apache Beam / Flink (`GeneratorConfig`,
//! `PersonGenerator`, `AuctionGenerator`, `BidGenerator`): per 50 events, 1 person,
//! 3 auctions and 46 bids; ids and timestamps derive from the event number, and every
//! random choice comes from a generator seeded by (seed, event number), so any event can
//! be produced on its own and a restart at position `n` replays exactly.

use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::rng::Rng;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const PROPORTION_DENOMINATOR: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const PERSON_ID_LEAD: u64 = 10;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
/// Microseconds between two events (the generator's default first-event rate of 10,000/s).
const INTER_EVENT_DELAY_US: i64 = 100;
/// Event time of event 0: 2026-01-01T00:00:00Z.
const BASE_TIME_US: i64 = 1_767_225_600_000_000;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// Which of the three streams event `n` belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new person.
    Person,
    /// A new auction.
    Auction,
    /// A bid on an auction.
    Bid,
}

/// The kind of event number `n` (1 : 3 : 46 per 50 events).
pub fn event_kind(n: u64) -> EventKind {
    let rem = n % PROPORTION_DENOMINATOR;
    if rem < PERSON_PROPORTION {
        EventKind::Person
    } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
        EventKind::Auction
    } else {
        EventKind::Bid
    }
}

/// How many events of each kind are among the first `n` events: (persons, auctions, bids).
pub fn expected_counts(n: u64) -> (u64, u64, u64) {
    let full = n / PROPORTION_DENOMINATOR;
    let rem = n % PROPORTION_DENOMINATOR;
    let persons = full * PERSON_PROPORTION + rem.min(PERSON_PROPORTION);
    let auctions = full * AUCTION_PROPORTION + rem.saturating_sub(PERSON_PROPORTION).min(3);
    (persons, auctions, n - persons - auctions)
}

fn last_base0_person_id(n: u64) -> u64 {
    // With one person per epoch the offset within the epoch is always 0.
    n / PROPORTION_DENOMINATOR * PERSON_PROPORTION
}

fn last_base0_auction_id(n: u64) -> u64 {
    let mut epoch = n / PROPORTION_DENOMINATOR;
    let mut offset = n % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // Before the first auction of this epoch: the last auction of the previous one.
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

fn next_base0_person_id(n: u64, rng: &mut Rng) -> u64 {
    let num_people = last_base0_person_id(n) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    let pick = rng.below(active + PERSON_ID_LEAD);
    (num_people - active + pick).min(num_people + PERSON_ID_LEAD)
}

fn next_base0_auction_id(n: u64, rng: &mut Rng) -> u64 {
    let max = last_base0_auction_id(n);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

fn next_price(rng: &mut Rng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// Event time of event `n`, in microseconds since the epoch.
pub fn event_time_us(n: u64) -> i64 {
    BASE_TIME_US + n as i64 * INTER_EVENT_DELAY_US
}

fn timestamp_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        false,
    )
}

/// Schema of the `person` table.
pub fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        timestamp_field("date_time"),
        Field::new("extra", DataType::Utf8, true),
    ]))
}

/// Schema of the `auction` table.
pub fn auction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        timestamp_field("date_time"),
        timestamp_field("expires"),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, true),
    ]))
}

/// Schema of the `bid` table.
pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        timestamp_field("date_time"),
        Field::new("extra", DataType::Utf8, true),
    ]))
}

/// Column builders for the three tables; `build` turns a range of events into batches.
#[derive(Default)]
struct PersonColumns {
    id: Int64Builder,
    name: StringBuilder,
    email: StringBuilder,
    card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    time: TimestampMicrosecondBuilder,
    extra: StringBuilder,
}

#[derive(Default)]
struct AuctionColumns {
    id: Int64Builder,
    item: StringBuilder,
    description: StringBuilder,
    initial_bid: Int64Builder,
    reserve: Int64Builder,
    time: TimestampMicrosecondBuilder,
    expires: TimestampMicrosecondBuilder,
    seller: Int64Builder,
    category: Int64Builder,
    extra: StringBuilder,
}

#[derive(Default)]
struct BidColumns {
    auction: Int64Builder,
    bidder: Int64Builder,
    price: Int64Builder,
    channel: StringBuilder,
    url: StringBuilder,
    time: TimestampMicrosecondBuilder,
    extra: StringBuilder,
}

/// Batches of the three tables for one range of events; empty tables are left out.
pub struct NexmarkBatches {
    /// `person` rows.
    pub person: RecordBatch,
    /// `auction` rows.
    pub auction: RecordBatch,
    /// `bid` rows.
    pub bid: RecordBatch,
}

fn ts(b: TimestampMicrosecondBuilder) -> ArrayRef {
    let mut b = b;
    Arc::new(b.finish().with_timezone("+00:00"))
}

/// Person event `n` at `time`.
fn push_person(p: &mut PersonColumns, n: u64, time: i64, rng: &mut Rng, text: &mut String) {
    let id = last_base0_person_id(n) as i64 + FIRST_PERSON_ID;
    p.id.append_value(id);
    text.clear();
    text.push_str(FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize]);
    text.push(' ');
    text.push_str(LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]);
    p.name.append_value(&*text);
    rng.push_word(text, 7);
    p.email
        .append_value(format!("{}@{}.com", &text[text.len() - 7..], id));
    p.card.append_value(format!(
        "{:04} {:04} {:04} {:04}",
        rng.below(10_000),
        rng.below(10_000),
        rng.below(10_000),
        rng.below(10_000)
    ));
    p.city
        .append_value(US_CITIES[rng.below(US_CITIES.len() as u64) as usize]);
    p.state
        .append_value(US_STATES[rng.below(US_STATES.len() as u64) as usize]);
    p.time.append_value(time);
    p.extra.append_value("");
}

/// Auction event `n` at `time`.
fn push_auction(a: &mut AuctionColumns, n: u64, time: i64, rng: &mut Rng, text: &mut String) {
    let id = last_base0_auction_id(n) as i64 + FIRST_AUCTION_ID;
    text.clear();
    rng.push_word(text, 20);
    a.id.append_value(id);
    a.item.append_value(&*text);
    text.clear();
    rng.push_word(text, 60);
    a.description.append_value(&*text);
    let initial = next_price(rng);
    a.initial_bid.append_value(initial);
    a.reserve.append_value(initial + next_price(rng));
    a.time.append_value(time);
    // Auctions run for up to 20 events' worth of time per in-flight auction.
    let length_us = 1 + rng.below(NUM_IN_FLIGHT_AUCTIONS * 20) as i64;
    a.expires
        .append_value(time + length_us * INTER_EVENT_DELAY_US * 10);
    let seller = if rng.below(HOT_SELLER_RATIO) > 0 {
        (last_base0_person_id(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
    } else {
        next_base0_person_id(n, rng)
    };
    a.seller.append_value(seller as i64 + FIRST_PERSON_ID);
    a.category
        .append_value(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
    a.extra.append_value("");
}

/// Bid event `n` at `time`.
fn push_bid(b: &mut BidColumns, n: u64, time: i64, rng: &mut Rng, text: &mut String) {
    let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
        (last_base0_auction_id(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
    } else {
        next_base0_auction_id(n, rng)
    };
    let bidder = if rng.below(HOT_BIDDER_RATIO) > 0 {
        (last_base0_person_id(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
    } else {
        next_base0_person_id(n, rng)
    };
    b.auction.append_value(auction as i64 + FIRST_AUCTION_ID);
    b.bidder.append_value(bidder as i64 + FIRST_PERSON_ID);
    b.price.append_value(next_price(rng));
    let channel = rng.below(CHANNELS.len() as u64) as usize;
    b.channel.append_value(CHANNELS[channel]);
    text.clear();
    text.push_str("https://www.nexmark.com/");
    rng.push_word(text, 5);
    text.push_str("/item.htm?query=1&channel_id=");
    text.push_str(&channel.to_string());
    b.url.append_value(&*text);
    b.time.append_value(time);
    b.extra.append_value("");
}

/// Generate events `[start, end)` with `seed`.
pub fn generate(seed: u64, start: u64, end: u64) -> NexmarkBatches {
    let mut p = PersonColumns::default();
    let mut a = AuctionColumns::default();
    let mut b = BidColumns::default();
    let mut text = String::with_capacity(64);
    for n in start..end {
        let mut rng = Rng::for_event(seed, n);
        let time = event_time_us(n);
        match event_kind(n) {
            EventKind::Person => push_person(&mut p, n, time, &mut rng, &mut text),
            EventKind::Auction => push_auction(&mut a, n, time, &mut rng, &mut text),
            EventKind::Bid => push_bid(&mut b, n, time, &mut rng, &mut text),
        }
    }
    let person = RecordBatch::try_new(
        person_schema(),
        vec![
            Arc::new(p.id.finish()),
            Arc::new(p.name.finish()),
            Arc::new(p.email.finish()),
            Arc::new(p.card.finish()),
            Arc::new(p.city.finish()),
            Arc::new(p.state.finish()),
            ts(p.time),
            Arc::new(p.extra.finish()),
        ],
    );
    let auction = RecordBatch::try_new(
        auction_schema(),
        vec![
            Arc::new(a.id.finish()),
            Arc::new(a.item.finish()),
            Arc::new(a.description.finish()),
            Arc::new(a.initial_bid.finish()),
            Arc::new(a.reserve.finish()),
            ts(a.time),
            ts(a.expires),
            Arc::new(a.seller.finish()),
            Arc::new(a.category.finish()),
            Arc::new(a.extra.finish()),
        ],
    );
    let bid = RecordBatch::try_new(
        bid_schema(),
        vec![
            Arc::new(b.auction.finish()),
            Arc::new(b.bidder.finish()),
            Arc::new(b.price.finish()),
            Arc::new(b.channel.finish()),
            Arc::new(b.url.finish()),
            ts(b.time),
            Arc::new(b.extra.finish()),
        ],
    );
    // The builders and schemas above are made for each other; a mismatch is a bug here.
    NexmarkBatches {
        person: person.expect("person columns match the person schema"),
        auction: auction.expect("auction columns match the auction schema"),
        bid: bid.expect("bid columns match the bid schema"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;

    #[test]
    fn proportions_per_fifty_events() {
        assert_eq!(expected_counts(1_000_000), (20_000, 60_000, 920_000));
        assert_eq!(expected_counts(51), (2, 3, 46));
        let batches = generate(7, 0, 1000);
        assert_eq!(batches.person.num_rows(), 20);
        assert_eq!(batches.auction.num_rows(), 60);
        assert_eq!(batches.bid.num_rows(), 920);
    }

    #[test]
    fn ids_derive_from_event_numbers() {
        let batches = generate(1, 0, 100);
        let persons = batches.person.column(0).as_primitive::<Int64Type>();
        assert_eq!(persons.values(), &[1000, 1001]);
        let auctions = batches.auction.column(0).as_primitive::<Int64Type>();
        assert_eq!(auctions.values(), &[1000, 1001, 1002, 1003, 1004, 1005]);
    }

    #[test]
    fn any_range_is_reproducible_on_its_own() {
        let whole = generate(42, 0, 500);
        let tail = generate(42, 250, 500);
        let n = tail.bid.num_rows();
        let offset = whole.bid.num_rows() - n;
        assert_eq!(whole.bid.slice(offset, n), tail.bid);
        assert_ne!(generate(43, 250, 500).bid, tail.bid);
    }
}
