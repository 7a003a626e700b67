//! PostgreSQL types → Arrow, and their text representation → Arrow arrays.
//!
//! Snapshot (`COPY ... TO STDOUT`) and stream (pgoutput) both deliver values in PostgreSQL's
//! text format, so one decoder serves both and a row reads the same whichever way it came.
//! Sessions run with `TimeZone=UTC`, `DateStyle=ISO`, `IntervalStyle=iso_8601` and
//! `extra_float_digits=3`, which fixes the formats parsed here.
//!
//! Mapping (types without an exact Iceberg counterpart become strings, as documented in
//! `docs/sources/postgres.md`):
//! smallint/integer → int, bigint → long, real → float, double → double, boolean,
//! numeric(p,s) with p ≤ 38 → decimal(p,s), unbounded numeric → string, text/varchar/char/
//! name/citext → string, bytea → binary, date, time → time, timestamp → timestamp,
//! timestamptz → timestamptz (UTC), uuid/json/jsonb/interval/inet/cidr/macaddr/money/
//! timetz/xml/bit/varbit/enums → string in PostgreSQL's text form (interval as ISO 8601);
//! one-dimensional arrays of these → lists (`array.rs`), other arrays → text (`{a,b}`).
//! Anything else is refused with the table and column.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lakeshore_api::files::FIELD_DOC;

pub use crate::array::Elem;
use crate::array::ListBuilder;
use lakeshore_api::{Error, Result};

/// How one column is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal(u8, i8),
    Text,
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    /// PostGIS `geometry`/`geography` as ISO WKB; every value must have this SRID (the
    /// column's declared one: 0 for `geometry` without one, 4326 for `geography`).
    Geometry(i32),
    /// A one-dimensional array, as a list.
    Array(Elem),
}

impl Kind {
    /// True when a column of this kind may become `to` in the lake (Iceberg's type
    /// promotions: int → long, float → double, a decimal's precision grows).
    pub fn widens_to(self, to: Kind) -> bool {
        matches!(
            (self, to),
            (Kind::Int16, Kind::Int32 | Kind::Int64)
                | (Kind::Int32, Kind::Int64)
                | (Kind::Float32, Kind::Float64)
        ) || matches!((self, to), (Kind::Decimal(p1, s1), Kind::Decimal(p2, s2)) if s1 == s2 && p2 > p1)
    }

    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal(p, s) => DataType::Decimal128(p, s),
            Kind::Text => DataType::Utf8,
            Kind::Bytea | Kind::Geometry(_) => DataType::LargeBinary,
            Kind::Date => DataType::Date32,
            Kind::Time => DataType::Time64(TimeUnit::Microsecond),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            Kind::Array(elem) => elem.list_type(),
        }
    }
}

/// Map a column's type, given its base type name and category (an array's: its
/// element's) and numeric typmod. `None` = not supported. An array is a list when its
/// elements map to a list's, else text.
pub fn kind_of(base: &str, category: &str, typmod: i32, is_array: bool) -> Option<Kind> {
    if is_array {
        return Some(
            kind_of(base, category, typmod, false)
                .and_then(Elem::of)
                .map_or(Kind::Text, Kind::Array),
        );
    }
    Some(match base {
        "bool" => Kind::Bool,
        "int2" => Kind::Int32,
        "int4" => Kind::Int32,
        "oid" => Kind::Int64,
        "int8" => Kind::Int64,
        "float4" => Kind::Float32,
        "float8" => Kind::Float64,
        "numeric" => {
            // typmod = ((precision << 16) | scale) + 4, or -1 when unbounded.
            if typmod < 4 {
                Kind::Text
            } else {
                let p = ((typmod - 4) >> 16) & 0xffff;
                let s = (typmod - 4) & 0xffff;
                if (1..=38).contains(&p) && s <= p {
                    Kind::Decimal(p as u8, s as i8)
                } else {
                    Kind::Text
                }
            }
        }
        "text" | "varchar" | "bpchar" | "name" | "citext" | "char" => Kind::Text,
        "bytea" => Kind::Bytea,
        "date" => Kind::Date,
        "time" => Kind::Time,
        "timestamp" => Kind::Timestamp,
        "timestamptz" => Kind::Timestamptz,
        "geometry" => Kind::Geometry(crate::geometry::typmod_srid(typmod).unwrap_or(0)),
        "geography" => Kind::Geometry(crate::geometry::typmod_srid(typmod).unwrap_or(4326)),
        "uuid" | "json" | "jsonb" | "interval" | "inet" | "cidr" | "macaddr" | "macaddr8"
        | "money" | "timetz" | "xml" | "bit" | "varbit" => Kind::Text,
        _ if category == "E" => Kind::Text,
        _ => return None,
    })
}

/// Appends text values of one column to an Arrow builder.
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, i8),
    Text(StringBuilder),
    Bytea(LargeBinaryBuilder),
    /// ISO WKB, the SRID every value must have, and a buffer for the conversion.
    Geometry(LargeBinaryBuilder, i32, Vec<u8>),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    List(ListBuilder),
}

impl ColumnBuilder {
    /// A builder for `kind` with room for `capacity` rows.
    pub fn new(kind: Kind, capacity: usize) -> Self {
        match kind {
            Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            Kind::Int16 => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            Kind::Int32 => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            Kind::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            Kind::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            Kind::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            Kind::Decimal(p, s) => ColumnBuilder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(p, s)
                    .expect("precision checked by kind_of"),
                s,
            ),
            Kind::Text => {
                ColumnBuilder::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            Kind::Bytea => {
                ColumnBuilder::Bytea(LargeBinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            Kind::Geometry(srid) => ColumnBuilder::Geometry(
                LargeBinaryBuilder::with_capacity(capacity, capacity * 32),
                srid,
                Vec::new(),
            ),
            Kind::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            Kind::Time => ColumnBuilder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            Kind::Timestamp => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                false,
            ),
            Kind::Timestamptz => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("+00:00"),
                true,
            ),
            Kind::Array(elem) => ColumnBuilder::List(ListBuilder::new(elem, capacity)),
        }
    }

    /// Append a null.
    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, _) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::Bytea(b) => b.append_null(),
            ColumnBuilder::Geometry(b, ..) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Time(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
            ColumnBuilder::List(b) => b.append_null(),
        }
    }

    /// Append a value in PostgreSQL's text format. The error says what could not be read;
    /// the caller adds table and column. `Ok(true)`: the value has no Iceberg form (a
    /// numeric NaN or infinity, an infinite date or timestamp) and a null was appended.
    pub fn append_text(&mut self, v: &str) -> Result<bool, String> {
        let bad = || format!("cannot read {v:?}");
        let infinite = matches!(v, "infinity" | "-infinity");
        match self {
            ColumnBuilder::Decimal(b, _) if matches!(v, "NaN" | "Infinity" | "-Infinity") => {
                b.append_null();
                return Ok(true);
            }
            ColumnBuilder::Date(b) if infinite => {
                b.append_null();
                return Ok(true);
            }
            ColumnBuilder::Timestamp(b, _) if infinite => {
                b.append_null();
                return Ok(true);
            }
            ColumnBuilder::Bool(b) => b.append_value(match v {
                "t" => true,
                "f" => false,
                _ => return Err(bad()),
            }),
            ColumnBuilder::Int16(b) => b.append_value(v.parse().map_err(|_| bad())?),
            ColumnBuilder::Int32(b) => b.append_value(v.parse().map_err(|_| bad())?),
            ColumnBuilder::Int64(b) => b.append_value(v.parse().map_err(|_| bad())?),
            ColumnBuilder::Float32(b) => b.append_value(match v {
                "NaN" => f32::NAN,
                "Infinity" => f32::INFINITY,
                "-Infinity" => f32::NEG_INFINITY,
                _ => v.parse().map_err(|_| bad())?,
            }),
            ColumnBuilder::Float64(b) => b.append_value(parse_float(v).ok_or_else(bad)?),
            ColumnBuilder::Decimal(b, s) => b.append_value(
                parse_decimal(v, *s)
                    .ok_or_else(|| format!("cannot read {v:?} as a decimal of scale {s}"))?,
            ),
            ColumnBuilder::Text(b) => b.append_value(v),
            ColumnBuilder::Bytea(b) => b.append_value(parse_bytea(v).ok_or_else(bad)?),
            ColumnBuilder::Geometry(b, srid, buf) => {
                append_wkb(b, *srid, buf, &crate::geometry::unhex(v)?)?;
            }
            ColumnBuilder::Date(b) => b.append_value(parse_date(v).ok_or_else(bad)?),
            ColumnBuilder::Time(b) => b.append_value(parse_time(v).ok_or_else(bad)?),
            ColumnBuilder::Timestamp(b, tz) => {
                b.append_value(parse_timestamp(v, *tz).ok_or_else(bad)?)
            }
            ColumnBuilder::List(b) => return b.append_text(v),
        }
        Ok(false)
    }

    /// Append a value in PostgreSQL's binary format (`COPY ... (FORMAT binary)`); columns
    /// mapped to strings arrive as text (see `snapshot::chunk_sql`). `Ok(true)` as for
    /// [`ColumnBuilder::append_text`].
    pub fn append_binary(&mut self, v: &[u8]) -> Result<bool, String> {
        let bad = || format!("cannot read a {}-byte binary value", v.len());
        let be8 = |v: &[u8]| -> Result<[u8; 8], String> { v.try_into().map_err(|_| bad()) };
        match self {
            // The sign word: NaN 0xC000, +infinity 0xD000, -infinity 0xF000.
            ColumnBuilder::Decimal(b, _)
                if matches!(v.get(4..6), Some([0xC0 | 0xD0 | 0xF0, 0])) =>
            {
                b.append_null();
                return Ok(true);
            }
            ColumnBuilder::Date(b)
                if matches!(
                    v.try_into().map(i32::from_be_bytes),
                    Ok(i32::MAX | i32::MIN)
                ) =>
            {
                b.append_null();
                return Ok(true);
            }
            ColumnBuilder::Timestamp(b, _)
                if matches!(
                    v.try_into().map(i64::from_be_bytes),
                    Ok(i64::MAX | i64::MIN)
                ) =>
            {
                b.append_null();
                return Ok(true);
            }
            ColumnBuilder::Bool(b) => b.append_value(*v.first().ok_or_else(bad)? != 0),
            ColumnBuilder::Int16(b) => {
                b.append_value(i16::from_be_bytes(v.try_into().map_err(|_| bad())?))
            }
            ColumnBuilder::Int32(b) => b.append_value(match v.len() {
                2 => i16::from_be_bytes([v[0], v[1]]) as i32,
                4 => i32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                _ => return Err(bad()),
            }),
            ColumnBuilder::Int64(b) => b.append_value(match v.len() {
                2 => i16::from_be_bytes([v[0], v[1]]) as i64,
                4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as i64,
                8 => i64::from_be_bytes(be8(v)?),
                _ => return Err(bad()),
            }),
            ColumnBuilder::Float32(b) => {
                b.append_value(f32::from_be_bytes(v.try_into().map_err(|_| bad())?))
            }
            ColumnBuilder::Float64(b) => b.append_value(f64::from_be_bytes(be8(v)?)),
            ColumnBuilder::Decimal(b, s) => b.append_value(
                numeric_binary(v, *s)
                    .ok_or_else(|| format!("cannot read a numeric as a decimal of scale {s}"))?,
            ),
            ColumnBuilder::Text(b) => b.append_value(
                std::str::from_utf8(v).map_err(|_| "value is not UTF-8".to_string())?,
            ),
            ColumnBuilder::Bytea(b) => b.append_value(v),
            ColumnBuilder::Geometry(b, srid, buf) => append_wkb(b, *srid, buf, v)?,
            ColumnBuilder::Date(b) => {
                let days = i32::from_be_bytes(v.try_into().map_err(|_| bad())?);
                b.append_value(days.checked_add(PG_EPOCH_DAYS).ok_or_else(bad)?)
            }
            ColumnBuilder::Time(b) => b.append_value(i64::from_be_bytes(be8(v)?)),
            ColumnBuilder::Timestamp(b, _) => {
                let us = i64::from_be_bytes(be8(v)?);
                b.append_value(us.checked_add(PG_EPOCH_US).ok_or_else(bad)?)
            }
            // Read through the output function, as text (`snapshot::chunk_sql`).
            ColumnBuilder::List(b) => {
                return b.append_text(
                    std::str::from_utf8(v).map_err(|_| "value is not UTF-8".to_string())?,
                );
            }
        }
        Ok(false)
    }

    /// The finished array.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, _) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Bytea(b) | ColumnBuilder::Geometry(b, ..) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b, _) => Arc::new(b.finish()),
            ColumnBuilder::List(b) => b.finish(),
        }
    }
}

/// Append EWKB value `ewkb` as ISO WKB, if its SRID is the column's.
fn append_wkb(
    b: &mut LargeBinaryBuilder,
    srid: i32,
    buf: &mut Vec<u8>,
    ewkb: &[u8],
) -> Result<(), String> {
    buf.clear();
    let found = crate::geometry::ewkb_to_wkb(ewkb, buf)?;
    if found != srid {
        return Err(format!(
            "a geometry has SRID {found}, and the column declares {}; the lake column \
                 holds one SRID: declare it (ALTER TABLE ... ALTER COLUMN ... TYPE \
                 geometry(Geometry, {found})) or transform the values to SRID {srid} \
                 (ST_Transform) at the source",
            if srid == 0 {
                "none (SRID 0)".to_string()
            } else {
                srid.to_string()
            }
        ));
    }
    b.append_value(buf.as_slice());
    Ok(())
}

/// Builders for every column of a table; rows go in as text values.
pub struct RowsBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    kinds: Vec<Kind>,
    rows: usize,
    /// Per column: values with no Iceberg form written as null since the last report.
    nulled: Vec<u64>,
}

impl RowsBuilder {
    /// Builders for `kinds`, producing batches of `schema`.
    pub fn new(schema: SchemaRef, kinds: &[Kind], capacity: usize) -> Self {
        RowsBuilder {
            schema,
            columns: kinds
                .iter()
                .map(|k| ColumnBuilder::new(*k, capacity))
                .collect(),
            kinds: kinds.to_vec(),
            rows: 0,
            nulled: vec![0; kinds.len()],
        }
    }

    /// Append a null to column `i`.
    pub fn append_null(&mut self, i: usize) {
        self.columns[i].append_null();
    }

    /// Append a text-format value to column `i` (see [`ColumnBuilder::append_text`]).
    pub fn append_text(&mut self, i: usize, v: &str) -> Result<(), String> {
        let nulled = self.columns[i].append_text(v)?;
        self.nulled[i] += nulled as u64;
        Ok(())
    }

    /// Append a binary-format value to column `i` (see [`ColumnBuilder::append_binary`]).
    pub fn append_binary(&mut self, i: usize, v: &[u8]) -> Result<(), String> {
        let nulled = self.columns[i].append_binary(v)?;
        self.nulled[i] += nulled as u64;
        Ok(())
    }

    /// Count (metric `lakeshore_postgres_values_nulled_total`) and, once per column and
    /// process, warn about the values written as null since the last report because
    /// Iceberg cannot hold them.
    pub fn report_nulled(&mut self, table: &str, columns: &[String]) {
        static WARNED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
        for (i, n) in self.nulled.iter_mut().enumerate() {
            if *n == 0 {
                continue;
            }
            let column = columns.get(i).cloned().unwrap_or_default();
            metrics::counter!("lakeshore_postgres_values_nulled_total", "table" => table.to_string(), "column" => column.clone())
                .increment(*n);
            let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
            let key = (table.to_string(), column);
            if !warned.contains(&key) {
                tracing::warn!(table, column = %key.1, count = *n, "values Iceberg cannot hold (numeric NaN or infinity, infinite dates and timestamps) are written as null; lakeshore_postgres_values_nulled_total counts them");
                warned.push(key);
            }
            *n = 0;
        }
    }

    /// Count a finished row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Rows appended since the last [`RowsBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The buffered rows as a batch; the builders start over.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let arrays = self.columns.iter_mut().map(|c| c.finish()).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::internal("building a batch").with_source(e))
    }

    /// The column kinds.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }
}

/// An Arrow schema for columns `(name, kind)`; key columns are not nullable. A
/// geometry's SRID, which WKB does not hold, is in its field's `doc` (the Iceberg
/// column's doc).
pub fn arrow_schema(columns: &[(String, Kind)], key: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, kind)| {
                let field = Field::new(name, kind.data_type(), !key.contains(name));
                match kind {
                    Kind::Geometry(srid) => field.with_metadata(
                        [(FIELD_DOC.to_string(), format!("{WKB_DOC}{srid}"))].into(),
                    ),
                    _ => field,
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// The doc of a geometry column, before its SRID.
pub const WKB_DOC: &str = "PostGIS geometry as ISO WKB; SRID ";

/// PostgreSQL's epoch (2000-01-01) in days and microseconds after Unix's.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Binary numeric (ndigits, weight, sign, dscale, base-10000 digits) → unscaled i128 at
/// scale `s`. `None` for NaN, infinities, overflow, or digits beyond the scale.
fn numeric_binary(v: &[u8], s: i8) -> Option<i128> {
    let word =
        |i: usize| -> Option<i16> { Some(i16::from_be_bytes(v.get(i..i + 2)?.try_into().ok()?)) };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i32;
    let sign = word(4)? as u16;
    if sign != 0 && sign != 0x4000 {
        return None;
    }
    let mut n: i128 = 0;
    // The value is sum(d_i * 10000^(weight - i)); scaled by 10^s.
    let mut exp10: i32 = 0; // power of ten of the last digit group processed
    for i in 0..ndigits {
        let d = word(8 + 2 * i)? as i128;
        n = n.checked_mul(10_000)?.checked_add(d)?;
        exp10 = 4 * (weight - i as i32);
    }
    if ndigits == 0 {
        return Some(0);
    }
    // n is the integer at 10^exp10; bring it to 10^-s.
    let shift = exp10 + s as i32;
    if shift >= 0 {
        for _ in 0..shift {
            n = n.checked_mul(10)?;
        }
    } else {
        for _ in 0..(-shift) {
            if n % 10 != 0 {
                return None;
            }
            n /= 10;
        }
    }
    Some(if sign == 0x4000 { -n } else { n })
}

fn parse_float(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// `-123.45` at scale `s` → unscaled i128. Extra fraction digits are an error (PostgreSQL
/// already rounded to the column's scale, so they never occur for typed columns).
fn parse_decimal(v: &str, s: i8) -> Option<i128> {
    let (neg, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > s as usize {
        return None;
    }
    let mut n: i128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as i128)?;
    }
    for _ in frac.len()..s as usize {
        n = n.checked_mul(10)?;
    }
    Some(if neg { -n } else { n })
}

/// `\x0a1b` (hex output, the default since PostgreSQL 9.0).
fn parse_bytea(v: &str) -> Option<Vec<u8>> {
    let hex = v.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `YYYY-MM-DD`, optionally followed by ` BC`.
fn parse_date_days(v: &str) -> Option<i64> {
    let (v, bc) = match v.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (v, false),
    };
    let mut parts = v.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    Some(days_from_civil(y, m, d))
}

fn parse_date(v: &str) -> Option<i32> {
    parse_date_days(v)?.try_into().ok()
}

/// `HH:MM:SS[.ffffff]` → microseconds.
fn parse_time(v: &str) -> Option<i64> {
    let mut parts = v.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: i64 = s.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut us: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..6 {
        us *= 10;
    }
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + us)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since the epoch (UTC for
/// timestamptz, whose text carries the session's zone offset, UTC here).
fn parse_timestamp(v: &str, tz: bool) -> Option<i64> {
    let (v, bc) = match v.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (v, false),
    };
    let (date, rest) = v.split_once(' ')?;
    let (time, offset_secs) = if tz {
        let at = rest.rfind(['+', '-'])?;
        let (time, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, part) in off[1..].split(':').enumerate() {
            let n: i64 = part.parse().ok()?;
            secs += n * [3600, 60, 1].get(i)?;
        }
        (time, sign * secs)
    } else {
        (rest, 0)
    };
    let days = parse_date_days(&if bc {
        format!("{date} BC")
    } else {
        date.to_string()
    })?;
    let us = parse_time(time)?;
    Some(days * 86_400_000_000 + us - offset_secs * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_scale_and_sign() {
        assert_eq!(parse_decimal("123.45", 2), Some(12345));
        assert_eq!(parse_decimal("-0.5", 2), Some(-50));
        assert_eq!(parse_decimal("7", 3), Some(7000));
        assert_eq!(parse_decimal("1.234", 2), None);
        assert_eq!(parse_decimal("NaN", 2), None);
    }

    #[test]
    fn dates_times_timestamps() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11017));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("infinity"), None);
        assert_eq!(parse_time("01:02:03.5"), Some(3_723_500_000));
        assert_eq!(
            parse_timestamp("2024-02-29 12:00:00.000001", false),
            Some(1_709_208_000_000_001)
        );
        assert_eq!(
            parse_timestamp("2024-02-29 12:00:00+00", true),
            Some(1_709_208_000_000_000)
        );
        assert_eq!(
            parse_timestamp("2024-02-29 14:30:00+02:30", true),
            Some(1_709_208_000_000_000)
        );
        assert_eq!(
            parse_timestamp("2024-02-29 09:00:00-03", true),
            Some(1_709_208_000_000_000)
        );
        assert_eq!(parse_date("0001-01-01 BC"), parse_date("0000-01-01"));
    }

    #[test]
    fn binary_numerics() {
        // 1234.56: digits [1234, 5600], weight 0, dscale 2.
        let enc = |digits: &[i16], weight: i16, sign: u16, dscale: i16| {
            let mut v = Vec::new();
            for w in [digits.len() as i16, weight, sign as i16, dscale] {
                v.extend_from_slice(&w.to_be_bytes());
            }
            for d in digits {
                v.extend_from_slice(&d.to_be_bytes());
            }
            v
        };
        assert_eq!(
            numeric_binary(&enc(&[1234, 5600], 0, 0, 2), 2),
            Some(123456)
        );
        assert_eq!(numeric_binary(&enc(&[5000], -1, 0x4000, 2), 2), Some(-50));
        assert_eq!(numeric_binary(&enc(&[1], 2, 0, 0), 2), Some(10_000_000_000));
        assert_eq!(numeric_binary(&enc(&[], 0, 0, 2), 2), Some(0));
        assert_eq!(numeric_binary(&enc(&[], 0, 0xC000, 0), 2), None);
        assert_eq!(numeric_binary(&enc(&[1, 2345], 0, 0, 4), 2), None);
    }

    #[test]
    fn bytea_hex() {
        assert_eq!(parse_bytea("\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(parse_bytea("\\x0"), None);
    }

    #[test]
    fn numeric_typmods() {
        let typmod = ((12 << 16) | 2) + 4;
        assert_eq!(
            kind_of("numeric", "N", typmod, false),
            Some(Kind::Decimal(12, 2))
        );
        assert_eq!(kind_of("numeric", "N", -1, false), Some(Kind::Text));
        assert_eq!(
            kind_of("int4", "N", -1, true),
            Some(Kind::Array(Elem::Int32))
        );
        assert_eq!(kind_of("point", "G", -1, true), Some(Kind::Text));
        assert_eq!(
            kind_of("mood", "E", -1, true),
            Some(Kind::Array(Elem::Text))
        );
        assert_eq!(kind_of("mood", "E", -1, false), Some(Kind::Text));
        assert_eq!(kind_of("point", "G", -1, false), None);
    }
}
