//! Hostile inputs: a damaged, locked, read-only or future state store; the schema changing
//! between runs; identifiers that try SQL injection; bad files; a credential canary in every
//! place a credential can go. Each ends in a clear message and exit code, and a destination
//! that converges on the next healthy run.

use std::path::Path;

use crate::support::*;

fn orders(f: &Folder) {
    let (code, _, err) = recon(&["init", "."], f.dir.path());
    assert_eq!(code, 0, "{err}");
}

async fn destination_rows(f: &Folder) -> Vec<Option<String>> {
    sqlite_text(
        &f.path("app.db"),
        "SELECT code || ':' || coalesce(total_price, 'NULL') FROM destination_order ORDER BY code",
    )
    .await
}

#[tokio::test]
async fn a_damaged_future_or_locked_state_store_is_refused_never_recreated() {
    let f = Folder::new();
    orders(&f);
    let state = f.path(".recon/state.db");
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let converged = destination_rows(&f).await;
    // The destination drifts again, so an apply that went ahead would write.
    sqlite_exec(
        &f.path("app.db"),
        "UPDATE destination_order SET total_price = 1 WHERE code = 'A-1'",
    )
    .await;
    let before = destination_rows(&f).await;
    // The whole store in its file (the last run's pages may still be in its write-ahead log).
    sqlite_exec(&state, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    let good = std::fs::read(&state).unwrap();
    assert!(good.len() > 4096, "a store of several pages");
    // A store's file as it is before its first checkpoint (the rest in its write-ahead log):
    // one page, an empty database's.
    let fresh = f.path("fresh.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&fresh)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    let first_page = std::fs::read(&fresh).unwrap();
    assert_eq!(first_page.len(), 4096);
    for (damage, expect) in [
        ("truncated", "the state store file is damaged"),
        // SQLite alone reads this as an empty database, which migrations would fill afresh.
        ("first page cut", "the state store file is damaged"),
        ("garbage", "the state store file is damaged"),
    ] {
        let bytes: Vec<u8> = match damage {
            "truncated" => good[..good.len() / 3].to_vec(),
            "first page cut" => first_page[..1365].to_vec(),
            _ => (0..8192u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        };
        for side in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{side}", state.display()));
        }
        std::fs::write(&state, &bytes).unwrap();
        let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
        assert_eq!(code, 1, "{damage}: {err}");
        assert!(
            err.contains(expect) && err.contains("move it aside"),
            "{damage}: {err}"
        );
        assert_eq!(
            std::fs::read(&state).unwrap(),
            bytes,
            "{damage}: the store was re-created"
        );
        assert_eq!(
            destination_rows(&f).await,
            before,
            "{damage}: written without a state store"
        );
    }
    // A store written by a newer recon (a migration this one does not know).
    std::fs::write(&state, &good).unwrap();
    let mut store = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        state.display()
    ))
    .await
    .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) VALUES (9999, 'future', CURRENT_TIMESTAMP, 1, x'00', 0)")
        .execute(&mut store)
        .await
        .unwrap();
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("written by a newer version of recon"), "{err}");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 9999")
        .execute(&mut store)
        .await
        .unwrap();
    // Another process holds the store's write lock: refused within the busy timeout, not hung.
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut store)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds the state store's write lock"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    sqlx::query("ROLLBACK").execute(&mut store).await.unwrap();
    drop(store);
    assert_eq!(destination_rows(&f).await, before);
    // Healthy again: the next run converges.
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(destination_rows(&f).await, converged);
}

#[tokio::test]
async fn a_read_only_state_store_is_refused_with_a_remedy() {
    let f = Folder::new();
    orders(&f);
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let state = f.path(".recon/state.db");
    let root = unsafe_free_uid() == 0;
    let run = |args: &[&str]| -> (i32, String) {
        if !root {
            let (code, _, err) = recon(args, f.dir.path());
            return (code, err);
        }
        // Root writes through any mode bits: run as `nobody`, from a copy it may execute.
        let bin = f.path("recon-bin");
        std::fs::copy(env!("CARGO_BIN_EXE_recon"), &bin).unwrap();
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&bin)
            .args(args)
            .current_dir(f.dir.path())
            .output()
            .expect("runuser");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    if root {
        // Everything belongs to `nobody` except the state store file, which it may only read.
        std::process::Command::new("chown")
            .args(["-R", "nobody"])
            .arg(f.dir.path())
            .status()
            .unwrap();
        std::process::Command::new("chown")
            .arg("root")
            .arg(&state)
            .status()
            .unwrap();
        chmod(f.dir.path(), 0o755);
    }
    chmod(&state, 0o444);
    let (code, err) = run(&["apply", "orders.toml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("read-only for this user"), "{err}");
}

/// The process's user id, from /proc (no unsafe code).
fn unsafe_free_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

#[tokio::test]
async fn the_schema_changing_between_runs_is_refused_before_any_write_or_kept_exact() {
    let url = postgres(
        "drift_schema",
        "CREATE TABLE s (k int PRIMARY KEY, name text, qty int);
         INSERT INTO s VALUES (1, 'a', 1), (2, 'b', 2);
         CREATE TABLE d (k int PRIMARY KEY, name text, qty int);",
    )
    .await;
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nname = \"name\"\nqty = \"qty\"\n"),
    );
    assert_eq!(recon(&["apply", "job.toml"], f.dir.path()).0, 0);
    // A mapped column renamed: refused, naming it, before anything is written.
    pg_exec(
        &url,
        "ALTER TABLE d RENAME COLUMN qty TO quantity; INSERT INTO s VALUES (3, 'c', 3);",
    )
    .await;
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("destination column `qty` is not in the destination snapshot"),
        "{err}"
    );
    assert_eq!(pg_count(&url, "SELECT count(*) FROM d").await, 2);
    // Back, plus a column the job does not map: ignored.
    pg_exec(&url, "ALTER TABLE d RENAME COLUMN quantity TO qty; ALTER TABLE d ADD COLUMN note text DEFAULT 'x';").await;
    assert_eq!(recon(&["apply", "job.toml"], f.dir.path()).0, 0);
    // Widened: exact. Narrowed below a source value: that row fails with the reason, the rest lands.
    pg_exec(&url, "ALTER TABLE d ALTER COLUMN qty TYPE bigint; UPDATE s SET qty = 40000 WHERE k = 1; UPDATE s SET qty = 7 WHERE k = 2;").await;
    assert_eq!(recon(&["apply", "job.toml"], f.dir.path()).0, 0);
    assert_eq!(
        pg_count(&url, "SELECT qty::bigint FROM d WHERE k = 1").await,
        40000
    );
    pg_exec(&url, "UPDATE d SET qty = 1 WHERE k = 1; ALTER TABLE d ALTER COLUMN qty TYPE smallint; UPDATE s SET qty = 8 WHERE k = 2;").await;
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 3, "{out}{err}");
    let failed = json(&out)["failed_rows"].to_string();
    assert!(failed.contains("out of range"), "{failed}");
    assert_eq!(
        pg_count(&url, "SELECT qty::bigint FROM d WHERE k = 1").await,
        1,
        "never stored cut"
    );
    assert_eq!(
        pg_count(&url, "SELECT qty::bigint FROM d WHERE k = 2").await,
        8
    );
    // Healthy again (the column wide enough): converges.
    pg_exec(&url, "ALTER TABLE d ALTER COLUMN qty TYPE int;").await;
    assert_eq!(recon(&["apply", "job.toml"], f.dir.path()).0, 0);
    assert_plan_empty(f.dir.path(), "job.toml");
}

const EVIL_TABLE: &str = "o\"; DROP TABLE sentinel; --";
const EVIL_COLUMN: &str = "qty') OR 1=1; DROP TABLE sentinel; --";

#[tokio::test]
async fn identifiers_that_try_sql_injection_are_quoted_and_the_sentinel_survives() {
    let q = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let (t, c) = (q(EVIL_TABLE), q(EVIL_COLUMN));
    let script = format!(
        "CREATE TABLE sentinel (x int); INSERT INTO sentinel VALUES (1);
         CREATE TABLE s (k int PRIMARY KEY, {c} int); INSERT INTO s VALUES (1, 1), (2, 2);
         CREATE TABLE {t} (k int PRIMARY KEY, {c} int); INSERT INTO {t} VALUES (2, 20), (3, 3);"
    );
    // The table as a TOML literal string (no quoting of its own), the column as a TOML key.
    let job = |url: &str| {
        format!(
            "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = '{EVIL_TABLE}'\n[match]\nk = \"k\"\n[compare]\n\"{EVIL_COLUMN}\" = \"{EVIL_COLUMN}\"\n[write]\ndeletes = true\n"
        )
    };
    let pg = postgres("injection", &script).await;
    let f = Folder::new();
    let db = f.sqlite("evil.db", &script).await;
    for url in [pg.clone(), format!("sqlite://{}", db.display())] {
        f.write("job.toml", &job(&url));
        let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
        assert_eq!(code, 0, "{url}: {out}{err}");
        assert_eq!(
            json(&out)["applied"],
            serde_json::json!({"insert": 1, "update": 1, "delete": 1})
        );
        assert_plan_empty(f.dir.path(), "job.toml");
    }
    assert_eq!(pg_count(&pg, "SELECT count(*) FROM sentinel").await, 1);
    assert_eq!(
        sqlite_text(&db, "SELECT CAST(count(*) AS TEXT) FROM sentinel").await,
        vec![Some("1".into())]
    );
}

#[tokio::test]
async fn a_key_value_cannot_walk_an_http_path() {
    use crate::support::scripted::{Reply, serve};
    let server = serve(|_, seen| match seen.method.as_str() {
        "GET" => Reply::Json(200, r#"{"items": []}"#.into()),
        _ => Reply::Json(200, "{}".into()),
    });
    let f = Folder::new();
    let db = f
        .sqlite(
            "s.db",
            "CREATE TABLE s (code TEXT PRIMARY KEY, qty INTEGER); INSERT INTO s VALUES ('../../admin?drop=1#x', 1);",
        )
        .await;
    f.write(
        "job.toml",
        &format!(
            "[source]\nurl = \"sqlite://{}\"\ntable = \"s\"\n[destination]\nurl = \"{}/items\"\nid = \"id\"\n[destination.http]\nrecords = \"/items\"\ncreate = {{ method = \"PUT\", path = \"/{{code}}\" }}\n[match]\ncode = \"code\"\n[compare]\nqty = \"qty\"\n",
            db.display(),
            server.url
        ),
    );
    let (code, out, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let put = server
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("a PUT");
    assert_eq!(put.target, "/items/%2E%2E%2F%2E%2E%2Fadmin%3Fdrop%3D1%23x");
    assert_eq!(put.body, r#"{"code":"../../admin?drop=1#x","qty":1}"#);
}

#[tokio::test]
async fn bad_files_are_clear_errors_or_documented_readings() {
    let f = Folder::new();
    f.sqlite(
        "app.db",
        "CREATE TABLE d (k INTEGER PRIMARY KEY, name TEXT); INSERT INTO d VALUES (1, 'a'), (2, 'b');",
    )
    .await;
    let job = |file: &str| {
        format!(
            "[source]\nurl = \"{file}\"\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nname = \"name\"\n[write]\ndeletes = true\n"
        )
    };
    let cases: [(&str, &[u8], i32, &str); 5] = [
        ("ragged.csv", b"k,name\n1,a\n2,b,extra\n", 1, "line 3"),
        (
            "latin1.csv",
            b"k,name\n1,caf\xe9\n",
            1,
            "invalid UTF-8 in field 1",
        ),
        (
            "dup.csv",
            b"k,k\n1,a\n",
            1,
            "column `k` appears twice in the header",
        ),
        ("bom.csv", b"\xef\xbb\xbfk,name\n1,a\n2,b\n", 0, ""),
        (
            "mixed.json",
            br#"[{"k": 1, "name": "a"}, {"k": "two", "name": 5}]"#,
            1,
            "cannot compare source `k` (text)",
        ),
    ];
    for (file, bytes, expected, message) in cases {
        std::fs::write(f.path(file), bytes).unwrap();
        f.write("job.toml", &job(file));
        let (code, _, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
        assert_eq!(code, expected, "{file}: {err}");
        assert!(err.contains(message), "{file}: {err}");
        if expected == 1 && file.ends_with(".csv") {
            assert!(err.contains(file), "{file}: the file is named: {err}");
        }
    }
    // A header and no rows is an empty source: it never deletes unless told to.
    std::fs::write(f.path("header.csv"), "k,name\n").unwrap();
    f.write("job.toml", &job("header.csv"));
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the source snapshot is empty"), "{err}");
    assert_eq!(
        sqlite_text(&f.path("app.db"), "SELECT CAST(count(*) AS TEXT) FROM d").await,
        vec![Some("2".into())]
    ); // The file mended (the BOM one, as written): the next run converges.
    f.write("job.toml", &job("bom.csv"));
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert_plan_empty(f.dir.path(), "job.toml");
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_with(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_with(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn a_canary_password_never_reaches_plans_reports_logs_or_state() {
    // The test server trusts loopback, so any password connects: the canary is carried, not checked.
    let base = postgres("canary", "CREATE TABLE s (k int PRIMARY KEY, v text); INSERT INTO s VALUES (1, 'a'), (2, 'b'); CREATE TABLE d (k int PRIMARY KEY, v text);").await;
    let canary = "Cn4ry/P@ss:w0rd?";
    let encoded = "Cn4ry%2FP%40ss%3Aw0rd%3F";
    let url = base.replacen("postgres@", &format!("postgres:{encoded}@"), 1);
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
    );
    let mut outputs = String::new();
    for args in [
        vec!["plan", "job.toml", "--save", "p.plan", "-vvv"],
        vec!["plan", "--show", "p.plan", "-f", "json"],
        vec!["audit", "job.toml", "-f", "html", "-o", "a.html", "-vvv"],
        vec!["audit", "job.toml", "-f", "openmetrics", "-o", "a.prom"],
        vec!["audit", "job.toml", "-f", "markdown"],
        vec![
            "apply", "job.toml", "--plan", "p.plan", "-f", "json", "-vvv",
        ],
        vec!["state", "history", "job.toml", "-f", "json"],
        vec!["check", "job.toml"],
    ] {
        let (code, out, err) = recon(&args, f.dir.path());
        assert_eq!(code, 0, "{args:?}: {err}");
        outputs.push_str(&out);
        outputs.push_str(&err);
    }
    for needle in [canary, encoded, "Cn4ry"] {
        assert!(!outputs.contains(needle), "{needle} in the output");
        let found: Vec<String> = files_with(f.dir.path(), needle)
            .into_iter()
            .filter(|p| !p.ends_with("job.toml"))
            .collect();
        assert_eq!(found, Vec::<String>::new(), "{needle} in a file");
    }
    assert_eq!(pg_count(&base, "SELECT count(*) FROM d").await, 2);
    assert_plan_empty(f.dir.path(), "job.toml");
}

#[tokio::test]
async fn nul_bytes_and_text_that_is_not_utf8_are_named_never_altered() {
    let pg = postgres("nul", "CREATE TABLE d (k int PRIMARY KEY, t text);").await;
    let f = Folder::new();
    let db = f
        .sqlite(
            "s.db",
            "CREATE TABLE s (k INTEGER PRIMARY KEY, t TEXT);
             INSERT INTO s VALUES (1, 'ok'), (2, 'nul' || char(0) || 'byte'), (3, CAST(x'66ff6f' AS TEXT));",
        )
        .await;
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"sqlite://{}\"\ntable = \"s\"\n[destination]\nurl = \"{pg}\"\ntable = \"d\"\n[match]\nk = \"k\"\n", db.display()),
    );
    // Text that is not UTF-8 stops the read, naming the column, the byte and the row.
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("column `t` holds text that is not UTF-8 (byte 0xff at 1, in the row whose `k` is \"3\")"), "{err}");
    assert_eq!(pg_count(&pg, "SELECT count(*) FROM d").await, 0);
    // A NUL character fails its row alone, with the reason; the rest is written.
    sqlite_exec(&db, "DELETE FROM s WHERE k = 3").await;
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        json(&out)["failed_rows"][0]["error"]
            .as_str()
            .unwrap()
            .contains("NUL character"),
        "{out}"
    );
    assert_eq!(pg_count(&pg, "SELECT count(*) FROM d").await, 1);
    // Fixed at the source: converges.
    sqlite_exec(&db, "UPDATE s SET t = 'nulbyte' WHERE k = 2").await;
    assert_eq!(recon(&["apply", "job.toml"], f.dir.path()).0, 0);
    assert_plan_empty(f.dir.path(), "job.toml");
}

#[tokio::test]
async fn time_zones_set_differently_on_client_and_servers_change_nothing() {
    let rows = "(1, '2024-03-10 02:30:00', '2024-03-10 02:30:00+00'), (2, '2024-10-27 02:30:00', '2024-10-27 01:30:00+00'),
                (3, '0001-01-01 00:00:00', '0001-01-01 00:00:00+00'), (4, 'infinity', '-infinity')";
    let src = postgres(
        "tz_source",
        &format!("CREATE TABLE s (k int PRIMARY KEY, ts timestamp, tz timestamptz); SET TimeZone = 'UTC'; INSERT INTO s VALUES {rows};"),
    )
    .await;
    let dst = postgres(
        "tz_destination",
        "CREATE TABLE d (k int PRIMARY KEY, ts timestamp, tz timestamptz);",
    )
    .await;
    let db = |url: &str| url.rsplit('/').next().unwrap().to_string();
    pg_exec(
        &src,
        &format!(
            "ALTER DATABASE {} SET timezone = 'Pacific/Kiritimati'",
            db(&src)
        ),
    )
    .await;
    pg_exec(
        &dst,
        &format!(
            "ALTER DATABASE {} SET timezone = 'America/St_Johns'",
            db(&dst)
        ),
    )
    .await;
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{src}\"\ntable = \"s\"\n[destination]\nurl = \"{dst}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
    );
    let env = [("TZ", "Asia/Kathmandu")];
    let (code, out, err) = recon_env(&["apply", "job.toml"], f.dir.path(), &env);
    assert_eq!(code, 0, "{out}{err}");
    let read = |url: String, table: &'static str| async move {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe("SET TimeZone = 'UTC'"))
            .execute(&mut conn)
            .await
            .unwrap();
        let q = format!(
            "SELECT string_agg(k || '|' || ts::text || '|' || tz::text, ';' ORDER BY k) FROM {table}"
        );
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(q))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(read(dst.clone(), "d").await, read(src.clone(), "s").await);
    let (code, out, err) = recon_env(&["plan", "job.toml", "--exit-code"], f.dir.path(), &env);
    assert_eq!(code, 0, "not converged: {out}{err}");
}

#[tokio::test]
async fn a_full_disk_under_the_state_store_loses_nothing() {
    let f = Folder::new();
    orders(&f);
    // The state store on a 512 KB tmpfs (tests/run.sh runs as root, or with passwordless sudo).
    let disk = f.path("small-disk");
    std::fs::create_dir(&disk).unwrap();
    let mount = |args: &[&str]| -> bool {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .is_ok_and(|s| s.success())
    };
    let target = disk.display().to_string();
    let mounted = mount(&["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", &target])
        || mount(&[
            "sudo",
            "-n",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=512k",
            "tmpfs",
            &target,
        ]);
    assert!(mounted, "mounting a tmpfs needs root or passwordless sudo");
    // Unmounted however the test ends.
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let done = std::process::Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if !done {
                let _ = std::process::Command::new("sudo")
                    .args(["-n", "umount", &self.0])
                    .status();
            }
        }
    }
    let _unmount = Unmount(target.clone());
    let job = std::fs::read_to_string(f.path("orders.toml")).unwrap();
    f.write(
        "orders.toml",
        &format!("{job}\n[state]\nurl = \"small-disk/state.db\"\n"),
    );
    let (code, _, err) = recon(&["apply", "orders.toml", "--limit", "0"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    // Fill the disk, and give the next run something to write.
    let filler = disk.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 << 20]);
    sqlite_exec(
        &f.path("app.db"),
        "UPDATE destination_order SET total_price = 1",
    )
    .await;
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    let _ = std::fs::remove_file(&filler);
    let freed = code;
    assert_eq!(freed, 1, "{err}");
    assert!(
        err.contains("disk holding the state store is full"),
        "{err}"
    );
    // Space again: the next run converges and the store is whole.
    let (code, _, err) = recon(&["apply", "orders.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let state = disk.join("state.db");
    let check = sqlite_text(&state, "PRAGMA integrity_check").await;
    assert_eq!(check, [Some("ok".to_string())]);
    // Every source row written again (Z-9 is not in the source; deletes are off).
    let rows = sqlite_text(
        &f.path("app.db"),
        "SELECT CAST(count(*) AS TEXT) FROM destination_order WHERE total_price = 1 AND code <> 'Z-9'",
    )
    .await;
    assert_eq!(rows, vec![Some("0".into())]);
}

#[tokio::test]
async fn mariadb_identifiers_that_try_sql_injection_are_quoted() {
    const TABLE: &str = "o`; DROP TABLE sentinel; --";
    const COLUMN: &str = "qty'); DROP TABLE sentinel; --";
    let q = |name: &str| format!("`{}`", name.replace('`', "``"));
    let url = mariadb(
        "injection",
        &format!(
            "CREATE TABLE sentinel (x int); INSERT INTO sentinel VALUES (1);
             CREATE TABLE s (k int PRIMARY KEY, {c} int); INSERT INTO s VALUES (1, 1), (2, 2);
             CREATE TABLE {t} (k int PRIMARY KEY, {c} int); INSERT INTO {t} VALUES (2, 20), (3, 3);",
            t = q(TABLE),
            c = q(COLUMN)
        ),
    )
    .await;
    let f = Folder::new();
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = '{TABLE}'\n[match]\nk = \"k\"\n[compare]\n\"{COLUMN}\" = \"{COLUMN}\"\n[write]\ndeletes = true\n"),
    );
    let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        json(&out)["applied"],
        serde_json::json!({"insert": 1, "update": 1, "delete": 1})
    );
    assert_plan_empty(f.dir.path(), "job.toml");
    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sentinel")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn tls_certificates_are_verified_even_on_loopback() {
    let f = Folder::new();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(f.dir.path())
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // A self-signed HTTPS server that would answer with an empty listing.
    let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"items": []}'
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('cert.pem', 'key.pem')
s.socket = c.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.timeout = 30
s.handle_request()
"#;
    let mut server = std::process::Command::new("python3")
        .args(["-c", script])
        .current_dir(f.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let port = port.trim().to_string();
    f.sqlite(
        "s.db",
        "CREATE TABLE s (code TEXT PRIMARY KEY, qty INTEGER); INSERT INTO s VALUES ('A', 1);",
    )
    .await;
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"sqlite://s.db\"\ntable = \"s\"\n[destination]\nurl = \"https://127.0.0.1:{port}/items\"\nid = \"id\"\n[destination.http]\nrecords = \"/items\"\nretries = 0\n[match]\ncode = \"code\"\n"),
    );
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 1, "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
