//! `[source.http]` / `[destination.http]`: everything API-specific about an `http(s)://` side, so a
//! new API needs a job file, not code. Read here into [`HttpOptions`]; used by src/http/.
//!
//! Templates: a request `body` is a TOML table (or array) sent as JSON. In the listing request,
//! a string that is exactly `"$page"`, `"$size"`, `"$offset"`, `"$cursor"` or `"$watermark"` is
//! replaced by that value as a JSON value; in the query parameters (`params`) they are replaced
//! as text. In write requests, a string that is exactly `"{column}"` is replaced by the row's
//! value of that destination column as a JSON value (`"{id}"`: the destination's record id;
//! `"{record}"`: an object of every column written). Values are never spliced into JSON text;
//! in a `path`, `{column}` is replaced percent-encoded.

use std::time::Duration;

use serde_json::Value;
use toml::de::DeValue;

use super::parse::{Table, Walker};
use super::values::positive_integer;

const HTTP_KEYS: &[&str] = &[
    "headers",
    "records",
    "list",
    "params",
    "page",
    "offset",
    "next",
    "link_header",
    "schema",
    "create",
    "update",
    "delete",
    "rate_limit",
    "concurrency",
    "timeout",
    "max_body",
    "retries",
    "max_pages",
    "errors",
];
const REQUEST_KEYS: &[&str] = &["method", "path", "body", "idempotent"];
const PAGE_KEYS: &[&str] = &["param", "size_param", "size", "start"];
const OFFSET_KEYS: &[&str] = &["param", "limit_param", "size"];
const NEXT_KEYS: &[&str] = &["pointer", "param", "more"];
const FIELD_KEYS: &[&str] = &["type", "format"];

/// How an `http(s)://` side is listed and written.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// Sent with every request to the endpoint's origin (never to another origin).
    pub headers: Vec<(String, String)>,
    /// JSON pointer to the record array in a listing response (`""`: the body is the array).
    pub records: String,
    /// The listing request (default: `GET` of the url).
    pub list: Request,
    /// Query parameters of the listing request; `$watermark` and the paging values are replaced.
    pub params: Vec<(String, String)>,
    pub paging: Paging,
    /// Declared column types (`[….http.schema]`); other columns are inferred from the records.
    pub schema: Vec<(String, Field)>,
    pub create: Request,
    pub update: Request,
    pub delete: Request,
    /// Most requests per second, over all connections.
    pub rate_limit: Option<f64>,
    /// Requests in flight at once while writing.
    pub concurrency: usize,
    /// Whole-request timeout (connect, send, receive the body).
    pub timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_body: u64,
    /// Retries of a failed request that may be retried (see src/http/mod.rs).
    pub retries: u32,
    /// Most pages one listing may take: a bound against an API that never stops.
    pub max_pages: u64,
    /// JSON pointer where a response reports errors with a success status (GraphQL `"/errors"`,
    /// JSON-RPC `"/error"`): a non-empty value there fails the request.
    pub errors: String,
}

/// One request template.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// Appended to the url; `{column}` and `{id}` are replaced, percent-encoded.
    pub path: String,
    /// The JSON body template, if any.
    pub body: Option<Value>,
    /// Whether repeating the request cannot create a second record (default: every method but
    /// POST); only such requests are retried after a timeout or a server error.
    pub idempotent: bool,
}

impl Request {
    fn new(method: &str, path: &str, body: Option<Value>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body,
            idempotent: method != "POST",
        }
    }
}

/// How a listing moves from page to page.
#[derive(Debug, Clone, PartialEq)]
pub enum Paging {
    /// One request returns every record.
    None,
    /// `page = { param = "page", size_param = "perPage", size = 500, start = 1 }`.
    Page {
        param: Option<String>,
        size_param: Option<String>,
        size: u64,
        start: u64,
    },
    /// `offset = { param = "_start", limit_param = "_limit", size = 500 }`.
    Offset {
        param: Option<String>,
        limit_param: Option<String>,
        size: u64,
    },
    /// `next = "/next"` or `next = { pointer = "/…/endCursor", param = "after", more = "/…/hasNextPage" }`:
    /// the value at `pointer` is the next page's url, or (with `param`, or when the body uses
    /// `$cursor`) a cursor token.
    Next {
        pointer: String,
        param: Option<String>,
        more: Option<String>,
    },
    /// `link_header = true`: RFC 8288 `Link: <…>; rel="next"`.
    Link,
}

/// A declared column: its type, and for timestamps and dates the API's text format (chrono
/// `strftime` syntax; default RFC 3339 / ISO 8601).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub kind: FieldKind,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Integer,
    Float,
    Decimal,
    Boolean,
    Date,
    Timestamp,
    TimestampTz,
    /// Any JSON value, kept as its JSON text.
    Json,
}

impl FieldKind {
    fn parse(s: &str) -> Option<FieldKind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "text" | "string" => FieldKind::Text,
            "integer" | "int" | "bigint" => FieldKind::Integer,
            "float" | "double" | "number" => FieldKind::Float,
            "decimal" | "numeric" => FieldKind::Decimal,
            "boolean" | "bool" => FieldKind::Boolean,
            "date" => FieldKind::Date,
            "timestamp" => FieldKind::Timestamp,
            "timestamptz" => FieldKind::TimestampTz,
            "json" => FieldKind::Json,
            _ => return None,
        })
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            headers: Vec::new(),
            records: String::new(),
            list: Request::new("GET", "", None),
            params: Vec::new(),
            paging: Paging::None,
            schema: Vec::new(),
            create: Request::new("POST", "", None),
            update: Request::new("PATCH", "/{id}", None),
            delete: Request::new("DELETE", "/{id}", None),
            rate_limit: None,
            concurrency: 4,
            timeout: Duration::from_secs(30),
            max_body: 64 << 20,
            retries: 4,
            max_pages: 100_000,
            errors: "/errors".into(),
        }
    }
}

impl HttpOptions {
    /// Every `{name}` a write template refers to (paths and bodies), for validation.
    pub fn write_placeholders(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in [&self.create, &self.update, &self.delete] {
            let mut rest = r.path.as_str();
            while let Some(start) = rest.find('{') {
                let Some(end) = rest[start..].find('}') else {
                    break;
                };
                out.push(rest[start + 1..start + end].to_string());
                rest = &rest[start + end + 1..];
            }
            if let Some(body) = &r.body {
                collect_placeholders(body, &mut out);
            }
        }
        out
    }
}

fn collect_placeholders(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                out.push(name.to_string());
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_placeholders(v, out)),
        Value::Object(o) => o.values().for_each(|v| collect_placeholders(v, out)),
        _ => {}
    }
}

/// `"20/s"`, `"600/m"`, `"3600/h"` or a number (per second).
fn rate(v: &DeValue) -> Option<f64> {
    let per_second = match v {
        DeValue::String(s) => {
            let (n, unit) = s.split_once('/')?;
            let n: f64 = n.trim().parse().ok()?;
            let seconds = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                _ => return None,
            };
            n / seconds
        }
        other => number(other)?,
    };
    (per_second.is_finite() && per_second > 0.0).then_some(per_second)
}

/// `"30s"`, `"500ms"`, `"2m"` or a number of seconds.
fn duration(v: &DeValue) -> Option<Duration> {
    let d = match v {
        DeValue::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
            let (n, unit) = s.split_at(split);
            let n: f64 = n.parse().ok()?;
            let seconds = match unit.trim() {
                "ms" => 0.001,
                "s" => 1.0,
                "m" | "min" => 60.0,
                _ => return None,
            };
            Duration::try_from_secs_f64(n * seconds).ok()?
        }
        other => Duration::try_from_secs_f64(number(other)?).ok()?,
    };
    (!d.is_zero()).then_some(d)
}

/// A TOML integer or float as a number.
fn number(v: &DeValue) -> Option<f64> {
    match v {
        DeValue::Integer(i) => i.as_str().replace('_', "").parse().ok(),
        DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
        _ => None,
    }
}

impl Walker<'_> {
    /// `[side.http]`, when present.
    pub(super) fn http(&mut self, endpoint: &Table, prefix: &str) -> Option<HttpOptions> {
        let value = endpoint.get("http")?;
        let prefix = format!("{prefix}http.");
        let DeValue::Table(table) = value.get_ref() else {
            self.problem(
                value.span().start,
                format!("`{prefix}` must be a table (`[…http]`)"),
            );
            return None;
        };
        self.unknown_keys(table, HTTP_KEYS, &prefix);
        let mut out = HttpOptions::default();
        let before = self.problems.len();
        out.headers = self.string_map(table, "headers", &prefix);
        out.params = self.string_map(table, "params", &prefix);
        if let Some((records, at)) = self.string(table, "records", &prefix) {
            if !records.is_empty() && !records.starts_with('/') {
                self.problem(at, format!("`{prefix}records` must be a JSON pointer such as \"/items\" (or \"\" when the body is the array)"));
            }
            out.records = records;
        }
        if let Some((errors, _)) = self.string(table, "errors", &prefix) {
            out.errors = errors;
        }
        for (name, request) in [
            ("list", &mut out.list),
            ("create", &mut out.create),
            ("update", &mut out.update),
            ("delete", &mut out.delete),
        ] {
            if let Some(r) = self.request(table, name, &prefix, request.clone()) {
                *request = r;
            }
        }
        out.paging = self.paging(table, &prefix);
        out.schema = self.schema(table, &prefix);
        let mut number = |key: &str, what: &str| {
            let v = table.get(key)?;
            let n = positive_integer(v);
            if n.is_none() {
                self.problem(v.span().start, format!("`{prefix}{key}` must be {what}"));
            }
            n
        };
        if let Some(n) = number("concurrency", "a whole number above 0") {
            out.concurrency = n as usize;
        }
        if let Some(n) = number("max_pages", "a whole number above 0") {
            out.max_pages = n;
        }
        if let Some(v) = table.get("retries") {
            match v.get_ref() {
                DeValue::Integer(i) if i.as_str().parse::<u32>().is_ok_and(|n| n <= 20) => {
                    out.retries = i.as_str().parse().unwrap_or(0)
                }
                _ => self.problem(
                    v.span().start,
                    format!("`{prefix}retries` must be a whole number from 0 to 20"),
                ),
            }
        }
        if let Some(v) = table.get("rate_limit") {
            out.rate_limit = rate(v.get_ref());
            if out.rate_limit.is_none() {
                self.problem(v.span().start, format!("`{prefix}rate_limit` must be a rate like \"20/s\", \"600/m\" or a number of requests per second"));
            }
        }
        if let Some(v) = table.get("timeout") {
            match duration(v.get_ref()) {
                Some(d) => out.timeout = d,
                None => self.problem(
                    v.span().start,
                    format!("`{prefix}timeout` must be a duration like \"30s\" or \"500ms\""),
                ),
            }
        }
        if let Some(v) = table.get("max_body") {
            let size = match v.get_ref() {
                DeValue::String(s) => crate::engine::parse_size(s),
                DeValue::Integer(_) => positive_integer(v),
                _ => None,
            };
            match size {
                Some(n) => out.max_body = n,
                None => self.problem(
                    v.span().start,
                    format!("`{prefix}max_body` must be a size like \"64MB\" or a byte count"),
                ),
            }
        }
        (self.problems.len() == before).then_some(out)
    }

    /// A table of strings (`headers`, `params`), `${VAR}` expanded, in file order.
    fn string_map(&mut self, table: &Table, key: &str, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(v) = table.get(key) else {
            return out;
        };
        let DeValue::Table(t) = v.get_ref() else {
            self.problem(
                v.span().start,
                format!(
                    "`{prefix}{key}` must be a table of strings, e.g. `{{ Name = \"value\" }}`"
                ),
            );
            return out;
        };
        let inner = format!("{prefix}{key}.");
        for (name, _) in t.iter() {
            if let Some((value, _)) = self.string(t, name.get_ref(), &inner) {
                out.push((name.get_ref().to_string(), value));
            }
        }
        out
    }

    /// A request template: `{ method = "POST", path = "/{id}", body = { … }, idempotent = false }`.
    fn request(
        &mut self,
        table: &Table,
        key: &str,
        prefix: &str,
        default: Request,
    ) -> Option<Request> {
        let v = table.get(key)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.problem(
                v.span().start,
                format!(
                    "`{prefix}{key}` must be a table, e.g. `{{ method = \"POST\", path = \"\" }}`"
                ),
            );
            return None;
        };
        let inner = format!("{prefix}{key}.");
        self.unknown_keys(t, REQUEST_KEYS, &inner);
        let mut r = default;
        if let Some((method, at)) = self.string(t, "method", &inner) {
            let method = method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                self.problem(
                    at,
                    format!("`{inner}method` must be GET, POST, PUT, PATCH or DELETE"),
                );
            }
            r.idempotent = method != "POST";
            r.method = method;
        }
        if let Some((path, _)) = self.string(t, "path", &inner) {
            r.path = path;
        }
        if let Some(body) = t.get("body") {
            r.body = self.json(body, &format!("{inner}body"));
        }
        if let Some(v) = t.get("idempotent") {
            match v.get_ref() {
                DeValue::Boolean(b) => r.idempotent = *b,
                _ => self.problem(
                    v.span().start,
                    format!("`{inner}idempotent` must be true or false"),
                ),
            }
        }
        Some(r)
    }

    /// A TOML value as JSON, strings `${VAR}` expanded.
    fn json(&mut self, v: &toml::Spanned<DeValue>, name: &str) -> Option<Value> {
        Some(match v.get_ref() {
            DeValue::String(s) => match super::values::expand(s, self.env) {
                Ok(s) => Value::String(s),
                Err(message) => {
                    self.problem(v.span().start, format!("`{name}`: {message}"));
                    return None;
                }
            },
            DeValue::Integer(i) => {
                serde_json::from_str(&i.as_str().replace('_', "")).unwrap_or(Value::Null)
            }
            DeValue::Float(f) => {
                serde_json::from_str(&f.as_str().replace('_', "")).unwrap_or(Value::Null)
            }
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::String(d.to_string()),
            DeValue::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.json(x, name))
                    .collect::<Option<Vec<_>>>()?,
            ),
            DeValue::Table(t) => {
                let mut map = serde_json::Map::new();
                for (k, x) in t.iter() {
                    let inner = format!("{name}.{}", k.get_ref());
                    map.insert(k.get_ref().to_string(), self.json(x, &inner)?);
                }
                Value::Object(map)
            }
        })
    }

    fn paging(&mut self, table: &Table, prefix: &str) -> Paging {
        let given: Vec<&str> = ["page", "offset", "next", "link_header"]
            .into_iter()
            .filter(|k| table.get(*k).is_some())
            .collect();
        if given.len() > 1 {
            let at = table.get(given[1]).map_or(0, |v| v.span().start);
            self.problem(
                at,
                format!(
                    "`[{}]`: choose one way of paging; `{}` are all set",
                    prefix.trim_end_matches('.'),
                    given.join("` and `")
                ),
            );
            return Paging::None;
        }
        let size = |w: &mut Walker, t: &Table, inner: &str| -> u64 {
            match t.get("size") {
                None => 100,
                Some(v) => positive_integer(v).unwrap_or_else(|| {
                    w.problem(
                        v.span().start,
                        format!("`{inner}size` must be a whole number above 0"),
                    );
                    1
                }),
            }
        };
        match given.first().copied() {
            Some("page") => {
                let Some(t) = self.sub_table(table, "page", prefix) else {
                    return Paging::None;
                };
                let inner = format!("{prefix}page.");
                self.unknown_keys(t, PAGE_KEYS, &inner);
                let start = match t.get("start") {
                    None => 1,
                    Some(v) => match v.get_ref() {
                        DeValue::Integer(i) => i.as_str().parse().unwrap_or(1),
                        _ => {
                            self.problem(v.span().start, format!("`{inner}start` must be a whole number (the first page's number, often 0 or 1)"));
                            1
                        }
                    },
                };
                Paging::Page {
                    param: self.string(t, "param", &inner).map(|v| v.0),
                    size_param: self.string(t, "size_param", &inner).map(|v| v.0),
                    size: size(self, t, &inner),
                    start,
                }
            }
            Some("offset") => {
                let Some(t) = self.sub_table(table, "offset", prefix) else {
                    return Paging::None;
                };
                let inner = format!("{prefix}offset.");
                self.unknown_keys(t, OFFSET_KEYS, &inner);
                Paging::Offset {
                    param: self.string(t, "param", &inner).map(|v| v.0),
                    limit_param: self.string(t, "limit_param", &inner).map(|v| v.0),
                    size: size(self, t, &inner),
                }
            }
            Some("next") => {
                let v = &table["next"];
                match v.get_ref() {
                    DeValue::String(s) => Paging::Next {
                        pointer: s.to_string(),
                        param: None,
                        more: None,
                    },
                    DeValue::Table(t) => {
                        let inner = format!("{prefix}next.");
                        self.unknown_keys(t, NEXT_KEYS, &inner);
                        let Some((pointer, _)) = self.string(t, "pointer", &inner) else {
                            self.problem(v.span().start, format!("`{inner}pointer` is needed: the JSON pointer to the next page's url or cursor"));
                            return Paging::None;
                        };
                        Paging::Next {
                            pointer,
                            param: self.string(t, "param", &inner).map(|v| v.0),
                            more: self.string(t, "more", &inner).map(|v| v.0),
                        }
                    }
                    _ => {
                        self.problem(v.span().start, format!("`{prefix}next` must be a JSON pointer (\"/next\") or a table `{{ pointer = …, param = …, more = … }}`"));
                        Paging::None
                    }
                }
            }
            Some(_) => match table["link_header"].get_ref() {
                DeValue::Boolean(true) => Paging::Link,
                DeValue::Boolean(false) => Paging::None,
                _ => {
                    let at = table["link_header"].span().start;
                    self.problem(at, format!("`{prefix}link_header` must be true or false"));
                    Paging::None
                }
            },
            None => Paging::None,
        }
    }

    fn sub_table<'t, 'i>(
        &mut self,
        table: &'t Table<'i>,
        key: &str,
        prefix: &str,
    ) -> Option<&'t Table<'i>> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.problem(v.span().start, format!("`{prefix}{key}` must be a table"));
                None
            }
        }
    }

    /// `[….http.schema]`: `column = "timestamptz"` or `column = { type = "timestamptz", format = "…" }`.
    fn schema(&mut self, table: &Table, prefix: &str) -> Vec<(String, Field)> {
        let mut out = Vec::new();
        let Some(t) = self.sub_table(table, "schema", prefix) else {
            return out;
        };
        let inner = format!("{prefix}schema.");
        for (name, v) in t.iter() {
            let name = name.get_ref().to_string();
            let (kind, format, at) = match v.get_ref() {
                DeValue::String(s) => (s.to_string(), None, v.span().start),
                DeValue::Table(f) => {
                    let field = format!("{inner}{name}.");
                    self.unknown_keys(f, FIELD_KEYS, &field);
                    let Some((kind, at)) = self.string(f, "type", &field) else {
                        self.problem(v.span().start, format!("`{field}type` is needed"));
                        continue;
                    };
                    (kind, self.string(f, "format", &field).map(|v| v.0), at)
                }
                _ => {
                    self.problem(v.span().start, format!("`{inner}{name}` must be a type name or a table `{{ type = …, format = … }}`"));
                    continue;
                }
            };
            match FieldKind::parse(&kind) {
                Some(kind) => out.push((name, Field { kind, format })),
                None => self.problem(at, format!("`{inner}{name}`: unknown type `{kind}` (text, integer, float, decimal, boolean, date, timestamp, timestamptz, json)")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_read_as_people_write_them() {
        let s = |t: &str| DeValue::String(t.to_string().into());
        assert_eq!(rate(&s("20/s")), Some(20.0));
        assert_eq!(rate(&s("600/m")), Some(10.0));
        assert_eq!(rate(&s("0/s")), None);
        assert_eq!(duration(&s("500ms")), Some(Duration::from_millis(500)));
        assert_eq!(duration(&s("2m")), Some(Duration::from_secs(120)));
        assert_eq!(duration(&s("soon")), None);
    }
}
