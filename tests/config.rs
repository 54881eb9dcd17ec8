//! The job file: every problem reported at once with its line, `${VAR}` expansion, defaults, and
//! the commented reference example parsing as documented.

use std::path::Path;

use recon::config::{FileFormat, Location, MaxChanges, Relation};
use recon::{Error, Job};

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Job, Error> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Job::parse(Path::new("/jobs/orders.toml"), text, &move |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

fn problems(text: &str) -> Vec<String> {
    match parse(text, &[]) {
        Err(Error::InvalidJob(p)) => p.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected an invalid job, got {other:?}"),
    }
}

#[test]
fn the_bundled_example_parses_as_documented() {
    let job = Job::load(&crate::support::fixture("orders").join("job.toml")).unwrap();
    assert_eq!(job.name, "orders");
    assert!(
        matches!(&job.source.location, Location::File(p, FileFormat::Csv) if p.ends_with("fixtures/orders/source_order.csv"))
    );
    assert!(
        matches!(&job.destination.location, Location::Sqlite(p) if p.ends_with("fixtures/orders/app.db"))
    );
    assert_eq!(
        job.destination.relation,
        Relation::Table("destination_order".into())
    );
    assert_eq!(job.destination.id.as_deref(), Some("id"));
    assert_eq!(job.keys[0].source, "reference");
    assert_eq!(job.keys[0].destination, "code");
    let compare = job.compare.unwrap();
    assert_eq!(
        (compare[1].source.as_str(), compare[1].destination.as_str()),
        ("item_count", "number_of_items")
    );
    assert!(!job.write.deletes);
    assert!(job.state_url.ends_with("fixtures/orders/.recon/state.db"));
}

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let found = problems(
        r#"name = "x"
colour = "blue"
[source]
url = "postgres://h/db"
tabel = "orders"
[destination]
url = "ftp://nowhere"
table = "t"
[write]
batch_size = 0
max_changes = "lots"
"#,
    );
    let expect = [
        "/jobs/orders.toml:2: unknown key `colour`",
        "/jobs/orders.toml:5: unknown key `source.tabel`",
        "/jobs/orders.toml:3: `[source]` needs a `table` or a `query`",
        "/jobs/orders.toml:7: `destination.url` = \"ftp://nowhere\" is not a known kind of url",
        "missing `[match]`",
        "/jobs/orders.toml:10: `write.batch_size` must be a whole number above 0",
        "/jobs/orders.toml:11: `write.max_changes` must be a row count",
    ];
    for e in expect {
        assert!(
            found.iter().any(|p| p.contains(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn bad_toml_is_located() {
    let found = problems("[source]\nurl = \"x\n");
    assert!(
        found[0].starts_with("/jobs/orders.toml:2: not valid TOML"),
        "{found:?}"
    );
}

#[test]
fn table_and_query_together_are_refused() {
    let found = problems(
        "[source]\nurl = \"sqlite://a.db\"\ntable = \"t\"\nquery = \"SELECT 1\"\n[destination]\nurl = \"d.csv\"\n[match]\na = \"b\"\n",
    );
    assert_eq!(
        found,
        ["/jobs/orders.toml:4: `[source]` has both `table` and `query`; keep one"]
    );
}

#[test]
fn environment_variables_are_expanded_and_missing_ones_named() {
    let text = "[source]\nurl = \"postgres://app:${PGPASSWORD}@${PGHOST:-localhost}/dw\"\ntable = \"t\"\n[destination]\nurl = \"out.csv\"\n[match]\na = \"b\"\n";
    let job = parse(text, &[("PGPASSWORD", "p$w\"d")]).unwrap();
    assert_eq!(
        job.source.location,
        Location::Postgres("postgres://app:p$w\"d@localhost/dw".into())
    );
    assert_eq!(
        job.source.location.display(),
        "postgres://app:***@localhost/dw"
    );
    let found = problems(text);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains(":2: `source.url`: environment variable `PGPASSWORD` is not set"),
        "{found:?}"
    );
}

#[test]
fn relative_paths_resolve_against_the_job_folder() {
    let job = parse(
        "diff_query = \"queries/d.sql\"\n[source]\nurl = \"data/in.parquet\"\n[destination]\nurl = \"sqlite:///abs/app.db\"\ntable = \"t\"\n[match]\na = \"b\"\n[write]\nmax_changes = \"10%\"\ndeletes = true\npersistent_after = 5\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        job.source.location,
        Location::File("/jobs/data/in.parquet".into(), FileFormat::Parquet)
    );
    assert_eq!(
        job.destination.location,
        Location::Sqlite("/abs/app.db".into())
    );
    assert_eq!(
        job.diff_query.as_deref(),
        Some(Path::new("/jobs/queries/d.sql"))
    );
    assert_eq!(job.write.max_changes, Some(MaxChanges::Percent(10.0)));
    assert!(job.write.deletes);
    assert_eq!(job.write.persistent_after, 5);
    assert_eq!(job.name, "orders");
}

#[test]
fn a_file_endpoint_takes_no_table() {
    let found = problems(
        "[source]\nurl = \"in.csv\"\ntable = \"t\"\n[destination]\nurl = \"out.jsonl\"\n[match]\na = \"b\"\n",
    );
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains(":3: `[source]` reads a file"),
        "{found:?}"
    );
}

#[test]
fn the_reference_file_documents_every_key_and_parses() {
    let path = crate::support::fixture("reference.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let job = Job::parse(&path, &text, &|_| None).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        job.source.location,
        Location::Postgres("postgres://app:secret@localhost:5432/dw".into())
    );
    assert_eq!(job.source.relation, Relation::Table("sales.orders".into()));
    assert_eq!(job.write.max_changes, Some(MaxChanges::Percent(10.0)));
    assert_eq!(
        (job.write.batch_size, job.write.persistent_after),
        (1000, 3)
    );
    assert!(
        job.diff_query
            .unwrap()
            .ends_with("fixtures/queries/my_diff.sql")
    );
    assert!(job.state_url.ends_with(".recon/state.db"));
    assert_eq!(job.engine.memory_limit, Some(1 << 30));
    assert_eq!(
        job.engine.spill_dir.as_deref(),
        Some(Path::new("/var/tmp/recon"))
    );
}

#[test]
fn the_http_reference_file_parses_as_documented() {
    use recon::config::{FieldKind, Paging};
    let path = crate::support::fixture("reference-http.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let job = Job::parse(&path, &text, &|_| None).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(job.destination.relation, Relation::Http);
    let http = job.destination.http.expect("http options");
    assert_eq!(
        http.headers,
        vec![("Authorization".to_string(), "token".to_string())]
    );
    assert_eq!(http.records, "/items");
    assert_eq!(
        http.paging,
        Paging::Page {
            param: Some("page".into()),
            size_param: Some("perPage".into()),
            size: 500,
            start: 1
        }
    );
    assert_eq!(
        (http.update.method.as_str(), http.update.path.as_str()),
        ("PATCH", "/{id}")
    );
    assert!(!http.create.idempotent && http.update.idempotent);
    assert_eq!(http.rate_limit, Some(20.0));
    assert_eq!(
        (http.concurrency, http.retries, http.max_body),
        (4, 4, 64 << 20)
    );
    assert_eq!(http.schema[0].1.kind, FieldKind::TimestampTz);
    assert_eq!(http.schema[1].1.kind, FieldKind::Decimal);
    assert_eq!(http.params[0].1, "updated >= '$watermark'");
}

#[test]
fn http_sides_report_every_problem_with_its_line() {
    let found = problems(
        "[source]\nurl = \"a.csv\"\n[destination]\nurl = \"https://api.test/items\"\n[destination.http]\npage = { size = 0 }\nnext = \"/next\"\nrate_limit = \"fast\"\nretry = 3\n[destination.http.schema]\nat = \"datetime\"\n[match]\nk = \"k\"\n",
    );
    let all = found.join("\n");
    assert!(
        all.contains(
            ":7: `[destination.http]`: choose one way of paging; `page` and `next` are all set"
        ),
        "{all}"
    );
    assert!(
        all.contains(":8: `destination.http.rate_limit` must be a rate"),
        "{all}"
    );
    assert!(
        all.contains(":9: unknown key `destination.http.retry`"),
        "{all}"
    );
    assert!(
        all.contains(":11: `destination.http.schema.at`: unknown type `datetime`"),
        "{all}"
    );
    // The default update and delete paths use `{id}`: the destination must name its id field.
    let found = problems(
        "[source]\nurl = \"a.csv\"\n[destination]\nurl = \"https://api.test/items\"\n[match]\nk = \"k\"\n",
    );
    assert!(
        found
            .join("\n")
            .contains(":3: `[destination.http]` write templates use `{id}`"),
        "{found:?}"
    );
    let found = problems(
        "[source]\nurl = \"a.csv\"\n[source.http]\nrecords = \"/x\"\n[destination]\nurl = \"https://api.test/items\"\nid = \"id\"\ntable = \"t\"\n[match]\nk = \"k\"\n",
    );
    let all = found.join("\n");
    assert!(
        all.contains(":3: `[source.http]` applies to http(s):// urls only"),
        "{all}"
    );
    assert!(
        all.contains(":8: `[destination]` reads an HTTP API"),
        "{all}"
    );
}
