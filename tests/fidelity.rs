//! Values that used to change on the way with exit 0 (issue "Nothing silently wrong"): each test
//! applies, then checks the destination against the expected rows with the destination's own SQL
//! (`EXCEPT ALL` both ways, or a SQLite query), then that the next plan is empty.

use crate::support::*;

fn job(source: &str, source_table: &str, destination: &str, table: &str) -> String {
    let table_line = |t: &str| match t {
        "" => String::new(),
        t => format!("table = \"{t}\"\n"),
    };
    format!(
        "[source]\nurl = \"{source}\"\n{}[destination]\nurl = \"{destination}\"\n{}[match]\nk = \"k\"\n",
        table_line(source_table),
        table_line(table)
    )
}

fn apply(dir: &std::path::Path, job: &str) -> (i32, serde_json::Value, String) {
    let (code, out, err) = recon(&["apply", job, "-f", "json"], dir);
    let doc = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, doc, format!("{out}{err}"))
}

#[tokio::test]
async fn csv_and_json_sources_keep_exact_decimals_and_big_integers() {
    let url = postgres(
        "file_numbers",
        "CREATE TABLE d1 (k text PRIMARY KEY, amount numeric, big numeric);
         CREATE TABLE d2 (k text PRIMARY KEY, amount numeric, big numeric);",
    )
    .await;
    let f = Folder::new();
    f.write(
        "s.csv",
        "k,amount,big\na,1234567890123456789012345678.1234567890,12345678901234567890\nb,0.1,1\n",
    );
    f.write(
        "s.json",
        r#"[{"k": "a", "amount": 1234567890123456789012345678.1234567890, "big": 12345678901234567890},
            {"k": "b", "amount": 0.1, "big": 1}]"#,
    );
    f.write("csv.toml", &job("s.csv", "", &url, "d1"));
    f.write("json.toml", &job("s.json", "", &url, "d2"));
    let expected = "VALUES ('a', 1234567890123456789012345678.1234567890::numeric, 12345678901234567890::numeric), ('b', 0.1, 1)";
    for (file, table) in [("csv.toml", "d1"), ("json.toml", "d2")] {
        let (code, _, out) = apply(f.dir.path(), file);
        assert_eq!(code, 0, "{out}");
        let select = format!("SELECT k, amount, big FROM {table}");
        assert_eq!(pg_difference(&url, &select, expected).await, 0, "{file}");
        assert_plan_empty(f.dir.path(), file);
    }
}

#[tokio::test]
async fn sqlite_mixed_integers_and_reals_keep_every_digit() {
    let url = postgres(
        "sqlite_mixed",
        "CREATE TABLE d (k text PRIMARY KEY, n numeric);",
    )
    .await;
    let f = Folder::new();
    f.sqlite(
        "s.db",
        "CREATE TABLE s (k TEXT, n NUMERIC);
         INSERT INTO s VALUES ('a', 9007199254740993), ('b', 123456789012345678), ('c', 0.5), ('d', 2.25), ('e', NULL);",
    )
    .await;
    f.write("job.toml", &job("sqlite://s.db", "s", &url, "d"));
    let (code, _, out) = apply(f.dir.path(), "job.toml");
    assert_eq!(code, 0, "{out}");
    let expected = "VALUES ('a', 9007199254740993::numeric), ('b', 123456789012345678), ('c', 0.5), ('d', 2.25), ('e', NULL)";
    assert_eq!(pg_difference(&url, "SELECT k, n FROM d", expected).await, 0);
    assert_plan_empty(f.dir.path(), "job.toml");
}

#[tokio::test]
async fn postgres_infinity_and_far_dates_are_kept_not_nulled() {
    let url = postgres(
        "infinity",
        "CREATE TABLE s (k int, ts timestamp, tz timestamptz, day date);
         CREATE TABLE d (k int PRIMARY KEY, ts timestamp, tz timestamptz, day date);
         INSERT INTO s VALUES (1, 'infinity', 'infinity', 'infinity'), (2, '-infinity', '-infinity', '-infinity'),
                              (3, '2024-01-01 10:00', '2024-01-01 10:00+00', '270000-01-01'), (4, NULL, NULL, NULL);
         CREATE TABLE s2 (k int, ts timestamp);
         INSERT INTO s2 VALUES (1, 'infinity'), (2, '-infinity'), (3, '2024-01-01 10:00');",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, "s", &url, "d"));
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"-infinity\"") && out.contains("270000-01-01"),
        "{out}"
    );
    let (code, _, out) = apply(f.dir.path(), "job.toml");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        pg_difference(&url, "SELECT * FROM s", "SELECT * FROM d").await,
        0
    );
    assert_plan_empty(f.dir.path(), "job.toml");

    // SQLite has no infinite timestamps: those rows fail with a message, never land as NULL.
    f.sqlite("app.db", "CREATE TABLE d (k INTEGER PRIMARY KEY, ts TEXT);")
        .await;
    f.write("lite.toml", &job(&url, "s2", "sqlite://app.db", "d"));
    let (code, doc, out) = apply(f.dir.path(), "lite.toml");
    assert_eq!(code, 3, "{out}");
    let failed: Vec<String> = doc["failed_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["key"]["k"],
                r["error"].as_str().unwrap().contains("infinite")
            )
        })
        .collect();
    assert_eq!(failed, ["1:true", "2:true"], "{doc}");
    let rows = sqlite_text(
        &f.path("app.db"),
        "SELECT k || '=' || ifnull(ts, 'NULL') FROM d",
    )
    .await;
    assert_eq!(rows, [Some("3=2024-01-01 10:00:00".to_string())]);
}

#[tokio::test]
async fn postgres_to_sqlite_negative_zero_nan_and_long_numerics_fail_the_row() {
    let url = postgres(
        "to_sqlite",
        "CREATE TABLE s (k int, f float8, n numeric);
         INSERT INTO s VALUES (1, '-0', 1), (2, 'NaN', 1), (3, 1.5, 123456789012345678901234567890123456), (4, 2.5, 12.25);",
    )
    .await;
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE d (k INTEGER PRIMARY KEY, f REAL, n NUMERIC);",
    )
    .await;
    f.write("job.toml", &job(&url, "s", "sqlite://app.db", "d"));
    let (code, doc, out) = apply(f.dir.path(), "job.toml");
    assert_eq!(code, 3, "{out}");
    let errors: Vec<String> = doc["failed_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 3, "{doc}");
    assert!(errors[0].contains("-0"), "{errors:?}");
    assert!(errors[1].contains("NaN"), "{errors:?}");
    assert!(errors[2].contains("15 significant digits"), "{errors:?}");
    let rows = sqlite_text(&f.path("app.db"), "SELECT k || ':' || f || ':' || n FROM d").await;
    assert_eq!(rows, [Some("4:2.5:12.25".to_string())]);
}

#[tokio::test]
async fn unconstrained_numeric_of_39_digits_is_written_whole() {
    let url = postgres(
        "numeric39",
        "CREATE TABLE s (k int, n numeric); CREATE TABLE d (k int PRIMARY KEY, n numeric);
         INSERT INTO s VALUES (1, 123456789012345678901234567890123456789), (2, 1e38),
                              (3, 0.000000000000000000000000000001), (4, -99.5);
         CREATE TABLE s3 (k int, n numeric);
         INSERT INTO s3 VALUES (1, 123456789012345678901234567890123456789), (2, 1e-42);",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, "s", &url, "d"));
    let (code, _, out) = apply(f.dir.path(), "job.toml");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        pg_difference(&url, "SELECT * FROM s", "SELECT * FROM d").await,
        0
    );
    assert_plan_empty(f.dir.path(), "job.toml");
    // 39 integer digits at scale 42 need 81: refused, naming the column, never cut.
    f.write("wide.toml", &job(&url, "s3", &url, "d"));
    let (code, _, err) = recon(&["plan", "wide.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("column `n`") && err.contains("76 digits"),
        "{err}"
    );
}

#[tokio::test]
async fn numeric_38_10_and_mixed_scales_are_exact() {
    // 10,000 rows cross a batch boundary: the first batch holds 30-digit integers, the second
    // values at scale 10, so the column needs 40 digits once merged.
    let url = postgres(
        "numeric_scales",
        "CREATE TABLE s (k int, fixed numeric(38,10), loose numeric);
         CREATE TABLE d (k int PRIMARY KEY, fixed numeric(38,10), loose numeric);
         INSERT INTO s SELECT g, 1234567890123456789012345678.1234567890,
           CASE WHEN g <= 9000 THEN 123456789012345678901234567890 ELSE 1.1234567890 END
         FROM generate_series(1, 10000) g;",
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, "s", &url, "d"));
    let (code, doc, out) = apply(f.dir.path(), "job.toml");
    assert_eq!(code, 0, "{out}");
    assert_eq!(doc["applied"]["insert"], 10_000);
    assert_eq!(
        pg_difference(&url, "SELECT * FROM s", "SELECT * FROM d").await,
        0
    );
    assert_plan_empty(f.dir.path(), "job.toml");
}

#[tokio::test]
async fn zoned_text_timestamp_into_postgres_timestamp_converges() {
    let url = postgres(
        "zoned_text",
        "CREATE TABLE d (k text PRIMARY KEY, at timestamp); INSERT INTO d VALUES ('a', '2024-01-01 10:00:00');",
    )
    .await;
    let f = Folder::new();
    f.sqlite(
        "s.db",
        "CREATE TABLE s (k TEXT, at TEXT); INSERT INTO s VALUES ('a', '2024-01-01 10:00:00+02');",
    )
    .await;
    f.write("job.toml", &job("sqlite://s.db", "s", &url, "d"));
    let (code, doc, out) = apply(f.dir.path(), "job.toml");
    assert_eq!(code, 0, "{out}");
    assert_eq!(doc["applied"]["update"], 1, "{doc}");
    let at = "SELECT count(*) FROM d WHERE at = '2024-01-01 08:00:00'";
    assert_eq!(pg_count(&url, at).await, 1);
    assert_plan_empty(f.dir.path(), "job.toml");
}
