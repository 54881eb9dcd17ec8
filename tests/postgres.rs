//! PostgreSQL 15 through binary COPY: exact types (numeric, timestamptz, uuid, json, bytea, big
//! integers), type reconciliation, and cross-system pairs with SQLite and CSV.

use crate::support::*;
use recon::Action;
use serde_json::json;

fn pg_job(url: &str, source: &str, destination: &str, keys: &str, compare: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n{source}\n[destination]\nurl = \"{url}\"\n{destination}\n[match]\n{keys}\n{compare}"
    )
}

#[tokio::test]
async fn types_are_read_exactly_and_reconciled() {
    let url = postgres(
        "types",
        r#"
        CREATE TABLE s (id int4, amount numeric(10,1), big int8, at timestamptz, naive timestamp,
                        day date, tag uuid, doc jsonb, flag bool, name varchar(20), raw bytea, ratio float4);
        CREATE TABLE d (id int8, amount numeric(12,2), big numeric, at timestamptz, naive timestamptz,
                        day date, tag uuid, doc json, flag bool, name text, raw bytea, ratio float8);
        SET TIME ZONE 'UTC';
        INSERT INTO s VALUES
          (1, 10.5, 9007199254740993, '2024-03-01 12:00:00.123456+02', '2024-03-01 10:00:00.123456', '2024-03-01',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}', true, 'x', '\x0102', 0.5),
          (2, 1.0, -1, '2024-03-01 00:00:00+00', '2024-03-01 00:00:00', '2024-03-02',
           NULL, NULL, false, '', NULL, 0.25);
        INSERT INTO d VALUES
          (1, 10.50, 9007199254740993, '2024-03-01 10:00:00.123456+00', '2024-03-01 10:00:00.123456+00', '2024-03-01',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}', true, 'x', '\x0102', 0.5),
          (2, 1.0, -2, '2024-03-01 00:00:00.000001+00', '2024-03-01 00:00:00', '2024-03-02',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '{"b": 2}', true, NULL, '\x00', 0.25);
        "#,
    )
    .await;
    let f = Folder::new();
    let c = plan(&f.job(&pg_job(
        &url,
        "table = \"s\"",
        "table = \"d\"",
        "id = \"id\"",
        "",
    )))
    .await;
    // Row 1 is equal everywhere despite numeric scales, zones, int4/int8 and float4/float8.
    assert_eq!(counts(&c), (0, 1, 0, 1), "{:?}", c.changes);
    let row = change(&c, "2");
    assert_eq!(
        changed_columns(&c, row),
        ["big", "at", "tag", "doc", "flag", "name", "raw"],
        "{row:?}"
    );
    let col = |name: &str| c.compared_columns.iter().position(|n| n == name).unwrap();
    assert_eq!(row.source[col("big")], json!(-1));
    assert_eq!(row.destination[col("big")], json!("-2"));
    assert_eq!(
        row.destination[col("tag")],
        json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12")
    );
    assert_eq!(row.source[col("name")], json!(""));
    assert_eq!(row.destination[col("name")], json!(null));
    assert_eq!(
        row.destination[col("at")],
        json!("2024-03-01T00:00:00.000001Z")
    );
}

#[tokio::test]
async fn decimals_keep_their_scale_in_output() {
    let url = postgres(
        "decimals",
        "CREATE TABLE s (k text, price numeric(10,2)); CREATE TABLE d (k text, price numeric);
         INSERT INTO s VALUES ('a', 12.50), ('b', 10.5), ('c', 0.01);
         INSERT INTO d VALUES ('a', 10.00), ('b', 10.50), ('c', 0.0100);",
    )
    .await;
    let f = Folder::new();
    let c = plan(&f.job(&pg_job(
        &url,
        "table = \"s\"",
        "table = \"d\"",
        "k = \"k\"",
        "",
    )))
    .await;
    assert_eq!(counts(&c), (0, 1, 0, 2));
    let a = change(&c, "a");
    assert_eq!(
        (a.destination[0].clone(), a.source[0].clone()),
        (json!("10.0000"), json!("12.50"))
    );
}

#[tokio::test]
async fn a_query_source_and_unusual_types_read_as_text() {
    let url = postgres(
        "query",
        r#"CREATE TABLE "Orders" ("OrderNo" text, span interval, tags text[], amount numeric);
           INSERT INTO "Orders" VALUES ('A', '1 day', '{x,y}', 'NaN'), ('B', '2 hours', '{}', 1);
           CREATE TABLE d ("OrderNo" text, span text, tags text);
           INSERT INTO d VALUES ('A', '1 day', '{x,y}'), ('B', '02:00:00', '{z}');"#,
    )
    .await;
    let f = Folder::new();
    let c = plan(&f.job(&pg_job(
        &url,
        "query = \"SELECT \\\"OrderNo\\\", span, tags FROM \\\"Orders\\\" WHERE \\\"OrderNo\\\" <> 'zzz'\"",
        "table = \"d\"",
        "OrderNo = \"OrderNo\"",
        "",
    )))
    .await;
    assert_eq!(counts(&c), (0, 1, 0, 1), "{:?}", c.changes);
    assert_eq!(changed_columns(&c, change(&c, "B")), ["tags"]);
    // numeric NaN cannot be compared exactly: a clear error naming the column.
    let e = plan_error(&f.job(&pg_job(
        &url,
        "table = \"Orders\"",
        "table = \"d\"",
        "OrderNo = \"OrderNo\"",
        "",
    )))
    .await;
    let text = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("`amount`") && text.contains("NaN"), "{text}");
}

#[tokio::test]
async fn postgres_source_sqlite_destination() {
    let url = postgres(
        "to_sqlite",
        "CREATE TABLE source_order (reference text, price numeric(10,2), item_count int4, placed_at timestamptz);
         INSERT INTO source_order SELECT 'R-' || g, g * 1.25, g % 7, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute'
         FROM generate_series(1, 20000) g;",
    )
    .await;
    let f = Folder::new();
    // SQLite keeps NUMERIC as integers or reals and timestamps as text.
    let mut script = String::from(
        "CREATE TABLE destination_order (id INTEGER PRIMARY KEY, code TEXT, total_price NUMERIC(10,2), number_of_items INTEGER, placed_at TEXT);\nBEGIN;\n",
    );
    for g in 1..=20000u32 {
        if g == 7 {
            continue; // missing → insert
        }
        let price = if g == 100 { 1.0 } else { g as f64 * 1.25 };
        let minutes = g;
        let at = format!(
            "2024-01-{:02} {:02}:{:02}:00",
            1 + minutes / 1440,
            (minutes % 1440) / 60,
            minutes % 60
        );
        let at = if g == 200 {
            "2030-01-01 00:00:00".to_string()
        } else {
            at
        };
        script.push_str(&format!(
            "INSERT INTO destination_order VALUES ({g}, 'R-{g}', {price}, {}, '{at}');\n",
            g % 7
        ));
    }
    script.push_str("INSERT INTO destination_order VALUES (99999, 'X-1', 1, 1, NULL);\nCOMMIT;\n");
    f.sqlite("app.db", &script).await;
    let c = plan(&f.job(&format!(
        "[source]\nurl = \"{url}\"\ntable = \"source_order\"\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"destination_order\"\nid = \"id\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"total_price\"\nitem_count = \"number_of_items\"\nplaced_at = \"placed_at\"\n"
    )))
    .await;
    assert_eq!(counts(&c), (1, 2, 1, 19997), "{:?}", c.changes);
    assert_eq!(changed_columns(&c, change(&c, "R-100")), ["total_price"]);
    assert_eq!(changed_columns(&c, change(&c, "R-200")), ["placed_at"]);
    assert_eq!(change(&c, "R-7").action, Action::Insert);
    assert_eq!(change(&c, "X-1").id, json!(99999));
}

#[tokio::test]
async fn csv_source_postgres_destination() {
    let url = postgres(
        "from_csv",
        "CREATE TABLE destination_order (id serial, code text, total_price numeric(10,2), number_of_items int2);
         INSERT INTO destination_order (code, total_price, number_of_items) VALUES ('A-1', 12.50, 3), ('A-2', 19.99, 1), ('A-9', 1, 1);",
    )
    .await;
    let f = Folder::new();
    f.write(
        "s.csv",
        "reference,price,item_count\nA-1,12.5,3\nA-2,20.00,1\nA-3,7.25,2\n",
    );
    let c = plan(&f.job(&format!(
        "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"{url}\"\ntable = \"destination_order\"\nid = \"id\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"total_price\"\nitem_count = \"number_of_items\"\n"
    )))
    .await;
    assert_eq!(counts(&c), (1, 1, 1, 1), "{:?}", c.changes);
    assert_eq!(change(&c, "A-2").id, json!(2));
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error() {
    let f = Folder::new();
    f.write("s.csv", "k\n1\n");
    let e = plan_error(&f.job(
        "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"postgres://nobody:secret@127.0.0.1:1/x\"\ntable = \"t\"\n[match]\nk = \"k\"\n",
    ))
    .await;
    let text = e.to_string();
    assert!(matches!(e, recon::Error::Connect { .. }), "{e:?}");
    assert!(
        text.contains("nobody:***@127.0.0.1:1") && !text.contains("secret"),
        "{text}"
    );
}

/// Snapshots are read over recon's own COPY connection (src/connect/pgwire.rs) where it can speak
/// the authentication — trust, SCRAM-SHA-256, on TCP or a unix socket — and through sqlx
/// otherwise (md5): the same rows either way; a wrong password is a clear error.
#[tokio::test]
async fn every_authentication_and_socket_reads_the_same_snapshot() {
    let url = postgres(
        "auth",
        "CREATE TABLE s (k int PRIMARY KEY, v text, n numeric(12,2));
         INSERT INTO s SELECT g, 'v' || g, g / 4.0 FROM generate_series(1, 5000) g;
         CREATE TABLE d (k int PRIMARY KEY, v text, n numeric(12,2));
         INSERT INTO d SELECT k, CASE WHEN k % 10 = 0 THEN 'x' ELSE v END, n FROM s WHERE k % 7 <> 0;
         DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'recon_scram') THEN CREATE ROLE recon_scram LOGIN; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'recon_md5') THEN CREATE ROLE recon_md5 LOGIN; END IF;
         END $$;
         SET password_encryption = 'scram-sha-256';
         ALTER ROLE recon_scram PASSWORD 'sc''ram pass';
         SET password_encryption = 'md5';
         ALTER ROLE recon_md5 PASSWORD 'md5-pass';
         GRANT SELECT ON s, d TO recon_scram, recon_md5;",
    )
    .await;
    let (_, rest) = url.split_once("://").unwrap();
    let (_, hostpath) = rest.split_once('@').unwrap();
    let (hostport, db) = hostpath.split_once('/').unwrap();
    let port = hostport.rsplit_once(':').unwrap().1;
    let socket = std::env::var("RECON_TEST_PG_SOCKET").expect("RECON_TEST_PG_SOCKET");
    let f = Folder::new();
    let run = |source: &str| {
        f.write(
            "job.toml",
            &format!(
                "[source]\nurl = \"{source}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nk = \"k\"\n"
            ),
        );
        recon(
            &["plan", "job.toml", "-f", "json", "--limit", "0", "-vv"],
            f.dir.path(),
        )
    };
    let ways = [
        (url.clone(), "own connection"),
        (
            format!("postgres://recon_scram:sc%27ram%20pass@{hostport}/{db}"),
            "own connection",
        ),
        (
            format!("postgres://postgres@localhost/{db}?host={socket}&port={port}"),
            "own connection",
        ),
        (
            format!("postgres://recon_md5:md5-pass@{hostport}/{db}"),
            "COPY through sqlx",
        ),
    ];
    for (source, way) in ways {
        let (code, out, err) = run(&source);
        assert_eq!(code, 0, "{source}: {err}");
        let summary = &json(&out)["summary"];
        assert_eq!(
            (
                summary["insert"].clone(),
                summary["update"].clone(),
                summary["unchanged"].clone()
            ),
            (json!(714), json!(429), json!(3857)),
            "{source}: {out}"
        );
        let source_lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("COPY") && l.contains("side=source"))
            .collect();
        assert!(
            source_lines.iter().any(|l| l.contains(way)),
            "{source}: {source_lines:?}"
        );
        for secret in ["ram pass", "ram%20pass", "md5-pass"] {
            assert!(!err.contains(secret), "a password in the log: {err}");
        }
    }
    let (code, _, err) = run(&format!("postgres://recon_scram:wrong@{hostport}/{db}"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("password authentication failed") && err.contains("source"),
        "{err}"
    );
}
