//! Test helpers: temporary job folders, real SQLite files, per-test databases on the PostgreSQL and
//! MariaDB servers that tests/run.sh starts, and the `recon` binary.

#![allow(dead_code)]

pub mod proxy;
pub mod scripted;

use std::path::{Path, PathBuf};
use std::process::Command;

use recon::{Changeset, Job, Progress};
use serde_json::Value;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

/// A temporary folder holding a job file and its data.
pub struct Folder {
    pub dir: tempfile::TempDir,
}

impl Folder {
    pub fn new() -> Folder {
        Folder {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write fixture");
        path
    }

    /// Write `job.toml` and load it.
    pub fn job(&self, toml: &str) -> Job {
        let path = self.write("job.toml", toml);
        Job::load(&path).unwrap_or_else(|e| panic!("job should be valid: {e}: {e:?}"))
    }

    /// Create a SQLite file from SQL statements.
    pub async fn sqlite(&self, name: &str, script: &str) -> PathBuf {
        let path = self.path(name);
        sqlite_run(&path, true, script).await;
        path
    }
}

/// Plan a job, listing every change.
pub async fn plan(job: &Job) -> Changeset {
    recon::plan(job, None, &Progress::hidden())
        .await
        .unwrap_or_else(|e| panic!("plan failed: {e}: {e:?}"))
}

/// Plan a job that must fail.
pub async fn plan_error(job: &Job) -> recon::Error {
    match recon::plan(job, None, &Progress::hidden()).await {
        Ok(c) => panic!("plan should fail, got {:?}", c.summary),
        Err(e) => e,
    }
}

/// (insert, update, delete, unchanged)
pub fn counts(c: &Changeset) -> (u64, u64, u64, u64) {
    let s = c.summary;
    (s.insert, s.update, s.delete, s.unchanged)
}

/// The JSON document of a changeset, as `plan --format json` prints it.
pub fn doc(c: &Changeset) -> Value {
    recon::report::document(c)
}

/// The change for `key` (first key column's value as text).
pub fn change<'a>(c: &'a Changeset, key: &str) -> &'a recon::Change {
    c.changes
        .iter()
        .find(|ch| recon::changeset::display(&ch.key[0]) == key)
        .unwrap_or_else(|| panic!("no change for key {key}: {:?}", c.changes))
}

/// Names of the changed columns of one change.
pub fn changed_columns(c: &Changeset, ch: &recon::Change) -> Vec<String> {
    c.compared_columns
        .iter()
        .zip(&ch.changed)
        .filter(|(_, x)| **x)
        .map(|(n, _)| n.clone())
        .collect()
}

fn server_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with `bash tests/run.sh`, which starts the servers")
    })
}

fn unique(name: &str) -> String {
    format!("recon_{}_{}", name, std::process::id())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("url with a database");
    format!("{base}/{db}")
}

/// A fresh PostgreSQL database for one test, set up by `script`; returns its url.
pub async fn postgres(name: &str, script: &str) -> String {
    let admin = server_url("RECON_TEST_PG_URL");
    let db = unique(name);
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to test postgres");
    conn.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .await
        .expect("drop db");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .expect("create db");
    let url = with_database(&admin, &db);
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to test db");
    sqlx::raw_sql(AssertSqlSafe(script.to_string()))
        .execute(&mut conn)
        .await
        .expect("postgres script");
    url
}

/// A fresh MariaDB database for one test, set up by `script`; returns its url.
pub async fn mariadb(name: &str, script: &str) -> String {
    let admin = server_url("RECON_TEST_MYSQL_URL");
    let db = unique(name);
    let mut conn = sqlx::MySqlConnection::connect(&admin)
        .await
        .expect("connect to test mariadb");
    conn.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .await
        .expect("drop db");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .expect("create db");
    let url = with_database(&admin, &db);
    let mut conn = sqlx::MySqlConnection::connect(&url)
        .await
        .expect("connect to test db");
    sqlx::raw_sql(AssertSqlSafe(script.to_string()))
        .execute(&mut conn)
        .await
        .expect("mariadb script");
    url
}

/// Run the `recon` binary; returns (exit code, stdout, stderr).
pub fn recon(args: &[&str], dir: &Path) -> (i32, String, String) {
    recon_env(args, dir, &[])
}

/// Run the `recon` binary with extra environment variables.
pub fn recon_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recon"))
        .args(args)
        .current_dir(dir)
        .env_remove("RECON_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run recon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The bundled orders example folder.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A `recon` process stopped at a pause point (`RECON_PAUSE_AT`), to be killed or waited on.
pub struct Paused {
    pub child: std::process::Child,
}

/// Start `recon args` with `RECON_PAUSE_AT=point` and wait (at most 60 s) until it says it paused.
pub fn recon_paused(args: &[&str], dir: &Path, point: &str) -> Paused {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_recon"))
        .args(args)
        .current_dir(dir)
        .env("RECON_PAUSE_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn recon");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("recon: paused at") => return Paused { child },
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                panic!("recon did not reach pause point {point} within 60 s (or exited)");
            }
        }
    }
}

impl Paused {
    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(mut self) {
        self.child.kill().expect("kill recon");
        self.child.wait().expect("reap recon");
    }
}

/// Parse a command's JSON output.
pub fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// One integer from a query on a PostgreSQL database.
pub async fn pg_count(url: &str, query: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar::<_, i64>(AssertSqlSafe(query.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// Run statements on a PostgreSQL database.
pub async fn pg_exec(url: &str, script: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(AssertSqlSafe(script.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"));
}

/// Rows of `a` not in `b` plus rows of `b` not in `a`, computed by PostgreSQL itself
/// (`EXCEPT ALL` both ways): the independent check that two relations hold the same rows.
pub async fn pg_difference(url: &str, a: &str, b: &str) -> i64 {
    pg_count(
        url,
        &format!(
            "SELECT (SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) x) + (SELECT count(*) FROM (({b}) EXCEPT ALL ({a})) y)"
        ),
    )
    .await
}

/// Run statements on a SQLite file.
pub async fn sqlite_exec(path: &Path, script: &str) {
    sqlite_run(path, false, script).await;
}

/// Run statements on a SQLite file, created first when `create`.
async fn sqlite_run(path: &Path, create: bool, script: &str) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .connect()
        .await
        .expect("open sqlite");
    sqlx::raw_sql(AssertSqlSafe(script.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    conn.close().await.expect("close sqlite");
}

/// One value from a query on a SQLite file, as text (NULL as `None`).
pub async fn sqlite_text(path: &Path, query: &str) -> Vec<Option<String>> {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .expect("open sqlite");
    sqlx::query_scalar::<_, Option<String>>(AssertSqlSafe(query.to_string()))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// `plan` must now find nothing to change: the destination converged.
pub fn assert_plan_empty(dir: &Path, job: &str) {
    let (code, out, err) = recon(&["plan", job, "-f", "json", "--limit", "5"], dir);
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let s = &doc["summary"];
    assert_eq!(
        (
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "not converged: {doc}"
    );
}
