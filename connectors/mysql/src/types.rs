//! MySQL / MariaDB column types → Arrow, and `mysql_common::Value`s → Arrow arrays.
//!
//! The snapshot reads with the binary protocol and the binlog decodes row images into the
//! same `Value` shapes, so one decoder serves both and a row reads the same whichever way
//! it came. Sessions run with `time_zone = '+00:00'`.
//!
//! Mapping (see `docs/sources/mysql.md`): TINYINT..INT → int (INT UNSIGNED → long),
//! BIGINT → long, BIGINT UNSIGNED → decimal(20,0), DECIMAL(p,s) → decimal(p,s) (p ≤ 38,
//! else string), FLOAT/DOUBLE → float/double, BIT(n) → long, YEAR → int, CHAR/VARCHAR/TEXT
//! → string, BINARY/VARBINARY/BLOB → binary, DATE → date, DATETIME(n) → timestamp,
//! TIMESTAMP(n) → timestamptz (UTC), TIME(n) → string (`[-]HHH:MM:SS[.ffffff]`: its range
//! exceeds a day), JSON → string, ENUM/SET → string (labels), GEOMETRY → binary (WKB),
//! UUID/INET4/INET6 (MariaDB) → string.

use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Decimal128Builder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    LargeBinaryBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use lakeshore_api::{Error, Result};
use mysql_common::value::Value;

/// How the bytes of a text column's character set are decoded: the binlog carries them
/// as stored (the snapshot converts them, except latin1, read as bytes too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charset {
    /// utf8mb4, utf8mb3 and its subset ascii: taken as UTF-8.
    Utf8,
    /// latin1: one byte per character.
    Latin1,
    /// The `binary` pseudo character set of BINARY, VARBINARY and BLOB.
    Binary,
    /// Any other (cp1251, gbk, utf16, ...): not decoded.
    Unsupported(String),
}

impl Charset {
    /// The class of the character set `name` (as `information_schema` spells it).
    pub fn of(name: &str) -> Charset {
        match name {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "binary" => Charset::Binary,
            other => Charset::Unsupported(other.to_string()),
        }
    }
}

/// How one column is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Int32,
    /// Signed MEDIUMINT: `mysql_common` reads some negative binlog values as unsigned
    /// 24-bit numbers, which are sign-extended here.
    Int24,
    Int64,
    /// BIGINT UNSIGNED: decimal(20,0).
    UInt64,
    Decimal(u8, i8),
    Float32,
    Float64,
    /// Bytes that are text in `charset` (`latin1` is converted, others taken as UTF-8).
    Text {
        latin1: bool,
    },
    Binary,
    /// GEOMETRY: MySQL stores a 4-byte SRID before the WKB.
    Geometry,
    Date,
    DateTime,
    Timestamp,
    /// TIME with its fractional digits.
    Time(u8),
    Json,
    /// ENUM labels (the binlog carries the 1-based index).
    Enum(Arc<[String]>),
    /// SET labels (the binlog carries a bit mask).
    Set(Arc<[String]>),
    Bit,
    /// MariaDB UUID / INET4 / INET6: read in their binary forms (the binlog's; the snapshot
    /// selects `CAST(c AS BINARY(n))`), printed as the server prints them.
    Uuid,
    Inet4,
    Inet6,
}

impl Kind {
    /// The Arrow type of the column.
    pub fn data_type(&self) -> DataType {
        match self {
            Kind::Int32 | Kind::Int24 => DataType::Int32,
            Kind::Int64 | Kind::Bit => DataType::Int64,
            Kind::UInt64 => DataType::Decimal128(20, 0),
            Kind::Decimal(p, s) => DataType::Decimal128(*p, *s),
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Binary | Kind::Geometry => DataType::LargeBinary,
            Kind::Date => DataType::Date32,
            Kind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            // Text, TIME, JSON, ENUM, SET, UUID, INET: strings.
            _ => DataType::Utf8,
        }
    }
}

/// Map a column from `information_schema.COLUMNS`: `DATA_TYPE`, `COLUMN_TYPE`,
/// precision, scale and character set. `None` = not supported (also text in a character
/// set other than those [`Charset::of`] decodes).
pub fn kind_of(
    data_type: &str,
    column_type: &str,
    precision: Option<u64>,
    scale: Option<u64>,
    charset: Option<&str>,
) -> Option<Kind> {
    let unsigned = column_type.contains("unsigned");
    Some(match data_type {
        "mediumint" if !unsigned => Kind::Int24,
        "tinyint" | "smallint" | "mediumint" | "year" => Kind::Int32,
        "int" | "integer" if unsigned => Kind::Int64,
        "int" | "integer" => Kind::Int32,
        "bigint" if unsigned => Kind::UInt64,
        "bigint" => Kind::Int64,
        "decimal" | "numeric" => {
            let p = precision.unwrap_or(10);
            let s = scale.unwrap_or(0);
            if p <= 38 {
                Kind::Decimal(p as u8, s as i8)
            } else {
                Kind::Text { latin1: false }
            }
        }
        "float" => Kind::Float32,
        "double" | "real" => Kind::Float64,
        "bit" => Kind::Bit,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
            match charset.map(Charset::of) {
                Some(Charset::Latin1) => Kind::Text { latin1: true },
                None | Some(Charset::Utf8) => Kind::Text { latin1: false },
                Some(Charset::Binary | Charset::Unsupported(_)) => return None,
            }
        }
        "uuid" => Kind::Uuid,
        "inet4" => Kind::Inet4,
        "inet6" => Kind::Inet6,
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => Kind::Geometry,
        "date" => Kind::Date,
        "datetime" => Kind::DateTime,
        "timestamp" => Kind::Timestamp,
        "time" => Kind::Time(
            column_type
                .split_once('(')
                .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
                .unwrap_or(0),
        ),
        "json" => Kind::Json,
        "enum" => Kind::Enum(labels(column_type)?.into()),
        "set" => Kind::Set(labels(column_type)?.into()),
        _ => return None,
    })
}

/// The labels of `enum('a','b')` / `set('a','b')` (quotes doubled inside labels).
fn labels(column_type: &str) -> Option<Vec<String>> {
    let inner = column_type.split_once('(')?.1.strip_suffix(')')?.trim();
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => label.push(chars.next()?),
                c => label.push(c),
            }
        }
        out.push(label);
    }
    Some(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m as i32 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The DATETIME value of microseconds since the epoch.
pub(crate) fn date_value(us: i64) -> Value {
    let (y, m, d) = civil(us.div_euclid(86_400_000_000));
    let t = us.rem_euclid(86_400_000_000);
    let secs = t / 1_000_000;
    Value::Date(
        y as u16,
        m as u8,
        d as u8,
        (secs / 3600) as u8,
        (secs / 60 % 60) as u8,
        (secs % 60) as u8,
        (t % 1_000_000) as u32,
    )
}

/// A scaled integer as a decimal string.
pub(crate) fn format_decimal(n: i128, scale: i8) -> String {
    if scale <= 0 {
        return n.to_string();
    }
    let digits = n.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if n < 0 { "-" } else { "" })
}

/// Parse a decimal string into an i128 scaled by `scale`.
pub(crate) fn decimal(s: &str, scale: i8) -> Option<i128> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut v: i128 = 0;
    for c in int.chars() {
        v = v.checked_mul(10)?.checked_add(c.to_digit(10)? as i128)?;
    }
    let mut digits = frac.chars();
    for _ in 0..scale.max(0) {
        let d = match digits.next() {
            Some(c) => c.to_digit(10)? as i128,
            None => 0,
        };
        v = v.checked_mul(10)?.checked_add(d)?;
    }
    Some(if neg { -v } else { v })
}

/// A column's builder.
pub enum ColumnBuilder {
    Int32(Int32Builder),
    Int64(Int64Builder),
    Decimal(Decimal128Builder, i8),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Binary(LargeBinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    fn new(kind: &Kind, capacity: usize) -> Self {
        match kind {
            Kind::Int32 | Kind::Int24 => {
                ColumnBuilder::Int32(Int32Builder::with_capacity(capacity))
            }
            Kind::Int64 | Kind::Bit => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            Kind::UInt64 | Kind::Decimal(..) => {
                let DataType::Decimal128(p, s) = kind.data_type() else {
                    unreachable!("decimal kinds map to Decimal128")
                };
                ColumnBuilder::Decimal(
                    Decimal128Builder::with_capacity(capacity)
                        .with_precision_and_scale(p, s)
                        .expect("precision ≤ 38"),
                    s,
                )
            }
            Kind::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            Kind::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            Kind::Binary | Kind::Geometry => ColumnBuilder::Binary(LargeBinaryBuilder::new()),
            Kind::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            Kind::DateTime => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            Kind::Timestamp => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("+00:00"),
            ),
            // The string kinds (see `Kind::data_type`).
            _ => ColumnBuilder::Utf8(StringBuilder::new()),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, _) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, _) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// What went wrong with one value: the caller adds table and column.
pub type ValueError = String;

fn int_of(v: &Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(*i as i128),
        Value::UInt(u) => Some(*u as i128),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::Float(f) => Some(*f as i128),
        Value::Double(f) => Some(*f as i128),
        _ => None,
    }
}

fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f as f64),
        Value::Double(f) => Some(*f),
        Value::Bytes(s) => std::str::from_utf8(s).ok()?.parse().ok(),
        _ => None,
    }
}

/// The binary form of a UUID / INET value, its trailing zero bytes restored (the binlog
/// drops them from fixed-length binary strings).
fn fixed<const N: usize>(b: &[u8]) -> std::result::Result<[u8; N], ValueError> {
    let mut out = [0u8; N];
    out.get_mut(..b.len())
        .ok_or_else(|| format!("{} bytes where {N} were expected", b.len()))?
        .copy_from_slice(b);
    Ok(out)
}

/// An INET6 address as MariaDB prints it (like `inet_ntop`: `::1.2.3.4` for the
/// IPv4-compatible form, `::ffff:1.2.3.4` for the mapped one).
fn inet6(b: [u8; 16]) -> String {
    let ip = std::net::Ipv6Addr::from(b);
    let s = ip.segments();
    if s[..6] == [0; 6] && s[6] != 0 {
        format!("::{}.{}.{}.{}", b[12], b[13], b[14], b[15])
    } else {
        ip.to_string()
    }
}

/// The labels of a SET value's bit mask, as MySQL prints them.
fn set_labels(labels: &[String], mask: u64) -> String {
    labels
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn text_of(kind: &Kind, v: &Value) -> std::result::Result<Option<String>, ValueError> {
    Ok(Some(match (kind, v) {
        (Kind::Uuid, Value::Bytes(b)) => {
            let h: String = fixed::<16>(b)?.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        (Kind::Inet4, Value::Bytes(b)) => std::net::Ipv4Addr::from(fixed::<4>(b)?).to_string(),
        (Kind::Inet6, Value::Bytes(b)) => inet6(fixed::<16>(b)?),
        (Kind::Text { latin1: true }, Value::Bytes(b)) => b.iter().map(|&c| c as char).collect(),
        (Kind::Enum(labels), Value::Int(_) | Value::UInt(_)) => {
            let i = int_of(v).unwrap_or(0);
            if i == 0 {
                // The "invalid value" index MySQL stores for a bad enum in non-strict mode.
                String::new()
            } else {
                labels
                    .get(i as usize - 1)
                    .cloned()
                    .ok_or_else(|| format!("enum index {i} has no label"))?
            }
        }
        (Kind::Set(labels), Value::Int(_) | Value::UInt(_)) => {
            set_labels(labels, int_of(v).unwrap_or(0) as u64)
        }
        (Kind::Time(fsp), Value::Time(neg, d, h, m, s, us)) => {
            // As MySQL prints it: the column's fractional digits.
            let hours = *d as u64 * 24 + *h as u64;
            let sign = if *neg { "-" } else { "" };
            let mut out = format!("{sign}{hours:02}:{m:02}:{s:02}");
            if *fsp > 0 {
                let frac = format!("{us:06}");
                out.push('.');
                out.push_str(&frac[..(*fsp as usize).min(6)]);
            }
            out
        }
        (Kind::Set(labels), Value::Bytes(mask)) => {
            // The binlog's set: a little-endian bit mask.
            let mask = mask
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64);
            set_labels(labels, mask)
        }
        (_, Value::Bytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| "value is not UTF-8 (set the column's character set to utf8mb4)")?,
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::UInt(u)) => u.to_string(),
        (_, Value::Double(f)) => f.to_string(),
        (_, Value::Float(f)) => f.to_string(),
        (_, other) => return Err(format!("unexpected value {other:?}")),
    }))
}

/// Microseconds since the epoch of a DATETIME/TIMESTAMP value; `None` for a zero date.
pub(crate) fn micros(v: &Value) -> std::result::Result<Option<i64>, ValueError> {
    match v {
        Value::Date(_, 0, ..) | Value::Date(_, _, 0, ..) => Ok(None),
        Value::Date(y, mo, d, h, mi, s, us) => Ok(Some(
            days(*y as i32, *mo as u32, *d as u32) as i64 * 86_400_000_000
                + (*h as i64 * 3600 + *mi as i64 * 60 + *s as i64) * 1_000_000
                + *us as i64,
        )),
        // TIMESTAMP in a binlog row image: seconds since the epoch (UTC).
        Value::Int(secs) => Ok(Some(secs * 1_000_000)),
        Value::UInt(secs) => Ok(Some(*secs as i64 * 1_000_000)),
        Value::Bytes(b) => {
            let s = std::str::from_utf8(b).map_err(|e| e.to_string())?;
            if s.contains('-') || s.contains(':') {
                parse_datetime(s)
            } else {
                // TIMESTAMP in a binlog row image: `seconds[.micros]` since the epoch.
                let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
                let secs: i64 = secs.parse().map_err(|_| format!("bad timestamp {s:?}"))?;
                Ok(Some(secs * 1_000_000 + frac_micros(frac)))
            }
        }
        other => Err(format!("unexpected date/time value {other:?}")),
    }
}

/// Microseconds of a fraction of a second written after the point (`5` → 500000).
fn frac_micros(frac: &str) -> i64 {
    (0..6).fold(0, |us, i| {
        us * 10 + frac.as_bytes().get(i).map_or(0, |c| (c - b'0') as i64)
    })
}

/// `YYYY-MM-DD[ HH:MM:SS[.ffffff]]` (text protocol); zero dates are `None`.
fn parse_datetime(s: &str) -> std::result::Result<Option<i64>, ValueError> {
    let bad = || format!("cannot read {s:?} as a date/time");
    let (date, time) = s.split_once(' ').unwrap_or((s, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<u32>());
    let (y, m, day) = match (d.next(), d.next(), d.next()) {
        (Some(Ok(y)), Some(Ok(m)), Some(Ok(day))) => (y, m, day),
        _ => return Err(bad()),
    };
    if m == 0 || day == 0 {
        return Ok(None);
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, sec) = match (t.next(), t.next(), t.next()) {
        (Some(Ok(h)), Some(Ok(mi)), Some(Ok(sec))) => (h, mi, sec),
        _ => return Err(bad()),
    };
    Ok(Some(
        days(y as i32, m, day) as i64 * 86_400_000_000
            + (h * 3600 + mi * 60 + sec) * 1_000_000
            + frac_micros(frac),
    ))
}

/// Rows of one table being gathered into a batch.
pub struct RowsBuilder {
    schema: SchemaRef,
    kinds: Vec<Kind>,
    columns: Vec<ColumnBuilder>,
    rows: usize,
    /// Zero dates read as null (MySQL's `0000-00-00`), for the warning counter.
    pub zero_dates: u64,
}

impl RowsBuilder {
    /// Builders for `kinds`, producing batches of `schema`.
    pub fn new(schema: SchemaRef, kinds: &[Kind], capacity: usize) -> Self {
        RowsBuilder {
            schema,
            columns: kinds
                .iter()
                .map(|k| ColumnBuilder::new(k, capacity))
                .collect(),
            kinds: kinds.to_vec(),
            rows: 0,
            zero_dates: 0,
        }
    }

    /// Append `v` to column `i`.
    pub fn push(&mut self, i: usize, v: &Value) -> std::result::Result<(), ValueError> {
        let kind = &self.kinds[i];
        let b = &mut self.columns[i];
        if matches!(v, Value::NULL) {
            b.append_null();
            return Ok(());
        }
        match b {
            ColumnBuilder::Int32(b) => {
                let mut n = int_of(v).ok_or_else(|| format!("unexpected value {v:?}"))?;
                if *kind == Kind::Int24 && n >= 1 << 23 {
                    n -= 1 << 24;
                }
                b.append_value(i32::try_from(n).map_err(|_| format!("{n} is out of range"))?);
            }
            ColumnBuilder::Int64(b) => {
                let n = match (kind, v) {
                    (Kind::Bit, Value::Bytes(bytes)) => {
                        bytes.iter().fold(0i128, |acc, &x| (acc << 8) | x as i128)
                    }
                    _ => int_of(v).ok_or_else(|| format!("unexpected value {v:?}"))?,
                };
                b.append_value(i64::try_from(n).map_err(|_| format!("{n} is out of range"))?);
            }
            ColumnBuilder::Decimal(b, scale) => {
                let n = match v {
                    Value::Bytes(bytes) => std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| decimal(s, *scale)),
                    Value::Int(i) => Some(*i as i128),
                    Value::UInt(u) => Some(*u as i128),
                    _ => None,
                }
                .ok_or_else(|| format!("cannot read {v:?} as a decimal"))?;
                b.append_value(n);
            }
            ColumnBuilder::Float32(b) => b.append_value(
                float_of(v).ok_or_else(|| format!("cannot read {v:?} as a float"))? as f32,
            ),
            ColumnBuilder::Float64(b) => {
                b.append_value(float_of(v).ok_or_else(|| format!("cannot read {v:?} as a double"))?)
            }
            ColumnBuilder::Binary(b) => match (kind, v) {
                (Kind::Geometry, Value::Bytes(bytes)) if bytes.len() >= 4 => {
                    b.append_value(&bytes[4..])
                }
                (_, Value::Bytes(bytes)) => b.append_value(bytes),
                _ => return Err(format!("unexpected value {v:?}")),
            },
            ColumnBuilder::Date(b) => match micros(v)? {
                Some(us) => b.append_value(us.div_euclid(86_400_000_000) as i32),
                None => {
                    self.zero_dates += 1;
                    b.append_null();
                }
            },
            ColumnBuilder::Timestamp(b) => match micros(v)? {
                Some(us) => b.append_value(us),
                None => {
                    self.zero_dates += 1;
                    b.append_null();
                }
            },
            ColumnBuilder::Utf8(b) => match text_of(kind, v)? {
                Some(s) => b.append_value(s),
                None => b.append_null(),
            },
        }
        Ok(())
    }

    /// Append a null to column `i`.
    pub fn push_null(&mut self, i: usize) {
        self.columns[i].append_null();
    }

    /// Count a finished row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows as a batch; the builders start over.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let arrays = self.columns.iter_mut().map(|b| b.finish()).collect();
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::internal(format!("building a batch: {e}")))
    }
}

/// The Arrow schema of a table: key columns are not nullable.
/// A JSON document from MySQL's binary form, printed as MySQL prints it (what a
/// snapshot's `SELECT` returns): `", "` and `": "` between items, object keys shortest
/// first (the binary form's order), decimals as numbers, dates and times as strings,
/// other SQL-typed ("opaque") values as `"base64:type<n>:<data>"`.
pub fn json_text(dom: &mysql_common::binlog::jsonb::JsonDom) -> String {
    let mut out = String::new();
    write_json(dom, &mut out);
    out
}

fn write_json(dom: &mysql_common::binlog::jsonb::JsonDom, out: &mut String) {
    use mysql_common::binlog::jsonb::{JsonContainer, JsonDom, JsonNumber, JsonScalar};
    use std::fmt::Write;
    let quoted = |s: &str, out: &mut String| {
        out.push_str(&serde_json::Value::String(s.to_string()).to_string());
    };
    match dom {
        JsonDom::Container(JsonContainer::Array(items)) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        JsonDom::Container(JsonContainer::Object(fields)) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort_by(|a, b| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                quoted(k, out);
                out.push_str(": ");
                write_json(&fields[k], out);
            }
            out.push('}');
        }
        JsonDom::Scalar(JsonScalar::Boolean(b)) => out.push_str(if *b { "true" } else { "false" }),
        JsonDom::Scalar(JsonScalar::Null) => out.push_str("null"),
        JsonDom::Scalar(JsonScalar::String(s)) => quoted(s, out),
        JsonDom::Scalar(JsonScalar::DateTime(t)) => quoted(&format!("{t:.6}"), out),
        JsonDom::Scalar(JsonScalar::Opaque(o)) => quoted(&o.to_string(), out),
        JsonDom::Scalar(JsonScalar::Number(n)) => {
            let _ = match n {
                JsonNumber::Int(i) => write!(out, "{i}"),
                JsonNumber::Uint(u) => write!(out, "{u}"),
                JsonNumber::Double(d) => write!(out, "{d:?}"),
                JsonNumber::Decimal(d) => write!(out, "{d}"),
            };
        }
    }
}

pub fn arrow_schema(columns: &[(String, Kind)], key: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, kind)| Field::new(name, kind.data_type(), !key.contains(name)))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_inet_print_as_mariadb_does() {
        let text = |k: &Kind, b: &[u8]| text_of(k, &Value::Bytes(b.to_vec())).unwrap().unwrap();
        let uuid = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4e, 0xf0, 0x92, 0x34, 0x56, 0x78, 0x9a, 0xbc,
            0xde, 0xf0,
        ];
        assert_eq!(
            text(&Kind::Uuid, &uuid),
            "12345678-9abc-4ef0-9234-56789abcdef0"
        );
        // Trailing zero bytes are not in the binlog.
        assert_eq!(text(&Kind::Inet4, &[]), "0.0.0.0");
        assert_eq!(text(&Kind::Inet4, &[10, 0, 0]), "10.0.0.0");
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6[15] = 1;
        assert_eq!(text(&Kind::Inet6, &v6), "2001:db8::1");
        assert_eq!(text(&Kind::Inet6, &[]), "::");
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4];
        assert_eq!(text(&Kind::Inet6, &mapped), "::ffff:1.2.3.4");
        let compat = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(text(&Kind::Inet6, &compat), "::1.2.3.4");
        assert!(text_of(&Kind::Inet4, &Value::Bytes(vec![1; 5])).is_err());
    }

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(days(1970, 1, 1), 0);
        assert_eq!(days(2024, 2, 29), 19_782);
        assert_eq!(days(1969, 12, 31), -1);
        assert_eq!(days(1, 1, 1), -719_162);
        assert_eq!(parse_datetime("0000-00-00 00:00:00").unwrap(), None);
        assert_eq!(
            parse_datetime("1970-01-02 00:00:01.5").unwrap(),
            Some(86_401_500_000)
        );
        // The binlog's TIMESTAMP: seconds since the epoch.
        assert_eq!(
            micros(&Value::Bytes(b"86401.500000".to_vec())).unwrap(),
            Some(86_401_500_000)
        );
    }

    #[test]
    fn enum_and_set_labels_are_parsed() {
        assert_eq!(
            labels("enum('a','it''s','c,d')").unwrap(),
            ["a", "it's", "c,d"]
        );
        let set = Kind::Set(labels("set('x','y','z')").unwrap().into());
        assert_eq!(text_of(&set, &Value::UInt(5)).unwrap().unwrap(), "x,z");
        let e = Kind::Enum(labels("enum('sad','ok')").unwrap().into());
        assert_eq!(text_of(&e, &Value::Int(2)).unwrap().unwrap(), "ok");
        assert_eq!(
            text_of(&e, &Value::Bytes(b"ok".to_vec())).unwrap().unwrap(),
            "ok"
        );
    }

    #[test]
    fn decimals_scale_and_unsigned_bigints_fit() {
        assert_eq!(decimal("-12.3", 2), Some(-1230));
        assert_eq!(
            decimal("18446744073709551615", 0),
            Some(18_446_744_073_709_551_615)
        );
        let mut rows = RowsBuilder::new(
            arrow_schema(&[("u".into(), Kind::UInt64)], &[]),
            &[Kind::UInt64],
            4,
        );
        rows.push(0, &Value::UInt(u64::MAX)).unwrap();
        rows.push(0, &Value::Bytes(b"7".to_vec())).unwrap();
        rows.end_row();
        rows.end_row();
        assert_eq!(rows.finish().unwrap().num_rows(), 2);
    }

    #[test]
    fn dates_and_decimals_round_trip() {
        for us in [0, -1, 951_782_400_123_456, -62_135_596_800_000_000] {
            assert_eq!(micros(&date_value(us)).unwrap(), Some(us), "{us}");
        }
        assert_eq!(format_decimal(-150, 2), "-1.50");
        assert_eq!(format_decimal(5, 3), "0.005");
        assert_eq!(decimal(&format_decimal(-123_456, 4), 4), Some(-123_456));
    }

    #[test]
    fn times_keep_sign_and_hours_past_a_day() {
        let t = Value::Time(true, 1, 2, 3, 4, 500);
        assert_eq!(
            text_of(&Kind::Time(6), &t).unwrap().unwrap(),
            "-26:03:04.000500"
        );
        assert_eq!(text_of(&Kind::Time(0), &t).unwrap().unwrap(), "-26:03:04");
    }
}
