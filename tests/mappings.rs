//! Writes that could land on the wrong data (issue "Nothing silently wrong"): mappings that
//! overwrite, keys equal under the destination's collation, names that collide with recon's
//! staging objects or hold quotes, row counts that must be what the destination changed, and two
//! job files sharing one name. Each test ends with a check in the destination's own SQL.

use crate::support::*;

fn job(source: &str, source_table: &str, destination: &str, table: &str, extra: &str) -> String {
    let table_line = |t: &str| match t {
        "" => String::new(),
        t => format!("table = '{t}'\n"),
    };
    format!(
        "[source]\nurl = \"{source}\"\n{}[destination]\nurl = \"{destination}\"\n{}[match]\nk = \"k\"\n{extra}",
        table_line(source_table),
        table_line(table)
    )
}

fn apply_json(dir: &std::path::Path, job: &str) -> (i32, serde_json::Value, String) {
    let (code, out, err) = recon(&["apply", job, "-f", "json"], dir);
    let doc = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, doc, format!("{out}{err}"))
}

fn failed(doc: &serde_json::Value) -> Vec<(String, String)> {
    doc["failed_rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["key"]["k"].to_string(),
                        r["error"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn two_job_files_with_one_name_are_refused_naming_both() {
    let f = Folder::new();
    f.sqlite("app.db", "CREATE TABLE d (k TEXT PRIMARY KEY, v INT);")
        .await;
    f.write("s.csv", "k,v\na,1\n");
    let text = format!(
        "name = \"orders\"\n{}",
        job("s.csv", "", "sqlite://app.db", "d", "")
    );
    f.write("first.toml", &text);
    f.write("second.toml", &text);
    let (code, _, out) = apply_json(f.dir.path(), "first.toml");
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = recon(&["apply", "second.toml"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("first.toml") && err.contains("second.toml"),
        "{err}"
    );
    let (code, _, err) = recon(&["state", "get", "second.toml"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    // A job file that moved takes its name (and state) with it.
    std::fs::remove_file(f.path("first.toml")).unwrap();
    let (code, _, out) = apply_json(f.dir.path(), "second.toml");
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn apply_counts_rows_the_destination_changed_not_rows_sent() {
    let url = postgres(
        "affected",
        "CREATE TABLE d (k text PRIMARY KEY, v int);
         INSERT INTO d VALUES ('free', 1), ('frozen', 1);
         CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER keep BEFORE UPDATE ON d FOR EACH ROW WHEN (old.k = 'frozen') EXECUTE FUNCTION keep();",
    )
    .await;
    let f = Folder::new();
    f.write("s.csv", "k,v\nfree,2\nfrozen,2\n");
    f.write("job.toml", &job("s.csv", "", &url, "d", ""));
    let (code, doc, out) = apply_json(f.dir.path(), "job.toml");
    assert_eq!(code, 3, "{out}");
    assert_eq!(doc["applied"]["update"], 1, "{doc}");
    let failed = failed(&doc);
    assert_eq!(failed.len(), 1, "{doc}");
    assert_eq!(failed[0].0, "\"frozen\"");
    assert!(
        failed[0].1.contains("changed no destination row"),
        "{failed:?}"
    );
    let expected = "VALUES ('free', 2), ('frozen', 1)";
    assert_eq!(pg_difference(&url, "SELECT k, v FROM d", expected).await, 0);
}

#[tokio::test]
async fn a_key_matching_two_destination_rows_is_not_overwritten() {
    let f = Folder::new();
    f.write("s.csv", "k,v\na,5\nA,2\n");
    // SQLite finds rows through its key map, comparing keys exactly as the diff does: `a` alone.
    f.sqlite(
        "app.db",
        "CREATE TABLE d (k TEXT COLLATE NOCASE, v INT); INSERT INTO d VALUES ('a', 1), ('A', 2);",
    )
    .await;
    f.write("lite.toml", &job("s.csv", "", "sqlite://app.db", "d", ""));
    let (code, _, out) = apply_json(f.dir.path(), "lite.toml");
    assert_eq!(code, 0, "{out}");
    let rows = sqlite_text(
        &f.path("app.db"),
        "SELECT k || '=' || v FROM d ORDER BY k COLLATE BINARY",
    )
    .await;
    assert_eq!(rows, [Some("A=2".into()), Some("a=5".into())]);
    // PostgreSQL matches by key under the column's collation: `a` meets two rows, so nothing is
    // written and the row fails.
    let pg = postgres(
        "two_rows",
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE d (k text COLLATE ci, v int); INSERT INTO d VALUES ('a', 1), ('A', 2);",
    )
    .await;
    f.write("pg.toml", &job("s.csv", "", &pg, "d", ""));
    let (code, doc, out) = apply_json(f.dir.path(), "pg.toml");
    assert_eq!(code, 3, "{out}");
    let failed = failed(&doc);
    assert!(
        failed[0].1.contains("matches 2 destination rows"),
        "{failed:?}"
    );
    let expected = "VALUES ('a', 1), ('A', 2)";
    assert_eq!(
        pg_difference(&pg, "SELECT k::text, v FROM d", expected).await,
        0
    );
}

/// Source `a`=1 and `A`=2 into a destination holding `a`=1 under a case-insensitive key: `A`
/// fails with a message, `a` keeps its value.
async fn assert_collision_refused(dir: &std::path::Path, job: &str) {
    let (code, doc, out) = apply_json(dir, job);
    assert_eq!(code, 3, "{out}");
    let failed = failed(&doc);
    assert_eq!(failed.len(), 1, "{doc}");
    assert_eq!(failed[0].0, "\"A\"", "{doc}");
    // The message is recon's (the key exists under the collation) or the database's own unique
    // constraint, refused before anything is overwritten.
    let why = &failed[0].1;
    assert!(
        why.contains("collation") || why.contains("UNIQUE constraint"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn keys_colliding_under_the_destination_collation_are_never_merged() {
    let f = Folder::new();
    f.write("s.csv", "k,v\na,1\nA,2\n");
    // SQLite, COLLATE NOCASE.
    f.sqlite(
        "app.db",
        "CREATE TABLE d (k TEXT PRIMARY KEY COLLATE NOCASE, v INT); INSERT INTO d VALUES ('a', 1);",
    )
    .await;
    f.write("lite.toml", &job("s.csv", "", "sqlite://app.db", "d", ""));
    assert_collision_refused(f.dir.path(), "lite.toml").await;
    let rows = sqlite_text(&f.path("app.db"), "SELECT k || '=' || v FROM d").await;
    assert_eq!(rows, [Some("a=1".into())]);
    // MariaDB, its default case-insensitive collation.
    let my = mariadb(
        "collation",
        "CREATE TABLE d (k VARCHAR(10) PRIMARY KEY, v INT); INSERT INTO d VALUES ('a', 1);",
    )
    .await;
    f.write("my.toml", &job("s.csv", "", &my, "d", ""));
    assert_collision_refused(f.dir.path(), "my.toml").await;
    // PostgreSQL, a nondeterministic ICU collation.
    let pg = postgres(
        "collation",
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE d (k text COLLATE ci PRIMARY KEY, v int); INSERT INTO d VALUES ('a', 1);",
    )
    .await;
    f.write("pg.toml", &job("s.csv", "", &pg, "d", ""));
    assert_collision_refused(f.dir.path(), "pg.toml").await;
    assert_eq!(
        pg_difference(&pg, "SELECT k::text, v FROM d", "VALUES ('a', 1)").await,
        0
    );
    // With deletes on, the old key goes first and the new one takes its place.
    f.write("s2.csv", "k,v\nA,2\n");
    f.write(
        "swap.toml",
        &job(
            "s2.csv",
            "",
            "sqlite://app.db",
            "d",
            "[write]\ndeletes = true\n",
        ),
    );
    let (code, _, out) = apply_json(f.dir.path(), "swap.toml");
    assert_eq!(code, 0, "{out}");
    let rows = sqlite_text(&f.path("app.db"), "SELECT k || '=' || v FROM d").await;
    assert_eq!(rows, [Some("A=2".into())]);
    assert_plan_empty(f.dir.path(), "swap.toml");
    // The same where the key has no index and rows are found through a key map: the deleted
    // key leaves the map before the insert looks.
    pg_exec(
        &pg,
        "CREATE TABLE e (k text COLLATE ci, v int); INSERT INTO e VALUES ('a', 1), ('b', 5);",
    )
    .await;
    let my = mariadb(
        "swap",
        "CREATE TABLE e (id INT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(10), v INT); INSERT INTO e (k, v) VALUES ('a', 1), ('b', 5);",
    )
    .await;
    f.write("s3.csv", "k,v\nA,2\nb,6\n");
    for (name, url) in [("pgswap", &pg), ("myswap", &my)] {
        let job_file = format!("{name}.toml");
        f.write(
            &job_file,
            &job("s3.csv", "", url, "e", "[write]\ndeletes = true\n"),
        );
        let (code, doc, out) = apply_json(f.dir.path(), &job_file);
        assert_eq!(code, 0, "{name}: {out}");
        assert_eq!(
            doc["applied"],
            serde_json::json!({"insert": 1, "update": 1, "delete": 1}),
            "{name}"
        );
        assert_plan_empty(f.dir.path(), &job_file);
    }
}

#[test]
fn two_source_columns_into_one_destination_column_is_a_job_error() {
    let f = Folder::new();
    f.write("s.csv", "k,a,b\n1,2,3\n");
    let text = "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"d.csv\"\n[match]\nk = \"code\"\n[compare]\na = \"total\"\nb = \"total\"\nc = \"code\"\n";
    f.write("job.toml", text);
    let (code, _, err) = recon(&["check", "job.toml"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("job.toml:9:")
            && err.contains("`compare.a` (line 8)")
            && err.contains("`total`"),
        "{err}"
    );
    assert!(
        err.contains("job.toml:10:") && err.contains("key column `code`") && err.contains("line 6"),
        "{err}"
    );
}

#[tokio::test]
async fn a_table_name_with_a_quote_reads_that_table() {
    let url = postgres(
        "quoted_name",
        r#"CREATE TABLE weird (k text); INSERT INTO weird VALUES ('wrong');
           CREATE TABLE "we""ird" (k text); INSERT INTO "we""ird" VALUES ('right');
           CREATE TABLE d (k text PRIMARY KEY);"#,
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, "we\"ird", &url, "d", ""));
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "jsonl"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"right\"") && !out.contains("wrong"), "{out}");
}

#[tokio::test]
async fn destination_tables_named_like_staging_objects_are_written() {
    let url = postgres(
        "staging_names",
        "CREATE TABLE recon_w (k text PRIMARY KEY, v int); CREATE TABLE recon_staging (k text PRIMARY KEY, v int);
         INSERT INTO recon_w VALUES ('a', 0), ('gone', 9); INSERT INTO recon_staging VALUES ('a', 0);",
    )
    .await;
    let my = mariadb(
        "staging_names",
        "CREATE TABLE w (k VARCHAR(10) PRIMARY KEY, v INT); INSERT INTO w VALUES ('a', 0);",
    )
    .await;
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE w (k TEXT PRIMARY KEY, v INT); INSERT INTO w VALUES ('a', 0), ('gone', 9);",
    )
    .await;
    f.write("s.csv", "k,v\na,1\nb,2\n");
    let deletes = "[write]\ndeletes = true\n";
    for (name, url, table) in [
        ("pg1", url.as_str(), "recon_w"),
        ("pg2", url.as_str(), "recon_staging"),
        ("my", my.as_str(), "w"),
        ("lite", "sqlite://app.db", "w"),
    ] {
        let file = format!("{name}.toml");
        f.write(&file, &job("s.csv", "", url, table, deletes));
        let (code, _, out) = apply_json(f.dir.path(), &file);
        assert_eq!(code, 0, "{name}: {out}");
        assert_plan_empty(f.dir.path(), &file);
    }
    for table in ["recon_w", "recon_staging"] {
        let rows = format!("SELECT k, v FROM {table}");
        assert_eq!(
            pg_difference(&url, &rows, "VALUES ('a', 1), ('b', 2)").await,
            0,
            "{table}"
        );
    }
    let rows = sqlite_text(&f.path("app.db"), "SELECT k || '=' || v FROM w ORDER BY k").await;
    assert_eq!(rows, [Some("a=1".into()), Some("b=2".into())]);
}
