//! Reading one option's value: positive numbers, the one boolean
//! vocabulary (sslcache's options refuse a word that is not a boolean,
//! uWSGI's own are read as uWSGI reads them), `;` lists and `cache2`'s
//! key=value lists as uWSGI splits them; and the [`ConfigError`] that
//! names the option at fault.

use std::fmt;

/// A configuration error, naming the option at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub(super) fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Parses a positive decimal number; `what` names the option in errors.
pub fn positive(what: &str, value: &str, max: u64) -> Result<u64, ConfigError> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return err(format!("{what} = \"{value}\" is not a number"));
    }
    match v.parse::<u64>() {
        Ok(0) => err(format!("{what} must be greater than 0")),
        Ok(n) if n <= max => Ok(n),
        _ => err(format!("{what} = {v} is too large (at most {max})")),
    }
}

/// The words of a boolean, case-insensitive: `Some(false)` for the words
/// uWSGI reads as false (`uwsgi_opt_true`: `0`, `false`, `no`, `off`),
/// `Some(true)` for empty (a bare flag), `1`, `true`, `yes`, `on`, `None`
/// for any other word.
pub fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A boolean option of sslcache's: a word outside [`boolean`]'s is an error
/// naming the option (a typo must not turn `ssl-sessions-accept-plain` on).
pub fn flag(option: &str, value: &str) -> Result<bool, ConfigError> {
    boolean(value).ok_or_else(|| {
        ConfigError(format!(
            "{option} = {}: expected true or false (or 1/0, yes/no, on/off)",
            value.trim()
        ))
    })
}

/// A boolean option of uWSGI's, read exactly as uWSGI reads it
/// (`uwsgi_opt_true`): false for its false words, true for anything else.
pub fn uwsgi_true(value: &str) -> bool {
    boolean(value) != Some(false)
}

/// Whether an `ssl-sessions-use-cache` value selects the default cache
/// (any other value names a cache, as in stock uWSGI).
pub(super) fn means_default(value: &str) -> bool {
    boolean(value) == Some(true)
}

/// Splits a `cache2` value the way uWSGI's `uwsgi_kvlist_parse` does:
/// items on unescaped `,`, a backslash escapes the next character, the key
/// ends at the first `=`. Later duplicates win.
pub fn parse_kvlist(src: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in src.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        if let Some((k, v)) = item.split_once('=') {
            out.retain(|(key, _)| key != k);
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

pub(super) fn split_list(value: &str) -> Vec<String> {
    value
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
