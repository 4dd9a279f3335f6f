//! A validator that accepts only JSON objects of a configured shape.
//!
//! The shape is baked in at build time from `schema.json` next to this
//! crate's `Cargo.toml` (edit it and rebuild to change it):
//!
//! ```json
//! {
//!   "required": { "name": "string", "email": "string" },
//!   "optional": { "age": "integer", "tags": "array" },
//!   "allow_other_fields": false
//! }
//! ```
//!
//! Types are `string`, `number`, `integer`, `boolean`, `object`, `array`
//! and `null`. A rejected write is refused with a reason naming the first
//! problem found, and nothing is written.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use concord_guest::{Validator, Verdict};
use serde::Deserialize;
use serde_json::Value;

/// The baked-in schema.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Fields that must be present, with their types.
    #[serde(default)]
    pub required: BTreeMap<String, String>,
    /// Fields that may be present, with their types.
    #[serde(default)]
    pub optional: BTreeMap<String, String>,
    /// Whether fields not named above are allowed.
    #[serde(default = "yes")]
    pub allow_other_fields: bool,
}

fn yes() -> bool {
    true
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| serde_json::from_str(include_str!("../schema.json")).expect("schema.json is valid"))
}

fn type_matches(expected: &str, v: &Value) -> bool {
    match expected {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Checks `value` against `schema`; `Err` names the first problem.
pub fn check(schema: &Schema, value: &[u8]) -> Result<(), String> {
    let doc: Value = serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))?;
    let Value::Object(fields) = doc else { return Err("value must be a JSON object".into()) };
    for (name, ty) in &schema.required {
        match fields.get(name) {
            None => return Err(format!("missing required field \"{name}\"")),
            Some(v) if !type_matches(ty, v) => return Err(format!("field \"{name}\" must be of type {ty}")),
            Some(_) => {}
        }
    }
    for (name, v) in &fields {
        if schema.required.contains_key(name) {
            continue;
        }
        match schema.optional.get(name) {
            Some(ty) if !type_matches(ty, v) => return Err(format!("field \"{name}\" must be of type {ty}")),
            Some(_) => {}
            None if !schema.allow_other_fields => return Err(format!("field \"{name}\" is not allowed")),
            None => {}
        }
    }
    Ok(())
}

/// The validator.
pub struct JsonSchema;

impl Validator for JsonSchema {
    fn validate(_bucket: &str, _key: &[u8], value: &[u8]) -> Verdict {
        match check(schema(), value) {
            Ok(()) => Verdict::Accept,
            Err(reason) => Verdict::Reject(reason),
        }
    }
}

concord_guest::export_validator!(JsonSchema);

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(v: &str) -> Verdict {
        JsonSchema::validate("users", b"u1", v.as_bytes())
    }

    #[test]
    fn the_baked_schema_parses() {
        assert_eq!(schema().required.len(), 2);
    }

    #[test]
    fn accepts_matching_objects() {
        assert_eq!(verdict(r#"{"name":"Ada","email":"ada@example.com"}"#), Verdict::Accept);
        assert_eq!(verdict(r#"{"name":"Ada","email":"a@e","age":36,"tags":["x"]}"#), Verdict::Accept);
    }

    #[test]
    fn rejects_with_the_reason() {
        for (v, reason) in [
            ("nope", "value is not JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"name":"Ada"}"#, "missing required field \"email\""),
            (r#"{"name":1,"email":"x"}"#, "field \"name\" must be of type string"),
            (r#"{"name":"A","email":"x","age":1.5}"#, "field \"age\" must be of type integer"),
            (r#"{"name":"A","email":"x","admin":true}"#, "field \"admin\" is not allowed"),
        ] {
            match verdict(v) {
                Verdict::Reject(r) => assert!(r.contains(reason), "{v}: {r}"),
                other => panic!("{v}: expected a rejection, got {other:?}"),
            }
        }
    }
}
