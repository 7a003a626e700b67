//! Connector URLs: settings that ride in a URL's query but are lakeshore's to apply (TLS
//! modes, CA paths) are taken off before the URL goes to the driver.

/// A connection string fit to print: the password of a URL's user information, a
/// `password=` query parameter, or a `password=` of a libpq `key=value` string (quoted
/// or not) becomes `***`. The user information ends at its last `@`, so a password
/// typed raw with an `@` in it is hidden too.
pub fn redact(conn: &str) -> String {
    let Some((scheme, rest)) = conn.split_once("://") else {
        return redact_key_values(conn);
    };
    // The authority ends at the first `/`, `?` or `#` after the user information.
    let at = rest
        .rfind('@')
        .filter(|&at| !rest[..at].contains('/') || rest[..at].find('/') > rest[..at].find(':'));
    let (auth, host_and_rest) = match at {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(auth) = auth {
        match auth.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@")),
            None => out.push_str(&format!("{auth}@")),
        }
    }
    match host_and_rest.split_once('?') {
        Some((base, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            out.push_str(&format!("{base}?{}", params.join("&")));
        }
        None => out.push_str(host_and_rest),
    }
    out
}

/// `redact` for libpq's `key=value key='quoted value'` form.
fn redact_key_values(conn: &str) -> String {
    let mut out = String::with_capacity(conn.len());
    let mut rest = conn;
    while let Some(i) = rest.find("password") {
        let before_ok = i == 0 || rest[..i].ends_with(char::is_whitespace);
        let after = rest[i + "password".len()..].trim_start();
        let Some(value) = after.strip_prefix('=').filter(|_| before_ok) else {
            out.push_str(&rest[..i + "password".len()]);
            rest = &rest[i + "password".len()..];
            continue;
        };
        out.push_str(&rest[..i]);
        out.push_str("password=***");
        let value = value.trim_start();
        rest = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote that is not escaped.
            let mut end = quoted.len();
            let mut escaped = false;
            for (j, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = j + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            &quoted[end.min(quoted.len())..]
        } else {
            let end = value.find(char::is_whitespace).unwrap_or(value.len());
            &value[end..]
        };
    }
    out.push_str(rest);
    out
}

/// Split `url` into the URL without the query parameters `take` selects, and those
/// parameters (decoded, in order). Other parameters stay as they were.
pub fn take_query(url: &str, take: impl Fn(&str) -> bool) -> (String, Vec<(String, String)>) {
    // A libpq `key=value` string has no query (a `?` in it is part of a value).
    let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) else {
        return (url.to_string(), Vec::new());
    };
    let mut kept = form_urlencoded::Serializer::new(String::new());
    let mut any_kept = false;
    let mut taken = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if take(&key) {
            taken.push((key.into_owned(), value.into_owned()));
        } else {
            kept.append_pair(&key, &value);
            any_kept = true;
        }
    }
    let url = if any_kept {
        format!("{base}?{}", kept.finish())
    } else {
        base.to_string()
    };
    (url, taken)
}

/// `value` with every byte outside RFC 3986's unreserved set percent-encoded.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_in_every_form() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(redact("postgres://db/shop"), "postgres://db/shop");
        assert_eq!(redact("mysql://root@h:3306"), "mysql://root@h:3306");
        assert_eq!(
            redact("postgres://app:Zq%409%3Aw@db/shop?sslmode=require&password=x%26y"),
            "postgres://app:***@db/shop?sslmode=require&password=***"
        );
        // Typed raw, with an `@` and a `/` in the password.
        assert_eq!(
            redact("postgres://app:p@ss/w@db/shop"),
            "postgres://app:***@db/shop"
        );
        assert_eq!(
            redact(r"host=db user=app password='p w\'q' dbname=shop"),
            "host=db user=app password=*** dbname=shop"
        );
        assert_eq!(
            redact("host=db password=plain dbname=x"),
            "host=db password=*** dbname=x"
        );
        assert_eq!(redact("sqlite:///tmp/c.db"), "sqlite:///tmp/c.db");
    }

    #[test]
    fn taken_parameters_leave_the_rest() {
        let (url, taken) = take_query("mysql://u:p@h:1/db?a=1&ssl-ca=%2Ftmp%2Fca.pem&b=2", |k| {
            k.starts_with("ssl")
        });
        assert_eq!(url, "mysql://u:p@h:1/db?a=1&b=2");
        assert_eq!(
            taken,
            vec![("ssl-ca".to_string(), "/tmp/ca.pem".to_string())]
        );
        let (url, taken) = take_query("mysql://h/db?ssl-mode=required", |k| k == "ssl-mode");
        assert_eq!((url.as_str(), taken.len()), ("mysql://h/db", 1));
        assert_eq!(take_query("mysql://h", |_| true).0, "mysql://h");
    }
}
