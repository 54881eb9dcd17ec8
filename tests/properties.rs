//! Property: for random source and destination tables (real SQLite files), the changeset's counts
//! equal an independent computation with Rust maps, and applying the changeset to the destination
//! in memory yields exactly the source.

use std::collections::BTreeMap;

use proptest::prelude::*;
use recon::Action;
use serde_json::{Value, json};

use crate::support::*;

type Row = (Option<i64>, Option<String>, Option<bool>);
type Table = BTreeMap<i64, Row>;

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::of(-3i64..3),
        proptest::option::of(prop_oneof![Just(String::new()), "[ab]{1,2}"]),
        proptest::option::of(any::<bool>()),
    )
}

fn table() -> impl Strategy<Value = Table> {
    proptest::collection::btree_map(0i64..40, row(), 0..30)
}

fn sql_value<T: ToString>(v: &Option<T>, quote: bool) -> String {
    match v {
        None => "NULL".into(),
        Some(v) if quote => format!("'{}'", v.to_string()),
        Some(v) => v.to_string(),
    }
}

fn inserts(name: &str, t: &Table) -> String {
    t.iter()
        .map(|(k, (n, s, b))| {
            let b = b.map(|b| b as i64);
            format!(
                "INSERT INTO {name} VALUES ({k}, {}, {}, {});\n",
                sql_value(n, false),
                sql_value(s, true),
                sql_value(&b, false)
            )
        })
        .collect()
}

fn as_json(r: &Row) -> Vec<Value> {
    vec![json!(r.0), json!(r.1), json!(r.2)]
}

async fn check(source: Table, destination: Table) {
    let f = Folder::new();
    let script = format!(
        "CREATE TABLE s (k INTEGER, n INTEGER, t TEXT, b BOOLEAN);\nCREATE TABLE d (key INTEGER, n INTEGER, t TEXT, b BOOLEAN);\n{}{}",
        inserts("s", &source),
        inserts("d", &destination)
    );
    f.sqlite("p.db", &script).await;
    let c = plan(&f.job(
        "[source]\nurl = \"sqlite://p.db\"\ntable = \"s\"\n[destination]\nurl = \"sqlite://p.db\"\ntable = \"d\"\n[match]\nk = \"key\"\n[compare]\nn = \"n\"\nt = \"t\"\nb = \"b\"\n",
    ))
    .await;

    let insert = source
        .keys()
        .filter(|k| !destination.contains_key(k))
        .count() as u64;
    let delete = destination
        .keys()
        .filter(|k| !source.contains_key(k))
        .count() as u64;
    let update = source
        .iter()
        .filter(|(k, r)| destination.get(k).is_some_and(|d| d != *r))
        .count() as u64;
    let unchanged = source.len() as u64 - insert - update;
    assert_eq!(
        counts(&c),
        (insert, update, delete, unchanged),
        "{:?}",
        c.changes
    );

    let mut applied: BTreeMap<i64, Vec<Value>> =
        destination.iter().map(|(k, r)| (*k, as_json(r))).collect();
    for ch in &c.changes {
        let key = ch.key[0].as_i64().expect("integer key");
        match ch.action {
            Action::Insert => {
                applied.insert(key, ch.source.clone());
            }
            Action::Update => {
                let row = applied.get_mut(&key).expect("updated key exists");
                for (i, changed) in ch.changed.iter().enumerate() {
                    if *changed {
                        row[i] = ch.source[i].clone();
                    }
                }
            }
            Action::Delete => {
                applied.remove(&key);
            }
        }
    }
    let expected: BTreeMap<i64, Vec<Value>> =
        source.iter().map(|(k, r)| (*k, as_json(r))).collect();
    assert_eq!(applied, expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn changeset_matches_an_independent_diff_and_applies_to_the_source(source in table(), destination in table()) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(check(source, destination));
    }
}
