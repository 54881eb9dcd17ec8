//! The audit as one self-contained HTML file: inline CSS and SVG, no script, no fetch; a summary,
//! a chart of the drift share over past audits, a bar per compared column and the samples with
//! before → after. Every value from the data is escaped. Narrow screens get one column of tiles
//! and tables that scroll sideways.

use std::fmt::Write;

use crate::audit::Audit;
use crate::changeset::{Action, Change, display};

use super::audit::{percent, trend_words};
use super::key_text;

const STYLE: &str = "
:root { --ink: #1d232b; --muted: #5b6673; --line: #d9dee4; --missing: #2f6fde; --changed: #d98a00;
  --extra: #c2410c; --ok: #2e7d32; font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; }
body { margin: 0; color: var(--ink); background: #f6f7f9; }
main { max-width: 960px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.4rem; margin: 0 0 4px; } h2 { font-size: 1.1rem; margin: 24px 0 8px; }
h3 { font-size: 1rem; margin: 16px 0 6px; text-transform: capitalize; }
.when, small { color: var(--muted); }
.headline { font-size: 1.15rem; } .headline strong { font-size: 1.6rem; }
.up { color: var(--extra); } .down { color: var(--ok); } .same { color: var(--muted); }
.tiles { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; margin: 12px 0; }
.tile { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.tile dt { color: var(--muted); font-size: .85rem; } .tile dd { margin: 2px 0; font-size: 1.4rem; font-weight: 600; }
.missing dd { color: var(--missing); } .changed dd { color: var(--changed); } .extra dd { color: var(--extra); }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.track { background: #eef1f4; border-radius: 4px; height: 10px; min-width: 80px; }
.bar { background: var(--changed); height: 10px; border-radius: 4px; }
svg { width: 100%; height: auto; } .axis { stroke: var(--line); } .line { fill: none; stroke: var(--missing); stroke-width: 2; }
.point { fill: var(--missing); } .label { fill: var(--muted); font-size: 11px; }
@media (max-width: 600px) { .tiles { grid-template-columns: repeat(2, 1fr); } main { padding: 10px; } }
";

/// Escape text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn html(a: &Audit) -> String {
    let job = esc(&a.changeset.job);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Drift audit: {job}</title><style>{STYLE}</style></head><body><main>\n\
         <header><h1>Drift audit: <code>{job}</code></h1><p class=\"when\">Audited {} · source {} rows, destination {} rows</p></header>\n",
        esc(&a.audited_at),
        a.changeset.summary.source_rows,
        a.changeset.summary.destination_rows
    );
    summary(a, &mut out);
    chart(a, &mut out);
    columns(a, &mut out);
    samples(a, &mut out);
    failing(a, &mut out);
    out.push_str("</main></body></html>\n");
    out
}

fn summary(a: &Audit, out: &mut String) {
    let direction = a.direction().unwrap_or("same");
    let _ = write!(
        out,
        "<section id=\"summary\"><p class=\"headline\"><strong id=\"drift-share\" data-share=\"{}\">{}</strong> \
         of <span id=\"compared\">{}</span> rows drift (<span id=\"drift-rows\">{}</span> rows) \
         <span class=\"{direction}\">{}</span></p><dl class=\"tiles\">",
        a.share(a.drift()),
        percent(a.share(a.drift())),
        a.compared(),
        a.drift(),
        esc(&trend_words(a))
    );
    let s = &a.changeset.summary;
    for (name, rows) in [
        ("missing", s.insert),
        ("changed", s.update),
        ("extra", s.delete),
        ("unchanged", s.unchanged),
    ] {
        let _ = write!(
            out,
            "<div class=\"tile {name}\"><dt>{name}</dt><dd data-category=\"{name}\" data-rows=\"{rows}\">{rows}</dd><small>{}</small></div>",
            percent(a.share(rows))
        );
    }
    out.push_str("</dl></section>\n");
}

/// The drift share of each audit, oldest first, as a line with a point per audit.
fn chart(a: &Audit, out: &mut String) {
    let (w, h, pad) = (600.0, 180.0, 30.0);
    let top = a
        .trend
        .iter()
        .map(|p| p.drift_share)
        .fold(0.0_f64, f64::max)
        .max(0.01);
    let n = a.trend.len().max(1);
    let x = |i: usize| match n {
        1 => w / 2.0,
        _ => pad + (w - 2.0 * pad) * i as f64 / (n - 1) as f64,
    };
    let y = |share: f64| h - pad - (h - 2.0 * pad) * share / top;
    let _ = write!(
        out,
        "<section id=\"trend\"><h2>Drift over the last {n} audits</h2><div class=\"card\">\
         <svg id=\"trend-chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"drift share per audit\">\
         <line class=\"axis\" x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <text class=\"label\" x=\"2\" y=\"{t}\">{}</text><text class=\"label\" x=\"2\" y=\"{b}\">0 %</text>",
        percent(top),
        b = h - pad,
        r = w - pad,
        t = pad + 4.0
    );
    let points: Vec<String> = a
        .trend
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.drift_share)))
        .collect();
    let _ = write!(
        out,
        "<polyline class=\"line\" points=\"{}\"/>",
        points.join(" ")
    );
    for (i, p) in a.trend.iter().enumerate() {
        let _ = write!(
            out,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" data-share=\"{}\"><title>{}: {}</title></circle>",
            x(i),
            y(p.drift_share),
            p.drift_share,
            esc(&p.audited_at),
            percent(p.drift_share)
        );
    }
    // The first and the last audit's dates under the axis.
    let date = |i: usize| {
        esc(a
            .trend
            .get(i)
            .map_or("", |p| p.audited_at.get(..10).unwrap_or("")))
    };
    let _ = write!(
        out,
        "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"start\">{}</text>",
        x(0),
        h - 8.0,
        date(0)
    );
    if n > 1 {
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x(n - 1),
            h - 8.0,
            date(n - 1)
        );
    }
    out.push_str("</svg></div></section>\n");
}

fn columns(a: &Audit, out: &mut String) {
    if a.columns.is_empty() {
        return;
    }
    let most = a.columns.iter().map(|c| c.rows).max().unwrap_or(0).max(1);
    out.push_str("<section id=\"columns\"><h2>Changed rows by column</h2><div class=\"card\"><table>\
        <tr><th>column</th><th>rows</th><th></th><th>NULL↔value</th><th>max |Δ|</th><th>total |Δ|</th></tr>");
    let figure = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |x| format!("{x}"));
    for c in &a.columns {
        let _ = write!(
            out,
            "<tr data-column=\"{name}\"><td>{name}</td><td class=\"num\" data-rows=\"{rows}\">{rows}</td>\
             <td><div class=\"track\"><div class=\"bar\" style=\"width: {width:.1}%\"></div></div></td>\
             <td class=\"num\">{nulls}</td><td class=\"num\">{max}</td><td class=\"num\">{total}</td></tr>",
            name = esc(&c.column),
            rows = c.rows,
            width = 100.0 * c.rows as f64 / most as f64,
            nulls = c.null_vs_value,
            max = figure(c.max_abs_difference),
            total = figure(c.total_abs_difference)
        );
    }
    out.push_str("</table></div></section>\n");
}

/// `column: before → after` for an update; `column=value` otherwise.
fn cells(a: &Audit, c: &Change) -> (String, String) {
    let columns = a.changeset.compared_columns.iter().enumerate();
    let list = |values: &[serde_json::Value], only: &dyn Fn(usize) -> bool| {
        columns
            .clone()
            .filter(|(i, _)| only(*i))
            .map(|(i, name)| format!("{name}={}", display(&values[i])))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match c.action {
        Action::Update => {
            let changed = |i: usize| c.changed.get(i).copied().unwrap_or(false);
            (list(&c.destination, &changed), list(&c.source, &changed))
        }
        Action::Insert => ("(absent)".into(), list(&c.source, &|_| true)),
        Action::Delete => (
            list(&c.destination, &|_| true),
            "(absent from the source)".into(),
        ),
    }
}

fn samples(a: &Audit, out: &mut String) {
    out.push_str("<section id=\"samples\"><h2>Samples</h2>");
    for (name, action) in [
        ("missing", Action::Insert),
        ("changed", Action::Update),
        ("extra", Action::Delete),
    ] {
        let listed: Vec<&Change> = a.samples(action).collect();
        if listed.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<h3>{name}</h3><div class=\"card\"><table class=\"samples\" data-category=\"{name}\">\
             <tr><th>key</th><th>before (destination)</th><th>after (source)</th></tr>"
        );
        for c in listed {
            let (before, after) = cells(a, c);
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&key_text(&a.changeset, c)),
                esc(&before),
                esc(&after)
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>\n");
}

fn failing(a: &Audit, out: &mut String) {
    if a.failing.is_empty() {
        return;
    }
    out.push_str("<section id=\"failing\"><h2>Rows the last apply failed to write</h2><div class=\"card\"><table>\
        <tr><th>action</th><th>key</th><th>error</th><th>applies in a row</th></tr>");
    for f in &a.failing {
        let persistent = if f.runs as u64 >= a.persistent_after {
            " (persistent)"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}{persistent}</td></tr>",
            esc(&f.action),
            esc(&f.key),
            esc(&f.error),
            f.runs
        );
    }
    out.push_str("</table></div></section>\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_is_escaped() {
        assert_eq!(
            super::esc("<script>\"x\" & 'y'"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }
}
