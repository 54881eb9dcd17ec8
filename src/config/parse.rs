//! Walks the spanned TOML document by hand (rather than `serde(deny_unknown_fields)`, which stops
//! at the first problem) so that every unknown key, missing key and bad value is reported at once,
//! each with its line.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::values::{
    expand, header_line_offset, max_changes, parse_lag, positive_integer, strip_lines,
};
use super::{
    ColumnPair, Cursor, Endpoint, EngineOptions, FileFormat, Job, Lag, Location, Relation,
    WriteOptions, folder_of,
};
use crate::error::{Problem, Side};

pub(super) type Table<'i> = DeTable<'i>;

const TOP_KEYS: &[&str] = &[
    "name",
    "source",
    "destination",
    "match",
    "compare",
    "write",
    "state",
    "diff_query",
    "engine",
];
const ENGINE_KEYS: &[&str] = &["memory_limit", "spill_dir", "io_timeout"];
const COMPARE_OPTION_KEYS: &[&str] = &[
    "tolerance",
    "relative",
    "ignore_case",
    "trim",
    "normalize",
    "precision",
    "ignore",
];
const ENDPOINT_KEYS: &[&str] = &["url", "table", "query", "id", "cursor", "lag", "http"];
const WRITE_KEYS: &[&str] = &["deletes", "max_changes", "batch_size", "persistent_after"];
const STATE_KEYS: &[&str] = &["url"];
/// Collects problems while walking the document.
pub(super) struct Walker<'a> {
    file: PathBuf,
    text: &'a str,
    /// Byte offset where each line starts, to turn offsets into line numbers quickly.
    line_starts: Vec<usize>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<Problem>,
}

pub(super) fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Job, Vec<Problem>> {
    let line_starts = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut w = Walker {
        file: path.to_path_buf(),
        text,
        line_starts,
        env,
        problems: Vec::new(),
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let at = err.span().map_or(0, |s| s.start);
            w.problem(at, format!("not valid TOML: {}", err.message().trim()));
            return Err(w.problems);
        }
    };
    let job = w.job(doc.get_ref());
    match job {
        Some(job) if w.problems.is_empty() => Ok(job),
        _ => Err(w.problems),
    }
}

impl Walker<'_> {
    pub(super) fn problem(&mut self, at: usize, message: impl Into<String>) {
        let line = self.line_of(at);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    fn line_of(&self, at: usize) -> usize {
        self.line_starts
            .partition_point(|start| *start <= at)
            .max(1)
    }

    fn job(&mut self, doc: &Table) -> Option<Job> {
        self.unknown_keys(doc, TOP_KEYS, "");
        let name = self.string(doc, "name", "").map(|(v, _)| v);
        let source = self.endpoint(doc, Side::Source);
        let destination = self.endpoint(doc, Side::Destination);
        let keys = self.pairs(doc, "match", true);
        // A `[compare]` that holds only `[compare.options]` maps no column: every same-named
        // column is compared, as without `[compare]`.
        let only_options = matches!(
            doc.get("compare").map(|v| v.get_ref()),
            Some(DeValue::Table(t)) if t.len() == 1 && t.get("options").is_some()
        );
        let compare = doc
            .get("compare")
            .filter(|_| !only_options)
            .and_then(|_| self.pairs(doc, "compare", false));
        self.check_mapping(keys.as_deref().unwrap_or_default(), compare.as_deref());
        let keys = keys.map(strip_lines);
        let compare = compare.map(strip_lines);
        let write = self.write(doc);
        let state_url = self.state_url(doc);
        let diff_query = self
            .string(doc, "diff_query", "")
            .map(|(v, _)| self.resolve(&v));
        let engine = self.engine(doc);
        let compare_options = self.compare_options(doc);
        let name = name.unwrap_or_else(|| {
            self.file
                .file_stem()
                .map_or("job".into(), |s| s.to_string_lossy().into_owned())
        });
        let io_timeout = engine
            .as_ref()
            .and_then(|e| e.io_timeout)
            .unwrap_or(super::DEFAULT_IO_TIMEOUT);
        let with_timeout = |mut e: Endpoint| {
            e.io_timeout = io_timeout;
            e
        };
        Some(Job {
            name,
            file: self.file.clone(),
            source: source.map(with_timeout)?,
            destination: destination.map(with_timeout)?,
            keys: keys?,
            compare,
            write: write?,
            state_url,
            diff_query,
            engine: engine?,
            compare_options: compare_options?,
        })
    }

    pub(super) fn unknown_keys(&mut self, table: &Table, known: &[&str], prefix: &str) {
        for (key, _) in table.iter() {
            if !known.contains(&key.get_ref().as_ref()) {
                let expected = known.join(", ");
                self.problem(
                    key.span().start,
                    format!(
                        "unknown key `{prefix}{}` (expected one of: {expected})",
                        key.get_ref()
                    ),
                );
            }
        }
    }

    /// A sub-table such as `[source]`; a problem if it is not a table.
    fn table<'t, 'i>(&mut self, doc: &'t Table<'i>, key: &str) -> Option<&'t Table<'i>> {
        let value = doc.get(key)?;
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.problem(
                    value.span().start,
                    format!("`{key}` must be a table (`[{key}]`)"),
                );
                None
            }
        }
    }

    /// A string value with `${VAR}` expanded, and where it starts.
    pub(super) fn string(
        &mut self,
        table: &Table,
        key: &str,
        prefix: &str,
    ) -> Option<(String, usize)> {
        let value = table.get(key)?;
        let at = value.span().start;
        match value.get_ref() {
            DeValue::String(s) => match expand(s, self.env) {
                Ok(v) => Some((v, at)),
                Err(message) => {
                    self.problem(at, format!("`{prefix}{key}`: {message}"));
                    None
                }
            },
            _ => {
                self.problem(at, format!("`{prefix}{key}` must be a string"));
                None
            }
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            folder_of(&self.file).join(p)
        }
    }

    fn endpoint(&mut self, doc: &Table, side: Side) -> Option<Endpoint> {
        let name = side.name();
        let Some(table) = self.table(doc, name) else {
            if doc.get(name).is_none() {
                self.problem(
                    0,
                    format!("missing `[{name}]` (a url and a table or query)"),
                );
            }
            return None;
        };
        let prefix = format!("{name}.");
        self.unknown_keys(table, ENDPOINT_KEYS, &prefix);
        let header = header_line_offset(self.text, name);
        let url = self.string(table, "url", &prefix);
        let tab = self.string(table, "table", &prefix);
        let query = self.string(table, "query", &prefix);
        let id = self.string(table, "id", &prefix).map(|(v, _)| v);
        let cursor = self.cursor(table, side, &prefix);
        let Some((url, at)) = url else {
            if table.get("url").is_none() {
                self.problem(header, format!("`[{name}]` needs a `url`"));
            }
            return None;
        };
        let http = self.http(table, &prefix);
        let location = self.location(&url, at, &prefix)?;
        if let (Some(v), false) = (table.get("http"), matches!(location, Location::Http(_))) {
            self.problem(
                v.span().start,
                format!("`[{name}.http]` applies to http(s):// urls only"),
            );
        }
        let http = match (&location, http) {
            (Location::Http(_), Some(h)) => Some(h),
            (Location::Http(_), None) if table.get("http").is_none() => Some(Default::default()),
            (Location::Http(_), None) => return None,
            _ => None,
        };
        let relation = self.relation(&location, tab, query, header, name)?;
        if let Some(h) = &http {
            self.check_templates(h, id.as_deref(), header, name);
        }
        Some(Endpoint {
            side,
            location,
            relation,
            id,
            cursor,
            http,
            io_timeout: super::DEFAULT_IO_TIMEOUT,
        })
    }

    /// `cursor` and `lag`: incremental mode, source only.
    fn cursor(&mut self, table: &Table, side: Side, prefix: &str) -> Option<Cursor> {
        let column = self.string(table, "cursor", prefix);
        let lag = table.get("lag");
        if side == Side::Destination {
            for v in [table.get("cursor"), lag].into_iter().flatten() {
                self.problem(v.span().start, format!("`{prefix}cursor`/`lag` belong under [source]: incremental mode reads the source from its watermark"));
            }
            return None;
        }
        let (column, _) = match column {
            Some(c) => c,
            None => {
                if let Some(v) = lag.filter(|_| table.get("cursor").is_none()) {
                    self.problem(v.span().start, format!("`{prefix}lag` needs a `cursor`"));
                }
                return None;
            }
        };
        let lag = match lag {
            None => Lag::None,
            Some(v) => match parse_lag(v) {
                Some(lag) => lag,
                None => {
                    self.problem(v.span().start, format!("`{prefix}lag` must be a duration like \"10m\" (s, m, h, d) or, for an integer cursor, a whole number"));
                    return None;
                }
            },
        };
        Some(Cursor { column, lag })
    }

    fn location(&mut self, url: &str, at: usize, prefix: &str) -> Option<Location> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            self.url_parameters(url, at, prefix);
            return Some(Location::Postgres(url.to_string()));
        }
        if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            self.url_parameters(url, at, prefix);
            let rest = &url[url.find("://").unwrap_or(0)..];
            return Some(Location::Mysql(format!("mysql{rest}")));
        }
        if let Some(path) = lower
            .strip_prefix("sqlite:")
            .map(|_| &url["sqlite:".len()..])
        {
            let path = path.strip_prefix("//").unwrap_or(path);
            let path = path.split('?').next().unwrap_or(path);
            return Some(Location::Sqlite(self.resolve(path)));
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Some(Location::Http(url.to_string()));
        }
        let format = match Path::new(&lower).extension().and_then(|e| e.to_str()) {
            Some("csv") => FileFormat::Csv,
            Some("parquet") => FileFormat::Parquet,
            Some("json") => FileFormat::Json,
            Some("jsonl" | "ndjson") => FileFormat::JsonLines,
            _ => {
                self.problem(
                    at,
                    format!("`{prefix}url` = \"{}\" is not a known kind of url (postgres://, mysql://, sqlite://, http(s)://, or a .csv/.parquet/.json/.jsonl path)", super::redact(url)),
                );
                return None;
            }
        };
        let path = url.strip_prefix("file://").unwrap_or(url);
        Some(Location::File(self.resolve(path), format))
    }

    /// Write templates may only name `{id}` when the destination has an `id`.
    fn check_templates(
        &mut self,
        http: &super::HttpOptions,
        id: Option<&str>,
        header: usize,
        name: &str,
    ) {
        let uses_id = http.write_placeholders().iter().any(|p| p == "id");
        if uses_id && id.is_none() && name == "destination" {
            self.problem(header, "`[destination.http]` write templates use `{id}` (the defaults: `PATCH /{id}`, `DELETE /{id}`), so `[destination] id` must name the record id field, e.g. `id = \"id\"`".to_string());
        }
    }

    /// Refuse url parameters the driver does not know (see [`super::urls`]).
    fn url_parameters(&mut self, url: &str, at: usize, prefix: &str) {
        for message in super::urls::unknown_parameters(url) {
            self.problem(at, format!("`{prefix}url`: {message}"));
        }
    }

    fn relation(
        &mut self,
        location: &Location,
        table: Option<(String, usize)>,
        query: Option<(String, usize)>,
        header: usize,
        name: &str,
    ) -> Option<Relation> {
        if let Location::File(..) = location {
            for (_, at) in table.iter().chain(query.iter()) {
                self.problem(*at, format!("`[{name}]` reads a file: the file is the table, so `table` and `query` do not apply"));
            }
            return Some(Relation::File);
        }
        if let Location::Http(_) = location {
            for (_, at) in table.iter().chain(query.iter()) {
                self.problem(*at, format!("`[{name}]` reads an HTTP API: the url lists the records, so `table` and `query` do not apply (paging and filters go under `[{name}.http]`)"));
            }
            return Some(Relation::Http);
        }
        match (table, query) {
            (Some((t, _)), None) => Some(Relation::Table(t)),
            (None, Some((q, _))) => Some(Relation::Query(q)),
            (Some(_), Some((_, at))) => {
                self.problem(
                    at,
                    format!("`[{name}]` has both `table` and `query`; keep one"),
                );
                None
            }
            (None, None) => {
                self.problem(header, format!("`[{name}]` needs a `table` or a `query`"));
                None
            }
        }
    }

    /// `[match]` / `[compare]`: `source_column = "destination_column"` lines, in file order, each
    /// with where it is written.
    fn pairs(
        &mut self,
        doc: &Table,
        key: &str,
        required: bool,
    ) -> Option<Vec<(ColumnPair, usize)>> {
        let Some(table) = self.table(doc, key) else {
            if required && doc.get(key).is_none() {
                self.problem(0, format!("missing `[{key}]`: map at least one source key column to a destination column, e.g. `reference = \"code\"`"));
            }
            return None;
        };
        let mut pairs = Vec::new();
        for (k, v) in table.iter() {
            match v.get_ref() {
                // `[compare.options]` is read by `compare_options`.
                DeValue::Table(_) if key == "compare" && k.get_ref() == "options" => {}
                DeValue::String(s) => pairs.push((
                    ColumnPair {
                        source: k.get_ref().to_string(),
                        destination: s.to_string(),
                    },
                    k.span().start,
                )),
                _ => self.problem(
                    v.span().start,
                    format!(
                        "`{key}.{}` must be a destination column name (a string)",
                        k.get_ref()
                    ),
                ),
            }
        }
        if required && pairs.is_empty() {
            self.problem(
                header_line_offset(self.text, key),
                format!("`[{key}]` is empty: map at least one key column"),
            );
            return None;
        }
        Some(pairs)
    }

    /// Mappings that would overwrite the wrong data (see [`super::mapping`]).
    fn check_mapping(
        &mut self,
        keys: &[(ColumnPair, usize)],
        compare: Option<&[(ColumnPair, usize)]>,
    ) {
        let found =
            super::mapping::clashes(keys, compare.unwrap_or_default(), &|at| self.line_of(at));
        for (at, message) in found {
            self.problem(at, message);
        }
    }

    fn write(&mut self, doc: &Table) -> Option<WriteOptions> {
        let mut out = WriteOptions::default();
        let Some(table) = self.table(doc, "write") else {
            return doc.get("write").is_none().then_some(out);
        };
        self.unknown_keys(table, WRITE_KEYS, "write.");
        let before = self.problems.len();
        if let Some(v) = table.get("deletes") {
            match v.get_ref() {
                DeValue::Boolean(b) => out.deletes = *b,
                _ => self.problem(v.span().start, "`write.deletes` must be true or false"),
            }
        }
        if let Some(v) = table.get("batch_size") {
            match positive_integer(v) {
                Some(n) => out.batch_size = n as usize,
                None => self.problem(
                    v.span().start,
                    "`write.batch_size` must be a whole number above 0",
                ),
            }
        }
        if let Some(v) = table.get("persistent_after") {
            match positive_integer(v) {
                Some(n) => out.persistent_after = n,
                None => self.problem(
                    v.span().start,
                    "`write.persistent_after` must be a whole number above 0",
                ),
            }
        }
        if let Some(v) = table.get("max_changes") {
            out.max_changes = max_changes(v);
            if out.max_changes.is_none() {
                self.problem(v.span().start, "`write.max_changes` must be a row count (e.g. 500) or a percentage of the destination (e.g. \"10%\")");
            }
        }
        (self.problems.len() == before).then_some(out)
    }

    /// `[compare.options]`: `column = { tolerance = 0.01, … }` lines (`"*"` for every column).
    fn compare_options(
        &mut self,
        doc: &Table,
    ) -> Option<std::collections::BTreeMap<String, super::CompareOptions>> {
        let mut out = std::collections::BTreeMap::new();
        let Some(DeValue::Table(compare)) = doc.get("compare").map(|v| v.get_ref()) else {
            return Some(out);
        };
        let Some(options) = compare.get("options") else {
            return Some(out);
        };
        let DeValue::Table(options) = options.get_ref() else {
            return Some(out);
        };
        let before = self.problems.len();
        for (column, value) in options.iter() {
            let column = column.get_ref().to_string();
            let prefix = format!("compare.options.{column}.");
            let DeValue::Table(table) = value.get_ref() else {
                self.problem(
                    value.span().start,
                    format!("`compare.options.{column}` must be a table, e.g. `{column} = {{ tolerance = 0.01 }}`"),
                );
                continue;
            };
            self.unknown_keys(table, COMPARE_OPTION_KEYS, &prefix);
            let mut o = super::CompareOptions::default();
            for (key, v) in table.iter() {
                let at = v.span().start;
                let name = format!("{prefix}{}", key.get_ref());
                let number = match v.get_ref() {
                    DeValue::Integer(i) => Some(i.as_str().replace('_', "")),
                    DeValue::Float(f) => Some(f.as_str().replace('_', "")),
                    _ => None,
                }
                .filter(|t| t.parse::<f64>().is_ok_and(|x| x.is_finite() && x >= 0.0));
                let flag = match v.get_ref() {
                    DeValue::Boolean(b) => Some(*b),
                    _ => None,
                };
                match key.get_ref().as_ref() {
                    "tolerance" => match number {
                        Some(t) => o.tolerance = Some(t),
                        None => self.problem(at, format!("`{name}` must be a number ≥ 0, e.g. 0.01")),
                    },
                    "relative" => match number.and_then(|t| t.parse().ok()) {
                        Some(r) => o.relative = Some(r),
                        None => self.problem(at, format!("`{name}` must be a number ≥ 0, e.g. 0.001 (a tenth of a percent)")),
                    },
                    "ignore_case" | "trim" | "ignore" => match flag {
                        Some(b) => match key.get_ref().as_ref() {
                            "ignore_case" => o.ignore_case = b,
                            "trim" => o.trim = b,
                            _ => o.ignore = b,
                        },
                        None => self.problem(at, format!("`{name}` must be true or false")),
                    },
                    "normalize" => match v.get_ref() {
                        DeValue::String(s) if s.eq_ignore_ascii_case("nfc") => o.nfc = true,
                        _ => self.problem(at, format!("`{name}` must be \"nfc\"")),
                    },
                    "precision" => match v.get_ref() {
                        DeValue::String(s) => match precision_micros(s) {
                            Some(us) => o.precision = Some(us),
                            None => self.problem(at, format!("`{name}` must be a duration like \"1s\", \"1ms\", \"10us\", \"1m\", \"1h\" or \"1d\"")),
                        },
                        _ => self.problem(at, format!("`{name}` must be a duration like \"1s\"")),
                    },
                    _ => {}
                }
            }
            out.insert(column, o);
        }
        (self.problems.len() == before).then_some(out)
    }

    /// `[engine]`: `memory_limit = "1GB"` (or a byte count), `spill_dir = "/var/tmp/recon"`.
    fn engine(&mut self, doc: &Table) -> Option<EngineOptions> {
        let mut out = EngineOptions::default();
        let Some(table) = self.table(doc, "engine") else {
            return doc.get("engine").is_none().then_some(out);
        };
        self.unknown_keys(table, ENGINE_KEYS, "engine.");
        let before = self.problems.len();
        if let Some(v) = table.get("memory_limit") {
            out.memory_limit = match v.get_ref() {
                DeValue::String(s) => crate::engine::parse_size(s),
                DeValue::Integer(_) => positive_integer(v),
                _ => None,
            };
            if out.memory_limit.is_none() {
                self.problem(
                    v.span().start,
                    "`engine.memory_limit` must be a size like \"1GB\", \"512MB\" or a byte count",
                );
            }
        }
        out.spill_dir = self
            .string(table, "spill_dir", "engine.")
            .map(|(v, _)| self.resolve(&v));
        if let Some((text, at)) = self.string(table, "io_timeout", "engine.") {
            out.io_timeout = super::values::seconds(&text);
            if out.io_timeout.is_none() {
                self.problem(
                    at,
                    "`engine.io_timeout` must be a duration like \"60s\", \"10m\" or \"1h\"",
                );
            }
        }
        (self.problems.len() == before).then_some(out)
    }

    fn state_url(&mut self, doc: &Table) -> String {
        let file = self.file.clone();
        let default = move || {
            folder_of(&file)
                .join(".recon/state.db")
                .display()
                .to_string()
        };
        let Some(table) = self.table(doc, "state") else {
            return default();
        };
        self.unknown_keys(table, STATE_KEYS, "state.");
        let url = self.string(table, "url", "state.");
        if let Some((url, at)) = &url
            && url.to_ascii_lowercase().starts_with("postgres")
        {
            self.url_parameters(url, *at, "state.");
        }
        url.map_or_else(default, |(v, _)| v)
    }
}

/// `"1s"`, `"250ms"`, `"10us"`, `"1m"`, `"1h"`, `"1d"` in microseconds (above 0).
fn precision_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit = match unit.trim() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" | "min" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return None,
    };
    n.checked_mul(unit).filter(|us| *us > 0)
}
