//! The engine's bounds (issue "A streaming engine"): plan and apply under a memory limit several
//! times smaller than the snapshots finish with exact counts, and each remote side is read once.
//! These tests check results, not time.

use crate::support::*;

/// Source and destination of `rows` rows with known drift: every 50th row missing from the
/// destination, every 40th changed, every 97th NULL-vs-value, and `rows / 100` extra rows.
fn drift(rows: u32) -> String {
    format!(
        "CREATE TABLE s AS SELECT g AS k, md5(g::text) AS name, (g % 1000)::numeric(10,2) AS price,
                CASE WHEN g % 97 = 0 THEN NULL ELSE g END AS qty
           FROM generate_series(1, {rows}) g;
         CREATE TABLE d (k int PRIMARY KEY, name text, price numeric(10,2), qty int);
         INSERT INTO d SELECT k, CASE WHEN k % 40 = 0 THEN 'changed' ELSE name END, price,
                CASE WHEN k % 97 = 0 THEN 1 ELSE qty END
           FROM s WHERE k % 50 <> 0;
         INSERT INTO d SELECT g, 'extra', 1, 1 FROM generate_series({rows} + 1, {rows} + {rows} / 100) g;"
    )
}

/// The counts PostgreSQL itself computes for the drift.
async fn expected(url: &str) -> (i64, i64, i64) {
    let insert = pg_count(
        url,
        "SELECT count(*) FROM s WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.k = s.k)",
    )
    .await;
    let delete = pg_count(
        url,
        "SELECT count(*) FROM d WHERE NOT EXISTS (SELECT 1 FROM s WHERE d.k = s.k)",
    )
    .await;
    let update = pg_count(
        url,
        "SELECT count(*) FROM s JOIN d USING (k) WHERE (s.name, s.price, s.qty) IS DISTINCT FROM (d.name, d.price, d.qty)",
    )
    .await;
    (insert, update, delete)
}

fn job(url: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[write]\ndeletes = true\n"
    )
}

/// `recon plan` of `job.toml` in `dir` under an 8 MB budget, logging at `-vv`: its log, and the
/// inserts, updates and deletes it counts.
fn plan_in_passes(dir: &std::path::Path) -> (String, (i64, i64, i64)) {
    let (code, out, err) = recon(
        &[
            "plan",
            "job.toml",
            "-f",
            "json",
            "--limit",
            "0",
            "--memory-limit",
            "8MB",
            "-vv",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let s = json(&out)["summary"].clone();
    let count = |a: &str| s[a].as_i64().unwrap_or_else(|| panic!("no {a} count: {s}"));
    (err, (count("insert"), count("update"), count("delete")))
}

/// The sides `grouped` were staged in buckets as read and grouped into passes, and the sides
/// `split` split into passes after they were read, as `err` (a `-vv` log) says.
fn assert_passes(err: &str, grouped: &[&str], split: &[&str]) {
    for side in grouped {
        let line = format!("buckets staged as read, grouped into passes side={side}");
        assert!(err.contains(&line), "{side} not grouped: {err}");
    }
    for side in split {
        let line = format!("split into passes side={side}");
        assert!(err.contains(&line), "{side} not split: {err}");
    }
}

#[tokio::test]
async fn plan_and_apply_under_a_small_memory_limit_give_exact_counts() {
    // About 12 MB a side staged (24 MB in all), against an 8 MB budget: the key checks and the
    // diff run in passes over the staged files.
    let url = postgres("small_memory", &drift(200_000)).await;
    let (insert, update, delete) = expected(&url).await;
    assert!(insert > 0 && update > 0 && delete > 0);
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let limit = ["--memory-limit", "8MB"];
    let (code, out, err) = recon(
        &[
            "plan", "job.toml", "-f", "json", "--limit", "0", limit[0], limit[1],
        ],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let s = json(&out)["summary"].clone();
    assert_eq!(
        (
            s["insert"].as_i64(),
            s["update"].as_i64(),
            s["delete"].as_i64()
        ),
        (Some(insert), Some(update), Some(delete)),
        "{s}"
    );
    // The audit runs the same diff in the same budget.
    let (code, out, err) = recon(
        &["audit", "job.toml", "-f", "json", limit[0], limit[1]],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let c = json(&out)["categories"].clone();
    assert_eq!(
        (
            c["missing"]["rows"].as_i64(),
            c["changed"]["rows"].as_i64(),
            c["extra"]["rows"].as_i64()
        ),
        (Some(insert), Some(update), Some(delete)),
        "{c}"
    );
    // Each writer's inserts, in the order it made them.
    log_inserts(&url).await;
    // A guard that needs the totals (`--max-changes`): the changes are written after the diff.
    let (code, out, err) = recon(
        &[
            "apply",
            "job.toml",
            "-f",
            "json",
            "--max-changes",
            "1000000",
            "-v",
            limit[0],
            limit[1],
        ],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("diffing in passes"), "{err}");
    assert!(!err.contains("written as the pass ends"), "{err}");
    // The passes' changes reach the destination merged into key order: each writer's inserts
    // ascend (spread over the passes, the keys are not in order in any one of them).
    assert_eq!(
        pg_count(&url, "SELECT count(*) FROM inserted").await,
        insert
    );
    let descending =
        "SELECT count(*) FROM (SELECT k, lag(k) OVER (PARTITION BY pid ORDER BY n) AS before
                        FROM inserted) AS w WHERE before > k";
    assert_eq!(pg_count(&url, descending).await, 0);
    // Every change is listed, read back from the spool after the writes.
    let doc = json(&out);
    assert_eq!(
        doc["changes"].as_array().unwrap().len() as i64,
        insert + update + delete
    );
    // With both sides' values, built from the spooled diff output (the writers' changes carry
    // none): an update's from and to, an insert's and a delete's values.
    let changes = doc["changes"].as_array().unwrap();
    let of = |k: i64| {
        changes
            .iter()
            .find(|c| c["key"]["k"] == k)
            .unwrap_or_else(|| panic!("no change for k = {k}"))
    };
    let (updated, inserted, deleted) = (of(40), of(50), of(200_001));
    assert_eq!(updated["action"], "update", "{updated}");
    assert_eq!(updated["changed"]["name"]["from"], "changed", "{updated}");
    assert_eq!(inserted["action"], "insert", "{inserted}");
    assert_eq!(deleted["action"], "delete", "{deleted}");
    assert_eq!(deleted["values"]["name"], "extra", "{deleted}");
    let to = updated["changed"]["name"]["to"].as_str().unwrap();
    let name = inserted["values"]["name"].as_str().unwrap();
    let price = inserted["values"]["price"].as_str().unwrap();
    let query = format!(
        "SELECT count(*) FROM s WHERE (k = 40 AND name = '{to}') OR (k = 50 AND name = '{name}' AND price = {price})"
    );
    assert_eq!(pg_count(&url, &query).await, 2, "{updated} {inserted}");
    converged(&url, f.dir.path(), &doc, (insert, update, delete)).await;
}

/// An apply's report (`doc`) counts `expected` (inserts, updates, deletes) applied, the
/// destination `d` now equals the source `s`, and the next plan is empty.
async fn converged(
    url: &str,
    dir: &std::path::Path,
    doc: &serde_json::Value,
    expected: (i64, i64, i64),
) {
    let applied = &doc["applied"];
    let counts = ["insert", "update", "delete"].map(|a| applied[a].as_i64().unwrap_or(-1));
    assert_eq!(counts, [expected.0, expected.1, expected.2], "{applied}");
    assert_eq!(
        pg_difference(url, "SELECT * FROM s", "SELECT * FROM d").await,
        0
    );
    assert_plan_empty(dir, "job.toml");
}

#[tokio::test]
async fn sides_staged_in_buckets_and_sides_split_after_meet_in_the_same_passes() {
    // Under an 8 MB budget a side outgrows what is held and is staged in buckets by its key as
    // read; a key compared in another type (an `int` destination against a `bigint` source)
    // cannot use them, and that side is split after it is read: the same keys must meet.
    let url = postgres(
        "buckets_meet",
        &format!(
            "{}
             ALTER TABLE s ALTER COLUMN k TYPE bigint;
             ALTER TABLE s ADD COLUMN code text; UPDATE s SET code = 'c-' || k;
             ALTER TABLE d ADD COLUMN code text; UPDATE d SET code = 'c-' || k;",
            drift(200_000)
        ),
    )
    .await;
    let (insert, update, delete) = expected(&url).await;
    let f = Folder::new();
    let counts = |key: &str, grouped: &[&str], split: &[&str]| {
        f.write("job.toml", &job(&url).replace("k = \"k\"", key));
        let (err, counts) = plan_in_passes(f.dir.path());
        assert_passes(&err, grouped, split);
        counts
    };
    // bigint against int: the source's buckets, the destination split.
    assert_eq!(
        counts("k = \"k\"", &["source"], &["destination"]),
        (insert, update, delete)
    );
    // A text key of one type on both sides: both sides' buckets.
    assert_eq!(
        counts("code = \"code\"", &["source", "destination"], &[]),
        (insert, update, delete)
    );
}

/// `recon apply --force` of `job.toml` under an 8 MB budget, logging at `-v`.
const HANDED: [&str; 8] = [
    "apply",
    "job.toml",
    "-f",
    "json",
    "--force",
    "--memory-limit",
    "8MB",
    "-v",
];

/// [`HANDED`] in `dir`, then [`converged`].
async fn apply_in_passes(url: &str, dir: &std::path::Path, expected: (i64, i64, i64)) {
    let (code, out, err) = recon(&HANDED, dir);
    assert_eq!(code, 0, "{err}");
    converged(url, dir, &json(&out), expected).await;
}

#[tokio::test]
async fn sides_dealt_by_key_range_meet_in_the_same_passes_and_converge() {
    // Both sides analyzed: their key's statistics estimate its range, and rows are dealt to
    // buckets by blocks of it. Rows added since (keys past the estimate and below it, 7 % more)
    // go round the buckets; a `bigint` source against an `int` destination is split by the same
    // range.
    let url = postgres(
        "range_buckets",
        &format!(
            "{}
             ALTER TABLE s ALTER COLUMN k TYPE bigint;
             ANALYZE s; ANALYZE d;
             INSERT INTO s SELECT g, md5(g::text), 1, g FROM generate_series(300001, 310000) g;
             INSERT INTO s SELECT -g, 'below', 2, g FROM generate_series(1, 5000) g;
             INSERT INTO d SELECT -g, 'below', 2, g FROM generate_series(1, 4000, 2) g;",
            drift(200_000)
        ),
    )
    .await;
    let (insert, update, delete) = expected(&url).await;
    assert!(insert > 10_000 && update > 0 && delete > 0);
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let (err, counts) = plan_in_passes(f.dir.path());
    for side in ["source", "destination"] {
        let line = format!("buckets by key range side={side}");
        let agreed = err
            .lines()
            .find(|l| l.contains(&line))
            .unwrap_or_else(|| panic!("no vote from the {side}: {err}"));
        assert!(agreed.contains("range=Some(KeyRange"), "{agreed}");
    }
    assert_passes(&err, &["source"], &["destination"]);
    assert!(!err.contains("passes by hash instead"), "{err}");
    assert_eq!(counts, (insert, update, delete));
    apply_in_passes(&url, f.dir.path(), (insert, update, delete)).await;
}

#[tokio::test]
async fn a_side_that_fits_is_decoded_whole_and_the_join_builds_on_it_as_it_is() {
    // Analyzed tables that fit the budget: each is decoded into one batch (its statistics count
    // its rows), which the join takes as its build side without cutting or copying it, as
    // the join's metrics say (`-vvv`).
    let url = postgres(
        "held_whole",
        &format!(
            "{}
             ALTER TABLE s SET (autovacuum_enabled = false);
             ALTER TABLE d SET (autovacuum_enabled = false);
             ANALYZE s; ANALYZE d;",
            drift(50_000)
        ),
    )
    .await;
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "job.toml", "-f", "json", "--limit", "0", "-vvv"];
        args.extend(extra);
        let (code, out, err) = recon(&args, f.dir.path());
        assert_eq!(code, 0, "{err}");
        let s = json(&out)["summary"].clone();
        let count = |a: &str| s[a].as_i64().unwrap();
        (err, (count("insert"), count("update"), count("delete")))
    };
    let (err, counts) = plan(&[]);
    // The comparison's own join (src/diff/join.rs) in place of DataFusion's join and filter.
    assert!(err.contains("DiffJoinExec: join_type=Full"), "{err}");
    assert!(!err.contains("HashJoinExec"), "{err}");
    assert!(err.contains("build_input_batches=1,"), "{err}");
    assert!(
        err.contains("build_input_rows=49.50 K"),
        "the destination is built on: {err}"
    );
    assert_eq!(counts, expected(&url).await);
    // Rows added since ANALYZE (more than the eighth to spare) come in a second batch, on both
    // sides (deletes since taken into account): exact counts.
    pg_exec(
        &url,
        "INSERT INTO s SELECT g, md5(g::text), 1, g FROM generate_series(50001, 70000) g;
         INSERT INTO d SELECT g, 'late', 1, g FROM generate_series(70001, 90000) g;
         DELETE FROM d WHERE k % 7 = 0;",
    )
    .await;
    let (err, counts) = plan(&[]);
    assert!(err.contains("build_input_batches=2,"), "{err}");
    assert_eq!(counts, expected(&url).await);
    // Statistics far out of date: the tables were analyzed at a few rows, and now outgrow the
    // budget many times. The batch gathered as if it fit is split into buckets after all.
    pg_exec(
        &url,
        "TRUNCATE s; TRUNCATE d;
         INSERT INTO s SELECT g, md5(g::text), 1, g FROM generate_series(1, 1000) g;
         INSERT INTO d SELECT * FROM s WHERE k % 3 <> 0;
         ANALYZE s; ANALYZE d;
         INSERT INTO s SELECT g, md5(g::text), 1, g FROM generate_series(1001, 150000) g;
         INSERT INTO d SELECT k, CASE WHEN k % 40 = 0 THEN 'changed' ELSE name END, price, qty
           FROM s WHERE k > 1000 AND k % 50 <> 0;",
    )
    .await;
    let (err, counts) = plan(&["--memory-limit", "8MB"]);
    assert!(err.contains("diffing in passes"), "{err}");
    let (insert, update, delete) = expected(&url).await;
    assert!(insert > 3000 && update > 2000, "{insert} {update}");
    assert_eq!(counts, (insert, update, delete));
    apply_in_passes(&url, f.dir.path(), (insert, update, delete)).await;
}

#[tokio::test]
async fn a_key_bunched_in_its_range_is_diffed_in_passes_by_hash() {
    // The statistics saw keys 1..1000 and one far key: its range's first block holds every
    // row added since, and the staged buckets would give one pass all of them. Both sides are
    // split again by hash, with exact counts.
    let url = postgres(
        "range_skew",
        "CREATE TABLE s (k bigint, name text, price numeric(10,2), qty int);
             INSERT INTO s SELECT g, md5(g::text), 1, g FROM generate_series(1, 1000) g;
             INSERT INTO s VALUES (1000000000000, 'far', 1, 1);
             CREATE TABLE d (k bigint PRIMARY KEY, name text, price numeric(10,2), qty int);
             INSERT INTO d SELECT * FROM s;
             ANALYZE s; ANALYZE d;
             INSERT INTO s SELECT g, md5(g::text), 1, g FROM generate_series(1001, 200000) g;
             INSERT INTO d SELECT k, CASE WHEN k % 40 = 0 THEN 'changed' ELSE name END, price, qty
               FROM s WHERE k BETWEEN 1001 AND 200000 AND k % 50 <> 0;",
    )
    .await;
    let (insert, update, delete) = expected(&url).await;
    assert!(insert > 0 && update > 0);
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let (err, counts) = plan_in_passes(f.dir.path());
    assert!(err.contains("range=Some(KeyRange"), "{err}");
    assert!(err.contains("passes by hash instead"), "{err}");
    assert_passes(&err, &[], &["source", "destination"]);
    assert_eq!(counts, (insert, update, delete));
}

#[tokio::test]
async fn duplicate_and_null_keys_are_counted_across_passes() {
    // The source split into buckets under an 8 MB budget: each duplicated key is counted once,
    // in the one bucket its copies share, and the NULL keys with them.
    let setup = format!(
        "{}
         INSERT INTO s SELECT k, name, price, qty FROM s WHERE k % 1000 = 3;
         INSERT INTO s SELECT k, name, price, qty FROM s WHERE k = 3;
         INSERT INTO s SELECT NULL, name, price, qty FROM s WHERE k % 20000 = 5;",
        drift(200_000)
    );
    let url = postgres("passes_keys", &setup).await;
    let duplicated = pg_count(
        &url,
        "SELECT count(*) FROM (SELECT k FROM s WHERE k IS NOT NULL GROUP BY k HAVING count(*) > 1) x",
    )
    .await;
    assert_eq!(duplicated, 200);
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let (code, _, err) = recon(
        &["plan", "job.toml", "--memory-limit", "8MB", "-v"],
        f.dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("diffing in passes"), "{err}");
    // NULL keys are reported first; the duplicates once they are gone.
    assert!(
        err.contains("10 rows") || err.contains("10 source rows"),
        "{err}"
    );
    let f2 = Folder::new();
    let url2 = postgres(
        "passes_dups",
        &format!(
            "{}
         INSERT INTO s SELECT k, name, price, qty FROM s WHERE k % 1000 = 3;
         INSERT INTO s SELECT k, name, price, qty FROM s WHERE k = 3;",
            drift(200_000)
        ),
    )
    .await;
    f2.write("job.toml", &job(&url2));
    let (code, _, err) = recon(
        &["plan", "job.toml", "--memory-limit", "8MB"],
        f2.dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("200"), "{err}");
    // The most copied key comes first in the sample, whichever pass found it (k = 3: the row,
    // its copy, and both copied again).
    assert!(err.contains("sample: k=3 (4 rows); "), "{err}");
}

/// Each insert into `d` logged with its writer's session, in order, in the table `inserted`.
async fn log_inserts(url: &str) {
    pg_exec(
        url,
        "CREATE TABLE inserted (n bigserial, pid int, k int);
         CREATE FUNCTION log_insert() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO inserted (pid, k) VALUES (pg_backend_pid(), NEW.k); RETURN NEW; END $$;
         CREATE TRIGGER log_insert AFTER INSERT ON d FOR EACH ROW EXECUTE FUNCTION log_insert();",
    )
    .await;
}

/// [`HANDED`] in `dir` (its destination `what`), which succeeds and writes each pass's changes
/// as the pass ends: its output and its log.
fn apply_handed(dir: &std::path::Path, what: &str) -> (String, String) {
    let (code, out, err) = recon(&HANDED, dir);
    assert_eq!(code, 0, "{what}: {err}");
    assert!(
        err.contains("each pass's changes are written as the pass ends"),
        "{what}: {err}"
    );
    (out, err)
}

#[tokio::test]
async fn an_apply_in_passes_writes_each_pass_as_it_ends_and_converges() {
    // `email` is unique in the destination. 19 source rows missing from it (k = 10,000 … 190,000,
    // spread over the key's range) carry the email of an extra destination row that the same
    // run deletes (k = 200,001 … 200,019): a row re-keyed. Written pass by pass, an insert can
    // come before the delete that frees its email, in a later pass.
    let setup = format!(
        "{}
         ALTER TABLE s ADD COLUMN email text;
         UPDATE s SET email = 'e' || k;
         ALTER TABLE d ADD COLUMN email text;
         UPDATE d SET email = 'e' || k;
         UPDATE d SET email = 'e' || ((k - 200000) * 10000) WHERE k BETWEEN 200001 AND 200019;
         CREATE UNIQUE INDEX d_email ON d (email);",
        drift(200_000)
    );
    let url = postgres("handed_passes", &setup).await;
    let (insert, update, delete) = expected(&url).await;
    assert!(insert > 0 && update > 0 && delete > 0);
    log_inserts(&url).await;
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let (out, err) = apply_handed(f.dir.path(), "");
    let passes: i64 = err
        .split("diffing in passes passes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pass count: {err}"));
    assert!(passes > 1, "{err}");
    // The re-keyed rows were refused while their email was taken, and written once the delete
    // that frees it was: none failed.
    let doc = json(&out);
    assert_eq!(doc["failed"].as_i64(), Some(0), "{}", doc["failed_rows"]);
    converged(&url, f.dir.path(), &doc, (insert, update, delete)).await;
    assert_eq!(
        pg_count(&url, "SELECT count(*) FROM inserted").await,
        insert
    );
    // Some re-keyed rows were written after every pass's own inserts: tried again at the end.
    let again = pg_count(
        &url,
        "SELECT count(*) FROM inserted WHERE k % 10000 = 0
           AND n > (SELECT max(n) FROM inserted WHERE k % 10000 <> 0)",
    )
    .await;
    assert!(again > 0, "no insert was tried again");
    // Each pass's inserts come in key order: a writer meets a smaller key only when a new pass
    // begins.
    let descents = pg_count(
        &url,
        "SELECT coalesce(max(n), 0) FROM (SELECT pid, count(*) AS n FROM
           (SELECT pid, k, lag(k) OVER (PARTITION BY pid ORDER BY n) AS before
              FROM inserted WHERE k % 10000 <> 0) w
           WHERE before > k GROUP BY pid) x",
    )
    .await;
    assert!(descents < passes, "{descents} descents in {passes} passes");

    // A duplicated key that no catalog rules out and that the reading could not count (the key
    // is text): every pass is checked before any write, and the run writes nothing.
    let setup = format!(
        "{}
         ALTER TABLE s ALTER COLUMN k TYPE text;
         ALTER TABLE d ALTER COLUMN k TYPE text;
         INSERT INTO s SELECT k, name, price, qty FROM s WHERE k = '199999';",
        drift(200_000)
    );
    let url = postgres("handed_duplicates", &setup).await;
    let before = pg_count(&url, "SELECT count(*) FROM d WHERE name = 'changed'").await;
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let (code, _, err) = recon(&HANDED, f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("diffing in passes"), "{err}");
    assert!(!err.contains("written as the pass ends"), "{err}");
    assert!(err.contains("k=199999"), "{err}");
    let after = pg_count(&url, "SELECT count(*) FROM d WHERE name = 'changed'").await;
    assert_eq!((before > 0, after), (true, before));
}

#[tokio::test]
async fn mariadb_and_sqlite_destinations_are_written_pass_by_pass_and_converge() {
    // 200,000 rows of ~50 bytes against an 8 MB budget; every 50th row missing from the
    // destination, every 40th changed, 2,000 extra rows.
    let url = postgres(
        "handed_other",
        "CREATE TABLE s AS SELECT g AS k, lpad(g::text, 40, '0') AS name, g % 1000 AS qty
           FROM generate_series(1, 200000) g;
         ALTER TABLE s ADD PRIMARY KEY (k);",
    )
    .await;
    let rows = "k % 50 <> 0";
    let name = |pad: &str| format!("CASE WHEN k % 40 = 0 THEN 'changed' ELSE {pad} END");
    let extra = "k > 200000";
    let my = mariadb(
        "handed_other",
        &format!(
            "CREATE TABLE d (k INT PRIMARY KEY, name VARCHAR(50), qty INT);
             INSERT INTO d SELECT k, {}, k % 1000 FROM (SELECT seq AS k FROM seq_1_to_202000) AS t
               WHERE ({rows} AND k <= 200000) OR {extra};",
            name("LPAD(k, 40, '0')")
        ),
    )
    .await;
    let f = Folder::new();
    let lite = f
        .sqlite(
            "d.db",
            &format!(
                "CREATE TABLE d (k INTEGER PRIMARY KEY, name TEXT, qty INTEGER);
                 WITH RECURSIVE g(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM g WHERE k < 202000)
                 INSERT INTO d SELECT k, {}, k % 1000 FROM g WHERE ({rows} AND k <= 200000) OR {extra};",
                name("printf('%040d', k)")
            ),
        )
        .await;
    for destination in [my, format!("sqlite://{}", lite.display())] {
        f.write(
            "job.toml",
            &format!(
                "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{destination}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[write]\ndeletes = true\n"
            ),
        );
        let (out, _) = apply_handed(f.dir.path(), &destination);
        // Missing: every 50th of 200,000; changed: every 40th not missing; extra: 2,000.
        assert_eq!(
            json(&out)["applied"],
            serde_json::json!({"insert": 4000, "update": 4000, "delete": 2000}),
            "{destination}"
        );
        assert_plan_empty(f.dir.path(), "job.toml");
    }
}

/// Sequential scans of a table so far, as PostgreSQL's statistics count them (each read of a
/// side is one `COPY (SELECT …)`, one scan).
async fn scans(url: &str, table: &str) -> i64 {
    pg_count(
        url,
        &format!("SELECT coalesce(seq_scan, 0) FROM pg_stat_user_tables WHERE relname = '{table}'"),
    )
    .await
}

#[tokio::test]
async fn each_remote_side_is_read_once() {
    let url = postgres("read_once", &drift(20_000)).await;
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let before = (scans(&url, "s").await, scans(&url, "d").await);
    let (code, _, err) = recon(&["plan", "job.toml", "--limit", "0"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    // Statistics arrive when recon's sessions end; wait for them (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let now = (scans(&url, "s").await, scans(&url, "d").await);
        if now.0 > before.0 && now.1 > before.1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = (scans(&url, "s").await, scans(&url, "d").await);
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));
}

#[tokio::test]
async fn streamed_output_is_complete_and_a_failed_run_leaves_no_file() {
    let url = postgres("streamed", &drift(30_000)).await;
    let (insert, update, delete) = expected(&url).await;
    let f = Folder::new();
    f.write("job.toml", &job(&url));
    let (code, out, err) = recon(&["plan", "job.toml", "-f", "jsonl"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    let lines = out.lines().count() as i64;
    assert_eq!(lines, insert + update + delete);
    let (code, _, err) = recon(
        &["plan", "job.toml", "-f", "json", "-o", "all.json"],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let doc = json(&std::fs::read_to_string(f.path("all.json")).unwrap());
    assert_eq!(doc["changes"].as_array().unwrap().len() as i64, lines);
    assert_eq!(doc["summary"]["delete"].as_i64(), Some(delete));
    // A NULL key stops the run after the output was opened: nothing is left behind.
    pg_exec(&url, "INSERT INTO s VALUES (NULL, 'x', 1, 1)").await;
    let (code, _, err) = recon(
        &["plan", "job.toml", "-f", "csv", "-o", "out.csv"],
        f.dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    let left: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("out.csv"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn check_says_when_the_match_key_has_no_index() {
    let f = Folder::new();
    f.write("s.csv", "k,v\na,1\n");
    let lite = "CREATE TABLE d (k TEXT, v INT);";
    f.sqlite("app.db", lite).await;
    let pg = postgres("index_note", lite).await;
    let my = mariadb("index_note", "CREATE TABLE d (k VARCHAR(10), v INT);").await;
    let run = |url: &str| {
        let text = format!(
            "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"
        );
        f.write("job.toml", &text);
        let (code, out, err) = recon(&["check", "job.toml"], f.dir.path());
        assert_eq!(code, 0, "{err}");
        out
    };
    for url in ["sqlite://app.db", pg.as_str(), my.as_str()] {
        assert!(run(url).contains("leads no index"), "{url}");
    }
    pg_exec(&pg, "CREATE INDEX ON d (k)").await;
    assert!(!run(&pg).contains("leads no index"));
    f.sqlite("app.db", "CREATE INDEX d_k ON d (k);").await;
    assert!(!run("sqlite://app.db").contains("leads no index"));
}

/// Rows MariaDB has read from table `e` of the test's database, by any means
/// (`information_schema.TABLE_STATISTICS`, counted once `userstat` is on): other tests' work on
/// the same server does not count.
async fn mariadb_scanned_rows(url: &str) -> i64 {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query("SET GLOBAL userstat = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(ROWS_READ), 0) AS SIGNED) FROM information_schema.TABLE_STATISTICS
          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'e'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    row.get::<i64, _>(0)
}

#[tokio::test]
async fn mariadb_writeback_without_a_key_index_reads_the_table_once() {
    // 20,000 rows matched on `k`, which no index leads; 2,000 changes in batches of 100.
    let url = mariadb(
        "one_pass",
        "CREATE TABLE e (id INT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(20), v INT);
         INSERT INTO e (k, v) SELECT concat('k', seq), seq FROM seq_1_to_20000;",
    )
    .await;
    let f = Folder::new();
    let mut csv = String::from("k,v\n");
    for i in 1..=20_500u32 {
        let (changed, gone) = (i % 20 == 0, i <= 20_000 && i % 40 == 1);
        if !gone {
            csv.push_str(&format!("k{i},{}\n", if changed { i + 1 } else { i }));
        }
    }
    f.write("s.csv", &csv);
    f.write(
        "job.toml",
        &format!("[source]\nurl = \"s.csv\"\n[destination]\nurl = \"{url}\"\ntable = \"e\"\n[match]\nk = \"k\"\n[write]\ndeletes = true\nbatch_size = 100\n"),
    );
    let before = mariadb_scanned_rows(&url).await;
    let (code, out, err) = recon(
        &["apply", "job.toml", "-f", "json", "--force"],
        f.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let applied = json(&out)["applied"].clone();
    assert_eq!(
        applied,
        serde_json::json!({"insert": 500, "update": 1000, "delete": 500}),
        "{out}"
    );
    let scanned = mariadb_scanned_rows(&url).await - before;
    // The snapshot read and the key map: two passes. A scan per batch would be 20 passes.
    assert!(
        (20_000..5 * 20_000).contains(&scanned),
        "{scanned} rows scanned"
    );
    assert_plan_empty(f.dir.path(), "job.toml");
}
