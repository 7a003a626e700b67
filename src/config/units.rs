//! Values with units and environment references: `"10s"`, `"128MiB"`, `"${DB_PASSWORD}"`.
//! Each deserialises from a TOML string, so a bad value is reported at its own position.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A string in which `${NAME}` is replaced by the environment variable `NAME`.
/// The expanded value may hold secrets: it is never printed (see its `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvString(..)")
    }
}

/// Replace every `${NAME}` in `text`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`; write ${NAME}".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        let value = lookup(name).ok_or_else(|| {
            format!("environment variable {name} is not set; export it before starting lakeshore")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw, |n| std::env::var(n).ok())
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration written with a unit: `"500ms"`, `"10s"`, `"5m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A string or a number, for values that need a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum WithUnit {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = match WithUnit::deserialize(d)? {
            WithUnit::Text(t) => t,
            WithUnit::Number(n) => {
                return Err(serde::de::Error::custom(format!(
                    "a duration needs a unit: write \"{n}s\" or \"{n}ms\""
                )));
            }
        };
        humantime::parse_duration(&raw)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "cannot read duration `{raw}` ({e}); write a number and a unit such as \"500ms\", \"10s\" or \"5m\""
                ))
            })
    }
}

/// A size written with a unit: `"512KiB"`, `"128MiB"`, `"1GB"`; a bare number is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// Parse a size with an optional unit (B, KB, KiB, MB, MiB, GB, GiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("cannot read size `{text}`; write a whole number and a unit such as \"128MiB\"")
    })?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KB, KiB, MB, MiB, GB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match WithUnit::deserialize(d)? {
            WithUnit::Number(n) => Ok(ByteSize(n)),
            WithUnit::Text(t) => parse_size(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_environment_references() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_string());
        assert_eq!(
            expand_env("pg://u:${PW}@h", env).unwrap(),
            "pg://u:s3cret@h"
        );
        assert_eq!(expand_env("plain", env).unwrap(), "plain");
        assert!(
            expand_env("${NOPE}", env)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(expand_env("${PW", env).unwrap_err().contains("closing"));
        assert!(
            format!("{:?}", EnvString("s3cret".into()))
                .find("s3cret")
                .is_none()
        );
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("MiB").is_err());
    }
}
