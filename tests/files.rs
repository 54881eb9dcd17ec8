//! File endpoints read by DataFusion: CSV, Parquet, JSON (array) and JSON Lines, on either side.

use crate::support::*;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use recon::Action;
use serde_json::json;

const SOURCE_CSV: &str = "reference,price,item_count\nA-1,12.50,3\nA-2,20.00,1\nA-3,7.25,2\n";

fn job(source: &str, destination: &str) -> String {
    format!(
        "[source]\nurl = \"{source}\"\n[destination]\nurl = \"{destination}\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"total_price\"\nitem_count = \"number_of_items\"\n"
    )
}

fn assert_orders(c: &recon::Changeset) {
    // A-1 price changed, A-2 unchanged (20.00 vs 20), A-3 missing, Z-9 extra.
    assert_eq!(counts(c), (1, 1, 1, 1), "{:?}", c.changes);
    assert_eq!(changed_columns(c, change(c, "A-1")), ["total_price"]);
    assert_eq!(change(c, "A-3").action, Action::Insert);
    assert_eq!(change(c, "Z-9").action, Action::Delete);
}

#[tokio::test]
async fn csv_to_json_lines() {
    let f = Folder::new();
    f.write("s.csv", SOURCE_CSV);
    f.write(
        "d.jsonl",
        "{\"code\":\"A-1\",\"total_price\":10.0,\"number_of_items\":3}\n{\"code\":\"A-2\",\"total_price\":20,\"number_of_items\":1}\n{\"code\":\"Z-9\",\"total_price\":1.5,\"number_of_items\":null}\n",
    );
    assert_orders(&plan(&f.job(&job("s.csv", "d.jsonl"))).await);
}

#[tokio::test]
async fn json_array_to_parquet() {
    let f = Folder::new();
    f.write(
        "s.json",
        r#"[{"reference":"A-1","price":12.5,"item_count":3},{"reference":"A-2","price":20.0,"item_count":1},{"reference":"A-3","price":7.25,"item_count":2}]"#,
    );
    let ctx = SessionContext::new();
    let df = ctx
        .sql("SELECT * FROM (VALUES ('A-1', CAST(10.00 AS DECIMAL(10,2)), 3), ('A-2', CAST(20.00 AS DECIMAL(10,2)), 1), ('Z-9', CAST(1.00 AS DECIMAL(10,2)), 4)) AS t(code, total_price, number_of_items)")
        .await
        .unwrap();
    df.write_parquet(
        f.path("d.parquet").to_str().unwrap(),
        DataFrameWriteOptions::new().with_single_file_output(true),
        None,
    )
    .await
    .unwrap();
    let c = plan(&f.job(&job("s.json", "d.parquet"))).await;
    assert_orders(&c);
    // JSON numbers are read exactly, as decimals at the file's largest scale.
    assert_eq!(change(&c, "A-1").destination[0], json!("10.00"));
    assert_eq!(change(&c, "A-1").source[0], json!("12.50"));
}

#[tokio::test]
async fn csv_keeps_mixed_case_headers() {
    let f = Folder::new();
    f.write("s.csv", "OrderNo,Amount Cents\nA,100\nB,200\n");
    f.write("d.csv", "OrderNo,Amount Cents\nA,100\nB,201\n");
    let c = plan(&f.job("[source]\nurl = \"s.csv\"\n[destination]\nurl = \"d.csv\"\n[match]\nOrderNo = \"OrderNo\"\n")).await;
    assert_eq!(c.compared_columns, ["Amount Cents"]);
    assert_eq!(counts(&c), (0, 1, 0, 1));
}

#[tokio::test]
async fn a_missing_file_names_the_path() {
    let f = Folder::new();
    f.write("s.csv", SOURCE_CSV);
    let e = plan_error(&f.job(&job("s.csv", "absent.parquet"))).await;
    assert!(
        matches!(&e, recon::Error::Io { path, .. } if path.ends_with("absent.parquet")),
        "{e:?}"
    );
}
