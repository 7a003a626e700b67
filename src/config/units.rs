//! Values with units and environment references: `"10s"`, `"128MiB"`, `"${DB_PASSWORD}"`.
//! Each deserialises from a TOML string, so a bad value is reported at its own position.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A value with the bytes of the file it was written at, so that a check after parsing
/// can name its line and column. (`toml::Spanned`, wrapped so that `docs/config.md` can
/// describe it as the value it holds.)
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T>(toml::Spanned<T>);

impl<T> Spanned<T> {
    /// The value.
    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    /// Where it was written: a byte range of the file.
    pub fn span(&self) -> std::ops::Range<usize> {
        self.0.span()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        toml::Spanned::deserialize(d).map(Spanned)
    }
}

/// The schemas `config::docs` renders: each value type is described as what is written.
#[cfg(test)]
mod schema {
    use std::borrow::Cow;

    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

    impl<T: JsonSchema> JsonSchema for super::Spanned<T> {
        fn inline_schema() -> bool {
            T::inline_schema()
        }
        fn schema_name() -> Cow<'static, str> {
            T::schema_name()
        }
        fn schema_id() -> Cow<'static, str> {
            T::schema_id()
        }
        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            T::json_schema(generator)
        }
    }

    /// A string value described by `what`.
    macro_rules! text {
        ($($t:ty => $what:literal),* $(,)?) => {$(
            impl JsonSchema for $t {
                fn inline_schema() -> bool {
                    true
                }
                fn schema_name() -> Cow<'static, str> {
                    $what.into()
                }
                fn json_schema(_: &mut SchemaGenerator) -> Schema {
                    json_schema!({ "type": "string", "format": $what })
                }
            }
        )*};
    }

    text!(
        super::EnvString => "string, ${ENV} expanded",
        super::EnvUrl => "URL, ${ENV} expanded",
        super::HumanDuration => "duration",
        super::ByteSize => "size",
    );
}

/// A string in which `${NAME}` is replaced by the environment variable `NAME`.
/// The expanded value may hold secrets: it is never printed (see its `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl fmt::Debug for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvString(..)")
    }
}

/// Names of the environment variables configuration files took values from (every
/// `${NAME}` expanded so far, and the API token's variable): the secrets that commands
/// lakeshore runs must not see.
static REFERENCED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// See [`REFERENCED`].
pub fn secret_env_names() -> Vec<String> {
    let mut names: Vec<String> = REFERENCED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    names.push(super::daemon::TOKEN_ENV.to_string());
    names
}

/// Replace every `${NAME}` in `text`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_env_placed(text, lookup, |_, value| value)
}

/// [`expand_env`], with `place(at, value)` deciding how the value of the reference that
/// starts at byte `at` of `text` is written.
fn expand_env_placed(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    place: impl Fn(usize, String) -> String,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let at = text.len() - rest.len() + start;
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`; write ${NAME}".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        REFERENCED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        let value = lookup(name).ok_or_else(|| {
            format!("environment variable {name} is not set; export it before starting lakeshore")
        })?;
        out.push_str(&place(at, value));
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

/// A connection URL whose `${NAME}` references are replaced; a value placed in the
/// URL's user information (`user:${PASSWORD}@`) or as a `password=` query value is
/// percent-encoded (RFC 3986: everything but unreserved characters), so that a password
/// such as `p@ss:w/rd?#%` lands in the URL as one piece and the driver decodes it back.
/// In a libpq `key=value` string a `password=` value is quoted as libpq reads it. Values
/// elsewhere (host, path, other parameters) are placed as they are, and a string
/// that is nothing but one reference (`"${DATABASE_URL}"`) is a whole URL.
#[derive(Clone)]
pub struct EnvUrl(pub String);

impl fmt::Debug for EnvUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvUrl(..)")
    }
}

pub use lakeshore_api::url::percent_encode;

/// [`EnvUrl`]'s expansion of `text`.
pub fn expand_env_url(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if text.starts_with("${") && text.ends_with('}') && text.matches("${").count() == 1 {
        return expand_env(text, lookup);
    }
    let is_url = text.contains("://");
    // Where user information ends (the template's `@` after `scheme://`).
    let userinfo = text.find("://").and_then(|s| {
        let start = s + 3;
        text[start..].find('@').map(|at| start..start + at)
    });
    expand_env_placed(text, lookup, |at, value| {
        let after_password = text[..at].ends_with("password=");
        if userinfo.as_ref().is_some_and(|u| u.contains(&at)) || (is_url && after_password) {
            percent_encode(&value)
        } else if after_password {
            // A libpq `key=value` string: the value quoted as libpq reads it.
            format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
        } else {
            value
        }
    })
}

impl<'de> Deserialize<'de> for EnvUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env_url(&raw, |n| std::env::var(n).ok())
            .map(EnvUrl)
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
    fn values_placed_into_urls_are_percent_encoded() {
        let env = |n: &str| match n {
            "PW" => Some("Zq@9:w/r?d#x%2Fk p".to_string()),
            "URL" => Some("postgres://u:p@h/db".to_string()),
            _ => None,
        };
        assert_eq!(
            expand_env_url("postgres://app:${PW}@db:5432/shop", env).unwrap(),
            "postgres://app:Zq%409%3Aw%2Fr%3Fd%23x%252Fk%20p@db:5432/shop"
        );
        // A whole URL from one variable is taken as it is; paths and hosts too.
        assert_eq!(
            expand_env_url("${URL}", env).unwrap(),
            "postgres://u:p@h/db"
        );
        assert_eq!(
            expand_env_url("sqlite://${HOME}/lake.db", |_| Some("/root".into())).unwrap(),
            "sqlite:///root/lake.db"
        );
        assert_eq!(
            expand_env_url("host=db user=app password=${PW}", env).unwrap(),
            r"host=db user=app password='Zq@9:w/r?d#x%2Fk p'"
        );
        assert_eq!(
            expand_env_url("mysql://${PW}@db?ssl-ca=${PW}", env).unwrap(),
            "mysql://Zq%409%3Aw%2Fr%3Fd%23x%252Fk%20p@db?ssl-ca=Zq@9:w/r?d#x%2Fk p"
        );
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
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
