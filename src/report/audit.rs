//! Rendering an audit (src/audit.rs): `table` for a terminal, `json` (field names documented in
//! the README and kept stable), `markdown` for tickets, `html` — one self-contained file (inline
//! CSS and SVG, no fetches) that reads on a phone — and `openmetrics` for node_exporter's textfile
//! collector (Prometheus text format, valid OpenMetrics).

use serde_json::{Value, json};

use crate::audit::Audit;
use crate::changeset::Action;

use super::{change_object, describe_change, failed_object, key_text, printable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    Table,
    Json,
    Markdown,
    Html,
    Openmetrics,
}

/// The three drift categories with the action that stands for each, in report order.
const CATEGORIES: [(&str, Action); 3] = [
    ("missing", Action::Insert),
    ("changed", Action::Update),
    ("extra", Action::Delete),
];

pub fn render_audit(a: &Audit, format: AuditFormat) -> String {
    match format {
        AuditFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&document(a)).unwrap_or_default()
        ),
        AuditFormat::Table => table(a),
        AuditFormat::Markdown => markdown(a),
        AuditFormat::Html => super::audit_html::html(a),
        AuditFormat::Openmetrics => openmetrics(a),
    }
}

fn rows(a: &Audit, action: Option<Action>) -> u64 {
    let s = &a.changeset.summary;
    match action {
        Some(Action::Insert) => s.insert,
        Some(Action::Update) => s.update,
        Some(Action::Delete) => s.delete,
        None => s.unchanged,
    }
}

/// The audit as one JSON document.
pub fn document(a: &Audit) -> Value {
    let s = &a.changeset.summary;
    let figure = |n: u64| json!({"rows": n, "share": a.share(n)});
    let mut categories = serde_json::Map::new();
    let mut samples = serde_json::Map::new();
    for (name, action) in CATEGORIES {
        categories.insert(name.into(), figure(rows(a, Some(action))));
        let listed: Vec<Value> = a
            .samples(action)
            .map(|c| Value::Object(change_object(&a.changeset, c)))
            .collect();
        samples.insert(name.into(), Value::Array(listed));
    }
    categories.insert("unchanged".into(), figure(s.unchanged));
    let columns: Vec<Value> = a
        .columns
        .iter()
        .map(|c| {
            json!({
                "column": c.column,
                "rows": c.rows,
                "share": a.share(c.rows),
                "null_vs_value": c.null_vs_value,
                "max_abs_difference": c.max_abs_difference,
                "total_abs_difference": c.total_abs_difference,
            })
        })
        .collect();
    let failing: Vec<Value> = a
        .failing
        .iter()
        .map(|f| failed_object(f, a.persistent_after))
        .collect();
    json!({
        "job": a.changeset.job,
        "audited_at": a.audited_at,
        "rows": {"source": s.source_rows, "destination": s.destination_rows, "compared": a.compared()},
        "drift": figure(a.drift()),
        "categories": categories,
        "columns": columns,
        "samples": samples,
        "failing": failing,
        "persistently_failing": persistent(a),
        "trend": a.trend,
        "previous_share": a.previous(),
        "direction": a.direction(),
    })
}

fn persistent(a: &Audit) -> usize {
    a.failing
        .iter()
        .filter(|f| f.runs as u64 >= a.persistent_after)
        .count()
}

/// `12.50 %`.
pub fn percent(share: f64) -> String {
    format!("{:.2} %", share * 100.0)
}

/// `↑ from 10.00 %`, `↓ from …`, `= as …`, or nothing for a first audit.
pub fn trend_words(a: &Audit) -> String {
    match (a.direction(), a.previous()) {
        (Some("up"), Some(p)) => format!("↑ up from {} at the previous audit", percent(p)),
        (Some("down"), Some(p)) => format!("↓ down from {} at the previous audit", percent(p)),
        (Some(_), Some(_)) => "= as at the previous audit".into(),
        _ => "first audit of this job".into(),
    }
}

pub fn headline(a: &Audit) -> String {
    format!(
        "{}: drift {} of {} rows ({}), {}",
        a.changeset.job,
        a.drift(),
        a.compared(),
        percent(a.share(a.drift())),
        trend_words(a)
    )
}

fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x}"))
}

fn table(a: &Audit) -> String {
    let mut out = format!("{}\n", headline(a));
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(vec!["category", "rows", "share"]);
    for (name, action) in CATEGORIES
        .iter()
        .map(|(n, a)| (*n, Some(*a)))
        .chain([("unchanged", None)])
    {
        let n = rows(a, action);
        t.add_row(vec![name.to_string(), n.to_string(), percent(a.share(n))]);
    }
    out.push_str(&format!("{t}\n"));
    if !a.columns.is_empty() {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING);
        t.set_header(vec!["column", "rows", "null↔value", "max |Δ|", "total |Δ|"]);
        for c in &a.columns {
            t.add_row(vec![
                printable(c.column.clone()),
                c.rows.to_string(),
                c.null_vs_value.to_string(),
                number(c.max_abs_difference),
                number(c.total_abs_difference),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    for (name, action) in CATEGORIES {
        for c in a.samples(action) {
            out.push_str(&printable(format!(
                "sample {name}: {} — {}",
                key_text(&a.changeset, c),
                describe_change(&a.changeset, c)
            )));
            out.push('\n');
        }
    }
    for f in &a.failing {
        let persistent = if f.runs as u64 >= a.persistent_after {
            format!(" — persistently failing ({} applies in a row)", f.runs)
        } else {
            String::new()
        };
        out.push_str(&printable(format!(
            "failing {} {}: {}{persistent}",
            f.action, f.key, f.error
        )));
        out.push('\n');
    }
    if a.trend.len() > 1 {
        let points: Vec<String> = a.trend.iter().map(|p| percent(p.drift_share)).collect();
        out.push_str(&format!("trend (oldest first): {}\n", points.join(" → ")));
    }
    out
}

fn md(text: String) -> String {
    printable(text).replace('|', "\\|")
}

fn markdown(a: &Audit) -> String {
    let mut out = format!("## Drift audit: `{}`\n\n", a.changeset.job);
    out.push_str(&format!(
        "**{}** of {} rows drift ({}); {}. Audited {}.\n\n",
        a.drift(),
        a.compared(),
        percent(a.share(a.drift())),
        trend_words(a),
        a.audited_at
    ));
    out.push_str("| category | rows | share |\n|---|---:|---:|\n");
    for (name, action) in CATEGORIES
        .iter()
        .map(|(n, a)| (*n, Some(*a)))
        .chain([("unchanged", None)])
    {
        let n = rows(a, action);
        out.push_str(&format!("| {name} | {n} | {} |\n", percent(a.share(n))));
    }
    if !a.columns.is_empty() {
        out.push_str("\n| column | rows | NULL↔value | max \\|Δ\\| | total \\|Δ\\| |\n|---|---:|---:|---:|---:|\n");
        for c in &a.columns {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                md(c.column.clone()),
                c.rows,
                c.null_vs_value,
                number(c.max_abs_difference),
                number(c.total_abs_difference)
            ));
        }
    }
    for (name, action) in CATEGORIES {
        let listed: Vec<_> = a.samples(action).collect();
        if listed.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n**Sample {name} rows**\n\n| key | values |\n|---|---|\n"
        ));
        for c in listed {
            out.push_str(&format!(
                "| {} | {} |\n",
                md(key_text(&a.changeset, c)),
                md(describe_change(&a.changeset, c))
            ));
        }
    }
    if !a.failing.is_empty() {
        out.push_str("\n**Rows the last apply failed to write**\n\n| action | key | error | applies in a row |\n|---|---|---|---:|\n");
        for f in &a.failing {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                f.action,
                md(f.key.clone()),
                md(f.error.clone()),
                f.runs
            ));
        }
    }
    out
}

/// A label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn openmetrics(a: &Audit) -> String {
    let job = label(&a.changeset.job);
    let mut out = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let mut categories: Vec<(String, String)> = CATEGORIES
        .iter()
        .map(|(n, act)| {
            (
                format!("job=\"{job}\",category=\"{n}\""),
                rows(a, Some(*act)).to_string(),
            )
        })
        .collect();
    categories.push((
        format!("job=\"{job}\",category=\"unchanged\""),
        rows(a, None).to_string(),
    ));
    family(
        "recon_drift_rows",
        "Rows by drift category at the job's last audit.",
        categories,
    );
    family(
        "recon_drift_share",
        "Share of the compared rows that are missing, changed or extra.",
        vec![(format!("job=\"{job}\""), format!("{}", a.share(a.drift())))],
    );
    family(
        "recon_drift_column_rows",
        "Changed rows in which the column differs.",
        a.columns
            .iter()
            .map(|c| {
                (
                    format!("job=\"{job}\",column=\"{}\"", label(&c.column)),
                    c.rows.to_string(),
                )
            })
            .collect(),
    );
    family(
        "recon_failing_rows",
        "Rows the job's last apply failed to write.",
        vec![(format!("job=\"{job}\""), a.failing.len().to_string())],
    );
    let at = chrono::DateTime::parse_from_rfc3339(&a.audited_at)
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
        .unwrap_or_default();
    family(
        "recon_audit_timestamp_seconds",
        "When the audit ran, in seconds since the Unix epoch.",
        vec![(format!("job=\"{job}\""), format!("{at:.3}"))],
    );
    out.push_str("# EOF\n");
    out
}
