//! Rendering a changeset: the only module that writes data to stdout (or to `--output PATH`, via
//! a temporary file renamed into place so a failed run never leaves half a report). Formats:
//! `table` (people), `json` (one document, see the README), `jsonl` and `csv` (one change per
//! line, for piping), `markdown` (for pull requests and tickets).

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

mod audit;
mod audit_html;
mod stream;

pub use audit::{AuditFormat, render_audit};
pub use stream::Stream;

use crate::changeset::{Action, Change, Changeset, display};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Jsonl,
    Csv,
    Markdown,
}

impl Format {
    /// Formats written change by change as the diff produces them.
    pub fn streams(self) -> bool {
        matches!(self, Format::Json | Format::Jsonl | Format::Csv)
    }

    /// Rows listed when `--limit` is not given: a screenful for people, everything for machines.
    pub fn default_limit(self) -> Option<usize> {
        match self {
            Format::Table | Format::Markdown => Some(20),
            Format::Json | Format::Jsonl | Format::Csv => None,
        }
    }
}

/// Write `text` to `output`, or to stdout when `None`.
pub fn emit(text: &str, output: Option<&Path>) -> Result<()> {
    let Some(path) = output else {
        let mut out = std::io::stdout().lock();
        return match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.map_err(|source| Error::Write {
                path: "<stdout>".into(),
                source,
            }),
        };
    };
    let write_error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temporary(path)?;
    let written = write_private(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(write_error)
}

/// The temporary file beside `path` that a report is written to before it is renamed into
/// place; a `path` that is a folder is refused.
pub(crate) fn temporary(path: &Path) -> Result<std::path::PathBuf> {
    if path.is_dir() {
        return Err(Error::Write {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a folder; give a file name, e.g. `-o changes.json`",
            ),
        });
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".recon-tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    Ok(tmp)
}

/// A new file readable by its owner only (0600, whatever the umask): reports hold row data.
pub(crate) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = create_private(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Render a changeset in `format`.
pub fn render(changeset: &Changeset, format: Format) -> String {
    match format {
        Format::Table => table(changeset),
        Format::Json => {
            let mut doc = serde_json::to_string_pretty(&document(changeset)).unwrap_or_default();
            doc.push('\n');
            doc
        }
        Format::Jsonl => changeset
            .changes
            .iter()
            .map(|c| format!("{}\n", Value::Object(change_object(changeset, c))))
            .collect(),
        Format::Csv => csv(changeset),
        Format::Markdown => markdown(changeset),
    }
}

/// The JSON document of `plan --format json`.
pub fn document(changeset: &Changeset) -> Value {
    json!({
        "job": changeset.job,
        "summary": changeset.summary,
        "changes": changeset.changes.iter().map(|c| Value::Object(change_object(changeset, c))).collect::<Vec<_>>(),
    })
}

pub(crate) fn change_object(changeset: &Changeset, change: &Change) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("action".into(), json!(change.action));
    object.insert("key".into(), Value::Object(changeset.key_object(change)));
    object.insert("id".into(), change.id.clone());
    let columns = changeset.compared_columns.iter().enumerate();
    match change.action {
        Action::Update => {
            let changed: Map<String, Value> = columns
                .filter(|(i, _)| change.changed[*i])
                .map(|(i, c)| {
                    (
                        c.clone(),
                        json!({"from": change.destination[i], "to": change.source[i]}),
                    )
                })
                .collect();
            object.insert("changed".into(), Value::Object(changed));
        }
        Action::Insert => {
            let values = columns
                .map(|(i, c)| (c.clone(), change.source[i].clone()))
                .collect();
            object.insert("values".into(), Value::Object(values));
        }
        Action::Delete => {
            let values = columns
                .map(|(i, c)| (c.clone(), change.destination[i].clone()))
                .collect();
            object.insert("values".into(), Value::Object(values));
        }
    }
    object
}

/// One line: `3 to insert, 2 to update, 1 to delete, 10 unchanged (source 15 rows, destination 13)`.
pub fn summary_line(changeset: &Changeset) -> String {
    let s = &changeset.summary;
    format!(
        "{}: {} to insert, {} to update, {} to delete, {} unchanged (source {} rows, destination {} rows)",
        changeset.job, s.insert, s.update, s.delete, s.unchanged, s.source_rows, s.destination_rows
    )
}

/// What changes in one row, for people: `total_price: 10.00 → 12.50` or `code=A-4, price=1`.
pub(crate) fn describe_change(changeset: &Changeset, change: &Change) -> String {
    let columns = changeset.compared_columns.iter().enumerate();
    let parts: Vec<String> = match change.action {
        Action::Update => columns
            .filter(|(i, _)| change.changed[*i])
            .map(|(i, c)| {
                format!(
                    "{c}: {} → {}",
                    display(&change.destination[i]),
                    display(&change.source[i])
                )
            })
            .collect(),
        Action::Insert => columns
            .map(|(i, c)| format!("{c}={}", display(&change.source[i])))
            .collect(),
        Action::Delete => columns
            .map(|(i, c)| format!("{c}={}", display(&change.destination[i])))
            .collect(),
    };
    parts.join(", ")
}

/// Text for a terminal or a markdown table: control characters from the data (escape sequences,
/// carriage returns, NUL, …) are shown escaped (`\n`, `\u{1b}`) rather than sent to the screen.
pub(crate) fn printable(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn key_text(changeset: &Changeset, change: &Change) -> String {
    changeset
        .key_object(change)
        .iter()
        .map(|(k, v)| format!("{k}={}", display(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn more_line(changeset: &Changeset) -> Option<String> {
    let listed = changeset.changes.len() as u64;
    let total = changeset.summary.changes();
    changeset.truncated().then(|| {
        format!(
            "… {} more not listed (--limit {listed}; counts above are complete)",
            total - listed
        )
    })
}

fn table(changeset: &Changeset) -> String {
    let mut out = summary_line(changeset);
    out.push('\n');
    if changeset.changes.is_empty() {
        if changeset.summary.changes() == 0 {
            out.push_str("no changes: the destination agrees with the source\n");
        }
    } else {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING);
        t.set_header(vec!["action", "key", "id", "change"]);
        for c in &changeset.changes {
            t.add_row(vec![
                c.action.name().to_string(),
                printable(key_text(changeset, c)),
                printable(display_id(&c.id)),
                printable(describe_change(changeset, c)),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    if let Some(more) = more_line(changeset) {
        out.push_str(&more);
        out.push('\n');
    }
    out
}

fn display_id(id: &Value) -> String {
    if id.is_null() {
        String::new()
    } else {
        display(id)
    }
}

fn markdown(changeset: &Changeset) -> String {
    let escape = |s: String| printable(s).replace('|', "\\|");
    let mut out = format!(
        "**{}**\n\n| action | key | id | change |\n|---|---|---|---|\n",
        summary_line(changeset)
    );
    for c in &changeset.changes {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.action.name(),
            escape(key_text(changeset, c)),
            escape(display_id(&c.id)),
            escape(describe_change(changeset, c))
        ));
    }
    if let Some(more) = more_line(changeset) {
        out.push_str(&format!("\n{more}\n"));
    }
    out
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// CSV cell for a value: NULL is an empty field, the empty string a quoted empty field (`""`),
/// as PostgreSQL's `COPY … CSV` reads them.
fn csv_value(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) if s.is_empty() => "\"\"".into(),
        other => csv_field(&display(other)),
    }
}

/// `action, <key columns>, id, changed, <column>, <column>_before, …`: one row per change.
fn csv(changeset: &Changeset) -> String {
    let mut out = csv_header(changeset);
    for change in &changeset.changes {
        out.push_str(&csv_row(changeset, change));
    }
    out
}

fn csv_header(changeset: &Changeset) -> String {
    let mut header: Vec<String> = vec!["action".into()];
    header.extend(changeset.key_columns.iter().map(|k| csv_field(k)));
    header.extend(["id".into(), "changed".into()]);
    for c in &changeset.compared_columns {
        header.push(csv_field(c));
        header.push(csv_field(&format!("{c}_before")));
    }
    header.join(",") + "\n"
}

fn csv_row(changeset: &Changeset, change: &Change) -> String {
    let mut row = vec![change.action.name().to_string()];
    row.extend(change.key.iter().map(csv_value));
    row.push(csv_value(&change.id));
    let changed: Vec<&str> = changeset
        .compared_columns
        .iter()
        .enumerate()
        .filter(|(i, _)| change.changed[*i])
        .map(|(_, c)| c.as_str())
        .collect();
    row.push(csv_field(&changed.join(";")));
    for i in 0..changeset.compared_columns.len() {
        row.push(csv_value(&change.source[i]));
        row.push(csv_value(&change.destination[i]));
    }
    row.join(",") + "\n"
}

/// Render an apply as `table` or `markdown`: the plan's output plus what was written and what
/// failed (json, jsonl and csv stream: [`write_apply`]).
pub fn render_apply(report: &crate::apply::ApplyReport, format: Format) -> String {
    let mut out = render(&report.changeset, format);
    out.push_str(&failed_lines(report));
    out
}

/// Write an apply as `json`, `jsonl` or `csv`, its changes read back from the spool one at a
/// time (the first `limit`): `json` is the plan's document plus `applied`, `failed` and
/// `failed_rows`; `jsonl` is one line per failed row; `csv` the changes, then what was written.
pub fn write_apply(
    report: &crate::apply::ApplyReport,
    format: Format,
    output: Option<&Path>,
    limit: Option<usize>,
) -> Result<()> {
    let changeset = &report.changeset;
    let mut out = Stream::new(format, output, limit)?;
    if format != Format::Jsonl {
        for change in report.changes()?.take(limit.unwrap_or(usize::MAX)) {
            out.change(changeset, &change?)?;
        }
    }
    let failed = report
        .failed
        .iter()
        .map(|f| failed_object(f, report.persistent_after));
    match format {
        Format::Json => out.finish_with(
            changeset,
            &[
                ("applied", json!(report.applied)),
                ("failed", json!(report.failed.len())),
                ("failed_rows", Value::Array(failed.collect())),
                ("stale", json!(report.stale)),
                ("already_written", json!(report.already_written)),
            ],
            "",
        ),
        Format::Jsonl => {
            let lines: String = failed.map(|f| format!("{f}\n")).collect();
            out.finish_with(changeset, &[], &lines)
        }
        _ => out.finish_with(changeset, &[], &failed_lines(report)),
    }
}

/// `applied: …` and a line per failed row.
fn failed_lines(report: &crate::apply::ApplyReport) -> String {
    let mut out = applied_line(report);
    for f in &report.failed {
        let persistent = if f.runs as u64 >= report.persistent_after {
            format!(" — persistently failing ({} runs in a row)", f.runs)
        } else {
            String::new()
        };
        out.push_str(&printable(format!(
            "failed {} {}: {}{persistent}",
            f.action, f.key, f.error
        )));
        out.push('\n');
    }
    out
}

pub(crate) fn failed_object(f: &crate::state::FailedRow, persistent_after: u64) -> Value {
    let key: Value = serde_json::from_str(&f.key).unwrap_or(Value::String(f.key.clone()));
    json!({
        "action": f.action,
        "key": key,
        "error": f.error,
        "runs": f.runs,
        "persistent": f.runs as u64 >= persistent_after,
    })
}

fn applied_line(report: &crate::apply::ApplyReport) -> String {
    let a = report.applied;
    let skipped = if report.deletes || report.changeset.summary.delete == 0 {
        String::new()
    } else {
        format!(
            " ({} not deleted: `[write] deletes` is off)",
            report.changeset.summary.delete
        )
    };
    let plan = match (report.stale, report.already_written) {
        (0, 0) => String::new(),
        (stale, done) => format!(" (of them {stale} stale); {done} already written"),
    };
    format!(
        "applied: {} inserted, {} updated, {} deleted{skipped}; {} failed{plan}\n",
        a.insert,
        a.update,
        a.delete,
        report.failed.len()
    )
}

/// Render run history (newest first).
pub fn render_history(runs: &[crate::state::Run], format: Format) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(runs).unwrap_or_default()
        ),
        Format::Jsonl => runs.iter().map(|r| format!("{}\n", json!(r))).collect(),
        _ => {
            if runs.is_empty() {
                return "no runs recorded yet\n".into();
            }
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING);
            t.set_header(vec![
                "run",
                "command",
                "started",
                "outcome",
                "planned i/u/d",
                "applied i/u/d",
                "failed",
                "message",
            ]);
            for r in runs {
                t.add_row(vec![
                    r.id.to_string(),
                    r.command.clone(),
                    r.started_at.clone(),
                    r.outcome.clone(),
                    format!(
                        "{}/{}/{}",
                        r.planned_insert, r.planned_update, r.planned_delete
                    ),
                    format!(
                        "{}/{}/{}",
                        r.applied_insert, r.applied_update, r.applied_delete
                    ),
                    r.failed.to_string(),
                    r.message.clone().unwrap_or_default(),
                ]);
            }
            format!("{t}\n")
        }
    }
}
