//! A small YAML emitter for Kubernetes manifests.
//!
//! serde_yaml-style emitters write YAML 1.2 and leave strings such as `on`,
//! `yes`, `y` or `1_000` unquoted; kubectl reads manifests with YAML 1.1
//! rules (sigs.k8s.io/yaml), where those are booleans and numbers, so a
//! label or annotation value would change type on the way in. This emitter
//! writes a string plain only when it is unambiguous under both versions
//! and quotes everything else. Keys come out sorted (serde_json's map), as
//! `kubectl get -o yaml` prints them.

use serde_json::Value;

/// One YAML document (no `---`), ending in a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        scalar => {
            out.push_str(&scalar_text(scalar, 0));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, level: usize) {
    let mut first = true;
    for (k, v) in m {
        if !first {
            indent(out, level);
        }
        first = false;
        out.push_str(&quote(k, level));
        out.push(':');
        write_value_after_key(out, v, level);
    }
}

/// Writes what follows `key:` (or `- ` for sequences, via `write_seq`).
fn write_value_after_key(out: &mut String, v: &Value, level: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, level + 2);
            write_map(out, m, level + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            indent(out, level + 2);
            write_seq(out, a, level + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar, level + 2));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, a: &[Value], level: usize) {
    let mut first = true;
    for item in a {
        if !first {
            indent(out, level);
        }
        first = false;
        out.push_str("- ");
        match item {
            // A mapping starts on the dash line; its other keys line up
            // under the first one.
            Value::Object(m) if !m.is_empty() => write_map(out, m, level + 2),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, level + 2),
            scalar => {
                out.push_str(&scalar_text(scalar, level + 2));
                out.push('\n');
            }
        }
    }
}

fn scalar_text(v: &Value, level: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s, level),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// Words YAML 1.1 or 1.2 read as booleans or null in any case.
const RESERVED: &[&str] = &[
    "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~",
];

/// Whether `s` can be written without quotes and read back as this same
/// string by a YAML 1.1 and a YAML 1.2 parser.
pub fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Starting with a letter, '/' or '_' rules out numbers, timestamps,
    // `.inf`, `<<` and every indicator character.
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if RESERVED.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    if s.ends_with([' ', ':']) || s.contains(": ") || s.contains(" #") {
        return false;
    }
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '/' | '_' | '.' | '-' | ':' | '@' | '+' | '=' | '%' | '(' | ')'
            )
    })
}

fn quote(s: &str, level: usize) -> String {
    if is_plain_safe(s) {
        return s.to_string();
    }
    if let Some(block) = literal_block(s, level) {
        return block;
    }
    // Single quotes need no escapes but cannot carry control characters.
    if !s.chars().any(|c| c.is_control() || c == '\'') && !s.starts_with(' ') && !s.ends_with(' ') {
        return format!("'{s}'");
    }
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// `|` / `|-` block for multi-line text, when the text survives it intact.
fn literal_block(s: &str, level: usize) -> Option<String> {
    if !s.contains('\n') {
        return None;
    }
    let body = s.strip_suffix('\n');
    let (header, text) = match body {
        Some(b) if !b.ends_with('\n') => ("|", b),
        Some(_) => return None, // several trailing newlines: quote instead
        None => ("|-", s),
    };
    let ok = text.lines().all(|l| !l.ends_with([' ', '\t'])) // trailing blanks are fragile
        && !text.starts_with([' ', '\t', '\n'])
        && !text.chars().any(|c| c.is_control() && c != '\n');
    if !ok {
        return None;
    }
    let mut out = String::from(header);
    for line in text.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', level));
            out.push_str(line);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "yes",
            "on",
            "Off",
            "y",
            "N",
            "true",
            "null",
            "~",
            "1",
            "08",
            "1_000",
            "0x1F",
            "1e3",
            ".inf",
            "2024-01-01",
            "<<",
            "10%",
            "720h",
            "-",
            "",
            " x",
            "a: b",
            "a #b",
            "*x",
            "&x",
            "!x",
            "{}",
            "[a]",
            "@x",
            "%x",
            "`x",
        ] {
            assert!(!is_plain_safe(s), "{s:?} must be quoted");
        }
        for s in [
            "anyaccel",
            "nvidia.com/gpu",
            "/health/ready",
            "g5.xlarge",
            "al2023@latest",
        ] {
            assert!(is_plain_safe(s), "{s:?} can be plain");
        }
    }

    #[test]
    fn round_trips_through_a_yaml_parser() {
        let v = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a": "yes", "b": "on", "c": "3"}},
            "data": {
                "json": "{\"type\":\"forward\"}",
                "multi": "line one\nline two\n",
                "nofinal": "a\nb",
                "quote": "it's",
                "ctrl": "tab\there",
                "empty": "",
                "list": [],
                "map": {}
            },
            "nested": [[1, 2], {"k": [ {"a": 1, "b": [true, null]} ]}, "x"],
            "num": 1.5
        });
        let text = to_yaml(&v);
        let back: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, v, "\n{text}");
    }
}
