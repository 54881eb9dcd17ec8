//! Text fidelity on every database pair (PostgreSQL, MariaDB, SQLite, each as source and as
//! destination): NULL vs '' vs 'NULL' vs ' ', NFC vs NFD, emoji, tabs and newlines, trailing
//! spaces and a long value go through `apply` and come back byte for byte, read by each database
//! itself; the next plan is empty.

use sqlx::{Connection, Row};

use crate::support::*;

/// The values, by key (`None` is NULL).
fn values() -> Vec<(i64, Option<String>)> {
    vec![
        (1, None),
        (2, Some(String::new())),
        (3, Some("NULL".into())),
        (4, Some(" ".into())),
        (5, Some("caf\u{e9}".into())),
        (6, Some("cafe\u{301}".into())),
        (7, Some("\u{1f980} crab".into())),
        (8, Some("tab\there".into())),
        (9, Some("line\nbreak\r\n".into())),
        (10, Some("trailing  ".into())),
        (11, Some("'; DROP TABLE s; --".into())),
        (12, Some("x".repeat(3000))),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Db {
    Postgres,
    Mariadb,
    Sqlite,
}

/// A database of kind `db` holding an empty table `name (k, t)`; its url.
async fn database(db: Db, label: &str, f: &Folder) -> String {
    match db {
        Db::Postgres => postgres(label, "CREATE TABLE s (k bigint PRIMARY KEY, t text); CREATE TABLE d (k bigint PRIMARY KEY, t text);").await,
        Db::Mariadb => {
            mariadb(
                label,
                "CREATE TABLE s (k bigint PRIMARY KEY, t longtext) CHARACTER SET utf8mb4; CREATE TABLE d (k bigint PRIMARY KEY, t longtext) CHARACTER SET utf8mb4;",
            )
            .await
        }
        Db::Sqlite => {
            let path = f
                .sqlite(&format!("{label}.db"), "CREATE TABLE s (k INTEGER PRIMARY KEY, t TEXT); CREATE TABLE d (k INTEGER PRIMARY KEY, t TEXT);")
                .await;
            format!("sqlite://{}", path.display())
        }
    }
}

async fn fill(db: Db, url: &str) {
    macro_rules! insert {
        ($conn:expr, $sql:expr) => {
            for (k, t) in values() {
                sqlx::query($sql)
                    .bind(k)
                    .bind(t)
                    .execute(&mut $conn)
                    .await
                    .unwrap();
            }
        };
    }
    match db {
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            insert!(c, "INSERT INTO s VALUES ($1, $2)");
        }
        Db::Mariadb => {
            let mut c = sqlx::MySqlConnection::connect(url).await.unwrap();
            insert!(c, "INSERT INTO s VALUES (?, ?)");
        }
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            insert!(c, "INSERT INTO s VALUES (?, ?)");
        }
    }
}

async fn read(db: Db, url: &str, table: &str) -> Vec<(i64, Option<String>)> {
    let sql = format!("SELECT k, t FROM {table} ORDER BY k");
    let sql = sqlx::AssertSqlSafe(sql);
    macro_rules! rows {
        ($conn:expr) => {
            sqlx::query(sql)
                .fetch_all(&mut $conn)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<i64, _>(0), r.get::<Option<String>, _>(1)))
                .collect()
        };
    }
    match db {
        Db::Postgres => rows!(sqlx::PgConnection::connect(url).await.unwrap()),
        Db::Mariadb => rows!(sqlx::MySqlConnection::connect(url).await.unwrap()),
        Db::Sqlite => rows!(sqlx::SqliteConnection::connect(url).await.unwrap()),
    }
}

#[tokio::test]
async fn text_values_survive_every_database_pair_byte_for_byte() {
    let dbs = [Db::Postgres, Db::Mariadb, Db::Sqlite];
    let f = Folder::new();
    for source in dbs {
        for destination in dbs {
            let label = format!("text_{source:?}_{destination:?}").to_lowercase();
            let src = database(source, &format!("{label}_s"), &f).await;
            let dst = database(destination, &format!("{label}_d"), &f).await;
            fill(source, &src).await;
            f.write(
                "job.toml",
                &format!("name = \"{label}\"\n[source]\nurl = \"{src}\"\ntable = \"s\"\n[destination]\nurl = \"{dst}\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nt = \"t\"\n"),
            );
            let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
            assert_eq!(code, 0, "{source:?} → {destination:?}: {out}{err}");
            assert_eq!(
                read(destination, &dst, "d").await,
                values(),
                "{source:?} → {destination:?}"
            );
            let (code, out, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
            assert_eq!(
                code, 0,
                "{source:?} → {destination:?} did not converge: {out}{err}"
            );
        }
    }
}

/// Exact numbers and far timestamps between PostgreSQL and MariaDB, both ways and each to
/// itself: NUMERIC(38,10) at both ends of its range, the 64-bit integer limits, year 1 and year
/// 9999 to the microsecond, and a wall-clock time that a DST change skips in Europe. Read back
/// by each database as text (trailing fractional zeros aside), and the next plan is empty.
#[tokio::test]
async fn exact_numbers_and_far_timestamps_survive_postgres_and_mariadb_pairs() {
    let rows = [
        "(1, 1234567890123456789012345678.1234567890, 9223372036854775807, '0001-01-01 00:00:00')",
        "(2, -0.0000000001, -9223372036854775808, '9999-12-31 23:59:59.999999')",
        "(3, 0, 0, '2024-03-31 02:30:00.5')",
        "(4, NULL, NULL, NULL)",
    ]
    .join(", ");
    let pg_tables = format!(
        "CREATE TABLE s (k int PRIMARY KEY, n numeric(38,10), b bigint, ts timestamp(6));
         CREATE TABLE d (k int PRIMARY KEY, n numeric(38,10), b bigint, ts timestamp(6));
         INSERT INTO s VALUES {rows};"
    );
    let my_tables = format!(
        "CREATE TABLE s (k int PRIMARY KEY, n decimal(38,10), b bigint, ts datetime(6));
         CREATE TABLE d (k int PRIMARY KEY, n decimal(38,10), b bigint, ts datetime(6));
         INSERT INTO s VALUES {rows};"
    );
    let f = Folder::new();
    let text = |db: Db| match db {
        Db::Postgres => {
            "SELECT k::bigint, concat_ws('|', n::text, b::text, to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US')) FROM d ORDER BY k"
        }
        _ => {
            "SELECT k, concat_ws('|', CAST(n AS CHAR), CAST(b AS CHAR), DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f')) FROM d ORDER BY k"
        }
    };
    let expected: Vec<(i64, Option<String>)> = vec![
        (1, Some("1234567890123456789012345678.1234567890|9223372036854775807|0001-01-01 00:00:00.000000".into())),
        (2, Some("-0.0000000001|-9223372036854775808|9999-12-31 23:59:59.999999".into())),
        (3, Some("0.0000000000|0|2024-03-31 02:30:00.500000".into())),
        (4, Some(String::new())),
    ];
    for source in [Db::Postgres, Db::Mariadb] {
        for destination in [Db::Postgres, Db::Mariadb] {
            let label = format!("exact_{source:?}_{destination:?}").to_lowercase();
            let make = |db: Db, name: String| {
                let script = if db == Db::Postgres {
                    pg_tables.clone()
                } else {
                    my_tables.clone()
                };
                async move {
                    match db {
                        Db::Postgres => postgres(&name, &script).await,
                        _ => mariadb(&name, &script).await,
                    }
                }
            };
            let src = make(source, format!("{label}_s")).await;
            let dst = make(destination, format!("{label}_d")).await;
            f.write(
                "job.toml",
                &format!("name = \"{label}\"\n[source]\nurl = \"{src}\"\ntable = \"s\"\n[destination]\nurl = \"{dst}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
            );
            let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
            assert_eq!(code, 0, "{source:?} → {destination:?}: {out}{err}");
            let got: Vec<(i64, Option<String>)> = {
                let sql = sqlx::AssertSqlSafe(text(destination).to_string());
                match destination {
                    Db::Postgres => {
                        let mut c = sqlx::PgConnection::connect(&dst).await.unwrap();
                        sqlx::query(sql)
                            .fetch_all(&mut c)
                            .await
                            .unwrap()
                            .iter()
                            .map(|r| (r.get::<i64, _>(0), r.get::<Option<String>, _>(1)))
                            .collect()
                    }
                    _ => {
                        let mut c = sqlx::MySqlConnection::connect(&dst).await.unwrap();
                        sqlx::query(sql)
                            .fetch_all(&mut c)
                            .await
                            .unwrap()
                            .iter()
                            .map(|r| (r.get::<i64, _>(0), r.get::<Option<String>, _>(1)))
                            .collect()
                    }
                }
            };
            assert_eq!(got, expected, "{source:?} → {destination:?}");
            let (code, out, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
            assert_eq!(
                code, 0,
                "{source:?} → {destination:?} did not converge: {out}{err}"
            );
        }
    }
}

/// Floats on all nine database pairs: NaN, ±Infinity, -0, the largest and the smallest double.
/// A value the destination cannot hold as it is fails its row with the reason; every other row
/// reads back bit for bit. Never stored altered; the failed rows are the only drift left.
#[tokio::test]
async fn special_floats_are_kept_bit_for_bit_or_refused_on_every_pair() {
    let values: Vec<(i64, f64)> = vec![
        (1, f64::NAN),
        (2, f64::INFINITY),
        (3, f64::NEG_INFINITY),
        (4, -0.0),
        (5, f64::MAX),
        (6, 5e-324),
        (7, 0.1),
    ];
    let dbs = [Db::Postgres, Db::Mariadb, Db::Sqlite];
    let f = Folder::new();
    for source in dbs {
        for destination in dbs {
            let label = format!("float_{source:?}_{destination:?}").to_lowercase();
            let ddl = |db: Db| match db {
                Db::Postgres => {
                    "CREATE TABLE s (k bigint PRIMARY KEY, x float8); CREATE TABLE d (k bigint PRIMARY KEY, x float8);"
                }
                Db::Mariadb => {
                    "CREATE TABLE s (k bigint PRIMARY KEY, x double); CREATE TABLE d (k bigint PRIMARY KEY, x double);"
                }
                Db::Sqlite => {
                    "CREATE TABLE s (k INTEGER PRIMARY KEY, x REAL); CREATE TABLE d (k INTEGER PRIMARY KEY, x REAL);"
                }
            };
            let make = |db: Db, name: String| {
                let f = &f;
                async move {
                    match db {
                        Db::Postgres => postgres(&name, ddl(db)).await,
                        Db::Mariadb => mariadb(&name, ddl(db)).await,
                        Db::Sqlite => format!(
                            "sqlite://{}",
                            f.sqlite(&format!("{name}.db"), ddl(db)).await.display()
                        ),
                    }
                }
            };
            let src = make(source, format!("{label}_s")).await;
            let dst = make(destination, format!("{label}_d")).await;
            // Each source holds what it can: the rest of the values are simply not in it.
            for (k, x) in &values {
                let _held = match source {
                    Db::Postgres => {
                        let mut c = sqlx::PgConnection::connect(&src).await.unwrap();
                        sqlx::query("INSERT INTO s VALUES ($1, $2)")
                            .bind(k)
                            .bind(x)
                            .execute(&mut c)
                            .await
                            .is_ok()
                    }
                    Db::Mariadb => {
                        let mut c = sqlx::MySqlConnection::connect(&src).await.unwrap();
                        sqlx::query("INSERT INTO s VALUES (?, ?)")
                            .bind(k)
                            .bind(x)
                            .execute(&mut c)
                            .await
                            .is_ok()
                    }
                    Db::Sqlite => {
                        let mut c = sqlx::SqliteConnection::connect(&src).await.unwrap();
                        sqlx::query("INSERT INTO s VALUES (?, ?)")
                            .bind(k)
                            .bind(x)
                            .execute(&mut c)
                            .await
                            .is_ok()
                    }
                };
            }
            let read = |db: Db, url: String, table: &'static str| async move {
                let sql = sqlx::AssertSqlSafe(format!("SELECT k, x FROM {table} ORDER BY k"));
                let rows: Vec<(i64, Option<f64>)> = match db {
                    Db::Postgres => sqlx::query_as(sql)
                        .fetch_all(&mut sqlx::PgConnection::connect(&url).await.unwrap())
                        .await
                        .unwrap(),
                    Db::Mariadb => sqlx::query_as(sql)
                        .fetch_all(&mut sqlx::MySqlConnection::connect(&url).await.unwrap())
                        .await
                        .unwrap(),
                    Db::Sqlite => sqlx::query_as(sql)
                        .fetch_all(&mut sqlx::SqliteConnection::connect(&url).await.unwrap())
                        .await
                        .unwrap(),
                };
                rows
            };
            let stored = read(source, src.clone(), "s").await;
            f.write(
                "job.toml",
                &format!("name = \"{label}\"\n[source]\nurl = \"{src}\"\ntable = \"s\"\n[destination]\nurl = \"{dst}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"),
            );
            let (code, out, err) = recon(&["apply", "job.toml", "-f", "json"], f.dir.path());
            assert!(
                code == 0 || code == 3,
                "{source:?} → {destination:?}: {out}{err}"
            );
            let doc = json(&out);
            let failed: Vec<i64> = doc["failed_rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["key"]["k"].as_i64().unwrap())
                .collect();
            for row in doc["failed_rows"].as_array().unwrap() {
                assert!(!row["error"].as_str().unwrap().is_empty());
            }
            let written = read(destination, dst.clone(), "d").await;
            for (k, x) in &stored {
                let there = written.iter().find(|(dk, _)| dk == k);
                match (failed.contains(k), there) {
                    (true, None) => {}
                    (false, Some((_, y))) => assert_eq!(
                        x.map(f64::to_bits),
                        y.map(f64::to_bits),
                        "{source:?} → {destination:?}: k={k} stored as {y:?}, the source holds {x:?}"
                    ),
                    (failed, there) => panic!(
                        "{source:?} → {destination:?}: k={k} failed={failed} stored={there:?}"
                    ),
                }
            }
            // Converged but for the refused rows.
            let (_, plan, _) = recon(&["plan", "job.toml", "-f", "json"], f.dir.path());
            let s = json(&plan)["summary"].clone();
            assert_eq!(
                s["insert"].as_u64().unwrap() + s["update"].as_u64().unwrap(),
                failed.len() as u64,
                "{source:?} → {destination:?}: {s}"
            );
        }
    }
}

/// The same exact numbers and far timestamps from PostgreSQL and MariaDB into SQLite, whose TEXT
/// columns keep every digit (a REAL would keep 15): written as text, read back as written, and
/// compared as that text on the next run.
#[tokio::test]
async fn exact_numbers_and_far_timestamps_reach_sqlite_text_columns_whole() {
    let rows = "(1, 1234567890123456789012345678.1234567890, 9223372036854775807, '0001-01-01 00:00:00'),
        (2, -0.0000000001, -9223372036854775808, '9999-12-31 23:59:59.999999'), (3, 0, 0, '2024-03-31 02:30:00.5'), (4, NULL, NULL, NULL)";
    let f = Folder::new();
    for source in [Db::Postgres, Db::Mariadb] {
        let label = format!("exact_{source:?}_sqlite").to_lowercase();
        let src = match source {
            Db::Postgres => postgres(&label, &format!("CREATE TABLE s (k int PRIMARY KEY, n numeric(38,10), b bigint, ts timestamp(6)); INSERT INTO s VALUES {rows};")).await,
            _ => mariadb(&label, &format!("CREATE TABLE s (k int PRIMARY KEY, n decimal(38,10), b bigint, ts datetime(6)); INSERT INTO s VALUES {rows};")).await,
        };
        let db = f
            .sqlite(
                &format!("{label}.db"),
                "CREATE TABLE d (k INTEGER PRIMARY KEY, n TEXT, b INTEGER, ts TEXT);",
            )
            .await;
        f.write(
            "job.toml",
            &format!("name = \"{label}\"\n[source]\nurl = \"{src}\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://{}\"\ntable = \"d\"\n[match]\nk = \"k\"\n", db.display()),
        );
        let (code, out, err) = recon(&["apply", "job.toml"], f.dir.path());
        assert_eq!(code, 0, "{source:?}: {out}{err}");
        assert_eq!(
            sqlite_text(&db, "SELECT n || '|' || b || '|' || ts FROM d ORDER BY k").await,
            vec![
                Some("1234567890123456789012345678.1234567890|9223372036854775807|0001-01-01 00:00:00".into()),
                Some("-0.0000000001|-9223372036854775808|9999-12-31 23:59:59.999999".into()),
                Some("0.0000000000|0|2024-03-31 02:30:00.500".into()),
                None,
            ],
            "{source:?}"
        );
        let (code, out, err) = recon(&["plan", "job.toml", "--exit-code"], f.dir.path());
        assert_eq!(code, 0, "{source:?} did not converge: {out}{err}");
    }
}
