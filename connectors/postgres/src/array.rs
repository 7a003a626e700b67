//! PostgreSQL arrays as Arrow lists: the elements of an array's text form (`{1,NULL,"a b"}`),
//! which both the snapshot (read through the output function) and pgoutput deliver.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::NullBufferBuilder;
use arrow_array::{ArrayRef, ListArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, FieldRef};

use crate::types::{ColumnBuilder, Kind};

/// The element kinds an array keeps as a list; arrays of other types stay text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Bool,
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
}

impl Elem {
    /// The element kind of an array of `kind`, if its values can be a list's.
    pub fn of(kind: Kind) -> Option<Elem> {
        Some(match kind {
            Kind::Bool => Elem::Bool,
            Kind::Int16 | Kind::Int32 => Elem::Int32,
            Kind::Int64 => Elem::Int64,
            Kind::Float32 => Elem::Float32,
            Kind::Float64 => Elem::Float64,
            Kind::Decimal(p, s) => Elem::Decimal(p, s),
            Kind::Text => Elem::Text,
            Kind::Bytea => Elem::Bytea,
            Kind::Date => Elem::Date,
            Kind::Time => Elem::Time,
            Kind::Timestamp => Elem::Timestamp,
            Kind::Timestamptz => Elem::Timestamptz,
            Kind::Geometry(_) | Kind::Array(_) => return None,
        })
    }

    /// The kind of one element.
    pub fn kind(self) -> Kind {
        match self {
            Elem::Bool => Kind::Bool,
            Elem::Int32 => Kind::Int32,
            Elem::Int64 => Kind::Int64,
            Elem::Float32 => Kind::Float32,
            Elem::Float64 => Kind::Float64,
            Elem::Decimal(p, s) => Kind::Decimal(p, s),
            Elem::Text => Kind::Text,
            Elem::Bytea => Kind::Bytea,
            Elem::Date => Kind::Date,
            Elem::Time => Kind::Time,
            Elem::Timestamp => Kind::Timestamp,
            Elem::Timestamptz => Kind::Timestamptz,
        }
    }

    /// The Arrow list type of an array of this element (elements may be null).
    pub fn list_type(self) -> DataType {
        DataType::List(element_field(self))
    }
}

fn element_field(elem: Elem) -> FieldRef {
    Arc::new(Field::new("element", elem.kind().data_type(), true))
}

/// Builds a list column from arrays in text form.
pub struct ListBuilder {
    values: Box<ColumnBuilder>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    field: FieldRef,
}

impl ListBuilder {
    pub fn new(elem: Elem, capacity: usize) -> Self {
        let mut offsets = Vec::with_capacity(capacity + 1);
        offsets.push(0);
        ListBuilder {
            values: Box::new(ColumnBuilder::new(elem.kind(), capacity * 4)),
            offsets,
            nulls: NullBufferBuilder::new(capacity),
            field: element_field(elem),
        }
    }

    pub fn append_null(&mut self) {
        self.offsets.push(*self.offsets.last().unwrap_or(&0));
        self.nulls.append_null();
    }

    /// Append the array `text`; `Ok(true)` when an element had no Iceberg form and was
    /// written as null (see [`ColumnBuilder::append_text`]). After an error the row's
    /// list is null, so the builder stays consistent.
    pub fn append_text(&mut self, text: &str) -> Result<bool, String> {
        let mut appended: usize = 0;
        let mut append = || -> Result<bool, String> {
            let mut nulled = false;
            for (i, e) in elements(text)?.iter().enumerate() {
                match e {
                    None => self.values.append_null(),
                    Some(v) => {
                        nulled |= self
                            .values
                            .append_text(v)
                            .map_err(|e| format!("array element {}: {e}", i + 1))?;
                    }
                }
                appended += 1;
            }
            Ok(nulled)
        };
        let result = append();
        let last = *self.offsets.last().unwrap_or(&0);
        let end = i32::try_from(appended)
            .ok()
            .and_then(|n| last.checked_add(n))
            .ok_or("the arrays of one batch hold more than 2^31 elements")?;
        self.offsets.push(end);
        match result {
            Ok(_) => self.nulls.append_non_null(),
            Err(_) => self.nulls.append_null(),
        }
        result
    }

    pub fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let list = ListArray::new(
            self.field.clone(),
            OffsetBuffer::new(offsets.into()),
            self.values.finish(),
            self.nulls.finish(),
        );
        Arc::new(list)
    }
}

/// The elements of a one-dimensional array's text form, unquoted and unescaped; `None`
/// is NULL. A lower bound other than 1 (`[0:1]={5,6}`) is dropped: a list starts at its
/// first element. A multi-dimensional array is an error (a list holds one dimension).
pub fn elements(text: &str) -> Result<Vec<Option<Cow<'_, str>>>, String> {
    let body = match text.strip_prefix('[') {
        // Dimension decoration: `[lo:hi]` per dimension, then `=`.
        Some(_) => {
            let (dims, rest) = text
                .split_once('=')
                .ok_or_else(|| format!("cannot read array {text:?}"))?;
            if dims.matches('[').count() > 1 {
                return Err(multi_dimensional());
            }
            rest
        }
        None => text,
    };
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| format!("cannot read array {text:?}"))?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let bytes = inner.as_bytes();
    let mut i = 0;
    loop {
        match bytes.get(i) {
            Some(b'{') => return Err(multi_dimensional()),
            Some(b'"') => {
                let (value, end) = quoted(inner, i + 1)?;
                out.push(Some(value));
                i = end;
            }
            _ => {
                let end = inner[i..].find(',').map_or(inner.len(), |n| i + n);
                let raw = inner[i..end].trim();
                if raw.eq_ignore_ascii_case("NULL") {
                    out.push(None);
                } else if raw.contains('\\') {
                    out.push(Some(Cow::Owned(unescape(raw))));
                } else {
                    out.push(Some(Cow::Borrowed(raw)));
                }
                i = end;
            }
        }
        match bytes.get(i) {
            None => return Ok(out),
            Some(b',') => i += 1,
            Some(_) => return Err(format!("cannot read array {text:?}")),
        }
    }
}

fn multi_dimensional() -> String {
    "a multi-dimensional array has no list form; exclude the column with a [[transform]] \
     or keep arrays as text with arrays = \"text\" in [source]"
        .to_string()
}

/// The quoted element starting after the quote at `start`: its value and the index after
/// the closing quote.
fn quoted(inner: &str, start: usize) -> Result<(Cow<'_, str>, usize), String> {
    let bytes = inner.as_bytes();
    let mut i = start;
    let mut escaped = false;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => {
                let raw = &inner[start..i];
                let value = if escaped {
                    Cow::Owned(unescape(raw))
                } else {
                    Cow::Borrowed(raw)
                };
                return Ok((value, i + 1));
            }
            _ => i += 1,
        }
    }
    Err("an array element's quotes are not closed".to_string())
}

/// `raw` with each backslash escape replaced by the character it escapes.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;

    fn el(text: &str) -> Vec<Option<String>> {
        elements(text)
            .unwrap()
            .into_iter()
            .map(|e| e.map(Cow::into_owned))
            .collect()
    }

    #[test]
    fn elements_of_text_arrays() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(el("{}"), Vec::<Option<String>>::new());
        assert_eq!(el("{1,2,3}"), [s("1"), s("2"), s("3")]);
        assert_eq!(el("{NULL,null,\"NULL\"}"), [None, None, s("NULL")]);
        assert_eq!(
            el(r#"{"a b","c,d","e\"f","g\\h",""}"#),
            [s("a b"), s("c,d"), s("e\"f"), s("g\\h"), s("")]
        );
        assert_eq!(
            el(r#"{"2024-01-02 03:04:05+00","\\x0102"}"#),
            [s("2024-01-02 03:04:05+00"), s("\\x0102")]
        );
        assert_eq!(el("[0:1]={5,6}"), [s("5"), s("6")]);
        assert_eq!(el("{x}"), [s("x")]);
        for bad in ["{{1,2},{3,4}}", "[1:2][1:2]={{1,2},{3,4}}"] {
            let e = elements(bad).unwrap_err();
            assert!(e.contains("multi-dimensional"), "{e}");
        }
        for bad in ["1,2", "{\"a}", "{\"a\"b}"] {
            assert!(elements(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_lists_with_null_arrays_and_elements() {
        let mut b = ListBuilder::new(Elem::Int32, 4);
        b.append_text("{1,NULL,3}").unwrap();
        b.append_null();
        b.append_text("{}").unwrap();
        let e = b.append_text("{1,x}").unwrap_err();
        assert!(e.contains("array element 2"), "{e}");
        let list = b.finish();
        let list = list.as_list::<i32>();
        assert_eq!(list.len(), 4);
        assert!(list.is_null(1) && list.value(2).is_empty() && list.is_null(3));
        let first = list.value(0);
        let first = first.as_primitive::<Int32Type>();
        assert_eq!(first.iter().collect::<Vec<_>>(), [Some(1), None, Some(3)]);
    }
}
