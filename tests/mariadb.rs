//! MariaDB through sqlx: declared types (DECIMAL, DATETIME vs TIMESTAMP, unsigned BIGINT, TINYINT(1)
//! booleans) and the MariaDB → Parquet pair.

use crate::support::*;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use serde_json::json;

#[tokio::test]
async fn mariadb_types_are_read_exactly() {
    let url = mariadb(
        "types",
        "CREATE TABLE s (id INT, amount DECIMAL(10,2), big BIGINT UNSIGNED, at TIMESTAMP(6) NULL, naive DATETIME(6),
                         day DATE, flag TINYINT(1), name VARCHAR(20), ratio DOUBLE, small TINYINT UNSIGNED);
         CREATE TABLE d LIKE s;
         INSERT INTO s VALUES (1, 10.50, 18446744073709551615, '2024-03-01 10:00:00.123456', '2024-03-01 10:00:00.5', '2024-03-01', 1, 'x', 0.5, 255),
                              (2, 3.00, 1, NULL, '2024-03-01 00:00:00', '2024-03-02', 0, '', 1.5, 0);
         INSERT INTO d VALUES (1, 10.50, 18446744073709551615, '2024-03-01 10:00:00.123456', '2024-03-01 10:00:00.5', '2024-03-01', 1, 'x', 0.5, 255),
                              (2, 3.01, 1, '2024-03-01 00:00:00', '2024-03-01 00:00:00', '2024-03-02', 1, NULL, 1.5, 0);",
    )
    .await;
    let f = Folder::new();
    let c = plan(&f.job(&format!(
        "[source]\nurl = \"{url}\"\ntable = \"s\"\n[destination]\nurl = \"{url}\"\ntable = \"d\"\n[match]\nid = \"id\"\n"
    )))
    .await;
    assert_eq!(counts(&c), (0, 1, 0, 1), "{:?}", c.changes);
    let row = change(&c, "2");
    assert_eq!(changed_columns(&c, row), ["amount", "at", "flag", "name"]);
    assert_eq!(row.source[0], json!("3.00"));
    assert_eq!(row.destination[0], json!("3.01"));
}

#[tokio::test]
async fn mariadb_source_parquet_destination() {
    let url = mariadb(
        "to_parquet",
        "CREATE TABLE source_order (reference VARCHAR(10), price DECIMAL(10,2), item_count INT);
         INSERT INTO source_order VALUES ('A-1', 12.50, 3), ('A-2', 20.00, 1), ('A-3', 7.25, 2), ('A-4', NULL, 1);",
    )
    .await;
    let f = Folder::new();
    let ctx = SessionContext::new();
    let df = ctx
        .sql("SELECT * FROM (VALUES (1, 'A-1', CAST(12.5 AS DECIMAL(12,3)), 3), (2, 'A-2', CAST(20 AS DECIMAL(12,3)), 2), (3, 'A-4', CAST(NULL AS DECIMAL(12,3)), 1), (4, 'Z-9', CAST(1 AS DECIMAL(12,3)), 1)) AS t(id, code, total_price, number_of_items)")
        .await
        .unwrap();
    df.write_parquet(
        f.path("d.parquet").to_str().unwrap(),
        DataFrameWriteOptions::new().with_single_file_output(true),
        None,
    )
    .await
    .unwrap();
    let c = plan(&f.job(&format!(
        "[source]\nurl = \"{url}\"\ntable = \"source_order\"\n[destination]\nurl = \"d.parquet\"\nid = \"id\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"total_price\"\nitem_count = \"number_of_items\"\n"
    )))
    .await;
    assert_eq!(counts(&c), (1, 1, 1, 2), "{:?}", c.changes);
    assert_eq!(changed_columns(&c, change(&c, "A-2")), ["number_of_items"]);
    assert_eq!(change(&c, "Z-9").id, json!(4));
}
