//! Writeback through an HTTP API: one request per change, from the `create`, `update` and
//! `delete` templates of `[destination.http]`, at most `concurrency` in flight and `rate_limit`
//! a second. A record the API refuses (a 4xx, or an error in the body) fails alone, with the
//! API's message, and is written again by the next run's diff; a create whose answer was lost is
//! not repeated within the run (the next diff sees whether it landed). An API that cannot be
//! reached stops the run; what was written stays written.

use futures::StreamExt;

use crate::changeset::{Action, Change, Changeset};
use crate::config::{Field, Job, Location, Request};
use crate::error::{Error, Result};
use crate::http::template::{RowValues, cell_json, write_body, write_path};
use crate::http::{Client, Failure as HttpFailure};
use crate::progress::Progress;

use super::{Failure, Outcome, Spool, Target};

pub async fn write(
    job: &Job,
    shape: &Changeset,
    spool: &Spool,
    deletes: bool,
    progress: &Progress,
    target: &Target,
) -> Result<Outcome> {
    let Location::Http(url) = &job.destination.location else {
        return Err(Error::Internal(
            "an HTTP writeback without an http url".into(),
        ));
    };
    let client = Client::new(&job.destination, url)?;
    check_placeholders(&client, target)?;
    let counter = progress.bar("writing", super::total(shape, deletes));
    let mut outcome = Outcome::default();
    let in_flight = client.options.concurrency.max(1);
    for action in super::actions(deletes) {
        let mut changes = spool.read_to_write(action)?;
        loop {
            // A slice of the spool at a time: memory stays bounded whatever the changeset.
            let chunk = changes
                .by_ref()
                .take(job.write.batch_size.max(in_flight))
                .collect::<Result<Vec<Change>>>()?;
            if chunk.is_empty() {
                break;
            }
            let sends = futures::stream::iter(chunk.iter().map(|c| {
                let client = &client;
                async move { (c, send(client, target, action, c).await) }
            }))
            .buffer_unordered(in_flight);
            let results: Vec<_> = sends.collect().await;
            for (change, result) in results {
                counter.add(1);
                super::pause_point("after-request");
                crate::failpoint::hit("mid-http-write");
                let error = match result {
                    Ok(()) => {
                        outcome.applied.add(action, 1);
                        continue;
                    }
                    Err(HttpFailure::Refused(m)) => m,
                    Err(HttpFailure::Unknown(m)) => format!(
                        "{m}; the request may have reached the API: it is not repeated in this run, and the next run's diff sees whether it landed"
                    ),
                    Err(HttpFailure::Fatal(e)) => return Err(e),
                };
                outcome.failed.push(Failure {
                    action,
                    key: shape.key_object(change),
                    error,
                    cursor: change.cells.cursor.clone(),
                });
            }
        }
    }
    counter.done();
    super::sort_failures(&mut outcome.failed);
    Ok(outcome)
}

/// Refuse templates that name a column the job does not map, before anything is written.
fn check_placeholders(client: &Client, target: &Target) -> Result<()> {
    let known = |name: &str| {
        name == "id"
            || name == "record"
            || target
                .keys
                .iter()
                .chain(&target.compared)
                .any(|c| c == name)
    };
    let unknown: Vec<String> = client
        .options
        .write_placeholders()
        .into_iter()
        .filter(|p| !known(p))
        .map(|p| format!("{{{p}}}"))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::Unsupported(format!(
        "the write templates of [destination.http] name {} — not a mapped destination column, `{{id}}` or `{{record}}` (mapped: {})",
        unknown.join(", "),
        target
            .keys
            .iter()
            .chain(&target.compared)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// One change as one request.
async fn send(
    client: &Client,
    target: &Target,
    action: Action,
    change: &Change,
) -> Result<(), HttpFailure> {
    let options = &client.options;
    let template: &Request = match action {
        Action::Insert => &options.create,
        Action::Update => &options.update,
        Action::Delete => &options.delete,
    };
    let row = row_values(target, action, change, &options.schema).map_err(HttpFailure::Refused)?;
    let path = write_path(&template.path, &row).map_err(HttpFailure::Refused)?;
    let url = client.url(&path).map_err(HttpFailure::Fatal)?;
    let body = match (action, &template.body) {
        (Action::Delete, None) => None,
        (_, body) => Some(write_body(body.as_ref(), &row).map_err(HttpFailure::Refused)?),
    };
    client
        .send(&template.method, url, body, template.idempotent)
        .await
        .map(|_| ())
}

/// The change's values by destination column: the key, every compared column's source value,
/// the record id, and the record written (the key and the columns this action writes).
fn row_values(
    target: &Target,
    action: Action,
    change: &Change,
    schema: &[(String, Field)],
) -> Result<RowValues, String> {
    let field = |name: &str| schema.iter().find(|(n, _)| n == name).map(|(_, f)| f);
    let mut row = RowValues {
        id: change.id.to_string(),
        ..Default::default()
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    for (name, cell) in target.keys.iter().zip(&change.cells.key) {
        let json = cell_json(cell, field(name)).map_err(|e| format!("`{name}`: {e}"))?;
        fields.push((name.clone(), json.clone()));
        row.columns.push((name.clone(), json));
    }
    for (i, name) in target.compared.iter().enumerate() {
        let cell = change
            .cells
            .source
            .get(i)
            .unwrap_or(&crate::changeset::Cell::Null);
        let written = match action {
            Action::Insert => true,
            Action::Update => change.changed.get(i).copied().unwrap_or(false),
            Action::Delete => false,
        };
        let json = match cell_json(cell, field(name)) {
            Ok(j) => j,
            Err(e) if written => return Err(format!("`{name}`: {e}")),
            Err(_) => "null".into(),
        };
        if written {
            fields.push((name.clone(), json.clone()));
        }
        row.columns.push((name.clone(), json));
    }
    row.record = format!(
        "{{{}}}",
        fields
            .iter()
            .map(|(n, v)| format!("{}:{v}", serde_json::Value::String(n.clone())))
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(row)
}
