//! Values inside a job file: `${VAR}` expansion, durations, counts and percentages.

use toml::Spanned;
use toml::de::DeValue;

use super::{ColumnPair, Lag, MaxChanges};

type Value<'i> = Spanned<DeValue<'i>>;

pub(super) fn strip_lines(pairs: Vec<(ColumnPair, usize)>) -> Vec<ColumnPair> {
    pairs.into_iter().map(|(p, _)| p).collect()
}

pub(super) fn parse_lag(v: &Value) -> Option<Lag> {
    match v.get_ref() {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .filter(|n| *n >= 0)
            .map(Lag::Number),
        DeValue::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit())?;
            let (n, unit) = s.split_at(split);
            let n: i64 = n.parse().ok()?;
            let seconds = match unit.trim() {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            };
            Some(Lag::Micros(n.checked_mul(seconds)?.checked_mul(1_000_000)?))
        }
        _ => None,
    }
}

/// `"90s"`, `"10m"`, `"1h"` (above zero).
pub(super) fn seconds(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    (n > 0).then(|| std::time::Duration::from_secs(n * unit))
}

pub(super) fn positive_integer(v: &Value) -> Option<u64> {
    match v.get_ref() {
        DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .filter(|n| *n > 0),
        _ => None,
    }
}

pub(super) fn max_changes(v: &Value) -> Option<MaxChanges> {
    if let Some(n) = positive_integer(v) {
        return Some(MaxChanges::Rows(n));
    }
    let DeValue::String(s) = v.get_ref() else {
        return None;
    };
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.trim().parse().ok()?;
        return (p > 0.0 && p <= 100.0).then_some(MaxChanges::Percent(p));
    }
    s.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(MaxChanges::Rows)
}

/// Byte offset of a `[name]` header line, or 0 when the table is inline or absent.
pub(super) fn header_line_offset(text: &str, name: &str) -> usize {
    let header = format!("[{name}]");
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with(&header) {
            return offset;
        }
        offset += line.len();
    }
    0
}

/// Expand `${VAR}` and `${VAR:-default}` from `env`; `$$` is a literal `$`.
pub(crate) fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "`${` without a closing `}` (write `$$` for a literal `$`)".to_string()
            })?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (export it, or write `${{{name}:-default}}`)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
