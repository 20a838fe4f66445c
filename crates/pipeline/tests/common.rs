//! Shared helpers for tests that read the committed fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn read_json(rel: &str) -> Value {
    let path = fixtures().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON list of numbers, which the fixture script sometimes stores as a string.
pub fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::String(s) => floats(&serde_json::from_str::<Value>(s).expect("list in string")),
        Value::Array(a) => a
            .iter()
            .flat_map(|x| match x {
                Value::Array(_) | Value::String(_) => floats(x),
                _ => vec![x.as_f64().expect("number")],
            })
            .collect(),
        other => panic!("expected a list of numbers, got {other}"),
    }
}

/// Rows of a nested list (one list per image).
pub fn rows(v: &Value) -> Vec<Vec<f64>> {
    let v = match v {
        Value::String(s) => serde_json::from_str::<Value>(s).expect("list in string"),
        other => other.clone(),
    };
    v.as_array()
        .expect("list of rows")
        .iter()
        .map(floats)
        .collect()
}
