//! Masks: how a column's values are hidden (`hash`, `redact`, `truncate(N)`).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, StringArray, new_null_array};
use arrow_schema::{DataType, Field};
use lakeshore_api::files::{FIELD_DOC, HASHED_DOC};
use sha2::{Digest, Sha256};

use crate::Mask;

/// The field of a column after `mask`, or why the mask cannot apply.
pub(crate) fn masked_field(field: &Field, mask: &Mask) -> Result<Field, String> {
    let string_like = matches!(
        field.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    let binary_like = matches!(
        field.data_type(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    );
    Ok(match mask {
        Mask::Hash { .. } => field
            .clone()
            .with_data_type(DataType::Utf8)
            .with_metadata([(FIELD_DOC.to_string(), HASHED_DOC.to_string())].into()),
        Mask::Redact(None) => field.clone().with_nullable(true),
        Mask::Redact(Some(_)) => field.clone().with_data_type(DataType::Utf8),
        Mask::Truncate(_) if string_like => field.clone().with_data_type(DataType::Utf8),
        Mask::Truncate(_) if binary_like => field.clone().with_data_type(DataType::Binary),
        Mask::Truncate(_) => {
            return Err(format!(
                "truncate applies to strings and binary values, not {}; use \"hash\" or \
                     \"redact\", or compute a shorter value",
                field.data_type()
            ));
        }
    })
}

/// `values` masked.
pub(crate) fn mask(values: &ArrayRef, mask: &Mask) -> Result<ArrayRef, String> {
    let n = values.len();
    Ok(match mask {
        Mask::Redact(None) => new_null_array(values.data_type(), n),
        Mask::Redact(Some(c)) => Arc::new(
            (0..n)
                .map(|i| values.is_valid(i).then_some(c.as_str()))
                .collect::<StringArray>(),
        ),
        Mask::Hash { salt } => Arc::new(hashed(values, salt)?),
        Mask::Truncate(len) => match values.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                let mut out = arrow_array::builder::BinaryBuilder::new();
                each_bytes(values, |v| {
                    out.append_option(v.map(|b| &b[..b.len().min(*len)]))
                })?;
                Arc::new(out.finish())
            }
            _ => {
                let text = arrow_cast::cast(values, &DataType::Utf8).map_err(|e| e.to_string())?;
                let text = text.as_string::<i32>();
                Arc::new(
                    text.iter()
                        .map(|v| v.map(|s| s.char_indices().nth(*len).map_or(s, |(i, _)| &s[..i])))
                        .collect::<StringArray>(),
                )
            }
        },
    })
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        out[b] = [DIGITS[b >> 4], DIGITS[b & 15]];
        b += 1;
    }
    out
};

/// SHA-256 of `salt` and each value, as 64 lowercase hex digits; nulls stay null. The
/// digits go straight into the array's value buffer (one UTF-8 check for the whole
/// buffer, not one per value).
fn hashed(values: &ArrayRef, salt: &str) -> Result<StringArray, String> {
    let n = values.len();
    let mut digits: Vec<u8> = Vec::with_capacity(n * 64);
    let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
    offsets.push(0);
    let mut valid = Vec::with_capacity(n);
    let salted = Sha256::new().chain_update(salt.as_bytes());
    each_bytes(values, |v| {
        if let Some(bytes) = v {
            let digest = salted.clone().chain_update(bytes).finalize();
            digits.extend(digest.iter().flat_map(|b| HEX_PAIRS[*b as usize]));
        }
        valid.push(v.is_some());
        offsets.push(i32::try_from(digits.len()).unwrap_or(i32::MAX));
    })?;
    let nulls = valid.contains(&false).then(|| valid.into());
    StringArray::try_new(
        arrow_buffer::OffsetBuffer::new(offsets.into()),
        digits.into(),
        nulls,
    )
    .map_err(|e| format!("hashing a column: {e}"))
}

/// Each value of `values` as bytes: binary values as they are, everything else as its
/// text (UTF-8).
fn each_bytes(values: &ArrayRef, mut f: impl FnMut(Option<&[u8]>)) -> Result<(), String> {
    match values.data_type() {
        DataType::Binary => values.as_binary::<i32>().iter().for_each(f),
        DataType::LargeBinary => values.as_binary::<i64>().iter().for_each(f),
        DataType::BinaryView => values.as_binary_view().iter().for_each(f),
        DataType::Utf8 => values
            .as_string::<i32>()
            .iter()
            .for_each(|v| f(v.map(str::as_bytes))),
        _ => {
            let text = arrow_cast::cast(values, &DataType::Utf8).map_err(|e| e.to_string())?;
            text.as_string::<i32>()
                .iter()
                .for_each(|v| f(v.map(str::as_bytes)));
        }
    }
    Ok(())
}
