//! Reviewed plans: `recon plan --save` then `recon apply --plan` writes exactly what was
//! reviewed — never the source's newer drift, never over a row edited since the review — and is
//! refused whole when the job changed, the plan expired or was applied already; a crash during
//! a plan's apply is finished by applying the same plan again.

use serde_json::Value;

use crate::support::*;

const SOURCE: &str = "CREATE TABLE s (k integer PRIMARY KEY, name text, qty integer);
     INSERT INTO s VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3), (4, 'four', 4), (5, 'five', 5), (6, 'six', 6);
     CREATE TABLE d (k integer PRIMARY KEY, name text, qty integer);
     INSERT INTO d VALUES (1, 'one', 1), (2, 'TWO', 2), (3, 'three', 30), (7, 'seven', 7);";

fn job(url: &str, extra: &str) -> String {
    format!(
        "name = \"reviewed\"\n[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[write]\ndeletes = true\nbatch_size = 1\n{extra}"
    )
}

fn run(f: &Folder, args: &[&str]) -> (i32, Value, String) {
    let (code, out, err) = recon(args, f.dir.path());
    let doc = serde_json::from_str(&out).unwrap_or(Value::Null);
    (code, doc, err)
}

/// The destination's rows as `k:name:qty`, by key.
async fn rows(url: &str) -> Vec<String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let rows = sqlite_text(
            std::path::Path::new(path),
            "SELECT k || ':' || name || ':' || qty FROM d ORDER BY k",
        )
        .await;
        return rows.into_iter().map(|r| r.unwrap_or_default()).collect();
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT k || ':' || name || ':' || qty FROM d ORDER BY k")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn exec(url: &str, sql: &str) {
    match url.strip_prefix("sqlite://") {
        Some(path) => sqlite_exec(std::path::Path::new(path), sql).await,
        None => pg_exec(url, sql).await,
    }
}

/// Save a plan, move the source and edit one destination row after the review, apply the
/// plan: exactly the reviewed changes are written, the edited row is stale, the source's new
/// drift waits for the next run.
async fn reviewed_plan_writes_exactly_the_plan(url: &str) {
    let f = Folder::new();
    f.write("job.toml", &job(url, ""));
    let (code, _, err) = run(
        &f,
        &["plan", "job.toml", "--save", "orders.plan", "--limit", "1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("plan saved to orders.plan (6 changes"),
        "{err}"
    );
    // The saved plan holds every change, whatever --limit listed.
    let (code, shown, _) = run(&f, &["plan", "--show", "orders.plan", "-f", "json"]);
    assert_eq!(code, 0);
    assert_eq!(shown["changes"].as_array().unwrap().len(), 6, "{shown}");
    // After the review: the source moves, and someone fixes row 2 by hand (to another value).
    exec(url, "INSERT INTO s VALUES (8, 'eight', 8); UPDATE s SET qty = 60 WHERE k = 6; UPDATE d SET name = 'Two' WHERE k = 2;").await;
    let (code, doc, err) = run(
        &f,
        &["apply", "job.toml", "--plan", "orders.plan", "-f", "json"],
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(doc["stale"], 1, "{doc}");
    assert_eq!(
        doc["applied"],
        serde_json::json!({"insert": 3, "update": 1, "delete": 1}),
        "{doc}"
    );
    let stale = doc["failed_rows"][0].to_string();
    assert!(
        stale.contains("stale") && stale.contains("name: reviewed TWO, now Two"),
        "{stale}"
    );
    // Row 6 as the plan had it (6), not the source's newer 60; no row 8; row 2 as edited.
    assert_eq!(
        rows(url).await,
        [
            "1:one:1",
            "2:Two:2",
            "3:three:3",
            "4:four:4",
            "5:five:5",
            "6:six:6"
        ]
    );
    // The same plan again: refused, nothing written.
    let (code, _, err) = run(&f, &["apply", "job.toml", "--plan", "orders.plan"]);
    assert_eq!(code, 1);
    assert!(err.contains("it was applied already"), "{err}");
    // The new drift is the next run's: row 8, row 6's qty and the stale row 2.
    let (_, plan, _) = run(&f, &["plan", "job.toml", "-f", "json"]);
    let s = &plan["summary"];
    assert_eq!(
        (
            s["insert"].as_u64(),
            s["update"].as_u64(),
            s["delete"].as_u64()
        ),
        (Some(1), Some(2), Some(0)),
        "{plan}"
    );
}

#[tokio::test]
async fn postgres_reviewed_plan_writes_exactly_the_plan() {
    let url = postgres("reviewed", SOURCE).await;
    reviewed_plan_writes_exactly_the_plan(&url).await;
}

#[tokio::test]
async fn sqlite_reviewed_plan_writes_exactly_the_plan() {
    let f = Folder::new();
    let db = f.sqlite("shop.db", SOURCE).await;
    reviewed_plan_writes_exactly_the_plan(&format!("sqlite://{}", db.display())).await;
}

#[tokio::test]
async fn plans_are_refused_whole_when_the_job_changed_expired_or_were_cut() {
    let f = Folder::new();
    let db = f.sqlite("shop.db", SOURCE).await;
    let url = format!("sqlite://{}", db.display());
    f.write("job.toml", &job(&url, ""));
    assert_eq!(run(&f, &["plan", "job.toml", "--save", "p.plan.gz"]).0, 0);
    let before = rows(&url).await;
    // Another compare option changes what the changeset would be.
    f.write(
        "job.toml",
        &job(&url, "[compare.options]\nname = { ignore_case = true }\n"),
    );
    let (code, _, err) = run(&f, &["apply", "job.toml", "--plan", "p.plan.gz"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the job file changed since the plan was computed"),
        "{err}"
    );
    f.write("job.toml", &job(&url, ""));
    let (code, _, err) = run(
        &f,
        &[
            "apply",
            "job.toml",
            "--plan",
            "p.plan.gz",
            "--max-age",
            "0s",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("more than --max-age"), "{err}");
    // A plan file cut short.
    let (code, _, _) = run(&f, &["plan", "job.toml", "--save", "q.plan"]);
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(f.path("q.plan")).unwrap();
    let cut: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(f.path("q.plan"), cut.join("\n") + "\n").unwrap();
    let (code, _, err) = run(&f, &["apply", "job.toml", "--plan", "q.plan"]);
    assert_eq!(code, 1);
    assert!(err.contains("ends before its end line"), "{err}");
    assert_eq!(rows(&url).await, before, "nothing was written");
    // The compressed plan, unchanged job, in time: applied.
    let (code, _, err) = run(&f, &["apply", "job.toml", "--plan", "p.plan.gz"]);
    assert_eq!(code, 0, "{err}");
    assert_plan_empty(f.dir.path(), "job.toml");
    let mode = std::fs::metadata(f.path("p.plan.gz")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_crash_during_a_plan_apply_is_finished_by_the_same_plan() {
    let url = postgres("reviewed_crash", SOURCE).await;
    let f = Folder::new();
    f.write("job.toml", &job(&url, ""));
    assert_eq!(run(&f, &["plan", "job.toml", "--save", "p.plan"]).0, 0);
    // Killed after the second one-row batch (a batch another writer had in flight may have
    // landed too): some of the plan is written, nothing recorded.
    recon_paused(
        &["apply", "job.toml", "--plan", "p.plan"],
        f.dir.path(),
        "after-batch:2",
    )
    .kill();
    let (code, doc, err) = run(&f, &["apply", "job.toml", "--plan", "p.plan", "-f", "json"]);
    assert_eq!(code, 0, "{err}");
    let done = doc["already_written"].as_u64().unwrap();
    assert!((2..=3).contains(&done), "{doc}");
    let a = &doc["applied"];
    let written = a["insert"].as_u64().unwrap()
        + a["update"].as_u64().unwrap()
        + a["delete"].as_u64().unwrap();
    assert_eq!(written + done, 6, "{doc}");
    assert_eq!(doc["stale"], 0, "{doc}");
    assert_eq!(
        rows(&url).await,
        [
            "1:one:1",
            "2:two:2",
            "3:three:3",
            "4:four:4",
            "5:five:5",
            "6:six:6"
        ]
    );
    assert_plan_empty(f.dir.path(), "job.toml");
}

#[tokio::test]
async fn a_percentage_guard_lets_an_initial_load_through_and_says_so() {
    let f = Folder::new();
    let db = f
        .sqlite(
            "shop.db",
            "CREATE TABLE s (k integer PRIMARY KEY, qty integer); INSERT INTO s VALUES (1, 1), (2, 2);
             CREATE TABLE d (k integer PRIMARY KEY, qty integer);",
        )
        .await;
    let url = format!("sqlite://{}", db.display());
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[write]\nmax_changes = \"10%\"\n"),
    );
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("does not apply to an empty destination"),
        "{err}"
    );
    // Once there are rows, the percentage guards them.
    exec(&url, "INSERT INTO s VALUES (3, 3), (4, 4), (5, 5);").await;
    let (code, _, err) = recon(&["apply", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("more than the limit of 10% of 2 destination rows"),
        "{err}"
    );
}
