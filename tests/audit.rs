//! `recon audit`: every figure checked against the same figure computed independently in SQL, on
//! PostgreSQL and SQLite fixtures with known drift; tolerances move the figures; the trend,
//! `state history`, exit codes, failing rows; the HTML report rendered by headless Chromium and
//! the OpenMetrics output read by a real parser.

use serde_json::Value;

use crate::support::*;

const ROWS: i64 = 3000;

/// Source `s` and destination `d` with known drift: every 50th row missing, every 40th renamed,
/// every 97th `qty` NULL in the source (1 in the destination), every 30th `price` higher in the
/// destination by (k % 7) cents, and ROWS/100 extra rows.
fn fixture(numeric: &str) -> String {
    format!(
        "CREATE TABLE s (k integer, name text, price {numeric}, qty integer);
         CREATE TABLE d (k integer PRIMARY KEY, name text, price {numeric}, qty integer);
         WITH RECURSIVE g(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM g WHERE k < {ROWS})
         INSERT INTO s SELECT k, 'n' || k, (k % 500) * 1.25, CASE WHEN k % 97 = 0 THEN NULL ELSE k % 13 END FROM g;
         INSERT INTO d SELECT k, CASE WHEN k % 40 = 0 THEN 'renamed' ELSE name END,
                CASE WHEN k % 30 = 0 THEN price + (k % 7) * 0.01 ELSE price END,
                CASE WHEN qty IS NULL THEN 1 ELSE qty END
           FROM s WHERE k % 50 <> 0;
         INSERT INTO d SELECT k + {ROWS}, 'extra', 1, 1 FROM s WHERE k <= {ROWS} / 100;"
    )
}

fn job(source: &str, destination: &str, options: &str) -> String {
    format!(
        "name = \"drift\"\n[source]\nurl = \"{source}\"\ntable = \"s\"\n[destination]\nurl = \"{destination}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nname = \"name\"\nprice = \"price\"\nqty = \"qty\"\n{options}"
    )
}

/// The audit's figures, computed in SQL: (missing, changed, extra, unchanged), then per column
/// (rows, null_vs_value), then price's (max, total) absolute difference. `tolerance` on price.
fn figures_sql(tolerance: f64) -> Vec<String> {
    let price_differs =
        format!("((s.price IS NULL) <> (d.price IS NULL) OR abs(s.price - d.price) > {tolerance})");
    let both = "FROM s JOIN d ON d.k = s.k";
    vec![
        "SELECT count(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.k = s.k)".into(),
        format!(
            "SELECT count(*) {both} WHERE s.name IS DISTINCT FROM d.name OR {price_differs} OR s.qty IS DISTINCT FROM d.qty"
        ),
        "SELECT count(*) FROM d WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.k = d.k)".into(),
        format!(
            "SELECT count(*) {both} WHERE NOT (s.name IS DISTINCT FROM d.name OR {price_differs} OR s.qty IS DISTINCT FROM d.qty)"
        ),
        format!("SELECT count(*) {both} WHERE s.name IS DISTINCT FROM d.name"),
        format!("SELECT count(*) {both} WHERE (s.name IS NULL) <> (d.name IS NULL)"),
        format!("SELECT count(*) {both} WHERE {price_differs}"),
        format!("SELECT count(*) {both} WHERE (s.price IS NULL) <> (d.price IS NULL)"),
        format!("SELECT count(*) {both} WHERE s.qty IS DISTINCT FROM d.qty"),
        format!("SELECT count(*) {both} WHERE (s.qty IS NULL) <> (d.qty IS NULL)"),
        format!(
            "SELECT CAST(coalesce(max(abs(s.price - d.price)), 0) AS TEXT) {both} WHERE {price_differs}"
        ),
        format!(
            "SELECT CAST(coalesce(sum(abs(s.price - d.price)), 0) AS TEXT) {both} WHERE {price_differs}"
        ),
    ]
}

/// The same figures read from an audit's JSON document.
fn figures_json(doc: &Value) -> Vec<f64> {
    let c = &doc["categories"];
    let mut out: Vec<f64> = ["missing", "changed", "extra", "unchanged"]
        .iter()
        .map(|k| c[k]["rows"].as_f64().unwrap())
        .collect();
    for column in doc["columns"].as_array().unwrap() {
        out.push(column["rows"].as_f64().unwrap());
        out.push(column["null_vs_value"].as_f64().unwrap());
    }
    let price = &doc["columns"][1];
    out.push(price["max_abs_difference"].as_f64().unwrap());
    out.push(price["total_abs_difference"].as_f64().unwrap());
    out
}

fn assert_figures(doc: &Value, expected: &[f64]) {
    let got = figures_json(doc);
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() < 1e-6,
            "figure {i}: audit {g}, SQL {e}\n{doc}"
        );
    }
    let compared: f64 = expected[..4].iter().sum();
    assert_eq!(doc["rows"]["compared"].as_f64(), Some(compared));
    let drift = expected[0] + expected[1] + expected[2];
    assert!((doc["drift"]["share"].as_f64().unwrap() - drift / compared).abs() < 1e-12);
}

async fn pg_figures(url: &str, tolerance: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for q in figures_sql(tolerance) {
        let q = q.replace("SELECT count(*)", "SELECT count(*)::text");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(q.clone()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        out.push(v.parse().unwrap());
    }
    out
}

async fn sqlite_figures(path: &std::path::Path, tolerance: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for q in figures_sql(tolerance) {
        let q = q
            .replace("SELECT count(*)", "SELECT CAST(count(*) AS TEXT)")
            .replace("IS DISTINCT FROM", "IS NOT");
        let v = sqlite_text(path, &q).await;
        out.push(v[0].as_deref().unwrap().parse().unwrap());
    }
    out
}

fn audit_json(dir: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec!["audit", "job.toml", "-f", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = recon(&args, dir);
    assert_eq!(code, 0, "{err}");
    json(&out)
}

#[tokio::test]
async fn postgres_audit_figures_match_sql_and_tolerances_move_them() {
    let url = postgres("audit_pg", &fixture("numeric(10,2)")).await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, &url, ""));
    let doc = audit_json(f.dir.path(), &[]);
    assert_figures(&doc, &pg_figures(&url, 0.0).await);
    assert_eq!(doc["samples"]["changed"].as_array().unwrap().len(), 5);
    // Prices within 2.5 cents are equal: fewer changed rows, a smaller total difference.
    f.write(
        "job.toml",
        &job(
            &url,
            &url,
            "[compare.options]\nprice = { tolerance = 0.025 }\n",
        ),
    );
    let tolerant = audit_json(f.dir.path(), &["--samples", "2"]);
    let expected = pg_figures(&url, 0.025).await;
    assert_figures(&tolerant, &expected);
    assert!(expected[1] < figures_json(&doc)[1] && expected[6] < figures_json(&doc)[6]);
    assert_eq!(tolerant["samples"]["missing"].as_array().unwrap().len(), 2);
    // The second audit is compared with the first: less drift.
    assert_eq!(tolerant["direction"], "down", "{tolerant}");
    assert_eq!(tolerant["trend"].as_array().unwrap().len(), 2);
    // Audits are listed beside applies.
    let (code, out, _) = recon(
        &["state", "history", "job.toml", "-f", "json"],
        f.dir.path(),
    );
    assert_eq!(code, 0);
    let runs = json(&out);
    let audits = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["command"] == "audit")
        .count();
    assert_eq!(audits, 2, "{runs}");
    // Read-only: the destination is untouched.
    assert_eq!(
        pg_count(&url, "SELECT count(*) FROM d WHERE name = 'renamed'").await,
        ROWS / 40 - ROWS / 200
    );
}

#[tokio::test]
async fn sqlite_audit_figures_match_sql() {
    let f = Folder::new();
    let db = f.sqlite("drift.db", &fixture("REAL")).await;
    let url = format!("sqlite://{}", db.display());
    f.write("job.toml", &job(&url, &url, ""));
    let doc = audit_json(f.dir.path(), &[]);
    assert_figures(&doc, &sqlite_figures(&db, 0.0).await);
    f.write(
        "job.toml",
        &job(
            &url,
            &url,
            "[compare.options]\nprice = { tolerance = 0.025 }\n",
        ),
    );
    let tolerant = audit_json(f.dir.path(), &[]);
    assert_figures(&tolerant, &sqlite_figures(&db, 0.025).await);
}

#[tokio::test]
async fn exit_codes_failing_rows_and_plain_logs() {
    let f = Folder::new();
    let db = f
        .sqlite(
            "shop.db",
            "CREATE TABLE s (k INTEGER PRIMARY KEY, qty INTEGER);
             CREATE TABLE d (k INTEGER PRIMARY KEY, qty INTEGER CHECK (qty >= 0));
             INSERT INTO s VALUES (1, 1), (2, -2), (3, 3);
             INSERT INTO d VALUES (1, 1);",
        )
        .await;
    let url = format!("sqlite://{}", db.display());
    f.write(
        "job.toml",
        &format!("name = \"shop\"\n[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
    );
    let (code, _, err) = recon(&["apply", "job.toml", "--force"], f.dir.path());
    assert_eq!(code, 3, "{err}");
    // One row (k = 2) still drifts: 1 of 3 rows.
    let (code, out, err) = recon(
        &["audit", "job.toml", "-f", "json", "--exit-code", "-v"],
        f.dir.path(),
    );
    assert_eq!(code, 4, "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in logs written to a pipe: {err:?}"
    );
    let doc = json(&out);
    assert_eq!(
        doc["failing"][0]["key"],
        serde_json::json!({"k": 2}),
        "{doc}"
    );
    assert!(
        doc["failing"][0]["error"]
            .as_str()
            .unwrap()
            .contains("CHECK"),
        "{doc}"
    );
    assert_eq!(
        recon(&["audit", "job.toml", "--fail-above", "40%"], f.dir.path()).0,
        0
    );
    assert_eq!(
        recon(&["audit", "job.toml", "--fail-above", "30%"], f.dir.path()).0,
        4
    );
    assert_eq!(recon(&["audit", "job.toml"], f.dir.path()).0, 0);
}

#[tokio::test]
async fn openmetrics_output_parses_with_prometheus_client() {
    let f = Folder::new();
    let db = f.sqlite("drift.db", &fixture("REAL")).await;
    let url = format!("sqlite://{}", db.display());
    f.write("job.toml", &job(&url, &url, ""));
    let (code, out, err) = recon(
        &["audit", "job.toml", "-f", "openmetrics", "-o", "drift.prom"],
        f.dir.path(),
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let expected = sqlite_figures(&db, 0.0).await;
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = open(sys.argv[1]).read()
out = {}
for fam in openmetrics(text):
    for s in fam.samples:
        out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
assert sum(1 for _ in classic(text)) == len(list(openmetrics(text)))
print(json.dumps(out))
"#;
    let run = std::process::Command::new("python3")
        .args(["-c", script, "drift.prom"])
        .current_dir(f.dir.path())
        .output()
        .expect("python3");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let parsed = json(&String::from_utf8_lossy(&run.stdout));
    let get = |k: &str| {
        parsed[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {parsed}"))
    };
    assert_eq!(
        get(r#"recon_drift_rows{"category": "missing", "job": "drift"}"#),
        expected[0]
    );
    assert_eq!(
        get(r#"recon_drift_rows{"category": "changed", "job": "drift"}"#),
        expected[1]
    );
    assert_eq!(
        get(r#"recon_drift_rows{"category": "extra", "job": "drift"}"#),
        expected[2]
    );
    assert_eq!(
        get(r#"recon_drift_column_rows{"column": "price", "job": "drift"}"#),
        expected[6]
    );
    let at = get(r#"recon_audit_timestamp_seconds{"job": "drift"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - at).abs() < 120.0, "{at} vs {now}");
}

#[tokio::test]
async fn the_html_report_renders_in_headless_chromium() {
    let f = Folder::new();
    let db = f.sqlite("drift.db", &fixture("REAL")).await;
    let url = format!("sqlite://{}", db.display());
    f.write("job.toml", &job(&url, &url, ""));
    // Three audits, the drift shrinking before the last: a chart of three points.
    for round in 0..3 {
        let (code, _, err) = recon(
            &["audit", "job.toml", "-f", "html", "-o", "drift.html"],
            f.dir.path(),
        );
        assert_eq!(code, 0, "{err}");
        if round == 1 {
            sqlite_exec(&db, "UPDATE d SET name = 'n' || k WHERE name = 'renamed'").await;
        }
    }
    let expected = sqlite_figures(&db, 0.0).await;
    let html = std::fs::read_to_string(f.path("drift.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));
    let dom = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--dump-dom",
        ])
        .arg(format!("file://{}", f.path("drift.html").display()))
        .output()
        .expect("chromium (tests/run.sh installs Debian's chromium)");
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for (category, rows) in [
        ("missing", expected[0]),
        ("changed", expected[1]),
        ("extra", expected[2]),
    ] {
        let tile = format!("data-category=\"{category}\" data-rows=\"{rows}\">{rows}</dd>");
        assert!(dom.contains(&tile), "{tile} not in the rendered page");
    }
    assert_eq!(
        dom.matches("<circle class=\"point\"").count(),
        3,
        "three audits in the chart"
    );
    assert!(dom.contains("id=\"trend-chart\"") && dom.contains("<polyline"));
    assert!(dom.contains("data-column=\"price\""));
    assert!(dom.contains("<table class=\"samples\" data-category=\"missing\">"));
    assert!(dom.contains("down from"), "the trend is described");
    // A phone-sized screenshot renders (the README shows one).
    let shot = f.path("drift.png");
    let status = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--window-size=390,1400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", f.path("drift.html").display()))
        .output()
        .expect("chromium");
    assert!(status.status.success());
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false)
    );
}
