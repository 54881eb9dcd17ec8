//! HTTP API snapshots: the listing is requested page by page (page number, offset, a next url or
//! cursor, or RFC 8288 `Link` headers), the records found at `records` are turned into a record
//! batch per page and staged as they arrive, like a database side's batches.
//!
//! Columns: those declared under `[….http.schema]`, the mapped ones, and every field of the
//! first page's records, in that order; a field missing from a record is NULL. A column not
//! declared takes its type from each page's values (integers, floats, booleans, text; objects
//! and arrays as their JSON text) and the pages are brought to one type when the side is read,
//! as SQLite's are. Paging stops at an empty page, a short page, or when there is no next link
//! or cursor; a page, offset, url or cursor seen before is an error naming the endpoint.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, PrimitiveBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, Float64Type, Int64Type, i256};
use serde_json::Value;

use crate::config::{Endpoint, Field, FieldKind, Paging};
use crate::error::Result;
use crate::http::template::{ListVars, list_body, param_text, uses};
use crate::http::{Client, Failure};
use crate::progress::RowCounter;
use crate::snapshot::{ColumnBuilder, ColumnError, batch, text_decimal};
use crate::stage::Stager;
use crate::watermark::{Bound, SourceRead};

/// Read the side's records into `out`; `wanted` names the mapped columns (always present, NULL
/// when no record has them).
pub async fn snapshot(
    endpoint: &Endpoint,
    url: &str,
    limit: Option<usize>,
    counter: &RowCounter,
    read: Option<&SourceRead>,
    wanted: &[String],
    out: &mut Stager,
) -> Result<()> {
    let client = Client::new(endpoint, url)?;
    let options = &client.options;
    let mut vars = ListVars {
        watermark: watermark(read, options),
        ..Default::default()
    };
    let mut columns: Option<Vec<String>> = None;
    let mut seen = HashSet::new();
    let mut next_url: Option<reqwest::Url> = None;
    let mut rows = 0usize;
    let mut pages = 0u64;
    loop {
        let size = match &options.paging {
            Paging::Page { size, start, .. } => {
                vars.page = Some(start + pages);
                Some(*size)
            }
            Paging::Offset { size, .. } => {
                vars.offset = Some(pages * size);
                Some(*size)
            }
            _ => None,
        };
        vars.size = size;
        let url = match next_url.take() {
            Some(u) => u,
            None => list_url(&client, &vars)?,
        };
        let body = options.list.body.as_ref().map(|b| list_body(b, &vars));
        // A page is the request: its url (paging parameters included), cursor and body.
        let key = format!(
            "{url} {} {}",
            vars.cursor
                .as_ref()
                .map_or(String::new(), |c| c.to_string()),
            body.as_deref().unwrap_or_default()
        );
        if !seen.insert(key) {
            return Err(client.error(format!(
                "the listing came back to a page it had already read (`{}`): the API's paging repeats; check `page`/`offset`/`next` under [{}.http]",
                crate::config::redact(url.as_str()),
                endpoint.side
            )));
        }
        if pages >= options.max_pages {
            return Err(client.error(format!(
                "more than max_pages ({}) pages; raise `max_pages` if the listing is that long",
                options.max_pages
            )));
        }
        let response = match client
            .send(&options.list.method, url.clone(), body, true)
            .await
        {
            Ok(r) => r,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Refused(m) | Failure::Unknown(m)) => {
                return Err(client.error(format!(
                    "listing `{}`: {m}",
                    crate::config::redact(url.as_str())
                )));
            }
        };
        pages += 1;
        tracing::debug!(url = %crate::config::redact(url.as_str()), status = %response.status, bytes = response.body.len(), "listing page");
        let doc: Value = serde_json::from_slice(&response.body).map_err(|e| {
            client.error(format!(
                "the answer to `{}` is not JSON ({e}); it starts: {}",
                crate::config::redact(url.as_str()),
                crate::http::api_message(&response.body)
            ))
        })?;
        let records = match doc.pointer(&options.records) {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None if pages > 1 => &Vec::new(),
            _ => {
                return Err(client.error(format!(
                    "no record array at `records = \"{}\"` in the answer to `{}`; set `records` under [{}.http] to the JSON pointer of the list",
                    options.records,
                    crate::config::redact(url.as_str()),
                    endpoint.side
                )));
            }
        };
        let take = limit.map_or(records.len(), |l| l.saturating_sub(rows).min(records.len()));
        let records = &records[..take];
        let names = columns.get_or_insert_with(|| column_names(&options.schema, wanted, records));
        let b = records_batch(records, names, &options.schema)
            .map_err(|e| crate::error::read_error(endpoint.side, "reading the API's records", e))?;
        rows += b.num_rows();
        counter.add(b.num_rows());
        out.push(b)
            .map_err(|e| crate::error::read_error(endpoint.side, "staging the snapshot", e))?;
        if records.is_empty() || limit.is_some_and(|l| rows >= l) {
            break;
        }
        let more = match &options.paging {
            Paging::None => false,
            Paging::Page { size, .. } | Paging::Offset { size, .. } => {
                records.len() as u64 >= *size
            }
            Paging::Link => match link_next(&response.headers, &response.url) {
                Some(u) => {
                    next_url = Some(u);
                    true
                }
                None => false,
            },
            Paging::Next {
                pointer,
                param,
                more,
            } => {
                let flag = more
                    .as_ref()
                    .map(|p| doc.pointer(p).and_then(Value::as_bool).unwrap_or(false));
                match doc.pointer(pointer) {
                    None | Some(Value::Null) => false,
                    Some(Value::String(s)) if s.is_empty() => false,
                    Some(_) if flag == Some(false) => false,
                    Some(v) => {
                        let as_url = param.is_none()
                            && !options
                                .list
                                .body
                                .as_ref()
                                .is_some_and(|b| uses(b, "$cursor"))
                            && v.as_str()
                                .is_some_and(|s| s.starts_with('/') || s.contains("://"));
                        if as_url {
                            let s = v.as_str().unwrap_or_default();
                            next_url = Some(response.url.join(s).map_err(|e| {
                                client.error(format!(
                                    "the next link `{}` is not a url: {e}",
                                    crate::config::redact(s)
                                ))
                            })?);
                        } else {
                            vars.cursor = Some(v.clone());
                        }
                        true
                    }
                }
            }
        };
        if !more {
            break;
        }
    }
    // Every page, the first included, pushed a batch: the columns are known.
    Ok(())
}

/// The listing url: the endpoint with its `params` and the paging parameters.
fn list_url(client: &Client, vars: &ListVars) -> Result<reqwest::Url> {
    let options = &client.options;
    let mut url = client.url(&options.list.path)?;
    {
        let mut q = url.query_pairs_mut();
        for (name, template) in &options.params {
            if let Some(text) = param_text(template, vars) {
                q.append_pair(name, &text);
            }
        }
        let mut pair = |name: &Option<String>, value: Option<u64>| {
            if let (Some(n), Some(v)) = (name, value) {
                q.append_pair(n, &v.to_string());
            }
        };
        match &options.paging {
            Paging::Page {
                param, size_param, ..
            } => {
                pair(param, vars.page);
                pair(size_param, vars.size);
            }
            Paging::Offset {
                param, limit_param, ..
            } => {
                pair(param, vars.offset);
                pair(limit_param, vars.size);
            }
            Paging::Next { param: Some(p), .. } => {
                if let Some(c) = &vars.cursor {
                    let text = c.as_str().map_or_else(|| c.to_string(), str::to_string);
                    q.append_pair(p, &text);
                }
            }
            _ => {}
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// RFC 8288: the `rel="next"` target of the `Link` headers.
fn link_next(headers: &reqwest::header::HeaderMap, base: &reqwest::Url) -> Option<reqwest::Url> {
    for value in headers.get_all(reqwest::header::LINK) {
        let text = value.to_str().ok()?;
        for link in text.split(',') {
            let (target, params) = link.split_once(';').unwrap_or((link, ""));
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let next = params.split(';').any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            if next {
                return base.join(target).ok();
            }
        }
    }
    None
}

/// `$watermark`: the window's lower bound (the watermark less the lag) in the cursor column's
/// declared format, or the saved watermark when the source has no cursor.
fn watermark(read: Option<&SourceRead>, options: &crate::config::HttpOptions) -> Option<Value> {
    let read = read?;
    let Some(window) = &read.window else {
        return crate::watermark::of_state(read.state.as_ref()).cloned();
    };
    let format = options
        .schema
        .iter()
        .find(|(n, _)| *n == window.column)
        .and_then(|(_, f)| f.format.clone());
    Some(match &window.lower {
        Bound::Int(n) => Value::from(*n),
        Bound::Date(d) => Value::String(
            d.format(format.as_deref().unwrap_or("%Y-%m-%d"))
                .to_string(),
        ),
        Bound::Timestamp(t) => Value::String(
            t.format(format.as_deref().unwrap_or("%Y-%m-%dT%H:%M:%S%.6f"))
                .to_string(),
        ),
        Bound::TimestampTz(t) => Value::String(
            t.format(format.as_deref().unwrap_or("%Y-%m-%dT%H:%M:%S%.6fZ"))
                .to_string(),
        ),
    })
}

pub(crate) fn column_names(
    schema: &[(String, Field)],
    wanted: &[String],
    records: &[Value],
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: &str| {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    };
    schema.iter().for_each(|(n, _)| add(n));
    wanted.iter().for_each(|n| add(n));
    for r in records {
        if let Value::Object(o) = r {
            o.keys().for_each(|k| add(k));
        }
    }
    names
}

/// One page's records as a batch of `names`.
pub(crate) fn records_batch(
    records: &[Value],
    names: &[String],
    schema: &[(String, Field)],
) -> std::result::Result<datafusion::arrow::record_batch::RecordBatch, ColumnError> {
    let mut builders = Vec::with_capacity(names.len());
    for name in names {
        let values: Vec<&Value> = records
            .iter()
            .map(|r| r.get(name.as_str()).unwrap_or(&Value::Null))
            .collect();
        let declared = schema.iter().find(|(n, _)| n == name).map(|(_, f)| f);
        let fail = |message: String| ColumnError {
            column: name.clone(),
            message,
        };
        builders.push(match declared {
            Some(f) => declared_column(&values, f).map_err(fail)?,
            None => inferred_column(&values),
        });
    }
    batch(names, builders)
}

/// A column of the JSON type its values share: integers, floats (integers among floats become
/// floats), booleans, text; anything mixed, objects and arrays as JSON text.
fn inferred_column(values: &[&Value]) -> ColumnBuilder {
    let (mut ints, mut floats, mut bools, mut strings, mut other) = (0, 0, 0, 0, 0);
    for v in values {
        match v {
            Value::Null => {}
            Value::Number(n) if n.is_i64() => ints += 1,
            Value::Number(_) => floats += 1,
            Value::Bool(_) => bools += 1,
            Value::String(_) => strings += 1,
            _ => other += 1,
        }
    }
    let numbers = ints + floats;
    let kinds = [numbers > 0, bools > 0, strings > 0, other > 0]
        .iter()
        .filter(|x| **x)
        .count();
    let n = values.len();
    if kinds == 0 {
        return ColumnBuilder::Null(n);
    }
    if kinds == 1 && floats == 0 && ints > 0 {
        let mut b = Int64Builder::with_capacity(n);
        values.iter().for_each(|v| b.append_option(v.as_i64()));
        return ColumnBuilder::Int64(b);
    }
    if kinds == 1 && floats > 0 {
        let mut b = Float64Builder::with_capacity(n);
        values.iter().for_each(|v| b.append_option(v.as_f64()));
        return ColumnBuilder::Float64(b);
    }
    if kinds == 1 && bools > 0 {
        let mut b = BooleanBuilder::with_capacity(n);
        values.iter().for_each(|v| b.append_option(v.as_bool()));
        return ColumnBuilder::Bool(b);
    }
    let mut b = StringBuilder::with_capacity(n, n * 16);
    for v in values {
        match v {
            Value::Null => b.append_null(),
            Value::String(s) => b.append_value(s),
            other => b.append_value(other.to_string()),
        }
    }
    ColumnBuilder::Text(b)
}

/// A declared column: each value parsed as the declared type, or an error naming the value.
fn declared_column(values: &[&Value], field: &Field) -> std::result::Result<ColumnBuilder, String> {
    let n = values.len();
    let bad = |v: &Value, what: &str| {
        format!(
            "{} is not {what}; fix the value or the column's type under [….http.schema]",
            shorten(v)
        )
    };
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    Ok(match field.kind {
        FieldKind::Text | FieldKind::Json => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    Value::String(s) if field.kind == FieldKind::Text => b.append_value(s),
                    other => b.append_value(other.to_string()),
                }
            }
            ColumnBuilder::Text(b)
        }
        FieldKind::Integer => ColumnBuilder::Int64(primitive::<Int64Type>(
            values,
            |v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            },
            &|v| bad(v, "an integer"),
        )?),
        FieldKind::Float => ColumnBuilder::Float64(primitive::<Float64Type>(
            values,
            |v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            },
            &|v| bad(v, "a number"),
        )?),
        FieldKind::Decimal => {
            let mut out: Vec<Option<(i256, u32)>> = Vec::with_capacity(n);
            for v in values {
                out.push(match v {
                    Value::Null => None,
                    _ => Some(text_decimal(&text(v)).ok_or_else(|| bad(v, "a decimal number"))?),
                });
            }
            ColumnBuilder::Decimal(out.into())
        }
        FieldKind::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    Value::Bool(x) => b.append_value(*x),
                    _ => return Err(bad(v, "true or false")),
                }
            }
            ColumnBuilder::Bool(b)
        }
        FieldKind::Date => {
            let mut b = Date32Builder::with_capacity(n);
            for v in values {
                match v.as_str().filter(|s| !s.is_empty()) {
                    None if matches!(v, Value::Null | Value::String(_)) => b.append_null(),
                    None => return Err(bad(v, "a date")),
                    Some(s) => {
                        let d = chrono::NaiveDate::parse_from_str(
                            s.trim(),
                            field.format.as_deref().unwrap_or("%Y-%m-%d"),
                        )
                        .map_err(|_| bad(v, "a date in the declared format"))?;
                        b.append_value((d - chrono::NaiveDate::default()).num_days() as i32);
                    }
                }
            }
            ColumnBuilder::Date(b)
        }
        FieldKind::Timestamp | FieldKind::TimestampTz => {
            let zoned = field.kind == FieldKind::TimestampTz;
            let mut b = TimestampMicrosecondBuilder::with_capacity(n);
            for v in values {
                // An empty string is how several APIs (PocketBase among them) write "no date".
                match v.as_str().filter(|s| !s.is_empty()) {
                    None if matches!(v, Value::Null | Value::String(_)) => b.append_null(),
                    None => return Err(bad(v, "a timestamp")),
                    Some(s) => b.append_value(
                        parse_timestamp(s.trim(), field.format.as_deref(), zoned)
                            .ok_or_else(|| bad(v, "a timestamp in the declared format"))?,
                    ),
                }
            }
            ColumnBuilder::Timestamp(b, zoned.then(|| Arc::from("UTC")))
        }
    })
}

/// A numeric column: each value read by `get` (numbers, or numbers written as text).
fn primitive<P: ArrowPrimitiveType>(
    values: &[&Value],
    get: impl Fn(&Value) -> Option<P::Native>,
    bad: &dyn Fn(&Value) -> String,
) -> std::result::Result<PrimitiveBuilder<P>, String> {
    let mut b = PrimitiveBuilder::<P>::with_capacity(values.len());
    for v in values {
        match v {
            Value::Null => b.append_null(),
            _ => b.append_value(get(v).ok_or_else(|| bad(v))?),
        }
    }
    Ok(b)
}

/// Microseconds since the epoch of a timestamp in `format` (chrono syntax), or else RFC 3339 /
/// ISO 8601 with `T` or a space; zoned timestamps without a zone are read as UTC.
fn parse_timestamp(s: &str, format: Option<&str>, zoned: bool) -> Option<i64> {
    use chrono::{DateTime, NaiveDateTime};
    if let Some(f) = format {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp_micros());
        }
        return NaiveDateTime::parse_from_str(s, f)
            .ok()
            .map(|t| t.and_utc().timestamp_micros());
    }
    let normal = s.replacen(' ', "T", 1);
    if let Ok(t) = DateTime::parse_from_rfc3339(&normal) {
        return Some(t.timestamp_micros());
    }
    let naive = normal.trim_end_matches('Z');
    let t = NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let _ = zoned;
    Some(t.and_utc().timestamp_micros())
}

fn shorten(v: &Value) -> String {
    let s = v.to_string();
    match s.chars().count() > 60 {
        true => format!("{}…", s.chars().take(60).collect::<String>()),
        false => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_apis_own_format() {
        let pb = Some("%Y-%m-%d %H:%M:%S%.3fZ");
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05.678Z", pb, true),
            Some(1_704_164_645_678_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-02T03:04:05.678Z", None, true),
            Some(1_704_164_645_678_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05", None, false),
            Some(1_704_164_645_000_000)
        );
        assert_eq!(parse_timestamp("yesterday", None, true), None);
    }

    #[test]
    fn link_headers_give_the_next_page() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            reqwest::header::HeaderValue::from_static(
                "<https://api.test/items?page=1>; rel=\"prev\", </items?page=3>; rel=\"next\"",
            ),
        );
        let base = reqwest::Url::parse("https://api.test/items?page=2").unwrap();
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "https://api.test/items?page=3"
        );
    }

    #[test]
    fn inferred_columns_follow_their_values() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let (a, b, c) = (v("1"), v("2.5"), v("null"));
        assert!(matches!(
            inferred_column(&[&a, &c]),
            ColumnBuilder::Int64(_)
        ));
        assert!(matches!(
            inferred_column(&[&a, &b]),
            ColumnBuilder::Float64(_)
        ));
        let o = v("{\"x\": 1}");
        assert!(matches!(inferred_column(&[&a, &o]), ColumnBuilder::Text(_)));
        assert!(matches!(inferred_column(&[&c]), ColumnBuilder::Null(1)));
    }
}
