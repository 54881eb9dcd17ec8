//! Incremental mode: the source is read from the watermark (`cursor >= watermark - lag`), rows
//! sharing the watermark's timestamp are never lost, a refused row holds the watermark, and
//! values in state or config cannot reach SQL.

use crate::support::*;
use serde_json::{Value, json};

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn state(dir: &std::path::Path) -> Value {
    let (code, out, err) = recon(&["state", "get", "job.toml"], dir);
    assert_eq!(code, 0, "{err}");
    json_of(&out)
}

fn apply(dir: &std::path::Path) -> (i32, Value) {
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], dir);
    assert!(code == 0 || code == 3, "apply exited {code}: {err}");
    (code, json_of(&out))
}

fn sqlite_job(cursor: &str, lag: &str, extra: &str) -> String {
    format!(
        "[source]\nurl = \"sqlite://app.db\"\ntable = \"s\"\ncursor = \"{cursor}\"\n{lag}\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nv = \"v\"\n[write]\n{extra}\n"
    )
}

async fn exec_sqlite(path: &std::path::Path, sql: &str) {
    use sqlx::{ConnectOptions, Executor};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(sql.to_string()))
        .await
        .unwrap();
}

async fn sqlite_keys(path: &std::path::Path) -> Vec<String> {
    use sqlx::{ConnectOptions, Row};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    let rows = sqlx::query("SELECT k FROM d ORDER BY k")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

#[tokio::test]
async fn an_integer_cursor_reads_only_from_the_watermark() {
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE s (k TEXT, v TEXT, version INTEGER); CREATE TABLE d (k TEXT, v TEXT);
        INSERT INTO s VALUES ('a', 'a1', 1), ('b', 'b1', 2), ('c', 'c1', 3);",
    )
    .await;
    f.write("job.toml", &sqlite_job("version", "", "deletes = true"));
    let (_, doc) = apply(f.dir.path());
    assert_eq!(
        doc["applied"],
        json!({"insert": 3, "update": 0, "delete": 0})
    );
    assert_eq!(state(f.dir.path()), json!({"watermark": 3}));
    // `a` changes without a new version (outside the window: not seen); `b` gets version 5; `e` is new.
    exec_sqlite(
        &f.path("app.db"),
        "UPDATE s SET v = 'a2' WHERE k = 'a'; UPDATE s SET v = 'b2', version = 5 WHERE k = 'b';
        INSERT INTO s VALUES ('e', 'e1', 4); INSERT INTO d VALUES ('zz', 'only in destination');",
    )
    .await;
    let (_, plan, _) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    let plan = json_of(&plan);
    assert_eq!(
        plan["summary"]["source_rows"], 3,
        "the window is version >= 3: {plan}"
    );
    assert_eq!(
        plan["summary"]["delete"], 0,
        "rows outside the window are not deletes"
    );
    let (_, doc) = apply(f.dir.path());
    assert_eq!(
        doc["applied"],
        json!({"insert": 1, "update": 1, "delete": 0})
    );
    assert_eq!(state(f.dir.path()), json!({"watermark": 5}));
    let (_, history, _) = recon(&["state", "history", "job.toml"], f.dir.path());
    assert!(history.contains("watermark 3 → 5"), "{history}");
}

#[tokio::test]
async fn a_refused_row_holds_the_watermark_until_it_is_written() {
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE s (k TEXT, v TEXT, n INTEGER); CREATE TABLE d (k TEXT, v TEXT NOT NULL);
        INSERT INTO s VALUES ('a', 'x', 1), ('b', NULL, 2), ('c', 'z', 3);",
    )
    .await;
    f.write("job.toml", &sqlite_job("n", "", ""));
    let (code, doc) = apply(f.dir.path());
    assert_eq!((code, doc["failed"].clone()), (3, json!(1)));
    assert_eq!(
        state(f.dir.path()),
        json!({"watermark": 2}),
        "held at the refused row"
    );
    let (code, _) = apply(f.dir.path());
    assert_eq!(code, 3, "b is read and tried again");
    exec_sqlite(&f.path("app.db"), "UPDATE s SET v = 'y' WHERE k = 'b'").await;
    let (code, doc) = apply(f.dir.path());
    assert_eq!((code, doc["applied"]["insert"].clone()), (0, json!(1)));
    assert_eq!(state(f.dir.path()), json!({"watermark": 3}));
    assert_eq!(sqlite_keys(&f.path("app.db")).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_late_row_inside_the_lag_is_picked_up() {
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE s (k TEXT, v TEXT, updated_at TEXT); CREATE TABLE d (k TEXT, v TEXT);
        INSERT INTO s VALUES ('a', '1', '2024-03-01 10:00:00'), ('b', '1', '2024-03-01 10:05:00');",
    )
    .await;
    f.write("job.toml", &sqlite_job("updated_at", "lag = \"10m\"", ""));
    apply(f.dir.path());
    assert_eq!(
        state(f.dir.path()),
        json!({"watermark": "2024-03-01 10:05:00"}),
        "second precision kept as read"
    );
    // Committed late: one inside the 10 minutes of lag, one before it.
    exec_sqlite(&f.path("app.db"), "INSERT INTO s VALUES ('late', '1', '2024-03-01 09:58:00'), ('too-late', '1', '2024-03-01 09:50:00')").await;
    let (_, doc) = apply(f.dir.path());
    assert_eq!(doc["applied"]["insert"], 1);
    assert_eq!(sqlite_keys(&f.path("app.db")).await, ["a", "b", "late"]);
}

#[tokio::test]
async fn rows_sharing_the_watermark_timestamp_all_arrive_despite_a_crash() {
    let url = postgres(
        "shared_ts",
        "CREATE TABLE s (k int, v text, updated_at timestamptz);
         INSERT INTO s SELECT g, 'v' || g, '2024-03-01 10:00:00.123456+00' FROM generate_series(1, 5000) g;
         INSERT INTO s SELECT g, 'early', '2024-03-01 09:00:00+00' FROM generate_series(5001, 5010) g;
         CREATE TABLE d (k int PRIMARY KEY, v text);",
    )
    .await;
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\ncursor = \"updated_at\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nv = \"v\"\n[write]\nbatch_size = 1000\n"),
    );
    recon_paused(&["apply", "job.toml"], f.dir.path(), "after-batch:3").kill();
    assert_eq!(
        recon(&["state", "get", "job.toml"], f.dir.path()).1,
        "",
        "no watermark before the run is recorded"
    );
    // Writers work in parallel: the batch that paused and any other already committed count.
    let written = pg_count(&url, "SELECT count(*) FROM d").await;
    assert!(written >= 3000 && written % 1000 == 0, "{written}");
    let (code, doc) = apply(f.dir.path());
    assert_eq!(code, 0);
    assert_eq!(doc["applied"]["insert"], 5010 - written);
    assert_eq!(
        state(f.dir.path()),
        json!({"watermark": "2024-03-01T10:00:00.123456Z"}),
        "microseconds kept"
    );
    // More rows with the very same timestamp, committed after the run: still read.
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        conn.execute("INSERT INTO s SELECT g, 'same', '2024-03-01 10:00:00.123456+00' FROM generate_series(6001, 6100) g").await.unwrap();
    }
    let (_, doc) = apply(f.dir.path());
    assert_eq!(doc["applied"]["insert"], 100);
    assert_eq!(
        doc["summary"]["source_rows"], 5100,
        "the window starts at the watermark, inclusive"
    );
    let (_, plan, _) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(json_of(&plan)["summary"]["insert"], 0);
}

#[tokio::test]
async fn a_csv_source_is_filtered_by_the_watermark_too() {
    let f = Folder::new();
    f.sqlite("app.db", "CREATE TABLE d (k TEXT, v TEXT);").await;
    f.write("s.csv", "k,v,n\na,1,1\nb,1,2\nc,1,3\n");
    f.write("job.toml", "[source]\nurl = \"s.csv\"\ncursor = \"n\"\nlag = 1\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n");
    recon(&["state", "set", "job.toml", "3"], f.dir.path());
    let (_, plan, _) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(json_of(&plan)["summary"]["source_rows"], 2, "n >= 3 - 1");
}

#[tokio::test]
async fn values_in_state_or_config_never_reach_sql() {
    let f = Folder::new();
    f.sqlite("app.db", "CREATE TABLE s (k TEXT, v TEXT, n INTEGER); CREATE TABLE d (k TEXT, v TEXT); INSERT INTO s VALUES ('a', 'x', 1);").await;
    f.write("job.toml", &sqlite_job("n", "", ""));
    let evil = r#"{"watermark": "1; DROP TABLE s; --"}"#;
    assert_eq!(
        recon(&["state", "set", "job.toml", evil], f.dir.path()).0,
        0
    );
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("watermark") && err.contains("recon state set"),
        "{err}"
    );
    // A cursor name is an identifier: quoted, so it can only name a column.
    f.write("job.toml", &sqlite_job("n >= 0; DROP TABLE s; --", "", ""));
    recon(&["state", "set", "job.toml", "1"], f.dir.path());
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    f.write("job.toml", &sqlite_job("n", "", ""));
    recon(&["state", "reset", "job.toml"], f.dir.path());
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "table s is still there: {err}");
}

#[tokio::test]
async fn a_source_query_refers_to_the_state_through_bound_parameters() {
    let url = postgres(
        "state_params",
        "CREATE TABLE s (k int, v text, region text, updated_at timestamptz);
         INSERT INTO s VALUES (1, 'a', 'eu', '2024-03-01 09:00+00'), (2, 'b', 'eu', '2024-03-01 11:00+00'),
                              (3, 'c', 'us', '2024-03-01 11:00+00');
         CREATE TABLE d (k int, v text);",
    )
    .await;
    let f = Folder::new();
    f.sqlite("app.db", "CREATE TABLE s (k INTEGER, v TEXT, region TEXT); INSERT INTO s VALUES (1, 'a', 'eu'), (2, 'b', 'us');").await;
    let pg_query = "SELECT k, v FROM s WHERE ($watermark IS NULL OR updated_at >= $watermark::timestamptz) AND region = $state.region";
    let sqlite_query = "SELECT k, v FROM s WHERE region = $state.region";
    for (source_url, query, expected) in [
        (url.as_str(), pg_query, 1),
        ("sqlite://app.db", sqlite_query, 1),
    ] {
        f.write(
            "job.toml",
            &format!("[source]\nurl = \"{source_url}\"\nquery = \"{query}\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
        );
        let source_rows = |state: &str| {
            assert_eq!(
                recon(&["state", "set", "job.toml", state], f.dir.path()).0,
                0
            );
            let (code, out, err) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
            assert_eq!(code, 0, "{err}");
            json_of(&out)["summary"]["source_rows"].clone()
        };
        assert_eq!(
            source_rows(r#"{"watermark": "2024-03-01T10:00:00Z", "region": "eu"}"#),
            expected
        );
        // A value is only ever a value: this matches no region rather than every row.
        assert_eq!(source_rows(r#"{"region": "eu' OR '1'='1"}"#), 0);
    }
}

#[tokio::test]
async fn the_library_keeps_typed_state() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Default)]
    struct Place {
        page: u32,
        cursor: Option<String>,
    }
    let f = Folder::new();
    let job =
        f.job("[source]\nurl = \"s.csv\"\n[destination]\nurl = \"d.csv\"\n[match]\na = \"a\"\n");
    let mut state = recon::State::open(&job).await.unwrap();
    assert_eq!(state.get_as::<Place>().await.unwrap(), None);
    let place = Place {
        page: 3,
        cursor: Some("abc".into()),
    };
    state.set_as(&place).await.unwrap();
    let mut reopened = recon::State::open(&job).await.unwrap();
    assert_eq!(reopened.get_as::<Place>().await.unwrap(), Some(place));
    assert_eq!(
        recon(&["state", "get", "job.toml"], f.dir.path()).1.trim(),
        r#"{"page":3,"cursor":"abc"}"#
    );
}

#[tokio::test]
async fn the_destination_is_read_only_for_the_window_keys() {
    let url = postgres(
        "narrow",
        r#"CREATE TABLE d ("Code" text, region text, v text);
           INSERT INTO d SELECT 'c' || g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'old' FROM generate_series(1, 1000) g;"#,
    )
    .await;
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE s (code TEXT, region TEXT, v TEXT, n INTEGER);
         INSERT INTO s VALUES ('c1', 'us', 'old', 1), ('c2', 'eu', 'new', 5), ('c3', 'us', 'new', 6), ('c9999', 'eu', 'x', 7);
         CREATE TABLE d (code TEXT, region TEXT, v TEXT);
         INSERT INTO d VALUES ('c1', 'us', 'old'), ('c2', 'eu', 'old'), ('c3', 'us', 'old'), ('c4', 'eu', 'old');",
    )
    .await;
    for (destination, table) in [(url.as_str(), "d"), ("sqlite://app.db", "d")] {
        let code_column = if destination.starts_with("postgres") {
            "Code"
        } else {
            "code"
        };
        f.write(
            "job.toml",
            &format!("[source]\nurl = \"sqlite://app.db\"\ntable = \"s\"\ncursor = \"n\"\n[destination]\nurl = \"{destination}\"\ntable = \"{table}\"\n[match]\ncode = \"{code_column}\"\nregion = \"region\"\n[compare]\nv = \"v\"\n"),
        );
        recon(&["state", "set", "job.toml", "5"], f.dir.path());
        let (code, out, err) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
        assert_eq!(code, 0, "{err}");
        let summary = json_of(&out)["summary"].clone();
        assert_eq!(summary["source_rows"], 3, "{summary}");
        assert_eq!(
            summary["destination_rows"], 2,
            "only c2 and c3 are read from {destination}: {summary}"
        );
        assert_eq!(
            (summary["insert"].clone(), summary["update"].clone()),
            (json!(1), json!(2)),
            "{summary}"
        );
    }
}

#[tokio::test]
async fn mariadb_sources_read_windows_by_date_and_by_timestamp() {
    let url = mariadb(
        "incremental",
        "CREATE TABLE s (k VARCHAR(10), v VARCHAR(10), day DATE, at DATETIME(6), region VARCHAR(5));
         INSERT INTO s VALUES ('a', '1', '2024-03-01', '2024-03-01 10:00:00.000001', 'eu'),
                              ('b', '1', '2024-03-02', '2024-03-02 10:00:00.500000', 'eu'),
                              ('c', '1', '2024-03-03', '2024-03-03 10:00:00', 'us');",
    )
    .await;
    let f = Folder::new();
    f.sqlite("app.db", "CREATE TABLE d (k TEXT, v TEXT);").await;
    let job = |cursor: &str, lag: &str, query: &str| {
        format!(
            "[source]\nurl = \"{url}\"\nquery = \"{query}\"\ncursor = \"{cursor}\"\n{lag}\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nv = \"v\"\n"
        )
    };
    f.write(
        "job.toml",
        &job("day", "lag = \"1d\"", "SELECT k, v, day FROM s"),
    );
    apply(f.dir.path());
    assert_eq!(state(f.dir.path()), json!({"watermark": "2024-03-03"}));
    let (_, plan, _) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(
        json_of(&plan)["summary"]["source_rows"],
        2,
        "day >= 2024-03-03 - 1 day"
    );

    f.write(
        "job.toml",
        &job(
            "at",
            "",
            "SELECT k, v, at FROM s WHERE region = $state.region",
        ),
    );
    recon(
        &[
            "state",
            "set",
            "job.toml",
            r#"{"region": "eu", "watermark": "2024-03-01T10:00:00.000001"}"#,
        ],
        f.dir.path(),
    );
    let (_, plan, _) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(
        json_of(&plan)["summary"]["source_rows"],
        2,
        "both eu rows, the first one exactly at the watermark"
    );
    apply(f.dir.path());
    assert_eq!(
        state(f.dir.path()),
        json!({"region": "eu", "watermark": "2024-03-02T10:00:00.500000"})
    );
}

/// The destination is read only for the window's keys: the keys reach PostgreSQL as a bound
/// value on recon's own COPY connection too, quotes and all.
#[tokio::test]
async fn window_keys_with_quotes_reach_the_destination_as_bound_values() {
    let url = postgres(
        "quoted_keys",
        "CREATE TABLE s (k text, v text, n int);
         INSERT INTO s VALUES ('O''Brien', 'x', 5), ('a\\b', 'y', 5), ('x''); DROP TABLE d; --', 'z', 5), ('old', 'w', 1);
         CREATE TABLE d (k text PRIMARY KEY, v text);
         INSERT INTO d VALUES ('O''Brien', 'changed'), ('old', 'w'), ('other', 'q');",
    )
    .await;
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\ncursor = \"n\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nv = \"v\"\n"),
    );
    assert_eq!(recon(&["state", "set", "job.toml", "3"], f.dir.path()).0, 0);
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "json", "-vv"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let summary = &json_of(&out)["summary"];
    assert_eq!(
        (
            summary["source_rows"].clone(),
            summary["destination_rows"].clone(),
            summary["insert"].clone(),
            summary["update"].clone()
        ),
        (json!(3), json!(1), json!(2), json!(1)),
        "{out}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("own connection") && l.contains("side=destination")),
        "{err}"
    );
    assert_eq!(pg_count(&url, "SELECT count(*) FROM d").await, 3);
}
