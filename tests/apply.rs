//! `recon apply` on real SQLite, PostgreSQL and MariaDB destinations: convergence, per-row failure
//! isolation and retry, crashes (SIGKILL) at several points, the lock, and the guards.

use crate::support::*;
use std::path::Path;

const SOURCE: &str =
    "reference,price,item_count\nA-1,12.50,3\nA-2,20.00,1\nA-3,7.25,2\nA-4,15.00,5\nA-5,,1\n";

fn job_text(url: &str, extra: &str) -> String {
    format!(
        "name = \"orders\"\n[source]\nurl = \"s.csv\"\n[destination]\nurl = \"{url}\"\ntable = \"destination_order\"\nid = \"id\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"total_price\"\nitem_count = \"number_of_items\"\n[write]\n{extra}\n"
    )
}

fn plan_summary(dir: &Path) -> serde_json::Value {
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "json", "--limit", "0"], dir);
    assert_eq!(code, 0, "{err}");
    json(&out)["summary"].clone()
}

fn assert_converged(dir: &Path) {
    let s = plan_summary(dir);
    assert_eq!(
        (
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s}"
    );
}

const SQLITE_DEST: &str = "CREATE TABLE destination_order (id INTEGER PRIMARY KEY, code TEXT NOT NULL,
    total_price NUMERIC CHECK (total_price IS NULL OR total_price >= 0), number_of_items INTEGER NOT NULL);
  INSERT INTO destination_order VALUES (1, 'A-1', 10, 3), (2, 'A-2', 20, 1), (3, 'A-3', 7.25, 4), (4, 'Z-9', 99, 1), (5, 'A-5', 3, 1);";

async fn sqlite_folder(extra: &str) -> Folder {
    let f = Folder::new();
    f.sqlite("app.db", SQLITE_DEST).await;
    f.write("s.csv", SOURCE);
    f.write("job.toml", &job_text("sqlite://app.db", extra));
    f
}

#[tokio::test]
async fn sqlite_apply_converges_and_reports_json() {
    let f = sqlite_folder("deletes = true").await;
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(
        doc["applied"],
        serde_json::json!({"insert": 1, "update": 3, "delete": 1})
    );
    assert_eq!(doc["failed"], 0);
    assert_eq!(doc["summary"]["update"], 3);
    assert_converged(f.dir.path());
    // A second apply has nothing to do.
    let (code, out, _) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["applied"],
        serde_json::json!({"insert": 0, "update": 0, "delete": 0})
    );
    // The state store is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(f.path(".recon/state.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn deletes_happen_only_when_enabled() {
    let f = sqlite_folder("deletes = false").await;
    let (code, out, _) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("applied: 1 inserted, 3 updated, 0 deleted (1 not deleted: `[write] deletes` is off); 0 failed"), "{out}");
    let s = plan_summary(f.dir.path());
    assert_eq!(
        (
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(0), Some(0), Some(1))
    );
}

#[tokio::test]
async fn a_refused_row_fails_alone_is_retried_and_clears_once_fixed() {
    let f = sqlite_folder("deletes = true\nbatch_size = 100").await;
    // A-2 breaks the CHECK, A-6 the NOT NULL; the other rows must still be written.
    f.write(
        "s.csv",
        &format!("{SOURCE}A-6,1.00,\nA-7,2.00,2\n").replace("A-2,20.00,1", "A-2,-1,1"),
    );
    for run in 1..=3 {
        let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
        assert_eq!(code, 3, "run {run}: {out}{err}");
        let doc = json(&out);
        assert_eq!(doc["failed"], 2, "{doc}");
        let rows = doc["failed_rows"].as_array().unwrap();
        let a2 = rows
            .iter()
            .find(|r| r["key"]["code"] == "A-2")
            .expect("A-2 recorded");
        assert!(a2["error"].as_str().unwrap().contains("CHECK"), "{a2}");
        assert_eq!(a2["runs"], run);
        assert_eq!(a2["persistent"], run >= 3);
        let a6 = rows
            .iter()
            .find(|r| r["key"]["code"] == "A-6")
            .expect("A-6 recorded");
        assert!(a6["error"].as_str().unwrap().contains("NOT NULL"), "{a6}");
        if run == 1 {
            assert_eq!(
                doc["applied"],
                serde_json::json!({"insert": 2, "update": 3, "delete": 1})
            );
        }
    }
    let (_, table, _) = recon(&["apply", "job.toml"], f.dir.path());
    assert!(
        table.contains("persistently failing (4 runs in a row)"),
        "{table}"
    );
    let s = plan_summary(f.dir.path());
    assert_eq!(
        (s["insert"].as_u64(), s["update"].as_u64()),
        (Some(1), Some(1)),
        "only the refused rows remain: {s}"
    );
    // Fix the source: the next run writes them and records no failures.
    f.write("s.csv", &format!("{SOURCE}A-6,1.00,6\nA-7,2.00,2\n"));
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["failed"], 0);
    assert_converged(f.dir.path());
    let (_, history, _) = recon(
        &["state", "history", "job.toml", "-f", "json"],
        f.dir.path(),
    );
    let runs = json(&history);
    assert_eq!(runs.as_array().unwrap().len(), 5);
    assert_eq!(runs[0]["outcome"], "ok");
    assert_eq!(runs[1]["outcome"], "partial");
}

#[tokio::test]
async fn max_changes_trips_before_any_write() {
    let f = sqlite_folder("max_changes = 2").await;
    let before = std::fs::read(f.path("app.db")).unwrap();
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("max_changes: 4 rows would change"), "{err}");
    assert!(
        err.contains("--max-changes 4") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(f.path("app.db")).unwrap(),
        before,
        "nothing may be written"
    );
    let (code, _, err) = recon(&["apply", "job.toml", "--max-changes", "80%"], f.dir.path());
    assert_eq!(code, 0, "4 of 5 destination rows is within 80%: {err}");
    let s = plan_summary(f.dir.path());
    assert_eq!(
        (
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(0), Some(0), Some(1)),
        "deletes are off"
    );
}

#[tokio::test]
async fn an_empty_source_deletes_nothing_unless_allowed() {
    let f = sqlite_folder("deletes = true").await;
    f.write("s.csv", "reference,price,item_count\n");
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("source snapshot is empty") && err.contains("--allow-empty-source"),
        "{err}"
    );
    let s = plan_summary(f.dir.path());
    assert_eq!(s["destination_rows"], 5);
}

#[tokio::test]
async fn a_second_apply_of_the_same_job_exits_75() {
    let f = sqlite_folder("").await;
    let first = recon_paused(&["apply", "job.toml"], f.dir.path(), "before-write");
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 75, "{err}");
    assert!(err.contains(&format!("pid {}", first.child.id())), "{err}");
    first.kill();
    // The lock died with its holder.
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn sigkill_at_any_point_then_a_clean_run_converges() {
    for point in [
        "before-write",
        "before-batch:2",
        "after-batch:3",
        "before-state",
    ] {
        let f = sqlite_folder("deletes = true\nbatch_size = 1").await;
        recon_paused(&["apply", "job.toml"], f.dir.path(), point).kill();
        let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
        assert_eq!(code, 0, "after a kill at {point}: {err}");
        assert_converged(f.dir.path());
        assert_no_duplicates_sqlite(&f.path("app.db")).await;
    }
}

async fn assert_no_duplicates_sqlite(path: &Path) {
    use sqlx::{ConnectOptions, Row};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    let dup: i64 = sqlx::query("SELECT count(*) FROM (SELECT code FROM destination_order GROUP BY code HAVING count(*) > 1)")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
}

const PG_DEST: &str = "CREATE TABLE destination_order (id serial PRIMARY KEY, code text NOT NULL,
    total_price numeric(10,2) CHECK (total_price >= 0), number_of_items int NOT NULL);
  INSERT INTO destination_order (code, total_price, number_of_items) VALUES ('A-1', 10, 3), ('A-2', 20, 1), ('A-3', 7.25, 4), ('Z-9', 99, 1), ('A-5', 3, 1);";

#[tokio::test]
async fn postgres_apply_isolates_failures_and_survives_sigkill() {
    for (n, point) in ["before-batch:2", "after-batch:2", "before-state"]
        .iter()
        .enumerate()
    {
        let url = postgres(&format!("apply_{n}"), PG_DEST).await;
        let f = Folder::new();
        f.write("s.csv", &format!("{SOURCE}A-6,1.00,\nA-7,2.00,2\n"));
        f.write(
            "job.toml",
            &job_text(&url, "deletes = true\nbatch_size = 2"),
        );
        recon_paused(&["apply", "job.toml"], f.dir.path(), point).kill();
        let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
        assert_eq!(code, 3, "{out}{err}");
        let doc = json(&out);
        assert_eq!(doc["failed"], 1, "{doc}");
        assert!(
            doc["failed_rows"][0]["error"]
                .as_str()
                .unwrap()
                .contains("null value"),
            "{doc}"
        );
        let s = plan_summary(f.dir.path());
        assert_eq!(
            (
                s["insert"].as_u64(),
                s["update"].as_u64(),
                s["delete"].as_u64()
            ),
            (Some(1), Some(0), Some(0)),
            "{s}"
        );
        let (rows, dups) = pg_counts(&url).await;
        assert_eq!((rows, dups), (6, 0));
    }
}

async fn pg_counts(url: &str) -> (i64, i64) {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let row =
        sqlx::query("SELECT count(*), count(*) - count(DISTINCT code) FROM destination_order")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn postgres_types_round_trip_through_apply() {
    let url = postgres(
        "apply_types",
        r#"CREATE TYPE mood AS ENUM ('ok', 'sad');
           CREATE TABLE s ("Key" text, amount numeric(12,3), at timestamptz, day date, tag uuid, doc jsonb, flag bool, feel mood, raw bytea, note text);
           CREATE TABLE d ("Key" text PRIMARY KEY, amount numeric(12,3), at timestamptz, day date, tag uuid, doc jsonb, flag bool, feel mood, raw bytea, note text);
           INSERT INTO s VALUES ('a', 1.005, '2024-03-01 12:00:00.123456+02', '2024-03-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"x": [1, "y"]}', true, 'sad', '\x00ff', 'say "hi", ok'),
                                ('b', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ''),
                                ('c', -2, '1999-12-31 23:59:59+00', '1999-12-31', NULL, 'null', false, 'ok', '\x', E'line\nbreak');
           INSERT INTO d VALUES ('b', 5, now(), now(), NULL, '{}', true, 'ok', '\x01', NULL);"#,
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nKey = \"Key\"\n"));
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        json(&out)["applied"],
        serde_json::json!({"insert": 2, "update": 1, "delete": 0})
    );
    assert_converged(f.dir.path());
}

/// Values the destination's column modifiers would cut or round past its precision, and text it
/// cannot hold, fail row by row with PostgreSQL's own reason: never truncated, never sent half.
#[tokio::test]
async fn postgres_refuses_values_its_columns_would_cut() {
    let url = postgres(
        "apply_cut",
        "CREATE TABLE d (code text PRIMARY KEY, label varchar(3), amount numeric(4,1));
         INSERT INTO d VALUES ('B', 'old', 1.0);",
    )
    .await;
    let f = Folder::new();
    f.write(
        "s.csv",
        "code,label,amount\nA,abcdef,1.5\nB,new,2.0\nC,ok,123456.7\nD,\"x\u{0}y\",1.0\nE,fit,3.5\n",
    );
    f.write("job.toml", &format!("[source]\nurl = \"s.csv\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\ncode = \"code\"\n"));
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 3, "{out}{err}");
    let doc = json(&out);
    assert_eq!(
        doc["applied"],
        serde_json::json!({"insert": 1, "update": 1, "delete": 0}),
        "{doc}"
    );
    let errors: Vec<(String, String)> = doc["failed_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].to_string(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 3, "{doc}");
    let reason = |key: &str| {
        errors
            .iter()
            .find(|(k, _)| k.contains(&format!("\"{key}\"")))
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    };
    assert!(reason("A").contains("too long"), "{errors:?}");
    assert!(reason("C").contains("overflow"), "{errors:?}");
    assert!(!reason("D").is_empty(), "{errors:?}");
    assert_eq!(pg_count(&url, "SELECT count(*) FROM d").await, 2);
    assert_eq!(
        pg_count(&url, "SELECT count(*) FROM d WHERE (code, label, amount) IN (('B', 'new', 2.0), ('E', 'fit', 3.5))").await,
        2
    );
}

const MY_DEST: &str = "CREATE TABLE destination_order (id INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(10) NOT NULL,
    total_price DECIMAL(10,2) CHECK (total_price >= 0), number_of_items INT NOT NULL);
  INSERT INTO destination_order (code, total_price, number_of_items) VALUES ('A-1', 10, 3), ('A-2', 20, 1), ('A-3', 7.25, 4), ('Z-9', 99, 1), ('A-5', 3, 1);";

#[tokio::test]
async fn mariadb_apply_isolates_failures_and_converges() {
    let url = mariadb("apply", MY_DEST).await;
    let f = Folder::new();
    f.write(
        "s.csv",
        &format!("{SOURCE}A-6,1.00,\nA-7,2.00,2\n").replace("A-3,7.25,2", "A-3,-7.25,2"),
    );
    f.write(
        "job.toml",
        &job_text(&url, "deletes = true\nbatch_size = 3"),
    );
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 3, "{out}{err}");
    let doc = json(&out);
    assert_eq!(doc["failed"], 2, "{doc}");
    assert_eq!(
        doc["applied"],
        serde_json::json!({"insert": 2, "update": 2, "delete": 1})
    );
    f.write("s.csv", &format!("{SOURCE}A-6,1.00,6\nA-7,2.00,2\n"));
    recon_paused(&["apply", "job.toml"], f.dir.path(), "after-batch:1").kill();
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert_converged(f.dir.path());
}

#[test]
fn state_values_round_trip() {
    let f = Folder::new();
    f.write(
        "job.toml",
        "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"d.csv\"\n[match]\na = \"a\"\n",
    );
    let dir = f.dir.path();
    assert_eq!(recon(&["state", "get", "job.toml"], dir).1, "");
    for (value, expected) in [
        ("42", "42"),
        (
            "{\"page\": 3, \"cursor\": \"x\"}",
            "{\"page\":3,\"cursor\":\"x\"}",
        ),
        ("2024-01-01 10:00", "\"2024-01-01 10:00\""),
        ("\"quoted\"", "\"quoted\""),
    ] {
        let (code, _, err) = recon(&["state", "set", "job.toml", value], dir);
        assert_eq!(code, 0, "{err}");
        assert_eq!(recon(&["state", "get", "job.toml"], dir).1.trim(), expected);
    }
    recon(&["state", "reset", "job.toml"], dir);
    assert_eq!(recon(&["state", "get", "job.toml"], dir).1, "");
    let (_, history, _) = recon(&["state", "history", "job.toml"], dir);
    assert!(
        history.contains("state reset") && history.contains("state set"),
        "{history}"
    );
}

#[tokio::test]
async fn state_can_live_in_postgres_and_its_lock_spans_machines() {
    // A table of the user's own called `runs` must not meet recon's (they live in schema `recon`).
    let state_url = postgres(
        "state_store",
        "CREATE TABLE runs (x int); INSERT INTO runs VALUES (1);",
    )
    .await;
    let extra = format!("persistent_after = 2\n[state]\nurl = \"{state_url}\"");
    let (a, b) = (sqlite_folder(&extra).await, sqlite_folder(&extra).await);
    for f in [&a, &b] {
        f.write("s.csv", &format!("{SOURCE}A-6,1.00,\n"));
    }
    // Two folders stand for two machines (RECON_HOSTNAME names the second): their file locks
    // differ, the advisory lock does not.
    let other = [("RECON_HOSTNAME", "other-machine")];
    let first = recon_paused(&["apply", "job.toml"], a.dir.path(), "before-write");
    let (code, _, err) = recon_env(&["apply", "job.toml"], b.dir.path(), &other);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("advisory lock"), "{err}");
    first.kill();
    for run in 1..=2 {
        let (code, out, err) =
            recon_env(&["apply", "job.toml", "-f", "json"], b.dir.path(), &other);
        assert_eq!(code, 3, "{err}");
        assert_eq!(json(&out)["failed_rows"][0]["persistent"], run == 2);
    }
    let (_, history, _) = recon(
        &["state", "history", "job.toml", "-f", "json"],
        a.dir.path(),
    );
    assert_eq!(json(&history).as_array().unwrap().len(), 2, "{history}");
    assert!(!a.path(".recon/state.db").exists());
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(&state_url).await.unwrap();
    let user_rows: i64 = sqlx::query("SELECT count(*) FROM public.runs")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(user_rows, 1);
}
