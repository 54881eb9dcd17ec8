//! Request templates (see src/config/http.rs for their syntax): placeholders are replaced by JSON
//! values in bodies, by text in query parameters, percent-encoded in paths — never spliced into
//! JSON text.

use std::fmt::Write;

use serde_json::Value;

use crate::changeset::Cell;
use crate::config::{Field, FieldKind};

/// The values a listing request may refer to.
#[derive(Debug, Clone, Default)]
pub struct ListVars {
    pub page: Option<u64>,
    pub size: Option<u64>,
    pub offset: Option<u64>,
    pub cursor: Option<Value>,
    pub watermark: Option<Value>,
}

impl ListVars {
    /// `Some(value)` when `name` (`$page`, …) is a listing variable; JSON null when unset.
    fn get(&self, name: &str) -> Option<Value> {
        let n = |v: Option<u64>| v.map_or(Value::Null, Value::from);
        Some(match name {
            "$page" => n(self.page),
            "$size" => n(self.size),
            "$offset" => n(self.offset),
            "$cursor" => self.cursor.clone().unwrap_or(Value::Null),
            "$watermark" => self.watermark.clone().unwrap_or(Value::Null),
            _ => return None,
        })
    }
}

/// A listing body: strings that are exactly a variable become its JSON value.
pub fn list_body(template: &Value, vars: &ListVars) -> String {
    fn walk(v: &Value, vars: &ListVars) -> Value {
        match v {
            Value::String(s) => vars.get(s).unwrap_or_else(|| v.clone()),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, vars)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), walk(x, vars))).collect())
            }
            other => other.clone(),
        }
    }
    walk(template, vars).to_string()
}

/// Whether a body template refers to `$cursor` (the next page is then a token for the body).
pub fn uses(template: &Value, name: &str) -> bool {
    match template {
        Value::String(s) => s == name,
        Value::Array(a) => a.iter().any(|x| uses(x, name)),
        Value::Object(o) => o.values().any(|x| uses(x, name)),
        _ => false,
    }
}

/// A query parameter's text with the variables replaced as text; `None` when it refers to
/// `$watermark` or `$cursor` and there is none yet (the parameter is left out: the first run
/// reads everything).
pub fn param_text(template: &str, vars: &ListVars) -> Option<String> {
    let mut out = template.to_string();
    for name in ["$watermark", "$cursor", "$offset", "$page", "$size"] {
        if !out.contains(name) {
            continue;
        }
        let text = match vars.get(name)? {
            Value::Null => return None,
            Value::String(s) => s,
            other => other.to_string(),
        };
        out = out.replace(name, &text);
    }
    Some(out)
}

/// One row's values for a write template, as JSON text by destination column name.
#[derive(Debug, Default)]
pub struct RowValues {
    pub columns: Vec<(String, String)>,
    /// The destination's record id (JSON), `null` when unknown.
    pub id: String,
    /// An object of the columns written.
    pub record: String,
}

impl RowValues {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "id" => self
                .columns
                .iter()
                .find(|(n, _)| n == "id")
                .map_or(Some(self.id.as_str()), |(_, v)| Some(v.as_str())),
            "record" => Some(&self.record),
            _ => self
                .columns
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// A write body; without a template, the record itself.
pub fn write_body(template: Option<&Value>, row: &RowValues) -> Result<String, String> {
    let Some(template) = template else {
        return Ok(row.record.clone());
    };
    let mut out = String::new();
    write_value(template, row, &mut out)?;
    Ok(out)
}

fn write_value(v: &Value, row: &RowValues, out: &mut String) -> Result<(), String> {
    match v {
        Value::String(s) => match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => out.push_str(row.get(name).ok_or_else(|| unknown(name))?),
            None => out.push_str(&v.to_string()),
        },
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(x, row, out)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_value(x, row, out)?;
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
    Ok(())
}

fn unknown(name: &str) -> String {
    format!(
        "the template names `{{{name}}}`, which is not a mapped destination column, `{{id}}` or `{{record}}`"
    )
}

/// A write path with `{name}` replaced by the value's text, percent-encoded.
pub fn write_path(path: &str, row: &RowValues) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = &rest[start + 1..start + len];
        let raw = row.get(name).ok_or_else(|| unknown(name))?;
        let text = match serde_json::from_str::<Value>(raw) {
            Ok(Value::String(s)) => s,
            Ok(Value::Null) => {
                return Err(format!(
                    "`{{{name}}}` in the path `{path}` has no value (the destination's record id is needed: is `[destination] id` the API's id field?)"
                ));
            }
            _ => raw.to_string(),
        };
        out.extend(percent_encoding::utf8_percent_encode(
            &text,
            percent_encoding::NON_ALPHANUMERIC,
        ));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A cell as JSON text, in the column's declared format when it has one. Values JSON cannot
/// carry (NaN, infinity, bytes) are refused with the reason.
pub fn cell_json(cell: &Cell, field: Option<&Field>) -> Result<String, String> {
    let format = field.and_then(|f| f.format.as_deref());
    let text = |s: String| Value::String(s).to_string();
    Ok(match cell {
        Cell::Null => "null".into(),
        Cell::Bool(b) => b.to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) if f.is_finite() => match field.map(|f| f.kind) {
            Some(FieldKind::Text) => text(f.to_string()),
            _ => Value::from(*f).to_string(),
        },
        Cell::Float(f) => return Err(format!("{f} cannot be sent as a JSON number")),
        Cell::Decimal(d) => match field.map(|f| f.kind) {
            Some(FieldKind::Text | FieldKind::Decimal) => text(d.clone()),
            _ => d.clone(),
        },
        Cell::Text(s) => match field.map(|f| f.kind) {
            // A JSON column holds JSON: send the value, not a string of it.
            Some(FieldKind::Json) => serde_json::from_str::<Value>(s)
                .map_err(|e| format!("the value is not JSON ({e})"))?
                .to_string(),
            _ => text(s.clone()),
        },
        Cell::Bytes(_) => return Err("binary values cannot be sent as JSON".into()),
        Cell::Date(d) => text(d.format(format.unwrap_or("%Y-%m-%d")).to_string()),
        Cell::Time(t) => text(t.format(format.unwrap_or("%H:%M:%S%.f")).to_string()),
        Cell::Timestamp(t) => text(
            t.format(format.unwrap_or("%Y-%m-%dT%H:%M:%S%.f"))
                .to_string(),
        ),
        Cell::TimestampTz(t) => {
            let mut s = String::new();
            let _ = write!(s, "{}", t.format(format.unwrap_or("%Y-%m-%dT%H:%M:%S%.fZ")));
            text(s)
        }
        Cell::Infinity(_) => return Err("an infinite date cannot be sent as JSON".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_go_in_as_json_values_never_spliced() {
        let row = RowValues {
            columns: vec![
                ("code".into(), "\"A-1\\\", \\\"admin\\\": true\"".into()),
                ("qty".into(), "3".into()),
            ],
            id: "\"abc\"".into(),
            record: "{\"code\":\"A-1\"}".into(),
        };
        let template: Value =
            serde_json::json!({"data": "{record}", "q": "{qty}", "k": "{code}", "lit": "x {qty}"});
        let body = write_body(Some(&template), &row).unwrap();
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["q"], 3);
        assert_eq!(doc["k"], "A-1\", \"admin\": true");
        assert_eq!(doc["lit"], "x {qty}");
        assert!(doc.get("admin").is_none());
        assert_eq!(write_path("/{id}/x", &row).unwrap(), "/abc/x");
        assert!(write_body(Some(&serde_json::json!({"a": "{nope}"})), &row).is_err());
    }

    #[test]
    fn listing_variables_replace_whole_strings() {
        let vars = ListVars {
            page: Some(2),
            size: Some(50),
            ..Default::default()
        };
        let body = list_body(
            &serde_json::json!({"variables": {"page": "$page", "perPage": "$size", "w": "$watermark"}}),
            &vars,
        );
        assert_eq!(body, r#"{"variables":{"page":2,"perPage":50,"w":null}}"#);
        assert_eq!(param_text("updated >= '$watermark'", &vars), None);
        assert_eq!(param_text("$page", &vars).as_deref(), Some("2"));
    }
}
