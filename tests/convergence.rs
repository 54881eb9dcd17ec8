//! Convergence (issue "Every apply converges"): a compared value is changed only if writing it
//! would change what the destination stores. After a successful `apply`, the next `plan` is
//! empty — or lists exactly the rows the destination refused, each failed with its message.

use crate::support::*;
use serde_json::json;
use std::path::Path;

fn job(source: &str, destination: &str) -> String {
    format!(
        "[source]\nurl = \"{source}\"\ntable = \"s\"\n[destination]\nurl = \"{destination}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"
    )
}

fn run(dir: &Path, command: &str) -> (i32, serde_json::Value, String) {
    let (code, out, err) = recon(&[command, "job.toml", "-f", "json"], dir);
    let doc = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, doc, format!("{out}{err}"))
}

fn counts(doc: &serde_json::Value) -> (u64, u64, u64) {
    let s = &doc["summary"];
    (
        s["insert"].as_u64().unwrap_or(99),
        s["update"].as_u64().unwrap_or(99),
        s["delete"].as_u64().unwrap_or(99),
    )
}

/// Columns narrower than the source's: the source is compared as the destination stores it, so
/// one apply (inserts, then updates) leaves nothing to do.
const PG_PAIRS: &str = "
    CREATE TABLE s (k int, ch char(10), ts timestamp(6), tz timestamptz, f float8,
                    fnum float8, num numeric, j json, jb jsonb, day text, big numeric);
    CREATE TABLE d (k int PRIMARY KEY, ch text, ts timestamp(3), tz timestamptz(0), f real,
                    fnum numeric(6,3), num float8, j jsonb, jb json, day date, big float8);";

#[tokio::test]
async fn postgres_columns_narrower_than_the_source_converge() {
    let url = postgres("narrow", PG_PAIRS).await;
    pg_exec(
        &url,
        r#"SET TimeZone = 'UTC';
        INSERT INTO s VALUES
          (1, 'abc', '2024-01-01 10:00:00.123456', '2024-01-01 10:00:00.5+00', 0.1, 0.1235, 10.0,
           '{"b": 1, "a": [2, 3]}', '{"y": true, "x": null}', '2017-01-01 00:00:00.123456', 0.1),
          (2, '', '2024-12-31 23:59:59.9999996', '1999-12-31 23:59:59.4+00', 1e-30, -0.0005, 0.00000000000000000000000000000001,
           '[]', '{}', '2017-01-02', 1234567890.123456789),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (4, 'x y', '0001-01-01 00:00:00.0005', '9999-12-31 23:59:59+00', 3.4e38, 999.9994, 1e-20,
           '{"a": {"c": 1, "b": 2}}', '[{"b": 1, "a": 2}]', '9999-12-31 12:00:00', 1e-30);"#,
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, &url));
    let (code, doc, out) = run(f.dir.path(), "apply");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        doc["applied"],
        json!({"insert": 4, "update": 0, "delete": 0})
    );
    let (code, doc, out) = run(f.dir.path(), "plan");
    assert_eq!(code, 0, "{out}");
    assert_eq!(counts(&doc), (0, 0, 0), "{doc}");
    // New values everywhere: updates, then nothing.
    pg_exec(
        &url,
        r#"UPDATE s SET ch = 'abd', ts = ts + interval '1.0004 second', tz = tz + interval '0.6 second',
             f = f * 3, fnum = fnum / 2, num = num * 3, j = '{"a": [2, 3], "b": 2}',
             jb = '{"x": 1}', day = '2018-05-05 23:59:59', big = big * 7 WHERE k IN (1, 2, 4);"#,
    )
    .await;
    let (code, doc, out) = run(f.dir.path(), "apply");
    assert_eq!(code, 0, "{out}");
    assert_eq!(doc["applied"]["update"], 3, "{doc}");
    let (_, doc, _) = run(f.dir.path(), "plan");
    assert_eq!(counts(&doc), (0, 0, 0), "{doc}");
    // Spacing and key order are not data: rewriting the JSON the same way changes nothing.
    pg_exec(
        &url,
        r#"UPDATE s SET j = '{ "b" : 2,  "a" : [2,3] }' WHERE k = 1;"#,
    )
    .await;
    let (_, doc, _) = run(f.dir.path(), "plan");
    assert_eq!(counts(&doc), (0, 0, 0), "{doc}");
}

#[tokio::test]
async fn a_value_the_destination_cannot_hold_is_a_failed_row_every_run() {
    let url = postgres(
        "cannot_hold",
        "CREATE TABLE s (k int, fnum float8, ts timestamp);
         CREATE TABLE d (k int PRIMARY KEY, fnum numeric(6,3), ts timestamp(0));
         INSERT INTO s VALUES (1, 1.5, '2024-01-01 00:00:00.7'), (2, 12345.6, '2024-01-01'), (3, 2.25, '2024-01-01'),
                              (4, 'NaN', '2024-01-01'), (5, '-Infinity', '2024-01-01');",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, &url));
    for _ in 0..2 {
        let (code, doc, out) = run(f.dir.path(), "apply");
        assert_eq!(code, 3, "{out}");
        let failed: Vec<(String, String)> = doc["failed_rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["key"]["k"].to_string(),
                    r["error"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(failed.len(), 3, "{doc}");
        assert_eq!(failed[0].0, "2");
        assert!(failed[0].1.contains("overflow"), "{failed:?}");
        // NaN and infinity: PostgreSQL's numeric would take them, but they could not be read
        // back exactly, so every later plan would stop; they fail the row instead.
        assert!(failed[1].1.contains("NaN into `fnum`"), "{failed:?}");
        assert!(failed[2].1.contains("inf into `fnum`"), "{failed:?}");
        // Exactly the refused rows remain.
        let (_, doc, _) = run(f.dir.path(), "plan");
        assert_eq!(counts(&doc), (3, 0, 0), "{doc}");
    }
    assert_eq!(
        pg_count(
            &url,
            "SELECT count(*) FROM d WHERE ts = '2024-01-01 00:00:01' AND fnum = 1.5"
        )
        .await,
        1
    );
}

/// The three faults at their root: `char(n)` padding, decimals meeting floats, text meeting dates.
#[tokio::test]
async fn char_padding_decimal_floats_and_text_dates_compare_as_stored() {
    let url = postgres(
        "roots",
        "CREATE TABLE s (k char(40), n numeric, t text, day date);
         CREATE TABLE d (k text PRIMARY KEY, n float8, t date, day text);
         INSERT INTO s VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 10.0, '2017-01-01 00:00:00.123456', '2017-01-01'),
                              ('b', 0.1, '2017-01-02', '2017-01-02'),
                              ('c', 0.00000000000000000000000000000001, '2017-01-03', '2017-01-03');
         INSERT INTO d VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 10.0, '2017-01-01', '2017-01-01 00:00:00.123456'),
                              ('b', 0.1, '2017-01-02', '2017-01-02 00:00:00'),
                              ('c', 1e-32, '2017-01-03', '2017-01-03');",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, &url));
    let (code, doc, out) = run(f.dir.path(), "plan");
    assert_eq!(code, 0, "{out}");
    // The char key meets its text twin; 10.0 and 0.1 at scale 32 equal their floats; a date
    // column would store the text's day (no change), but text holding a time differs from a date.
    assert_eq!(counts(&doc), (0, 1, 0), "{doc}");
    let change = &doc["changes"][0];
    assert_eq!(
        change["key"]["k"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{doc}"
    );
    let changed: Vec<&String> = change["changed"].as_object().unwrap().keys().collect();
    assert_eq!(changed, ["day"], "{doc}");
    let (code, _, out) = run(f.dir.path(), "apply");
    assert_eq!(code, 0, "{out}");
    let (_, doc, _) = run(f.dir.path(), "plan");
    assert_eq!(counts(&doc), (0, 0, 0), "{doc}");
}

#[tokio::test]
async fn mariadb_datetime_decimal_and_float_columns_converge() {
    let pg = postgres(
        "to_mariadb",
        "CREATE TABLE s (k int, at timestamp, at3 timestamp, amount numeric, ratio float8, doc jsonb, code text);
         INSERT INTO s VALUES (1, '2024-01-01 10:00:00.999999', '2024-01-01 10:00:00.123456', 0.1235, 0.1, '{\"b\": 1, \"a\": [2, 3]}', 'Ab'),
                              (2, '1999-12-31 23:59:59.5', '1999-12-31 23:59:59.9996', -2.0005, 1e-30, '[]', 'é'),
                              (3, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await;
    let my = mariadb(
        "from_pg",
        "CREATE TABLE d (k INT PRIMARY KEY, at DATETIME, at3 DATETIME(3), amount DECIMAL(6,3), ratio FLOAT,
                         doc JSON, code VARCHAR(10) COLLATE utf8mb4_bin);",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&pg, &my));
    let (code, doc, out) = run(f.dir.path(), "apply");
    assert_eq!(code, 0, "{out}");
    assert_eq!(doc["applied"]["insert"], 3, "{doc}");
    let (code, doc, out) = run(f.dir.path(), "plan");
    assert_eq!(code, 0, "{out}");
    assert_eq!(counts(&doc), (0, 0, 0), "{doc}");
    // JSON compares as parsed values; a `utf8mb4_bin` column is text, compared by bytes.
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::MySqlConnection::connect(&my).await.unwrap();
        conn.execute("UPDATE d SET doc = '{ \"a\" : [2,3],  \"b\" : 1 }', code = 'ab' WHERE k = 1")
            .await
            .unwrap();
    }
    let (_, doc, _) = run(f.dir.path(), "plan");
    assert_eq!(counts(&doc), (0, 1, 0), "{doc}");
    let changed: Vec<&String> = doc["changes"][0]["changed"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(changed, ["code"], "{doc}");
}

#[tokio::test]
async fn check_names_each_pair_and_what_the_destination_cannot_hold() {
    let url = postgres(
        "check_pairs",
        "CREATE TABLE s (k int, ts timestamp, amount numeric(10,4), label text);
         CREATE TABLE d (k int PRIMARY KEY, ts timestamp(3), amount numeric(10,2), label text);
         INSERT INTO s VALUES (1, now(), 1.2345, 'a'); INSERT INTO d VALUES (1, now(), 1.23, 'a');",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, &url));
    let (code, out, err) = recon(&["check", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let line = |column: &str| {
        out.lines()
            .find(|l| l.starts_with("pair:") && l.contains(&format!("`{column}`")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("ts").contains("rounded to 3 fraction digits"), "{out}");
    assert!(line("amount").contains(",4))"), "{out}");
    assert!(
        line("amount").contains("rounded to 2 decimal places"),
        "{out}"
    );
    assert!(!line("label").contains("warning"), "{out}");
    assert!(!line("label").is_empty(), "{out}");
}

const OPTIONS_JOB: &str = "[compare]
price = \"total_price\"
ratio = \"ratio\"
name = \"name\"
at = \"at\"
note = \"note\"
[compare.options]
total_price = { tolerance = 0.01 }
ratio = { relative = 0.001 }
name = { ignore_case = true, trim = true, normalize = \"nfc\" }
at = { precision = \"1s\" }
note = { ignore = true }
";

#[tokio::test]
async fn comparison_options_hold_for_plan_and_apply() {
    let url = postgres(
        "options",
        "CREATE TABLE s (k int, price numeric(10,2), ratio float8, name text, at timestamp, note text);
         CREATE TABLE d (k int PRIMARY KEY, total_price numeric(10,2), ratio float8, name text, at timestamp, note text);
         INSERT INTO s VALUES (1, 10.00, 1000, ' Café ', '2024-01-01 10:00:00.2', 'x'),
                              (2, 10.00, NULL, 'a', '2024-01-01 10:00:00', 'x'),
                              (3, NULL, 5, 'same', '2024-01-01 10:00:00', 'x');
         INSERT INTO d VALUES (1, 10.01, 1000.9, E'CAFE\\u0301', '2024-01-01 10:00:00.9', 'y'),
                              (2, 10.02, 0, 'b', '2024-01-01 10:00:01', 'y'),
                              (3, 0.001, 5, 'SAME', '2024-01-01 10:00:00', 'y');",
    )
    .await;
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!(
            "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n{OPTIONS_JOB}"
        ),
    );
    let (code, doc, out) = run(f.dir.path(), "plan");
    assert_eq!(code, 0, "{out}");
    // Row 1 is within every option; the boundary (0.01 exactly) is inclusive.
    assert_eq!(counts(&doc), (0, 2, 0), "{doc}");
    let changed = |key: i64| -> Vec<String> {
        let change = doc["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"]["k"] == key)
            .unwrap();
        change["changed"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(changed(2), ["total_price", "ratio", "name", "at"], "{doc}");
    // NULL is never within a tolerance of a value.
    assert_eq!(changed(3), ["total_price"], "{doc}");
    let (code, doc, out) = run(f.dir.path(), "apply");
    assert_eq!(code, 0, "{out}");
    assert_eq!(doc["applied"]["update"], 2, "{doc}");
    // A value within tolerance is not written; an ignored column is never written; what is
    // written is the source value, not its folded form.
    assert_eq!(
        pg_count(
            &url,
            "SELECT count(*) FROM d WHERE k = 1 AND total_price = 10.01 AND note = 'y'"
        )
        .await,
        1
    );
    assert_eq!(
        pg_count(
            &url,
            "SELECT count(*) FROM d WHERE k = 2 AND name = 'a' AND note = 'y'"
        )
        .await,
        1
    );
    let (_, doc, _) = run(f.dir.path(), "plan");
    assert_eq!(counts(&doc), (0, 0, 0), "{doc}");
}

#[tokio::test]
async fn comparison_options_that_do_not_fit_are_refused() {
    let url = postgres(
        "bad_options",
        "CREATE TABLE s (k int, name text); CREATE TABLE d (k int PRIMARY KEY, name text);",
    )
    .await;
    let f = Folder::new();
    let base = format!(
        "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"
    );
    f.write(
        "job.toml",
        &format!(
            "{base}[compare.options]\nname = {{ tolerance = 0.5 }}\nnmae = {{ trim = true }}\n"
        ),
    );
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("`name`") && err.contains("apply to numbers"),
        "{err}"
    );
    assert!(
        err.contains("`nmae`") && err.contains("no compared column"),
        "{err}"
    );
    f.write(
        "job.toml",
        &format!("{base}[compare.options]\nname = {{ precision = \"fast\", color = 1 }}\n"),
    );
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("precision") && err.contains("color"), "{err}");
}

/// One generated case: a source type, a destination type, and rows of (source, destination)
/// values as SQL text (cast by the column's type; a value the column refuses becomes NULL).
#[derive(Debug, Clone)]
struct Case {
    pair: usize,
    rows: Vec<(Option<String>, Option<String>)>,
}

/// (source type, destination type, kind of value)
const RULE_PAIRS: &[(&str, &str, &str)] = &[
    ("numeric", "float8", "num"),
    ("float8", "numeric(12,3)", "float"),
    ("float8", "real", "float"),
    ("timestamp", "timestamp(3)", "ts"),
    ("timestamptz", "timestamptz(0)", "ts"),
    ("text", "char(8)", "text"),
    ("text", "date", "day"),
    ("numeric(20,6)", "numeric(12,2)", "num"),
    ("jsonb", "json", "json"),
    ("char(6)", "varchar(10)", "text"),
    ("text", "varchar(5)", "text"),
];

fn value(kind: &'static str) -> proptest::strategy::BoxedStrategy<String> {
    use proptest::prelude::*;
    match kind {
        "num" => (any::<bool>(), 0u64..1_000_000, 0u64..100_000_000, 0usize..9)
            .prop_map(|(neg, i, f, digits)| {
                let frac = format!("{f:08}");
                let sign = if neg { "-" } else { "" };
                match digits {
                    0 => format!("{sign}{i}"),
                    d => format!("{sign}{i}.{}", &frac[..d.min(8)]),
                }
            })
            .boxed(),
        "float" => prop_oneof![
            Just("0.1".to_string()),
            Just("1e-30".to_string()),
            Just("-0.0005".to_string()),
            (-1e7f64..1e7).prop_map(|x| format!("{x:e}")),
            (-1000i64..1000, 0u32..6)
                .prop_map(|(m, s)| format!("{}", m as f64 / 10f64.powi(s as i32))),
        ]
        .boxed(),
        "ts" => (
            -62_000_000_000_000_000i64..253_000_000_000_000_000,
            0usize..4,
        )
            .prop_map(|(us, round)| {
                // Often on whole seconds or milliseconds, where rounding meets its edges.
                let us = match round {
                    0 => us - us.rem_euclid(1_000_000),
                    1 => us - us.rem_euclid(1_000) + 500,
                    _ => us,
                };
                chrono::DateTime::from_timestamp_micros(us)
                    .unwrap()
                    .naive_utc()
                    .format("%Y-%m-%d %H:%M:%S%.6f")
                    .to_string()
            })
            .boxed(),
        "text" => "[ab é]{0,9}".boxed(),
        "day" => (0i64..2_900_000, any::<bool>())
            .prop_map(|(days, time)| {
                let d = chrono::NaiveDate::from_num_days_from_ce_opt(days as i32 + 1).unwrap();
                match time {
                    true => format!("{} 00:00:00.{:06}", d.format("%Y-%m-%d"), days % 7),
                    false => d.format("%Y-%m-%d").to_string(),
                }
            })
            .boxed(),
        _ => proptest::collection::btree_map("[abc]", 0i64..3, 0..3)
            .prop_map(|m| {
                let items: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("\"{k}\" : {v}"))
                    .collect();
                format!("{{ {} }}", items.join(",  "))
            })
            .boxed(),
    }
}

fn case() -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    (0..RULE_PAIRS.len()).prop_flat_map(|pair| {
        let kind = RULE_PAIRS[pair].2;
        let row = (
            proptest::option::weighted(0.9, value(kind)),
            prop_oneof![
                Just(None),
                Just(Some(0)),
                value(kind).prop_map(|v| Some(v.len()))
            ],
        );
        proptest::collection::vec((row, value(kind)), 1..25).prop_map(move |rows| Case {
            pair,
            rows: rows
                .into_iter()
                .map(|((source, choice), other)| {
                    // The destination holds the same value, NULL, or another one.
                    let destination = match choice {
                        None => None,
                        Some(0) => source.clone(),
                        Some(_) => Some(other),
                    };
                    (source, destination)
                })
                .collect(),
        })
    })
}

async fn keys(url: &str, query: &str) -> std::collections::BTreeSet<i64> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i32, _>(0) as i64)
        .collect()
}

/// The rule itself, against PostgreSQL: a row is planned as changed if and only if applying it
/// to a copy of the destination changes what the copy stores (or the copy refuses it).
async fn check_rule(url: &str, case: &Case) {
    use sqlx::{Connection, Executor};
    let (source_type, destination_type, _) = RULE_PAIRS[case.pair];
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "SET TimeZone = 'UTC'; DROP TABLE IF EXISTS s, d, d2;
         CREATE TABLE s (k int, v {source_type}); CREATE TABLE d (k int PRIMARY KEY, v {destination_type});"
    )))
    .await
    .unwrap();
    let literal = |v: &Option<String>| match v {
        None => "NULL".to_string(),
        Some(v) => format!("'{}'", v.replace('\'', "''")),
    };
    for (k, (s, d)) in case.rows.iter().enumerate() {
        for (table, v) in [("s", s), ("d", d)] {
            let insert = format!("INSERT INTO {table} VALUES ({k}, {})", literal(v));
            if conn.execute(sqlx::AssertSqlSafe(insert)).await.is_err() {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} VALUES ({k}, NULL)"
                )))
                .await
                .unwrap();
            }
        }
    }
    conn.execute("CREATE TABLE d2 (LIKE d INCLUDING ALL); INSERT INTO d2 SELECT * FROM d;")
        .await
        .unwrap();
    let f = Folder::new();
    f.write("job.toml", &job(url, url));
    f.write(
        "copy.toml",
        &job(url, url).replace("table = \"d\"", "table = \"d2\""),
    );
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{case:?}\n{err}");
    let planned: std::collections::BTreeSet<i64> = json(&out)["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"]["k"].as_i64().unwrap())
        .collect();
    let (code, out, err) = recon(&["apply", "copy.toml", "-f", "json"], f.dir.path());
    assert!(code == 0 || code == 3, "{case:?}\n{out}{err}");
    let failed: std::collections::BTreeSet<i64> = json(&out)["failed_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"]["k"].as_i64().unwrap())
        .collect();
    let stored_changed = keys(
        url,
        "SELECT k FROM d JOIN d2 USING (k) WHERE d.v::text IS DISTINCT FROM d2.v::text",
    )
    .await;
    let mut expected = stored_changed.clone();
    expected.extend(&failed);
    assert_eq!(
        planned, expected,
        "{source_type} → {destination_type}: planned vs stored-changed-or-refused\n{case:?}\n{out}"
    );
    // And the copy converged, but for the refused rows.
    let (_, out, _) = recon(&["plan", "copy.toml", "-f", "json"], f.dir.path());
    let left: std::collections::BTreeSet<i64> = json(&out)["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"]["k"].as_i64().unwrap())
        .collect();
    assert_eq!(
        left, failed,
        "{source_type} → {destination_type}\n{case:?}\n{out}"
    );
}

#[test]
fn changed_means_writing_would_change_what_the_destination_stores() {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(postgres("rule", "SELECT 1"));
    let mut runner = TestRunner::new(Config {
        cases: 30,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            runtime.block_on(check_rule(&url, &case));
            Ok(())
        })
        .unwrap();
}

/// Edge values of many types from PostgreSQL into SQLite and MariaDB, and from CSV and SQLite
/// into PostgreSQL: one apply, then an empty plan (or exactly the refused rows).
const EDGE_SOURCE: &str = r#"
    CREATE TABLE s (k int, i2 int2, i8 int8, n38 numeric(38,10), f4 float4, f8 float8, t text,
                    vc varchar(12), ch char(5), day date, ts timestamp, tz timestamptz, flag bool,
                    id uuid, raw bytea);
    SET TimeZone = 'UTC';
    INSERT INTO s VALUES
      (1, -32768, 9223372036854775807, 1234567890123456789012345678.0123456789, 0.1, 0.1, '', 'trail  ',
       'ab', '0001-01-01', '0001-01-01 00:00:00', '1970-01-01 00:00:00.000001+00', true,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff'),
      (2, 0, -1, 0.0000000001, 1e-30, 1e-30, 'é ü', 'x', 'abcde', '9999-12-31', '9999-12-31 23:59:59.999999',
       '2024-02-29 12:00:00.5+00', false, NULL, '\x'),
      (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (4, 7, 42, -0.5, 'Infinity', '-Infinity', ' lead', '', ' ', '2000-02-29', '1999-12-31 23:59:59.123456',
       '1999-12-31 23:59:59.999999+00', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '\x0102');"#;

async fn converge(dir: &Path) -> Vec<i64> {
    let (code, doc, out) = run(dir, "apply");
    assert!(code == 0 || code == 3, "{out}");
    let failed: Vec<i64> = doc["failed_rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r["key"]["k"].as_i64().unwrap())
                .collect()
        })
        .unwrap_or_default();
    let (code, doc, out) = run(dir, "plan");
    assert_eq!(code, 0, "{out}");
    let left: Vec<i64> = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"]["k"].as_i64().unwrap())
        .collect();
    assert_eq!(left, failed, "only refused rows remain\n{doc}");
    failed
}

#[tokio::test]
async fn edge_values_converge_into_sqlite_and_mariadb() {
    let pg = postgres("edges", EDGE_SOURCE).await;
    // SQLite: every column by its declared affinity.
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE d (k INTEGER PRIMARY KEY, i2 INTEGER, i8 INTEGER, n38 NUMERIC, f4 REAL, f8 REAL, t TEXT,
                         vc TEXT, ch TEXT, day TEXT, ts TEXT, tz TEXT, flag BOOLEAN, id TEXT, raw BLOB);",
    )
    .await;
    f.write("job.toml", &job(&pg, "sqlite://app.db"));
    let failed = converge(f.dir.path()).await;
    // SQLite holds no infinity in REAL? It does; nothing is refused here but what SQLite would alter.
    assert!(failed.iter().all(|k| [1, 2, 4].contains(k)), "{failed:?}");
    // MariaDB.
    let my = mariadb(
        "edges",
        "CREATE TABLE d (k INT PRIMARY KEY, i2 SMALLINT, i8 BIGINT, n38 DECIMAL(38,10), f4 FLOAT, f8 DOUBLE,
                         t TEXT, vc VARCHAR(12), ch CHAR(5), day DATE, ts DATETIME(6), tz TIMESTAMP(6) NULL,
                         flag BOOLEAN, id CHAR(36), raw BLOB);",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&pg, &my));
    let failed = converge(f.dir.path()).await;
    // MariaDB cannot hold year 1 timestamps or infinities: those rows fail, every run.
    assert!(failed.contains(&4), "{failed:?}");
}

#[tokio::test]
async fn csv_and_sqlite_sources_converge_into_postgres() {
    let pg = postgres(
        "from_files",
        "CREATE TABLE d (k int PRIMARY KEY, amount numeric(10,2), ratio real, at timestamp(0), label char(6), day date);",
    )
    .await;
    let f = Folder::new();
    f.write(
        "s.csv",
        "k,amount,ratio,at,label,day\n1,10.005,0.1,2024-01-01 10:00:00.5,ab,2024-01-01 00:00:00\n2,,1e-30,2024-01-01T10:00:00Z,,2024-01-02\n3,-0.004,3,1999-12-31 23:59:59.4,abcdef,2024-01-03 12:30:00\n",
    );
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"s.csv\"\n[destination]\nurl = \"{pg}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
    );
    assert_eq!(converge(f.dir.path()).await, Vec::<i64>::new());
    let f = Folder::new();
    f.sqlite(
        "src.db",
        "CREATE TABLE s (k INTEGER, amount REAL, ratio REAL, at TEXT, label TEXT, day TEXT);
         INSERT INTO s VALUES (1, 10.125, 0.1, '2024-01-01 10:00:00.500', 'xy  ', '2024-01-01'),
                              (2, 1e-30, NULL, '2024-01-01 10:00:00', '', '2024-01-02 23:59:59');",
    )
    .await;
    pg_exec(&pg, "DELETE FROM d").await;
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"sqlite://src.db\"\ntable = \"s\"\n[destination]\nurl = \"{pg}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
    );
    assert_eq!(converge(f.dir.path()).await, Vec::<i64>::new());
}

/// (PostgreSQL source type, MariaDB destination type, kind of value)
const MARIADB_RULE_PAIRS: &[(&str, &str, &str)] = &[
    ("timestamp", "DATETIME(3)", "ts"),
    ("timestamp", "DATETIME", "ts"),
    ("numeric", "DECIMAL(14,3)", "num"),
    ("float8", "FLOAT", "float"),
    ("float8", "DECIMAL(12,2)", "float"),
    ("text", "VARCHAR(8)", "text"),
    ("text", "CHAR(6)", "text"),
];

/// The rule against MariaDB: a row is planned as changed if and only if applying it to a copy
/// of the destination changes what the copy stores (or the copy refuses it).
async fn check_rule_mariadb(
    pg: &str,
    my: &str,
    pair: usize,
    rows: &[(Option<String>, Option<String>)],
) {
    use sqlx::{Connection, Executor, Row};
    let (source_type, destination_type, _) = MARIADB_RULE_PAIRS[pair];
    let mut pg_conn = sqlx::PgConnection::connect(pg).await.unwrap();
    pg_conn
        .execute(sqlx::AssertSqlSafe(format!(
            "SET TimeZone = 'UTC'; DROP TABLE IF EXISTS s; CREATE TABLE s (k int, v {source_type});"
        )))
        .await
        .unwrap();
    let mut my_conn = sqlx::MySqlConnection::connect(my).await.unwrap();
    my_conn
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS d, d2; CREATE TABLE d (k INT PRIMARY KEY, v {destination_type} NULL);"
        )))
        .await
        .unwrap();
    let literal = |v: &Option<String>| match v {
        None => "NULL".to_string(),
        Some(v) => format!("'{}'", v.replace('\'', "''")),
    };
    for (k, (s, d)) in rows.iter().enumerate() {
        let insert = format!("INSERT INTO s VALUES ({k}, {})", literal(s));
        if pg_conn.execute(sqlx::AssertSqlSafe(insert)).await.is_err() {
            pg_conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO s VALUES ({k}, NULL)"
                )))
                .await
                .unwrap();
        }
        // MariaDB in strict mode refuses what does not fit; then the row holds NULL.
        let insert = format!("INSERT INTO d VALUES ({k}, {})", literal(d));
        if my_conn.execute(sqlx::AssertSqlSafe(insert)).await.is_err() {
            my_conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO d VALUES ({k}, NULL)"
                )))
                .await
                .unwrap();
        }
    }
    my_conn
        .execute("CREATE TABLE d2 LIKE d; INSERT INTO d2 SELECT * FROM d;")
        .await
        .unwrap();
    let f = Folder::new();
    f.write("job.toml", &job(pg, my));
    f.write(
        "copy.toml",
        &job(pg, my).replace("table = \"d\"", "table = \"d2\""),
    );
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{rows:?}\n{err}");
    let planned: std::collections::BTreeSet<i64> = json(&out)["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"]["k"].as_i64().unwrap())
        .collect();
    let (code, out, err) = recon(&["apply", "copy.toml", "-f", "json"], f.dir.path());
    assert!(code == 0 || code == 3, "{rows:?}\n{out}{err}");
    let failed: std::collections::BTreeSet<i64> = json(&out)["failed_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"]["k"].as_i64().unwrap())
        .collect();
    let mut expected: std::collections::BTreeSet<i64> = sqlx::query(
        "SELECT d.k FROM d JOIN d2 ON d.k = d2.k WHERE NOT (CAST(CAST(d.v AS CHAR) AS BINARY) <=> CAST(CAST(d2.v AS CHAR) AS BINARY))",
    )
    .fetch_all(&mut my_conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<i32, _>(0) as i64)
    .collect();
    expected.extend(&failed);
    assert_eq!(
        planned, expected,
        "{source_type} → MariaDB {destination_type}\n{rows:?}\n{out}"
    );
}

#[test]
fn changed_means_writing_would_change_what_mariadb_stores() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = runtime.block_on(postgres("rule_my", "SELECT 1"));
    let my = runtime.block_on(mariadb("rule_my", "SELECT 1"));
    let mut runner = TestRunner::new(Config {
        cases: 20,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..MARIADB_RULE_PAIRS.len()).prop_flat_map(|pair| {
        let kind = MARIADB_RULE_PAIRS[pair].2;
        let row = (
            proptest::option::weighted(0.9, value(kind)),
            proptest::option::weighted(0.8, value(kind)),
            any::<bool>(),
        )
            .prop_map(|(s, other, same)| {
                let d = if same { s.clone() } else { other };
                (s, d)
            });
        (Just(pair), proptest::collection::vec(row, 1..20))
    });
    runner
        .run(&strategy, |(pair, rows)| {
            runtime.block_on(check_rule_mariadb(&pg, &my, pair, &rows));
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn a_parquet_source_converges_into_postgres_and_mariadb() {
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::prelude::SessionContext;
    let f = Folder::new();
    let ctx = SessionContext::new();
    let df = ctx
        .sql(
            "SELECT * FROM (VALUES
               (1, CAST(10.125 AS DECIMAL(12,3)), CAST(0.1 AS DOUBLE), CAST('2024-01-01 10:00:00.123456' AS TIMESTAMP), 'ab  ', true),
               (2, CAST(-0.005 AS DECIMAL(12,3)), CAST(1e-30 AS DOUBLE), CAST('1999-12-31 23:59:59.999999' AS TIMESTAMP), '', false),
               (3, NULL, NULL, NULL, NULL, NULL))
             AS t(k, amount, ratio, at, label, flag)",
        )
        .await
        .unwrap();
    df.write_parquet(
        f.path("s.parquet").to_str().unwrap(),
        DataFrameWriteOptions::new().with_single_file_output(true),
        None,
    )
    .await
    .unwrap();
    let pg = postgres(
        "from_parquet",
        "CREATE TABLE d (k int PRIMARY KEY, amount numeric(12,2), ratio real, at timestamp(3), label varchar(2), flag bool);",
    )
    .await;
    let my = mariadb(
        "from_parquet",
        "CREATE TABLE d (k INT PRIMARY KEY, amount DECIMAL(12,2), ratio FLOAT, at DATETIME(3), label VARCHAR(2), flag BOOLEAN);",
    )
    .await;
    for url in [&pg, &my] {
        f.write(
            "job.toml",
            &format!("[source]\nurl = \"s.parquet\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
        );
        assert_eq!(converge(f.dir.path()).await, Vec::<i64>::new(), "{url}");
    }
}
