//! Resolving the job's column mapping against the two snapshot schemas: every mapped column must
//! exist, and every pair must have a common type (src/types.rs). All problems are collected, so
//! `recon check` can list them at once.

use std::collections::{HashMap, HashSet};

use datafusion::arrow::datatypes::{DataType, Schema};

use crate::config::{ColumnPair, Job};
use crate::error::{Error, Side};
use crate::types;

/// A mapped pair of columns with the type both are compared in.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub source: String,
    pub destination: String,
    pub source_type: DataType,
    pub destination_type: DataType,
    pub common: DataType,
    /// How the destination column stores values (src/diff/stored.rs); set after resolving.
    pub storage: super::stored::Storage,
    /// `[compare.options]` for this pair; set after resolving.
    pub options: crate::config::CompareOptions,
}

/// The job's mapping, checked against the snapshots.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub keys: Vec<Mapped>,
    pub compared: Vec<Mapped>,
    /// The destination id column and its type.
    pub id: Option<(String, DataType)>,
    /// Incremental mode: the source's cursor column.
    pub cursor: Option<String>,
}

impl Resolved {
    pub fn key_names(&self) -> Vec<String> {
        self.keys.iter().map(|m| m.destination.clone()).collect()
    }

    pub fn compared_names(&self) -> Vec<String> {
        self.compared
            .iter()
            .map(|m| m.destination.clone())
            .collect()
    }
}

/// A schema's columns by name, so that resolving many mappings stays linear.
struct Columns<'a> {
    schema: &'a Schema,
    by_name: HashMap<&'a str, &'a DataType>,
}

impl<'a> Columns<'a> {
    fn new(schema: &'a Schema) -> Columns<'a> {
        let by_name = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .collect();
        Columns { schema, by_name }
    }
}

/// Problems found so far, each reported once.
#[derive(Default)]
struct Problems {
    list: Vec<Error>,
    seen: HashSet<String>,
}

impl Problems {
    fn push(&mut self, error: Error) {
        if self.seen.insert(error.to_string()) {
            self.list.push(error);
        }
    }
}

/// Check the mapping against the schemas; every problem is returned.
pub fn resolve(job: &Job, source: &Schema, destination: &Schema) -> Result<Resolved, Vec<Error>> {
    let (source, destination) = (&Columns::new(source), &Columns::new(destination));
    let mut problems = Problems::default();
    let id = job.destination.id.as_ref().and_then(|id| {
        lookup(Side::Destination, destination, id, &mut problems).map(|t| (id.clone(), t))
    });
    let keys = map_all(&job.keys, source, destination, &mut problems);
    let pairs = match &job.compare {
        Some(pairs) => pairs.clone(),
        None => same_named(job, source, destination),
    };
    let compared = map_all(&pairs, source, destination, &mut problems);
    let cursor = job.source.cursor.as_ref().and_then(|c| {
        lookup(Side::Source, source, &c.column, &mut problems).map(|_| c.column.clone())
    });
    if problems.list.is_empty() {
        Ok(Resolved {
            keys,
            compared,
            id,
            cursor,
        })
    } else {
        Err(problems.list)
    }
}

/// `[compare]` omitted: every source column that the destination has by the same name, except
/// key columns and the destination id.
fn same_named(job: &Job, source: &Columns, destination: &Columns) -> Vec<ColumnPair> {
    let is_key = |name: &str| {
        job.keys
            .iter()
            .any(|k| k.source == name || k.destination == name)
    };
    let is_id = |name: &str| job.destination.id.as_deref() == Some(name);
    source
        .schema
        .fields()
        .iter()
        .map(|f| f.name())
        .filter(|n| !is_key(n) && !is_id(n) && destination.by_name.contains_key(n.as_str()))
        .map(|n| ColumnPair {
            source: n.clone(),
            destination: n.clone(),
        })
        .collect()
}

fn map_all(
    pairs: &[ColumnPair],
    source: &Columns,
    destination: &Columns,
    problems: &mut Problems,
) -> Vec<Mapped> {
    pairs
        .iter()
        .filter_map(|pair| map(pair, source, destination, problems))
        .collect()
}

fn map(
    pair: &ColumnPair,
    source: &Columns,
    destination: &Columns,
    problems: &mut Problems,
) -> Option<Mapped> {
    let s = lookup(Side::Source, source, &pair.source, problems);
    let d = lookup(Side::Destination, destination, &pair.destination, problems);
    let (s, d) = (s?, d?);
    let Some(common) = types::common(&s, &d) else {
        problems.push(Error::Incomparable {
            source_column: pair.source.clone(),
            source_type: types::describe(&s),
            destination_column: pair.destination.clone(),
            destination_type: types::describe(&d),
        });
        return None;
    };
    Some(Mapped {
        source: pair.source.clone(),
        destination: pair.destination.clone(),
        source_type: s,
        destination_type: d,
        common,
        storage: Default::default(),
        options: Default::default(),
    })
}

fn lookup(side: Side, columns: &Columns, name: &str, problems: &mut Problems) -> Option<DataType> {
    if let Some(t) = columns.by_name.get(name) {
        return Some((*t).clone());
    }
    let available = columns
        .schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    problems.push(Error::MissingColumn {
        side,
        column: name.to_string(),
        available,
    });
    None
}
