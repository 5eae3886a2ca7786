//! Rules shared by both macros: event names, subjects, durations, CamelCase -> dotted.

/// Checks an event name: lowercase dot-separated tokens of `[a-z0-9_-]`, no wildcards.
pub(crate) fn check_event_name(name: &str) -> Result<(), String> {
    check_tokens(name, false).map_err(|why| {
        format!("invalid event name `{name}`: {why}; expected lowercase dot-separated tokens of `[a-z0-9_-]`, e.g. \"user.created\"")
    })
}

/// Checks a subject pattern: like an event name, plus `*` as a whole token and `>` as the last.
pub(crate) fn check_subject(subject: &str) -> Result<(), String> {
    check_tokens(subject, true).map_err(|why| {
        format!("invalid subject `{subject}`: {why}; expected lowercase dot-separated tokens of `[a-z0-9_-]`, `*` for one token or `>` for the rest, e.g. \"payment.*\"")
    })
}

/// Whether a (valid) subject contains a wildcard.
pub(crate) fn is_wildcard(subject: &str) -> bool {
    subject.split('.').any(|t| t == "*" || t == ">")
}

fn check_tokens(s: &str, wildcards: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err("it has an empty token".into());
        }
        if *token == "*" || *token == ">" {
            if !wildcards {
                return Err(format!(
                    "the wildcard `{token}` is not allowed in an event name"
                ));
            }
            if *token == ">" && i + 1 != tokens.len() {
                return Err("`>` may only be the last token".into());
            }
            continue;
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            let what = if c.is_uppercase() {
                "an uppercase letter".to_string()
            } else if c.is_whitespace() {
                "white space".to_string()
            } else {
                format!("the character `{c}`")
            };
            return Err(format!("it contains {what}"));
        }
    }
    Ok(())
}

/// `OrderPlaced` -> `order.placed`, `HTTPRequestFailed` -> `http.request.failed`.
pub(crate) fn dotted_name(ident: &str) -> String {
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !out.ends_with('.') && !out.is_empty() {
                out.push('.');
            }
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
            if boundary && !out.ends_with('.') {
                out.push('.');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`, `"1m30s"` into nanoseconds.
pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    let hint = "expected a duration such as \"250ms\", \"10s\", \"2m\" or \"1h30m\" (units: ns, us, ms, s, m, h)";
    let bad = |why: &str| format!("invalid duration `{s}`: {why}; {hint}");
    if s.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            let why = if rest.starts_with('-') {
                "durations cannot be negative".to_string()
            } else {
                format!("expected a number at `{rest}`")
            };
            return Err(bad(&why));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let factor: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("a unit is missing")),
            other => return Err(bad(&format!("unknown unit `{other}`"))),
        };
        total = total
            .checked_add(number * factor)
            .ok_or_else(|| bad("it is too large"))?;
        rest = &rest[unit_len..];
    }
    u64::try_from(total).map_err(|_| bad("it is too large"))
}

/// The candidate closest to `input` by edit distance, if it is close enough to be a typo.
pub(crate) fn nearest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(input, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Checks a handler, service or breaker name: `[A-Za-z0-9_-]`, since it becomes part of
/// JetStream consumer names and metric labels.
pub(crate) fn check_plain_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("the {what} cannot be empty"));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(format!(
            "invalid {what} `{s}`: it contains `{c}`; use letters, digits, `_` and `-` only"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_becomes_dotted() {
        assert_eq!(dotted_name("OrderPlaced"), "order.placed");
        assert_eq!(dotted_name("HTTPRequestFailed"), "http.request.failed");
        assert_eq!(dotted_name("UserCreatedV2"), "user.created.v2");
        assert_eq!(dotted_name("Ping"), "ping");
    }

    #[test]
    fn event_names_are_checked() {
        assert!(check_event_name("user.created").is_ok());
        assert!(check_event_name("a-b.c_d.v2").is_ok());
        assert!(check_event_name("User.created")
            .unwrap_err()
            .contains("uppercase"));
        assert!(check_event_name("user..created")
            .unwrap_err()
            .contains("empty token"));
        assert!(check_event_name("user created")
            .unwrap_err()
            .contains("white space"));
        assert!(check_event_name("user.*").unwrap_err().contains("wildcard"));
    }

    #[test]
    fn subjects_allow_wildcards() {
        assert!(check_subject("payment.*").is_ok());
        assert!(check_subject(">").is_ok());
        assert!(check_subject("a.>.b").unwrap_err().contains("last token"));
        assert!(is_wildcard("a.*.b"));
        assert!(!is_wildcard("a.b"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert!(parse_duration("10 seconds").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("10")
            .unwrap_err()
            .contains("unit is missing"));
    }

    #[test]
    fn nearest_suggests_typos() {
        assert_eq!(nearest("retires", &["retries", "backoff"]), Some("retries"));
        assert_eq!(nearest("zzz", &["retries", "backoff"]), None);
    }
}
