//! Diff semantics on real SQLite files: each change kind, one-column changes, NULL handling,
//! composite keys, renamed and oddly named columns, key checks, and a user diff_query.

use crate::support::*;
use recon::{Action, Error, Side};
use serde_json::json;

const ORDERS: &str = r#"
CREATE TABLE source_order (reference TEXT, price NUMERIC, item_count INTEGER, note TEXT);
CREATE TABLE destination_order (id INTEGER PRIMARY KEY, code TEXT, total_price NUMERIC, number_of_items INTEGER, note TEXT);
"#;

fn orders_job() -> &'static str {
    r#"
[source]
url = "sqlite://data.db"
table = "source_order"
[destination]
url = "sqlite://data.db"
table = "destination_order"
id = "id"
[match]
reference = "code"
[compare]
price = "total_price"
item_count = "number_of_items"
note = "note"
"#
}

async fn orders(rows: &str) -> (Folder, recon::Changeset) {
    let f = Folder::new();
    f.sqlite("data.db", &format!("{ORDERS}{rows}")).await;
    let c = plan(&f.job(orders_job())).await;
    (f, c)
}

#[tokio::test]
async fn each_change_kind_is_found() {
    let (_f, c) = orders(
        "INSERT INTO source_order VALUES ('A-1', 12.5, 3, 'x'), ('A-2', 20, 1, 'y'), ('A-4', 15, 5, NULL);
         INSERT INTO destination_order VALUES (1, 'A-1', 10, 3, 'x'), (2, 'A-2', 20, 1, 'y'), (9, 'Z-9', 99, 1, NULL);",
    )
    .await;
    assert_eq!(counts(&c), (1, 1, 1, 1));
    assert_eq!(c.summary.source_rows, 3);
    assert_eq!(c.summary.destination_rows, 3);
    assert_eq!(change(&c, "A-4").action, Action::Insert);
    let update = change(&c, "A-1");
    assert_eq!(update.action, Action::Update);
    assert_eq!(update.id, json!(1));
    assert_eq!(changed_columns(&c, update), ["total_price"]);
    let delete = change(&c, "Z-9");
    assert_eq!(
        (delete.action, delete.id.clone()),
        (Action::Delete, json!(9))
    );
}

#[tokio::test]
async fn a_change_in_only_one_of_several_columns_counts() {
    let (_f, c) = orders(
        "INSERT INTO source_order VALUES ('P', 1, 1, 'a'), ('I', 1, 2, 'a'), ('N', 1, 1, 'b'), ('S', 1, 1, 'a');
         INSERT INTO destination_order VALUES (1, 'P', 2, 1, 'a'), (2, 'I', 1, 1, 'a'), (3, 'N', 1, 1, 'a'), (4, 'S', 1, 1, 'a');",
    )
    .await;
    assert_eq!(counts(&c), (0, 3, 0, 1));
    assert_eq!(changed_columns(&c, change(&c, "P")), ["total_price"]);
    assert_eq!(changed_columns(&c, change(&c, "I")), ["number_of_items"]);
    assert_eq!(changed_columns(&c, change(&c, "N")), ["note"]);
}

#[tokio::test]
async fn nulls_compare_safely() {
    let (_f, c) = orders(
        "INSERT INTO source_order VALUES ('to-value', 1, 1, 'now set'), ('to-null', 1, 1, NULL), ('both-null', 1, 1, NULL), ('empty', 1, 1, '');
         INSERT INTO destination_order VALUES (1, 'to-value', 1, 1, NULL), (2, 'to-null', 1, 1, 'was set'), (3, 'both-null', 1, 1, NULL), (4, 'empty', 1, 1, NULL);",
    )
    .await;
    assert_eq!(counts(&c), (0, 3, 0, 1), "{:?}", c.changes);
    let v = change(&c, "to-value");
    assert_eq!(
        (v.destination[2].clone(), v.source[2].clone()),
        (json!(null), json!("now set"))
    );
    let n = change(&c, "to-null");
    assert_eq!(
        (n.destination[2].clone(), n.source[2].clone()),
        (json!("was set"), json!(null))
    );
    // An empty string is a value, not NULL.
    assert_eq!(changed_columns(&c, change(&c, "empty")), ["note"]);
}

#[tokio::test]
async fn boolean_columns_change_alone() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (k INTEGER, active BOOLEAN, vip BOOLEAN);
         CREATE TABLE d (k INTEGER, active BOOLEAN, vip BOOLEAN);
         INSERT INTO s VALUES (1, 1, 1), (2, 1, 0), (3, 0, 0);
         INSERT INTO d VALUES (1, 1, 0), (2, 1, 0), (3, 1, 0);",
    )
    .await;
    let c = plan(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    ))
    .await;
    assert_eq!(counts(&c), (0, 2, 0, 1));
    assert_eq!(changed_columns(&c, change(&c, "1")), ["vip"]);
    assert_eq!(changed_columns(&c, change(&c, "3")), ["active"]);
    assert_eq!(change(&c, "1").source[1], json!(true));
}

#[tokio::test]
async fn composite_keys_match_on_every_column() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (region TEXT, num INTEGER, qty INTEGER);
         CREATE TABLE d (area TEXT, number INTEGER, qty INTEGER);
         INSERT INTO s VALUES ('eu', 1, 5), ('us', 1, 6), ('eu', 2, 7);
         INSERT INTO d VALUES ('eu', 1, 5), ('us', 1, 9), ('us', 2, 7);",
    )
    .await;
    let c = plan(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nregion = \"area\"\nnum = \"number\"\n",
    ))
    .await;
    assert_eq!(counts(&c), (1, 1, 1, 1));
    assert_eq!(c.key_columns, ["area", "number"]);
    let keys: Vec<_> = c
        .changes
        .iter()
        .map(|ch| (ch.action, ch.key.clone()))
        .collect();
    assert!(
        keys.contains(&(Action::Insert, vec![json!("eu"), json!(2)])),
        "{keys:?}"
    );
    assert!(
        keys.contains(&(Action::Update, vec![json!("us"), json!(1)])),
        "{keys:?}"
    );
    assert!(
        keys.contains(&(Action::Delete, vec![json!("us"), json!(2)])),
        "{keys:?}"
    );
}

#[tokio::test]
async fn mixed_case_and_odd_column_names_work() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        r#"CREATE TABLE "Source Orders" ("OrderNo" TEXT, "Amount Cents" INTEGER, "we""ird" TEXT);
           CREATE TABLE dest ("orderNo" TEXT, "amount cents" INTEGER, "we""ird" TEXT);
           INSERT INTO "Source Orders" VALUES ('A', 100, 'x'), ('B', 200, 'y');
           INSERT INTO dest VALUES ('A', 100, 'x'), ('B', 250, 'z');"#,
    )
    .await;
    let c = plan(&f.job(
        r#"
[source]
url = "sqlite://d.db"
table = "Source Orders"
[destination]
url = "sqlite://d.db"
table = "dest"
[match]
OrderNo = "orderNo"
[compare]
"Amount Cents" = "amount cents"
'we"ird' = 'we"ird'
"#,
    ))
    .await;
    assert_eq!(counts(&c), (0, 1, 0, 1));
    assert_eq!(
        changed_columns(&c, change(&c, "B")),
        ["amount cents", "we\"ird"]
    );
}

#[tokio::test]
async fn omitted_compare_uses_same_named_columns_except_key_and_id() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (code TEXT, price REAL, only_in_source TEXT);
         CREATE TABLE d (id INTEGER, code TEXT, price REAL, only_in_destination TEXT);
         INSERT INTO s VALUES ('a', 1.5, 'x');
         INSERT INTO d VALUES (7, 'a', 2.5, 'y');",
    )
    .await;
    let c = plan(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\nid = \"id\"\n[match]\ncode = \"code\"\n",
    ))
    .await;
    assert_eq!(c.compared_columns, ["price"]);
    assert_eq!(counts(&c), (0, 1, 0, 0));
}

#[tokio::test]
async fn duplicate_keys_are_refused_with_a_sample() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (k TEXT, v INTEGER); CREATE TABLE d (k TEXT, v INTEGER);
         INSERT INTO s VALUES ('a', 1), ('b', 1);
         INSERT INTO d VALUES ('a', 1), ('a', 2), ('b', 1), ('b', 3), ('b', 4), ('c', 1);",
    )
    .await;
    let e = plan_error(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    ))
    .await;
    match &e {
        Error::DuplicateKeys {
            side,
            count,
            sample,
            ..
        } => {
            assert_eq!((*side, *count), (Side::Destination, 2));
            assert_eq!(sample[0], "k=b (3 rows)");
            assert_eq!(sample.len(), 2);
        }
        other => panic!("expected duplicate keys, got {other:?}"),
    }
    assert_eq!(e.exit_code(), 1);
    assert!(e.hint().unwrap().contains("composite key"));
}

#[tokio::test]
async fn integer_keys_dense_or_sparse_are_checked_like_any_other() {
    // One integer key column is checked without a grouping (a bitmap over dense ids, a sort of
    // sparse ones): the same counts, samples and order of errors as for any key.
    for (ids, what) in [
        ("1, 2, 3, 4", "dense"),
        ("-9000000000000000000, 7, 9000000000000000000, 42", "sparse"),
    ] {
        let ids: Vec<&str> = ids.split(", ").collect();
        let f = Folder::new();
        f.sqlite(
            "d.db",
            &format!(
                "CREATE TABLE s (k INTEGER, v INTEGER); CREATE TABLE d (k INTEGER, v INTEGER);
                 INSERT INTO s VALUES ({a}, 1), ({b}, 1), ({c}, 1), ({d}, 1);
                 INSERT INTO d VALUES ({a}, 1), ({b}, 2), ({b}, 3), ({c}, 1), ({c}, 1), ({c}, 1), ({d}, 5);",
                a = ids[0],
                b = ids[1],
                c = ids[2],
                d = ids[3]
            ),
        )
        .await;
        let job = "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n";
        match plan_error(&f.job(job)).await {
            Error::DuplicateKeys {
                side,
                count,
                sample,
                ..
            } => {
                assert_eq!((side, count), (Side::Destination, 2), "{what}");
                assert_eq!(
                    sample,
                    [
                        format!("k={} (3 rows)", ids[2]),
                        format!("k={} (2 rows)", ids[1])
                    ],
                    "{what}"
                );
            }
            other => panic!("{what}: expected duplicate keys, got {other:?}"),
        }
        // NULL keys are reported before duplicates, with their count.
        f.sqlite("d.db", "INSERT INTO d VALUES (NULL, 1), (NULL, 2);")
            .await;
        match plan_error(&f.job(job)).await {
            Error::NullKeys { side, count, .. } => {
                assert_eq!((side, count), (Side::Destination, 2), "{what}")
            }
            other => panic!("{what}: expected NULL keys, got {other:?}"),
        }
        // Unique again: the plan goes through with the right counts.
        f.sqlite(
            "d.db",
            "DELETE FROM d WHERE k IS NULL OR rowid NOT IN (SELECT min(rowid) FROM d GROUP BY k);",
        )
        .await;
        let c = recon::plan(&f.job(job), None, &recon::progress::Progress::hidden())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            (
                c.summary.source_rows,
                c.summary.destination_rows,
                c.summary.update
            ),
            (4, 4, 2),
            "{what}"
        );
    }
}

#[tokio::test]
async fn null_keys_are_refused_with_a_count() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (k TEXT, j INTEGER, v INTEGER); CREATE TABLE d (k TEXT, j INTEGER, v INTEGER);
         INSERT INTO s VALUES ('a', 1, 1), (NULL, 1, 1), ('b', NULL, 2), (NULL, NULL, 3);
         INSERT INTO d VALUES ('a', 1, 1);",
    )
    .await;
    let e = plan_error(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\nj = \"j\"\n",
    ))
    .await;
    match e {
        Error::NullKeys {
            side,
            count,
            sample,
            columns,
        } => {
            assert_eq!((side, count, columns.as_str()), (Side::Source, 3, "k, j"));
            assert_eq!(sample.len(), 3);
            assert!(sample.contains(&"k=b, j=NULL".to_string()), "{sample:?}");
        }
        other => panic!("expected null keys, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_diff_query_replaces_the_generated_comparison() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (reference TEXT, price REAL); CREATE TABLE d (code TEXT, total_price REAL);
         INSERT INTO s VALUES ('a', 1.0), ('b', 2.0), ('c', 3.0);
         INSERT INTO d VALUES ('a', 1.0), ('b', 2.5), ('z', 9.0);",
    )
    .await;
    // Only price increases count as updates in this user's rule; deletes are never proposed.
    f.write(
        "my_diff.sql",
        "SELECT CASE WHEN d.code IS NULL THEN 'insert' ELSE 'UPDATE' END AS action,
                s.reference AS code, s.price AS total_price
         FROM source s LEFT JOIN destination d ON s.reference = d.code
         WHERE d.code IS NULL OR s.price > d.total_price + 0.1 OR s.price < d.total_price - 0.1",
    );
    let c = plan(&f.job(
        "diff_query = \"my_diff.sql\"\n[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"total_price\"\n",
    ))
    .await;
    assert_eq!(
        (c.summary.insert, c.summary.update, c.summary.delete),
        (1, 1, 0)
    );
    let b = change(&c, "b");
    assert_eq!(
        (b.destination[0].clone(), b.source[0].clone()),
        (json!(2.5), json!(2.0))
    );
    assert_eq!(change(&c, "c").action, Action::Insert);
}

#[tokio::test]
async fn a_diff_query_with_a_bad_action_is_refused() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (k TEXT); CREATE TABLE d (k TEXT); INSERT INTO s VALUES ('a');",
    )
    .await;
    f.write("bad.sql", "SELECT 'upsert' AS action, k FROM source");
    let e = plan_error(&f.job(
        "diff_query = \"bad.sql\"\n[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    ))
    .await;
    assert!(
        matches!(&e, Error::DiffQuery { reason, .. } if reason.contains("upsert")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_diff_query_cannot_modify_anything() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (k TEXT); CREATE TABLE d (k TEXT); INSERT INTO s VALUES ('a');",
    )
    .await;
    f.write("evil.sql", "DROP TABLE source");
    let e = plan_error(&f.job(
        "diff_query = \"evil.sql\"\n[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    ))
    .await;
    assert!(matches!(e, Error::DiffQuery { .. }), "{e:?}");
}

#[tokio::test]
async fn a_missing_column_is_named_with_what_exists() {
    let f = Folder::new();
    f.sqlite(
        "d.db",
        "CREATE TABLE s (k TEXT, v INT); CREATE TABLE d (k TEXT, w INT);",
    )
    .await;
    let e = plan_error(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n[compare]\nv = \"vv\"\nnope = \"w\"\n",
    ))
    .await;
    let Error::Mapping(problems) = e else {
        panic!("expected mapping problems, got {e:?}")
    };
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].contains("destination column `vv`") && text[0].contains("`w`"),
        "{text:?}"
    );
    assert!(text[1].contains("source column `nope`"), "{text:?}");
}

#[tokio::test]
async fn text_keys_do_not_meet_integer_keys() {
    let f = Folder::new();
    f.sqlite("d.db", "CREATE TABLE s (k TEXT); CREATE TABLE d (k INTEGER); INSERT INTO s VALUES ('1'); INSERT INTO d VALUES (1);").await;
    let e = plan_error(&f.job(
        "[source]\nurl = \"sqlite://d.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://d.db\"\ntable = \"d\"\n[match]\nk = \"k\"\n",
    ))
    .await;
    let Error::Mapping(problems) = &e else {
        panic!("{e:?}")
    };
    assert!(
        matches!(&problems[0], Error::Incomparable { source_type, destination_type, .. } if source_type == "text" && destination_type.starts_with("integer"))
    );
    assert!(problems[0].hint().unwrap().contains("CAST"));
}
