//! Validates objects against a CRD's openAPIV3Schema the way the API server
//! does for structural schemas: types (with x-kubernetes-int-or-string and
//! nullable), required, enum, pattern, lengths, item and property counts,
//! numeric bounds and int32/int64 formats, list-type set/map uniqueness,
//! allOf/anyOf/oneOf/not, unknown fields rejected unless
//! x-kubernetes-preserve-unknown-fields, and the CEL rules in
//! x-kubernetes-validations (through `cel_rules`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

use super::cel_rules;
use super::repo_root;

pub struct Crd {
    pub file: String,
    pub group: String,
    pub kind: String,
    pub namespaced: bool,
    /// (version name, openAPIV3Schema)
    pub versions: Vec<(String, Value)>,
}

impl Crd {
    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.versions
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }
}

pub fn crds() -> &'static [Crd] {
    static CRDS: OnceLock<Vec<Crd>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let dir = repo_root().join("deploy/crds");
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("deploy/crds")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read crd");
            let v: Value = serde_norway::from_str(&text).expect("parse crd");
            let spec = &v["spec"];
            let versions = spec["versions"]
                .as_array()
                .expect("versions")
                .iter()
                .map(|ver| {
                    (
                        ver["name"].as_str().expect("version name").to_string(),
                        ver["schema"]["openAPIV3Schema"].clone(),
                    )
                })
                .collect();
            out.push(Crd {
                file: f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_string(),
                group: spec["group"].as_str().expect("group").to_string(),
                kind: spec["names"]["kind"].as_str().expect("kind").to_string(),
                namespaced: spec["scope"] == "Namespaced",
                versions,
            });
        }
        out
    })
}

pub fn crd_for(group: &str, kind: &str) -> &'static Crd {
    crds()
        .iter()
        .find(|c| c.group == group && c.kind == kind)
        .unwrap_or_else(|| panic!("no pinned CRD for {group}/{kind}"))
}

/// Outcome of validating one object.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<String>,
    /// CEL rules evaluated (and passed or reported in `errors`).
    pub cel_evaluated: usize,
    /// Transition rules (they compare with `oldSelf`, so apply to updates
    /// only) that a create does not evaluate.
    pub cel_transition_skipped: usize,
}

/// Validates a full custom resource (apiVersion, kind, metadata, spec).
pub fn validate_object(obj: &Value) -> Report {
    let mut r = Report::default();
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    let Some((group, version)) = api_version.rsplit_once('/') else {
        r.errors
            .push(format!("apiVersion {api_version:?} has no group"));
        return r;
    };
    let crd = crd_for(group, kind);
    let Some(schema) = crd.schema(version) else {
        r.errors
            .push(format!("{} serves no version {version}", crd.file));
        return r;
    };
    check_metadata(&obj["metadata"], crd.namespaced, &mut r);
    // metadata is validated by the API server as ObjectMeta, not by the CRD
    // schema (which only says `type: object`).
    let mut without_meta = obj.clone();
    if let Some(m) = without_meta.as_object_mut() {
        m.insert("metadata".into(), Value::Object(Default::default()));
    }
    check(schema, &without_meta, "", &mut r);
    r
}

/// Validates a fragment against the schema found at `path` (dot-separated
/// property names, `[]` for array items) inside a CRD version's schema.
pub fn validate_at(schema: &Value, value: &Value, path: &str) -> Report {
    let mut r = Report::default();
    check(schema, value, path, &mut r);
    r
}

/// The sub-schema at `path` ("spec.template.spec.requirements[]").
pub fn schema_at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut s = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, items) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        s = &s["properties"][name];
        assert!(!s.is_null(), "schema has no property {name} in {path}");
        if items {
            s = &s["items"];
        }
    }
    s
}

fn check_metadata(meta: &Value, namespaced: bool, r: &mut Report) {
    let name = meta["name"].as_str().unwrap_or("");
    if !is_dns_subdomain(name) {
        r.errors
            .push(format!("metadata.name {name:?} is not a DNS subdomain"));
    }
    match (namespaced, meta.get("namespace")) {
        (true, None) => r
            .errors
            .push("metadata.namespace missing on a namespaced kind".into()),
        (false, Some(ns)) => r
            .errors
            .push(format!("metadata.namespace {ns} on a cluster-scoped kind")),
        _ => {}
    }
    for field in ["labels", "annotations"] {
        if let Some(m) = meta.get(field).and_then(Value::as_object) {
            for (k, v) in m {
                if !is_qualified_name(k) {
                    r.errors.push(format!(
                        "metadata.{field} key {k:?} is not a qualified name"
                    ));
                }
                if field == "labels" && !is_label_value(v.as_str().unwrap_or("\u{0}")) {
                    r.errors.push(format!(
                        "metadata.labels[{k}] value {v} is not a label value"
                    ));
                }
            }
        }
    }
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|p| {
            let b = p.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

pub fn is_label_value(s: &str) -> bool {
    regex_matches(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", s) && s.len() <= 63
}

pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && regex_matches(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$", name)
}

thread_local! {
    static REGEXES: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

pub fn regex_matches(pattern: &str, s: &str) -> bool {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let re = cache.entry(pattern.to_string()).or_insert_with(|| {
            Regex::new(pattern).unwrap_or_else(|e| panic!("pattern {pattern}: {e}"))
        });
        re.is_match(s)
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

fn check(schema: &Value, v: &Value, path: &str, r: &mut Report) {
    let s = |k: &str| schema.get(k);
    if v.is_null() {
        if s("nullable") != Some(&Value::Bool(true)) {
            r.errors.push(format!("{}: null is not allowed", at(path)));
        }
        return;
    }
    let int_or_string = s("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let actual = type_name(v);
    if int_or_string {
        if actual != "integer" && actual != "string" {
            r.errors.push(format!(
                "{}: expected integer or string, got {actual}",
                at(path)
            ));
            return;
        }
    } else if let Some(t) = s("type").and_then(Value::as_str) {
        let ok = t == actual || (t == "number" && actual == "integer");
        if !ok {
            r.errors
                .push(format!("{}: expected {t}, got {actual}", at(path)));
            return;
        }
    }

    if let Some(allowed) = s("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        r.errors.push(format!(
            "{}: {v} is not one of {}",
            at(path),
            Value::Array(allowed.clone())
        ));
    }

    match v {
        Value::String(text) => {
            if let Some(p) = s("pattern").and_then(Value::as_str)
                && !regex_matches(p, text)
            {
                r.errors
                    .push(format!("{}: {text:?} does not match pattern {p}", at(path)));
            }
            let len = text.chars().count() as u64;
            if let Some(max) = s("maxLength").and_then(Value::as_u64)
                && len > max
            {
                r.errors.push(format!("{}: longer than {max}", at(path)));
            }
            if let Some(min) = s("minLength").and_then(Value::as_u64)
                && len < min
            {
                r.errors.push(format!("{}: shorter than {min}", at(path)));
            }
            if s("format").and_then(Value::as_str) == Some("date-time")
                && !regex_matches(
                    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
                    text,
                )
            {
                r.errors
                    .push(format!("{}: {text:?} is not a date-time", at(path)));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let excl_min = s("exclusiveMinimum") == Some(&Value::Bool(true));
            let excl_max = s("exclusiveMaximum") == Some(&Value::Bool(true));
            if let Some(min) = s("minimum").and_then(Value::as_f64)
                && (x < min || (excl_min && x == min))
            {
                r.errors
                    .push(format!("{}: {x} is below the minimum {min}", at(path)));
            }
            if let Some(max) = s("maximum").and_then(Value::as_f64)
                && (x > max || (excl_max && x == max))
            {
                r.errors
                    .push(format!("{}: {x} is above the maximum {max}", at(path)));
            }
            if let Some(m) = s("multipleOf").and_then(Value::as_f64)
                && (x / m).fract() != 0.0
            {
                r.errors
                    .push(format!("{}: {x} is not a multiple of {m}", at(path)));
            }
            match s("format").and_then(Value::as_str) {
                Some("int32") if n.as_i64().is_none_or(|i| i32::try_from(i).is_err()) => {
                    r.errors.push(format!("{}: {n} is not an int32", at(path)))
                }
                Some("int64") if n.as_i64().is_none() => {
                    r.errors.push(format!("{}: {n} is not an int64", at(path)))
                }
                _ => {}
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = s("maxItems").and_then(Value::as_u64)
                && len > max
            {
                r.errors
                    .push(format!("{}: more than {max} items", at(path)));
            }
            if let Some(min) = s("minItems").and_then(Value::as_u64)
                && len < min
            {
                r.errors
                    .push(format!("{}: fewer than {min} items", at(path)));
            }
            match s("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => {
                    for (i, a) in items.iter().enumerate() {
                        if items[..i].contains(a) {
                            r.errors
                                .push(format!("{}[{i}]: duplicate in a set list", at(path)));
                        }
                    }
                }
                Some("map") => {
                    let keys: Vec<&str> = s("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| k.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let key_of = |item: &Value| -> Vec<Value> {
                        keys.iter().map(|k| item[*k].clone()).collect()
                    };
                    for (i, a) in items.iter().enumerate() {
                        if items[..i].iter().any(|b| key_of(b) == key_of(a)) {
                            r.errors
                                .push(format!("{}[{i}]: duplicate map-list key", at(path)));
                        }
                    }
                }
                _ => {}
            }
            if let Some(item_schema) = s("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), r);
                }
            }
        }
        Value::Object(map) => {
            if let Some(req) = s("required").and_then(Value::as_array) {
                for k in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(k) {
                        r.errors
                            .push(format!("{}: missing required field {k:?}", at(path)));
                    }
                }
            }
            let n = map.len() as u64;
            if let Some(max) = s("maxProperties").and_then(Value::as_u64)
                && n > max
            {
                r.errors
                    .push(format!("{}: more than {max} properties", at(path)));
            }
            if let Some(min) = s("minProperties").and_then(Value::as_u64)
                && n < min
            {
                r.errors
                    .push(format!("{}: fewer than {min} properties", at(path)));
            }
            let props = s("properties").and_then(Value::as_object);
            let additional = s("additionalProperties");
            let preserve = s("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (k, child) in map {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(ps) = props.and_then(|p| p.get(k)) {
                    check(ps, child, &child_path, r);
                } else if let Some(a) = additional {
                    match a {
                        Value::Bool(true) => {}
                        Value::Bool(false) => {
                            r.errors.push(format!("{}: unknown field {k:?}", at(path)))
                        }
                        sub => check(sub, child, &child_path, r),
                    }
                } else if !preserve {
                    r.errors.push(format!("{}: unknown field {k:?}", at(path)));
                }
            }
        }
        _ => {}
    }

    // Value validations that combine sub-schemas.
    let passes = |sub: &Value| {
        let mut tmp = Report::default();
        check(sub, v, path, &mut tmp);
        tmp.errors.is_empty()
    };
    if let Some(all) = s("allOf").and_then(Value::as_array) {
        for sub in all {
            check(sub, v, path, r);
        }
    }
    if let Some(any) = s("anyOf").and_then(Value::as_array)
        && !any.iter().any(passes)
    {
        r.errors
            .push(format!("{}: matches none of anyOf", at(path)));
    }
    if let Some(one) = s("oneOf").and_then(Value::as_array)
        && one.iter().filter(|sub| passes(sub)).count() != 1
    {
        r.errors
            .push(format!("{}: does not match exactly one of oneOf", at(path)));
    }
    if let Some(not) = s("not")
        && passes(not)
    {
        r.errors
            .push(format!("{}: matches a `not` schema", at(path)));
    }

    if let Some(rules) = s("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in rules {
            let text = rule["rule"].as_str().unwrap_or("");
            if cel_rules::is_transition_rule(text) {
                r.cel_transition_skipped += 1;
                continue;
            }
            r.cel_evaluated += 1;
            if let Err(e) = cel_rules::evaluate(text, v) {
                let msg = rule["message"].as_str().unwrap_or("");
                r.errors.push(format!(
                    "{}: CEL rule failed ({msg}): {text} -> {e}",
                    at(path)
                ));
            }
        }
    }
}
