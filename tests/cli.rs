//! The `recon` binary end to end: formats, `--output`, `--limit`, exit codes, `check`, `init`.

use crate::support::*;

fn orders_job() -> String {
    fixture("orders").join("job.toml").display().to_string()
}

#[test]
fn plan_table_lists_changes_with_before_and_after() {
    let (code, out, err) = recon(&["plan", &orders_job()], &fixture("orders"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("orders: 1 to insert, 3 to update, 1 to delete, 1 unchanged (source 5 rows, destination 5 rows)"), "{out}");
    assert!(out.contains("total_price: 10.0 → 12.5"), "{out}");
    assert!(out.contains("total_price: 3.0 → NULL"), "{out}");
    assert!(
        err.is_empty(),
        "stderr should be quiet when not a terminal: {err}"
    );
}

#[test]
fn plan_json_is_the_documented_document() {
    let (code, out, _) = recon(
        &["plan", &orders_job(), "--format", "json"],
        &fixture("orders"),
    );
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["job"], "orders");
    assert_eq!(
        doc["summary"],
        serde_json::json!({"source_rows": 5, "destination_rows": 5, "insert": 1, "update": 3, "delete": 1, "unchanged": 1})
    );
    let update = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"]["code"] == "A-3")
        .unwrap();
    assert_eq!(update["action"], "update");
    assert_eq!(update["id"], 3);
    assert_eq!(
        update["changed"],
        serde_json::json!({"number_of_items": {"from": 4, "to": 2}})
    );
}

#[test]
fn limit_caps_listing_but_not_counts() {
    let (_, out, _) = recon(
        &["plan", &orders_job(), "-f", "json", "--limit", "2"],
        &fixture("orders"),
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["changes"].as_array().unwrap().len(), 2);
    assert_eq!(doc["summary"]["update"], 3);
    let (_, table, _) = recon(&["plan", &orders_job(), "--limit", "1"], &fixture("orders"));
    assert!(table.contains("… 4 more not listed"), "{table}");
}

#[test]
fn jsonl_and_csv_have_one_change_per_line() {
    let (_, out, _) = recon(&["plan", &orders_job(), "-f", "jsonl"], &fixture("orders"));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["action"], "insert");
    let folder = Folder::new();
    let path = folder.path("changes.csv");
    let (code, out, _) = recon(
        &[
            "plan",
            &orders_job(),
            "-f",
            "csv",
            "--output",
            path.to_str().unwrap(),
        ],
        &fixture("orders"),
    );
    assert_eq!((code, out.as_str()), (0, ""));
    let csv = std::fs::read_to_string(path).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "action,code,id,changed,total_price,total_price_before,number_of_items,number_of_items_before"
    );
    assert!(
        rows.contains(&"update,A-3,3,number_of_items,7.25,7.25,2,4"),
        "{csv}"
    );
    assert_eq!(rows.len(), 6);
}

#[test]
fn exit_code_flag_reports_drift_with_4() {
    let (code, _, _) = recon(
        &["plan", &orders_job(), "--exit-code", "-f", "json"],
        &fixture("orders"),
    );
    assert_eq!(code, 4);
}

#[test]
fn an_invalid_job_exits_78_listing_every_problem() {
    let f = Folder::new();
    f.write(
        "bad.toml",
        "[source]\nurl = \"x.csv\"\nextra = 1\n[destination]\n",
    );
    let (code, out, err) = recon(&["plan", "bad.toml"], f.dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: the job file is invalid (3 problems)"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:3: unknown key `source.extra`"),
        "{err}"
    );
    assert!(err.contains("`[destination]` needs a `url`"), "{err}");
    assert!(err.contains("missing `[match]`"), "{err}");
    assert!(err.contains("hint: "), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = recon(&["plan"], std::path::Path::new("."));
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = recon(
        &["plan", "x.toml", "--format", "yaml"],
        std::path::Path::new("."),
    );
    assert_eq!(code, 2);
}

#[test]
fn runtime_failures_exit_1_with_cause_and_hint() {
    let f = Folder::new();
    f.write("job.toml", "[source]\nurl = \"missing.csv\"\n[destination]\nurl = \"sqlite://nope.db\"\ntable = \"t\"\n[match]\na = \"b\"\n");
    let (code, _, err) = recon(&["plan", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: cannot read `") && err.contains("missing.csv"),
        "{err}"
    );
}

#[test]
fn check_reports_every_problem_and_writes_nothing() {
    let f = Folder::new();
    std::fs::copy(fixture("orders").join("app.db"), f.path("app.db")).unwrap();
    let before = std::fs::read(f.path("app.db")).unwrap();
    f.write("job.toml", "[source]\nurl = \"missing.csv\"\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"destination_order\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"totl_price\"\n");
    let (code, out, err) = recon(&["check", "job.toml"], f.dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("reached destination: sqlite://"), "{out}");
    assert!(err.contains("missing.csv"), "{err}");
    assert_eq!(std::fs::read(f.path("app.db")).unwrap(), before);

    let (code, out, err) = recon(&["check", &orders_job()], &fixture("orders"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok: both sides and the state store are reachable"),
        "{out}"
    );
    assert!(
        out.contains("reached state store: ") && out.contains("created by the first apply"),
        "{out}"
    );
    assert!(
        !fixture("orders").join(".recon").exists(),
        "check writes nothing"
    );
}

#[test]
fn check_names_a_misspelt_column() {
    let f = Folder::new();
    std::fs::copy(fixture("orders").join("app.db"), f.path("app.db")).unwrap();
    std::fs::copy(fixture("orders").join("source_order.csv"), f.path("s.csv")).unwrap();
    f.write("job.toml", "[source]\nurl = \"s.csv\"\n[destination]\nurl = \"sqlite://app.db\"\ntable = \"destination_order\"\n[match]\nreference = \"code\"\n[compare]\nprice = \"totl_price\"\nitem_cnt = \"number_of_items\"\n");
    let (code, _, err) = recon(&["check", "job.toml"], f.dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("destination column `totl_price` is not in the destination snapshot"),
        "{err}"
    );
    assert!(err.contains("source column `item_cnt`"), "{err}");
}

#[test]
fn init_writes_a_runnable_example_and_never_overwrites() {
    let f = Folder::new();
    let (code, out, err) = recon(&["init", "demo"], f.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo/orders.toml"), "{out}");
    let (code, out, _) = recon(&["plan", "demo/orders.toml", "-f", "json"], f.dir.path());
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["summary"]["update"], 3);
    let (code, _, err) = recon(&["init", "demo"], f.dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn help_teaches_with_examples() {
    let (code, out, _) = recon(&["plan", "--help"], std::path::Path::new("."));
    assert_eq!(code, 0);
    assert!(
        out.contains("--exit-code") && out.contains("Examples:"),
        "{out}"
    );
}

#[test]
fn a_dry_run_changes_nothing() {
    let f = Folder::new();
    for name in ["app.db", "source_order.csv", "job.toml"] {
        std::fs::copy(fixture("orders").join(name), f.path(name)).unwrap();
    }
    let before = std::fs::read(f.path("app.db")).unwrap();
    for format in ["table", "json", "csv"] {
        let (code, _, err) = recon(&["plan", "job.toml", "-f", format], f.dir.path());
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(std::fs::read(f.path("app.db")).unwrap(), before);
    assert!(!f.path(".recon").exists(), "plan keeps no state");
}
