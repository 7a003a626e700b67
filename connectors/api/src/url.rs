//! Connector URLs: settings that ride in a URL's query but are lakeshore's to apply (TLS
//! modes, CA paths) are taken off before the URL goes to the driver.

/// Split `url` into the URL without the query parameters `take` selects, and those
/// parameters (decoded, in order). Other parameters stay as they were.
pub fn take_query(url: &str, take: impl Fn(&str) -> bool) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
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

#[cfg(test)]
mod tests {
    use super::*;

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
